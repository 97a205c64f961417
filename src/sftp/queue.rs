//! The ordered queue of replies between the request loop and the reply writer.
//!
//! Replies are queued in request order. A READ is queued as a description and its data is
//! read only when the writer is ready to send it, so a client that pipelines thousands of
//! reads (paramiko prefetches a whole file) costs a few bytes per request, not the data;
//! consecutive reads of one handle (the same length, contiguous offsets, consecutive ids)
//! share one description, so a prefetch of any size costs the same. Small replies are
//! appended to one buffer so that they leave in one channel message.
//!
//! The queue holds at most [`REPLY_BUDGET`] bytes: encoded replies, read data taken from
//! the file early (see [`ReplyQueue::settle_reads`]) and a fixed cost per description.
//! When it is full the request loop waits for the writer, so it stops reading the client's
//! requests: a client that sends requests without reading the replies (or keeps its
//! window shut) holds a bounded amount of memory, however many it sends.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::BytesMut;
use tokio::sync::Notify;

use super::storage::Body;
use super::wire::{Encoder, StatusCode};
use super::Activity;

/// Small replies are coalesced up to this size before a new buffer is started.
const COALESCE: usize = 64 * 1024;
/// The bytes of replies a session may have queued before its request loop waits.
pub const REPLY_BUDGET: usize = 2 * 1024 * 1024;
/// What a READ description is charged against the budget (its size, rounded up).
const DESCRIPTION_COST: usize = 64;

pub(crate) enum Item {
    Encoded(BytesMut),
    Read(PendingRead),
}

/// `count` READs whose data is read only when their replies are encoded: the k-th has id
/// `id + k` and reads `len` bytes at `offset + k * len`.
pub(crate) struct PendingRead {
    pub id: u32,
    pub file: Arc<dyn Body>,
    /// The handle's count of bytes sent.
    pub sent: Arc<AtomicU64>,
    pub offset: u64,
    pub len: u32,
    pub count: u32,
}

impl PendingRead {
    /// Whether `next` is the read that follows this run, so that it can join it.
    fn continued_by(&self, next: &PendingRead) -> bool {
        Arc::ptr_eq(&self.file, &next.file)
            && next.len == self.len
            && next.count == 1
            && self.count < u32::MAX
            && next.id == self.id.wrapping_add(self.count)
            && Some(next.offset)
                == u64::from(self.count)
                    .checked_mul(self.len.into())
                    .and_then(|n| n.checked_add(self.offset))
    }

    /// Splits off the first read of the run; `None` when it was the last.
    fn take_first(&mut self) -> Option<PendingRead> {
        if self.count <= 1 {
            return None;
        }
        let first = PendingRead {
            id: self.id,
            file: self.file.clone(),
            sent: self.sent.clone(),
            offset: self.offset,
            len: self.len,
            count: 1,
        };
        self.id = self.id.wrapping_add(1);
        self.offset += u64::from(self.len);
        self.count -= 1;
        Some(first)
    }
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Item>,
    /// How many of `items` are `Item::Read`s.
    reads: usize,
    /// What `items` are charged against the budget.
    bytes: usize,
    /// The request loop waits for room.
    waiting: bool,
    /// READs the writer has taken and not yet read from the file. The writer reads each
    /// one as soon as it takes it, before it waits for anything (or puts it back).
    reading: usize,
    /// The request loop waits for `reading` to reach 0.
    settling: bool,
    closed: bool,
    /// The writer is gone: replies are dropped instead of queued, and nobody waits.
    abandoned: bool,
}

impl Inner {
    /// One READ the writer took is read or put back; true if the request loop waits for
    /// the last one and should be woken.
    fn release_taken(&mut self) -> bool {
        self.reading = self.reading.saturating_sub(1);
        self.reading == 0 && std::mem::take(&mut self.settling)
    }

    /// Returns `n` bytes of budget; true if the loop waits and should be woken.
    fn release(&mut self, n: usize) -> bool {
        self.bytes -= n;
        // Woken at half the budget, not at the first free byte: the loop then fills the
        // queue in batches instead of waking once per reply.
        let wake = self.waiting && self.bytes <= REPLY_BUDGET / 2;
        if wake {
            self.waiting = false;
        }
        wake
    }
}

