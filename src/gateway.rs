//! The gateway's shared state: the store, the parsed keys of each request, and the live
//! SSH sessions. It turns a login attempt into a grant (which file, which mode) and closes
//! sessions whose grant no longer holds.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::ssh_key::PublicKey;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::hook::Hook;
use crate::keys::{fingerprint, parse_authorized_keys, AuthorizedKey};
use crate::metrics::{Derived, Metrics};
use crate::sftp::{Activity, SharedFile, WriteClosed};
use crate::store::{Access, Record, State, Store};

/// How often live sessions are checked against their request (expiry is noticed this fast).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A request's authorized_keys text and what it parsed to.
type ParsedKeys = (String, Arc<Vec<AuthorizedKey>>);

/// What a successful login may do.
#[derive(Clone, Debug)]
pub struct Grant {
    pub request_id: u64,
    pub access: Access,
    pub key: PublicKey,
}

/// A live, authenticated SSH connection.
struct Live {
    request_id: u64,
    access: Access,
    /// The file name the session was given; a rename by the operator ends the session.
    filename: String,
    key: PublicKey,
    peer: SocketAddr,
    kick: CancellationToken,
}

pub struct Gateway {
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    hook: Option<Hook>,
    max_upload_size: Option<u64>,
    /// Live sessions one request may have (like SFTPGo's max_sessions).
    max_sessions_per_request: usize,
    /// Parsed keys per request, with the text they were parsed from.
    keys: Mutex<HashMap<u64, ParsedKeys>>,
    live: Mutex<HashMap<u64, Live>>,
    next_session: AtomicU64,
    activity: Mutex<HashMap<u64, Arc<Activity>>>,
    /// Deleted requests whose counters are still to be folded into `retired`.
    forgotten: Mutex<Vec<u64>>,
    retired: Retired,
    recheck: Notify,
}

/// The counters of deleted requests, so that the metrics' totals never go back.
#[derive(Default)]
struct Retired {
    received: AtomicU64,
    sent: AtomicU64,
    errors: AtomicU64,
}

/// Removes its session from the live set when dropped.
pub struct LiveGuard {
    gateway: Arc<Gateway>,
    session: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.gateway.lock_live().remove(&self.session);
    }
}

