//! The ordered queue of replies between the request loop and the reply writer.
//!
//! Replies are queued in request order. A READ is queued as a description and its data is
//! read only when the writer is ready to send it, so a client that pipelines thousands of
//! reads (paramiko prefetches a whole file) costs a few bytes per request, not the data.
//! Small replies are appended to one buffer so that they leave in one channel message.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::wire::{Encoder, StatusCode};
use super::Activity;

/// Small replies are coalesced up to this size before a new buffer is started.
const COALESCE: usize = 64 * 1024;

pub(crate) enum Item {
    Encoded(BytesMut),
    Read(PendingRead),
}

/// A READ whose data is read only when its reply is encoded.
pub(crate) struct PendingRead {
    pub id: u32,
    pub file: Arc<File>,
    /// The handle's count of bytes sent.
    pub sent: Arc<AtomicU64>,
    pub offset: u64,
    pub len: u32,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Item>,
    /// How many of `items` are unread `Item::Read`s.
    reads: usize,
    closed: bool,
}

pub(crate) struct ReplyQueue {
    inner: Mutex<Inner>,
    ready: Notify,
    /// Where the bytes sent by reads are counted, whichever path encodes them.
    activity: Arc<Activity>,
}

impl ReplyQueue {
    pub fn new(activity: Arc<Activity>) -> ReplyQueue {
        ReplyQueue {
            inner: Mutex::default(),
            ready: Notify::new(),
            activity,
        }
    }

