//! This node's upload leases (one writer per upload across nodes; the backend is a
//! [`LeaseStore`]): taking one for the SFTP side, waiting boundedly while another node holds
//! it, renewing all held ones on a timer in one call, and giving each up once its last
//! holder is done (after the fsync, see [`crate::sftp::WriteLeases`]).
//!
//! On this node a lease is shared by the SFTP sessions of its request, unless it was taken
//! [exclusively](Leases::acquire_exclusive) (an HTTP upload, which replaces or appends to
//! the file as one stream): then no one else on this node shares it until it is released,
//! and an exclusive taker waits, boundedly like for another node, until no one on this node
//! holds it.
//!
//! A node trusts a lease only until the start of the call that last took or renewed it,
//! plus the TTL, minus a margin: the backend counts the same TTL from a later instant (when
//! its statement ran), so a node cut off from the backend stops acknowledging writes at
//! least the margin before another node can take the lease. That deadline is an atomic
//! next to the boot-time clock (monotonic, and counting time suspended, which the backend's
//! clock counts too), so checking it per WRITE costs a load and a clock read through the
//! vDSO (a timer that flipped a flag would flip it late exactly when the runtime is
//! overloaded).
//! A lost lease stays lost even if a later renewal gets through: writes were refused
//! meanwhile, and taking later ones would leave holes in the upload; the client resumes
//! through a new connection, which takes a new lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rustix::time::{clock_gettime, ClockId};
use tokio::sync::OwnedMutexGuard;

use crate::metrics::LeaseStats;
use crate::sftp::{LeaseHold, WriteLeases};
use crate::store::{Fence, LeaseStore};

/// How often a lease held elsewhere is asked for again (less for short waits).
const POLL: Duration = Duration::from_millis(500);

/// Told to a client whose write open waited out another node's lease.
pub const HELD_ELSEWHERE: &str = "this upload is being written through another gateway node; \
     try again once that transfer has ended";
/// Told to a client whose write waited out another writer of the upload on this node: an
/// HTTP upload beside SFTP write handles, or the reverse.
pub const IN_USE: &str = "this upload is being written by another transfer (an HTTP upload or \
     an SFTP session) through this gateway node; try again once that transfer has ended";
/// Told to a client when the lease store did not answer.
pub const UNAVAILABLE: &str =
    "the upload's lease could not be taken (the lease store is unavailable); try again later";

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// How long a lease lasts in the backend without renewal: a dead node's uploads are
    /// free again within it.
    pub ttl: Duration,
    /// How long a session waits for another node's lease before it goes on (at its start)
    /// or is refused (opening for write).
    pub wait: Duration,
    /// The node's name (`--node-name`): the start of its name in the lease store.
    pub node: String,
}

/// This node's leases. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct Leases(Arc<Inner>);

struct Inner {
    backend: Arc<dyn LeaseStore>,
    /// This process's name in the backend: new at every start, so that a restarted node
    /// never mistakes its predecessor's leases for its own.
    node: String,
    ttl: Duration,
    wait: Duration,
    poll: Duration,
    /// Renewal period, and the bound on every backend call.
    renew_every: Duration,
    /// How long a lease is trusted after the start of the call that took or renewed it.
    valid_for: Duration,
    /// The boot-time clock at start, in nanoseconds: deadlines count from it.
    epoch: u64,
    runtime: tokio::runtime::Handle,
    held: Mutex<HashMap<u64, Entry>>,
    /// One acquisition or release of a request's lease at a time on this node, so that two
    /// never race each other's fences.
    turns: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    waits: AtomicU64,
    refusals: AtomicU64,
    losses: AtomicU64,
}

struct Entry {
    lease: Arc<Lease>,
    hold: Weak<Hold>,
    /// Taken by [`Leases::acquire_exclusive`]: shared with no one.
    exclusive: bool,
}

struct Lease {
    request: u64,
    fence: Fence,
    /// Nanoseconds since `epoch` before which writes may be acknowledged; 0: lost for good.
    until: AtomicU64,
    /// Its loss was reported, or it was released (a release is not a loss).
    done: AtomicBool,
}

/// A held lease, shared by this node's sessions of the request; the last one dropped
/// releases it.
pub struct Hold {
    lease: Arc<Lease>,
    inner: Arc<Inner>,
}

