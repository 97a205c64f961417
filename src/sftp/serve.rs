//! Runs one SFTP session over a byte transport: a pump hands the client's bytes to the
//! request loop ([`Session`], on a blocking thread) and a writer (another blocking thread)
//! sends the replies the loop queues.
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
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::queue::{Buffers, Item, ReplyQueue};
use super::session::{Session, SessionSummary, WriteClosed};
use super::{Activity, Inbound, Outbound, SharedFile, MAX_IO_LEN};

/// Received chunks waiting for the request thread.
const PUMP_QUEUE: usize = 16;
/// How long one batch of replies may wait for a client whose input has ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long replies may hold up, in all, a session the server is closing.
const SHUTDOWN_REPLY_WAIT: Duration = Duration::from_secs(1);
/// Replies are gathered up to this many bytes before they are handed to the transport, so
/// that many small replies, or a read's data and the next read's header, share messages.
const WRITE_BATCH: usize = 256 * 1024;

/// How the input ended, which decides how long replies may wait for the client.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// The client ended its input at this instant: each batch may wait [`DRAIN_TIMEOUT`].
    Client(Instant),
    /// The server is closing the session: everything must be sent by this instant.
    Server(Instant),
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
    // Replies are sent from a blocking thread as well: a READ's data is read from the file
    // when its reply is sent, and a file that is not in the page cache (a dump of many GiB
    // read once) would otherwise hold a runtime worker on the disk.
    let stop_writer = CancellationToken::new();
    // Returning, or being dropped (a runtime shutting down), ends that thread as well.
    let _writer_stops_with_us = stop_writer.clone().drop_guard();
    let mut writer = tokio::task::spawn_blocking({
        let runtime = tokio::runtime::Handle::current();
        let (queue, stop) = (queue.clone(), stop_writer.clone());
        move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = write_replies(queue.clone(), output, ended) => {}
                    _ = stop.cancelled() => {}
                }
                // However it ended, nothing more is sent: a request loop waiting for room
                // in the queue must not wait for it.
                queue.abandon();
            })
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
    // Requests are handled on a blocking thread: file I/O can stall for a long time (dirty
    // page throttling, a slow disk, fsync) and must not stall the runtime's workers, which
    // run every other connection's crypto. This task only pumps bytes to it.
    let (tx, rx) = mpsc::channel::<Bytes>(PUMP_QUEUE);
    let span = tracing::Span::current();
    let worker = tokio::task::spawn_blocking(move || span.in_scope(|| session.run(rx)));
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
        let sent = tokio::select! {
            sent = tx.send(chunk) => sent.is_ok(),
            _ = &mut shutdown => {
                by_server = true;
                false
            }
            _ = &mut writer => false,
        };
        if !sent {
            break;
        }
    }
    membership.draining();
    drop(tx);
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
    let summary = worker.await.unwrap_or_default();
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

async fn write_replies<O: Outbound>(
    queue: Arc<ReplyQueue>,
    mut out: O,
    ended: watch::Receiver<Option<Ending>>,
) {
    let mut buffers = Buffers::new(WRITE_BATCH + MAX_IO_LEN as usize + 64);
    loop {
        let first = match queue.try_pop() {
            Some(item) => item,
            None => {
                buffers.trim();
                match queue.pop().await {
                    Some(item) => item,
                    None => break,
                }
            }
        };
        let mut buf = buffers.get();
        let mut item = Some(first);
        while let Some(it) = item {
            match it {
                Item::Encoded(b) => buf.extend_from_slice(&b),
                Item::Read(r) => queue.encode_read(&mut buf, &r),
            }
            item = if buf.len() < WRITE_BATCH {
                queue.try_pop()
            } else {
                None
            };
        }
        let ready = Instant::now();
        tokio::select! {
            sent = out.send(buffers.lend(buf)) => if sent.is_err() { return },
            _ = stalled(ended.clone(), ready) => {
                tracing::debug!("the client stopped reading its replies; the rest are dropped");
                return;
            }
        }
    }
    let ready = Instant::now();
    tokio::select! {
        _ = out.finish() => {}
        _ = stalled(ended, ready) => {}
    }
}
