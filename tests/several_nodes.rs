//! Two gateway nodes on one PostgreSQL store (tests/common/postgres.rs), one data
//! directory and one host-key directory, as nodes on a shared filesystem run: what one
//! node provisions, changes or revokes holds on the other at once, and an upload cut off
//! by a node's death resumes byte-exactly through the other.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::postgres::database;
use common::*;

/// Two nodes on a fresh database; the second shares the first's directories. Short
/// leases: a killed node's upload is free again within 3 s (the default is 15 s).
fn two_nodes() -> (Gateway, Gateway, common::postgres::TestDb) {
    let db = database();
    let flags = [
        "--store",
        &db.url,
        "--lease-ttl",
        "3s",
        "--lease-wait",
        "5s",
    ];
    let a = Gateway::start_with(&flags);
    let b = Gateway::start_node(&a, &flags);
    (a, b, db)
}

fn upload_size(g: &Gateway, id: u64) -> u64 {
    std::fs::metadata(g.upload_path(id)).map_or(0, |m| m.len())
}

/// The customer's `request_sftp_access` through `g`, with `keys` as the keys file.
fn request_access(g: &Gateway, id: u64, keys: &std::path::Path) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-F"])
        .arg(format!("ssh_keys=@{}", keys.display()))
        .arg(format!(
            "http://{}/database/v1/request_sftp_access?request={id}&key=secret-{id}",
            g.admin
        ))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
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

#[test]
fn a_cancel_through_one_node_ends_a_session_on_the_other_within_2_s() {
    let (a, b, _db) = two_nodes();
    let work = a.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    a.provision(2, "db.dump", &key);
    let (child, stdin) = b.spawn_sftp("user_2", &key, &[], &work, "ls\n");
    assert!(wait_until(Duration::from_secs(10), || b.sessions(2) == 1));
    let cancelled = Instant::now();
    let (code, json) = a.set_state(2, "cancelled");
    assert_eq!(code, 200, "{json}");
    assert!(
        wait_until(Duration::from_secs(2), || b.sessions(2) == 0),
        "the session on the other node outlived the cancel by {:?}",
        cancelled.elapsed()
    );
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
    assert!(wait_until(Duration::from_secs(30), || upload_size(&a, 4)
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
    assert!(wait_until(Duration::from_secs(30), || upload_size(&a, 6) > 0));
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
