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
//!
//! Beside this file in `outbox_file/`: `state.rs`, the log's lines and the state they
//! replay into; `tests.rs`, the unit tests.

mod state;
#[cfg(test)]
mod tests;

use std::fs::{self, OpenOptions};
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
use state::{Line, State};

const LOG: &str = "events.log";
/// The log is never compacted below this size.
const COMPACT_FLOOR: u64 = 4 << 20;

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

fn io<'a>(what: &str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutboxError + 'a {
    let what = what.to_string();
    move |e| OutboxError::Io(format!("{what} {}: {e}", path.display()))
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
