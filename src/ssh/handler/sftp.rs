//! The handler's one session channel: opened once a login has a grant, and its `sftp`
//! subsystem started by handing the channel task what it serves (the request's file, its
//! activity, and what to do when a write handle closes).

use russh::server::{ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::SshHandler;
use crate::ssh::channel::{self, Start};

impl SshHandler {
    /// A session channel opened: the first after a login runs the channel task.
    pub(super) async fn open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        // One session channel per connection: SFTP needs no more, and a cap keeps a client
        // from multiplying per-channel buffers.
        if self.grant.is_none() || self.channel_opened {
            return self.refuse_open("second session", reply).await;
        }
        self.channel_opened = true;
        let (tx, rx) = oneshot::channel();
        self.pending = Some((channel.id(), tx));
        let span = tracing::info_span!(parent: &self.span, "sftp", session = self.session, peer = %self.peer, request = self.grant.as_ref().map(|g| g.request_id));
        let task = tokio::spawn(
            channel::run(channel, session.handle(), rx, self.conn.clone()).instrument(span),
        );
        if let Ok(mut slot) = self.conn.sftp.lock() {
            *slot = Some(task);
        }
        reply.accept().await;
        Ok(())
    }

    /// The subsystem `name` asked for on `channel`: `sftp` on the session channel starts.
    pub(super) fn start_subsystem(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let ours = matches!(&self.pending, Some((id, _)) if *id == channel);
        if name != "sftp" || !ours {
            return self.refuse_request(&format!("subsystem {name}"), channel, session);
        }
        let (Some(grant), Some((_, tx))) = (self.grant.as_ref(), self.pending.take()) else {
            return session.channel_failure(channel);
        };
        // A grant that a change has ended since the login (its session is being closed)
        // serves nothing more.
        if self.conn.close.is_cancelled() {
            return session.channel_failure(channel);
        }
        let file = self.gateway.shared_file(grant);
        let activity = self.gateway.activity(grant.request_id);
        let on_write_closed = self.gateway.on_write_closed(grant, self.peer);
        if tx
            .send(Start {
                file,
                activity,
                on_write_closed,
            })
            .is_err()
        {
            return session.channel_failure(channel);
        }
        session.channel_success(channel)
    }
}
