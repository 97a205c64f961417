//! Socket reads in large gulps. russh reads every SSH packet with two exact reads, its
//! length and then the rest, and each was a `recvfrom` of its own (two per 32 KiB of an
//! upload). This wrapper reads up to [`READ_AHEAD`] bytes at once and serves russh's reads
//! from them, at the cost of one copy in memory of what it serves: uploads made half the
//! system calls (3.7-4.4 -> 1.8-2.0 per 32 KiB, `recvfrom` 2.3 -> 0.5), for no CPU change
//! this noisy machine could resolve (bench/RESULTS.md, issue 17, "Levers tried").
//!
//! The buffer exists only while the connection moves bytes: it is freed whenever it is
//! empty and the socket has nothing more to read (the read that finds nothing also
//! registers for the next readiness), so an idle connection holds none of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::forward::forward_writes;

/// The most read from the socket at once; reads asking this much or more go straight to
/// the socket.
pub const READ_AHEAD: usize = 128 * 1024;

pub struct ReadAhead<S> {
    inner: S,
    /// The bytes read and not yet served.
    buf: BytesMut,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// Copies what `out` takes of the unserved bytes.
    fn serve(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.buf.len());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if !me.buf.is_empty() {
            me.serve(out);
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_AHEAD {
            return Pin::new(&mut me.inner).poll_read(cx, out);
        }
        // Empty here: `reserve` takes the whole allocation back (or makes one) without
        // copying anything.
        me.buf.reserve(READ_AHEAD);
        match poll_read_buf(Pin::new(&mut me.inner), cx, &mut me.buf) {
            Poll::Ready(Ok(_)) => {
                me.serve(out);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Nothing to read now: an idle connection keeps no buffer.
                me.buf = BytesMut::new();
                Poll::Pending
            }
        }
    }
}

forward_writes!(ReadAhead);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_small_and_large_reads_in_order_and_frees_when_idle() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut r = ReadAhead::new(near);
        let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
        far.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await.unwrap();
        got.extend_from_slice(&head);
        let mut mid = vec![0u8; 40_000];
        r.read_exact(&mut mid).await.unwrap();
        got.extend_from_slice(&mid);
        let mut big = vec![0u8; 2 * READ_AHEAD];
        r.read_exact(&mut big).await.unwrap();
        got.extend_from_slice(&big);
        drop(far);
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);

        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut r = ReadAhead::new(near);
        far.write_all(b"abc").await.unwrap();
        let mut one = [0u8; 3];
        r.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"abc");
        // The next read finds nothing: the buffer goes.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut space = [0u8; 8];
        let mut rb = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut r).poll_read(&mut cx, &mut rb).is_pending());
        assert_eq!(r.buf.capacity(), 0);
    }
}
