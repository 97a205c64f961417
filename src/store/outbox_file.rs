//! The file store's event outbox: one append-only log, `DATA_DIR/outbox/events.log`, of
//! JSON lines (an event stored, an event delivered, and after a compaction each request's
//! last sequence number and last expiry emitted), replayed into memory at start.
//!
//! A log rather than a file per event: storing an event is one append and one
//! `fdatasync` (no file to create, no directory to sync), and events stored at once by
//! several sessions share one `fdatasync` (whoever syncs covers everything appended before
//! it). A delivery is appended without a sync: lost in a crash, the event is only sent
//! again, which at-least-once delivery allows. Once the log has grown to four times its
//! size at the last compaction (and past 4 MiB), it is rewritten with what is still
//! live (temp file, fsync, rename, fsync of the directory). A line torn by a crash is the
//! last one, never acknowledged, and is cut off at start.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::outbox::{
    Claim, Event, NewEvent, Outbox, OutboxError, OutboxLimits, OutboxStats, Release,
};
use super::{private, sync_dir_io};

const LOG: &str = "events.log";
/// The log is never compacted below this size.
const COMPACT_FLOOR: u64 = 4 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Line {
    Event {
        event: Event,
        /// Set for an access-expired event: the expiry it reports, marked emitted.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "time::serde::rfc3339::option"
        )]
        expiry: Option<OffsetDateTime>,
    },
    Delivered {
        request_id: u64,
        seq: u64,
    },
    Seq {
        request_id: u64,
        last_seq: u64,
    },
    Expiry {
        request_id: u64,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
}

pub struct FileOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    limits: OutboxLimits,
    /// [`COMPACT_FLOOR`], smaller in tests.
    compact_floor: u64,
    state: Mutex<State>,
    /// Taken before `state` by whoever syncs or compacts: how far the log (counted in
    /// bytes ever appended) is known durable.
    synced: Mutex<u64>,
}

#[derive(Default)]
struct State {
    file: Option<Arc<File>>,
    /// Bytes ever appended, across compactions: a position to sync up to.
    appended: u64,
    log_len: u64,
    /// The log's size after the last compaction (or at start).
    compacted_len: u64,
    pending: BTreeMap<u64, VecDeque<Event>>,
    last_seq: HashMap<u64, u64>,
    expiries: HashMap<u64, OffsetDateTime>,
    /// When each request with waiting events is due, and its failures in a row.
    due: HashMap<u64, (Instant, u32)>,
    claims: HashMap<u64, (u64, Instant)>,
    next_token: u64,
    depth: u64,
    bytes: u64,
}

fn io<'a>(what: &str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutboxError + 'a {
    let what = what.to_string();
    move |e| OutboxError::Io(format!("{what} {}: {e}", path.display()))
}

impl State {
    fn apply(&mut self, line: Line) {
        match line {
            Line::Event { event, expiry } => {
                if let Some(t) = expiry {
                    self.expiries.insert(event.request_id, t);
                }
                let last = self.last_seq.entry(event.request_id).or_default();
                *last = (*last).max(event.seq);
                self.depth += 1;
                self.bytes += event.body.len() as u64;
                self.due
                    .entry(event.request_id)
                    .or_insert((Instant::now(), 0));
                self.pending
                    .entry(event.request_id)
                    .or_default()
                    .push_back(event);
            }
            Line::Delivered { request_id, seq } => {
                let Some(queue) = self.pending.get_mut(&request_id) else {
                    return;
                };
                if let Some(at) = queue.iter().position(|e| e.seq == seq) {
                    if let Some(e) = queue.remove(at) {
                        self.depth -= 1;
                        self.bytes -= e.body.len() as u64;
                    }
                }
                if queue.is_empty() {
                    self.pending.remove(&request_id);
                    self.due.remove(&request_id);
                }
            }
            Line::Seq {
                request_id,
                last_seq,
            } => {
                let last = self.last_seq.entry(request_id).or_default();
                *last = (*last).max(last_seq);
            }
            Line::Expiry {
                request_id,
                expires_at,
            } => {
                self.expiries.insert(request_id, expires_at);
            }
        }
    }

    /// Appends `line` to the log (not synced). A failed write is cut off again, so the
    /// log never holds half a line before a later one.
    fn append(&mut self, line: &Line, path: &Path) -> Result<(), OutboxError> {
        let mut bytes = serde_json::to_vec(line).map_err(|e| OutboxError::Io(e.to_string()))?;
        bytes.push(b'\n');
        let file = self
            .file
            .clone()
            .ok_or_else(|| OutboxError::Io("the outbox log is not open".into()))?;
        if let Err(e) = (&*file).write_all(&bytes) {
            let _ = file.set_len(self.log_len);
            return Err(io("cannot append to", path)(e));
        }
        self.log_len += bytes.len() as u64;
        self.appended += bytes.len() as u64;
        Ok(())
    }

