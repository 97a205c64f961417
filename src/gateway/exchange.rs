//! Live sessions shared with the other nodes of a shared store: this node publishes its
//! own (a count and some peers per request) every few seconds and keeps what the others
//! published, so that the operator API shows every node's sessions of a request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{lock, Gateway};
use crate::store::{RequestSessions, MAX_PEERS_LISTED};

/// How often this node's live sessions are published to a shared store, and the other
/// nodes' read back; what other nodes show of them is at most about this old.
const EXCHANGE_EVERY: Duration = Duration::from_secs(2);

impl Gateway {
    /// The live sessions of request `id` on the other nodes, by node name, as last
    /// exchanged (nothing once that is older than a few exchange periods).
    pub fn sessions_elsewhere(&self, request_id: u64) -> Vec<(String, RequestSessions)> {
        let elsewhere = lock(&self.elsewhere);
        let Some((at, nodes)) = elsewhere.as_ref() else {
            return Vec::new();
        };
        if at.elapsed() > 3 * EXCHANGE_EVERY {
            return Vec::new();
        }
        nodes
            .iter()
            .flat_map(|n| {
                n.requests
                    .iter()
                    .filter(|r| r.request_id == request_id && r.sessions > 0)
                    .map(|r| (n.node.clone(), r.clone()))
            })
            .collect()
    }

    /// This node's live sessions per request, with at most [`MAX_PEERS_LISTED`] peers each.
    fn live_summary(&self) -> Vec<RequestSessions> {
        let live = lock(&self.live);
        let mut by_request: std::collections::BTreeMap<u64, RequestSessions> = Default::default();
        for l in live.sessions.values() {
            let id = l.grant.request_id;
            let r = by_request.entry(id).or_insert_with(|| RequestSessions {
                request_id: id,
                ..Default::default()
            });
            r.sessions += 1;
            if r.peers.len() < MAX_PEERS_LISTED {
                r.peers.push(l.peer.to_string());
            }
        }
        by_request.into_values().collect()
    }

    /// For a store other nodes share: publishes this node's live sessions every
    /// [`EXCHANGE_EVERY`] and keeps the other nodes' for the operator API, until
    /// `shutdown`. Its own task, so that a database that stopped answering delays neither
    /// the sweep nor anything else.
    pub async fn run_session_exchange(self: Arc<Self>, node: String, shutdown: CancellationToken) {
        if !self.store.shared() {
            return;
        }
        let mut tick = tokio::time::interval(EXCHANGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let mine = self.live_summary();
            match self.store.exchange_sessions(&node, &mine).await {
                Ok(theirs) => *lock(&self.elsewhere) = Some((Instant::now(), theirs)),
                // What was last read fades out by itself (see `sessions_elsewhere`).
                Err(e) => {
                    tracing::warn!(error = %e, "cannot exchange live sessions with the other nodes")
                }
            }
        }
    }
}
