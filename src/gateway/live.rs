//! The live sessions: each holds its [`Grant`], and each request with some holds its
//! record as last read (with its keys parsed), which is what the sessions are checked
//! against. One check ends them, whatever noticed the change: a change made here, the
//! change feed, a re-read, or the sweep (time alone).
//!
//! What is kept per request lives exactly as long as the request's last session: the
//! [`LiveGuard`] of that session drops it, and counts the session out of the gauge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::login::{Grant, Known};
use super::{lock, Gateway};
use crate::keys::fingerprint;
use crate::metrics::Metrics;
use crate::store::Record;

/// A live, authenticated SSH connection.
pub(super) struct Live {
    pub grant: Arc<Grant>,
    pub peer: SocketAddr,
    /// Cancelled to close the connection.
    pub close: CancellationToken,
}

/// The live sessions, and the record of each request that has some, as last read: what
/// the sweep checks them against. One lock for both, so that a session registered while
/// its record changes is checked against the newer one either way.
#[derive(Default)]
pub(super) struct LiveSet {
    pub sessions: HashMap<u64, Live>,
    /// An entry exactly for the requests with sessions; `None`: the record is gone.
    pub records: HashMap<u64, Option<Arc<Known>>>,
}

impl LiveSet {
    pub fn of(&self, request_id: u64) -> impl Iterator<Item = (&u64, &Live)> {
        self.sessions
            .iter()
            .filter(move |(_, l)| l.grant.request_id == request_id)
    }
}

/// Keeps its session in the live set (and in the `sessions` gauge) until dropped.
pub struct LiveGuard {
    gateway: Arc<Gateway>,
    session: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut live = lock(&self.gateway.live);
        if let Some(gone) = live.sessions.remove(&self.session) {
            let id = gone.grant.request_id;
            if live.of(id).next().is_none() {
                live.records.remove(&id);
            }
        }
        Metrics::dec(&self.gateway.metrics.sessions_current);
    }
}

impl Gateway {
    /// Registers an authenticated connection; `close` is cancelled when its grant ends.
    /// `None` when the request already has as many live sessions as it may.
    pub async fn register(
        self: &Arc<Self>,
        session: u64,
        grant: Arc<Grant>,
        peer: SocketAddr,
        close: CancellationToken,
    ) -> Option<LiveGuard> {
        let (id, noted) = (grant.request_id, grant.noted);
        {
            let mut live = lock(&self.live);
            // Counted and inserted under one lock, so that logins racing each other cannot
            // pass the cap together.
            if live.of(id).count() >= self.max_sessions_per_request {
                return None;
            }
            // A change that came between this login's read and now was noted under this
            // lock: the session is checked against the newer record at once.
            let known = grant.known.clone();
            live.records.entry(id).or_insert(Some(known));
            live.sessions.insert(session, Live { grant, peer, close });
            let live = &*live;
            let known = live.records.get(&id).and_then(Option::as_deref);
            self.revoke_in(live, id, known, OffsetDateTime::now_utc());
        }
        Metrics::inc(&self.metrics.sessions_current);
        let guard = LiveGuard {
            gateway: self.clone(),
            session,
        };
        if self.noted.load(Ordering::SeqCst) != noted {
            // A change came after this login's read and may have found no session of this
            // request to check: look again.
            self.reread(Some(vec![id]), &self.metrics.record_reads.login)
                .await;
        }
        Some(guard)
    }

    /// Client addresses of the live sessions of a request.
    pub fn peers_of(&self, request_id: u64) -> Vec<SocketAddr> {
        lock(&self.live)
            .of(request_id)
            .map(|(_, l)| l.peer)
            .collect()
    }