impl Gateway {
    pub fn new(
        store: Arc<dyn Store>,
        hook: Option<Hook>,
        max_upload_size: Option<u64>,
        max_sessions_per_request: usize,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            store,
            metrics: Metrics::default(),
            hook,
            max_upload_size,
            max_sessions_per_request,
            keys: Mutex::default(),
            live: Mutex::default(),
            next_session: AtomicU64::new(1),
            activity: Mutex::default(),
            forgotten: Mutex::default(),
            retired: Retired::default(),
            recheck: Notify::new(),
        })
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The parsed keys of a record, cached until its text changes.
    pub fn keys_of(&self, record: &Record) -> Arc<Vec<AuthorizedKey>> {
        let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((text, keys)) = cache.get(&record.id) {
            if *text == record.ssh_keys {
                return keys.clone();
            }
        }
        // Records hold only text that was validated when stored; anything unparsable
        // authorizes nobody.
        let keys = Arc::new(parse_authorized_keys(&record.ssh_keys).unwrap_or_default());
        cache.insert(record.id, (record.ssh_keys.clone(), keys.clone()));
        keys
    }

    /// The grant `key` gets as `user` from `ip` right now, or `None`. Unknown user, unknown
    /// key, wrong state and expiry all look the same to the caller.
    pub fn authorize(&self, user: &str, key: &PublicKey, ip: Option<IpAddr>) -> Option<Grant> {
        let id = Record::parse_user(user)?;
        let record = self.store.get(id)?;
        let access = self.check(&record, key, ip, OffsetDateTime::now_utc())?;
        Some(Grant {
            request_id: id,
            access,
            key: key.clone(),
        })
    }

    fn check(
        &self,
        record: &Record,
        key: &PublicKey,
        ip: Option<IpAddr>,
        now: OffsetDateTime,
    ) -> Option<Access> {
        let access = record.access_at(now)?;
        // Key data only: PublicKey's own equality also compares the comment.
        self.keys_of(record)
            .iter()
            .any(|k| k.key.key_data() == key.key_data() && k.allows(ip, now))
            .then_some(access)
    }

    /// The file a grant's SFTP session serves.
    pub fn shared_file(&self, grant: &Grant) -> Option<SharedFile> {
        let record = self.store.get(grant.request_id)?;
        Some(match grant.access {
            Access::Upload => SharedFile {
                name: record.visible_name(Access::Upload),
                path: self.store.upload_path(record.id),
                writable: true,
                max_size: self.max_upload_size,
                partial_path: Some(self.store.upload_path(record.id).with_extension("filepart")),
            },
            Access::Download => SharedFile {
                name: record.visible_name(Access::Download),
                path: self.store.upgraded_path(record.id),
                writable: false,
                max_size: None,
                partial_path: None,
            },
        })
    }

    /// What to do each time a write handle of this grant's session is closed: one audit
    /// line, and the same event to the upload hook if one is configured.
    pub fn on_write_closed(self: &Arc<Self>, grant: &Grant, peer: SocketAddr) -> WriteClosed {
        let request = grant.request_id;
        let key = fingerprint(&grant.key);
        let hook = self.hook.clone();
        let gateway = self.clone();
        Arc::new(move |w| {
            Metrics::inc(&gateway.metrics.uploads_completed_total);
            let event = serde_json::json!({
                "event": "upload-closed",
                "request_id": request,
                "user": Record::user_name(request),
                "key_fingerprint": key,
                "client": peer.to_string(),
                "bytes_written": w.bytes,
                "final_size": w.size,
                "duration_ms": w.duration.as_millis() as u64,
                "at": OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).ok(),
            });
            tracing::info!(target: "audit", event = "upload-closed", request, key = %key, peer = %peer,
                bytes = w.bytes, size = w.size, duration_ms = w.duration.as_millis() as u64, "write handle closed");
            if let Some(hook) = &hook {
                hook.post(event);
            }
        })
    }

    /// The metrics page, with totals summed over every request's activity.
    pub fn render_metrics(&self) -> String {
        let r = &self.retired;
        let (mut received, mut sent, mut errors) = (
            r.received.load(Ordering::Relaxed),
            r.sent.load(Ordering::Relaxed),
            r.errors.load(Ordering::Relaxed),
        );
        for a in self
            .activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            received += a.bytes_written.load(Ordering::Relaxed);
            sent += a.bytes_read.load(Ordering::Relaxed);
            errors += a.write_errors.load(Ordering::Relaxed);
        }
        let records = self.store.list();
        let requests = State::ALL
            .iter()
            .map(|st| {
                (
                    st.as_str(),
                    records.iter().filter(|r| r.state == *st).count() as u64,
                )
            })
            .collect();
        self.metrics.render(&Derived {
            bytes_received: received,
            bytes_sent: sent,
            transfer_errors: errors,
            requests,
        })
    }

    pub fn activity(&self, request_id: u64) -> Arc<Activity> {
        let mut map = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(request_id).or_default().clone()
    }

    /// Drops what is kept about a deleted request: its parsed keys now, its counters once
    /// no session holds them (see [`retire`](Self::retire)).
    pub fn forget(&self, request_id: u64) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id);
        self.forgotten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request_id);
    }

    /// Folds the counters of deleted requests into the retired totals once their last
    /// session has ended (sessions are closed by the sweep that follows a delete).
    fn retire(&self) {
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        if forgotten.is_empty() {
            return;
        }
        let mut activity = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        forgotten.retain(|id| {
            if self.store.get(*id).is_some() {
                // Created again under the same id: the counters carry on with it.
                return false;
            }
            if activity.get(id).is_some_and(|a| Arc::strong_count(a) > 1) {
                return true;
            }
            if let Some(a) = activity.remove(id) {
                let r = &self.retired;
                r.received
                    .fetch_add(a.bytes_written.load(Ordering::Relaxed), Ordering::Relaxed);
                r.sent
                    .fetch_add(a.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
                r.errors
                    .fetch_add(a.write_errors.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            false
        });
    }

    /// Registers an authenticated connection; `kick` is cancelled when its grant ends.
    /// `None` when the request already has as many live sessions as it may.
    pub fn register(
        self: &Arc<Self>,
        session: u64,
        grant: &Grant,
        peer: SocketAddr,
        kick: CancellationToken,
    ) -> Option<LiveGuard> {
        let filename = self
            .store
            .get(grant.request_id)
            .map(|r| r.filename)
            .unwrap_or_default();
        let mut live = self.lock_live();
        // Counted and inserted under one lock, so that logins racing each other cannot
        // pass the cap together.
        let sessions = live
            .values()
            .filter(|l| l.request_id == grant.request_id)
            .count();
        if sessions >= self.max_sessions_per_request {
            return None;
        }
        live.insert(
            session,
            Live {
                request_id: grant.request_id,
                access: grant.access,
                filename,
                key: grant.key.clone(),
                peer,
                kick,
            },
        );
        drop(live);
        Some(LiveGuard {
            gateway: self.clone(),
            session,
        })
    }

    /// Client addresses of the live sessions of a request.
    pub fn peers_of(&self, request_id: u64) -> Vec<SocketAddr> {
        self.lock_live()
            .values()
            .filter(|l| l.request_id == request_id)
            .map(|l| l.peer)
            .collect()
    }

    /// Asks the sweeper to check live sessions now (after a record changed).
    pub fn recheck_now(&self) {
        self.recheck.notify_one();
    }

    /// Closes every live session whose grant no longer holds: request deleted, state
    /// changed, access expired, or its key removed or no longer allowed.
    pub fn sweep(&self) {
        self.retire();
        let now = OffsetDateTime::now_utc();
        let live = self.lock_live();
        for (session, l) in live.iter() {
            let still = self
                .store
                .get(l.request_id)
                .filter(|r| r.filename == l.filename)
                .and_then(|r| self.check(&r, &l.key, Some(l.peer.ip()), now));
            if still != Some(l.access) && !l.kick.is_cancelled() {
                tracing::info!(
                    target: "audit",
                    event = "revoked",
                    session,
                    request = l.request_id,
                    key = %fingerprint(&l.key),
                    peer = %l.peer,
                    "access ended; closing the session"
                );
                l.kick.cancel();
            }
        }
    }

    /// Runs the sweep every second, and at once when asked, until `shutdown`.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.recheck.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            self.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FileStore;

    fn received_total(g: &Gateway) -> String {
        let metrics = g.render_metrics();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("sftpgate_bytes_received_total"));
        line.unwrap_or_default().to_string()
    }

    #[test]
    fn a_deleted_request_leaves_its_totals_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(FileStore::open(dir.path()).expect("store"));
        let g = Gateway::new(store, None, None, 10);
        let held = g.activity(7);
        held.bytes_written.store(1000, Ordering::Relaxed);
        g.activity(8).bytes_written.store(234, Ordering::Relaxed);
        let before = received_total(&g);
        assert!(before.ends_with(" 1234"), "{before}");
        // Request 7 is not in the store, as after a delete; a session still holds it.
        g.forget(7);
        g.sweep();
        assert!(g.activity.lock().unwrap().contains_key(&7));
        drop(held);
        g.sweep();
        assert!(!g.activity.lock().unwrap().contains_key(&7));
        assert!(g.forgotten.lock().unwrap().is_empty());
        assert_eq!(received_total(&g), before);
    }
}
