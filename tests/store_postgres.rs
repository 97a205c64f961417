//! The PostgreSQL store against a real server (tests/common/postgres.rs: the server of
//! `SFTPGATE_TEST_DATABASE_URL`, else a throwaway cluster; a database per test): the
//! store contract shared with the file store, then what only a shared database has —
//! migrations by nodes starting at once, change notifications between nodes, a server
//! restart under a running node, and the schema an operator sees.
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

#[macro_use]
mod common;

use std::time::Duration;

use sqlx::Connection;

use common::postgres::{database, Cluster, TestDb};
use contract::record;
use sftpgate::store::postgres::{Change, PgStore, PgStoreOptions};
use sftpgate::store::Decision;
use sftpgate::store::{hash_key, NodeSessions, Record, RequestSessions};
use time::OffsetDateTime;

/// A fresh store on a database and a data directory of its own.
async fn fresh_pg() -> (PgStore, (TestDb, tempfile::TempDir)) {
    let db = database();
    let dir = tempfile::tempdir().expect("data dir");
    let store = PgStore::connect(&db.url, dir.path())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    (store, (db, dir))
}

/// Another node (a restarted one) on the same database and data directory.
async fn reopen_pg(guard: &(TestDb, tempfile::TempDir)) -> PgStore {
    PgStore::connect(&guard.0.url, guard.1.path())
        .await
        .unwrap_or_else(|e| panic!("reconnect: {e}"))
}

store_contract!(
    contract,
    fresh = fresh_pg,
    reopen = reopen_pg,
    decision = Decision
);

async fn put(store: &PgStore, r: Record) {
    let id = r.id;
    store
        .update(id, move |_| Decision::Put(r))
        .await
        .unwrap_or_else(|e| panic!("put {id}: {e}"));
}

