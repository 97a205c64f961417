//! Delivery of the outbox's events to the hook (`--on-upload-closed URL`): each event is
//! POSTed, signed, until the receiver answers 2xx, then removed from the outbox.
//!
//! Per request, events go in order, one at a time, under a claim (see
//! [`Outbox::claim`](crate::store::Outbox::claim)): any node sharing the store may hold
//! it, never two at once. A failure stops that request's delivery and makes it due again
//! after an exponential backoff with jitter (1 s, 2 s, 4 s, ... up to `--hook-backoff-max`);
//! other requests go on, at most `--hook-concurrency` of them in flight, each POST bounded
//! by `--hook-timeout`, so a receiver that hangs holds up no more than those. Delivery is
//! at-least-once: an event whose 2xx was received but not yet recorded (a crash in
//! between) is sent again, with the same `X-Sftpgate-Event-Id`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use hyper::Method;
use rand::Rng;
use sha2::Sha256;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::Events;
use crate::http;
use crate::store::{Claim, Event, Release};

/// How often the outbox is looked at when nothing wakes the delivery (another node's
/// events, retries coming due).
const POLL: Duration = Duration::from_secs(1);
/// Events read per round trip of a claimed request.
const BATCH: usize = 100;
/// The first retry's delay; each failure in a row doubles it, up to the configured cap.
const BACKOFF_MIN: Duration = Duration::from_secs(1);

/// How delivery runs (`serve` flags).
#[derive(Clone)]
pub struct HookSettings {
    pub url: String,
    /// The HMAC key; `None` sends no signature header.
    pub secret: Option<Vec<u8>>,
    pub node: String,
    /// Per POST, to the response head.
    pub timeout: Duration,
    pub backoff_max: Duration,
    /// Requests delivered at once.
    pub concurrency: usize,
}

impl HookSettings {
    /// A claim outlasts a few POSTs; the deliverer stops sending well before it ends (see
    /// [`deliver_request`]).
    fn claim_ttl(&self) -> Duration {
        self.timeout * 3
    }
}

