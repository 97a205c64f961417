//! The SFTP subsystem on one session channel: russh's channel halves adapted to the SFTP
//! layer's byte transport, and the task that owns the channel from open to close.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::Conn;
use crate::sftp::{self, Activity, Inbound, Outbound, SharedFile, WriteClosed};

/// Data a client may send before its subsystem request is answered (none, normally).
const MAX_EARLY_BYTES: usize = 1024 * 1024;

/// What the handler hands over once the `sftp` subsystem is accepted.
pub struct Start {
    pub file: SharedFile,
    pub activity: Arc<Activity>,
    pub on_write_closed: WriteClosed,
}

struct ChannelInbound {
    early: VecDeque<Bytes>,
    read: ChannelReadHalf,
}

impl Inbound for ChannelInbound {
    async fn recv(&mut self) -> Option<Bytes> {
        if let Some(data) = self.early.pop_front() {
            return Some(data);
        }
        loop {
            match self.read.wait().await? {
                ChannelMsg::Data { data } => return Some(data),
                ChannelMsg::Eof | ChannelMsg::Close => return None,
                _ => {}
            }
        }
    }
}

/// The channel's write half; `ending` is the connection's kick token: once the server is
/// closing the connection (revoked, idle, shutdown) the client is told by a disconnect
/// message instead of a clean end of the subsystem.
struct ChannelOutbound(ChannelWriteHalf<Msg>, CancellationToken);

impl Outbound for ChannelOutbound {
    async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        self.0.data_bytes(data).await.map_err(std::io::Error::other)
    }

    async fn finish(&mut self) {
        if self.1.is_cancelled() {
            return;
        }
        // Clients such as scp fail a transfer whose channel ends without an exit status.
        let _ = self.0.exit_status(0).await;
        let _ = self.0.eof().await;
        let _ = self.0.close().await;
    }
}

/// Owns an accepted session channel. Until `start` arrives it keeps reading the channel so
/// that russh never blocks on it (a full channel queue stalls the whole connection), then
/// serves SFTP on it until either side ends.
pub async fn run(channel: Channel<Msg>, start: oneshot::Receiver<Start>, conn: Arc<Conn>) {
    let (mut read, write) = channel.split();
    let mut early = VecDeque::new();
    let mut early_bytes = 0;
    tokio::pin!(start);
    let start = loop {
        tokio::select! {
            s = &mut start => match s {
                Ok(s) => break s,
                Err(_) => return,
            },
            msg = read.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    early_bytes += data.len();
                    if early_bytes > MAX_EARLY_BYTES {
                        let _ = write.close().await;
                        return;
                    }
                    early.push_back(data);
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
                Some(_) => {}
            },
            _ = conn.kick.cancelled() => return,
        }
    };
    let write_half = ChannelOutbound(write, conn.kick.clone());
    let inbound = ChannelInbound { early, read };
    let kick = conn.kick.clone();
    let Start {
        file,
        activity,
        on_write_closed,
    } = start;
    let summary = sftp::serve(
        file,
        activity,
        Some(on_write_closed),
        inbound,
        write_half,
        async move { kick.cancelled().await },
    )
    .await;
    tracing::debug!(
        requests = summary.requests,
        bytes_written = summary.bytes_written,
        "sftp session ended"
    );
}
