//! Two gateway nodes on one PostgreSQL store (tests/common/postgres.rs), one data
//! directory and one host-key directory, as nodes on a shared filesystem run: what one
//! node provisions, changes or revokes holds on the other at once, and an upload cut off
//! by a node's death resumes byte-exactly through the other, also behind HAProxy with
//! many clients at once; a PostgreSQL restart under both nodes loses no record, and logins
//! and the change feed work again within seconds.
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::haproxy::{Balance, Haproxy};
use common::postgres::{database, node_flags, Cluster};
use common::*;

/// Two nodes on a fresh database; the second shares the first's directories, with short
/// leases ([`node_flags`]).
fn two_nodes() -> (Gateway, Gateway, common::postgres::TestDb) {
    let db = database();
    let flags = node_flags(&db);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = Gateway::start_with(&flags);
    let b = Gateway::start_node(&a, &flags);
    (a, b, db)
}

/// The customer's `request_sftp_access` through `g`, with `keys` as the keys file.
fn request_access(g: &Gateway, id: u64, keys: &std::path::Path) -> serde_json::Value {
    g.request_sftp_access(
        &[("ssh_keys", &format!("@{}", keys.display()))],
        &format!("?request={id}&key=secret-{id}"),
    )
}

#[test]
fn provisioned_on_one_node_uploaded_through_the_other() {
    let (a, b, _db) = two_nodes();
    let work = a.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    a.provision(1, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 4 * 1024 * 1024);
    let out = b.sftp("user_1", &key, "put db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&a.upload_path(1)), sha256(&src));
    // Both nodes show the same record, with the upload's size.
    let (_, on_a) = a.api("GET", "/v1/requests/1", None);
    let (_, on_b) = b.api("GET", "/v1/requests/1", None);
    assert_eq!(on_a["request"]["filesize"], 4 * 1024 * 1024);
    assert_eq!(on_a["request"]["state"], on_b["request"]["state"]);
}

/// Cancels request `id` through `a` and asserts its session on `b` ends within `limit`;
/// returns how long that took.
fn cancel_ends_session_on(a: &Gateway, b: &Gateway, id: u64, limit: Duration) -> Duration {
    let cancelled = Instant::now();
    let (code, json) = a.set_state(id, "cancelled");
    assert_eq!(code, 200, "{json}");
    assert!(
        wait_until(limit, || b.sessions(id) == 0),
        "the session on the other node outlived the cancel by {:?}",
        cancelled.elapsed()
    );
    cancelled.elapsed()
}

#[test]
fn a_cancel_through_one_node_ends_a_session_on_the_other_within_2_s() {
    let (a, b, _db) = two_nodes();
    let work = a.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    a.provision(2, "db.dump", &key);
    let (child, stdin) = b.spawn_sftp("user_2", &key, &[], &work, "ls\n");
    assert!(wait_until(Duration::from_secs(10), || b.sessions(2) == 1));
    cancel_ends_session_on(&a, &b, 2, Duration::from_secs(2));
    b.assert_closed_by_server(child, stdin, 1);
    assert_failed_with(
        &b.sftp("user_2", &key, "ls\n", &work),
        "Permission denied (publickey)",
    );
}

#[test]
fn keys_replaced_through_one_node_refuse_the_old_key_on_the_other_at_once() {
    let (a, b, _db) = two_nodes();
    let work = a.dir.path().to_path_buf();
    let old = ClientKey::new(&work, "old");
    let new = ClientKey::new(&work, "new");
    a.provision(3, "db.dump", &old);
    let out = a.sftp("user_3", &old, "ls\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let keys = work.join("new.keys");
    std::fs::write(&keys, new.public()).unwrap();
    let answer = request_access(&b, 3, &keys);
    assert_eq!(reasons(&answer), Vec::<String>::new(), "{answer}");
    assert_failed_with(
        &a.sftp("user_3", &old, "ls\n", &work),
        "Permission denied (publickey)",
    );
    let out = a.sftp("user_3", &new, "ls\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_node_killed_mid_upload_and_put_a_through_the_other_is_byte_exact() {
    let (a, mut b, _db) = two_nodes();
    let work = a.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    a.provision(4, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 24 * 1024 * 1024);
    let (child, _stdin) = b.spawn_sftp("user_4", &key, &["-l", "60000"], &work, "put db.dump\n");
    assert!(wait_until(Duration::from_secs(30), || a.upload_size(4)
        > 2 * 1024 * 1024));
    assert_eq!(b.stop("KILL"), None);
    let _ = wait_output(child, Duration::from_secs(20));
    assert!(is_prefix(&a.upload_path(4), &src), "not a prefix");
    let out = a.sftp("user_4", &key, "put -a db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&a.upload_path(4)), sha256(&src));
}

#[test]
fn a_node_with_another_host_key_refuses_to_start() {
    let (a, _b, db) = two_nodes();
    let own = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--store", &db.url, "--node-name", "gw-stray"])
        .arg("--data-dir")
        .arg(a.data())
        .arg("--host-key-dir")
        .arg(own.path().join("hostkeys"))
        .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("refusing to start")
            && err.contains("every node must have the same host keys"),
        "{err}"
    );
    // The nodes that share the key still start.
    let c = Gateway::start_node(&a, &["--store", &db.url]);
    assert!(c.ssh_port != 0);
}

#[test]
fn a_second_writer_on_another_node_gets_a_clear_failure_and_the_first_upload_is_intact() {
    let (a, b, _db) = two_nodes();
    let work = a.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    a.provision(6, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 8 * 1024 * 1024);
    // A slow upload through A holds the lease...
    let (first, first_in) = a.spawn_sftp("user_6", &key, &["-l", "8000"], &work, "put db.dump\n");
    assert!(wait_until(Duration::from_secs(30), || a.upload_size(6) > 0));
    // ...so a write through B waits out --lease-wait (5 s) and is refused.
    let started = Instant::now();
    let out = b.sftp("user_6", &key, "put -a db.dump\n", &work);
    assert!(!out.status.success(), "a second writer got in");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        b.log()
            .contains("being written through another gateway node"),
        "{}",
        b.log()
    );
    drop(first_in);
    let out = wait_output(first, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&a.upload_path(6)), sha256(&src));
}

/// `sftp -b -` through the balancer at `port` as `user_{id}`, from the local address
/// 127.0.1.`id` (each client a source of its own, as behind a real balancer).
fn sftp_via(port: u16, id: u64, key: &ClientKey, extra: &[&str]) -> Command {
    sftp_from(
        &format!("127.0.1.{id}"),
        port,
        &format!("user_{id}"),
        key,
        extra,
    )
}

const CLIENTS: u64 = 12;
const CLIENT_MB: usize = 4;

/// Issue 13: HAProxy (TCP mode, `send-proxy-v2`, round robin, health checks) in front of
/// two nodes on one database and shared directories; 12 throttled uploads through it, one
/// node SIGKILLed once all are under way; every client whose upload was cut off retries
/// `put -a` through the balancer until it succeeds, and every file ends byte-identical.
#[test]
fn behind_haproxy_12_uploads_a_node_sigkilled_mid_way_put_a_through_the_balancer_byte_exact() {
    let db = database();
    let args = [
        "--store",
        &db.url,
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.1/32",
        // The killed node's leases lapse within 3 s (the default is 15 s).
        "--lease-ttl",
        "3s",
        "--lease-wait",
        "5s",
    ];
    let a = Gateway::start_with(&args);
    let mut b = Gateway::start_node(&a, &args);
    let work = a.dir.path().to_path_buf();
    // A dead node's connections are refused at once: `redispatch` sends the retry of a
    // refused connect to the other server, and one failed check (500 ms) marks it down.
    let lb = Haproxy::start_with(
        &work,
        &[a.ssh_port, b.ssh_port],
        &Balance {
            backend: "balance roundrobin\noption redispatch\nretries 3",
            server: "check inter 500ms fall 1 rise 1",
        },
    );
    let clients: Vec<(u64, ClientKey, PathBuf)> = (1..=CLIENTS)
        .map(|id| {
            let key = ClientKey::new(&work, &format!("k{id}"));
            a.provision(id, &format!("db{id}.dump"), &key);
            let src = work.join(format!("db{id}.dump"));
            random_file(&src, CLIENT_MB * 1024 * 1024);
            (id, key, src)
        })
        .collect();
    let put = |id: u64, src: &Path, resume: bool| {
        let flag = if resume { "-a " } else { "" };
        format!("put {flag}{} db{id}.dump\n", src.display())
    };

    // 4 MiB at 4000 Kbit/s: about 8 s each, so the kill lands mid-way.
    let started = Instant::now();
    let running: Vec<_> = clients
        .iter()
        .map(|(id, key, src)| {
            spawn_with_input(
                sftp_via(lb.port, *id, key, &["-l", "4000"]),
                &put(*id, src, false),
            )
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || clients
            .iter()
            .all(|(id, _, _)| a.upload_size(*id) >= 256 * 1024)),
        "not every upload got under way: {:?}",
        clients
            .iter()
            .map(|(id, _, _)| a.upload_size(*id))
            .collect::<Vec<_>>()
    );
    let under_way = started.elapsed();
    assert_eq!(b.stop("KILL"), None);
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || lb
            .log()
            .contains("gateways/gw1 is DOWN")),
        "HAProxy did not mark the killed node down"
    );
    let marked_down = killed.elapsed();

    let mut cut_off = Vec::new();
    for ((id, _, src), (child, stdin)) in clients.iter().zip(running) {
        drop(stdin);
        let out = wait_output(child, Duration::from_secs(60));
        if !out.status.success() {
            // What the dead node wrote is what the client sent, from the start.
            assert!(
                is_prefix(&a.upload_path(*id), src),
                "upload {id}: not a prefix"
            );
            assert!(
                a.upload_size(*id) < (CLIENT_MB * 1024 * 1024) as u64,
                "upload {id} failed but is complete: {}",
                text(&out.stderr)
            );
            cut_off.push(*id);
        }
    }
    assert!(
        !cut_off.is_empty(),
        "the kill cut off no upload (all went through the survivor?)"
    );
    assert!(
        cut_off.len() < CLIENTS as usize,
        "every upload was cut off (none went through the survivor?)"
    );

    // Each cut-off client retries `put -a` through the balancer, all at once, a bounded
    // number of rounds.
    let mut pending = cut_off.clone();
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() {
        rounds += 1;
        let retries: Vec<_> = clients
            .iter()
            .filter(|(id, _, _)| pending.contains(id))
            .map(|(id, key, src)| {
                let (child, stdin) =
                    spawn_with_input(sftp_via(lb.port, *id, key, &[]), &put(*id, src, true));
                drop(stdin);
                (*id, child)
            })
            .collect();
        let mut failed = Vec::new();
        for (id, child) in retries {
            let out = wait_output(child, Duration::from_secs(60));
            if !out.status.success() {
                assert!(
                    Instant::now() < deadline && rounds < 20,
                    "upload {id}: put -a still fails after {rounds} tries: {}",
                    text(&out.stderr)
                );
                failed.push(id);
            }
        }
        pending = failed;
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    for (id, _, src) in &clients {
        assert_eq!(sha256(&a.upload_path(*id)), sha256(src), "upload {id}");
    }
    eprintln!(
        "under way after {under_way:?}, marked down {marked_down:?} after the kill, \
         {} of {CLIENTS} cut off, put -a rounds {rounds}, all done after {:?}",
        cut_off.len(),
        started.elapsed()
    );
}

