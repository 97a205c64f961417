//! The gateway's events for the hook: an upload-closed event per closed write handle and
//! an access-expired event per expiry, each stored in the outbox before anything
//! acknowledges it (the SFTP CLOSE's reply waits for it). [`crate::hook`] delivers them.
//!
//! An event the outbox refuses (full, or its disk or database failing) is never dropped
//! silently: an upload's CLOSE is answered with a failure (the client retries, and `put
//! -a` closes again), an expiry is tried again at the next sweep; both are counted and
//! logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::metrics::EventStats;
use crate::ratelog::{LogBudget, Verdict};
use crate::store::{Event, NewEvent, Outbox, OutboxError, Record};

/// How often expiries are looked for (as often as sessions are swept).
const EXPIRY_EVERY: Duration = Duration::from_secs(1);
/// Every this many looks, all expiries are looked at, not only those since the last look:
/// an `expires_at` set in the past, or missed while the store failed, is noticed within a
/// minute, while a second's look reads only the few recent ones.
const FULL_LOOK_EVERY: u64 = 60;
/// How far before the last look's time the next one starts: room for the clocks of the
/// node and of a database to differ.
const LOOK_OVERLAP: time::Duration = time::Duration::seconds(5);

/// The outbox and what the delivery counts.
pub struct Events {
    pub outbox: Arc<dyn Outbox>,
    /// Told of each event stored, so that delivery starts at once.
    pub wake: Notify,
    pub deliveries: AtomicU64,
    pub failures: AtomicU64,
    /// Events the outbox refused.
    pub refusals: AtomicU64,
    /// Looks for expiries made, and the time they took in all (microseconds): the part
    /// of the sweeping that reads records (a range of the file store's expiry index, an
    /// indexed query in PostgreSQL); bench/records.sh reads the mean look from these.
    pub expiry_looks: AtomicU64,
    pub expiry_look_micros: AtomicU64,
    /// Lines for refusals and failed POSTs, which repeat for as long as their cause lasts.
    log_budget: Mutex<LogBudget>,
}

/// An RFC 3339 timestamp for an event's fields.
pub fn timestamp(t: OffsetDateTime) -> Value {
    t.format(&Rfc3339).map(Value::String).unwrap_or(Value::Null)
}

impl Events {
    pub fn new(outbox: Arc<dyn Outbox>) -> Arc<Events> {
        Arc::new(Events {
            outbox,
            wake: Notify::new(),
            deliveries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            expiry_looks: AtomicU64::new(0),
            expiry_look_micros: AtomicU64::new(0),
            log_budget: Mutex::default(),
        })
    }

    /// Whether a repeatable line may be logged now: `Some(lines left out since the last)`.
    pub fn may_log(&self) -> Option<u64> {
        match self
            .log_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check()
        {
            Verdict::Log { suppressed } => Some(suppressed),
            Verdict::Drop => None,
        }
    }

    fn refused(&self, e: &OutboxError, event: &str, request: u64) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.may_log() {
            tracing::error!(event, request, error = %e, suppressed, "an event could not be stored in the outbox");
        }
    }

    /// Stores an event; durable once this returns `Ok`.
    pub async fn emit(&self, event: NewEvent) -> Result<Event, OutboxError> {
        let request = event.request_id;
        match self.outbox.push(event).await {
            Ok(stored) => {
                self.wake.notify_one();
                Ok(stored)
            }
            Err(e) => {
                self.refused(&e, "upload-closed", request);
                Err(e)
            }
        }
    }

    /// The event of a closed write handle, its fields as the README lists them.
    pub fn upload_closed(fields: UploadClosed<'_>) -> NewEvent {
        let mut m = Map::new();
        m.insert("event".into(), "upload-closed".into());
        m.insert("request_id".into(), fields.request_id.into());
        m.insert("user".into(), Record::user_name(fields.request_id).into());
        m.insert("key_fingerprint".into(), fields.key_fingerprint.into());
        m.insert("via".into(), fields.via.into());
        m.insert("client".into(), fields.client.into());
        m.insert("bytes_written".into(), fields.bytes_written.into());
        m.insert("final_size".into(), fields.final_size.into());
        m.insert("duration_ms".into(), fields.duration_ms.into());
        m.insert("at".into(), timestamp(OffsetDateTime::now_utc()));
        NewEvent {
            request_id: fields.request_id,
            fields: m,
        }
    }

    /// Stores the access-expired event of each expiry that has none yet, until `shutdown`.
    pub async fn run_expiries(self: Arc<Self>, gateway: Arc<Gateway>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(EXPIRY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the last look that stored everything it found began.
        let mut last: Option<OffsetDateTime> = None;
        for looks in 0u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let started = std::time::Instant::now();
            self.look_for_expiries(&gateway, looks, &mut last).await;
            let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.expiry_looks.fetch_add(1, Ordering::Relaxed);
            self.expiry_look_micros.fetch_add(took, Ordering::Relaxed);
        }
    }

    /// One look (the `looks`-th): stores the events of the expiries it finds; `last` is
    /// when the last look that stored everything it found began.
    async fn look_for_expiries(
        &self,
        gateway: &Gateway,
        looks: u64,
        last: &mut Option<OffsetDateTime>,
    ) {
        let now = OffsetDateTime::now_utc();
        let since = match looks % FULL_LOOK_EVERY {
            0 => None,
            _ => last.map(|t| t - LOOK_OVERLAP),
        };
        let due = match gateway.expired_records(now, since).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for expired requests");
                return;
            }
        };
        let mut complete = due.len() < crate::store::MAX_EXPIRED;
        for (request, expires_at) in due {
            let mut m = Map::new();
            m.insert("event".into(), "access-expired".into());
            m.insert("request_id".into(), request.into());
            m.insert("user".into(), Record::user_name(request).into());
            m.insert("expires_at".into(), timestamp(expires_at));
            m.insert("at".into(), timestamp(now));
            let event = NewEvent {
                request_id: request,
                fields: m,
            };
            match self.outbox.push_expiry(event, expires_at).await {
                Ok(Some(stored)) => {
                    tracing::info!(target: "audit", event = "access-expired", request,
                        expires_at = %timestamp(expires_at), event_id = %stored.id, "access expired");
                    self.wake.notify_one();
                }
                Ok(None) => {}
                // Not marked either: the next look tries again.
                Err(e) => {
                    self.refused(&e, "access-expired", request);
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            *last = Some(now);
        }
    }

    /// The metrics of the outbox and the delivery.
    pub async fn stats(&self) -> EventStats {
        let stats = self
            .outbox
            .stats()
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "cannot count the outbox"))
            .unwrap_or_default();
        let oldest_age = stats.oldest.map_or(0, |t| {
            (OffsetDateTime::now_utc() - t).whole_seconds().max(0) as u64
        });
        EventStats {
            depth: stats.depth,
            bytes: stats.bytes,
            oldest_age_secs: oldest_age,
            deliveries: self.deliveries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
            expiry_looks: self.expiry_looks.load(Ordering::Relaxed),
            expiry_look_micros: self.expiry_look_micros.load(Ordering::Relaxed),
        }
    }
}

/// What an upload-closed event reports.
pub struct UploadClosed<'a> {
    pub request_id: u64,
    /// The SSH key's fingerprint; `None` for an HTTP upload.
    pub key_fingerprint: Option<&'a str>,
    /// How the bytes came: `sftp` or `http`.
    pub via: &'a str,
    pub client: String,
    pub bytes_written: u64,
    pub final_size: u64,
    pub duration_ms: u64,
}
