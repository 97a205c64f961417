//! The gateway's shared state: the store, the live SSH sessions and each request's
//! transfer activity. It turns a login attempt into a grant (which file, which mode) and
//! closes sessions whose grant no longer holds.
//!
//! It is also the only way to change a record: [`Gateway::change`] runs the store's
//! serialised read-modify-write and then, in the same call, ends the live sessions the
//! change revoked, so that no writer (operator or customer) can race another one or
//! forget the re-check. The store itself is private to this module.
//!
//! One file per job: `login.rs` (a login attempt to a [`Grant`], reading the record once),
//! `live.rs` (the live sessions and the one check that ends them), `sweep.rs` (what time
//! and other nodes' changes end: the sweeper), `exchange.rs` (live sessions shared with
//! the other nodes), `activity.rs` (per-request transfer counters, held only while a
//! transfer holds them, and the metrics page), `uploads.rs` (the file a session serves,
//! and what an upload's close reports). This file holds the state and the record
//! operations: reads for the API, and [`Gateway::change`].

mod activity;
mod exchange;
mod live;
mod login;
mod sweep;
mod uploads;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use time::OffsetDateTime;

use crate::events::Events;
use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::storage::Dumps;
use crate::store::{
    update_with, Decision, NodeSessions, PageQuery, Record, Store, StoreError, Updated,
};

pub use live::LiveGuard;
pub use login::Grant;
pub use uploads::Via;

pub struct Gateway {
    /// Private: reads go through [`record`](Self::record) and [`page`](Self::page),
    /// changes through [`change`](Self::change).
    store: Arc<dyn Store>,
    pub metrics: Metrics,
    /// The event outbox, with a hook configured.
    events: Option<Arc<Events>>,
    /// This node's upload leases, handed to every upload session.
    leases: Leases,
    /// Where the dumps live.
    dumps: Dumps,
    max_upload_size: Option<u64>,
    /// Live sessions one request may have (like SFTPGo's max_sessions).
    max_sessions_per_request: usize,
    live: Mutex<live::LiveSet>,
    /// Bumped by every change noted that may concern a login in flight: a login whose
    /// record was read before such a change reads its record again (see `live.rs`).
    noted: AtomicU64,
    next_session: AtomicU64,
    activity: Mutex<activity::Activities>,
    /// The live sessions of the other nodes sharing the store, as last exchanged, and
    /// when.
    elsewhere: Mutex<Option<(Instant, Vec<NodeSessions>)>>,
}

impl Gateway {
    pub fn new(
        store: Arc<dyn Store>,
        events: Option<Arc<Events>>,
        leases: Leases,
        dumps: Dumps,
        max_upload_size: Option<u64>,
        max_sessions_per_request: usize,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            store,
            metrics: Metrics::default(),
            events,
            leases,
            dumps,
            max_upload_size,
            max_sessions_per_request,
            live: Mutex::default(),
            noted: AtomicU64::new(0),
            next_session: AtomicU64::new(1),
            activity: Mutex::default(),
            elsewhere: Mutex::default(),
        })
    }

    /// The record of request `id`, if any, for the API.
    pub async fn record(&self, id: u64) -> Result<Option<Record>, StoreError> {
        Metrics::inc(&self.metrics.record_reads.api);
        self.store.get(id).await
    }

    /// One page of records (see [`Store::page`]) and the `after` of the next page, `None`
    /// when this one is the last: one more record is read to know.
    pub async fn page(&self, query: &PageQuery) -> Result<(Vec<Record>, Option<u64>), StoreError> {
        let mut probe = query.clone();
        probe.limit = query.limit.saturating_add(1);
        let mut records = self.store.page(&probe).await?;
        let more = records.len() > query.limit;
        records.truncate(query.limit);
        let next = more.then(|| records.last().map(|r| r.id)).flatten();
        Ok((records, next))
    }

    /// Where the customer's upload of request `id` lives.
    pub fn upload_path(&self, id: u64) -> std::path::PathBuf {
        self.store.upload_path(id)
    }

    /// Where the upgraded dump of request `id` lives.
    pub fn upgraded_path(&self, id: u64) -> std::path::PathBuf {
        self.store.upgraded_path(id)
    }

    /// Changes record `id`: `decide` sees the record as it is (no other change of `id`
    /// runs meanwhile) and returns what becomes of it, with a value for the caller (a
    /// refusal, or what it saw). Once the decision is durable, the live sessions of the
    /// request are checked against the new record and those it no longer grants are
    /// closed, and what is kept of a deleted request is dropped.
    pub async fn change<T: Send>(
        &self,
        id: u64,
        decide: impl FnOnce(Option<&Record>) -> (Decision, T) + Send,
    ) -> Result<(Updated, T), StoreError> {
        let mut purge = false;
        let (updated, value) = update_with(self.store.as_ref(), id, |r| {
            let (decision, value) = decide(r);
            // A purge removes the files; so does a record created under a free id (what an
            // earlier record of that id left must never reach the new customer).
            purge = matches!(decision, Decision::Delete { purge: true })
                || (r.is_none() && matches!(decision, Decision::Put(_)));
            (decision, value)
        })
        .await?;
        if purge {
            // The file store removed local files in the change itself; objects go here.
            self.purge_objects(id).await;
        }
        if updated.deleted() {
            self.forget_last_write(id);
        }
        if updated.before != updated.after {
            self.note(id, updated.after.clone());
        }
        Ok((updated, value))
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the store answers now (see [`Store::health`]).
    pub async fn store_health(&self) -> Result<(), StoreError> {
        self.store.health().await
    }

    /// Records whose expiry passed by `now`, after `since` if given (see
    /// [`Store::expired`]).
    pub async fn expired_records(
        &self,
        now: OffsetDateTime,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<(u64, OffsetDateTime)>, StoreError> {
        self.store.expired(now, since).await
    }
}

/// A lock that a panic elsewhere does not poison for good: every map here stays valid
/// between statements, so the data behind a poisoned lock is still sound.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::Gateway;
    use crate::leases::Leases;
    use crate::storage::Dumps;
    use crate::store::{hash_key, Decision, FileStore, Record, State};

    pub const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbk4EHF3X5miABPFC3UVX+U9igZJxLC2U169zVW+L4W alice@laptop";

    /// A gateway on a file store in `dir`, allowing 10 sessions per request.
    pub fn gateway(dir: &std::path::Path) -> Arc<Gateway> {
        let store = Arc::new(FileStore::open(dir).expect("store"));
        let leases = Leases::start(
            Arc::new(crate::store::MemoryLeases::default()),
            crate::leases::LeaseSettings {
                node: "test".into(),
                ttl: Duration::from_secs(15),
                wait: Duration::from_secs(1),
            },
        );
        Gateway::new(store, None, leases, Dumps::Local, None, 10)
    }

    /// A gateway (see [`gateway`]) with a draft record granting [`ED`] for each of `ids`.
    pub async fn provisioned(dir: &std::path::Path, ids: &[u64]) -> Arc<Gateway> {
        let g = gateway(dir);
        let now = OffsetDateTime::now_utc();
        for &id in ids {
            let record = Record {
                id,
                filename: "db.dump".into(),
                state: State::Draft,
                key_sha256: hash_key("k"),
                ssh_keys: ED.into(),
                expires_at: None,
                operator_expires_at: None,
                created_at: now,
                updated_at: now,
            };
            g.change(id, |_| (Decision::Put(record), ()))
                .await
                .expect("created");
        }
        g
    }
}
