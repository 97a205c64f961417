//! One SFTP session's request loop (run by [`super::serve`]): the session's state, the
//! framing of the client's byte stream into packets, and the dispatch of each request to
//! the operation that answers it. The operations live beside this file, by job:
//! `handles.rs` (OPEN, OPENDIR, CLOSE), `io.rs` (READ, WRITE), `stat.rs` (the attributes),
//! `names.rs` (READDIR, REALPATH, REMOVE, RENAME) and `extended.rs` (OpenSSH's
//! extensions). Each returns its [`Reply`](reply::Reply), which the loop sends: one reply
//! per request, checked by the compiler.
//!
//! Requests are handled strictly in arrival order by one loop, so writes to a handle land
//! in the order the client sent them and the file is always a contiguous prefix of what
//! was sent. Replies go through [`ReplyQueue`] to a separate writer thread: the loop never
//! waits for the client to read a reply, which is what lets it keep draining the channel
//! (russh stops reading the socket, window adjustments included, while a channel's queue
//! is full, so a loop that waited on its own replies could deadlock against the client).

mod extended;
mod handles;
mod io;
mod names;
mod reply;
mod stat;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};

use super::queue::ReplyQueue;
use super::rope::{Pieces, Rope};
use super::vfs::{self, Resolved};
use super::wire::{self, DecodeError, Request, StatusCode};
use super::{Activity, LeaseHold, SharedFile, LEASE_LOST, MAX_PACKET_LEN};
use handles::OpenHandle;
use reply::Reply;

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

pub(super) struct Session {
    /// This session's number among the request's sessions.
    number: u64,
    shared: SharedFile,
    activity: Arc<Activity>,
    on_write_closed: Option<WriteClosed>,
    /// Where replies go. Only [`Reply::send`] queues them; operations only settle reads.
    queue: Arc<ReplyQueue>,
    handles: HashMap<u32, OpenHandle>,
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

    /// Once the client's input has ended: syncs and closes whatever the client left open.
    pub(super) fn finish(mut self) -> SessionSummary {
        self.close_all();
        self.summary
    }

    /// Splits the byte stream into packets and answers each in order, once (on a blocking
    /// thread: see [`super::inbox`]).
    pub(super) fn feed(&mut self, chunk: Bytes) {
        self.wait_for_other_nodes();
        // Once per chunk, not per packet: the packets of one chunk arrived together.
        self.wait_for_other_sessions();
        self.take_in(chunk);
        self.answer_packets(false);
    }

    /// Answers the READs at the front of what has arrived, with `chunk`, on the caller's
    /// thread: queueing a READ's description is all its answer takes, and cannot wait
    /// while the reply queue has room. True if nothing is left that
    /// [`feed`](Self::feed) could answer now (a packet still arriving counts as nothing:
    /// what the loop holds of it is at most one packet); false if it stopped at a whole
    /// packet of another kind, a full queue or a wait the session still owes, for `feed`
    /// (on a blocking thread) to go on from.
    pub(super) fn feed_reads(&mut self, chunk: Bytes) -> bool {
        self.take_in(chunk);
        if self.owes_other_nodes_wait() || self.activity.must_wait(self.number) {
            return false;
        }
        self.answer_packets(true)
    }

    /// Adds `chunk` to the bytes received, less what is left to discard of an oversized
    /// packet.
    fn take_in(&mut self, mut chunk: Bytes) {
        let skipped = self.skip.min(chunk.len());
        chunk.advance(skipped);
        self.skip -= skipped;
        self.pending.push(chunk);
    }