/// The stored fields of request `id` through `g` (not the node's own port, nor what
/// describes its live sessions and writes).
fn record(g: &Gateway, id: u64) -> serde_json::Value {
    let (code, json) = g.api("GET", &format!("/v1/requests/{id}"), None);
    assert_eq!(code, 200, "request {id}: {json}");
    let r = &json["request"];
    let fields = [
        "id",
        "filename",
        "state",
        "filesize",
        "ssh_keys",
        "created_at",
        "updated_at",
        "expires_at",
        "operator_expires_at",
        "shared_file",
        "upgraded_filesize",
    ];
    fields
        .iter()
        .map(|f| (f.to_string(), r[f].clone()))
        .collect()
}

/// Issue 13: PostgreSQL restarted under two nodes: no record is lost, logins work again
/// through both within seconds, a live session goes on, and a cancel made through one node
/// after the restart ends that session on the other (its change feed reconnected).
#[test]
fn postgresql_restarted_under_two_nodes_loses_no_record_and_logins_work_again_within_seconds() {
    let cluster = Cluster::private();
    let db = cluster.database();
    let a = Gateway::start_with(&["--store", &db.url]);
    let b = Gateway::start_node(&a, &["--store", &db.url]);
    let work = a.dir.path().to_path_buf();
    let ids = 1..=6u64;
    let keys: Vec<ClientKey> = ids
        .clone()
        .map(|id| ClientKey::new(&work, &format!("k{id}")))
        .collect();
    for (id, key) in ids.clone().zip(&keys) {
        a.provision(id, "db.dump", key);
    }
    random_file(&work.join("db.dump"), 1024 * 1024);
    let out = b.sftp("user_1", &keys[0], "put db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, json) = a.set_state(4, "cancelled");
    assert_eq!(code, 200, "{json}");
    let before: Vec<_> = ids.clone().map(|id| record(&a, id)).collect();
    assert_eq!(before[0]["filesize"], 1024 * 1024, "{}", before[0]);

    let (child, stdin) = b.spawn_sftp("user_2", &keys[1], &[], &work, "ls\n");
    assert!(wait_until(Duration::from_secs(10), || b.sessions(2) == 1));
    assert_eq!(b.metric("store_feed_reconnects_total"), 0);

    cluster.restart();
    let restarted = Instant::now();
    for (g, id) in [(&a, 3usize), (&b, 5)] {
        assert!(
            wait_until(Duration::from_secs(10), || g
                .sftp(&format!("user_{id}"), &keys[id - 1], "ls\n", &work)
                .status
                .success()),
            "no login within 10 s of the restart: {}",
            g.log()
        );
    }
    let logins_back = restarted.elapsed();
    assert!(
        logins_back < Duration::from_secs(10),
        "logins took {logins_back:?}"
    );
    for g in [&a, &b] {
        let after: Vec<_> = ids.clone().map(|id| record(g, id)).collect();
        assert_eq!(after, before);
    }
    // The session of before the restart went on.
    assert_eq!(b.sessions(2), 1);

    // The periodic re-read comes every 10 s; the feed, reconnected (and counted so: the
    // change below then reaches b through it), is faster.
    assert!(
        wait_until(Duration::from_secs(10), || b
            .metric("store_feed_reconnects_total")
            > 0),
        "node b's change feed did not reconnect"
    );
    let ended = cancel_ends_session_on(&a, &b, 2, Duration::from_secs(3));
    b.assert_closed_by_server(child, stdin, 1);
    eprintln!("logins back {logins_back:?} after the restart; cancel seen in {ended:?}");
}
