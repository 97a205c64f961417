//! The event outbox's contract (src/store/outbox.rs), run against both backends: the file
//! store's log and PostgreSQL (tests/common/postgres.rs, a database per test). Numbers per
//! request from 1, never reused; one claimer per request however many ask at once; a
//! failed request waits for its backoff; an expiry stored once; the bound refuses.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::postgres::{database, TestDb};
use serde_json::{Map, Value};
use sftpgate::store::postgres::{PgOutbox, PgStore};
use sftpgate::store::{FileOutbox, NewEvent, Outbox, OutboxError, OutboxLimits, Release};
use time::OffsetDateTime;

const TTL: Duration = Duration::from_secs(60);

fn event(request_id: u64) -> NewEvent {
    let mut fields = Map::new();
    fields.insert("event".into(), Value::from("upload-closed"));
    NewEvent { request_id, fields }
}

/// What keeps a backend alive for its test.
enum Keep {
    File(#[allow(dead_code)] tempfile::TempDir),
    Pg(
        #[allow(dead_code)] TestDb,
        #[allow(dead_code)] tempfile::TempDir,
    ),
}

/// At most `events` in all, and one fewer of one request.
fn limits(events: u64) -> OutboxLimits {
    OutboxLimits {
        events,
        per_request: events - 1,
    }
}

async fn file(max: u64) -> (Arc<dyn Outbox>, Keep) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = FileOutbox::open(dir.path(), limits(max)).unwrap();
    (Arc::new(outbox), Keep::File(dir))
}

async fn pg(max: u64) -> (Arc<dyn Outbox>, Keep) {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let store = PgStore::connect(&db.url, dir.path())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let outbox = PgOutbox::new(store.pool().clone(), limits(max));
    (Arc::new(outbox), Keep::Pg(db, dir))
}

async fn numbers_claims_and_backoff(outbox: Arc<dyn Outbox>) {
    for n in 1..=3 {
        assert_eq!(outbox.push(event(7)).await.unwrap().seq, n);
    }
    for id in 1..=20 {
        outbox.push(event(1000 + id)).await.unwrap();
    }
    // Ten claimers at once: every request claimed once, by one of them.
    let claims = futures::future::join_all((0..10).map(|n| {
        let outbox = outbox.clone();
        async move { outbox.claim(&format!("node-{n}"), 5, TTL).await.unwrap() }
    }))
    .await;
    let all: Vec<_> = claims.into_iter().flatten().collect();
    let ids: HashSet<u64> = all.iter().map(|c| c.request_id).collect();
    assert_eq!(all.len(), 21, "{all:?}");
    assert_eq!(ids.len(), 21);
    assert!(outbox.claim("late", 100, TTL).await.unwrap().is_empty());

    let seven = all.iter().find(|c| c.request_id == 7).unwrap().clone();
    let pending = outbox.pending(&seven, 10).await.unwrap();
    let seqs: Vec<u64> = pending.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let body: Value = serde_json::from_str(&pending[0].body).unwrap();
    assert_eq!(
        (body["seq"].as_u64(), body["event_id"].as_str()),
        (Some(1), Some(pending[0].id.as_str()))
    );
    outbox.delivered(&seven, 1).await.unwrap();
    // Delivered twice (a claim that ran out meanwhile): counted once.
    outbox.delivered(&seven, 1).await.unwrap();
    let failed = Release::Failed {
        attempts: 3,
        retry_in: Duration::from_secs(3600),
    };
    outbox.release(&seven, failed).await.unwrap();
    for c in all.iter().filter(|c| c.request_id != 7) {
        outbox.release(c, Release::Done).await.unwrap();
    }
    assert_eq!(outbox.stats().await.unwrap().depth, 22);
    // The failed request waits for its backoff; the others are due again at once.
    let again = outbox.claim("n", 100, TTL).await.unwrap();
    assert_eq!(again.len(), 20);
    assert!(again.iter().all(|c| c.request_id != 7 && c.attempts == 0));
    // A number is never given twice, also after deliveries.
    assert_eq!(outbox.push(event(7)).await.unwrap().seq, 4);
}

async fn expiries_once_and_the_bound(outbox: Arc<dyn Outbox>) {
    let t = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    // Two nodes' sweeps at once: one event.
    let (a, b) = tokio::join!(
        outbox.push_expiry(event(1), t),
        outbox.push_expiry(event(1), t)
    );
    let stored: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(stored.len(), 1);
    assert!(outbox.push_expiry(event(1), t).await.unwrap().is_none());
    let later = t + time::Duration::hours(1);
    assert_eq!(
        outbox
            .push_expiry(event(1), later)
            .await
            .unwrap()
            .map(|e| e.seq),
        Some(2)
    );
    // Request 1 has its share (2); request 2 still has room.
    assert!(matches!(
        outbox.push(event(1)).await,
        Err(OutboxError::RequestFull(2))
    ));
    outbox.push(event(2)).await.unwrap();
    // The bound (3): counted as the delivery loop counts it.
    outbox.stats().await.unwrap();
    assert!(matches!(
        outbox.push(event(3)).await,
        Err(OutboxError::Full(3))
    ));
}

#[tokio::test]
async fn the_file_outbox_numbers_claims_and_backs_off() {
    let (outbox, _keep) = file(1000).await;
    numbers_claims_and_backoff(outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_outbox_numbers_claims_and_backs_off() {
    let (outbox, _keep) = pg(1000).await;
    numbers_claims_and_backoff(outbox).await;
}

#[tokio::test]
async fn the_file_outbox_stores_an_expiry_once_and_keeps_its_bound() {
    let (outbox, _keep) = file(3).await;
    expiries_once_and_the_bound(outbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_outbox_stores_an_expiry_once_and_keeps_its_bound() {
    let (outbox, _keep) = pg(3).await;
    expiries_once_and_the_bound(outbox).await;
}
