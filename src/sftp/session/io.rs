//! The hot path: READ and WRITE. A READ is answered with a description the reply writer
//! fills from the file when it sends it; a WRITE reaches the storage from the chunks it
//! arrived in. Neither allocates or copies per packet; a refused WRITE costs nothing (no
//! queued read is settled for it).

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::sftp::queue::PendingRead;
use crate::sftp::wire::StatusCode;
use crate::sftp::{LEASE_LOST, MAX_IO_LEN, MAX_WRITE_GAP};

use super::handles::file_of;
use super::reply::Reply;
use super::Session;

impl Session {
    pub(super) fn read(&mut self, id: u32, handle: &[u8], offset: u64, len: u32) -> Reply {
        match file_of(&mut self.handles, handle) {
            Some(f) if f.read => Reply::Data(PendingRead {
                id,
                file: f.body.clone(),
                sent: f.sent.clone(),
                offset,
                len: len.min(MAX_IO_LEN),
                count: 1,
            }),
            Some(_) => Reply::status(
                id,
                StatusCode::PermissionDenied,
                "handle not open for reading",
            ),
            None => Reply::invalid_handle(id),
        }
    }

    pub(super) fn write(&mut self, id: u32, handle: &[u8], offset: u64, data: &[Bytes]) -> Reply {
        let max_size = self.shared.max_size;
        // Everything that can refuse the write is checked before queued reads are settled:
        // a refused write must cost nothing.
        let Some(f) = file_of(&mut self.handles, handle) else {
            return Reply::invalid_handle(id);
        };
        if !f.write {
            return Reply::status(
                id,
                StatusCode::PermissionDenied,
                "handle not open for writing",
            );
        }
        // The one cost of leases per WRITE: an atomic load and a monotonic clock read.
        if f.lease_lost() {
            self.activity.write_errors.fetch_add(1, Ordering::Relaxed);
            return Reply::failure(id, LEASE_LOST);
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
            return Reply::failure(id, msg);
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
                Reply::ok(id)
            }
            Err(e) => {
                tracing::warn!(target: "audit", event = "write-failed", error = %e, "write failed");
                self.activity.write_errors.fetch_add(1, Ordering::Relaxed);
                Reply::io(id, &e)
            }
        }
    }
}
