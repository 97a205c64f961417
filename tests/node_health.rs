//! Nodes on a shared PostgreSQL store, seen from the outside: `/healthz` drains a node
//! whose database is unreachable (logins then fail closed, live sessions go on, and all
//! recovers without a restart), the operator API shows the live sessions of every node
//! with the node's name, and the metrics page counts store failures and change-feed
//! reconnects.

mod common;

use std::io::Write;
use std::time::Duration;

use common::postgres::{database, Cluster};
use common::*;

fn healthz(g: &Gateway) -> (u16, serde_json::Value) {
    g.api_raw("GET", "/healthz", None, None)
}

#[test]
fn while_the_database_is_down_the_node_drains_refuses_logins_and_keeps_live_sessions() {
    let cluster = Cluster::private();
    let db = cluster.database();
    let g = Gateway::start_with(&["--store", &db.url]);
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    g.provision(1, "db.dump", &key);
    const SIZE: u64 = 1024 * 1024;
    random_file(&work.join("db.dump"), SIZE as usize);
    assert_eq!(healthz(&g).0, 200);
    // A live session with an upload under way (about 4 s at 2000 Kbit/s): its write handle
    // holds the upload's lease, which outlives the database for most of --lease-ttl.
    let (child, mut stdin) = g.spawn_sftp("user_1", &key, &["-l", "2000"], &work, "put db.dump\n");
    assert!(wait_until(Duration::from_secs(10), || g.upload_size(1) > 0));
    let reconnects = g.metric("store_feed_reconnects_total");

    cluster.stop();
    assert!(
        wait_until(Duration::from_secs(10), || healthz(&g).0 == 503),
        "/healthz kept answering 200 with the database stopped"
    );
    let (_, body) = healthz(&g);
    assert_eq!(reasons(&body), ["STORAGE:UNAVAILABLE"], "{body}");
    let refused = std::time::Instant::now();
    assert_failed_with(
        &g.sftp("user_1", &key, "ls\n", &work),
        "Permission denied (publickey)",
    );
    // Refused by a probe of the database known to be down (2 s at most), not after the
    // pool's 10 s wait for a connection.
    assert!(
        refused.elapsed() < Duration::from_secs(8),
        "the login was refused only after {:?}",
        refused.elapsed()
    );
    // The session that was open goes on: its upload ends whole, under its lease.
    assert!(
        wait_until(Duration::from_secs(20), || g.upload_size(1) == SIZE),
        "the live session stopped working with the database"
    );
    // The metrics page still answers, and counts the failures.
    assert!(g.metric("store_errors_total{operation=\"read\"}") > 0);
    assert!(g.metric("store_errors_total{operation=\"health\"}") > 0);

    cluster.start_again();
    assert!(
        wait_until(Duration::from_secs(20), || healthz(&g).0 == 200),
        "/healthz did not recover"
    );
    let out = g.sftp("user_1", &key, "ls\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, json) = g.api("GET", "/v1/requests/1", None);
    assert_eq!(code, 200, "{json}");
    assert_eq!(json["request"]["state"], "draft");
    assert_eq!(json["request"]["filesize"], SIZE);
    assert_eq!(sha256(&g.upload_path(1)), sha256(&work.join("db.dump")));
    assert!(
        wait_until(Duration::from_secs(20), || g
            .metric("store_feed_reconnects_total")
            > reconnects),
        "the change feed's reconnect was not counted"
    );
    writeln!(stdin, "ls").unwrap();
    drop(stdin);
    let out = wait_output(child, Duration::from_secs(20));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn live_sessions_on_another_node_show_in_the_api_with_its_name() {
    let db = database();
    let a = Gateway::start_with(&["--store", &db.url, "--node-name", "gw-a"]);
    let b = Gateway::start_node(&a, &["--store", &db.url, "--node-name", "gw-b"]);
    let work = a.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    a.provision(5, "db.dump", &key);
    let show = |g: &Gateway| a_request(g, 5);
    assert_eq!(show(&a)["nodes"], serde_json::json!([]));

    let (child, stdin) = b.spawn_sftp("user_5", &key, &[], &work, "ls\n");
    assert!(wait_until(Duration::from_secs(10), || b.sessions(5) == 1));
    let on_b = show(&b);
    assert_eq!(on_b["nodes"][0]["node"], "gw-b", "{on_b}");
    assert!(
        wait_until(Duration::from_secs(10), || show(&a)["sessions"] == 1),
        "the session on the other node never showed: {}",
        show(&a)
    );
    let on_a = show(&a);
    assert_eq!(on_a["nodes"].as_array().map(Vec::len), Some(1), "{on_a}");
    assert_eq!(on_a["nodes"][0]["node"], "gw-b", "{on_a}");
    assert_eq!(on_a["nodes"][0]["sessions"], 1, "{on_a}");
    assert_eq!(on_a["peers"], on_b["peers"], "{on_a}");
    assert!(on_a["peers"][0]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    // The list shows it too.
    let (_, all) = a.api("GET", "/v1/requests", None);
    assert_eq!(all["requests"][0]["sessions"], 1, "{all}");

    drop(stdin);
    let out = wait_output(child, Duration::from_secs(20));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        wait_until(Duration::from_secs(10), || show(&a)["sessions"] == 0),
        "the ended session still shows: {}",
        show(&a)
    );
    assert_eq!(show(&a)["nodes"], serde_json::json!([]));
    assert_eq!(show(&a)["peers"], serde_json::json!([]));
}

fn a_request(g: &Gateway, id: u64) -> serde_json::Value {
    let (code, json) = g.api("GET", &format!("/v1/requests/{id}"), None);
    assert_eq!(code, 200, "{json}");
    json["request"].clone()
}
