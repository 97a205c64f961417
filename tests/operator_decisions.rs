//! What the operator decided sticks, whatever customers do: an operator's expiry is a
//! ceiling for `request_sftp_access`, a cancel or a delete is not undone by customer calls
//! racing it, a deleted request hands nothing to the next one with its id, strangers'
//! wrong keys cannot lock an owner out, and the files on disk are private whatever the
//! umask.
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// Calls `request_sftp_access` for request `id` from the local address `source`.
fn access_from(g: &Gateway, source: &str, id: u64, key: &str, keys: &Path) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--interface", source, "-X", "POST", "-F"])
        .arg(format!("ssh_keys=@{}", keys.display()))
        .arg(format!(
            "http://{}/database/v1/request_sftp_access?request={id}&key={key}",
            g.admin
        ))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", text(&out.stdout), text(&out.stderr)))
}

fn keys_file(g: &Gateway, key: &ClientKey) -> std::path::PathBuf {
    let p = g.dir.path().join(format!("keys-{}", rand_u64()));
    std::fs::write(&p, key.public()).unwrap();
    p
}

fn at(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap()
}

fn parse(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap_or_else(|| panic!("{v}")), &Rfc3339).unwrap()
}

fn set_expiry(g: &Gateway, id: u64, t: &str) {
    let (code, v) = g.api(
        "PUT",
        &format!("/v1/requests/{id}"),
        Some(&json!({"expires_at": t})),
    );
    assert_eq!(code, 200, "{v}");
}

#[test]
fn the_operators_expiry_is_a_ceiling_for_the_customer() {
    let g = Gateway::start_with(&["--access-ttl", "1h"]);
    let work = g.dir.path();
    let key = ClientKey::new(work, "c");
    let keys = keys_file(&g, &key);
    g.provision(5, "db.dump", &key);
    let record = || std::fs::read(g.data().join("requests/5/request.json")).unwrap();

    // The operator closed access: the customer's right key does not reopen it.
    let past = at(OffsetDateTime::now_utc() - Duration::hours(1));
    set_expiry(&g, 5, &past);
    let before = record();
    let v = access_from(&g, "127.0.0.1", 5, "secret-5", &keys);
    assert_eq!(reasons(&v), ["ACCESS:EXPIRED"], "{v}");
    assert_eq!(v["failures"][0]["value"], past.as_str());
    assert_eq!(record(), before, "a refused call changed the record");
    let shown = g.api("GET", "/v1/requests/5", None).1;
    assert_eq!(shown["request"]["expires_at"], past.as_str());
    assert_failed_with(
        &g.sftp("user_5", &key, "ls\n", work),
        "Permission denied (publickey)",
    );

    // A ceiling sooner than the TTL: the customer gets up to the ceiling.
    let soon = at(OffsetDateTime::now_utc() + Duration::minutes(10));
    set_expiry(&g, 5, &soon);
    let v = access_from(&g, "127.0.0.1", 5, "secret-5", &keys);
    assert_eq!(reasons(&v), Vec::<String>::new(), "{v}");
    assert_eq!(
        parse(&v["request"]["expires_at"]),
        parse(&json!(soon.as_str()))
    );
    let shown = g.api("GET", "/v1/requests/5", None).1;
    assert_eq!(shown["request"]["expires_at"], soon.as_str());
    let out = g.sftp("user_5", &key, "ls\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A ceiling beyond the TTL: the customer gets the TTL, and the ceiling stays.
    let later = at(OffsetDateTime::now_utc() + Duration::hours(48));
    set_expiry(&g, 5, &later);
    let from = OffsetDateTime::now_utc();
    let v = access_from(&g, "127.0.0.1", 5, "secret-5", &keys);
    let to = OffsetDateTime::now_utc();
    assert_eq!(reasons(&v), Vec::<String>::new(), "{v}");
    let granted = parse(&v["request"]["expires_at"]);
    assert!(
        granted >= from + Duration::hours(1) - Duration::seconds(1)
            && granted <= to + Duration::hours(1),
        "{granted} not an hour after {from}"
    );
    let shown = g.api("GET", "/v1/requests/5", None).1;
    assert_eq!(shown["request"]["operator_expires_at"], later.as_str());
    // Which the customer cannot push past either: the ceiling holds over the next call.
    set_expiry(&g, 5, &past);
    let v = access_from(&g, "127.0.0.1", 5, "secret-5", &keys);
    assert_eq!(reasons(&v), ["ACCESS:EXPIRED"], "{v}");
}

#[test]
fn a_deleted_request_hands_nothing_to_the_next_one() {
    let g = Gateway::start();
    let work = g.dir.path();
    let first = ClientKey::new(work, "first");
    let dump = work.join("db.dump");
    random_file(&dump, 100_000);
    let upgraded = work.join("upgraded");
    random_file(&upgraded, 50_000);
    let upload = |id: u64, key: &ClientKey| {
        let out = g.sftp(&format!("user_{id}"), key, "put db.dump\n", work);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(g.push_upgraded(id, &upgraded), 200);
    };

    // A purge after a delete without purge removes the files it kept.
    g.provision(7, "db.dump", &first);
    upload(7, &first);
    assert_eq!(g.api("DELETE", "/v1/requests/7", None).0, 200);
    assert!(g.upload_path(7).exists());
    let (code, v) = g.api("DELETE", "/v1/requests/7?purge=true", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["request"], Value::Null);
    assert!(!g.data().join("requests/7").exists());
    let (code, v) = g.api("DELETE", "/v1/requests/7?purge=true", None);
    assert_eq!((code, reasons(&v)), (404, vec!["REQUEST:NOT_FOUND".into()]));

    // A new request under a used id, for another customer, starts empty.
    g.provision(8, "db.dump", &first);
    upload(8, &first);
    assert_eq!(g.api("DELETE", "/v1/requests/8", None).0, 200);
    let second = ClientKey::new(work, "second");
    g.provision(8, "db.dump", &second);
    let r = g.api("GET", "/v1/requests/8", None).1["request"].clone();
    assert_eq!(
        (&r["filesize"], &r["upgraded_filesize"]),
        (&json!(0), &Value::Null),
        "{r}"
    );
    let (code, v) = g.set_state(8, "done");
    assert_eq!((code, reasons(&v)), (409, vec!["UPGRADED:MISSING".into()]));
    let (code, v) = g.api("GET", "/v1/requests/8/original", None);
    assert_eq!((code, reasons(&v)), (404, vec!["ORIGINAL:MISSING".into()]));
    let fresh = work.join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let out = g.sftp("user_8", &second, "ls -l\nget db.dump got\n", &fresh);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(fresh.join("got")).unwrap(), b"");
}

