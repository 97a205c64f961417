//! The sweeper: what ends a grant without a change made here. Every second the live
//! sessions are checked against their records as last read (an expiry passing, a key's
//! `expiry-time`), and transfer activity no one holds any more is dropped; the records of
//! live sessions are read again on a timer and whenever the store's change feed (a shared
//! store's other nodes) names them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{lock, Gateway};
use crate::store::{Changed, Record};

/// How often live sessions are checked against their request (expiry is noticed this fast).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often the records of live sessions are read again from the store, whatever the
/// change feed said: a shared store's notifications can be lost (a listener that
/// reconnects misses what was sent meanwhile), so no change goes unnoticed longer.
const REREAD_EVERY: Duration = Duration::from_secs(10);

impl Gateway {
    /// Reads the records of `ids` (those with live sessions, if `None`) again from the
    /// store and re-checks their sessions; `reads` counts the records read. A request
    /// without a live session here is not read: only a login in flight could care, and
    /// it is told to read again itself.
    pub(super) async fn reread(&self, ids: Option<Vec<u64>>, reads: &AtomicU64) {
        let ids: Vec<u64> = {
            let live = lock(&self.live);
            match ids {
                None => live.records.keys().copied().collect(),
                Some(ids) => {
                    let (here, elsewhere): (Vec<u64>, Vec<u64>) = ids
                        .into_iter()
                        .partition(|id| live.records.contains_key(id));
                    if !elsewhere.is_empty() {
                        // Under the lock, as in `note`: a login registering after this
                        // sees the bump.
                        self.noted.fetch_add(1, Ordering::SeqCst);
                    }
                    here
                }
            }
        };
        if ids.is_empty() {
            return;
        }
        reads.fetch_add(ids.len() as u64, Ordering::Relaxed);
        // Read without the live set locked: a store read may wait on the network.
        match self.store.get_many(&ids).await {
            Ok(found) => {
                let mut found: HashMap<u64, Record> =
                    found.into_iter().map(|r| (r.id, r)).collect();
                for id in ids {
                    self.note(id, found.remove(&id));
                }
            }
            // Sessions are left alone while their records cannot be read; new logins are
            // refused meanwhile.
            Err(e) => tracing::error!(error = %e, "cannot re-check live sessions"),
        }
    }

    /// Closes every live session whose grant no longer holds, against the records as last
    /// read, and drops the activity no transfer holds. Changes re-check their own request
    /// at once (see [`change`](Self::change), and the change feed in
    /// [`run_sweeper`](Self::run_sweeper)); this catches what time alone ends: an expiry
    /// passing, a key's `expiry-time`.
    pub(super) fn sweep(&self) {
        self.drop_idle_activity();
        let now = OffsetDateTime::now_utc();
        let live = lock(&self.live);
        for (id, known) in &live.records {
            self.revoke_in(&live, *id, known.as_deref(), now);
        }
    }

    /// Runs the sweep every second, reads live records again every [`REREAD_EVERY`], and
    /// follows the changes other nodes make (for a shared store) until `shutdown`.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reread = tokio::time::interval(REREAD_EVERY);
        reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes = self.store.changes();
        let reads = &self.metrics.record_reads.recheck;
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                _ = reread.tick() => self.reread(None, reads).await,
                changed = next_change(&mut changes) => match changed {
                    Some(Changed::Record(id)) => self.reread(Some(vec![id]), reads).await,
                    Some(Changed::Unknown) => {
                        // Whatever changed may concern a login in flight too.
                        self.noted.fetch_add(1, Ordering::SeqCst);
                        self.reread(None, reads).await
                    }
                    None => {
                        tracing::error!("the store's change feed ended; re-reading on a timer only");
                        changes = None;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// The next change from the feed; never, without one.
async fn next_change(feed: &mut Option<tokio::sync::mpsc::Receiver<Changed>>) -> Option<Changed> {
    match feed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