/// `v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`, as the README shows how to check.
pub fn signature(secret: &[u8], timestamp: &str, body: &str) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delay before attempt `attempts + 1`, after `attempts` failures in a row: doubling
/// from [`BACKOFF_MIN`], capped at `max`, then a random part of up to half taken off, so
/// that requests failing together do not retry together.
pub fn backoff(attempts: u32, max: Duration) -> Duration {
    let doubled = BACKOFF_MIN.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let capped = doubled.min(max);
    capped.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Delivers until `shutdown`; then releases the claims (POSTs still waiting for their
/// answer are given up: their events are sent again later).
pub async fn run(events: Arc<Events>, settings: HookSettings, shutdown: CancellationToken) {
    let settings = Arc::new(settings);
    let mut workers = JoinSet::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut claim_failed = false;
    loop {
        let free = settings.concurrency.saturating_sub(workers.len());
        if free > 0 {
            let started = Instant::now();
            let ttl = settings.claim_ttl();
            let claimed = tokio::select! {
                claimed = events.outbox.claim(&settings.node, free, ttl) => claimed,
                _ = shutdown.cancelled() => break,
            };
            match claimed {
                Ok(claims) => {
                    claim_failed = false;
                    // Counted from before the claim was asked for: the store counts its
                    // TTL from later.
                    let deadline = started + ttl.mul_f64(0.8);
                    for claim in claims {
                        workers.spawn(deliver_request(
                            events.clone(),
                            settings.clone(),
                            claim,
                            deadline,
                            shutdown.clone(),
                        ));
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut claim_failed, true) {
                        tracing::warn!(error = %e, "cannot read the event outbox; retrying");
                    }
                }
            }
        }
        tokio::select! {
            Some(_) = workers.join_next(), if !workers.is_empty() => {}
            _ = events.wake.notified() => {
                // Events come in bursts (many closes at once): one look for all of them.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tick.tick() => {
                // Counted now and then: a shared outbox checks its bound against this.
                if let Err(e) = events.outbox.stats().await {
                    tracing::debug!(error = %e, "cannot count the event outbox");
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    while workers.join_next().await.is_some() {}
}

/// Delivers one claimed request's events in order until none is left, one fails, the
/// claim nears its end (`deadline`: no POST starts that could outlast it) or `shutdown`.
async fn deliver_request(
    events: Arc<Events>,
    settings: Arc<HookSettings>,
    claim: Claim,
    deadline: Instant,
    shutdown: CancellationToken,
) {
    let request = claim.request_id;
    let mut delivered_any = false;
    let how = 'claim: loop {
        let batch = match events.outbox.pending(&claim, BATCH).await {
            Ok(batch) if batch.is_empty() => break Release::Done,
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(request, error = %e, "cannot read the request's events");
                break failed(&claim, delivered_any, &settings);
            }
        };
        for event in batch {
            if shutdown.is_cancelled() || Instant::now() + settings.timeout >= deadline {
                break 'claim Release::Done;
            }
            // A POST still waiting at shutdown is left: the event stays stored and is sent
            // again after the restart (the receiver may have it already: at-least-once).
            let sent = tokio::select! {
                sent = post(&settings, &event) => sent,
                _ = shutdown.cancelled() => break 'claim Release::Done,
            };
            match sent {
                Ok(()) => {
                    events.deliveries.fetch_add(1, Ordering::Relaxed);
                    // Not recorded: sent again later, which the receiver's dedup absorbs.
                    if let Err(e) = events.outbox.delivered(&claim, event.seq).await {
                        tracing::warn!(request, event_id = %event.id, error = %e, "cannot record a delivered event");
                        break 'claim failed(&claim, true, &settings);
                    }
                    delivered_any = true;
                }
                Err(why) => {
                    events.failures.fetch_add(1, Ordering::Relaxed);
                    let how = failed(&claim, delivered_any, &settings);
                    if let (Release::Failed { attempts, retry_in }, Some(suppressed)) =
                        (how, events.may_log())
                    {
                        tracing::warn!(request, event_id = %event.id, seq = event.seq, attempts,
                            retry_in_ms = retry_in.as_millis() as u64, reason = %why, suppressed,
                            "the hook did not take an event");
                    }
                    break 'claim how;
                }
            }
        }
    };
    if let Err(e) = events.outbox.release(&claim, how).await {
        // The claim runs out by itself.
        tracing::warn!(request, error = %e, "cannot release an outbox claim");
    }
}

/// The release after a failure: one more in a row, unless this claim delivered some.
fn failed(claim: &Claim, delivered_any: bool, settings: &HookSettings) -> Release {
    let attempts = if delivered_any {
        1
    } else {
        claim.attempts.saturating_add(1)
    };
    Release::Failed {
        attempts,
        retry_in: backoff(attempts, settings.backoff_max),
    }
}

/// POSTs one event, signed now; `Ok` on a 2xx.
async fn post(settings: &HookSettings, event: &Event) -> Result<(), String> {
    let timestamp = OffsetDateTime::now_utc().unix_timestamp().to_string();
    let sig = settings
        .secret
        .as_deref()
        .map(|s| signature(s, &timestamp, &event.body));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("user-agent", "sftpgate"),
        ("x-sftpgate-event-id", event.id.as_str()),
        ("x-sftpgate-timestamp", timestamp.as_str()),
    ];
    if let Some(sig) = &sig {
        headers.push(("x-sftpgate-signature", sig.as_str()));
    }
    let sent = http::send(
        Method::POST,
        &settings.url,
        &headers,
        http::full(event.body.clone()),
        settings.timeout,
    )
    .await;
    match sent {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("answered {}", resp.status())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // Python: hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"k", "1700000000", "{}"),
            "v1=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
        );
        assert_ne!(
            signature(b"k", "1700000001", "{}"),
            signature(b"k", "1700000000", "{}")
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let max = Duration::from_secs(300);
        for (attempts, full) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (40, 300)] {
            let d = backoff(attempts, max);
            let full = Duration::from_secs(full);
            assert!(d <= full && d >= full / 2, "{attempts}: {d:?}");
        }
        assert!(backoff(5, Duration::from_secs(2)) <= Duration::from_secs(2));
    }
}
