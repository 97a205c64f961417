//! A socket wrapper that records when bytes last moved, and can be killed.
//!
//! russh's own inactivity timer is only polled by its session loop, and that loop can sit
//! blocked in a socket write to a client that stopped reading. The watchdog closes such a
//! connection from outside: killing the wrapper makes every pending and later read or write
//! fail, which wakes and ends the loop.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// When the socket last moved a byte, in milliseconds since `start`.
pub struct Progress {
    start: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long no byte has moved.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

pub struct Watched<S> {
    inner: S,
    progress: Arc<Progress>,
    dead: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, progress: Arc<Progress>, kill: CancellationToken) -> Watched<S> {
        Watched {
            inner,
            progress,
            dead: Box::pin(kill.cancelled_owned()),
        }
    }

    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.dead.as_mut().poll(cx).is_ready()
    }
}

fn killed_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection closed by the watchdog")
}

use std::future::Future;

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(killed_error()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.progress.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return Poll::Ready(Err(killed_error()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_kill_fails_blocked_reads_and_writes() {
        // A read with nothing to read, as when a client goes silent.
        let (near, mut far) = tokio::io::duplex(64);
        let progress = Progress::new();
        let kill = CancellationToken::new();
        let mut watched = Watched::new(near, progress.clone(), kill.clone());
        far.write_all(b"hi").await.unwrap();
        let mut two = [0u8; 2];
        watched.read_exact(&mut two).await.unwrap();
        assert!(progress.idle() < Duration::from_secs(1));
        let reader = tokio::spawn(async move {
            let mut one = [0u8; 1];
            watched.read(&mut one).await
        });
        tokio::task::yield_now().await;
        kill.cancel();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // A write into a full pipe, as when a client stops reading.
        let (near, _far) = tokio::io::duplex(64);
        let kill = CancellationToken::new();
        let mut watched = Watched::new(near, Progress::new(), kill.clone());
        let writer = tokio::spawn(async move { watched.write_all(&[0u8; 4096]).await });
        tokio::task::yield_now().await;
        kill.cancel();
        let err = writer.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
