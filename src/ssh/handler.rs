//! The russh handler of one connection. Every callback decides explicitly: public-key
//! logins of a request's listed keys are accepted, one session channel with the `sftp`
//! subsystem is allowed, and everything else is refused with an answer (russh's defaults
//! leave several requests unanswered, which hangs clients).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use russh::keys::ssh_key::Certificate;
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::channel::{self, Start};
use super::connection::Conn;
use crate::gateway::{Gateway, Grant, LiveGuard};
use crate::keys::fingerprint;
use crate::metrics::Metrics;
use crate::ratelog::{LogBudget, Verdict};

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

fn reject() -> Auth {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    Auth::Reject {
        proceed_with_methods: Some(methods),
        partial_success: false,
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

    fn refuse_method(&self, user: &str, method: &str) -> Auth {
        self.conn.auth_attempted.store(true, Ordering::Release);
        Metrics::inc(&self.gateway.metrics.auth_failure_total);
        self.span.in_scope(|| tracing::info!(target: "audit", event = "auth-refused", session = self.session, peer = %self.peer, user, method, "only public keys are accepted"));
        reject()
    }

    /// Refused channels and requests cost a client nothing to repeat: a few are logged per
    /// window, the rest counted into the next line (or the last, when the client goes).
    fn refuse_channel(&mut self, kind: &str) {
        if let Verdict::Log { suppressed } = self.refusals.check() {
            self.span.in_scope(|| tracing::info!(target: "audit", event = "channel-refused", session = self.session, peer = %self.peer, kind, suppressed, "refused"));
        }
    }

    fn refuse_request(
        &mut self,
        kind: &str,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        if let Verdict::Log { suppressed } = self.refusals.check() {
            self.span.in_scope(|| tracing::info!(target: "audit", event = "request-refused", session = self.session, peer = %self.peer, kind, suppressed, "refused"));
        }
        session.channel_failure(channel)
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
        self.conn.auth_attempted.store(true, Ordering::Release);
        self.offered = self
            .gateway
            .authorize(user, offer.public_key, Some(self.peer.ip()), None)
            .await;
        if self.offered.is_some() {
            return Ok(Auth::Accept);
        }
        Metrics::inc(&self.gateway.metrics.auth_failure_total);
        self.span.in_scope(|| {
            tracing::info!(
                target: "audit",
                event = "auth-refused",
                session = self.session,
                peer = %self.peer,
                user,
                key = %fingerprint(offer.public_key),
                "key not accepted for this user"
            )
        });
        Ok(reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let offered = self.offered.take();
        let Some(grant) = self
            .gateway
            .authorize(user, key.public_key, Some(self.peer.ip()), offered.as_ref())
            .await
        else {
            return Ok(reject());
        };
        let grant = Arc::new(grant);
        let Some(live) = self
            .gateway
            .register(
                self.session,
                grant.clone(),
                self.peer,
                self.conn.close.clone(),
            )
            .await
        else {
            self.span.in_scope(|| {
                tracing::warn!(
                    target: "audit",
                    event = "login-refused",
                    session = self.session,
                    peer = %self.peer,
                    user,
                    request = grant.request_id,
                    key = %fingerprint(key.public_key),
                    "the request has as many live sessions as it may"
                )
            });
            return Ok(reject());
        };
        self.span.in_scope(|| {
            tracing::info!(
                target: "audit",
                event = "login",
                session = self.session,
                peer = %self.peer,
                user,
                request = grant.request_id,
                access = ?grant.access,
                key = %fingerprint(key.public_key),
                "accepted"
            )
        });
        self._live = Some(live);
        self.conn.source.logged_in();
        self.grant = Some(grant);
        self.conn.authenticated.store(true, Ordering::Release);
        Metrics::inc(&self.gateway.metrics.auth_success_total);
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // One session channel per connection: SFTP needs no more, and a cap keeps a client
        // from multiplying per-channel buffers.
        if self.grant.is_none() || self.channel_opened {
            self.refuse_channel("second session");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
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

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
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
        self.refuse_channel("x11");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
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
        self.refuse_channel("direct-tcpip");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
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
        self.refuse_channel("forwarded-tcpip");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("direct-streamlocal");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
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
