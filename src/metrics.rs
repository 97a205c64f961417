//! Counters for `GET /metrics` (Prometheus text format). Transfer byte counts live in each
//! request's [`Activity`](crate::sftp::Activity) while a transfer holds it, and in
//! [`Metrics::finished`] after: a scrape sums both.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::StoreCounters;

#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_current: AtomicU64,
    pub sessions_current: AtomicU64,
    pub auth_success_total: AtomicU64,
    pub auth_failure_total: AtomicU64,
    pub handshake_errors_total: AtomicU64,
    pub uploads_completed_total: AtomicU64,
    /// Records read from the store, by what for.
    pub record_reads: RecordReads,
    /// The transfer counters of requests whose activity was dropped (no transfer held it
    /// any more); the activity held now is added when scraped.
    pub finished: Transfers,
}

/// Records read from the store one by one (listing pages are not counted).
#[derive(Default)]
pub struct RecordReads {
    /// To decide a login: one per login, two when a change came between.
    pub login: AtomicU64,
    /// To check live sessions again: on the change feed, and every few seconds.
    pub recheck: AtomicU64,
    /// By the operator and customer API.
    pub api: AtomicU64,
}

/// Transfer totals, as [`Activity`](crate::sftp::Activity) counts them.
#[derive(Default)]
pub struct Transfers {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub errors: AtomicU64,
}