    /// What the log must hold to be replayed into this state.
    fn live_lines(&self) -> Vec<Line> {
        let mut lines: Vec<Line> = self
            .last_seq
            .iter()
            .map(|(&request_id, &last_seq)| Line::Seq {
                request_id,
                last_seq,
            })
            .collect();
        lines.extend(
            self.expiries
                .iter()
                .map(|(&request_id, &expires_at)| Line::Expiry {
                    request_id,
                    expires_at,
                }),
        );
        lines.extend(self.pending.values().flatten().map(|e| Line::Event {
            event: e.clone(),
            expiry: None,
        }));
        lines
    }
}

impl FileOutbox {
    /// Opens (creating) `data_dir/outbox/` and replays its log; at most `limits` events
    /// may wait at once.
    pub fn open(data_dir: &Path, limits: OutboxLimits) -> Result<FileOutbox, OutboxError> {
        let dir = data_dir.join("outbox");
        private::create_dir(&dir).map_err(io("cannot create", &dir))?;
        private::tighten_dir(&dir);
        let path = dir.join(LOG);
        let mut state = State::default();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("cannot read", &path)(e)),
        };
        // Everything after the last newline is a line torn by a crash: never synced, so
        // never acknowledged.
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for (n, raw) in text[..whole].split(|&b| b == b'\n').enumerate() {
            if raw.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Line>(raw) {
                Ok(line) => state.apply(line),
                Err(e) => {
                    tracing::error!(path = %path.display(), line = n + 1, error = %e, "skipped an unreadable outbox line")
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(private::FILE_MODE)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        if whole < text.len() {
            file.set_len(whole as u64)
                .map_err(io("cannot cut the torn line off", &path))?;
            tracing::warn!(path = %path.display(), "cut off a torn last outbox line");
        }
        state.file = Some(Arc::new(file));
        state.log_len = whole as u64;
        state.compacted_len = whole as u64;
        if state.depth > 0 {
            tracing::info!(
                events = state.depth,
                "events from before the restart wait for the hook"
            );
        }
        Ok(FileOutbox {
            inner: Arc::new(Inner {
                dir,
                limits,
                compact_floor: COMPACT_FLOOR,
                state: Mutex::new(state),
                synced: Mutex::new(0),
            }),
        })
    }

    /// Runs `f` on a blocking thread (it may fsync).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| OutboxError::Io(e.to_string()))?
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self) -> PathBuf {
        self.dir.join(LOG)
    }

    fn push(
        &self,
        event: NewEvent,
        expiry: Option<OffsetDateTime>,
    ) -> Result<Option<Event>, OutboxError> {
        let request = event.request_id;
        let (stored, position) = {
            let mut st = self.lock();
            if expiry.is_some() && st.expiries.get(&request) == expiry.as_ref() {
                return Ok(None);
            }
            if st.depth >= self.limits.events {
                return Err(OutboxError::Full(st.depth));
            }
            let of_request = st.pending.get(&request).map_or(0, |q| q.len() as u64);
            if of_request >= self.limits.per_request {
                return Err(OutboxError::RequestFull(of_request));
            }
            let seq = st.last_seq.get(&request).copied().unwrap_or(0) + 1;
            let stored = event.numbered(seq);
            let line = Line::Event {
                event: stored.clone(),
                expiry,
            };
            st.append(&line, &self.path())?;
            st.apply(line);
            (stored, st.appended)
        };
        self.sync_to(position)?;
        self.maybe_compact()?;
        Ok(Some(stored))
    }

    /// Makes the log durable up to `position`, unless another sync already did.
    fn sync_to(&self, position: u64) -> Result<(), OutboxError> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= position {
            return Ok(());
        }
        let (file, upto) = {
            let st = self.lock();
            (st.file.clone(), st.appended)
        };
        if let Some(file) = file {
            file.sync_data().map_err(io("cannot sync", &self.path()))?;
        }
        *synced = upto;
        Ok(())
    }

    fn delivered(&self, request_id: u64, seq: u64) -> Result<(), OutboxError> {
        {
            let mut st = self.lock();
            let line = Line::Delivered { request_id, seq };
            st.append(&line, &self.path())?;
            st.apply(line);
        }
        self.maybe_compact()
    }

    fn maybe_compact(&self) -> Result<(), OutboxError> {
        {
            let st = self.lock();
            if st.log_len < self.compact_floor.max(4 * st.compacted_len) {
                return Ok(());
            }
        }
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        let path = self.path();
        let mut tmp = tempfile::Builder::new()
            .prefix(".events.")
            .suffix(".tmp")
            .permissions(private::file_permissions())
            .tempfile_in(&self.dir)
            .map_err(io("cannot compact into", &self.dir))?;
        let mut out = std::io::BufWriter::new(tmp.as_file_mut());
        for line in st.live_lines() {
            serde_json::to_writer(&mut out, &line).map_err(|e| OutboxError::Io(e.to_string()))?;
            out.write_all(b"\n").map_err(io("cannot compact", &path))?;
        }
        out.flush().map_err(io("cannot compact", &path))?;
        drop(out);
        tmp.as_file()
            .sync_all()
            .map_err(io("cannot compact", &path))?;
        tmp.persist(&path)
            .map_err(|e| io("cannot compact onto", &path)(e.error))?;
        sync_dir_io(&self.dir).map_err(io("cannot sync", &self.dir))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        let len = file.metadata().map_err(io("cannot read", &path))?.len();
        tracing::info!(
            from = st.log_len,
            to = len,
            events = st.depth,
            "compacted the outbox log"
        );
        st.file = Some(Arc::new(file));
        st.log_len = len;
        st.compacted_len = len;
        // Everything appended so far is in the new, synced file.
        *synced = st.appended;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Outbox for FileOutbox {
    async fn push(&self, event: NewEvent) -> Result<Event, OutboxError> {
        self.blocking(move |inner| inner.push(event, None))
            .await?
            .ok_or_else(|| OutboxError::Io("the event was not stored".into()))
    }

    async fn push_expiry(
        &self,
        event: NewEvent,
        expires_at: OffsetDateTime,
    ) -> Result<Option<Event>, OutboxError> {
        // Most sweeps find the expiry marked already: answered without a thread.
        if self.inner.lock().expiries.get(&event.request_id) == Some(&expires_at) {
            return Ok(None);
        }
        self.blocking(move |inner| inner.push(event, Some(expires_at)))
            .await
    }

    async fn claim(
        &self,
        _node: &str,
        max: usize,
        ttl: Duration,
    ) -> Result<Vec<Claim>, OutboxError> {
        let now = Instant::now();
        let mut st = self.inner.lock();
        let mut due: Vec<(Instant, u64, u32)> = st
            .pending
            .keys()
            .filter(|id| st.claims.get(id).is_none_or(|(_, until)| *until <= now))
            .filter_map(|id| {
                let (at, attempts) = st.due.get(id).copied().unwrap_or((now, 0));
                (at <= now).then_some((at, *id, attempts))
            })
            .collect();
        due.sort();
        due.truncate(max);
        let mut claims = Vec::with_capacity(due.len());
        for (_, request_id, attempts) in due {
            st.next_token += 1;
            let token = st.next_token;
            st.claims.insert(request_id, (token, now + ttl));
            claims.push(Claim {
                request_id,
                token,
                attempts,
            });
        }
        Ok(claims)
    }

    async fn pending(&self, claim: &Claim, limit: usize) -> Result<Vec<Event>, OutboxError> {
        let st = self.inner.lock();
        Ok(st
            .pending
            .get(&claim.request_id)
            .map(|q| q.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn delivered(&self, claim: &Claim, seq: u64) -> Result<(), OutboxError> {
        let request = claim.request_id;
        self.blocking(move |inner| inner.delivered(request, seq))
            .await
    }

    async fn release(&self, claim: &Claim, how: Release) -> Result<(), OutboxError> {
        let mut st = self.inner.lock();
        if st
            .claims
            .get(&claim.request_id)
            .is_some_and(|(token, _)| *token == claim.token)
        {
            st.claims.remove(&claim.request_id);
        }
        if st.pending.contains_key(&claim.request_id) {
            let now = Instant::now();
            let due = match how {
                Release::Done => (now, 0),
                Release::Failed { attempts, retry_in } => (now + retry_in, attempts),
            };
            st.due.insert(claim.request_id, due);
        }
        Ok(())
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let st = self.inner.lock();
        Ok(OutboxStats {
            depth: st.depth,
            bytes: st.bytes,
            oldest: st
                .pending
                .values()
                .filter_map(|q| q.front().map(|e| e.created_at))
                .min(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    fn event(request_id: u64, n: u64) -> NewEvent {
        let mut fields = Map::new();
        fields.insert("event".into(), "upload-closed".into());
        fields.insert("n".into(), Value::from(n));
        NewEvent { request_id, fields }
    }

    const TTL: Duration = Duration::from_secs(60);

    fn limits(events: u64, per_request: u64) -> OutboxLimits {
        OutboxLimits {
            events,
            per_request,
        }
    }

    #[tokio::test]
    async fn events_survive_a_restart_in_order_and_delivered_ones_stay_gone() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = FileOutbox::open(dir.path(), limits(100, 100)).unwrap();
        for n in 1..=3 {
            assert_eq!(outbox.push(event(7, n)).await.unwrap().seq, n);
        }
        outbox.push(event(8, 1)).await.unwrap();
        let claims = outbox.claim("n", 10, TTL).await.unwrap();
        assert_eq!(claims.len(), 2);
        let seven = claims.iter().find(|c| c.request_id == 7).unwrap();
        // Nobody else gets a claimed request.
        assert!(outbox.claim("n", 10, TTL).await.unwrap().is_empty());
        let first = &outbox.pending(seven, 10).await.unwrap()[0];
        outbox.delivered(seven, first.seq).await.unwrap();
        drop(outbox);

        // A torn last line (a crash mid-append) is cut off.
        let log = dir.path().join("outbox").join(LOG);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"{\"op\":\"event\",\"ev")
            .unwrap();
        let outbox = FileOutbox::open(dir.path(), limits(100, 100)).unwrap();
        assert_eq!(outbox.stats().await.unwrap().depth, 3);
        let claims = outbox.claim("n", 10, TTL).await.unwrap();
        let seven = claims.iter().find(|c| c.request_id == 7).unwrap();
        let seqs: Vec<u64> = outbox
            .pending(seven, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [2, 3]);
        // Numbers go on from the last one, never reused.
        assert_eq!(outbox.push(event(7, 4)).await.unwrap().seq, 4);
    }

    #[tokio::test]
    async fn the_bound_refuses_and_an_expiry_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = FileOutbox::open(dir.path(), limits(2, 2)).unwrap();
        let t = OffsetDateTime::now_utc();
        assert!(outbox.push_expiry(event(1, 1), t).await.unwrap().is_some());
        assert!(outbox.push_expiry(event(1, 2), t).await.unwrap().is_none());
        outbox.push(event(2, 1)).await.unwrap();
        assert!(matches!(
            outbox.push(event(3, 1)).await,
            Err(OutboxError::Full(2))
        ));
        drop(outbox);
        let outbox = FileOutbox::open(dir.path(), limits(2, 2)).unwrap();
        assert!(outbox.push_expiry(event(1, 3), t).await.unwrap().is_none());
        let later = t + time::Duration::hours(1);
        // A new expiry of the same request is a new event (once there is room).
        assert!(matches!(
            outbox.push_expiry(event(1, 4), later).await,
            Err(OutboxError::Full(_))
        ));
    }

    #[tokio::test]
    async fn a_failed_request_waits_for_its_backoff_and_compaction_keeps_what_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = FileOutbox::open(dir.path(), limits(1_000_000, 1_000_000)).unwrap();
        let floor = 64 * 1024;
        Arc::get_mut(&mut outbox.inner).unwrap().compact_floor = floor;
        outbox.push(event(1, 1)).await.unwrap();
        let claim = outbox.claim("n", 1, TTL).await.unwrap().remove(0);
        let failed = Release::Failed {
            attempts: 1,
            retry_in: Duration::from_secs(3600),
        };
        outbox.release(&claim, failed).await.unwrap();
        assert!(outbox.claim("n", 1, TTL).await.unwrap().is_empty());

        // Enough traffic on another request to compact the log several times.
        let body = "x".repeat(1000);
        for n in 0..500u64 {
            let mut e = event(2, n);
            e.fields.insert("pad".into(), Value::from(body.as_str()));
            let stored = outbox.push(e).await.unwrap();
            let claim = Claim {
                request_id: 2,
                token: 0,
                attempts: 0,
            };
            outbox.delivered(&claim, stored.seq).await.unwrap();
        }
        let len = std::fs::metadata(dir.path().join("outbox").join(LOG))
            .unwrap()
            .len();
        assert!(len < 4 * floor, "{len}");
        drop(outbox);
        let outbox = FileOutbox::open(dir.path(), limits(1_000_000, 1_000_000)).unwrap();
        let stats = outbox.stats().await.unwrap();
        assert_eq!(stats.depth, 1);
        assert_eq!(outbox.push(event(2, 0)).await.unwrap().seq, 501);
    }
}
