//! Taking a lease: this node's hold if it has one, else the backend's, retried every
//! poll period up to the configured wait while another node (or an exclusive holder on
//! this node) has it; and waiting, as boundedly, until an upload is free for a session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Entry, Hold, Inner, Lease, HELD_ELSEWHERE, IN_USE, UNAVAILABLE};
use crate::store::Fence;

impl Inner {
    pub(super) async fn acquire(
        self: &Arc<Self>,
        request: u64,
        wait: bool,
        exclusive: bool,
    ) -> Result<Arc<Hold>, &'static str> {
        let deadline = Instant::now() + if wait { self.wait } else { Duration::ZERO };
        // Polled before its deadline is looked at: a free turn is taken even without wait.
        let Ok(_turn) = tokio::time::timeout_at(deadline.into(), self.turn(request)).await else {
            return Err(self.refuse(request, HELD_ELSEWHERE));
        };
        let waiting = "waiting for another node to release the upload's lease";
        let attempt = || self.try_acquire(request, exclusive);
        self.retry(request, deadline, waiting, attempt)
            .await
            .map_err(|why| self.refuse(request, why))
    }

    /// One attempt at the lease, under this request's turn.
    pub(super) async fn try_acquire(
        self: &Arc<Self>,
        request: u64,
        exclusive: bool,
    ) -> Result<Arc<Hold>, &'static str> {
        match self.local(request) {
            Some((hold, false)) if !exclusive => return Ok(hold),
            // Someone here holds it and must be alone, or this taker must.
            Some(_) => return Err(IN_USE),
            None => {}
        }
        let start = self.now();
        let call = self.backend.acquire(request, &self.node, self.ttl);
        match tokio::time::timeout(self.renew_every, call).await {
            Ok(Ok(Some(fence))) => Ok(self.insert(request, fence, start, exclusive)),
            Ok(Ok(None)) => Err(HELD_ELSEWHERE),
            Ok(Err(e)) => {
                tracing::warn!(request, error = %e, "cannot take an upload's lease");
                Err(UNAVAILABLE)
            }
            Err(_) => {
                tracing::warn!(request, "taking an upload's lease timed out");
                Err(UNAVAILABLE)
            }
        }
    }

    /// Runs `attempt` until it succeeds, every poll period, while another fits before
    /// `deadline`; a wait is counted and logged once. The last failure if none succeeded.
    pub(super) async fn retry<T, E, F: std::future::Future<Output = Result<T, E>>>(
        &self,
        request: u64,
        deadline: Instant,
        waiting: &str,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T, E> {
        let mut waited = false;
        loop {
            let failure = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if Instant::now() + self.poll > deadline {
                return Err(failure);
            }
            if !std::mem::replace(&mut waited, true) {
                self.waits.fetch_add(1, Ordering::Relaxed);
                tracing::info!(request, "{waiting}");
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    pub(super) fn refuse(&self, request: u64, why: &'static str) -> &'static str {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "audit", event = "lease-refused", request, reason = why, "write open refused");
        why
    }

    pub(super) fn insert(
        self: &Arc<Self>,
        request: u64,
        fence: Fence,
        start: u64,
        exclusive: bool,
    ) -> Arc<Hold> {
        let lease = Arc::new(Lease {
            request,
            fence,
            until: AtomicU64::new(self.deadline_from(start)),
            done: AtomicBool::new(false),
        });
        let hold = Arc::new(Hold {
            lease: lease.clone(),
            inner: self.clone(),
        });
        let entry = Entry {
            lease,
            hold: Arc::downgrade(&hold),
            exclusive,
        };
        // Replaces a lost lease, or one whose last hold is on its way out: their releases
        // name their own fence, which the backend no longer has.
        lock(&self.held).insert(request, entry);
        hold
    }

    pub(super) async fn wait_until_free(&self, request: u64) -> bool {
        if self.shared(request).is_some() {
            // This node writes it: its own sessions wait for each other (sftp::Activity).
            return true;
        }
        let deadline = Instant::now() + self.wait;
        let waiting = "waiting for another node or transfer to finish writing the upload";
        self.retry(request, deadline, waiting, || self.is_free(request))
            .await
            .is_ok()
    }

    /// Free for this node's sessions: shared here, or no exclusive holder here and no
    /// other node.
    pub(super) async fn is_free(&self, request: u64) -> Result<(), ()> {
        match self.local(request) {
            Some((_, false)) => return Ok(()),
            Some((_, true)) => return Err(()),
            None => {}
        }
        let call = self.backend.held_elsewhere(request, &self.node);
        match tokio::time::timeout(self.renew_every, call).await {
            Ok(Ok(false)) => return Ok(()),
            Ok(Ok(true)) => {}
            Ok(Err(e)) => tracing::warn!(request, error = %e, "cannot look up an upload's lease"),
            Err(_) => tracing::warn!(request, "looking up an upload's lease timed out"),
        }
        Err(())
    }
}
