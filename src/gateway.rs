//! The gateway's shared state: the store, the parsed keys of each request, and the live
//! SSH sessions. It turns a login attempt into a grant (which file, which mode) and closes
//! sessions whose grant no longer holds.
//!
//! It is also the only way to change a record: [`Gateway::change`] runs the store's
//! serialised read-modify-write and then, in the same call, ends the live sessions the
//! change revoked, so that no writer (operator or customer) can race another one or
//! forget the re-check. The store itself is private to this module.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::PublicKey;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::events::{Events, UploadClosed};
use crate::keys::{fingerprint, parse_authorized_keys, AuthorizedKey};
use crate::leases::{Hold, Leases};
use crate::metrics::{Derived, Metrics};
use crate::sftp::{Activity, SharedFile, WriteClosed, WriteSummary};
use crate::storage::Dumps;
use crate::store::multipart::Object;
use crate::store::{
    update_with, Access, Changed, Decision, NodeSessions, PageQuery, Record, RequestSessions,
    Store, StoreError, Updated, MAX_PEERS_LISTED,
};

/// How often live sessions are checked against their request (expiry is noticed this fast).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often the records of live sessions are read again from the store, whatever the
/// change feed said: a shared store's notifications can be lost (a listener that
/// reconnects misses what was sent meanwhile), so no change goes unnoticed longer.
const REREAD_EVERY: Duration = Duration::from_secs(10);
/// How often this node's live sessions are published to a shared store, and the other
/// nodes' read back; what other nodes show of them is at most about this old.
const EXCHANGE_EVERY: Duration = Duration::from_secs(2);

/// A request's authorized_keys text and what it parsed to.
type ParsedKeys = (String, Arc<Vec<AuthorizedKey>>);

/// What a successful login may do.
#[derive(Clone, Debug)]
pub struct Grant {
    pub request_id: u64,
    pub access: Access,
    pub key: PublicKey,
    /// The record the grant was decided on: the login reads it once (with a shared store,
    /// each read is a query). A later change that ends the grant closes the session once
    /// it is registered, so what this copy says of the file stays true while it is used.
    record: Record,
    /// [`Gateway::noted`] before that read: a change noted since is looked at again.
    noted: u64,
}

/// How an upload reached the gateway, as its upload-closed event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Sftp,
    Http,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Sftp => "sftp",
            Via::Http => "http",
        }
    }
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

/// The live sessions, and the record of each request that has some, as last read: what
/// the sweep checks them against. One lock for both, so that a session registered while
/// its record changes is checked against the newer one either way.
#[derive(Default)]
struct LiveSet {
    sessions: HashMap<u64, Live>,
    /// `None`: the record is gone.
    records: HashMap<u64, Option<Record>>,
}

impl LiveSet {
    fn has_sessions(&self, request_id: u64) -> bool {
        self.sessions.values().any(|l| l.request_id == request_id)
    }
}

