//! The event outbox: events for the hook (`--on-upload-closed`), written durably before
//! anything acknowledges what they report, and kept until the receiver has taken them.
//!
//! Each event belongs to a request and gets that request's next sequence number (1, 2,
//! ...; never reused, also after delivery), so a receiver sees per request an ordered,
//! gapless series. Delivery (`crate::hook`) claims a request, which makes it the only
//! deliverer of that request's events until it releases the claim or the claim's time
//! runs out; with several nodes any node may claim, never two at once.
//!
//! [`FileOutbox`](super::FileOutbox) is the embedded backend (an append-only log in
//! `DATA_DIR/outbox/`), the PostgreSQL store has the shared one (tables, migration 5).

use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;

/// What an event says, before the outbox gives it an id and a sequence number.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub request_id: u64,
    /// The event's fields (`event`, `request_id`, ...); `event_id` and `seq` are added.
    pub fields: Map<String, Value>,
}

/// An event in the outbox.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Random, unique: receivers deduplicate by it (delivery is at-least-once).
    pub id: String,
    pub request_id: u64,
    /// This request's sequence number of the event, from 1.
    pub seq: u64,
    /// The JSON body POSTed, exactly as signed (it holds `event_id` and `seq`).
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl NewEvent {
    /// The stored event with `seq` as its sequence number and a fresh id.
    pub fn numbered(self, seq: u64) -> Event {
        let id = format!("evt_{}", hex::encode(rand::random::<[u8; 16]>()));
        let mut fields = self.fields;
        fields.insert("event_id".into(), Value::String(id.clone()));
        fields.insert("seq".into(), Value::from(seq));
        Event {
            id,
            request_id: self.request_id,
            seq,
            body: Value::Object(fields).to_string(),
            created_at: OffsetDateTime::now_utc(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The documented bound is reached: the event is refused (and counted), not dropped.
    #[error("the event outbox is full ({0} events wait for the hook)")]
    Full(u64),
    /// One request's share of the outbox is used up: others still have room.
    #[error(
        "the event outbox holds {0} events of this request, the most one request may have waiting"
    )]
    RequestFull(u64),
    #[error("the event outbox cannot be written: {0}")]
    Io(String),
    #[error("the event outbox in PostgreSQL: {0}")]
    Database(String),
}

/// A deliverer's exclusive hold on one request's events, until released or expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub request_id: u64,
    /// Unique per claim: a late call under a claim that was lost touches nothing.
    pub token: u64,
    /// Failed attempts in a row so far (for the backoff).
    pub attempts: u32,
}

/// What became of a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Nothing failed (all delivered, or the claim's time or the process is ending): the
    /// request is due again at once.
    Done,
    /// The receiver did not take an event: `attempts` failures in a row now, due again
    /// after `retry_in`.
    Failed { attempts: u32, retry_in: Duration },
}

/// How many events wait, for the metrics page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub depth: u64,
    pub bytes: u64,
    /// When the oldest waiting event was made.
    pub oldest: Option<OffsetDateTime>,
}

/// How many events may wait: in all, and of one request (so that one customer's events
/// cannot take every other customer's room while the hook is away).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    pub events: u64,
    pub per_request: u64,
}

/// Where events wait for delivery. Every write is durable when it returns.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Stores `event` as its request's next one; `Full` or `RequestFull` past a bound.
    async fn push(&self, event: NewEvent) -> Result<Event, OutboxError>;
    /// Stores `event` unless an event for this expiry (request, `expires_at`) was already
    /// stored, by any node, ever: `None` then. The mark and the event are one write.
    async fn push_expiry(
        &self,
        event: NewEvent,
        expires_at: OffsetDateTime,
    ) -> Result<Option<Event>, OutboxError>;
    /// Claims up to `max` requests whose events are due and that nobody holds, for `ttl`.
    async fn claim(&self, node: &str, max: usize, ttl: Duration)
        -> Result<Vec<Claim>, OutboxError>;
    /// The claimed request's first `limit` waiting events, in order.
    async fn pending(&self, claim: &Claim, limit: usize) -> Result<Vec<Event>, OutboxError>;
    /// Removes a delivered event.
    async fn delivered(&self, claim: &Claim, seq: u64) -> Result<(), OutboxError>;
    /// Ends a claim.
    async fn release(&self, claim: &Claim, how: Release) -> Result<(), OutboxError>;
    async fn stats(&self) -> Result<OutboxStats, OutboxError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numbered_event_carries_its_id_and_sequence_number() {
        let mut fields = Map::new();
        fields.insert("event".into(), "upload-closed".into());
        let e = NewEvent {
            request_id: 7,
            fields,
        }
        .numbered(3);
        let body: Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(body["seq"], 3);
        assert_eq!(body["event_id"], e.id.as_str());
        assert_eq!(body["event"], "upload-closed");
        assert!(e.id.starts_with("evt_") && e.id.len() == 36, "{}", e.id);
    }
}
