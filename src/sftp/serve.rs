//! Runs one SFTP session over a byte transport: a pump hands the client's bytes to the
//! request loop ([`Session`], run through an [`Inbox`] on a blocking thread while it has
//! bytes to handle) and a writer task sends the replies the loop queues. Neither holds a
//! thread while the session is idle: the writer reads READ data from the file as it sends
//! it, and moves to a blocking thread only for data the page cache does not hold.
//!
//! How a session ends: once the client's input has ended, or the server ends the session,
//! what was received is still handled to the end (its writes are what a resume starts
//! from), and its replies are sent for as long as the client reads them. Only a client
//! that stops reading loses them: when one batch of replies has waited [`DRAIN_TIMEOUT`]
//! for it (or the server's [`SHUTDOWN_REPLY_WAIT`] has passed), the rest is dropped, which
//! also frees a request loop waiting for room in the queue. How long the request loop
//! itself takes (a slow disk, an fsync) never costs a reading client its replies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buffers::Buffers;
use super::inbox::Inbox;
use super::queue::{Item, ReplyQueue};
use super::session::{Session, SessionSummary, WriteClosed};
use super::{Activity, Inbound, Outbound, SharedFile, MAX_IO_LEN};

/// How long one batch of replies may wait for a client whose input has ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long replies may hold up, in all, a session the server is closing.
const SHUTDOWN_REPLY_WAIT: Duration = Duration::from_secs(1);
/// Replies are gathered up to this many bytes before they are handed to the transport, so
/// that many small replies, or a read's data and the next read's header, share messages.
const WRITE_BATCH: usize = 256 * 1024;
/// How long the writer keeps its reply buffers once no reply is queued: a download that
/// pauses between files reuses them, an idle session gives them back.
const BUFFERS_KEPT_IDLE: Duration = Duration::from_secs(1);

/// How the input ended, which decides how long replies may wait for the client.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// The client ended its input at this instant: each batch may wait [`DRAIN_TIMEOUT`].
    Client(Instant),
    /// The server is closing the session: everything must be sent by this instant.
    Server(Instant),
}

/// Ends the input of the request loop when dropped, so that a session dropped unfinished
/// (its task aborted) still syncs and closes its files.
struct EndsInput(Arc<Inbox>);

impl Drop for EndsInput {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Serves SFTP on `input`/`output` until the client ends the stream or `shutdown` fires.
/// Open write handles are fsynced before it returns.
pub async fn serve<I: Inbound, O: Outbound>(
    shared: SharedFile,
    activity: Arc<Activity>,
    on_write_closed: Option<WriteClosed>,
    mut input: I,
    output: O,
    shutdown: impl Future<Output = ()> + Send,
) -> SessionSummary {
    let queue = Arc::new(ReplyQueue::new(activity.clone()));
    let (ended_tx, ended) = watch::channel(None::<Ending>);
    let stop_writer = CancellationToken::new();
    // Returning, or being dropped (a runtime shutting down), ends the writer as well.
    let _writer_stops_with_us = stop_writer.clone().drop_guard();
    let mut writer = tokio::spawn({
        let (queue, stop) = (queue.clone(), stop_writer.clone());
        async move {
            tokio::select! {
                _ = write_replies(queue.clone(), output, ended, stop.clone()) => {}
                _ = stop.cancelled() => {}
            }
            // However it ended, nothing more is sent: a request loop waiting for room
            // in the queue must not wait for it.
            queue.abandon();
        }
    });
    let membership = activity.join(input.hangup_probe());
    let session = Session::new(
        membership.number,
        shared,
        activity.clone(),
        on_write_closed,
        queue.clone(),
    );
    let (inbox, summary) = Inbox::new(session);
    let inbox = EndsInput(inbox);
    tokio::pin!(shutdown);
    let mut by_server = false;
    loop {
        let chunk = tokio::select! {
            chunk = input.recv() => chunk,
            _ = &mut shutdown => {
                by_server = true;
                None
            }
            _ = &mut writer => None,
        };
        let Some(chunk) = chunk else { break };
        // The request loop stops taking chunks while its reply queue is full, and this
        // then stops reading the channel: that is the backpressure on a client that does
        // not read its replies. Shutdown is still heard meanwhile.
        let queued = tokio::select! {
            queued = inbox.0.push(chunk) => queued,
            _ = &mut shutdown => {
                by_server = true;
                false
            }
            _ = &mut writer => false,
        };
        if !queued {
            break;
        }
    }
    membership.draining();
    inbox.0.end();
    let now = Instant::now();
    let ending = if by_server {
        Ending::Server(now + SHUTDOWN_REPLY_WAIT)
    } else {
        Ending::Client(now)
    };
    // A writer already gone has no receiver left: nothing waits for the ending then.
    let _ = ended_tx.send(Some(ending));
    // The loop finishes what was received: it is working on our own disk, or waiting for
    // room in the queue, which the writer makes by sending or, once the client has stopped
    // reading, by dropping the rest.
    let summary = summary.await.unwrap_or_default();
    drop(membership);
    queue.close();
    if !writer.is_finished() {
        // It ends once the queue is drained, or once the client has stopped reading.
        let _ = writer.await;
    }
    summary
}

/// Resolves once the client has kept one batch of replies waiting too long: never before
/// its input has ended, then [`DRAIN_TIMEOUT`] after this batch was ready or the input
/// ended, whichever is later (or at the server's deadline).
async fn stalled(mut ended: watch::Receiver<Option<Ending>>, ready: Instant) {
    let ending = loop {
        if let Some(e) = *ended.borrow_and_update() {
            break e;
        }
        if ended.changed().await.is_err() {
            // The session is gone without saying how; the writer is stopped with it.
            return std::future::pending().await;
        }
    };
    let deadline = match ending {
        Ending::Client(at) => ready.max(at) + DRAIN_TIMEOUT,
        Ending::Server(by) => by,
    };
    tokio::time::sleep_until(deadline).await
}

/// What the writer needs to send, moved onto a blocking thread and back with it.
struct Sender<O> {
    queue: Arc<ReplyQueue>,
    out: O,
    ended: watch::Receiver<Option<Ending>>,
    stop: CancellationToken,
    buffers: Buffers,
}

impl<O: Outbound> Sender<O> {
    /// Sends one batch; false once the transport is gone or the client stopped reading.
    async fn send(&mut self, data: Bytes) -> bool {
        let ready = Instant::now();
        tokio::select! {
            sent = self.out.send(data) => sent.is_ok(),
            _ = stalled(self.ended.clone(), ready) => {
                tracing::debug!("the client stopped reading its replies; the rest are dropped");
                false
            }
            _ = self.stop.cancelled() => false,
        }
    }

