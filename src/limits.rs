//! The one bounded failure counter, used by the SSH penalties (ssh/penalty.rs), the
//! customers' key throttle (admin/access.rs) and the status page's login throttle
//! (admin/login_throttle.rs): it counts failures per key (an address, a request and an address...) within a window and
//! blocks a key that reaches the limit for a while. Both memory and time per call are
//! bounded whatever a client sends: at most `capacity` keys are tracked (the oldest is
//! forgotten first), and each call does amortized O(1) work (no scan of the whole map).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct FailurePolicy {
    /// Failures within `window` that block the key; 0 disables blocking (nothing is kept).
    pub max_failures: u32,
    /// Failures older than this (counted from the first) are forgotten.
    pub window: Duration,
    /// How long a key that reached the limit stays blocked.
    pub block: Duration,
    /// Keys tracked at most.
    pub capacity: usize,
}

struct Entry {
    failures: u32,
    since: Instant,
    blocked_until: Option<Instant>,
    /// Which item of `order` stands for this entry (older items of the key are stale).
    stamp: u64,
}

impl Entry {
    /// Neither counting nor blocking any more: it can go.
    fn dead(&self, policy: &FailurePolicy, now: Instant) -> bool {
        now.duration_since(self.since) > policy.window
            && self.blocked_until.is_none_or(|t| now >= t)
    }
}

struct Inner<K> {
    map: HashMap<K, Entry>,
    /// Keys in the order their entries were (re)started: the front is the oldest, so expiry
    /// and eviction look only at the front.
    order: VecDeque<(K, u64)>,
    next_stamp: u64,
}

pub struct FailureCounter<K> {
    policy: FailurePolicy,
    inner: Mutex<Inner<K>>,
}

