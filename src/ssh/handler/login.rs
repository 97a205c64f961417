//! The handler's logins: a key offered without a signature is looked up (and the grant
//! kept for the signed attempt that follows), a signed key is authorized and registered as
//! a live session of its request, and every refusal is counted and written to the audit
//! log.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use russh::keys::ssh_key::PublicKey;
use russh::server::Auth;

use super::refuse::reject;
use super::SshHandler;
use crate::keys::fingerprint;
use crate::metrics::Metrics;

impl SshHandler {
    /// A login by `method`, which is never accepted.
    pub(super) fn refuse_method(&self, user: &str, method: &str) -> Auth {
        self.conn.auth_attempted.store(true, Ordering::Release);
        Metrics::inc(&self.gateway.metrics.auth_failure_total);
        self.span.in_scope(|| tracing::info!(target: "audit", event = "auth-refused", session = self.session, peer = %self.peer, user, method, "only public keys are accepted"));
        reject()
    }

    /// `key` offered for `user` without a signature.
    pub(super) async fn key_offered(&mut self, user: &str, key: &PublicKey) -> Auth {
        self.conn.auth_attempted.store(true, Ordering::Release);
        self.offered = self
            .gateway
            .authorize(user, key, Some(self.peer.ip()), None)
            .await;
        if self.offered.is_some() {
            return Auth::Accept;
        }
        Metrics::inc(&self.gateway.metrics.auth_failure_total);
        self.span.in_scope(|| {
            tracing::info!(
                target: "audit",
                event = "auth-refused",
                session = self.session,
                peer = %self.peer,
                user,
                key = %fingerprint(key),
                "key not accepted for this user"
            )
        });
        reject()
    }

    /// `key`, its signature verified, logging in as `user`.
    pub(super) async fn login(&mut self, user: &str, key: &PublicKey) -> Auth {
        let offered = self.offered.take();
        let Some(grant) = self
            .gateway
            .authorize(user, key, Some(self.peer.ip()), offered.as_ref())
            .await
        else {
            return reject();
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
                    key = %fingerprint(key),
                    "the request has as many live sessions as it may"
                )
            });
            return reject();
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
                key = %fingerprint(key),
                "accepted"
            )
        });
        self._live = Some(live);
        self.conn.source.logged_in();
        self.grant = Some(grant);
        self.conn.authenticated.store(true, Ordering::Release);
        Metrics::inc(&self.gateway.metrics.auth_success_total);
        Auth::Accept
    }
}