#[test]
fn strangers_cannot_lock_the_owner_out() {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "owner");
    let keys = keys_file(&g, &key);
    g.provision(21, "db.dump", &key);

    // A stranger at 127.0.0.1 guesses: five wrong keys, then that address is refused.
    for _ in 0..5 {
        let v = access_from(&g, "127.0.0.1", 21, "wrong", &keys);
        assert_eq!(reasons(&v), ["KEY:INVALID"], "{v}");
    }
    let v = access_from(&g, "127.0.0.1", 21, "secret-21", &keys);
    assert_eq!(reasons(&v), ["KEY:THROTTLED"], "{v}");
    // The owner, from another address, gets in at once.
    let v = access_from(&g, "127.0.0.2", 21, "secret-21", &keys);
    assert_eq!(reasons(&v), Vec::<String>::new(), "{v}");
    assert_eq!(v["request"]["sftp_user"], "user_21");

    // One source guessing across many requests is capped as a whole.
    g.provision(22, "db.dump", &key);
    for id in 1000..1020 {
        let v = access_from(&g, "127.0.0.3", id, "wrong", &keys);
        assert_eq!(reasons(&v), ["KEY:INVALID"], "{v}");
    }
    let v = access_from(&g, "127.0.0.3", 22, "secret-22", &keys);
    assert_eq!(reasons(&v), ["KEY:THROTTLED"], "{v}");
    assert!(
        v["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("from your address"),
        "{v}"
    );
    let v = access_from(&g, "127.0.0.4", 22, "secret-22", &keys);
    assert_eq!(reasons(&v), Vec::<String>::new(), "{v}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A gateway on a fresh data directory, started under umask 022, with request 31 holding
/// an upload and an upgraded file.
fn under_umask_022() -> (Gateway, ClientKey) {
    let mut g = Gateway::start();
    g.stop("TERM");
    std::fs::remove_dir_all(g.data()).unwrap();
    g.umask = Some(0o022);
    g.launch(&[]);
    let work = g.dir.path();
    let key = ClientKey::new(work, "k");
    g.provision(31, "db.dump", &key);
    random_file(&work.join("db.dump"), 10_000);
    let out = g.sftp("user_31", &key, "put db.dump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    random_file(&work.join("up"), 10_000);
    assert_eq!(g.push_upgraded(31, &work.join("up")), 200);
    (g, key)
}

#[test]
fn files_are_private_whatever_the_umask() {
    let (mut g, _key) = under_umask_022();
    let data = g.data();
    let req = data.join("requests/31");
    let modes = |g: &Gateway| {
        let d = g.data();
        [
            mode(&d),
            mode(&d.join("requests")),
            mode(&req),
            mode(&req.join("request.json")),
            mode(&req.join("upgraded")),
        ]
    };
    assert_eq!(modes(&g), [0o700, 0o700, 0o700, 0o600, 0o600]);

    // Ones an older version left readable are made private at start.
    for (p, m) in [
        (data.clone(), 0o755),
        (data.join("requests"), 0o755),
        (req.clone(), 0o755),
        (req.join("request.json"), 0o644),
        (req.join("upgraded"), 0o644),
        (req.join("upload"), 0o644),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    g.stop("TERM");
    g.launch(&[]);
    assert_eq!(modes(&g), [0o700, 0o700, 0o700, 0o600, 0o600]);
    assert_eq!(mode(&req.join("upload")), 0o600);

    // The generated admin token too (the harness passes the token in the environment, so
    // this start goes without it).
    let fresh = g.dir.path().join("fresh-data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&fresh)
        .arg("--host-key-dir")
        .arg(g.dir.path().join("hostkeys"))
        .env_remove("SFTPGATE_ADMIN_TOKEN")
        .env("SFTPGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("\"admin\""), "no readiness line: {line:?}");
    assert_eq!(
        (mode(&fresh), mode(&fresh.join("admin.token"))),
        (0o700, 0o600)
    );
}

/// The upload is created by the SFTP layer (`src/sftp/local.rs`), which opens it with
/// mode 0600 too.
#[test]
fn the_upload_is_private_whatever_the_umask() {
    let (g, _key) = under_umask_022();
    assert_eq!(mode(&g.upload_path(31)), 0o600);
}

/// Customer threads calling `request_sftp_access` at once, and rounds of the race.
const HAMMERS: usize = 4;
const ROUNDS: u64 = 24;

/// An authorized_keys file near the size limits (100 keys, the most allowed, each with a
/// long comment: some 60 KiB), so that each call spends a while between reading the
/// record and writing it.
fn large_keys_file(g: &Gateway, key: &ClientKey) -> std::path::PathBuf {
    let line = format!("{} {}\n", key.public().trim(), "c".repeat(500));
    let p = g.dir.path().join("large-keys");
    std::fs::write(&p, line.repeat(100)).unwrap();
    p
}

/// Runs `ROUNDS` rounds in which `HAMMERS` customers call `request_sftp_access` on a fresh
/// draft request while the operator does `decide` to it once some calls have been granted;
/// each customer then makes two more calls, so that every call that was in flight when
/// `decide` was answered has been answered too. `stuck` tells whether the decision is
/// still what the operator sees afterwards. Returns the rounds where it was not.
fn race_customers_against(
    base_id: u64,
    decide: impl Fn(&Gateway, u64),
    stuck: impl Fn(&Gateway, u64) -> Result<(), String>,
) -> Vec<String> {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "c");
    let keys = large_keys_file(&g, &key);
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let id = base_id + round;
        g.provision(id, "db.dump", &key);
        let granted = AtomicUsize::new(0);
        let decided = AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..HAMMERS {
                let (g, keys, granted, decided) = (&g, &keys, &granted, &decided);
                // A source of its own per customer and round: calls after a delete count
                // as wrong keys, and must not throttle later rounds.
                let source = format!("127.{}.{}.{}", base_id % 200, round + 1, t + 1);
                s.spawn(move || {
                    let mut after = 0;
                    while after < 2 {
                        if decided.load(Ordering::SeqCst) {
                            after += 1;
                        }
                        let v = access_from(g, &source, id, &format!("secret-{id}"), keys);
                        if reasons(&v).is_empty() {
                            granted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
            assert!(
                wait_until(std::time::Duration::from_secs(20), || granted
                    .load(Ordering::SeqCst)
                    >= HAMMERS),
                "customers got no access in round {round}"
            );
            decide(&g, id);
            decided.store(true, Ordering::SeqCst);
        });
        if let Err(e) = stuck(&g, id) {
            lost.push(format!("round {round}: {e}"));
        }
    }
    lost
}

#[test]
fn a_cancel_sticks_while_customers_ask_for_access() {
    let lost = race_customers_against(
        100,
        |g, id| {
            let (code, v) = g.set_state(id, "cancelled");
            assert_eq!(code, 200, "{v}");
        },
        |g, id| {
            let (code, v) = g.api("GET", &format!("/v1/requests/{id}"), None);
            match (code, v["request"]["state"].as_str()) {
                (200, Some("cancelled")) => Ok(()),
                _ => Err(format!("{code} {}", v["request"]["state"])),
            }
        },
    );
    assert!(
        lost.is_empty(),
        "the cancel was lost in {} of {ROUNDS} rounds: {lost:?}",
        lost.len()
    );
}

#[test]
fn a_delete_sticks_while_customers_ask_for_access() {
    let lost = race_customers_against(
        150,
        |g, id| {
            let (code, v) = g.api("DELETE", &format!("/v1/requests/{id}"), None);
            assert_eq!(code, 200, "{v}");
        },
        |g, id| {
            let (code, v) = g.api("GET", &format!("/v1/requests/{id}"), None);
            match code {
                404 => Ok(()),
                _ => Err(format!("{code} {}", v["request"]["state"])),
            }
        },
    );
    assert!(
        lost.is_empty(),
        "the delete was undone in {} of {ROUNDS} rounds: {lost:?}",
        lost.len()
    );
}
