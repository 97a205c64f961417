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

use bytes::BytesMut;
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
