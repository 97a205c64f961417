//! Per-source penalties, like OpenSSH's PerSourcePenalties: an address whose connections
//! keep ending without a successful login is refused for a while, so a password- or
//! key-guessing client cannot hammer the gateway, while other addresses are unaffected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most; beyond that, entries without a penalty are forgotten.
const MAX_TRACKED: usize = 65_536;

#[derive(Clone, Copy, Debug)]
pub struct PenaltyPolicy {
    /// Failed connections within `window` that earn a penalty; 0 disables penalties.
    pub max_failures: u32,
    pub window: Duration,
    /// How long a penalized address is refused.
    pub penalty: Duration,
}

struct Entry {
    failures: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

pub struct Penalties {
    policy: PenaltyPolicy,
    map: Mutex<HashMap<IpAddr, Entry>>,
}

impl Penalties {
    pub fn new(policy: PenaltyPolicy) -> Penalties {
        Penalties {
            policy,
            map: Mutex::default(),
        }
    }

    /// Whether `ip` is being refused right now.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .and_then(|e| e.blocked_until)
            .is_some_and(|t| Instant::now() < t)
    }

    /// Records a connection from `ip` that ended without logging in. Returns true when this
    /// failure starts a penalty.
    pub fn failed(&self, ip: IpAddr) -> bool {
        if self.policy.max_failures == 0 {
            return false;
        }
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, e| e.blocked_until.is_some_and(|t| now < t));
        }
        let e = map.entry(ip).or_insert(Entry {
            failures: 0,
            since: now,
            blocked_until: None,
        });
        if now.duration_since(e.since) > self.policy.window
            || e.blocked_until.is_some_and(|t| now >= t)
        {
            *e = Entry {
                failures: 0,
                since: now,
                blocked_until: None,
            };
        }
        e.failures += 1;
        if e.failures >= self.policy.max_failures && e.blocked_until.is_none() {
            e.blocked_until = Some(now + self.policy.penalty);
            return true;
        }
        false
    }

    /// A successful login clears the address's record.
    pub fn succeeded(&self, ip: IpAddr) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalty_after_repeated_failures_only_for_that_address() {
        let p = Penalties::new(PenaltyPolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(!p.failed(a));
        assert!(!p.failed(a));
        assert!(!p.blocked(a));
        assert!(p.failed(a));
        assert!(p.blocked(a));
        assert!(!p.blocked(b));
        p.succeeded(a);
        assert!(!p.blocked(a));
    }

    #[test]
    fn disabled_and_expiring() {
        let off = Penalties::new(PenaltyPolicy {
            max_failures: 0,
            window: Duration::from_secs(1),
            penalty: Duration::from_secs(1),
        });
        let a: IpAddr = "::1".parse().unwrap();
        for _ in 0..10 {
            off.failed(a);
        }
        assert!(!off.blocked(a));
        let short = Penalties::new(PenaltyPolicy {
            max_failures: 1,
            window: Duration::from_secs(60),
            penalty: Duration::ZERO,
        });
        short.failed(a);
        assert!(!short.blocked(a));
    }
}
