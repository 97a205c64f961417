//! A budget of log lines for events a client can repeat at will (refused channels,
//! refused connections): the first few in each window are logged, the rest are counted and
//! reported in one line when the next window opens, so a client cannot flood the log. The
//! events that matter to an audit (login, upload closed, revoked) are never put through it.

use std::time::{Duration, Instant};

/// Lines logged per window for one client before the rest are only counted.
pub const LINES_PER_WINDOW: u32 = 5;
/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct LogBudget {
    start: Instant,
    used: u32,
    suppressed: u64,
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` events were dropped since the last line and should be
    /// mentioned in it.
    Log { suppressed: u64 },
    /// Only counted.
    Drop,
}

impl Default for LogBudget {
    fn default() -> LogBudget {
        LogBudget::new(Instant::now())
    }
}

impl LogBudget {
    pub fn new(now: Instant) -> LogBudget {
        LogBudget {
            start: now,
            used: 0,
            suppressed: 0,
        }
    }

    pub fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    pub fn check_at(&mut self, now: Instant) -> Verdict {
        if now.duration_since(self.start) >= WINDOW {
            self.start = now;
            self.used = 0;
        }
        if self.used < LINES_PER_WINDOW {
            self.used += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Drop
        }
    }

    /// Events dropped and not yet reported (for a last line when the client goes).
    pub fn pending(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_a_few_per_window_and_reports_the_rest() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(t0);
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(b.check_at(t0), Verdict::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(b.check_at(t0), Verdict::Drop);
        }
        assert_eq!(b.pending(), 1000);
        assert_eq!(b.check_at(t0 + WINDOW), Verdict::Log { suppressed: 1000 });
        assert_eq!(b.pending(), 0);
    }
}
