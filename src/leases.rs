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
//!
//! Beside this file in `leases/`: `acquire.rs`, taking a lease and waiting for one;
//! `keep.rs`, renewing, losing and releasing them; `tests.rs`, the unit tests.

mod acquire;
mod keep;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

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
