//! Failed status page logins, counted per source address: after `MAX_FAILURES` in a
//! `WINDOW`, that address is refused (even with the right token) until the window ends, so
//! the admin token cannot be guessed at line rate. At most `MAX_SOURCES` addresses are
//! tracked; when full, expired windows go first, then the oldest. (A sibling of the
//! `request_sftp_access` throttle in access.rs, kept apart for now: they could share one
//! bounded per-source counter.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const MAX_SOURCES: usize = 4096;

struct Window {
    start: Instant,
    failures: u32,
}

#[derive(Default)]
pub struct LoginThrottle(Mutex<HashMap<IpAddr, Window>>);

impl LoginThrottle {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(wait)` if `ip` is refused for now.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.map();
        let w = map.get(&ip)?;
        let ends = w.start + WINDOW;
        (w.failures >= MAX_FAILURES && ends > now).then(|| ends - now)
    }

    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.map();
        if !map.contains_key(&ip) && map.len() >= MAX_SOURCES {
            map.retain(|_, w| w.start + WINDOW > now);
            if map.len() >= MAX_SOURCES {
                let oldest = map.iter().min_by_key(|(_, w)| w.start).map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    map.remove(&oldest);
                }
            }
        }
        let w = map.entry(ip).or_insert(Window {
            start: now,
            failures: 0,
        });
        if w.start + WINDOW <= now {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.map().remove(&ip);
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
        assert_eq!(t.map().len(), MAX_SOURCES);
        assert_eq!(t.blocked(first, t0), None, "the oldest was evicted");
    }
}