impl<K: Hash + Eq + Clone> FailureCounter<K> {
    pub fn new(policy: FailurePolicy) -> FailureCounter<K> {
        FailureCounter {
            policy,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                next_stamp: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` is blocked right now.
    pub fn blocked(&self, key: &K) -> bool {
        self.blocked_for(key, Instant::now()).is_some()
    }

    /// How much longer `key` stays blocked at `now`, if it is.
    pub fn blocked_for(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.lock().map.get(key).and_then(|e| e.blocked_until)?;
        (now < until).then(|| until - now)
    }

    /// Records a failure of `key`. Returns true when this failure starts a block.
    pub fn failed(&self, key: K) -> bool {
        self.failed_at(key, Instant::now())
    }

    /// [`failed`](Self::failed) at `now` (callers that read the clock once, and tests).
    pub fn failed_at(&self, key: K, now: Instant) -> bool {
        if self.policy.max_failures == 0 || self.policy.capacity == 0 {
            return false;
        }
        let policy = self.policy;
        let mut inner = self.lock();
        inner.expire(&policy, now);
        let restart = match inner.map.get(&key) {
            None => {
                if inner.map.len() >= policy.capacity {
                    inner.evict_oldest();
                }
                true
            }
            Some(e) => {
                now.duration_since(e.since) > policy.window
                    || e.blocked_until.is_some_and(|t| now >= t)
            }
        };
        if restart {
            let stamp = inner.next_stamp;
            inner.next_stamp += 1;
            inner.order.push_back((key.clone(), stamp));
            inner.map.insert(
                key.clone(),
                Entry {
                    failures: 0,
                    since: now,
                    blocked_until: None,
                    stamp,
                },
            );
            inner.compact(policy.capacity);
        }
        let Some(e) = inner.map.get_mut(&key) else {
            return false;
        };
        e.failures = e.failures.saturating_add(1);
        if e.failures >= policy.max_failures && e.blocked_until.is_none() {
            e.blocked_until = Some(now + policy.block);
            return true;
        }
        false
    }

    /// Forgets `key`'s failures (a success).
    pub fn clear(&self, key: &K) {
        // Its item in `order` becomes stale and is dropped when it reaches the front.
        self.lock().map.remove(key);
    }

    /// Keys tracked right now.
    pub fn tracked(&self) -> usize {
        self.lock().map.len()
    }
}

impl<K: Hash + Eq + Clone> Inner<K> {
    /// Whether the front item of `order` no longer stands for a live entry.
    fn front_is_stale(&self) -> bool {
        self.order
            .front()
            .is_some_and(|(k, stamp)| self.map.get(k).is_none_or(|e| e.stamp != *stamp))
    }

    /// Drops expired entries at the front; stops at the first live one.
    fn expire(&mut self, policy: &FailurePolicy, now: Instant) {
        while let Some((k, stamp)) = self.order.front() {
            match self.map.get(k) {
                Some(e) if e.stamp == *stamp => {
                    if !e.dead(policy, now) {
                        return;
                    }
                    let k = k.clone();
                    self.map.remove(&k);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }

    /// Forgets the oldest live entry, to make room.
    fn evict_oldest(&mut self) {
        while self.front_is_stale() {
            self.order.pop_front();
        }
        if let Some((k, _)) = self.order.pop_front() {
            self.map.remove(&k);
        }
    }

    /// Stale items pile up behind a long-lived front entry; past twice the capacity they
    /// are dropped in one pass (amortized over the pushes that made them).
    fn compact(&mut self, capacity: usize) {
        if self.order.len() > capacity.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, stamp)| map.get(k).is_some_and(|e| e.stamp == *stamp));
        }
    }
}

/// The source a client's failures are counted against: its address, with IPv4-mapped IPv6
/// read as IPv4, and IPv6 cut to its /64 (one subscriber usually holds a whole /64, so
/// counting single addresses would let it rotate past the limit).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_failures: u32, capacity: usize) -> FailurePolicy {
        FailurePolicy {
            max_failures,
            window: Duration::from_secs(60),
            block: Duration::from_secs(60),
            capacity,
        }
    }

    #[test]
    fn blocks_at_the_limit_and_clears() {
        let c = FailureCounter::new(policy(3, 10));
        assert!(!c.failed(1));
        assert!(!c.failed(1));
        assert!(!c.blocked(&1));
        assert!(c.failed(1));
        assert!(c.blocked(&1));
        assert!(!c.failed(1), "a block starts once");
        assert!(!c.blocked(&2));
        c.clear(&1);
        assert!(!c.blocked(&1));
    }

    #[test]
    fn a_hundred_thousand_fresh_keys_stay_bounded() {
        let c = FailureCounter::new(policy(5, 1000));
        let start = Instant::now();
        for id in 0..100_000u64 {
            c.failed(id);
            assert!(c.tracked() <= 1000);
        }
        assert_eq!(c.tracked(), 1000);
        // The newest keys are the ones kept, and the queue holds no more than its bound.
        assert!(c.lock().map.contains_key(&99_999));
        assert!(!c.lock().map.contains_key(&0));
        assert!(c.lock().order.len() <= 2000);
        // Linear, not quadratic: 100,000 calls on a 1000-entry map take well under a second
        // even in a debug build (a scan per call would take minutes).
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn cleared_and_restarted_keys_leave_no_pile_of_stale_items() {
        let c = FailureCounter::new(policy(5, 100));
        for round in 0..10_000u64 {
            c.failed(round % 7);
            c.clear(&(round % 7));
        }
        assert!(c.lock().order.len() <= 200);
        assert_eq!(c.tracked(), 0);
    }

    #[test]
    fn disabled_and_expiring() {
        let off = FailureCounter::new(policy(0, 10));
        for _ in 0..10 {
            off.failed(1);
        }
        assert!(!off.blocked(&1));
        assert_eq!(off.tracked(), 0);
        let short = FailureCounter::new(FailurePolicy {
            block: Duration::ZERO,
            ..policy(1, 10)
        });
        short.failed(1);
        assert!(!short.blocked(&1));
    }

    #[test]
    fn sources() {
        let s = |a: &str| source_of(a.parse().unwrap()).to_string();
        assert_eq!(s("127.0.0.2"), "127.0.0.2");
        assert_eq!(s("::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(s("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
    }
}
