//! How the handler refuses: a login answered with "public keys only", and channels and
//! requests answered and logged a few per window (the rest counted into the next line, or
//! the last when the client goes).

use russh::server::{Auth, ChannelOpenHandle, Session};
use russh::{ChannelId, ChannelOpenFailure, MethodKind, MethodSet};

use super::SshHandler;
use crate::ratelog::Verdict;

/// A refused login: the client may go on with a public key.
pub(super) fn reject() -> Auth {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    Auth::Reject {
        proceed_with_methods: Some(methods),
        partial_success: false,
    }
}

impl SshHandler {
    /// Refused channels and requests cost a client nothing to repeat: a few are logged per
    /// window, the rest counted into the next line (or the last, when the client goes).
    pub(super) fn refuse_channel(&mut self, kind: &str) {
        if let Verdict::Log { suppressed } = self.refusals.check() {
            self.span.in_scope(|| tracing::info!(target: "audit", event = "channel-refused", session = self.session, peer = %self.peer, kind, suppressed, "refused"));
        }
    }

    pub(super) fn refuse_request(
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
    /// A channel the client may not open: refused with an answer, and logged as above.
    pub(super) async fn refuse_open(
        &mut self,
        kind: &str,
        reply: ChannelOpenHandle,
    ) -> Result<(), russh::Error> {
        self.refuse_channel(kind);
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}
