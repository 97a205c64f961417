//! One SFTP session's request loop (run by [`super::serve`]).
//!
//! Requests are handled strictly in arrival order by one loop, so writes to a handle land
//! in the order the client sent them and the file is always a contiguous prefix of what
//! was sent. Replies go through [`ReplyQueue`] to a separate writer thread: the loop never
//! waits for the client to read a reply, which is what lets it keep draining the channel
//! (russh stops reading the socket, window adjustments included, while a channel's queue
//! is full, so a loop that waited on its own replies could deadlock against the client).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::queue::{PendingRead, ReplyQueue};
use super::rope::{Pieces, Rope};
use super::storage::{Body, Meta, Name, OpenMode};
use super::vfs::{self, Resolved};
use super::wire::{
    self, Attrs, DecodeError, Request, StatusCode, FXF_APPEND, FXF_CREAT, FXF_READ, FXF_TRUNC,
    FXF_WRITE,
};
use super::{
    Activity, LeaseHold, SharedFile, LEASE_LOST, MAX_HANDLES, MAX_IO_LEN, MAX_PACKET_LEN,
    MAX_WRITE_GAP,
};

/// Enough of a WRITE to decode what precedes its data with any handle this server issues.
const WRITE_HEAD_MAX: usize = 128;
/// How long a request waits for what an ended session received to be written.
const OTHER_SESSIONS_WAIT: Duration = Duration::from_secs(30);

/// Reported when a handle that was opened for writing is closed.
#[derive(Clone, Debug)]
pub struct WriteSummary {
    /// Bytes written through this handle.
    pub bytes: u64,
    /// Size of the file after the close.
    pub size: u64,
    pub duration: Duration,
}

/// What one session transferred.
#[derive(Clone, Debug, Default)]
pub struct SessionSummary {
    pub bytes_written: u64,
    pub requests: u64,
}

/// Called on every close of a write handle, after its fsync, on the session's request
/// thread (it may block: the CLOSE is answered once it returns). An `Err` is the reason
/// the close is answered with `SSH_FX_FAILURE` (what reports the close could not be
/// recorded); the file stays as written.
pub type WriteClosed = Arc<dyn Fn(WriteSummary) -> Result<(), String> + Send + Sync>;

struct OpenFile {
    body: Arc<dyn Body>,
    /// The name it was opened by (the file or its `.filepart`), for the audit log.
    name: String,
    read: bool,
    write: bool,
    append: bool,
    written: u64,
    /// Bytes sent to the client from this handle (counted by the reply writer).
    sent: Arc<AtomicU64>,
    opened: Instant,
    /// The end of the file as this handle last saw it, so that most writes need not ask.
    end: u64,
    /// A write handle's hold on the upload's lease, dropped (released, if it is the last)
    /// only after the handle's file was fsynced.
    lease: Option<Arc<dyn LeaseHold>>,
}

impl OpenFile {
    /// Whether this handle wrote under a lease this node has lost since.
    fn lease_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| !l.valid())
    }
}

impl OpenFile {
    /// Whether a write at `offset` would leave more than [`MAX_WRITE_GAP`] bytes unwritten
    /// before it: the file must stay a contiguous prefix of the upload (resume relies on
    /// it), and a write far past the end would make a huge sparse file.
    fn gap_too_large(&mut self, offset: u64) -> bool {
        if offset <= self.end.saturating_add(MAX_WRITE_GAP) {
            return false;
        }
        // Another handle or session may have written further meanwhile.
        self.end = self.body.meta().map(|m| m.size).unwrap_or(self.end);
        offset > self.end.saturating_add(MAX_WRITE_GAP)
    }
}

enum Handle {
    File(OpenFile),
    Dir { listed: bool },
}

pub(super) struct Session {
    /// This session's number among the request's sessions.
    number: u64,
    shared: SharedFile,
    activity: Arc<Activity>,
    on_write_closed: Option<WriteClosed>,
    queue: Arc<ReplyQueue>,
    handles: HashMap<u32, Handle>,
    next_handle: u32,
    /// Bytes received that do not yet form a whole packet.
    pending: Rope,
    /// Bytes still to discard of an oversized packet.
    skip: usize,
    summary: SessionSummary,
    /// Whether the session has waited for another node writing the upload to let go.
    other_nodes_checked: bool,
    /// That wait ran out: this session takes the lease only if it is free at once, so that
    /// a second writer beside another node's live upload is refused within one bound.
    lease_wait_spent: bool,
}

