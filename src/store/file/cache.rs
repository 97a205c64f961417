//! The file store's memory: every record by id, and an index of the records by expiry,
//! kept in step as records are cached and dropped.

use std::collections::{BTreeMap, BTreeSet};

use super::Record;

/// The records by id, and (expiry, id) of those with an expiry: [`Store::expired`] is a
/// range of the index. Scanning every record instead cost 37 ms a second at 100,000
/// records (bench/records.sh, a loaded machine).
#[derive(Default)]
pub(super) struct Cache {
    pub(super) records: BTreeMap<u64, Record>,
    pub(super) by_expiry: BTreeSet<(time::OffsetDateTime, u64)>,
}

impl Cache {
    pub(super) fn insert(&mut self, record: Record) {
        if let Some(t) = record.expires_at {
            self.by_expiry.insert((t, record.id));
        }
        if let Some(old) = self.records.insert(record.id, record) {
            self.unindex(&old);
        }
    }

    pub(super) fn remove(&mut self, id: u64) {
        if let Some(old) = self.records.remove(&id) {
            self.unindex(&old);
        }
    }

    /// Drops `old`'s index entry unless the record now in its place has the same expiry.
    fn unindex(&mut self, old: &Record) {
        let Some(t) = old.expires_at else { return };
        let same = self
            .records
            .get(&old.id)
            .is_some_and(|r| r.expires_at == Some(t));
        if !same {
            self.by_expiry.remove(&(t, old.id));
        }
    }

    /// Expiries in `(since, now]`, earliest first, at most `limit`.
    pub(super) fn expired(
        &self,
        now: time::OffsetDateTime,
        since: Option<time::OffsetDateTime>,
        limit: usize,
    ) -> Vec<(u64, time::OffsetDateTime)> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        // (t, u64::MAX) is past every entry at t: `since` itself is left out, `now` kept.
        let start = since.map_or(Unbounded, |s| Excluded((s, u64::MAX)));
        self.by_expiry
            .range((start, Included((now, u64::MAX))))
            .take(limit)
            .map(|&(t, id)| (id, t))
            .collect()
    }
}
