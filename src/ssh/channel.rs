//! The SFTP subsystem on one session channel: russh's channel halves adapted to the SFTP
//! layer's byte transport, and the task that owns the channel from open to close.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::connection::Conn;
use crate::sftp::{self, Activity, HangupProbe, Inbound, Outbound, SharedFile, WriteClosed};

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
    hung_up: HangupProbe,
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

    fn hangup_probe(&self) -> HangupProbe {
        self.hung_up.clone()
    }
}

/// Where replies go. Data is handed to the session whole rather than through the channel's
/// write half: the half releases 32 KiB messages only as the client's window allows, so
/// each WINDOW_ADJUST had to wake this task before data moved again; the session itself
/// keeps what does not fit the window and sends it the moment the adjustment arrives
/// (download throughput was bounded by that round trip). Memory stays bounded by the
/// session's queue (`event_buffer_size` messages) plus the one message it holds.
struct ChannelOutbound {
    session: Handle,
    id: ChannelId,
    write: ChannelWriteHalf<Msg>,
    /// The connection's close token: once the server is closing the connection (revoked,
    /// idle, shutdown) the client is told by a disconnect message instead of a clean end
    /// of the subsystem.
    ending: CancellationToken,
}

impl Outbound for ChannelOutbound {
    async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        self.session
            .data(self.id, data)
            .await
            .map_err(|_| std::io::Error::other("session closed"))
    }

    async fn finish(&mut self) {
        if self.ending.is_cancelled() {
            return;
        }
        // Clients such as scp fail a transfer whose channel ends without an exit status.
        // These travel the same queue as the data, so they follow it.
        let _ = self.write.exit_status(0).await;
        let _ = self.write.eof().await;
        let _ = self.write.close().await;
    }
}

/// Owns an accepted session channel. Until `start` arrives it keeps reading the channel so
/// that russh never blocks on it (a full channel queue stalls the whole connection), then
/// serves SFTP on it until either side ends.
pub async fn run(
    channel: Channel<Msg>,
    session: Handle,
    start: oneshot::Receiver<Start>,
    conn: Arc<Conn>,
) {
    let id = channel.id();
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
            _ = conn.close.cancelled() => return,
        }
    };
    let write_half = ChannelOutbound {
        session,
        id,
        write,
        ending: conn.close.clone(),
    };
    let inbound = ChannelInbound {
        early,
        read,
        hung_up: conn.hung_up.clone(),
    };
    let close = conn.close.clone();
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
        async move { close.cancelled().await },
    )
    .await;
    tracing::debug!(
        requests = summary.requests,
        bytes_written = summary.bytes_written,
        "sftp session ended"
    );
}
