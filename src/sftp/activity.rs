//! A request's live transfer counters, shared by all its sessions and read by the status
//! page and metrics, and the rule that keeps sessions of one request from seeing the file
//! while an ended session is still writing what its client sent.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

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
    /// Sessions (by number) whose client is gone but whose last received requests are
    /// still being written and their files synced.
    draining: tokio::sync::watch::Sender<Vec<u64>>,
    sessions: AtomicU64,
}

/// Held by a session from the end of its input until its last write is on disk.
pub(super) struct Draining<'a> {
    activity: &'a Activity,
    session: u64,
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        let session = self.session;
        self.activity
            .draining
            .send_modify(|ids| ids.retain(|&id| id != session));
    }
}

impl Activity {
    pub(super) fn wrote(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        self.last_write.store(
            time::OffsetDateTime::now_utc().unix_timestamp(),
            Ordering::Relaxed,
        );
    }

    /// A number for a new session of this request.
    pub(super) fn new_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn draining(&self, session: u64) -> Draining<'_> {
        self.draining.send_modify(|ids| ids.push(session));
        Draining {
            activity: self,
            session,
        }
    }

    /// Waits, at most `limit`, until `session` need not wait (see
    /// [`must_wait`](Self::must_wait)). Returns `false` if the limit passed first.
    pub(super) async fn others_drained(&self, session: u64, limit: std::time::Duration) -> bool {
        let mut ids = self.draining.subscribe();
        let done = ids.wait_for(|ids| !must_wait(ids, session));
        tokio::time::timeout(limit, done)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether `session` must wait for others to finish writing what they received.
    pub(super) fn must_wait(&self, session: u64) -> bool {
        must_wait(&self.draining.borrow(), session)
    }
}

/// A session waits while others drain, unless it drains itself: two clients cut off at
/// once must not wait for each other.
fn must_wait(draining: &[u64], session: u64) -> bool {
    !draining.is_empty() && !draining.contains(&session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sessions_wait_for_draining_sessions_unless_draining_themselves() {
        let activity = Activity::default();
        let (a, b, c) = (
            activity.new_session(),
            activity.new_session(),
            activity.new_session(),
        );
        assert!(!activity.must_wait(a));
        let b_drains = activity.draining(b);
        assert!(activity.must_wait(a) && activity.must_wait(c) && !activity.must_wait(b));
        assert!(!activity.others_drained(a, Duration::from_millis(1)).await);
        let c_drains = activity.draining(c);
        assert!(!activity.must_wait(b) && !activity.must_wait(c));
        let waiter = activity.others_drained(a, Duration::from_secs(60));
        drop(b_drains);
        assert!(activity.must_wait(a));
        drop(c_drains);
        assert!(waiter.await);
        assert!(!activity.must_wait(a));
    }
}
