//! Per-source penalties, like OpenSSH's PerSourcePenalties: an address whose connections
//! keep ending without a successful login is refused for a while, so a password- or
//! key-guessing client cannot hammer the gateway, while other addresses are unaffected.

use std::net::IpAddr;
use std::time::Duration;

use crate::limits::{FailureCounter, FailurePolicy};

/// Addresses tracked at most; beyond that, the oldest entries are forgotten.
const MAX_TRACKED: usize = 65_536;

#[derive(Clone, Copy, Debug)]
pub struct PenaltyPolicy {
    /// Failed connections within `window` that earn a penalty; 0 disables penalties.
    pub max_failures: u32,
    pub window: Duration,
    /// How long a penalized address is refused.
    pub penalty: Duration,
}

pub struct Penalties {
    counter: FailureCounter<IpAddr>,
}

impl Penalties {
    pub fn new(policy: PenaltyPolicy) -> Penalties {
        Penalties {
            counter: FailureCounter::new(FailurePolicy {
                max_failures: policy.max_failures,
                window: policy.window,
                block: policy.penalty,
                capacity: MAX_TRACKED,
            }),
        }
    }

    /// Whether `ip` is being refused right now.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        self.counter.blocked(&ip)
    }

    /// Records a connection from `ip` that ended without logging in. Returns true when this
    /// failure starts a penalty.
    pub fn failed(&self, ip: IpAddr) -> bool {
        self.counter.failed(ip)
    }

    /// A successful login clears the address's record.
    pub fn succeeded(&self, ip: IpAddr) {
        self.counter.clear(&ip);
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