/// What `sql` (a `SELECT count(*)`) counts.
async fn count(store: &PgStore, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The rows `sql` reads.
async fn rows<T>(store: &PgStore, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql)
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The next change of the feed, within 10 s.
async fn next_change(changes: &mut sftpgate::store::postgres::Changes) -> Change {
    tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("a change within 10 s")
        .unwrap_or_else(|e| panic!("change feed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_migrate_once() {
    let db = database();
    let dir = tempfile::tempdir().expect("data dir");
    // Each connect is a node of its own: its own pool, racing to migrate a new database.
    let nodes = futures::future::join_all((0..6).map(|_| {
        let options = PgStoreOptions {
            max_connections: 2,
            ..PgStoreOptions::default()
        };
        PgStore::connect_with(&db.url, dir.path(), options)
    }))
    .await;
    let nodes: Vec<PgStore> = nodes
        .into_iter()
        .map(|n| n.unwrap_or_else(|e| panic!("a node failed to start: {e}")))
        .collect();
    let versions: Vec<(i32, String)> =
        sqlx::query_as("SELECT version, name FROM schema_version ORDER BY version")
            .fetch_all(nodes[0].pool())
            .await
            .expect("schema_version");
    // Each applied exactly once, in order.
    assert_eq!(versions, sftpgate::store::postgres::migrations());
    // Every node works on the one schema, and a later start finds nothing to do.
    put(&nodes[1], record(1)).await;
    assert_eq!(nodes[5].list().await.expect("list").len(), 1);
    let late = PgStore::connect(&db.url, dir.path())
        .await
        .expect("restart");
    assert_eq!(late.get(1).await.expect("get").map(|r| r.id), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_notified_of_each_others_changes() {
    let db = database();
    let dir = tempfile::tempdir().expect("data dir");
    let a = PgStore::connect(&db.url, dir.path()).await.expect("node a");
    // Also the URL's other spelling.
    let url_b = db.url.replacen("postgres://", "postgresql://", 1);
    let b = PgStore::connect(&url_b, dir.path()).await.expect("node b");
    let mut changes = b.listen().await.expect("listen");

    put(&a, record(42)).await;
    assert_eq!(next_change(&mut changes).await, Change::Record(42));
    assert_eq!(b.get(42).await.expect("get").map(|r| r.id), Some(42));

    // Keep writes nothing and tells no one: the next change seen is 43's.
    a.update(42, |_| Decision::Keep).await.expect("keep");
    put(&a, record(43)).await;
    assert_eq!(next_change(&mut changes).await, Change::Record(43));
    a.update(43, |_| Decision::Delete { purge: true })
        .await
        .expect("delete");
    assert_eq!(next_change(&mut changes).await, Change::Record(43));
    // A failed update (rolled back) tells no one either.
    let wrong = record(44);
    assert!(a.update(45, move |_| Decision::Put(wrong)).await.is_err());
    put(&a, record(46)).await;
    assert_eq!(next_change(&mut changes).await, Change::Record(46));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected() {
    // A cluster of this test's own: the shared one must stay up for the other tests.
    let cluster = Cluster::private();
    let db = cluster.database();
    let dir = tempfile::tempdir().expect("data dir");
    let store = PgStore::connect(&db.url, dir.path())
        .await
        .expect("connect");
    let mut changes = store.listen().await.expect("listen");
    put(&store, record(1)).await;
    assert_eq!(next_change(&mut changes).await, Change::Record(1));

    cluster.restart();
    // The pool replaces its dead connections; the feed says it may have missed changes.
    assert_eq!(
        store.get(1).await.expect("get after restart").map(|r| r.id),
        Some(1)
    );
    assert_eq!(next_change(&mut changes).await, Change::Missed);
    put(&store, record(2)).await;
    assert_eq!(next_change(&mut changes).await, Change::Record(2));
    assert_eq!(store.list().await.expect("list").len(), 2);
}

/// The pool pings only connections idle for a while: one that just served a read and
/// died since (its backend terminated) fails the next read, which is read again on
/// another connection; the caller sees only the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reads_a_login_waits_on_outlive_their_connection_dying() {
    use sftpgate::store::postgres::PgLeases;
    use sftpgate::store::LeaseStore;
    let (store, guard) = fresh_pg().await;
    put(&store, record(1)).await;
    let leases = PgLeases::new(store.pool().clone());
    assert!(leases
        .acquire(1, "a", Duration::from_secs(30))
        .await
        .unwrap()
        .is_some());
    // Every connection of the store's pool, ended by PostgreSQL.
    let kill_all = || async {
        let mut other = sqlx::PgConnection::connect(&guard.0.url)
            .await
            .expect("another connection");
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut other)
        .await
        .expect("terminate");
        assert!(
            !killed.is_empty() && killed.iter().all(|k| *k),
            "{killed:?}"
        );
    };
    for _ in 0..3 {
        assert_eq!(store.get(1).await.expect("get").map(|r| r.id), Some(1));
        kill_all().await;
        assert_eq!(
            store
                .get(1)
                .await
                .expect("get on a dead connection")
                .map(|r| r.id),
            Some(1)
        );
        // The lease look, the login's other read.
        kill_all().await;
        assert!(leases
            .held_elsewhere(1, "b")
            .await
            .expect("lease look on a dead connection"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_live_in_tables() {
    let (store, _guard) = fresh_pg().await;
    let mut r = record(10534);
    r.ssh_keys = "ssh-ed25519 AAAA one\n# two\nssh-rsa AAAA three".into();
    r.expires_at = Some(r.created_at + time::Duration::DAY);
    put(&store, r.clone()).await;
    let row: (String, String, String, Option<OffsetDateTime>) = sqlx::query_as(
        "SELECT id::text, state, key_sha256, expires_at FROM records WHERE id = 10534",
    )
    .fetch_one(store.pool())
    .await
    .expect("records row");
    assert_eq!(row.0, "10534");
    assert_eq!(row.1, "draft");
    assert_eq!(row.2, hash_key("key-10534"));
    // Microseconds are what PostgreSQL keeps; the store reports that too.
    let micros = |t: OffsetDateTime| t.unix_timestamp_nanos() / 1000;
    assert_eq!(row.3.map(micros), r.expires_at.map(micros));
    let lines: Vec<(i32, String)> = rows(
        &store,
        "SELECT position, line FROM record_keys WHERE record_id = 10534 ORDER BY position",
    )
    .await;
    assert_eq!(
        lines,
        [
            (1, "ssh-ed25519 AAAA one".to_string()),
            (2, "# two".to_string()),
            (3, "ssh-rsa AAAA three".to_string())
        ]
    );
    // A key replacement leaves only the new lines; a delete takes them along.
    let mut replaced = r.clone();
    replaced.ssh_keys = "ssh-ed25519 AAAA four".into();
    put(&store, replaced).await;
    assert_eq!(count(&store, "SELECT count(*) FROM record_keys").await, 1);
    store
        .update(10534, |_| Decision::Delete { purge: false })
        .await
        .expect("delete");
    assert_eq!(count(&store, "SELECT count(*) FROM record_keys").await, 0);
    assert_eq!(count(&store, "SELECT count(*) FROM records").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_postgresql_cannot_hold_is_refused_whole() {
    let (store, _guard) = fresh_pg().await;
    let mut r = record(3);
    r.ssh_keys = "# a NUL \0 in a comment\nssh-ed25519 AAAA x".into();
    let err = store
        .update(3, move |_| Decision::Put(r))
        .await
        .expect_err("NUL refused");
    assert!(err.to_string().contains("NUL"), "{err}");
    assert_eq!(store.get(3).await.expect("get"), None);
    assert!(!store.upload_path(3).parent().expect("dir").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_the_start() {
    let dir = tempfile::tempdir().expect("data dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // Nothing listens on the port once the probe is closed.
    let options = PgStoreOptions {
        acquire_timeout: Duration::from_secs(2),
        ..PgStoreOptions::default()
    };
    let url = format!("postgres://u:secret-password@127.0.0.1:{port}/db");
    let err = PgStore::connect_with(&url, dir.path(), options)
        .await
        .err()
        .expect("no server");
    assert!(!err.to_string().contains("secret-password"), "{err}");
    let bad = PgStore::connect("postgres://u@127.0.0.1:notaport/db", dir.path()).await;
    assert!(bad.is_err());
}

/// Upload leases between two nodes: one holder at a time, fences that change with every
/// acquisition, a lapsed lease free for the other node.
#[tokio::test]
async fn leases_have_one_holder_and_lapse() {
    use sftpgate::store::postgres::PgLeases;
    use sftpgate::store::LeaseStore;
    let (store, _keep) = fresh_pg().await;
    let leases = PgLeases::new(store.pool().clone());
    let ttl = Duration::from_secs(30);
    let f1 = leases.acquire(7, "a", ttl).await.unwrap().expect("free");
    assert_eq!(leases.acquire(7, "b", ttl).await.unwrap(), None);
    assert!(leases.held_elsewhere(7, "b").await.unwrap());
    assert!(!leases.held_elsewhere(7, "a").await.unwrap());
    assert_eq!(
        leases.renew("a", &[(7, f1)], ttl).await.unwrap(),
        vec![(7, true)]
    );
    // Another request is independent; a wrong fence renews nothing.
    let other = leases.acquire(8, "b", ttl).await.unwrap().expect("free");
    assert_eq!(
        leases
            .renew("a", &[(7, f1 + 1000), (8, other)], ttl)
            .await
            .unwrap(),
        vec![(7, false), (8, false)]
    );
    leases.release(7, "a", f1).await.unwrap();
    let f2 = leases
        .acquire(7, "b", ttl)
        .await
        .unwrap()
        .expect("released");
    assert!(f2 > f1);
    // The old holder's late renewal and release touch nothing.
    assert_eq!(
        leases.renew("a", &[(7, f1)], ttl).await.unwrap(),
        vec![(7, false)]
    );
    leases.release(7, "a", f1).await.unwrap();
    assert!(leases.held_elsewhere(7, "a").await.unwrap());
    // A lease not renewed lapses, and the other node takes it.
    let short = Duration::from_millis(300);
    leases.acquire(9, "a", short).await.unwrap().expect("free");
    assert_eq!(leases.acquire(9, "b", ttl).await.unwrap(), None);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if leases.acquire(9, "b", ttl).await.unwrap().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each node's live sessions reach the others in one exchange, with its name; a node never
/// gets its own back, and two processes under one name are kept apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_exchange_their_live_sessions() {
    let (a, (db, dir)) = fresh_pg().await;
    let b = PgStore::connect(&db.url, dir.path()).await.expect("b");
    let mine = |id, n: usize| RequestSessions {
        request_id: id,
        sessions: n,
        peers: (0..n).map(|i| format!("127.0.0.1:{}", 4000 + i)).collect(),
    };
    let big = u64::MAX;
    assert_eq!(
        a.exchange_sessions("gw-a", &[mine(big, 2)])
            .await
            .expect("a"),
        []
    );
    let seen = b.exchange_sessions("gw-b", &[mine(7, 1)]).await.expect("b");
    assert_eq!(
        seen,
        [NodeSessions {
            node: "gw-a".into(),
            requests: vec![mine(big, 2)],
        }]
    );
    // One name, two processes: both are kept.
    let seen = a.exchange_sessions("gw-b", &[]).await.expect("a again");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].requests, [mine(7, 1)]);
    assert!(a.health().await.is_ok());
}

/// Two nodes recording the same part of one upload at once, round after round: the
/// database lets exactly one of them in each time, and the parts stay contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_racing_for_a_part_one_wins() {
    use sftpgate::store::{MultipartStore, Object, Part};
    let (a, (db, dir)) = fresh_pg().await;
    let b = PgStore::connect(&db.url, dir.path()).await.expect("node b");
    put(&a, record(21)).await;
    a.begin_multipart(21, Object::Upload, "k", "u")
        .await
        .expect("begin");
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    for n in 1..=20u32 {
        // Each node's part has its own ETag, so the winner shows in what is recorded.
        let race = |node: std::sync::Arc<PgStore>, etag: &'static str| {
            tokio::spawn(async move {
                let part = Part {
                    number: n,
                    etag: format!("\"{etag}-{n}\""),
                    size: 16 << 20,
                };
                node.add_part(21, Object::Upload, "u", &part)
                    .await
                    .expect("add")
            })
        };
        let (ta, tb) = (race(a.clone(), "a"), race(b.clone(), "b"));
        let (won_a, won_b) = (ta.await.expect("a"), tb.await.expect("b"));
        assert!(won_a ^ won_b, "part {n}: a {won_a}, b {won_b}");
        let recorded = b
            .multipart(21, Object::Upload)
            .await
            .expect("read")
            .expect("current");
        let winner = if won_a { "a" } else { "b" };
        assert_eq!(recorded.parts.len(), n as usize);
        assert_eq!(
            recorded.parts[n as usize - 1].etag,
            format!("\"{winner}-{n}\"")
        );
    }
    let count: i32 = sqlx::query_scalar(
        "SELECT parts FROM multipart_uploads WHERE request_id = 21 AND object = 'upload'",
    )
    .fetch_one(a.pool())
    .await
    .expect("count");
    assert_eq!(count, 20);
}

/// The rows an operator sees: one upload row per request and object with its part count,
/// one row per part; a replaced upload's parts go with it, and a delete of the request
/// leaves no row in either table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_live_in_tables() {
    use sftpgate::store::{MultipartStore, Object, Part};
    let (store, _guard) = fresh_pg().await;
    put(&store, record(30)).await;
    let part = |number| Part {
        number,
        etag: format!("\"e{number}\""),
        size: 100 + u64::from(number),
    };
    store
        .begin_multipart(30, Object::Upload, "pfx/30/upload", "first")
        .await
        .expect("begin");
    for n in 1..=2 {
        assert!(store
            .add_part(30, Object::Upload, "first", &part(n))
            .await
            .expect("add"));
    }
    let uploads: Vec<(String, String, String, i32)> = rows(
        &store,
        "SELECT object, upload_id, key, parts FROM multipart_uploads WHERE request_id = 30",
    )
    .await;
    assert_eq!(
        uploads,
        [(
            "upload".to_string(),
            "first".to_string(),
            "pfx/30/upload".to_string(),
            2
        )]
    );
    let parts: Vec<(String, i32, String, i64)> = rows(
        &store,
        "SELECT upload_id, number, etag, size FROM multipart_parts ORDER BY number",
    )
    .await;
    assert_eq!(
        parts,
        [
            ("first".to_string(), 1, "\"e1\"".to_string(), 101),
            ("first".to_string(), 2, "\"e2\"".to_string(), 102)
        ]
    );
    store
        .begin_multipart(30, Object::Upload, "pfx/30/upload", "second")
        .await
        .expect("replace");
    assert_eq!(
        count(&store, "SELECT count(*) FROM multipart_parts").await,
        0
    );
    assert!(store
        .add_part(30, Object::Upload, "second", &part(1))
        .await
        .expect("add"));
    store
        .begin_multipart(30, Object::Upgraded, "pfx/30/upgraded", "third")
        .await
        .expect("begin");
    store
        .update(30, |_| Decision::Delete { purge: true })
        .await
        .expect("purge");
    assert_eq!(
        count(&store, "SELECT count(*) FROM multipart_uploads").await,
        0
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM multipart_parts").await,
        0
    );
}
