//! Handles: OPEN and OPENDIR make them, CLOSE (or the session's end) finishes them. A
//! write handle's close is where the upload becomes durable: the file is fsynced, the
//! close reported ([`WriteClosed`](super::WriteClosed)), and only then its lease let go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::sftp::storage::{Body, Name, OpenMode};
use crate::sftp::vfs::{self, Resolved};
use crate::sftp::wire::{StatusCode, FXF_APPEND, FXF_CREAT, FXF_READ, FXF_TRUNC, FXF_WRITE};
use crate::sftp::{LeaseHold, LEASE_LOST, MAX_HANDLES, MAX_WRITE_GAP};

use super::reply::Reply;
use super::{Session, WriteSummary};

pub(super) struct OpenFile {
    pub(super) body: Arc<dyn Body>,
    /// The name it was opened by (the file or its `.filepart`), for the audit log.
    name: String,
    pub(super) read: bool,
    pub(super) write: bool,
    pub(super) append: bool,
    pub(super) written: u64,
    /// Bytes sent to the client from this handle (counted by the reply writer).
    pub(super) sent: Arc<AtomicU64>,
    opened: Instant,
    /// The end of the file as this handle last saw it, so that most writes need not ask.
    pub(super) end: u64,
    /// A write handle's hold on the upload's lease, dropped (released, if it is the last)
    /// only after the handle's file was fsynced.
    pub(super) lease: Option<Arc<dyn LeaseHold>>,
}

impl OpenFile {
    /// Whether this handle wrote under a lease this node has lost since.
    pub(super) fn lease_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| !l.valid())
    }

    /// Whether a write at `offset` would leave more than [`MAX_WRITE_GAP`] bytes unwritten
    /// before it: the file must stay a contiguous prefix of the upload (resume relies on
    /// it), and a write far past the end would make a huge sparse file.
    pub(super) fn gap_too_large(&mut self, offset: u64) -> bool {
        if offset <= self.end.saturating_add(MAX_WRITE_GAP) {
            return false;
        }
        // Another handle or session may have written further meanwhile.
        self.end = self.body.meta().map(|m| m.size).unwrap_or(self.end);
        offset > self.end.saturating_add(MAX_WRITE_GAP)
    }
}

/// What a handle names: the file (or its `.filepart`) opened, or the root directory.
pub(super) enum OpenHandle {
    File(OpenFile),
    Dir { listed: bool },
}

/// The open file a handle names. A free function, so that a caller can hold it while it
/// uses the session's other fields (the reply queue).
pub(super) fn file_of<'a>(
    handles: &'a mut HashMap<u32, OpenHandle>,
    handle: &[u8],
) -> Option<&'a mut OpenFile> {
    match handles.get_mut(&parse_handle(handle)?) {
        Some(OpenHandle::File(f)) => Some(f),
        _ => None,
    }
}

pub(super) fn parse_handle(h: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(h.try_into().ok()?))
}

impl Session {
    pub(super) fn handle_of(&self, handle: &[u8]) -> Option<&OpenHandle> {
        self.handles.get(&parse_handle(handle)?)
    }

    /// Registers a handle; `None` when too many are open.
    fn add_handle(&mut self, handle: OpenHandle) -> Option<u32> {
        if self.handles.len() >= MAX_HANDLES {
            return None;
        }
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        self.handles.insert(h, handle);
        Some(h)
    }

    pub(super) fn open_path(&mut self, id: u32, path: &[u8], pflags: u32) -> Reply {
        match self.resolve(path) {
            Resolved::File => self.open(id, pflags, false),
            Resolved::Partial => self.open(id, pflags, true),
            Resolved::Root if pflags & (FXF_WRITE | FXF_APPEND | FXF_TRUNC | FXF_CREAT) != 0 => {
                Reply::denied(id)
            }
            Resolved::Root => Reply::failure(id, "Is a directory"),
            Resolved::Other if pflags & FXF_CREAT != 0 => Reply::denied(id),
            Resolved::Other => Reply::no_such_file(id),
        }
    }

    fn open(&mut self, id: u32, pflags: u32, partial: bool) -> Reply {
        let write = pflags & (FXF_WRITE | FXF_APPEND | FXF_TRUNC) != 0;
        if write && !self.shared.writable {
            return Reply::status(
                id,
                StatusCode::PermissionDenied,
                format!("{} is read-only", self.shared.name),
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
                Err(msg) => return Reply::failure(id, msg),
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
        let body = match self.shared.storage.open(name, mode) {
            Ok(body) => body,
            Err(e) => return Reply::io(id, &e),
        };
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
        let file = OpenFile {
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
        match self.add_handle(OpenHandle::File(file)) {
            Some(handle) => {
                if write {
                    self.activity.writers.fetch_add(1, Ordering::Relaxed);
                }
                Reply::Handle { id, handle }
            }
            None => Reply::failure(id, "too many open handles"),
        }
    }

    pub(super) fn opendir(&mut self, id: u32, path: &[u8]) -> Reply {
        match self.resolve(path) {
            Resolved::Root => match self.add_handle(OpenHandle::Dir { listed: false }) {
                Some(handle) => Reply::Handle { id, handle },
                None => Reply::failure(id, "too many open handles"),
            },
            Resolved::File | Resolved::Partial => Reply::failure(id, "Not a directory"),
            Resolved::Other => Reply::no_such_file(id),
        }
    }

    pub(super) fn close(&mut self, id: u32, handle: &[u8]) -> Reply {
        let Some(h) = parse_handle(handle).and_then(|h| self.handles.remove(&h)) else {
            return Reply::invalid_handle(id);
        };
        match h {
            OpenHandle::Dir { .. } => Reply::ok(id),
            OpenHandle::File(f) => {
                // Kept until the reply is decided: the hold goes after the fsync.
                let lease = f.lease.clone();
                match self.finish_file(f) {
                    Ok(Ok(())) if lease.is_some_and(|l| !l.valid()) => {
                        Reply::failure(id, LEASE_LOST)
                    }
                    Ok(Ok(())) => Reply::ok(id),
                    Ok(Err(unrecorded)) => Reply::failure(id, unrecorded),
                    Err(e) => Reply::io(id, &e),
                }
            }
        }
    }

    /// Makes a written file durable and reports the write; the inner `Err` is the
    /// report's failure (see [`WriteClosed`](super::WriteClosed)).
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

    /// At the session's end: syncs, reports and closes what the client left open.
    pub(super) fn close_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.handles) {
            if let OpenHandle::File(f) = h {
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
}
