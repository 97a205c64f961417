//! The russh handler of one connection. Every callback decides explicitly: public-key
//! logins of a request's listed keys are accepted (`login`), one session channel with the
//! `sftp` subsystem is allowed (`sftp`), and everything else is refused with an answer
//! (`refuse`; russh's defaults leave several requests unanswered, which hangs clients).
//! This file holds the handler's state and the callbacks, each a line or two.

mod login;
mod refuse;
mod sftp;

use std::net::SocketAddr;
use std::sync::Arc;

use russh::keys::ssh_key::Certificate;
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, Pty};
use tokio::sync::oneshot;

use super::channel::Start;
use super::connection::Conn;
use crate::gateway::{Gateway, Grant, LiveGuard};
use crate::ratelog::LogBudget;
use refuse::reject;

pub struct SshHandler {
    gateway: Arc<Gateway>,
    conn: Arc<Conn>,
    peer: SocketAddr,
    session: u64,
    grant: Option<Arc<Grant>>,
    /// The grant of the key last offered without a signature: the signed login with that
    /// key is decided on the same read of the record (see [`Gateway::authorize`]).
    offered: Option<Grant>,
    _live: Option<LiveGuard>,
    /// The one session channel, until its subsystem starts.
    pending: Option<(ChannelId, oneshot::Sender<Start>)>,
    channel_opened: bool,
    refusals: LogBudget,
    /// The connection's span: russh runs these callbacks in a task of its own, outside
    /// it, so audit lines enter it to carry the node, client and balancer.
    span: tracing::Span,
}

impl Drop for SshHandler {
    fn drop(&mut self) {
        let suppressed = self.refusals.pending();
        if suppressed > 0 {
            self.span.in_scope(|| tracing::info!(target: "audit", event = "refusals-suppressed", session = self.session, peer = %self.peer, suppressed, "refusals not logged one by one"));
        }
    }
}

impl SshHandler {
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        conn: Arc<Conn>,
        peer: SocketAddr,
        session: u64,
    ) -> SshHandler {
        SshHandler {
            gateway,
            conn,
            peer,
            session,
            grant: None,
            offered: None,
            _live: None,
            pending: None,
            channel_opened: false,
            refusals: LogBudget::default(),
            span: tracing::Span::current(),
        }
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        tracing::debug!(user, "auth none");
        Ok(reject())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.refuse_method(user, "password"))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse_method(user, "keyboard-interactive"))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        _cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse_method(user, "certificate"))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.key_offered(user, offer.public_key).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.login(user, key.public_key).await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.open_session(channel, reply, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start_subsystem(channel, name, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("shell", channel, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("exec", channel, session)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("pty", channel, session)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("x11", channel, session)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("env", channel, session)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_channel("agent forwarding");
        Ok(false)
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open("x11", reply).await
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open("direct-tcpip", reply).await
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open("forwarded-tcpip", reply).await
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open("direct-streamlocal", reply).await
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_channel("tcpip-forward");
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        _socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_channel("streamlocal-forward");
        Ok(false)
    }
}