    /// One batch of replies, starting with `first`, up to [`WRITE_BATCH`]: encoded replies
    /// and READs, their data read into it. With `cached_only`, only from the page cache: it
    /// stops at the first READ that would wait for the disk, which goes back to the queue
    /// (see [`ReplyQueue::encode_cached_read`]), and says so.
    fn fill(&mut self, first: Item, cached_only: bool) -> (Bytes, bool) {
        let mut buf = self.buffers.get();
        let mut it = first;
        let cold = loop {
            match it {
                Item::Encoded(b) => buf.extend_from_slice(&b),
                Item::Read(r) if cached_only => {
                    if !self.queue.encode_cached_read(&mut buf, r) {
                        break true;
                    }
                }
                Item::Read(r) => self.queue.encode_read(&mut buf, &r),
            }
            if buf.len() >= WRITE_BATCH {
                break false;
            }
            match self.queue.try_pop() {
                Some(next) => it = next,
                None => break false,
            }
        };
        // An empty buffer is lent too: unshared, it is the next one `get` returns.
        (self.buffers.lend(buf), cold)
    }

    /// On a blocking thread: sends batches until the queue is empty, READs read from the
    /// file whether the page cache has them or not.
    fn send_reads(&mut self, runtime: &tokio::runtime::Handle) -> bool {
        let mut item = self.queue.try_pop();
        while let Some(first) = item {
            let (data, _) = self.fill(first, false);
            if !runtime.block_on(self.send(data)) {
                return false;
            }
            item = self.queue.try_pop();
        }
        true
    }
}

async fn write_replies<O: Outbound>(
    queue: Arc<ReplyQueue>,
    out: O,
    ended: watch::Receiver<Option<Ending>>,
    stop: CancellationToken,
) {
    let mut sender = Sender {
        queue: queue.clone(),
        out,
        ended,
        stop,
        buffers: Buffers::new(WRITE_BATCH + MAX_IO_LEN as usize + 64),
    };
    loop {
        let first = match queue.try_pop() {
            Some(item) => item,
            None => {
                sender.buffers.trim();
                let item = match tokio::time::timeout(BUFFERS_KEPT_IDLE, queue.pop()).await {
                    Ok(item) => item,
                    Err(_) => {
                        sender.buffers.release();
                        queue.pop().await
                    }
                };
                match item {
                    Some(item) => item,
                    None => break,
                }
            }
        };
        match first {
            // Encoded replies (statuses, handles, attributes, names: an upload's are all of
            // this kind) are sent from here, in the buffers they were encoded in.
            Item::Encoded(mut buf) => {
                while let Some(next) = queue.try_pop() {
                    match next {
                        Item::Encoded(b) if buf.len() < WRITE_BATCH => buf.extend_from_slice(&b),
                        // Sent next; put back meanwhile (see `ReplyQueue::put_back`).
                        other => {
                            queue.put_back(other);
                            break;
                        }
                    }
                }
                if !sender.send(buf.freeze()).await {
                    return;
                }
            }
            // A READ's data is read from the file as its reply is sent: here while the
            // page cache has it, which it mostly has (the file was just uploaded or
            // written, or is read again), so that a download wakes no other thread; on a
            // blocking thread from the first read that would wait for the disk (a dump of
            // many GiB read once), which would otherwise hold this runtime's thread and
            // every connection on it. That thread sends until the queue is empty, so a cold
            // download moves there once, not once per batch.
            read @ Item::Read(_) => {
                let (batch, cold) = sender.fill(read, true);
                if !batch.is_empty() && !sender.send(batch).await {
                    return;
                }
                if !cold {
                    continue;
                }
                let runtime = tokio::runtime::Handle::current();
                let job = tokio::task::spawn_blocking(move || {
                    let sent = sender.send_reads(&runtime);
                    (sender, sent)
                });
                match job.await {
                    Ok((back, true)) => sender = back,
                    Ok((_, false)) | Err(_) => return,
                }
            }
        }
    }
    let ready = Instant::now();
    tokio::select! {
        _ = sender.out.finish() => {}
        _ = stalled(sender.ended, ready) => {}
    }
}
