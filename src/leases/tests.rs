use std::time::Instant;

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
