//! A request's live transfer counters, shared by all its sessions and read by the status
//! page and metrics, and the rule that keeps sessions of one request from seeing the file
//! while a session whose client is gone is still writing what that client sent.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use super::HangupProbe;

/// Live counters of one request's transfers, shared with whoever reports on them.
#[derive(Debug, Default)]
pub struct Activity {
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Write handles open right now.
    pub writers: AtomicU32,
    /// Unix time of the last write, 0 if none.
    pub last_write: AtomicI64,
    /// Writes that failed (disk full, size limit, I/O errors).
    pub write_errors: AtomicU64,
    /// The request's sessions, from their start to their last write on disk.
    sessions: tokio::sync::watch::Sender<Vec<Member>>,
    numbers: AtomicU64,
}

struct Member {
    number: u64,
    /// Its input has ended: what is left is writing what was received, and syncing.
    draining: bool,
    /// Whether its client has hung up, possibly with bytes not yet read from the socket.
    hung_up: HangupProbe,
}

impl Member {
    fn gone(&self) -> bool {
        self.draining || (self.hung_up)()
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session {} (draining: {})", self.number, self.draining)
    }
}

/// A session's place among its request's sessions, held until its last write is on disk.
pub(super) struct Membership<'a> {
    activity: &'a Activity,
    pub number: u64,
}

impl Membership<'_> {
    /// The session's input has ended.
    pub fn draining(&self) {
        let number = self.number;
        self.activity.sessions.send_modify(|all| {
            if let Some(me) = all.iter_mut().find(|m| m.number == number) {
                me.draining = true;
            }
        });
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        let number = self.number;
        self.activity
            .sessions
            .send_modify(|all| all.retain(|m| m.number != number));
    }
}

impl Activity {
    pub fn wrote(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        self.last_write.store(
            time::OffsetDateTime::now_utc().unix_timestamp(),
            Ordering::Relaxed,
        );
    }

    /// Registers a new session of this request; `hung_up` tells whether its client is gone.
    pub(super) fn join(&self, hung_up: HangupProbe) -> Membership<'_> {
        let number = self.numbers.fetch_add(1, Ordering::Relaxed);
        self.sessions.send_modify(|all| {
            all.push(Member {
                number,
                draining: false,
                hung_up,
            })
        });
        Membership {
            activity: self,
            number,
        }
    }

    /// Waits, at most `limit`, until `session` need not wait (see
    /// [`must_wait`](Self::must_wait)). Returns `false` if the limit passed first.
    pub(super) async fn others_drained(&self, session: u64, limit: std::time::Duration) -> bool {
        let mut all = self.sessions.subscribe();
        let done = all.wait_for(|all| !must_wait(all, session));
        tokio::time::timeout(limit, done)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether `session` must wait for others to finish writing what they received.
    pub(super) fn must_wait(&self, session: u64) -> bool {
        must_wait(&self.sessions.borrow(), session)
    }
}

/// A session waits while another one's client is gone and that session has not finished
/// writing, unless its own client is gone too: two clients cut off at once must not wait
/// for each other. A session learns its input ended only after reading everything its
/// client sent, which can sit unread in the socket and russh's queues for a while; the
/// hang-up probe covers that time.
fn must_wait(all: &[Member], session: u64) -> bool {
    // Called for every received chunk: the others are asked first, so that a session alone,
    // or among live ones, runs no probe of its own.
    all.iter().any(|m| m.number != session && m.gone())
        && !all.iter().any(|m| m.number == session && m.gone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    fn alive() -> HangupProbe {
        Arc::new(|| false)
    }

    #[tokio::test]
    async fn sessions_wait_for_draining_sessions_unless_draining_themselves() {
        let activity = Activity::default();
        let (a, b, c) = (
            activity.join(alive()),
            activity.join(alive()),
            activity.join(alive()),
        );
        assert!(!activity.must_wait(a.number));
        b.draining();
        assert!(activity.must_wait(a.number) && activity.must_wait(c.number));
        assert!(!activity.must_wait(b.number));
        assert!(
            !activity
                .others_drained(a.number, Duration::from_millis(1))
                .await
        );
        c.draining();
        assert!(!activity.must_wait(b.number) && !activity.must_wait(c.number));
        let waiter = activity.others_drained(a.number, Duration::from_secs(60));
        let a_number = a.number;
        drop(b);
        assert!(activity.must_wait(a_number));
        drop(c);
        assert!(waiter.await);
        assert!(!activity.must_wait(a_number));
    }

    #[tokio::test]
    async fn a_session_whose_client_hung_up_is_waited_for_until_it_ends() {
        let activity = Activity::default();
        let hung_up = Arc::new(AtomicBool::new(false));
        let probe = hung_up.clone();
        let old = activity.join(Arc::new(move || probe.load(Ordering::Relaxed)));
        let new = activity.join(alive());
        assert!(!activity.must_wait(new.number));
        hung_up.store(true, Ordering::Relaxed);
        assert!(activity.must_wait(new.number) && !activity.must_wait(old.number));
        let waiter = activity.others_drained(new.number, Duration::from_secs(60));
        old.draining();
        assert!(activity.must_wait(new.number));
        drop(old);
        assert!(waiter.await);
        // A session whose own client is gone never waits.
        let cut = Arc::new(AtomicBool::new(true));
        let other = activity.join(Arc::new(|| true));
        let probe = cut.clone();
        let me = activity.join(Arc::new(move || probe.load(Ordering::Relaxed)));
        assert!(!activity.must_wait(me.number));
        cut.store(false, Ordering::Relaxed);
        assert!(activity.must_wait(me.number));
        drop(other);
        assert!(!activity.must_wait(me.number));
    }

    #[test]
    fn a_session_among_live_ones_does_not_probe_its_own_client() {
        let activity = Activity::default();
        let me = activity.join(Arc::new(|| panic!("probed on every chunk")));
        assert!(!activity.must_wait(me.number));
        let _live = activity.join(alive());
        assert!(!activity.must_wait(me.number));
    }
}
