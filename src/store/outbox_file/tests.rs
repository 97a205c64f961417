use super::*;
use serde_json::{Map, Value};

fn event(request_id: u64, n: u64) -> NewEvent {
    let mut fields = Map::new();
    fields.insert("event".into(), "upload-closed".into());
    fields.insert("n".into(), Value::from(n));
    NewEvent { request_id, fields }
}

const TTL: Duration = Duration::from_secs(60);

fn limits(events: u64, per_request: u64) -> OutboxLimits {
    OutboxLimits {
        events,
        per_request,
    }
}

#[tokio::test]
async fn events_survive_a_restart_in_order_and_delivered_ones_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = FileOutbox::open(dir.path(), limits(100, 100)).unwrap();
    for n in 1..=3 {
        assert_eq!(outbox.push(event(7, n)).await.unwrap().seq, n);
    }
    outbox.push(event(8, 1)).await.unwrap();
    let claims = outbox.claim("n", 10, TTL).await.unwrap();
    assert_eq!(claims.len(), 2);
    let seven = claims.iter().find(|c| c.request_id == 7).unwrap();
    // Nobody else gets a claimed request.
    assert!(outbox.claim("n", 10, TTL).await.unwrap().is_empty());
    let first = &outbox.pending(seven, 10).await.unwrap()[0];
    outbox.delivered(seven, first.seq).await.unwrap();
    drop(outbox);

    // A torn last line (a crash mid-append) is cut off.
    let log = dir.path().join("outbox").join(LOG);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"{\"op\":\"event\",\"ev")
        .unwrap();
    let outbox = FileOutbox::open(dir.path(), limits(100, 100)).unwrap();
    assert_eq!(outbox.stats().await.unwrap().depth, 3);
    let claims = outbox.claim("n", 10, TTL).await.unwrap();
    let seven = claims.iter().find(|c| c.request_id == 7).unwrap();
    let seqs: Vec<u64> = outbox
        .pending(seven, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [2, 3]);
    // Numbers go on from the last one, never reused.
    assert_eq!(outbox.push(event(7, 4)).await.unwrap().seq, 4);
}

#[tokio::test]
async fn the_bound_refuses_and_an_expiry_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = FileOutbox::open(dir.path(), limits(2, 2)).unwrap();
    let t = OffsetDateTime::now_utc();
    assert!(outbox.push_expiry(event(1, 1), t).await.unwrap().is_some());
    assert!(outbox.push_expiry(event(1, 2), t).await.unwrap().is_none());
    outbox.push(event(2, 1)).await.unwrap();
    assert!(matches!(
        outbox.push(event(3, 1)).await,
        Err(OutboxError::Full(2))
    ));
    drop(outbox);
    let outbox = FileOutbox::open(dir.path(), limits(2, 2)).unwrap();
    assert!(outbox.push_expiry(event(1, 3), t).await.unwrap().is_none());
    let later = t + time::Duration::hours(1);
    // A new expiry of the same request is a new event (once there is room).
    assert!(matches!(
        outbox.push_expiry(event(1, 4), later).await,
        Err(OutboxError::Full(_))
    ));
}

#[tokio::test]
async fn a_failed_request_waits_for_its_backoff_and_compaction_keeps_what_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut outbox = FileOutbox::open(dir.path(), limits(1_000_000, 1_000_000)).unwrap();
    let floor = 64 * 1024;
    Arc::get_mut(&mut outbox.inner).unwrap().compact_floor = floor;
    outbox.push(event(1, 1)).await.unwrap();
    let claim = outbox.claim("n", 1, TTL).await.unwrap().remove(0);
    let failed = Release::Failed {
        attempts: 1,
        retry_in: Duration::from_secs(3600),
    };
    outbox.release(&claim, failed).await.unwrap();
    assert!(outbox.claim("n", 1, TTL).await.unwrap().is_empty());

    // Enough traffic on another request to compact the log several times.
    let body = "x".repeat(1000);
    for n in 0..500u64 {
        let mut e = event(2, n);
        e.fields.insert("pad".into(), Value::from(body.as_str()));
        let stored = outbox.push(e).await.unwrap();
        let claim = Claim {
            request_id: 2,
            token: 0,
            attempts: 0,
        };
        outbox.delivered(&claim, stored.seq).await.unwrap();
    }
    let len = std::fs::metadata(dir.path().join("outbox").join(LOG))
        .unwrap()
        .len();
    assert!(len < 4 * floor, "{len}");
    drop(outbox);
    let outbox = FileOutbox::open(dir.path(), limits(1_000_000, 1_000_000)).unwrap();
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.depth, 1);
    assert_eq!(outbox.push(event(2, 0)).await.unwrap().seq, 501);
}
