//! The change feed: the ids of records that other nodes change, from PostgreSQL's
//! LISTEN/NOTIFY, forwarded to the gateway with every possible loss reported as such.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};

use super::{PgStore, PgStoreError, CHANNEL};
use crate::store::{Changed, StoreCounting};

impl PgStore {
    /// The ids of records that change, from any node. Notifications are not queued for
    /// a listener that is reconnecting, so each loss of the connection is reported as
    /// [`Change::Missed`]: re-read everything then (and re-check now and then anyway).
    /// Holds one of the pool's connections.
    pub async fn listen(&self) -> Result<Changes, PgStoreError> {
        PgStore::listen_on(&self.pool).await
    }

    async fn listen_on(pool: &PgPool) -> Result<Changes, PgStoreError> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Changes { listener })
    }
}

/// The change feed of [`PgStore::listen`].
pub struct Changes {
    listener: PgListener,
}

/// One item of the change feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Record `id` was created, replaced or deleted.
    Record(u64),
    /// The connection was lost; changes made meanwhile were not seen. The next call
    /// reconnects.
    Missed,
}

impl Changes {
    /// Waits for the next change. An error means reconnecting failed (PostgreSQL is
    /// down): call again, after a pause, to retry.
    pub async fn next(&mut self) -> Result<Change, PgStoreError> {
        loop {
            let Some(notification) = self.listener.try_recv().await? else {
                return Ok(Change::Missed);
            };
            match notification.payload().parse::<u64>() {
                Ok(id) => return Ok(Change::Record(id)),
                // Someone else's NOTIFY on our channel; nothing of ours changed.
                Err(_) => tracing::warn!(
                    payload = notification.payload(),
                    "ignored a notification that names no record"
                ),
            }
        }
    }
}

/// Changes waiting for the gateway; past this many it is told to re-read everything.
pub(super) const FEED_QUEUE: usize = 1024;
/// How long the change feed waits before it tries PostgreSQL again.
const FEED_RETRY: Duration = Duration::from_secs(1);

/// Forwards the other nodes' notifications to the gateway until it stops listening. A
/// connection lost, a failed reconnect or a full queue are all reported as
/// [`Changed::Unknown`] (changes may have been missed), once the feed works again.
pub(super) async fn follow(
    pool: PgPool,
    tx: tokio::sync::mpsc::Sender<Changed>,
    counting: Arc<StoreCounting>,
) {
    let mut missed = false;
    loop {
        let mut changes = match PgStore::listen_on(&pool).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the change feed cannot listen; retrying");
                missed = true;
                tokio::select! {
                    _ = tokio::time::sleep(FEED_RETRY) => continue,
                    _ = tx.closed() => return,
                }
            }
        };
        // Listening again: whatever happened before this point is read afresh.
        if std::mem::take(&mut missed) && tx.send(Changed::Unknown).await.is_err() {
            return;
        }
        // A lost connection shows as `Missed`, then (if PostgreSQL is still away) as the
        // error of the listener's own reconnect: counted once.
        let mut lost = false;
        loop {
            let change = tokio::select! {
                c = changes.next() => c,
                _ = tx.closed() => return,
            };
            let item = match change {
                Ok(Change::Record(id)) => {
                    lost = false;
                    Changed::Record(id)
                }
                Ok(Change::Missed) => {
                    counting.feed_reconnect();
                    lost = true;
                    Changed::Unknown
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the change feed lost PostgreSQL; reconnecting");
                    if !lost {
                        counting.feed_reconnect();
                    }
                    missed = true;
                    break;
                }
            };
            match tx.try_send(item) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    // The gateway is behind: one re-read of everything replaces the rest.
                    counting.feed_overflow();
                    if tx.send(Changed::Unknown).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}