    /// Closes the live sessions of request `id` that `known` (its record now, `None` if
    /// deleted) no longer grants: state changed, access expired, file renamed, or key
    /// removed or no longer allowed. The one check behind both a change and the sweep.
    pub(super) fn revoke_in(
        &self,
        live: &LiveSet,
        id: u64,
        known: Option<&Known>,
        now: OffsetDateTime,
    ) {
        for (session, l) in live.of(id) {
            let g = &l.grant;
            // The file name the session was given; a rename by the operator ends it.
            let still = known
                .filter(|k| k.record.filename == g.record().filename)
                .and_then(|k| k.check(&g.key, Some(l.peer.ip()), now));
            if still != Some(g.access) && !l.close.is_cancelled() {
                tracing::info!(
                    target: "audit",
                    event = "revoked",
                    session,
                    request = id,
                    key = %fingerprint(&g.key),
                    peer = %l.peer,
                    "access ended; closing the session"
                );
                l.close.cancel();
            }
        }
    }

    /// Notes `record` as the record of request `id` now (`None`: deleted) and closes the
    /// live sessions it no longer grants. A login in flight hears of it (through
    /// [`noted`](Gateway::noted)) unless the request's sessions already had this record:
    /// then a login that registers later is checked against it anyway.
    pub(super) fn note(&self, id: u64, record: Option<Record>) {
        let mut live = lock(&self.live);
        let Some(known) = live.records.get(&id) else {
            // No session here to check; a login of the request may be in flight.
            self.noted.fetch_add(1, Ordering::SeqCst);
            return;
        };
        if known.as_ref().map(|k| &k.record) == record.as_ref() {
            return;
        }
        self.noted.fetch_add(1, Ordering::SeqCst);
        // Keys are parsed again only when their text changed.
        let keys = known
            .as_ref()
            .filter(|k| {
                record
                    .as_ref()
                    .is_some_and(|r| r.ssh_keys == k.record.ssh_keys)
            })
            .map(|k| k.keys.clone());
        let known = record.map(|r| Arc::new(Known::new(r, keys)));
        self.revoke_in(&live, id, known.as_deref(), OffsetDateTime::now_utc());
        live.records.insert(id, known);
    }
}

#[cfg(test)]
mod tests {
    use russh::keys::ssh_key::PublicKey;

    use super::super::testing::{provisioned, ED};
    use super::*;
    use crate::store::{Decision, State};

    /// A change ends the sessions it revokes by itself, without waiting for the sweep; one
    /// that changes nothing, or changes another request, ends none. What is kept per
    /// request goes with its last session.
    #[tokio::test]
    async fn a_change_closes_the_sessions_it_revokes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let g = provisioned(dir.path(), &[1, 2]).await;
        let key = PublicKey::from_openssh(ED).expect("key");
        let peer: SocketAddr = "127.0.0.1:2222".parse().expect("address");
        let mut sessions = Vec::new();
        for id in [1, 2] {
            let grant = g
                .authorize(&Record::user_name(id), &key, Some(peer.ip()), None)
                .await
                .expect("granted");
            let close = CancellationToken::new();
            let live = g.register(id, Arc::new(grant), peer, close.clone()).await;
            sessions.push((close, live.expect("registered")));
        }
        assert_eq!(g.metrics.sessions_current.load(Ordering::Relaxed), 2);
        let closed = |n: usize| sessions[n].0.is_cancelled();

        g.change(1, |_| (Decision::Keep, ())).await.expect("kept");
        g.change(1, |r| (Decision::Put(r.cloned().expect("record")), ()))
            .await
            .expect("rewritten");
        assert!(!closed(0) && !closed(1));
        let (_, saw) = g
            .change(1, |r| {
                let mut r = r.cloned().expect("record");
                r.state = State::Cancelled;
                let saw = r.id;
                (Decision::Put(r), saw)
            })
            .await
            .expect("cancelled");
        assert_eq!(saw, 1);
        assert!(closed(0) && !closed(1));
        let (updated, ()) = g
            .change(2, |_| (Decision::Delete { purge: false }, ()))
            .await
            .expect("deleted");
        assert!(updated.deleted() && closed(1));
        assert!(g
            .authorize("user_2", &key, Some(peer.ip()), None)
            .await
            .is_none());

        drop(sessions);
        assert_eq!(g.metrics.sessions_current.load(Ordering::Relaxed), 0);
        let live = lock(&g.live);
        assert!(live.sessions.is_empty() && live.records.is_empty());
    }
}
