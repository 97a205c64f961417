//! Each request's transfer activity (its byte counters, its open writers, and the rule that
//! orders its sessions: see [`Activity`]), shared by the request's SFTP sessions and HTTP
//! uploads, and the metrics page that sums it.
//!
//! An entry lives while a transfer holds it: the sweep drops the ones no one holds any
//! more, adding their counters to the process-wide totals in [`Metrics`](crate::metrics::Metrics) (so the metrics'
//! totals never go back) and keeping only their last write time, for the API's
//! `last_write_at`. Reading a request's activity inserts nothing, so a status page or an
//! API read of many requests leaves nothing behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use time::OffsetDateTime;

use super::{lock, Gateway};
use crate::metrics::Derived;
use crate::sftp::Activity;
use crate::store::StoreError;

#[derive(Default)]
pub(super) struct Activities {
    /// The requests a transfer holds (and, until the next sweep, those it just let go).
    held: HashMap<u64, Arc<Activity>>,
    /// Unix time of the last write of each request whose activity was dropped: 16 bytes
    /// per request written to through this node since it started, until it is deleted
    /// (a file store keeps every whole record in memory besides).
    last_writes: HashMap<u64, i64>,
}

impl Gateway {
    /// The activity of `request_id`, for a transfer: the one its other transfers share,
    /// or a new one.
    pub fn activity(&self, request_id: u64) -> Arc<Activity> {
        lock(&self.activity)
            .held
            .entry(request_id)
            .or_default()
            .clone()
    }

    /// The activity of `request_id` if a transfer holds it, for a report: inserts nothing.
    pub fn activity_if_any(&self, request_id: u64) -> Option<Arc<Activity>> {
        lock(&self.activity).held.get(&request_id).cloned()
    }

    /// When request `id` was last written to through this node since it started.
    pub fn last_write_at(&self, request_id: u64) -> Option<OffsetDateTime> {
        let all = lock(&self.activity);
        let held = all
            .held
            .get(&request_id)
            .map(|a| a.last_write.load(Ordering::Relaxed));
        let at = held
            .filter(|t| *t > 0)
            .or_else(|| all.last_writes.get(&request_id).copied())?;
        OffsetDateTime::from_unix_timestamp(at).ok()
    }

    /// Drops the activity no transfer holds, its counters added to the totals.
    pub(super) fn drop_idle_activity(&self) {
        let mut all = lock(&self.activity);
        let Activities { held, last_writes } = &mut *all;
        let finished = &self.metrics.finished;
        held.retain(|id, a| {
            // Only the map holds it, under this lock: no one can bump it or take it again.
            if Arc::strong_count(a) > 1 {
                return true;
            }
            let add = |total: &AtomicU64, n: &AtomicU64| {
                total.fetch_add(n.load(Ordering::Relaxed), Ordering::Relaxed)
            };
            add(&finished.received, &a.bytes_written);
            add(&finished.sent, &a.bytes_read);
            add(&finished.errors, &a.write_errors);
            let at = a.last_write.load(Ordering::Relaxed);
            if at > 0 {
                last_writes.insert(*id, at);
            }
            false
        });
    }

    /// Drops the last write time of a deleted request.
    pub(super) fn forget_last_write(&self, request_id: u64) {
        lock(&self.activity).last_writes.remove(&request_id);
    }

    /// The metrics page, with totals summed over every request's activity.
    pub async fn render_metrics(&self) -> Result<String, StoreError> {
        // While the store is down the page still answers (its error counters matter most
        // then), without the per-state gauge, and without waiting for the pool's timeout.
        let counts = match self.store.health().await {
            Ok(()) => Some(self.store.count_by_state().await?),
            Err(_) => None,
        };
        let (received, sent, errors) = self.transfer_totals();
        let requests = counts.map(|counts| counts.iter().map(|(s, n)| (s.as_str(), *n)).collect());
        let events = match &self.events {
            Some(e) => Some(e.stats().await),
            None => None,
        };
        Ok(self.metrics.render(&Derived {
            events,
            bytes_received: received,
            bytes_sent: sent,
            transfer_errors: errors,
            requests: requests.unwrap_or_default(),
            leases: self.leases.stats(),
            store: self.store.counters(),
        }))
    }

    /// Bytes received, bytes sent and write errors since the start: the dropped activity's
    /// totals plus what is held now, read under the one lock that moves counts from one
    /// to the other, so that a scrape never sees a count in both or in neither.
    fn transfer_totals(&self) -> (u64, u64, u64) {
        let all = lock(&self.activity);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let f = &self.metrics.finished;
        let (mut received, mut sent, mut errors) = (get(&f.received), get(&f.sent), get(&f.errors));
        for a in all.held.values() {
            received += get(&a.bytes_written);
            sent += get(&a.bytes_read);
            errors += get(&a.write_errors);
        }
        (received, sent, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::gateway;
    use super::*;

    async fn received_total(g: &Gateway) -> String {
        let metrics = g.render_metrics().await.expect("metrics");
        let line = metrics
            .lines()
            .find(|l| l.starts_with("sftpgate_bytes_received_total"));
        line.unwrap_or_default().to_string()
    }

    /// Activity no one holds is dropped at the next sweep, its totals kept and its last
    /// write time still reported; a read inserts nothing.
    #[tokio::test]
    async fn idle_activity_leaves_its_totals_and_its_last_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let g = gateway(dir.path());
        let held = g.activity(7);
        held.wrote(1000);
        g.activity(8).bytes_written.store(234, Ordering::Relaxed);
        let before = received_total(&g).await;
        assert!(before.ends_with(" 1234"), "{before}");
        assert!(g.activity_if_any(9).is_none());

        g.sweep();
        assert!(g.activity_if_any(7).is_some() && g.activity_if_any(8).is_none());
        assert_eq!(received_total(&g).await, before);
        let written = g.last_write_at(7).expect("written");
        drop(held);
        g.sweep();
        assert_eq!(received_total(&g).await, before);
        let all = lock(&g.activity);
        assert!(all.held.is_empty(), "{:?}", all.held.keys());
        assert_eq!(all.last_writes.len(), 1);
        drop(all);
        assert_eq!(g.last_write_at(7), Some(written));
        assert_eq!(g.last_write_at(8), None);
    }
}