fn io_status(e: &std::io::Error) -> (StatusCode, String) {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    (code, e.to_string())
}

impl Session {
    pub(super) fn new(
        number: u64,
        shared: SharedFile,
        activity: Arc<Activity>,
        on_write_closed: Option<WriteClosed>,
        queue: Arc<ReplyQueue>,
    ) -> Session {
        Session {
            number,
            shared,
            activity,
            on_write_closed,
            queue,
            handles: HashMap::new(),
            next_handle: 1,
            pending: Rope::default(),
            skip: 0,
            summary: SessionSummary::default(),
            other_nodes_checked: false,
            lease_wait_spent: false,
        }
    }

    /// The request loop: runs on a blocking thread until the pump closes the channel, then
    /// syncs and closes whatever the client left open.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Bytes>) -> SessionSummary {
        while let Some(chunk) = rx.blocking_recv() {
            self.feed(chunk);
        }
        self.close_all();
        self.summary
    }

    /// Splits the byte stream into packets and handles each in order.
    fn feed(&mut self, mut chunk: Bytes) {
        self.wait_for_other_nodes();
        // Once per chunk, not per packet: the packets of one chunk arrived together.
        self.wait_for_other_sessions();
        let skipped = self.skip.min(chunk.len());
        chunk.advance(skipped);
        self.skip -= skipped;
        self.pending.push(chunk);
        let mut len = [0; 4];
        while self.pending.peek(&mut len) {
            let len = u32::from_be_bytes(len);
            if len > MAX_PACKET_LEN {
                // Answer under the packet's own id, then discard its body as it arrives,
                // so the stream stays in step.
                let mut head = [0; 9];
                if !self.pending.peek(&mut head) {
                    break;
                }
                let id = wire::peek_id(&head[4..]).unwrap_or(0);
                self.status(
                    id,
                    StatusCode::BadMessage,
                    &format!("packet of {len} bytes exceeds the limit of {MAX_PACKET_LEN}"),
                );
                let total = 4 + len as usize;
                self.skip = total - self.pending.advance(total);
                continue;
            }
            if self.pending.len() < 4 + len as usize {
                break;
            }
            self.pending.advance(4);
            let packet = self.pending.take(len as usize);
            self.summary.requests += 1;
            self.packet(packet);
        }
    }

    fn packet(&mut self, packet: Pieces) {
        // A WRITE split across chunks is written from the chunks; only its head is copied.
        if packet.0.len() > 1 && packet.0[0].first() == Some(&wire::SSH_FXP_WRITE) {
            if let Some(w) = wire::decode_write_head(packet.prefix(WRITE_HEAD_MAX)) {
                if w.size + w.len <= packet.len() {
                    let data = packet.slice(w.size, w.len);
                    return self.write(w.id, &w.handle, w.offset, &data.0);
                }
            }
        }
        match wire::decode(packet.concat()) {
            Ok(req) => self.handle(req),
            Err(DecodeError::Malformed { id }) => {
                self.status(id.unwrap_or(0), StatusCode::BadMessage, "malformed request")
            }
            Err(DecodeError::Unsupported { id, kind }) => self.status(
                id.unwrap_or(0),
                StatusCode::OpUnsupported,
                &format!("request type {kind} is not supported"),
            ),
        }
    }

    fn status(&self, id: u32, code: StatusCode, message: &str) {
        self.queue.push(|e| e.status(id, code, message));
    }

    fn ok(&self, id: u32) {
        self.status(id, StatusCode::Ok, "Success");
    }

    fn denied(&self, id: u32) {
        self.status(id, StatusCode::PermissionDenied, "Permission denied");
    }

    fn no_such_file(&self, id: u32) {
        self.status(id, StatusCode::NoSuchFile, "No such file");
    }

    fn fail_io(&self, id: u32, e: &std::io::Error) {
        let (code, msg) = io_status(e);
        self.status(id, code, &msg);
    }

    fn resolve(&self, path: &[u8]) -> Resolved {
        match vfs::resolve(path, &self.shared.name) {
            Resolved::Partial if !self.shared.partial => Resolved::Other,
            r => r,
        }
    }

    /// Removing is refused, except for the temporary `.filepart` a client abandons.
    fn remove(&self, id: u32, path: &[u8]) {
        if self.resolve(path) != Resolved::Partial {
            return self.denied(id);
        }
        let _lease = match self.lease_for_change(None) {
            Ok(lease) => lease,
            Err(msg) => return self.status(id, StatusCode::Failure, &msg),
        };
        match self.shared.storage.remove(Name::Partial) {
            Ok(()) => self.ok(id),
            Err(e) => self.fail_io(id, &e),
        }
    }

    /// The one rename allowed: the finished `.filepart` onto the file, atomically.
    fn rename(&self, id: u32, from: &[u8], to: &[u8]) {
        let (Resolved::Partial, Resolved::File) = (self.resolve(from), self.resolve(to)) else {
            return self.denied(id);
        };
        let _lease = match self.lease_for_change(None) {
            Ok(lease) => lease,
            Err(msg) => return self.status(id, StatusCode::Failure, &msg),
        };
        self.queue.settle_reads();
        match self.shared.storage.rename_partial() {
            Ok(()) => self.ok(id),
            Err(e) => self.fail_io(id, &e),
        }
    }

    fn setstat_path(&self, id: u32, path: &[u8], attrs: &Attrs) {
        match self.resolve(path) {
            Resolved::File => self.setstat(id, None, None, Name::File, attrs),
            Resolved::Partial => match self.shared.storage.stat(Name::Partial) {
                Ok(Some(_)) => self.setstat(id, None, None, Name::Partial, attrs),
                Ok(None) => self.no_such_file(id),
                Err(e) => self.fail_io(id, &e),
            },
            Resolved::Root => self.denied(id),
            Resolved::Other => self.no_such_file(id),
        }
    }

    fn file_handle(&mut self, handle: &[u8]) -> Option<&mut OpenFile> {
        file_of(&mut self.handles, handle)
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Init { .. } => self.queue.push(|e| {
                e.version(&[
                    ("limits@openssh.com", "1"),
                    ("fsync@openssh.com", "1"),
                    ("statvfs@openssh.com", "2"),
                    ("fstatvfs@openssh.com", "2"),
                    ("lsetstat@openssh.com", "1"),
                    // Advertised so that clients send them and get a clear refusal.
                    ("posix-rename@openssh.com", "1"),
                    ("hardlink@openssh.com", "1"),
                ])
            }),
            Request::Open {
                id, path, pflags, ..
            } => match self.resolve(&path) {
                Resolved::File => self.open(id, pflags, false),
                Resolved::Partial => self.open(id, pflags, true),
                Resolved::Root
                    if pflags & (FXF_WRITE | FXF_APPEND | FXF_TRUNC | FXF_CREAT) != 0 =>
                {
                    self.denied(id)
                }
                Resolved::Root => self.status(id, StatusCode::Failure, "Is a directory"),
                Resolved::Other if pflags & FXF_CREAT != 0 => self.denied(id),
                Resolved::Other => self.no_such_file(id),
            },
            Request::Close { id, handle } => self.close(id, &handle),
            Request::Read {
                id,
                handle,
                offset,
                len,
            } => match self.file_handle(&handle) {
                Some(f) if f.read => {
                    let read = PendingRead {
                        id,
                        file: f.body.clone(),
                        sent: f.sent.clone(),
                        offset,
                        len: len.min(MAX_IO_LEN),
                        count: 1,
                    };
                    self.queue.push_read(read);
                }
                Some(_) => self.status(
                    id,
                    StatusCode::PermissionDenied,
                    "handle not open for reading",
                ),
                None => self.status(id, StatusCode::Failure, "invalid handle"),
            },
            Request::Write {
                id,
                handle,
                offset,
                data,
            } => self.write(id, &handle, offset, std::slice::from_ref(&data)),
            Request::Lstat { id, path } | Request::Stat { id, path } => self.stat(id, &path),
            Request::Fstat { id, handle } => self.fstat(id, &handle),
            Request::SetStat { id, path, attrs } => self.setstat_path(id, &path, &attrs),
            Request::FSetStat { id, handle, attrs } => {
                match parse_handle(&handle).and_then(|h| self.handles.get(&h)) {
                    Some(Handle::File(f)) => {
                        let (body, lease) = (f.body.clone(), f.lease.clone());
                        self.setstat(id, Some(&body), lease, Name::File, &attrs)
                    }
                    Some(Handle::Dir { .. }) => self.denied(id),
                    None => self.status(id, StatusCode::Failure, "invalid handle"),
                }
            }
            Request::OpenDir { id, path } => match self.resolve(&path) {
                Resolved::Root => {
                    self.add_handle(id, Handle::Dir { listed: false });
                }
                Resolved::File | Resolved::Partial => {
                    self.status(id, StatusCode::Failure, "Not a directory")
                }
                Resolved::Other => self.no_such_file(id),
            },
            Request::ReadDir { id, handle } => self.readdir(id, &handle),
            Request::Remove { id, path } => self.remove(id, &path),
            Request::Rename { id, from, to } => self.rename(id, &from, &to),
            Request::MkDir { id, .. }
            | Request::RmDir { id, .. }
            | Request::ReadLink { id, .. }
            | Request::Symlink { id } => self.denied(id),
            Request::RealPath { id, path } => self.realpath(id, &path),
            Request::Extended { id, name, data } => self.extended(id, &name, data),
        }
    }

    /// Registers a handle and answers with it; false (and a failure) when too many are open.
    fn add_handle(&mut self, id: u32, handle: Handle) -> bool {
        if self.handles.len() >= MAX_HANDLES {
            self.status(id, StatusCode::Failure, "too many open handles");
            return false;
        }
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        self.handles.insert(h, handle);
        self.queue.push(|e| e.handle(id, &h.to_be_bytes()));
        true
    }

    fn open(&mut self, id: u32, pflags: u32, partial: bool) {
        let write = pflags & (FXF_WRITE | FXF_APPEND | FXF_TRUNC) != 0;
        if write && !self.shared.writable {
            return self.status(
                id,
                StatusCode::PermissionDenied,
                &format!("{} is read-only", self.shared.name),
            );
        }
        let name = if partial { Name::Partial } else { Name::File };
        // A client that names neither READ nor WRITE gets read access, as sftp-server does.
        let read = pflags & FXF_READ != 0 || !write;
        let append = pflags & FXF_APPEND != 0;
        let truncate = pflags & FXF_TRUNC != 0;
        // Taken before the file is opened: a refusal creates and truncates nothing.
        let lease = if write {
            match self.lease_for_change(None) {
                Ok(lease) => lease,
                Err(msg) => return self.status(id, StatusCode::Failure, &msg),
            }
        } else {
            None
        };
        if write {
            self.queue.settle_reads();
        }
        let mode = OpenMode {
            read,
            write,
            append,
            truncate,
            // In draft the file is listed before anything was uploaded: a read gets a body.
            create: write || (self.shared.writable && !partial),
        };
        match self.shared.storage.open(name, mode) {
            Ok(body) => {
                let end = body.meta().map(|m| m.size).unwrap_or(0);
                let name = if partial {
                    format!("{}{}", self.shared.name, vfs::PARTIAL_SUFFIX)
                } else {
                    self.shared.name.clone()
                };
                let mode = match (read, write, append) {
                    (_, true, true) => "append",
                    (true, true, false) => "read-write",
                    (false, true, false) => "write",
                    _ => "read",
                };
                tracing::info!(target: "audit", event = "file-opened", file = %name, mode, truncate, "file opened");
                let handle = OpenFile {
                    body,
                    name,
                    read,
                    write,
                    append,
                    written: 0,
                    sent: Arc::default(),
                    opened: Instant::now(),
                    end,
                    lease,
                };
                if self.add_handle(id, Handle::File(handle)) && write {
                    self.activity.writers.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => self.fail_io(id, &e),
        }
    }

    fn write(&mut self, id: u32, handle: &[u8], offset: u64, data: &[Bytes]) {
        let max_size = self.shared.max_size;
        // Everything that can refuse the write is checked before queued reads are settled:
        // a refused write must cost nothing.
        let Some(f) = file_of(&mut self.handles, handle) else {
            return self.status(id, StatusCode::Failure, "invalid handle");
        };
        if !f.write {
            return self.status(
                id,
                StatusCode::PermissionDenied,
                "handle not open for writing",
            );
        }
        // The one cost of leases per WRITE: an atomic load and a monotonic clock read.
        if f.lease_lost() {
            self.activity.write_errors.fetch_add(1, Ordering::Relaxed);
            return self.status(id, StatusCode::Failure, LEASE_LOST);
        }
        let len = data.iter().map(Bytes::len).sum::<usize>() as u64;
        let at = match (f.append, max_size) {
            (true, Some(_)) => f.body.meta().map(|m| m.size).unwrap_or(u64::MAX),
            (true, None) => f.end,
            (false, _) => offset,
        };
        let refusal = if max_size.is_some_and(|max| at.saturating_add(len) > max) {
            max_size.map(|max| format!("upload size limit of {max} bytes exceeded"))
        } else if !f.append && f.gap_too_large(offset) {
            Some(format!(
                "write at offset {offset} would leave a hole of more than {MAX_WRITE_GAP} bytes \
                 past the end of the file"
            ))
        } else {
            None
        };
        if let Some(msg) = refusal {
            tracing::warn!(target: "audit", event = "write-refused", reason = %msg, "write refused");
            self.activity.write_errors.fetch_add(1, Ordering::Relaxed);
            return self.status(id, StatusCode::Failure, &msg);
        }
        // The handle is looked up once: settling borrows only the queue.
        self.queue.settle_reads();
        let len = len as usize;
        match f.body.write((!f.append).then_some(offset), data) {
            Ok(()) => {
                f.written += len as u64;
                f.end = f.end.max(at.saturating_add(len as u64));
                self.summary.bytes_written += len as u64;
                self.activity.wrote(len);
                self.ok(id);
            }
            Err(e) => {
                tracing::warn!(target: "audit", event = "write-failed", error = %e, "write failed");
                self.activity.write_errors.fetch_add(1, Ordering::Relaxed);
                self.fail_io(id, &e)
            }
        }
    }

    fn close(&mut self, id: u32, handle: &[u8]) {
        let Some(h) = parse_handle(handle).and_then(|h| self.handles.remove(&h)) else {
            return self.status(id, StatusCode::Failure, "invalid handle");
        };
        match h {
            Handle::Dir { .. } => self.ok(id),
            Handle::File(f) => {
                // Kept until the reply is decided: the hold goes after the fsync.
                let lease = f.lease.clone();
                match self.finish_file(f) {
                    Ok(Ok(())) if lease.is_some_and(|l| !l.valid()) => {
                        self.status(id, StatusCode::Failure, LEASE_LOST)
                    }
                    Ok(Ok(())) => self.ok(id),
                    Ok(Err(unrecorded)) => self.status(id, StatusCode::Failure, &unrecorded),
                    Err(e) => self.fail_io(id, &e),
                }
            }
        }
    }

    /// Makes a written file durable and reports the write; the inner `Err` is the
    /// report's failure (see [`WriteClosed`]).
    fn finish_file(&self, f: OpenFile) -> std::io::Result<Result<(), String>> {
        let duration_ms = f.opened.elapsed().as_millis() as u64;
        let sent = f.sent.load(Ordering::Relaxed);
        if !f.write {
            tracing::info!(target: "audit", event = "file-closed", file = %f.name, bytes_read = sent, duration_ms, "file closed");
            return Ok(Ok(()));
        }
        self.activity.writers.fetch_sub(1, Ordering::Relaxed);
        let size = f.body.finish()?;
        tracing::info!(
            target: "audit",
            event = "file-closed",
            file = %f.name,
            bytes_written = f.written,
            bytes_read = sent,
            size,
            duration_ms,
            "file closed"
        );
        let Some(cb) = &self.on_write_closed else {
            return Ok(Ok(()));
        };
        Ok(cb(WriteSummary {
            bytes: f.written,
            size,
            duration: f.opened.elapsed(),
        }))
    }

    /// The same rule across nodes, once per upload session: a client cut off while
    /// uploading through another node may reconnect here, and its `put -a` reads the size
    /// to resume from (and appends). That node holds the upload's lease until it has
    /// written and fsynced what it received, so the session waits, boundedly, for it.
    fn wait_for_other_nodes(&mut self) {
        if std::mem::replace(&mut self.other_nodes_checked, true) || !self.shared.writable {
            return;
        }
        let Some(leases) = &self.shared.leases else {
            return;
        };
        if !leases.wait_until_free() {
            tracing::warn!("another node still holds the upload's lease; going on");
            self.lease_wait_spent = true;
        }
    }

    /// A hold on the upload's lease for a change of the file: `held` (a write handle's)
    /// if given, else this node's, taken now. `Ok(None)` for a file without leases.
    fn lease_for_change(
        &self,
        held: Option<Arc<dyn LeaseHold>>,
    ) -> Result<Option<Arc<dyn LeaseHold>>, String> {
        let Some(leases) = &self.shared.leases else {
            return Ok(None);
        };
        let hold = match held {
            Some(h) => h,
            None => leases.acquire(!self.lease_wait_spent)?,
        };
        if hold.valid() {
            Ok(Some(hold))
        } else {
            Err(LEASE_LOST.into())
        }
    }

    /// A client cut off mid-upload reconnects and resumes (`put -a`) from the size it
    /// sees: what its old session had received but not yet written must be on disk before
    /// any other session looks at the file, or the resumed data would land after bytes the
    /// client sends again.
    fn wait_for_other_sessions(&self) {
        if !self.activity.must_wait(self.number) {
            return;
        }
        tracing::info!("waiting for a session whose client is gone to finish writing");
        let drained = tokio::runtime::Handle::current().block_on(
            self.activity
                .others_drained(self.number, OTHER_SESSIONS_WAIT),
        );
        if !drained {
            tracing::warn!("an ended session of this request is still writing; going on");
        }
    }

    fn close_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.handles) {
            if let Handle::File(f) = h {
                match self.finish_file(f) {
                    Ok(Ok(())) => {}
                    // Nobody to answer: the report's own failure was logged where it failed.
                    Ok(Err(unrecorded)) => {
                        tracing::warn!(reason = %unrecorded, "a handle left open was closed at session end")
                    }
                    Err(e) => tracing::warn!(error = %e, "could not sync the file at session end"),
                }
            }
        }
    }

    fn file_attrs(&self, meta: Option<&Meta>) -> Attrs {
        vfs::file_attrs(meta, self.shared.writable)
    }

    fn stat(&self, id: u32, path: &[u8]) {
        let attrs = match self.resolve(path) {
            Resolved::Root => vfs::root_attrs(),
            Resolved::Other => return self.no_such_file(id),
            Resolved::Partial => match self.shared.storage.stat(Name::Partial) {
                Ok(Some(m)) => self.file_attrs(Some(&m)),
                Ok(None) => return self.no_such_file(id),
                Err(e) => return self.fail_io(id, &e),
            },
            Resolved::File => match self.shared.storage.stat(Name::File) {
                Ok(Some(m)) => self.file_attrs(Some(&m)),
                Ok(None) if self.shared.writable => self.file_attrs(None),
                Ok(None) => return self.no_such_file(id),
                Err(e) => return self.fail_io(id, &e),
            },
        };
        self.queue.push(|e| e.attrs_reply(id, &attrs));
    }

    fn fstat(&self, id: u32, handle: &[u8]) {
        let attrs = match parse_handle(handle).and_then(|h| self.handles.get(&h)) {
            Some(Handle::File(f)) => match f.body.meta() {
                Ok(m) => self.file_attrs(Some(&m)),
                Err(e) => return self.fail_io(id, &e),
            },
            Some(Handle::Dir { .. }) => vfs::root_attrs(),
            None => return self.status(id, StatusCode::Failure, "invalid handle"),
        };
        self.queue.push(|e| e.attrs_reply(id, &attrs));
    }

    /// Size (draft only) and times are applied; owner and permissions are accepted and
    /// ignored, so clients that set them after an upload do not fail. A read-only file is
    /// never changed.
    fn setstat(
        &self,
        id: u32,
        handle: Option<&Arc<dyn Body>>,
        lease: Option<Arc<dyn LeaseHold>>,
        name: Name,
        attrs: &Attrs,
    ) {
        if !self.shared.writable || (attrs.size.is_none() && attrs.times.is_none()) {
            return self.ok(id);
        }
        // A size is a write; times are not worth a lease.
        let _lease = match attrs.size.map(|_| self.lease_for_change(lease)) {
            Some(Err(msg)) => return self.status(id, StatusCode::Failure, &msg),
            Some(Ok(lease)) => lease,
            None => None,
        };
        self.queue.settle_reads();
        let result = (|| {
            if let Some(size) = attrs.size {
                if self.shared.max_size.is_some_and(|max| size > max) {
                    return Err(std::io::Error::other("upload size limit exceeded"));
                }
                let now = match handle {
                    Some(b) => b.meta()?.size,
                    None => self.shared.storage.stat(name)?.map_or(0, |m| m.size),
                };
                // As for writes: the file stays a prefix of the upload, not a sparse giant.
                if size > now.saturating_add(MAX_WRITE_GAP) {
                    return Err(std::io::Error::other(format!(
                        "size {size} would leave a hole of more than {MAX_WRITE_GAP} bytes"
                    )));
                }
            }
            let at = |s: u32| SystemTime::UNIX_EPOCH + Duration::from_secs(s.into());
            let times = attrs.times.map(|(a, m)| (at(a), at(m)));
            match handle {
                Some(b) => b.set_attrs(attrs.size, times),
                None => self.shared.storage.set_attrs(name, attrs.size, times),
            }
        })();
        match result {
            Ok(()) => self.ok(id),
            Err(e) => self.fail_io(id, &e),
        }
    }

    fn readdir(&mut self, id: u32, handle: &[u8]) {
        let listed = match parse_handle(handle).and_then(|h| self.handles.get_mut(&h)) {
            Some(Handle::Dir { listed }) => std::mem::replace(listed, true),
            Some(Handle::File(_)) => {
                return self.status(id, StatusCode::Failure, "Not a directory")
            }
            None => return self.status(id, StatusCode::Failure, "invalid handle"),
        };
        if listed {
            return self.status(id, StatusCode::Eof, "End of file");
        }
        let now = OffsetDateTime::now_utc();
        let meta = self.shared.storage.stat(Name::File).ok().flatten();
        let attrs = self.file_attrs(meta.as_ref());
        let long = vfs::longname(&self.shared.name, &attrs, now);
        let mut entries = vec![(self.shared.name.clone(), long, attrs)];
        // An unfinished `.filepart` is listed too, so that a client can find and resume it.
        let partial = self.shared.partial;
        if let Some(m) = partial
            .then(|| self.shared.storage.stat(Name::Partial).ok().flatten())
            .flatten()
        {
            let name = format!("{}{}", self.shared.name, vfs::PARTIAL_SUFFIX);
            let attrs = self.file_attrs(Some(&m));
            let long = vfs::longname(&name, &attrs, now);
            entries.push((name, long, attrs));
        }
        let refs: Vec<(&[u8], &str, &Attrs)> = entries
            .iter()
            .map(|(n, l, a)| (n.as_bytes(), l.as_str(), a))
            .collect();
        self.queue.push(|e| e.name(id, &refs));
    }

    fn realpath(&self, id: u32, path: &[u8]) {
        match vfs::canonical(path) {
            Some(p) => {
                let long = String::from_utf8_lossy(&p).into_owned();
                self.queue
                    .push(|e| e.name(id, &[(&p, &long, &Attrs::default())]));
            }
            None => self.no_such_file(id),
        }
    }

    fn extended(&mut self, id: u32, name: &[u8], data: Bytes) {
        let mut args = data;
        let mut string = || -> Option<Bytes> {
            if args.len() < 4 {
                return None;
            }
            let len = args.get_u32() as usize;
            (args.len() >= len).then(|| args.split_to(len))
        };
        match name {
            b"limits@openssh.com" => self.queue.push(|e| {
                e.extended_u64s(
                    id,
                    &[
                        MAX_PACKET_LEN.into(),
                        MAX_IO_LEN.into(),
                        MAX_IO_LEN.into(),
                        MAX_HANDLES as u64,
                    ],
                )
            }),
            b"statvfs@openssh.com" => match string().map(|p| self.resolve(&p)) {
                Some(Resolved::Root | Resolved::File | Resolved::Partial) => self.statvfs(id),
                Some(Resolved::Other) => self.no_such_file(id),
                None => self.status(id, StatusCode::BadMessage, "malformed request"),
            },
            b"fstatvfs@openssh.com" => match string()
                .and_then(|h| parse_handle(&h))
                .and_then(|h| self.handles.get(&h))
            {
                Some(_) => self.statvfs(id),
                None => self.status(id, StatusCode::Failure, "invalid handle"),
            },
            b"fsync@openssh.com" => {
                let file = string().and_then(|h| {
                    self.file_handle(&h)
                        .map(|f| (f.body.clone(), f.lease.clone()))
                });
                let Some((body, lease)) = file else {
                    return self.status(id, StatusCode::Failure, "invalid handle");
                };
                // Synced all the same: what was written under the lease belongs on disk.
                match body.sync() {
                    Ok(()) if lease.is_some_and(|l| !l.valid()) => {
                        self.status(id, StatusCode::Failure, LEASE_LOST)
                    }
                    Ok(()) => self.ok(id),
                    Err(e) => self.fail_io(id, &e),
                }
            }
            b"lsetstat@openssh.com" => match (string(), wire_attrs(args.clone())) {
                (Some(p), Some(attrs)) => self.setstat_path(id, &p, &attrs),
                _ => self.status(id, StatusCode::BadMessage, "malformed request"),
            },
            b"posix-rename@openssh.com" => match (string(), string()) {
                (Some(from), Some(to)) => self.rename(id, &from, &to),
                _ => self.status(id, StatusCode::BadMessage, "malformed request"),
            },
            b"hardlink@openssh.com" | b"copy-data" => self.denied(id),
            _ => self.status(id, StatusCode::OpUnsupported, "extension not supported"),
        }
    }

    fn statvfs(&self, id: u32) {
        match self.shared.storage.statvfs() {
            Ok(s) => {
                let mut flag = 0x2; // ST_NOSUID
                if !self.shared.writable {
                    flag |= 0x1; // ST_RDONLY
                }
                self.queue.push(|e| {
                    e.extended_u64s(
                        id,
                        &[
                            s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree,
                            s.favail, s.fsid, flag, s.namemax,
                        ],
                    )
                })
            }
            Err(e) => self.fail_io(id, &e),
        }
    }
}

fn wire_attrs(data: Bytes) -> Option<Attrs> {
    // lsetstat carries (path, attrs); reuse the SETSTAT decoder on a synthetic packet.
    let mut p = BytesMut::with_capacity(data.len() + 13);
    p.extend_from_slice(&[wire::SSH_FXP_SETSTAT, 0, 0, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(&data);
    match wire::decode(p.freeze()) {
        Ok(Request::SetStat { attrs, .. }) => Some(attrs),
        _ => None,
    }
}

/// The open file a handle names. A free function, so that a caller can hold it while it
/// uses the session's other fields (the reply queue).
fn file_of<'a>(handles: &'a mut HashMap<u32, Handle>, handle: &[u8]) -> Option<&'a mut OpenFile> {
    match handles.get_mut(&parse_handle(handle)?) {
        Some(Handle::File(f)) => Some(f),
        _ => None,
    }
}

fn parse_handle(h: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(h.try_into().ok()?))
}
