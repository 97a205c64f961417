//! Status page logins. A login gets a random session id (32 bytes from the OS's CSPRNG, in
//! hex) that the cookie carries instead of the admin token, so a leaked cookie is worth
//! less than the token: it expires (`--page-session-ttl`, 12 h by default) and logout
//! revokes it. Sessions live in memory only (a restart logs everyone out), at most
//! `MAX_SESSIONS` at once, the oldest evicted first; ids are compared in constant time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use subtle::ConstantTimeEq;

/// Logins held at once; the oldest goes when another operator logs in.
pub const MAX_SESSIONS: usize = 64;

struct Session {
    id: [u8; 32],
    expires: Instant,
}

pub struct Sessions {
    ttl: Duration,
    /// In creation order, so the first is the oldest.
    live: Mutex<Vec<Session>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            live: Mutex::new(Vec::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session; returns the id for the cookie.
    pub fn create(&self) -> String {
        self.create_at(Instant::now())
    }

    fn create_at(&self, now: Instant) -> String {
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let mut live = self.live();
        live.retain(|s| s.expires > now);
        if live.len() >= MAX_SESSIONS {
            live.remove(0);
        }
        live.push(Session {
            id,
            expires: now + self.ttl,
        });
        hex::encode(id)
    }

    /// Whether `cookie` names a live session.
    pub fn valid(&self, cookie: &str) -> bool {
        self.valid_at(cookie, Instant::now())
    }

    fn valid_at(&self, cookie: &str, now: Instant) -> bool {
        let Some(id) = decode(cookie) else {
            return false;
        };
        // Every live id is compared, so the time taken tells nothing of which matched.
        self.live()
            .iter()
            .fold(subtle::Choice::from(0), |found, s| {
                found | (s.id.ct_eq(&id) & subtle::Choice::from(u8::from(s.expires > now)))
            })
            .into()
    }

    /// Logout: the id stops working at once.
    pub fn revoke(&self, cookie: &str) {
        if let Some(id) = decode(cookie) {
            self.live().retain(|s| !bool::from(s.id.ct_eq(&id)));
        }
    }
}

fn decode(cookie: &str) -> Option<[u8; 32]> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(cookie, &mut id).ok()?;
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_are_revoked_and_are_bounded() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let a = s.create_at(t0);
        assert_eq!(a.len(), 64);
        assert!(s.valid_at(&a, t0 + Duration::from_secs(59)));
        assert!(!s.valid_at(&a, t0 + Duration::from_secs(60)));
        assert!(!s.valid_at("not hex", t0));
        assert!(!s.valid_at(&"0".repeat(64), t0));

        let b = s.create_at(t0);
        assert_ne!(a, b);
        s.revoke(&b);
        assert!(!s.valid_at(&b, t0) && s.valid_at(&a, t0));

        let first = s.create_at(t0);
        for _ in 0..MAX_SESSIONS - 1 {
            s.create_at(t0);
        }
        assert!(!s.valid_at(&a, t0), "the oldest is evicted");
        assert!(s.valid_at(&first, t0));
        s.create_at(t0);
        assert!(!s.valid_at(&first, t0));
        assert_eq!(s.live().len(), MAX_SESSIONS);
    }
}