pub(crate) struct ReplyQueue {
    inner: Mutex<Inner>,
    /// The writer waits here for replies.
    ready: Notify,
    /// The request loop waits here for room.
    room: Condvar,
    /// The request loop waits here for the READs the writer has taken to be read.
    read_out: Condvar,
    /// Where the bytes sent by reads are counted, whichever path encodes them.
    activity: Arc<Activity>,
    /// Runs once when the writer has found the queue empty and is about to wait: where the
    /// race that lost every reply of a quick session happened.
    #[cfg(test)]
    after_empty_look: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ReplyQueue {
    pub fn new(activity: Arc<Activity>) -> ReplyQueue {
        ReplyQueue {
            inner: Mutex::default(),
            ready: Notify::new(),
            room: Condvar::new(),
            read_out: Condvar::new(),
            activity,
            #[cfg(test)]
            after_empty_look: Mutex::default(),
        }
    }

    /// Appends the reply to a single READ the writer took (its data, or EOF/failure) and
    /// counts what it sends.
    pub fn encode_read(&self, buf: &mut BytesMut, r: &PendingRead) {
        self.encode_read_now(buf, r);
        self.read_finished();
    }

    /// The READ's reply, read now; as `encode_read` without counting a taken READ read.
    fn encode_read_now(&self, buf: &mut BytesMut, r: &PendingRead) {
        let read = |buf: &mut BytesMut| r.file.read_into(buf, r.offset, r.len as usize);
        let n = encode_read(buf, r.id, |buf| read(buf).map(|()| true));
        self.count_sent(r, n.unwrap_or(0));
    }

    /// As `encode_read` if the data can be read without waiting (see
    /// [`Body::read_cached_into`]); if it cannot, nothing is appended, the READ is put back
    /// (see [`put_back`](Self::put_back)) and this returns false.
    pub fn encode_cached_read(&self, buf: &mut BytesMut, r: PendingRead) -> bool {
        let read = |buf: &mut BytesMut| r.file.read_cached_into(buf, r.offset, r.len as usize);
        match encode_read(buf, r.id, |buf| Ok(read(buf))) {
            Some(n) => {
                self.count_sent(&r, n);
                self.read_finished();
                true
            }
            None => {
                self.put_back(Item::Read(r));
                false
            }
        }
    }

    /// A READ the writer took (see `reading`) is read: a change of the file may go on.
    fn read_finished(&self) {
        let mut inner = self.lock();
        let wake = inner.release_taken();
        drop(inner);
        if wake {
            self.read_out.notify_all();
        }
    }

    /// Puts back at the front a reply the writer took but will not send now (a READ it
    /// would have to wait for the disk to read, or the first of another batch), so that
    /// nothing it holds is left unread while it waits: the request loop settles it.
    pub fn put_back(&self, item: Item) {
        let mut inner = self.lock();
        if inner.abandoned {
            return;
        }
        let wake = match &item {
            Item::Encoded(buf) => {
                inner.bytes += buf.len();
                false
            }
            Item::Read(_) => {
                inner.reads += 1;
                inner.bytes += DESCRIPTION_COST;
                inner.release_taken()
            }
        };
        inner.items.push_front(item);
        drop(inner);
        if wake {
            self.read_out.notify_all();
        }
    }

    fn count_sent(&self, r: &PendingRead, n: usize) {
        r.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.activity
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock, once the queue has room (or has been abandoned).
    fn lock_with_room(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        while inner.bytes >= REPLY_BUDGET && !inner.abandoned {
            inner.waiting = true;
            inner = self.room.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        inner
    }

    /// Whether a reply pushed now is queued at once, without waiting for room.
    pub fn has_room(&self) -> bool {
        let inner = self.lock();
        inner.bytes < REPLY_BUDGET || inner.abandoned
    }

    /// Appends an encoded reply, once there is room for it.
    pub fn push(&self, encode: impl FnOnce(&mut Encoder)) {
        let mut inner = self.lock_with_room();
        if inner.abandoned {
            return;
        }
        let added = match inner.items.back_mut() {
            Some(Item::Encoded(buf)) if buf.len() < COALESCE => {
                let before = buf.len();
                encode(&mut Encoder(buf));
                buf.len() - before
            }
            _ => {
                let mut buf = BytesMut::with_capacity(256);
                encode(&mut Encoder(&mut buf));
                let n = buf.len();
                inner.items.push_back(Item::Encoded(buf));
                n
            }
        };
        inner.bytes += added;
        drop(inner);
        self.ready.notify_one();
    }

    /// Queues a single READ (`count` 1), once there is room for it.
    pub fn push_read(&self, read: PendingRead) {
        let mut inner = self.lock_with_room();
        if inner.abandoned {
            return;
        }
        match inner.items.back_mut() {
            Some(Item::Read(run)) if run.continued_by(&read) => run.count += 1,
            _ => {
                inner.items.push_back(Item::Read(read));
                inner.reads += 1;
                inner.bytes += DESCRIPTION_COST;
            }
        }
        drop(inner);
        self.ready.notify_one();
    }

    /// Takes every queued read's data from the file now, in order. Called before the file
    /// is modified, so that a read answers with the data as it was when it was requested.
    /// Data is taken only while the queue has room; past that this waits for the writer
    /// to send what is queued (which sends the oldest reads in the meantime).
    pub fn settle_reads(&self) {
        let mut inner = self.lock();
        // A READ the writer has taken must be read before the change, as the queued ones.
        while inner.reading > 0 && !inner.abandoned {
            inner.settling = true;
            inner = self.read_out.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        let mut i = 0;
        while inner.reads > 0 && !inner.abandoned {
            if inner.bytes >= REPLY_BUDGET {
                inner.waiting = true;
                inner = self.room.wait(inner).unwrap_or_else(|p| p.into_inner());
                // The writer popped from the front meanwhile: look again from there.
                i = 0;
                continue;
            }
            if i >= inner.items.len() {
                break;
            }
            if let Some(Item::Read(_)) = inner.items.get(i) {
                self.settle_one(&mut inner, i);
            }
            i += 1;
        }
    }

    /// Replaces the first read of the run at `i` by its encoded reply.
    fn settle_one(&self, inner: &mut Inner, i: usize) {
        let Some(Item::Read(run)) = inner.items.get_mut(i) else {
            return;
        };
        let mut buf = BytesMut::new();
        match run.take_first() {
            Some(first) => {
                self.encode_read_now(&mut buf, &first);
                inner.bytes += buf.len();
                inner.items.insert(i, Item::Encoded(buf));
            }
            None => {
                self.encode_read_now(&mut buf, run);
                inner.bytes = inner.bytes + buf.len() - DESCRIPTION_COST;
                inner.reads -= 1;
                inner.items[i] = Item::Encoded(buf);
            }
        }
    }

    /// No more replies will be pushed; the writer drains what is left and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// The writer is gone (the client or the connection is): what is queued is dropped,
    /// later replies are not queued, and a request loop waiting for room goes on.
    pub fn abandon(&self) {
        let mut inner = self.lock();
        inner.abandoned = true;
        inner.items.clear();
        (inner.reads, inner.bytes, inner.reading) = (0, 0, 0);
        drop(inner);
        self.room.notify_all();
        self.read_out.notify_all();
    }

    /// The bytes queued, as charged against the budget.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().bytes
    }

    /// The next reply if one is queued now: an encoded buffer, or a single READ.
    pub fn try_pop(&self) -> Option<Item> {
        self.take().0
    }

    /// The next reply if one is queued now, and whether the queue is closed, both seen
    /// under one lock: seen apart, a queue filled and closed in between looked closed and
    /// empty, and every reply of a quick session was dropped unsent (found by the session
    /// fuzz target).
    fn take(&self) -> (Option<Item>, bool) {
        let mut inner = self.lock();
        let closed = inner.closed;
        if let Some(Item::Read(run)) = inner.items.front_mut() {
            if let Some(first) = run.take_first() {
                inner.reading += 1;
                return (Some(Item::Read(first)), closed);
            }
        }
        let Some(item) = inner.items.pop_front() else {
            return (None, closed);
        };
        let cost = match &item {
            Item::Encoded(buf) => buf.len(),
            Item::Read(_) => {
                inner.reads -= 1;
                inner.reading += 1;
                DESCRIPTION_COST
            }
        };
        let wake = inner.release(cost);
        drop(inner);
        if wake {
            self.room.notify_one();
        }
        (Some(item), closed)
    }

    /// The next reply, or `None` once the queue is closed and empty.
    pub async fn pop(&self) -> Option<Item> {
        loop {
            // Register interest before checking, so a push between the check and the wait
            // is not missed.
            let notified = self.ready.notified();
            match self.take() {
                (Some(item), _) => return Some(item),
                (None, true) => return None,
                (None, false) => {
                    #[cfg(test)]
                    if let Some(f) = self.after_empty_look.lock().ok().and_then(|mut f| f.take()) {
                        f();
                    }
                    notified.await
                }
            }
        }
    }
}

/// Appends a DATA reply with what `read` appends (a READ's data), or an EOF/failure STATUS;
/// returns how many data bytes it carries, or `None` with nothing appended if `read` said
/// it could not read now.
fn encode_read(
    buf: &mut BytesMut,
    id: u32,
    read: impl FnOnce(&mut BytesMut) -> io::Result<bool>,
) -> Option<usize> {
    let base = buf.len();
    let mark = Encoder(buf).data_begin(id);
    let result = read(buf);
    let filled = buf.len() - mark.1;
    match result {
        Ok(true) if filled > 0 => {
            Encoder(buf).data_finish(mark);
            Some(filled)
        }
        Ok(true) => {
            buf.truncate(base);
            Encoder(buf).status(id, StatusCode::Eof, "End of file");
            Some(0)
        }
        Ok(false) => {
            buf.truncate(base);
            None
        }
        Err(e) => {
            buf.truncate(base);
            Encoder(buf).status(id, StatusCode::Failure, &e.to_string());
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests;