    /// Answers the whole packets received, in order. With `reads_only`, it stops before
    /// any that is not a READ (an oversized or empty one included) or cannot be queued
    /// without waiting, and returns false; true once no whole packet is left.
    fn answer_packets(&mut self, reads_only: bool) -> bool {
        let mut len = [0; 4];
        while self.pending.peek(&mut len) {
            let len = u32::from_be_bytes(len);
            if len > MAX_PACKET_LEN {
                if reads_only {
                    return false;
                }
                // Answer under the packet's own id, then discard its body as it arrives,
                // so the stream stays in step.
                let mut head = [0; 9];
                if !self.pending.peek(&mut head) {
                    break;
                }
                let id = wire::peek_id(&head[4..]).unwrap_or(0);
                Reply::status(
                    id,
                    StatusCode::BadMessage,
                    format!("packet of {len} bytes exceeds the limit of {MAX_PACKET_LEN}"),
                )
                .send(&self.queue);
                let total = 4 + len as usize;
                self.skip = total - self.pending.advance(total);
                continue;
            }
            // A packet still arriving, of any kind (a 255 KiB WRITE comes in eight pieces),
            // waits for the rest.
            if self.pending.len() < 4 + len as usize {
                break;
            }
            if reads_only && !self.read_queued_at_once(len) {
                return false;
            }
            self.pending.advance(4);
            let packet = self.pending.take(len as usize);
            self.summary.requests += 1;
            self.packet(packet).send(&self.queue);
        }
        true
    }

    /// Whether the whole packet at the front, of `len` bytes, is a READ that the reply
    /// queue takes without waiting for room.
    fn read_queued_at_once(&self, len: u32) -> bool {
        let mut head = [0; 5];
        len > 0
            && self.pending.peek(&mut head)
            && head[4] == wire::SSH_FXP_READ
            && self.queue.has_room()
    }

    fn packet(&mut self, packet: Pieces) -> Reply {
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
            Ok(req) => self.dispatch(req),
            Err(DecodeError::Malformed { id }) => Reply::malformed(id.unwrap_or(0)),
            Err(DecodeError::Unsupported { id, kind }) => Reply::status(
                id.unwrap_or(0),
                StatusCode::OpUnsupported,
                format!("request type {kind} is not supported"),
            ),
        }
    }

    fn dispatch(&mut self, req: Request) -> Reply {
        match req {
            Request::Init { .. } => Reply::Version {
                extensions: extended::ADVERTISED,
            },
            Request::Open {
                id, path, pflags, ..
            } => self.open_path(id, &path, pflags),
            Request::Close { id, handle } => self.close(id, &handle),
            Request::Read {
                id,
                handle,
                offset,
                len,
            } => self.read(id, &handle, offset, len),
            Request::Write {
                id,
                handle,
                offset,
                data,
            } => self.write(id, &handle, offset, std::slice::from_ref(&data)),
            Request::Lstat { id, path } | Request::Stat { id, path } => self.stat(id, &path),
            Request::Fstat { id, handle } => self.fstat(id, &handle),
            Request::SetStat { id, path, attrs } => self.setstat_path(id, &path, &attrs),
            Request::FSetStat { id, handle, attrs } => self.fsetstat(id, &handle, &attrs),
            Request::OpenDir { id, path } => self.opendir(id, &path),
            Request::ReadDir { id, handle } => self.readdir(id, &handle),
            Request::Remove { id, path } => self.remove(id, &path),
            Request::Rename { id, from, to } => self.rename(id, &from, &to),
            Request::MkDir { id, .. }
            | Request::RmDir { id, .. }
            | Request::ReadLink { id, .. }
            | Request::Symlink { id } => Reply::denied(id),
            Request::RealPath { id, path } => self.realpath(id, &path),
            Request::Extended { id, ext } => self.extended(id, ext),
        }
    }

    fn resolve(&self, path: &[u8]) -> Resolved {
        match vfs::resolve(path, &self.shared.name) {
            Resolved::Partial if !self.shared.partial => Resolved::Other,
            r => r,
        }
    }

    /// The same rule across nodes, once per upload session: a client cut off while
    /// uploading through another node may reconnect here, and its `put -a` reads the size
    /// to resume from (and appends). That node holds the upload's lease until it has
    /// written and fsynced what it received, so the session waits, boundedly, for it.
    fn wait_for_other_nodes(&mut self) {
        if !self.owes_other_nodes_wait() {
            return;
        }
        self.other_nodes_checked = true;
        let Some(leases) = &self.shared.leases else {
            return;
        };
        if !leases.wait_until_free() {
            tracing::warn!("another node still holds the upload's lease; going on");
            self.lease_wait_spent = true;
        }
    }

    /// Whether [`wait_for_other_nodes`](Self::wait_for_other_nodes) has yet to wait: once,
    /// for a session that may write a file with leases.
    fn owes_other_nodes_wait(&self) -> bool {
        !self.other_nodes_checked && self.shared.writable && self.shared.leases.is_some()
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
}