impl LeaseHold for Hold {
    fn valid(&self) -> bool {
        self.inner.now() < self.lease.until.load(Ordering::Acquire)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // Spawned: the last holder may be any thread, and a release is a round trip. A
        // runtime that is gone already takes the task with it; the lease then expires.
        let (inner, lease) = (self.inner.clone(), self.lease.clone());
        let runtime = inner.runtime.clone();
        runtime.spawn(async move { inner.release(lease).await });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// CLOCK_BOOTTIME in nanoseconds. Not `Instant`, whose clock stops while the machine is
/// suspended: a node that wakes up must not trust a lease the backend let expire meanwhile.
fn boot_time() -> u64 {
    let t = clock_gettime(ClockId::Boottime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// `node` with this process's id and a random part: a node restarted under the same name
/// does not take its earlier self's leases for its own.
fn node_name(node: &str) -> String {
    format!(
        "{node}/{}/{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

impl Leases {
    /// Starts the keeper and its renewal timer on the current runtime (which it needs).
    pub fn start(backend: Arc<dyn LeaseStore>, settings: LeaseSettings) -> Leases {
        let ttl = settings.ttl.max(Duration::from_millis(50));
        // Five renewals per TTL: three attempts fit before the local deadline, so one
        // slow or failed call costs nothing.
        let renew_every = ttl / 5;
        let inner = Arc::new(Inner {
            backend,
            node: node_name(&settings.node),
            ttl,
            wait: settings.wait,
            poll: (settings.wait / 4).clamp(Duration::from_millis(10), POLL),
            renew_every,
            valid_for: ttl - renew_every,
            epoch: boot_time(),
            runtime: tokio::runtime::Handle::current(),
            held: Mutex::default(),
            turns: Mutex::default(),
            waits: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            losses: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        // Not stopped by shutdown: sessions still write and sync what they received while
        // the gateway stops, under leases that must stay valid. It ends with the keeper.
        inner.runtime.spawn(async move {
            let mut tick = tokio::time::interval(renew_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.renew_all().await;
            }
        });
        Leases(inner)
    }

    /// This node's name in the lease store.
    pub fn node(&self) -> &str {
        &self.0.node
    }

    /// The leases of one request's upload, for its SFTP sessions.
    pub fn for_request(&self, request: u64) -> Arc<dyn WriteLeases> {
        Arc::new(RequestLeases {
            leases: self.clone(),
            request,
        })
    }

    /// This node's hold on the lease of `request`: the one it has, or a new one, waiting
    /// (if `wait`) at most the configured bound while another node holds it (or an
    /// exclusive holder on this node). `Err`: why not, for the client.
    pub async fn acquire(&self, request: u64, wait: bool) -> Result<Arc<Hold>, &'static str> {
        self.0.acquire(request, wait, false).await
    }

    /// A hold on the lease of `request` that this node shares with no one until it is
    /// dropped, for a writer that must be alone (an HTTP upload). Waits at most the
    /// configured bound while anyone else holds it, here or on another node.
    pub async fn acquire_exclusive(&self, request: u64) -> Result<Arc<Hold>, &'static str> {
        self.0.acquire(request, true, true).await
    }

    /// Waits, at most the configured bound, while another node holds the lease of
    /// `request`; `false` if it still did then.
    pub async fn wait_until_free(&self, request: u64) -> bool {
        self.0.wait_until_free(request).await
    }

    pub fn stats(&self) -> LeaseStats {
        let held = lock(&self.0.held).len() as u64;
        LeaseStats {
            held,
            waits: self.0.waits.load(Ordering::Relaxed),
            refusals: self.0.refusals.load(Ordering::Relaxed),
            losses: self.0.losses.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    /// Nanoseconds since the keeper started; never 0 once a lease was taken.
    fn now(&self) -> u64 {
        boot_time().saturating_sub(self.epoch)
    }

    fn deadline_from(&self, start: u64) -> u64 {
        start.saturating_add(self.valid_for.as_nanos() as u64)
    }

    async fn turn(&self, request: u64) -> OwnedMutexGuard<()> {
        let turn = lock(&self.turns).entry(request).or_default().clone();
        turn.lock_owned().await
    }

    /// The valid hold this node has on the lease, if any, and whether it is exclusive.
    fn local(&self, request: u64) -> Option<(Arc<Hold>, bool)> {
        let held = lock(&self.held);
        let entry = held.get(&request)?;
        let hold = entry.hold.upgrade().filter(|h| h.valid())?;
        Some((hold, entry.exclusive))
    }

    /// The valid hold this node has on the lease and shares, if any.
    fn shared(&self, request: u64) -> Option<Arc<Hold>> {
        self.local(request)
            .and_then(|(hold, exclusive)| (!exclusive).then_some(hold))
    }

    async fn acquire(
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
    async fn try_acquire(
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
    async fn retry<T, E, F: std::future::Future<Output = Result<T, E>>>(
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

    fn refuse(&self, request: u64, why: &'static str) -> &'static str {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "audit", event = "lease-refused", request, reason = why, "write open refused");
        why
    }

    fn insert(
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

    async fn wait_until_free(&self, request: u64) -> bool {
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
    async fn is_free(&self, request: u64) -> Result<(), ()> {
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

    async fn release(&self, lease: Arc<Lease>) {
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
    async fn renew_all(&self) {
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

    fn lose(&self, lease: &Lease, reason: &str) {
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
    fn extend(&self, until: u64, now: u64) -> bool {
        self.until
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d > now).then_some(d.max(until))
            })
            .is_ok()
    }
}

/// [`WriteLeases`] of one request, for its sessions' request loops (blocking threads).
struct RequestLeases {
    leases: Leases,
    request: u64,
}

impl std::fmt::Debug for RequestLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "leases of request {}", self.request)
    }
}

impl WriteLeases for RequestLeases {
    fn wait_until_free(&self) -> bool {
        let runtime = &self.leases.0.runtime;
        runtime.block_on(self.leases.wait_until_free(self.request))
    }

    fn acquire(&self, wait: bool) -> Result<Arc<dyn LeaseHold>, String> {
        let runtime = &self.leases.0.runtime;
        match runtime.block_on(self.leases.acquire(self.request, wait)) {
            Ok(hold) => Ok(hold),
            Err(why) => Err(why.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LeaseError, MemoryLeases};

    /// The embedded backend behind a switch that cuts this node off from it, as a network
    /// partition would: "other" nodes use the backend directly.
    struct CutOff {
        backend: Arc<MemoryLeases>,
        down: AtomicBool,
    }

    impl CutOff {
        fn check(&self) -> Result<(), LeaseError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(LeaseError::Unavailable("cut off".into()));
            }
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl LeaseStore for CutOff {
        async fn acquire(
            &self,
            request: u64,
            node: &str,
            ttl: Duration,
        ) -> Result<Option<Fence>, LeaseError> {
            self.check()?;
            self.backend.acquire(request, node, ttl).await
        }
        async fn renew(
            &self,
            node: &str,
            leases: &[(u64, Fence)],
            ttl: Duration,
        ) -> Result<Vec<(u64, bool)>, LeaseError> {
            self.check()?;
            self.backend.renew(node, leases, ttl).await
        }
        async fn release(&self, request: u64, node: &str, fence: Fence) -> Result<(), LeaseError> {
            self.check()?;
            self.backend.release(request, node, fence).await
        }
        async fn held_elsewhere(&self, request: u64, node: &str) -> Result<bool, LeaseError> {
            self.check()?;
            self.backend.held_elsewhere(request, node).await
        }
    }

    fn keeper(ttl_ms: u64, wait_ms: u64) -> (Leases, Arc<CutOff>) {
        let cut = Arc::new(CutOff {
            backend: Arc::default(),
            down: AtomicBool::new(false),
        });
        let settings = LeaseSettings {
            node: "test".into(),
            ttl: Duration::from_millis(ttl_ms),
            wait: Duration::from_millis(wait_ms),
        };
        (Leases::start(cut.clone(), settings), cut)
    }

    const LONG: Duration = Duration::from_secs(60);

    /// A node cut off from the backend stops acknowledging writes before another node can
    /// take the lease, and does not start again when the backend comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_cut_off_lets_go_before_another_can_take_over() {
        let (leases, cut) = keeper(400, 0);
        let hold = leases.acquire(1, false).await.expect("free");
        // Renewed on the timer: valid well past its TTL.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(hold.valid());
        assert_eq!(leases.stats().losses, 0);

        cut.down.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let (mut invalid_at, mut taken_at) = (None, None);
        while taken_at.is_none() && started.elapsed() < Duration::from_secs(5) {
            if invalid_at.is_none() && !hold.valid() {
                invalid_at = Some(started.elapsed());
            }
            if cut
                .backend
                .acquire(1, "other", LONG)
                .await
                .unwrap()
                .is_some()
            {
                taken_at = Some(started.elapsed());
                assert!(!hold.valid(), "another node took a lease still valid here");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let invalid_at = invalid_at.expect("never invalid");
        assert!(taken_at.is_some(), "never taken");
        // Within the TTL less its margin of the last renewal, which came before the cut.
        assert!(invalid_at <= Duration::from_secs(1), "{invalid_at:?}");
        // The renewal timer notices and reports it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(leases.stats().losses, 1);

        cut.down.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!hold.valid(), "a lost lease came back");
        // A new acquisition waits for the other node like anyone.
        assert_eq!(leases.acquire(1, false).await.err(), Some(HELD_ELSEWHERE));
        assert_eq!(leases.stats().losses, 1);
    }

    /// A renewal that comes back after the local deadline passed does not revive it.
    #[test]
    fn a_deadline_once_passed_is_not_extended() {
        let lease = Lease {
            request: 1,
            fence: 1,
            until: AtomicU64::new(100),
            done: AtomicBool::new(false),
        };
        assert!(lease.extend(500, 50));
        assert_eq!(lease.until.load(Ordering::Relaxed), 500);
        // An older renewal's deadline never moves it back.
        assert!(lease.extend(300, 60));
        assert_eq!(lease.until.load(Ordering::Relaxed), 500);
        assert!(!lease.extend(900, 500));
        assert_eq!(lease.until.load(Ordering::Relaxed), 500);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_held_elsewhere_is_waited_for_then_refused() {
        let (leases, cut) = keeper(15_000, 400);
        let other = cut
            .backend
            .acquire(3, "other", LONG)
            .await
            .unwrap()
            .expect("free");
        let started = Instant::now();
        assert_eq!(leases.acquire(3, false).await.err(), Some(HELD_ELSEWHERE));
        assert!(started.elapsed() < Duration::from_millis(200));
        assert_eq!(leases.acquire(3, true).await.err(), Some(HELD_ELSEWHERE));
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(!leases.wait_until_free(3).await);
        let s = leases.stats();
        assert_eq!((s.held, s.waits, s.refusals), (0, 2, 2));

        // Released while a session waits: it gets the lease.
        let backend = cut.backend.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            backend.release(3, "other", other).await.unwrap();
        });
        let hold = leases.acquire(3, true).await.expect("released");
        assert!(hold.valid());
        assert!(cut.backend.held_elsewhere(3, "other").await.unwrap());

        cut.down.store(true, Ordering::Relaxed);
        assert_eq!(leases.acquire(4, false).await.err(), Some(UNAVAILABLE));
    }

    /// An exclusive hold (an HTTP upload) waits out this node's shared holds (SFTP write
    /// handles) and keeps new ones out, boundedly both ways; another node is kept out
    /// like by any lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exclusive_hold_is_alone_on_this_node() {
        let (leases, cut) = keeper(15_000, 300);
        let shared = leases.acquire(6, false).await.expect("free");
        let started = Instant::now();
        assert_eq!(leases.acquire_exclusive(6).await.err(), Some(IN_USE));
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Let go while the exclusive taker waits: it gets the lease.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(shared);
        });
        let alone = leases.acquire_exclusive(6).await.expect("released");
        assert!(alone.valid());
        assert!(cut.backend.held_elsewhere(6, "other").await.unwrap());
        let started = Instant::now();
        assert_eq!(leases.acquire(6, true).await.err(), Some(IN_USE));
        assert_eq!(leases.acquire_exclusive(6).await.err(), Some(IN_USE));
        assert!(!leases.wait_until_free(6).await);
        assert!(started.elapsed() >= Duration::from_millis(600));
        // A session starting while it ends waits for it, then shares the next lease.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(alone);
        });
        assert!(leases.wait_until_free(6).await);
        let a = leases.acquire(6, false).await.expect("free again");
        let b = leases.acquire(6, false).await.expect("shared");
        assert!(Arc::ptr_eq(&a.lease, &b.lease));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_are_shared_and_the_last_one_releases() {
        let (leases, cut) = keeper(15_000, 0);
        assert!(leases.wait_until_free(5).await);
        let a = leases.acquire(5, false).await.expect("free");
        let b = leases.acquire(5, true).await.expect("shared");
        assert!(Arc::ptr_eq(&a.lease, &b.lease));
        assert_eq!(leases.stats().held, 1);
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(cut.backend.held_elsewhere(5, "other").await.unwrap());
        assert!(b.valid());
        drop(b);
        let started = Instant::now();
        while cut.backend.held_elsewhere(5, "other").await.unwrap() {
            assert!(started.elapsed() < Duration::from_secs(2), "never released");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(leases.stats().held, 0);
        // A release is not a loss.
        assert_eq!(leases.stats().losses, 0);
    }
}
