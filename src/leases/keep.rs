//! Keeping leases: every held one renewed in one backend call per period, a lease not
//! renewed before its local deadline lost for good (and audited), and a lease released
//! once its last holder is done.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{lock, Inner, Lease};
use crate::store::Fence;

impl Inner {
    pub(super) async fn release(&self, lease: Arc<Lease>) {
        lease.done.store(true, Ordering::Relaxed);
        let _turn = self.turn(lease.request).await;
        {
            let mut held = lock(&self.held);
            if held
                .get(&lease.request)
                .is_some_and(|e| Arc::ptr_eq(&e.lease, &lease))
            {
                held.remove(&lease.request);
            }
        }
        let call = self.backend.release(lease.request, &self.node, lease.fence);
        match tokio::time::timeout(self.renew_every, call).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(request = lease.request, error = %e, "cannot release an upload's lease; it expires by itself")
            }
            Err(_) => {
                tracing::warn!(
                    request = lease.request,
                    "releasing an upload's lease timed out; it expires by itself"
                )
            }
        }
    }

    /// One renewal of every lease held and not lost, in one call; then whatever was not
    /// renewed before its local deadline is lost.
    pub(super) async fn renew_all(&self) {
        // Forget the turns nobody waits for (here, off the per-request paths).
        lock(&self.turns).retain(|_, t| Arc::strong_count(t) > 1);
        let leases: Vec<Arc<Lease>> = lock(&self.held)
            .values()
            .map(|e| e.lease.clone())
            .filter(|l| l.until.load(Ordering::Acquire) != 0)
            .collect();
        if leases.is_empty() {
            return;
        }
        let list: Vec<(u64, Fence)> = leases.iter().map(|l| (l.request, l.fence)).collect();
        let start = self.now();
        let call = self.backend.renew(&self.node, &list, self.ttl);
        match tokio::time::timeout(self.renew_every, call).await {
            Ok(Ok(answers)) => {
                let renewed: HashMap<u64, bool> = answers.into_iter().collect();
                let (until, now) = (self.deadline_from(start), self.now());
                for l in &leases {
                    if renewed.get(&l.request) != Some(&true) {
                        self.lose(l, "taken over by another node, or expired");
                    } else if !l.extend(until, now) {
                        self.lose(l, "renewed only after its local deadline");
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the upload leases"),
            Err(_) => tracing::warn!("renewing the upload leases timed out"),
        }
        let now = self.now();
        for l in &leases {
            if l.until.load(Ordering::Acquire) <= now {
                self.lose(l, "not renewed in time");
            }
        }
    }

    pub(super) fn lose(&self, lease: &Lease, reason: &str) {
        lease.until.store(0, Ordering::Release);
        if !lease.done.swap(true, Ordering::Relaxed) {
            self.losses.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "audit",
                event = "lease-lost",
                request = lease.request,
                fence = lease.fence,
                reason,
                "this node lost an upload's lease; its writes are refused"
            );
        }
    }
}

impl Lease {
    /// Moves the deadline to `until`, if it has not passed by `now`: once a check may have
    /// found the lease expired, it stays expired.
    pub(super) fn extend(&self, until: u64, now: u64) -> bool {
        self.until
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d > now).then_some(d.max(until))
            })
            .is_ok()
    }
}
