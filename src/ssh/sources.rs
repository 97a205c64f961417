//! Per-source connection limits, so that one address cannot crowd out the others: like
//! OpenSSH's PerSourceMaxStartups, a cap on the connections of one source that have not
//! logged in yet; a cap on all of its connections, below the global one; and a rate of new
//! connections (a token bucket), which is what stops a DHEat-style flood (CVE-2002-20001:
//! each connection makes the server compute a key exchange). IPv6 sources are counted by
//! /64, the block one customer usually holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::ratelog::{LogBudget, Verdict};

/// Sources tracked at most. Entries of sources with no connection are dropped once their
/// bucket is full again; past this many, new sources are refused until some are.
const MAX_TRACKED: usize = 65_536;

#[derive(Clone, Copy, Debug)]
pub struct SourcePolicy {
    /// Connections of one source that have not logged in yet.
    pub max_unauthenticated: u32,
    /// All connections of one source.
    pub max_connections: u32,
    /// New connections per second from one source (bursts of twice that); 0: no limit.
    pub rate: u32,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Refusal {
    Rate,
    Unauthenticated,
    Connections,
    TooManySources,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Rate => "new-connection rate of this source exceeded",
            Refusal::Unauthenticated => "too many unauthenticated connections from this source",
            Refusal::Connections => "too many connections from this source",
            Refusal::TooManySources => "too many sources tracked",
        }
    }
}

struct Source {
    open: u32,
    unauthenticated: u32,
    tokens: f64,
    refilled: Instant,
    log: LogBudget,
}

pub struct Sources {
    policy: SourcePolicy,
    map: Mutex<HashMap<IpAddr, Source>>,
}

/// One admitted connection; counts as unauthenticated until [`SourceGuard::logged_in`].
pub struct SourceGuard {
    sources: Arc<Sources>,
    key: IpAddr,
    logged_in: AtomicBool,
}

/// The address a source is counted by.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl Sources {
    pub fn new(policy: SourcePolicy) -> Arc<Sources> {
        Arc::new(Sources {
            policy,
            map: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Source>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn burst(&self) -> f64 {
        f64::from(self.policy.rate) * 2.0
    }

    /// Admits a new connection from `ip`, or says why not. A refusal also says whether to
    /// log it (refusals are logged a few per window per source).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<SourceGuard, (Refusal, Verdict)> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<SourceGuard, (Refusal, Verdict)> {
        let key = source_key(ip);
        let burst = self.burst();
        let rate = f64::from(self.policy.rate);
        let mut map = self.lock();
        if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
            map.retain(|_, s| s.open > 0 || !bucket_full(s, now, rate, burst));
            if map.len() >= MAX_TRACKED {
                return Err((Refusal::TooManySources, Verdict::Drop));
            }
        }
        let s = map.entry(key).or_insert_with(|| Source {
            open: 0,
            unauthenticated: 0,
            tokens: burst,
            refilled: now,
            log: LogBudget::new(now),
        });
        if self.policy.rate > 0 {
            let elapsed = now.duration_since(s.refilled).as_secs_f64();
            s.tokens = (s.tokens + elapsed * rate).min(burst);
            s.refilled = now;
        }
        let refusal = if self.policy.rate > 0 && s.tokens < 1.0 {
            Some(Refusal::Rate)
        } else if s.unauthenticated >= self.policy.max_unauthenticated {
            Some(Refusal::Unauthenticated)
        } else if s.open >= self.policy.max_connections {
            Some(Refusal::Connections)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return Err((refusal, s.log.check_at(now)));
        }
        if self.policy.rate > 0 {
            s.tokens -= 1.0;
        }
        s.open += 1;
        s.unauthenticated += 1;
        Ok(SourceGuard {
            sources: self.clone(),
            key,
            logged_in: AtomicBool::new(false),
        })
    }

    /// Sources tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

fn bucket_full(s: &Source, now: Instant, rate: f64, burst: f64) -> bool {
    rate == 0.0 || s.tokens + now.duration_since(s.refilled).as_secs_f64() * rate >= burst
}

impl SourceGuard {
    /// The connection has logged in: it no longer counts against the unauthenticated cap.
    pub fn logged_in(&self) {
        if !self.logged_in.swap(true, Ordering::AcqRel) {
            if let Some(s) = self.sources.lock().get_mut(&self.key) {
                s.unauthenticated = s.unauthenticated.saturating_sub(1);
            }
        }
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let logged_in = self.logged_in.load(Ordering::Acquire);
        let mut map = self.sources.lock();
        if let Some(s) = map.get_mut(&self.key) {
            s.open = s.open.saturating_sub(1);
            if !logged_in {
                s.unauthenticated = s.unauthenticated.saturating_sub(1);
            }
            // Kept while its bucket refills, so that connecting and hanging up at once
            // still counts against the rate.
            let (rate, burst) = (f64::from(self.sources.policy.rate), self.sources.burst());
            if s.open == 0 && bucket_full(s, Instant::now(), rate, burst) {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(rate: u32) -> SourcePolicy {
        SourcePolicy {
            max_unauthenticated: 3,
            max_connections: 5,
            rate,
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn unauthenticated_connections_are_capped_per_source() {
        let s = Sources::new(policy(0));
        let held: Vec<_> = (0..3).map(|_| s.admit(A).unwrap()).collect();
        assert_eq!(
            s.admit(A).err().map(|e| e.0),
            Some(Refusal::Unauthenticated)
        );
        // Another source is not affected.
        let _b = s.admit(B).unwrap();
        // Logging in frees the slot, up to the cap on all connections.
        held[0].logged_in();
        held[1].logged_in();
        held[2].logged_in();
        let more: Vec<_> = (0..2).map(|_| s.admit(A).unwrap()).collect();
        assert_eq!(s.admit(A).err().map(|e| e.0), Some(Refusal::Connections));
        drop((held, more));
        assert!(s.admit(A).is_ok());
    }

    #[test]
    fn the_rate_is_a_token_bucket_per_source() {
        let s = Sources::new(SourcePolicy {
            max_unauthenticated: 1000,
            max_connections: 1000,
            rate: 10,
        });
        let t0 = Instant::now();
        for _ in 0..20 {
            drop(s.admit_at(A, t0).unwrap());
        }
        let refused = s.admit_at(A, t0).err().unwrap();
        assert_eq!(refused, (Refusal::Rate, Verdict::Log { suppressed: 0 }));
        assert!(s.admit_at(B, t0).is_ok());
        // A tenth of a second later, one more.
        assert!(s.admit_at(A, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn ipv6_sources_are_counted_by_64() {
        let s = Sources::new(policy(0));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let _x: Vec<_> = (0..2).map(|_| s.admit(a).unwrap()).collect();
        let _y = s.admit(b).unwrap();
        assert_eq!(
            s.admit(a).err().map(|e| e.0),
            Some(Refusal::Unauthenticated)
        );
        assert!(s.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn sources_without_connections_are_forgotten() {
        let s = Sources::new(policy(0));
        for i in 0..100_000u32 {
            drop(s.admit(IpAddr::V4(i.into())).unwrap());
        }
        assert_eq!(s.tracked(), 0);
    }
}