pub struct Gateway {
    /// Private: reads go through [`record`](Self::record) and [`records`](Self::records),
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
    /// Parsed keys per request, with the text they were parsed from.
    keys: Mutex<HashMap<u64, ParsedKeys>>,
    live: Mutex<LiveSet>,
    /// Bumped by every change noted: a login whose record was read before a change that
    /// it registers after reads its record again.
    noted: AtomicU64,
    next_session: AtomicU64,
    activity: Mutex<HashMap<u64, Arc<Activity>>>,
    /// Deleted requests whose counters are still to be folded into `retired`.
    forgotten: Mutex<Vec<u64>>,
    retired: Retired,
    /// The live sessions of the other nodes sharing the store, as last exchanged, and
    /// when.
    elsewhere: Mutex<Option<(Instant, Vec<NodeSessions>)>>,
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
        let mut live = self.gateway.lock_live();
        if let Some(gone) = live.sessions.remove(&self.session) {
            if !live.has_sessions(gone.request_id) {
                live.records.remove(&gone.request_id);
            }
        }
    }
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
            keys: Mutex::default(),
            live: Mutex::default(),
            noted: AtomicU64::new(0),
            next_session: AtomicU64::new(1),
            activity: Mutex::default(),
            forgotten: Mutex::default(),
            retired: Retired::default(),
            elsewhere: Mutex::default(),
        })
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, LiveSet> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of request `id`, if any.
    pub async fn record(&self, id: u64) -> Result<Option<Record>, StoreError> {
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
    /// closed, and a deleted request is forgotten.
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
            self.forget(id);
        }
        if updated.before != updated.after {
            self.note(id, updated.after.clone());
        }
        Ok((updated, value))
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
    pub async fn authorize(
        &self,
        user: &str,
        key: &PublicKey,
        ip: Option<IpAddr>,
    ) -> Option<Grant> {
        let id = Record::parse_user(user)?;
        let noted = self.noted.load(Ordering::SeqCst);
        let record = self.read_or_log(id).await?;
        let access = self.check(&record, key, ip, OffsetDateTime::now_utc())?;
        Some(Grant {
            request_id: id,
            access,
            key: key.clone(),
            record,
            noted,
        })
    }

    /// The record of `id` for the SSH side, which has no one to report a store failure
    /// to: it is logged, and nothing is granted.
    async fn read_or_log(&self, id: u64) -> Option<Record> {
        self.store
            .get(id)
            .await
            .inspect_err(|e| tracing::error!(request = id, error = %e, "cannot read the record"))
            .ok()
            .flatten()
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
    pub fn shared_file(&self, grant: &Grant) -> SharedFile {
        let record = &grant.record;
        let writable = grant.access == Access::Upload;
        let (storage, partial) = self.dumps.sftp(record.id, writable, |object| match object {
            Object::Upload => self.store.upload_path(record.id),
            Object::Partial => self.store.upload_path(record.id).with_extension("filepart"),
            Object::Upgraded => self.store.upgraded_path(record.id),
        });
        SharedFile {
            name: record.visible_name(grant.access),
            storage,
            writable,
            max_size: if writable { self.max_upload_size } else { None },
            partial,
            leases: writable.then(|| self.leases.for_request(record.id)),
        }
    }

    /// Where the dumps live.
    pub fn dumps(&self) -> &Dumps {
        &self.dumps
    }

    /// The size of request `id`'s upload or upgraded dump, `None` if there is none: on
    /// object storage, an upload in progress counts its committed parts.
    pub async fn dump_size(&self, id: u64, object: Object) -> std::io::Result<Option<u64>> {
        match &self.dumps {
            Dumps::S3(s3) => s3.size(id, object).await,
            Dumps::Local => {
                let path = match object {
                    Object::Upload => self.store.upload_path(id),
                    Object::Partial => self.store.upload_path(id).with_extension("filepart"),
                    Object::Upgraded => self.store.upgraded_path(id),
                };
                match tokio::fs::metadata(path).await {
                    Ok(m) => Ok(Some(m.len())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Removes request `id`'s objects, and aborts its multipart uploads (best effort: the
    /// sweeper aborts what this misses).
    async fn purge_objects(&self, id: u64) {
        if let Dumps::S3(s3) = &self.dumps {
            if let Err(e) = s3.purge(id).await {
                tracing::warn!(request = id, error = %e, "cannot remove a request's objects");
            }
        }
    }

    /// What to do each time a write handle of this grant's session is closed: see
    /// [`upload_closed`](Self::upload_closed). It runs on the session's request thread
    /// (which may block) and returns the failure to answer the CLOSE with when the event
    /// could not be stored.
    pub fn on_write_closed(self: &Arc<Self>, grant: &Grant, peer: SocketAddr) -> WriteClosed {
        let request = grant.request_id;
        let key = fingerprint(&grant.key);
        let gateway = self.clone();
        Arc::new(move |w| {
            tokio::runtime::Handle::current().block_on(gateway.upload_closed(
                request,
                Some(&key),
                peer,
                Via::Sftp,
                &w,
            ))
        })
    }

    /// An upload of `request` ended with its file durable: an SFTP write handle was closed,
    /// or an HTTP upload's body ended (`key`: the SSH key's fingerprint; an HTTP upload has
    /// none). One audit line, and with a hook the upload-closed event, stored in the
    /// outbox before this returns (so before the client is answered); the failure to
    /// answer with when it could not be stored.
    pub async fn upload_closed(
        &self,
        request: u64,
        key: Option<&str>,
        peer: SocketAddr,
        via: Via,
        w: &WriteSummary,
    ) -> Result<(), String> {
        Metrics::inc(&self.metrics.uploads_completed_total);
        let duration_ms = w.duration.as_millis() as u64;
        tracing::info!(target: "audit", event = "upload-closed", request, key = key.unwrap_or("-"), via = via.as_str(), peer = %peer,
            bytes = w.bytes, size = w.size, duration_ms, "upload closed");
        let Some(events) = &self.events else {
            return Ok(());
        };
        let event = Events::upload_closed(UploadClosed {
            request_id: request,
            key_fingerprint: key,
            via: via.as_str(),
            client: peer.to_string(),
            bytes_written: w.bytes,
            final_size: w.size,
            duration_ms,
        });
        events.emit(event).await.map(|_| ()).map_err(|e| {
            format!(
                "the upload is saved, but its upload-closed event could not be recorded ({e}); \
                 upload again to close it again (put -a resumes)"
            )
        })
    }

    /// The size limit of uploads (`--max-upload-size`), as upload sessions apply it.
    pub fn max_upload_size(&self) -> Option<u64> {
        self.max_upload_size
    }

    /// The lease of request `id`'s upload for a writer that must be alone on it (an HTTP
    /// upload): no SFTP write handle of the request is open here or on another node
    /// while it is held, and none opens. Waits at most `--lease-wait`.
    pub async fn lease_upload_alone(&self, id: u64) -> Result<Arc<Hold>, &'static str> {
        self.leases.acquire_exclusive(id).await
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

    /// The metrics page, with totals summed over every request's activity.
    pub async fn render_metrics(&self) -> Result<String, StoreError> {
        // While the store is down the page still answers (its error counters matter most
        // then), without the per-state gauge, and without waiting for the pool's timeout.
        let counts = match self.store.health().await {
            Ok(()) => Some(self.store.count_by_state().await?),
            Err(_) => None,
        };
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

    pub fn activity(&self, request_id: u64) -> Arc<Activity> {
        let mut map = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(request_id).or_default().clone()
    }

    /// Drops what is kept about a deleted request: its parsed keys now, its counters once
    /// no session holds them (see [`retire`](Self::retire)).
    fn forget(&self, request_id: u64) {
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
    async fn retire(&self) {
        let ids = self
            .forgotten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Read without the locks held (a store read may wait on the network); an id whose
        // read failed, or forgotten since, is looked at again next time.
        let mut exists = HashMap::new();
        for id in ids {
            if let Ok(r) = self.store.get(id).await {
                exists.insert(id, r.is_some());
            }
        }
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        let mut activity = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        forgotten.retain(|id| {
            match exists.get(id) {
                None => return true,
                // Created again under the same id: the counters carry on with it.
                Some(true) => return false,
                Some(false) => {}
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
    pub async fn register(
        self: &Arc<Self>,
        session: u64,
        grant: &Grant,
        peer: SocketAddr,
        kick: CancellationToken,
    ) -> Option<LiveGuard> {
        let (noted, record) = (grant.noted, Some(grant.record.clone()));
        let filename = grant.record.filename.clone();
        {
            let mut live = self.lock_live();
            // Counted and inserted under one lock, so that logins racing each other cannot
            // pass the cap together.
            let sessions = live
                .sessions
                .values()
                .filter(|l| l.request_id == grant.request_id)
                .count();
            if sessions >= self.max_sessions_per_request {
                return None;
            }
            live.sessions.insert(
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
            // A change that came between this login's read and now was noted under this lock:
            // the session is checked against the newer record at once.
            let record = live
                .records
                .entry(grant.request_id)
                .or_insert(record)
                .clone();
            self.revoke_in(
                &live,
                grant.request_id,
                record.as_ref(),
                OffsetDateTime::now_utc(),
            );
        }
        let guard = LiveGuard {
            gateway: self.clone(),
            session,
        };
        if self.noted.load(Ordering::SeqCst) != noted {
            // A change came after this login's read and may have found no session of this
            // request to check: look again.
            self.reread(Some(vec![grant.request_id])).await;
        }
        Some(guard)
    }

    /// Client addresses of the live sessions of a request.
    pub fn peers_of(&self, request_id: u64) -> Vec<SocketAddr> {
        self.lock_live()
            .sessions
            .values()
            .filter(|l| l.request_id == request_id)
            .map(|l| l.peer)
            .collect()
    }

    /// Whether the store answers now (see [`Store::health`]).
    pub async fn store_health(&self) -> Result<(), StoreError> {
        self.store.health().await
    }

    /// The live sessions of request `id` on the other nodes, by node name, as last
    /// exchanged (nothing once that is older than a few exchange periods).
    pub fn sessions_elsewhere(&self, request_id: u64) -> Vec<(String, RequestSessions)> {
        let elsewhere = self.elsewhere.lock().unwrap_or_else(|p| p.into_inner());
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
        let live = self.lock_live();
        let mut by_request: std::collections::BTreeMap<u64, RequestSessions> = Default::default();
        for l in live.sessions.values() {
            let r = by_request
                .entry(l.request_id)
                .or_insert_with(|| RequestSessions {
                    request_id: l.request_id,
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
                Ok(theirs) => {
                    *self.elsewhere.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((Instant::now(), theirs));
                }
                // What was last read fades out by itself (see `sessions_elsewhere`).
                Err(e) => {
                    tracing::warn!(error = %e, "cannot exchange live sessions with the other nodes")
                }
            }
        }
    }

    /// Closes the live sessions of request `id` that `record` (its record now, `None` if
    /// deleted) no longer grants: state changed, access expired, file renamed, or key
    /// removed or no longer allowed. The one check behind both a change and the sweep.
    fn revoke_in(&self, live: &LiveSet, id: u64, record: Option<&Record>, now: OffsetDateTime) {
        for (session, l) in live.sessions.iter().filter(|(_, l)| l.request_id == id) {
            let still = record
                .filter(|r| r.filename == l.filename)
                .and_then(|r| self.check(r, &l.key, Some(l.peer.ip()), now));
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

    /// Notes `record` as the record of request `id` now (`None`: deleted) and closes the
    /// live sessions it no longer grants.
    fn note(&self, id: u64, record: Option<Record>) {
        self.noted.fetch_add(1, Ordering::SeqCst);
        let mut live = self.lock_live();
        if !live.has_sessions(id) {
            return;
        }
        self.revoke_in(&live, id, record.as_ref(), OffsetDateTime::now_utc());
        live.records.insert(id, record);
    }

    /// Reads the records of `ids` (those with live sessions, if `None`) again from the
    /// store and re-checks their sessions.
    async fn reread(&self, ids: Option<Vec<u64>>) {
        let ids = ids.unwrap_or_else(|| self.lock_live().records.keys().copied().collect());
        if ids.is_empty() {
            return;
        }
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
    /// read. Changes re-check their own request at once (see [`change`](Self::change), and
    /// the change feed in [`run_sweeper`](Self::run_sweeper)); this catches what time
    /// alone ends: an expiry passing, a key's `expiry-time`.
    pub async fn sweep(&self) {
        self.retire().await;
        let now = OffsetDateTime::now_utc();
        let live = self.lock_live();
        for (id, record) in &live.records {
            self.revoke_in(&live, *id, record.as_ref(), now);
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
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep().await,
                _ = reread.tick() => self.reread(None).await,
                changed = next_change(&mut changes) => match changed {
                    Some(Changed::Record(id)) => self.reread(Some(vec![id])).await,
                    Some(Changed::Unknown) => self.reread(None).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::State;
    use crate::store::{hash_key, FileStore};

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKbk4EHF3X5miABPFC3UVX+U9igZJxLC2U169zVW+L4W alice@laptop";

    async fn received_total(g: &Gateway) -> String {
        let metrics = g.render_metrics().await.expect("metrics");
        let line = metrics
            .lines()
            .find(|l| l.starts_with("sftpgate_bytes_received_total"));
        line.unwrap_or_default().to_string()
    }

    fn gateway(dir: &std::path::Path) -> Arc<Gateway> {
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

    #[tokio::test]
    async fn a_deleted_request_leaves_its_totals_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let g = gateway(dir.path());
        let held = g.activity(7);
        held.bytes_written.store(1000, Ordering::Relaxed);
        g.activity(8).bytes_written.store(234, Ordering::Relaxed);
        let before = received_total(&g).await;
        assert!(before.ends_with(" 1234"), "{before}");
        // Request 7 is not in the store, as after a delete; a session still holds it.
        g.forget(7);
        g.sweep().await;
        assert!(g.activity.lock().unwrap().contains_key(&7));
        drop(held);
        g.sweep().await;
        assert!(!g.activity.lock().unwrap().contains_key(&7));
        assert!(g.forgotten.lock().unwrap().is_empty());
        assert_eq!(received_total(&g).await, before);
    }

    /// A change ends the sessions it revokes by itself, without waiting for the sweep; one
    /// that changes nothing, or changes another request, ends none.
    #[tokio::test]
    async fn a_change_closes_the_sessions_it_revokes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let g = gateway(dir.path());
        let now = OffsetDateTime::now_utc();
        let record = |id| Record {
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
        for id in [1, 2] {
            g.change(id, |_| (Decision::Put(record(id)), ()))
                .await
                .expect("created");
        }
        let key = PublicKey::from_openssh(ED).expect("key");
        let peer: SocketAddr = "127.0.0.1:2222".parse().expect("address");
        let mut sessions = Vec::new();
        for id in [1, 2] {
            let grant = g
                .authorize(&Record::user_name(id), &key, Some(peer.ip()))
                .await
                .expect("granted");
            let kick = CancellationToken::new();
            let live = g.register(id, &grant, peer, kick.clone()).await;
            sessions.push((kick, live.expect("registered")));
        }
        let kicked = |n: usize| sessions[n].0.is_cancelled();

        g.change(1, |_| (Decision::Keep, ())).await.expect("kept");
        g.change(1, |r| (Decision::Put(r.cloned().expect("record")), ()))
            .await
            .expect("rewritten");
        assert!(!kicked(0) && !kicked(1));
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
        assert!(kicked(0) && !kicked(1));
        let (updated, ()) = g
            .change(2, |_| (Decision::Delete { purge: false }, ()))
            .await
            .expect("deleted");
        assert!(updated.deleted() && kicked(1));
        assert!(g.authorize("user_2", &key, Some(peer.ip())).await.is_none());
    }
}