    /// Appends the reply to a READ (its data, or EOF/failure) and counts what it sends.
    pub fn encode_read(&self, buf: &mut BytesMut, r: &PendingRead) {
        let n = encode_read(buf, r.id, &r.file, r.offset, r.len) as u64;
        r.sent.fetch_add(n, Ordering::Relaxed);
        self.activity.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an encoded reply.
    pub fn push(&self, encode: impl FnOnce(&mut Encoder)) {
        let mut inner = self.lock();
        match inner.items.back_mut() {
            Some(Item::Encoded(buf)) if buf.len() < COALESCE => encode(&mut Encoder(buf)),
            _ => {
                let mut buf = BytesMut::with_capacity(256);
                encode(&mut Encoder(&mut buf));
                inner.items.push_back(Item::Encoded(buf));
            }
        }
        drop(inner);
        self.ready.notify_one();
    }

    pub fn push_read(&self, read: PendingRead) {
        let mut inner = self.lock();
        inner.items.push_back(Item::Read(read));
        inner.reads += 1;
        drop(inner);
        self.ready.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Performs every queued read now. Called before the file is modified, so a read
    /// answers with the data as it was when the read was requested.
    pub fn settle_reads(&self) {
        let mut inner = self.lock();
        if inner.reads == 0 {
            return;
        }
        inner.reads = 0;
        for item in inner.items.iter_mut() {
            if let Item::Read(r) = item {
                let mut buf = BytesMut::new();
                self.encode_read(&mut buf, r);
                *item = Item::Encoded(buf);
            }
        }
    }

    /// No more replies will be pushed; the writer drains what is left and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next reply if one is queued now.
    pub fn try_pop(&self) -> Option<Item> {
        let mut inner = self.lock();
        let item = inner.items.pop_front()?;
        if matches!(item, Item::Read(_)) {
            inner.reads -= 1;
        }
        Some(item)
    }

    /// The next reply, or `None` once the queue is closed and empty.
    pub async fn pop(&self) -> Option<Item> {
        loop {
            // Register interest before checking, so a push between the check and the wait
            // is not missed.
            let notified = self.ready.notified();
            if let Some(item) = self.try_pop() {
                return Some(item);
            }
            if self.lock().closed {
                return None;
            }
            notified.await;
        }
    }
}

/// Reply buffers, reused once the transport has let go of them. Each batch needs room for
/// a read of up to 255 KiB; allocating that afresh cost a download tens of thousands of
/// page faults per GiB (the allocator gave the memory back between batches).
pub(crate) struct Buffers {
    /// Buffers handed out, newest last; the transport drops its copy once sent.
    lent: VecDeque<Bytes>,
    capacity: usize,
}

/// Buffers tracked per session: those the transport may still hold (russh's queue and the
/// one it is sending) and one more.
const KEPT_BUFFERS: usize = 8;

impl Buffers {
    pub fn new(capacity: usize) -> Buffers {
        Buffers {
            lent: VecDeque::new(),
            capacity,
        }
    }

    /// An empty buffer of the configured capacity: a returned one if there is one.
    pub fn get(&mut self) -> BytesMut {
        if let Some(i) = self.lent.iter().position(Bytes::is_unique) {
            if let Some(Ok(mut buf)) = self.lent.remove(i).map(Bytes::try_into_mut) {
                if buf.capacity() >= self.capacity {
                    buf.clear();
                    return buf;
                }
            }
        }
        BytesMut::with_capacity(self.capacity)
    }

    /// Lets go of returned buffers but one, so that an idle session holds little memory.
    pub fn trim(&mut self) {
        let mut spare = false;
        self.lent.retain(|b| {
            let keep = !b.is_unique() || !spare;
            spare |= b.is_unique();
            keep
        });
    }

    /// Freezes `buf` for the transport and keeps a handle to get it back later.
    pub fn lend(&mut self, buf: BytesMut) -> Bytes {
        let bytes = buf.freeze();
        if self.lent.len() >= KEPT_BUFFERS {
            self.lent.pop_front();
        }
        self.lent.push_back(bytes.clone());
        bytes
    }
}

/// Appends a DATA reply of up to `len` bytes read at `offset`, or an EOF/failure STATUS;
/// returns how many data bytes it carries.
fn encode_read(buf: &mut BytesMut, id: u32, file: &File, offset: u64, len: u32) -> usize {
    let base = buf.len();
    let mark = Encoder(buf).data_begin(id);
    let result = read_into(buf, file, offset, len as usize);
    let filled = buf.len() - mark.1;
    match result {
        Ok(()) if filled > 0 => {
            Encoder(buf).data_finish(mark);
            filled
        }
        Ok(()) => {
            buf.truncate(base);
            Encoder(buf).status(id, StatusCode::Eof, "End of file");
            0
        }
        Err(e) => {
            buf.truncate(base);
            Encoder(buf).status(id, StatusCode::Failure, &e.to_string());
            0
        }
    }
}

/// Appends up to `len` bytes of `file` from `offset` to `buf`, fewer at the end of the file.
/// The bytes are read straight into the buffer's spare capacity: a download would
/// otherwise spend a few percent of its CPU zeroing memory that is overwritten at once.
fn read_into(buf: &mut BytesMut, file: &File, offset: u64, len: usize) -> std::io::Result<()> {
    buf.reserve(len);
    let mut filled = 0;
    while filled < len {
        let spare = &mut buf.spare_capacity_mut()[..len - filled];
        match rustix::io::pread(file, spare, offset + filled as u64) {
            Ok(([], _)) => break,
            Ok((read, _)) => {
                let n = read.len();
                // SAFETY: pread has initialized the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                filled += n;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_once_released() {
        let mut b = Buffers::new(1000);
        let mut first = b.get();
        first.extend_from_slice(b"reply");
        let ptr = first.as_ptr();
        let sent = b.lend(first);
        // Still held by the transport: a new buffer.
        let other = b.get();
        assert_ne!(other.as_ptr(), ptr);
        drop(sent);
        let again = b.get();
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        assert!(again.capacity() >= 1000);
    }

    #[test]
    fn trimming_keeps_one_returned_buffer_and_those_still_lent() {
        let mut b = Buffers::new(10);
        let lend = |b: &mut Buffers| {
            let buf = b.get();
            b.lend(buf)
        };
        let held = lend(&mut b);
        let (one, two) = (lend(&mut b), lend(&mut b));
        drop((one, two));
        b.trim();
        assert_eq!(b.lent.len(), 2);
        drop(held);
        b.trim();
        assert_eq!(b.lent.len(), 1);
    }
}
