//! Who the client of an SSH connection is, behind a TCP load balancer that speaks the PROXY
//! protocol (`--proxy-protocol`, `--proxy-from`). A connection from a `--proxy-from`
//! source must start with a header, and the client it names is the connection's peer for
//! everything after: per-source limits and penalties, `from=` options, audit logs and the
//! API's `peers`. A connection from any other source is a direct client, and one that
//! starts with a PROXY signature is refused: [`Guarded`] watches its first bytes as russh
//! reads them, so that a forged header never reaches russh and never names an address.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ipnet::IpNet;
use tokio::io::{AsyncRead, ReadBuf};

use super::forward::forward_writes;

use crate::proxy_protocol::{signature, Signature, V2_SIGNATURE};

/// The sources whose connections carry a PROXY header.
#[derive(Clone, Debug)]
pub struct ProxyPolicy {
    pub from: Vec<IpNet>,
}

impl ProxyPolicy {
    /// Whether a connection from `ip` must start with a header. An IPv4 balancer seen
    /// through a dual-stack listener (`::ffff:a.b.c.d`) is that IPv4 address.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.from.iter().any(|net| net.contains(&ip))
    }
}

/// A direct client's socket that fails the first read completing a PROXY signature (and
/// records that it did), before russh is given those bytes. Disarmed, it only passes
/// bytes through. It looks at no more than the first 12 bytes.
pub struct Guarded<S> {
    inner: S,
    /// The first bytes read, while they could still be the start of a signature.
    seen: [u8; V2_SIGNATURE.len()],
    len: usize,
    /// Still looking.
    armed: bool,
    forged: Arc<AtomicBool>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, armed: bool) -> Guarded<S> {
        Guarded {
            inner,
            seen: [0; V2_SIGNATURE.len()],
            len: 0,
            armed,
            forged: Arc::default(),
        }
    }

    /// Set once a forged header was refused.
    pub fn forged(&self) -> Arc<AtomicBool> {
        self.forged.clone()
    }

    /// Looks at `fresh`, the bytes just read; `false` if they complete a signature.
    fn check(&mut self, fresh: &[u8]) -> bool {
        let take = fresh.len().min(self.seen.len() - self.len);
        self.seen[self.len..self.len + take].copy_from_slice(&fresh[..take]);
        self.len += take;
        match signature(&self.seen[..self.len]) {
            Signature::Present => {
                self.armed = false;
                self.forged.store(true, Ordering::Release);
                false
            }
            Signature::Maybe if self.len < self.seen.len() => true,
            Signature::Maybe | Signature::Absent => {
                self.armed = false;
                true
            }
        }
    }
}

fn forged_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "PROXY protocol header from a source not in --proxy-from",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.armed {
            if self.forged.load(Ordering::Acquire) {
                return Poll::Ready(Err(forged_error()));
            }
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            // Only the first bytes matter: copied out so that `buf` can be un-filled.
            let mut fresh = [0u8; V2_SIGNATURE.len()];
            let n = (buf.filled().len() - before).min(fresh.len());
            fresh[..n].copy_from_slice(&buf.filled()[before..before + n]);
            if n > 0 && !self.check(&fresh[..n]) {
                // Un-read them: the signature's bytes never reach russh.
                buf.set_filled(before);
                return Poll::Ready(Err(forged_error()));
            }
        }
        r
    }
}

forward_writes!(Guarded);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn trusted_sources() {
        let p = ProxyPolicy {
            from: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        };
        assert!(p.trusts("10.1.2.3".parse().unwrap()));
        assert!(p.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(p.trusts("::1".parse().unwrap()));
        assert!(!p.trusts("11.0.0.1".parse().unwrap()));
        assert!(!p.trusts("127.0.0.1".parse().unwrap()));
    }

    async fn through_guard(chunks: &[&[u8]]) -> (io::Result<Vec<u8>>, bool) {
        let (near, mut far) = tokio::io::duplex(4096);
        let mut g = Guarded::new(near, true);
        let forged = g.forged();
        for c in chunks {
            far.write_all(c).await.unwrap();
        }
        drop(far);
        let mut got = Vec::new();
        let r = loop {
            let mut b = [0u8; 4096];
            match g.read(&mut b).await {
                Ok(0) => break Ok(got),
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) => break Err(e),
            }
        };
        (r, forged.load(Ordering::Acquire))
    }

    #[tokio::test]
    async fn a_direct_client_passes_untouched() {
        let (r, forged) = through_guard(&[b"SSH-2.0-OpenSSH_9.2\r\n", b"more"]).await;
        assert_eq!(r.unwrap(), b"SSH-2.0-OpenSSH_9.2\r\nmore");
        assert!(!forged);
        // A start that only looks like one for a while.
        let (r, forged) = through_guard(&[b"PRO", b"XIMA"]).await;
        assert_eq!(r.unwrap(), b"PROXIMA");
        assert!(!forged);
    }

    #[tokio::test]
    async fn a_forged_header_is_refused_whole_or_in_pieces() {
        let v1 = b"PROXY TCP4 127.0.0.2 127.0.0.1 1 2\r\nSSH-2.0-x\r\n";
        let (r, forged) = through_guard(&[v1]).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(forged);
        // Cut inside the signature: the bytes before the cut may pass, never all of it.
        for cut in 1..V2_SIGNATURE.len() {
            let (a, b) = V2_SIGNATURE.split_at(cut);
            let (near, mut far) = tokio::io::duplex(4096);
            let mut g = Guarded::new(near, true);
            far.write_all(a).await.unwrap();
            let mut buf = [0u8; 64];
            let n = g.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], a);
            far.write_all(b).await.unwrap();
            far.write_all(b"\x21\x11\x00\x0c").await.unwrap();
            assert!(g.read(&mut buf).await.is_err());
            assert!(g.forged().load(Ordering::Acquire));
            // And it stays refused.
            assert!(g.read(&mut buf).await.is_err());
        }
    }

    #[tokio::test]
    async fn disarmed_passes_everything() {
        let (near, mut far) = tokio::io::duplex(4096);
        let mut g = Guarded::new(near, false);
        far.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
        let mut buf = [0u8; 15];
        g.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"PROXY UNKNOWN\r\n");
    }
}
