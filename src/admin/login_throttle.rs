//! Failed status page logins, counted per source address: after `MAX_FAILURES` within
//! `WINDOW` of the first, that address is refused (even with the right token) for `BLOCK`,
//! so the admin token cannot be guessed at line rate. At most `MAX_SOURCES` addresses are
//! tracked, the oldest forgotten first. The counting is the shared
//! [`FailureCounter`](crate::limits::FailureCounter) of the SSH penalties and the key
//! throttle; this file holds the page's numbers. Addresses are counted as they are (not
//! cut to their /64 like the key throttle's sources), as they always were here.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::limits::{FailureCounter, FailurePolicy};

pub const MAX_FAILURES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// As long as the window: a source that fails five times at once waits out the minute.
pub const BLOCK: Duration = WINDOW;
pub const MAX_SOURCES: usize = 4096;

pub struct LoginThrottle(FailureCounter<IpAddr>);

impl Default for LoginThrottle {
    fn default() -> LoginThrottle {
        LoginThrottle(FailureCounter::new(FailurePolicy {
            max_failures: MAX_FAILURES,
            window: WINDOW,
            block: BLOCK,
            capacity: MAX_SOURCES,
        }))
    }
}

impl LoginThrottle {
    /// `Some(wait)` if `ip` is refused for now.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        self.0.blocked_for(&ip, now)
    }

    pub fn failed(&self, ip: IpAddr, now: Instant) {
        self.0.failed_at(ip, now);
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.0.clear(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_one_source_for_the_rest_of_its_window() {
        let t = LoginThrottle::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            t.failed(a, t0);
        }
        assert_eq!(t.blocked(a, t0), None);
        t.failed(a, t0);
        assert_eq!(
            t.blocked(a, t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(t.blocked(b, t0), None, "other sources are not affected");
        assert_eq!(t.blocked(a, t0 + WINDOW), None);
        t.failed(a, t0 + WINDOW);
        assert_eq!(
            t.blocked(a, t0 + WINDOW),
            None,
            "a new window starts at one"
        );
        t.failed(a, t0 + WINDOW);
        t.succeeded(a);
        for _ in 0..MAX_FAILURES - 1 {
            t.failed(a, t0 + WINDOW);
        }
        assert_eq!(t.blocked(a, t0 + WINDOW), None, "a login clears the count");
    }

    #[test]
    fn tracks_a_bounded_number_of_sources() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        let first: IpAddr = "10.0.0.0".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            t.failed(first, t0);
        }
        for i in 1..=MAX_SOURCES as u32 {
            t.failed(
                IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                t0 + Duration::from_millis(1),
            );
        }
        assert_eq!(t.0.tracked(), MAX_SOURCES);
        assert_eq!(t.blocked(first, t0), None, "the oldest was evicted");
    }
}