/// Totals that are computed at scrape time rather than counted.
pub struct Derived {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub transfer_errors: u64,
    /// (state, number of requests in it); empty while the store is unreachable.
    pub requests: Vec<(&'static str, u64)>,
    pub store: StoreCounters,
    pub leases: LeaseStats,
    /// `None` without a hook (no outbox then).
    pub events: Option<EventStats>,
}

/// The event outbox and its delivery (see `crate::events`, `crate::hook`).
#[derive(Clone, Copy, Debug, Default)]
pub struct EventStats {
    /// Events waiting for the hook.
    pub depth: u64,
    pub bytes: u64,
    /// Age of the oldest waiting event; 0 when none waits.
    pub oldest_age_secs: u64,
    /// Events the receiver took (2xx) from this node.
    pub deliveries: u64,
    /// POSTs from this node that failed (no answer, or not 2xx).
    pub failures: u64,
    /// Events the outbox refused (full, or failing): their CLOSE was answered with a
    /// failure, or the expiry is tried again.
    pub refusals: u64,
    /// Looks for expired requests, and their time in all (microseconds).
    pub expiry_looks: u64,
    pub expiry_look_micros: u64,
}

/// The node's upload leases (see `crate::leases`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LeaseStats {
    /// Held now.
    pub held: u64,
    /// Times a session waited for another node's lease.
    pub waits: u64,
    /// Write opens refused: the lease was still held elsewhere after the wait, or the
    /// lease store did not answer.
    pub refusals: u64,
    /// Leases lost while held (not renewed in time, or taken over).
    pub losses: u64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn render(&self, d: &Derived) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(
                out,
                "# HELP sftpgate_{name} {help}\n# TYPE sftpgate_{name} {kind}"
            );
            for (labels, v) in samples {
                let _ = writeln!(out, "sftpgate_{name}{labels} {v}");
            }
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            "connections_total",
            "counter",
            "SSH connections accepted.",
            &[("", get(&self.connections_total))],
        );
        metric(
            "connections",
            "gauge",
            "SSH connections open now.",
            &[("", get(&self.connections_current))],
        );
        metric(
            "sessions",
            "gauge",
            "Authenticated SSH sessions open now.",
            &[("", get(&self.sessions_current))],
        );
        metric(
            "auth_total",
            "counter",
            "Authentication attempts by result.",
            &[
                ("{result=\"success\"}", get(&self.auth_success_total)),
                ("{result=\"failure\"}", get(&self.auth_failure_total)),
            ],
        );
        metric(
            "handshake_errors_total",
            "counter",
            "Connections that failed before authentication.",
            &[("", get(&self.handshake_errors_total))],
        );
        metric(
            "bytes_received_total",
            "counter",
            "File bytes written by clients.",
            &[("", d.bytes_received)],
        );
        metric(
            "bytes_sent_total",
            "counter",
            "File bytes read by clients.",
            &[("", d.bytes_sent)],
        );
        metric(
            "uploads_completed_total",
            "counter",
            "Write handles closed (uploads finished or paused).",
            &[("", get(&self.uploads_completed_total))],
        );
        metric(
            "transfer_errors_total",
            "counter",
            "File writes that failed (disk full, size limit, I/O).",
            &[("", d.transfer_errors)],
        );
        let r = &self.record_reads;
        metric(
            "record_reads_total",
            "counter",
            "Records read from the store, by purpose: login, recheck (live sessions), api.",
            &[
                ("{by=\"login\"}", get(&r.login)),
                ("{by=\"recheck\"}", get(&r.recheck)),
                ("{by=\"api\"}", get(&r.api)),
            ],
        );
        let labels: Vec<(String, u64)> = d
            .requests
            .iter()
            .map(|(s, n)| (format!("{{state=\"{s}\"}}"), *n))
            .collect();
        let refs: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric("requests", "gauge", "Upgrade requests by state.", &refs);
        let l = &d.leases;
        for (name, kind, help, value) in [
            ("leases", "gauge", "Upload leases this node holds now.", l.held),
            (
                "lease_waits_total",
                "counter",
                "Times a session waited for an upload lease another node held.",
                l.waits,
            ),
            (
                "lease_refusals_total",
                "counter",
                "Write opens refused: another node held the upload's lease past the wait, or the lease store did not answer.",
                l.refusals,
            ),
            (
                "lease_losses_total",
                "counter",
                "Upload leases lost while held (not renewed in time, or taken over); their writes were refused from then on.",
                l.losses,
            ),
        ] {
            metric(name, kind, help, &[("", value)]);
        }
        let labels: Vec<(String, u64)> = d
            .store
            .errors
            .iter()
            .map(|(op, n)| (format!("{{operation=\"{}\"}}", op.as_str()), *n))
            .collect();
        let refs: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric(
            "store_errors_total",
            "counter",
            "Failed operations on the request store, by operation.",
            &refs,
        );
        metric(
            "store_feed_reconnects_total",
            "counter",
            "Times the shared store's change feed lost its connection (all live records are re-read after).",
            &[("", d.store.feed_reconnects)],
        );
        metric(
            "store_feed_overflows_total",
            "counter",
            "Times the gateway fell behind the shared store's change feed (all live records are re-read).",
            &[("", d.store.feed_overflows)],
        );
        let e = d.events.unwrap_or_default();
        for (name, kind, help, value) in [
            ("outbox_events", "gauge", "Events waiting in the outbox for the hook.", e.depth),
            ("outbox_bytes", "gauge", "Bytes of the events waiting in the outbox.", e.bytes),
            (
                "outbox_oldest_age_seconds",
                "gauge",
                "Age of the oldest event waiting in the outbox (0: none waits).",
                e.oldest_age_secs,
            ),
            (
                "outbox_refusals_total",
                "counter",
                "Events the outbox refused (full or failing): the upload's CLOSE failed, or the expiry is retried.",
                e.refusals,
            ),
            (
                "hook_deliveries_total",
                "counter",
                "Events this node delivered to the hook (answered 2xx).",
                e.deliveries,
            ),
            (
                "hook_failures_total",
                "counter",
                "Event POSTs from this node that failed (no answer within the timeout, or not 2xx); each is retried.",
                e.failures,
            ),
            (
                "expiry_looks_total",
                "counter",
                "Looks for requests whose access expired (one a second, with a hook).",
                e.expiry_looks,
            ),
            (
                "expiry_look_microseconds_total",
                "counter",
                "Time spent in the looks for expired requests, in microseconds.",
                e.expiry_look_micros,
            ),
        ] {
            metric(name, kind, help, &[("", value)]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.connections_total);
        Metrics::inc(&m.auth_failure_total);
        let text = m.render(&Derived {
            bytes_received: 5,
            bytes_sent: 6,
            transfer_errors: 0,
            requests: vec![("draft", 2), ("done", 1)],
            leases: LeaseStats {
                losses: 3,
                ..LeaseStats::default()
            },
            store: StoreCounters::default(),
            events: Some(EventStats {
                depth: 4,
                expiry_looks: 7,
                ..EventStats::default()
            }),
        });
        assert!(text.contains("sftpgate_outbox_events 4\n"));
        assert!(text.contains("sftpgate_hook_deliveries_total 0\n"));
        assert!(text.contains("sftpgate_expiry_looks_total 7\n"));
        assert!(text.contains("sftpgate_lease_losses_total 3\n"));
        assert!(text
            .contains("# TYPE sftpgate_connections_total counter\nsftpgate_connections_total 1\n"));
        assert!(text.contains("sftpgate_auth_total{result=\"failure\"} 1\n"));
        assert!(text.contains("sftpgate_requests{state=\"draft\"} 2\n"));
        assert!(text.contains("sftpgate_bytes_received_total 5\n"));
        assert!(text.contains("sftpgate_store_errors_total{operation=\"read\"} 0\n"));
        assert!(text.contains("sftpgate_store_feed_reconnects_total 0\n"));
        assert!(text.contains("sftpgate_record_reads_total{by=\"login\"} 0\n"));
    }
}
