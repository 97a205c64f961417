//! The SFTP side: a one-file virtual filesystem and the request loop that serves it.
//!
//! It knows nothing of SSH or of the request store: the SSH layer hands it an already
//! authorized [`SharedFile`] and a byte transport ([`Inbound`]/[`Outbound`]).

mod activity;
mod buffers;
mod inbox;
mod lease;
mod local;
mod queue;
mod rope;
mod serve;
mod session;
pub mod storage;
pub mod vfs;
pub mod wire;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use activity::Activity;
pub use lease::{LeaseHold, WriteLeases, LEASE_LOST};
pub use local::LocalStorage;
pub use serve::serve;
pub use session::{SessionSummary, WriteClosed, WriteSummary};

/// The largest READ or WRITE payload served, as OpenSSH's sftp-server: its client aborts on
/// replies above 256 KiB, so longer reads are clamped.
pub const MAX_IO_LEN: u32 = 261_120;
/// The largest packet accepted from a client.
pub const MAX_PACKET_LEN: u32 = 256 * 1024;
/// The most a WRITE may start past the end of the file. Clients with many writes in flight
/// (pkg/sftp, asyncssh) may have them arrive out of order, up to their window of requests
/// (asyncssh: 128 of 255 KiB); beyond that a write would only make a sparse file.
pub const MAX_WRITE_GAP: u64 = 32 * 1024 * 1024;
/// Open handles per session.
pub const MAX_HANDLES: usize = 64;

/// The one file a session may see, already authorized by the caller.
#[derive(Clone, Debug)]
pub struct SharedFile {
    /// The name the client sees, e.g. `openchs.70.cdump` or `upgraded_openchs.70.cdump`.
    pub name: String,
    /// Where its bytes live.
    pub storage: Arc<dyn storage::Storage>,
    /// `true` in draft (upload), `false` in done (read-only download).
    pub writable: bool,
    /// Writes that would make the file larger than this are refused.
    pub max_size: Option<u64>,
    /// Whether the client may upload to the temporary name `<name>.filepart` and rename it
    /// onto the file (WinSCP does); `false` refuses the name like any other.
    pub partial: bool,
    /// The upload's lease across gateway nodes (see [`WriteLeases`]); `None` writes without
    /// asking anyone, for a file no other node can write.
    pub leases: Option<Arc<dyn WriteLeases>>,
}

/// Tells whether a session's client has hung up, even if not all it sent has been read.
pub type HangupProbe = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// Where requests come from: chunks of the client's byte stream, `None` at its end.
pub trait Inbound: Send + 'static {
    fn recv(&mut self) -> impl Future<Output = Option<Bytes>> + Send;

    /// How other sessions of the request learn that this client is gone before this
    /// session has read to the end of its input (see [`Activity`]).
    fn hangup_probe(&self) -> HangupProbe {
        std::sync::Arc::new(|| false)
    }
}

/// Where replies go.
pub trait Outbound: Send + 'static {
    fn send(&mut self, data: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Called once after the last reply: end the stream.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// Adapts any byte stream, e.g. one half of `tokio::io::duplex` in tests.
pub struct IoInbound<R>(pub R);

impl<R: AsyncRead + Unpin + Send + 'static> Inbound for IoInbound<R> {
    async fn recv(&mut self) -> Option<Bytes> {
        let mut buf = vec![0u8; 64 * 1024];
        match self.0.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(buf.into())
            }
        }
    }
}

pub struct IoOutbound<W>(pub W);

impl<W: AsyncWrite + Unpin + Send + 'static> Outbound for IoOutbound<W> {
    async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        self.0.write_all(&data).await?;
        self.0.flush().await
    }

    async fn finish(&mut self) {
        let _ = self.0.shutdown().await;
    }
}
