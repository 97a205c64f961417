//! The client's bytes on their way to the request loop, and the thread that runs it.
//!
//! The loop ([`Session`]) runs on a blocking thread, since file I/O can stall (dirty page
//! throttling, a slow disk, fsync) and must not stall the runtime's workers. But it holds
//! that thread only while it has bytes to handle: the first chunk that arrives while it is
//! idle starts a blocking job, which handles chunks until none is left and then puts the
//! loop back here. An idle session (most of a node's, most of the time) costs no thread and
//! no stack; tokio's pool keeps a finished job's thread for the next job, of any session.
//!
//! While the loop is idle, a chunk is taken in where it arrives, on the runtime's thread
//! ([`Session::feed_reads`]): a packet still arriving is kept, a READ is answered there (it
//! only queues a description), and a job is started only for a whole packet of another
//! kind. A 255 KiB WRITE arrives in about eight SSH packets; starting a job for each woke a
//! thread (a futex and two context switches) to do nothing but queue the piece, and a
//! download's READs woke one per batch of requests (measured: about one context switch per
//! 32 KiB uploaded, half of one per 32 KiB downloaded, see bench/RESULTS.md, issue 17).
//!
//! The inbox holds at most [`INBOX_BUDGET`] bytes, counting the chunk being handled; past
//! that the producer waits for room, so a loop that is blocked (its reply queue is full
//! because the client does not read, or the disk is slow) stops the producer, which stops
//! reading the channel: that is the backpressure on the client. Chunks queue only while a
//! job runs, so the producer never waits for a loop that nobody runs. The loop itself
//! holds at most the one packet still arriving.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};

use super::session::{Session, SessionSummary};

/// Bytes received and not yet handled (with what is being handled) before the producer
/// waits: 16 of OpenSSH's 32 KiB writes.
pub(super) const INBOX_BUDGET: usize = 512 * 1024;

pub(super) struct Inbox {
    state: Mutex<State>,
    /// The producer waits here for room.
    room: Notify,
    runtime: Handle,
    /// The session's span, entered by each job.
    span: tracing::Span,
}

struct State {
    chunks: VecDeque<Bytes>,
    /// Bytes of `chunks` and of the chunk being handled.
    bytes: usize,
    /// The loop, while no job runs it.
    idle: Option<Session>,
    /// No more input: the job that finds `chunks` empty finishes the loop.
    ended: bool,
    /// A job panicked: the loop is gone, input is refused.
    broken: bool,
    done: Option<oneshot::Sender<SessionSummary>>,
}

impl Inbox {
    /// An inbox for `session`, and where its summary arrives once the input has ended and
    /// everything before the end is handled (an error if the loop panicked).
    pub fn new(session: Session) -> (Arc<Inbox>, oneshot::Receiver<SessionSummary>) {
        let (done, summary) = oneshot::channel();
        let inbox = Inbox {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                bytes: 0,
                idle: Some(session),
                ended: false,
                broken: false,
                done: Some(done),
            }),
            room: Notify::new(),
            runtime: Handle::current(),
            span: tracing::Span::current(),
        };
        (Arc::new(inbox), summary)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `chunk` once there is room, and starts the loop if it is idle and can use
    /// what is queued; false if the loop is gone (it panicked), which ends the input.
    pub async fn push(self: &Arc<Self>, chunk: Bytes) -> bool {
        loop {
            // Registered before looking, so that room made in between is not missed.
            let room = self.room.notified();
            {
                let mut s = self.lock();
                if s.broken || s.ended {
                    return false;
                }
                // Idle, the loop has nothing queued: it takes the chunk in here.
                if let Some(session) = s.idle.take() {
                    drop(s);
                    self.take_in(session, chunk);
                    return true;
                }
                if s.bytes < INBOX_BUDGET {
                    s.bytes += chunk.len();
                    s.chunks.push_back(chunk);
                    return true;
                }
            }
            room.await;
        }
    }

    /// With the loop idle (so nothing is queued): the loop takes `chunk` in here, on the
    /// runtime's thread, and a job is started only for what it left to do.
    fn take_in(self: &Arc<Self>, mut session: Session, chunk: Bytes) {
        // A panic ends this session as it would in a job, not the connection's task.
        let fed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.feed_reads(chunk)));
        let Ok(done) = fed else {
            self.break_down();
            return;
        };
        let mut s = self.lock();
        s.idle = Some(session);
        if !done {
            // What is left is in the loop's own buffer: an empty chunk has the job go on
            // from there.
            s.chunks.push_back(Bytes::new());
            self.start(&mut s);
        }
    }

    /// The loop is gone (it panicked): the producer stops instead of waiting for room
    /// forever, and the summary's receiver learns that there is none.
    fn break_down(&self) {
        let mut s = self.lock();
        s.broken = true;
        s.done = None;
        s.chunks.clear();
        drop(s);
        self.room.notify_one();
    }

    /// The input has ended: once what was queued is handled, the loop finishes (syncs and
    /// closes what the client left open) and sends its summary. Idempotent.
    pub fn end(self: &Arc<Self>) {
        let mut s = self.lock();
        if !s.ended {
            s.ended = true;
            self.start(&mut s);
        }
    }

    /// Starts a job if the loop is idle.
    fn start(self: &Arc<Self>, s: &mut State) {
        if let Some(session) = s.idle.take() {
            let me = self.clone();
            // A runtime that is shutting down runs no new job; the loop is dropped unrun.
            drop(self.runtime.spawn_blocking(move || me.run(session)));
        }
    }

    /// One job: handles chunks until none is left, then puts the loop back (or finishes it).
    fn run(self: Arc<Self>, mut session: Session) {
        let _span = self.span.enter();
        let guard = PanicGuard(&self);
        loop {
            let chunk = {
                let mut s = self.lock();
                match s.chunks.pop_front() {
                    Some(chunk) => chunk,
                    None if s.ended => break,
                    None => {
                        s.idle = Some(session);
                        std::mem::forget(guard);
                        return;
                    }
                }
            };
            let n = chunk.len();
            session.feed(chunk);
            let mut s = self.lock();
            let was_full = s.bytes >= INBOX_BUDGET;
            s.bytes -= n;
            if was_full && s.bytes < INBOX_BUDGET {
                drop(s);
                self.room.notify_one();
            }
        }
        let summary = session.finish();
        if let Some(done) = self.lock().done.take() {
            let _ = done.send(summary);
        }
        std::mem::forget(guard);
    }
}

/// Marks the inbox broken if a job unwinds: the producer stops instead of waiting for room
/// forever, and the summary's receiver learns that there is none.
struct PanicGuard<'a>(&'a Inbox);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        self.0.break_down();
    }
}
