//! The operator API over HTTP (curl), and what survives a restart.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

fn reason(v: &serde_json::Value) -> &str {
    v["failures"][0]["reason"].as_str().unwrap_or("")
}

#[test]
fn bad_input_gets_a_clear_failure_and_changes_nothing() {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "k");
    g.provision(5, "db.dump", &key);
    let before = std::fs::read(g.data().join("requests/5/request.json")).unwrap();

    let put = |body: &str| g.api_raw("PUT", "/v1/requests/5", Some(body), Some(TOKEN));
    let cases: Vec<(u16, &str, (u16, serde_json::Value))> = vec![
        (
            401,
            "AUTH:MISSING",
            g.api_raw("GET", "/v1/requests", None, None),
        ),
        (
            401,
            "AUTH:INVALID",
            g.api_raw("GET", "/v1/requests", None, Some("wrong")),
        ),
        (
            401,
            "AUTH:INVALID",
            g.api_raw("DELETE", "/v1/requests/5", None, Some("wrong")),
        ),
        (400, "BODY:INVALID_JSON", put("{\"filename\": ")),
        (400, "BODY:INVALID_JSON", put("{\"unknown_field\": 1}")),
        (
            400,
            "FILENAME:INVALID",
            put("{\"filename\": \"../etc/passwd\"}"),
        ),
        (400, "FILENAME:INVALID", put("{\"filename\": \"\"}")),
        (400, "STATE:INVALID", put("{\"state\": \"exploded\"}")),
        (
            400,
            "EXPIRES_AT:INVALID",
            put("{\"expires_at\": \"tomorrow\"}"),
        ),
        (
            400,
            "SSH_KEYS:INVALID",
            put("{\"ssh_keys\": \"ssh-ed25519 AAAAnotbase64\"}"),
        ),
        (
            400,
            "SSH_KEYS:EMPTY",
            put("{\"ssh_keys\": \"# only a comment\\n\"}"),
        ),
        (
            400,
            "REQUEST:INVALID_ID",
            g.api("GET", "/v1/requests/abc", None),
        ),
        (
            400,
            "REQUEST:INVALID_ID",
            g.api("GET", "/v1/requests/0", None),
        ),
        (
            400,
            "REQUEST:INVALID_ID",
            g.api("GET", "/v1/requests/..%2F..%2Fetc", None),
        ),
        (
            404,
            "REQUEST:NOT_FOUND",
            g.api("GET", "/v1/requests/6", None),
        ),
        (404, "ROUTE:NOT_FOUND", g.api("GET", "/v2/whatever", None)),
        (409, "UPGRADED:MISSING", g.set_state(5, "done")),
        (
            400,
            "FILENAME:REQUIRED",
            g.api("PUT", "/v1/requests/8", Some(&json!({"key": "k"}))),
        ),
        (
            400,
            "KEY:REQUIRED",
            g.api("PUT", "/v1/requests/8", Some(&json!({"filename": "x"}))),
        ),
        (
            400,
            "KEY:INVALID",
            g.api(
                "PUT",
                "/v1/requests/8",
                Some(&json!({"filename": "x", "key": "two words"})),
            ),
        ),
    ];
    for (code, want, (got_code, body)) in &cases {
        assert_eq!((*got_code, reason(body)), (*code, *want), "{body}");
        assert!(
            body["failures"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // A state failure says what was expected.
    let (_, body) = put("{\"state\": \"exploded\"}");
    assert_eq!(body["failures"][0]["value"], "exploded");
    assert_eq!(body["failures"][0]["expected"].as_array().unwrap().len(), 6);
    // Bad key lines are reported one by one with their line numbers.
    let (_, body) = g.api(
        "PUT",
        "/v1/requests/5",
        Some(&json!({"ssh_keys": format!("{}\nnot a key\n\nssh-dss AAAA\n", key.public().trim())})),
    );
    let lines: Vec<_> = body["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 4], "{body}");

    assert_eq!(
        std::fs::read(g.data().join("requests/5/request.json")).unwrap(),
        before
    );
    assert!(!g.data().join("requests/8").exists());
    let log = g.log();
    assert!(
        !log.contains(TOKEN) && !log.contains("secret-5"),
        "a secret reached the log"
    );
}

#[test]
fn provisioning_views_and_the_original_with_ranges() {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "k");
    g.provision(10534, "openchs.70.cdump", &key);
    let (code, body) = g.api("GET", "/v1/requests/10534", None);
    assert_eq!(code, 200);
    let r = &body["request"];
    assert_eq!(r["sftp_user"], "user_10534");
    assert_eq!(r["shared_file"], "openchs.70.cdump");
    assert_eq!(
        r["sample_command"],
        format!("sftp -P {} user_10534@127.0.0.1", g.ssh_port)
    );
    assert_eq!(r["ssh_keys"][0]["comment"], "k");
    assert!(r["ssh_keys"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("SHA256:"));
    assert!(
        r.get("key").is_none() && r.get("key_sha256").is_none(),
        "{r}"
    );
    assert_eq!(
        g.api("GET", "/v1/requests", None).1["requests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let src = g.dir.path().join("openchs.70.cdump");
    random_file(&src, 1_000_000);
    let out = g.sftp("user_10534", &key, "put openchs.70.cdump\n", g.dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        g.api("GET", "/v1/requests/10534", None).1["request"]["filesize"],
        1_000_000
    );

    let fetch = |range: Option<&str>, out: &str| -> String {
        g.original(10534, range, std::path::Path::new(out))
            .to_string()
    };
    let whole = g.dir.path().join("whole");
    assert_eq!(fetch(None, whole.to_str().unwrap()), "200");
    assert_eq!(sha256(&whole), sha256(&src));
    let part = g.dir.path().join("part");
    assert_eq!(fetch(Some("bytes=999990-"), part.to_str().unwrap()), "206");
    assert_eq!(
        std::fs::read(&part).unwrap(),
        std::fs::read(&src).unwrap()[999_990..]
    );
    assert_eq!(fetch(Some("bytes=2000000-"), "/dev/null"), "416");

    // Delete keeps the files unless purged.
    assert_eq!(g.api("DELETE", "/v1/requests/10534", None).0, 200);
    assert!(g.upload_path(10534).exists());
    let (code, v) = g.api("GET", "/v1/requests/10534", None);
    assert_eq!((code, reason(&v)), (404, "REQUEST:NOT_FOUND"), "{v}");
    g.provision(10534, "openchs.70.cdump", &key);
    assert_eq!(
        g.api("DELETE", "/v1/requests/10534?purge=true", None).0,
        200
    );
    assert!(!g.data().join("requests/10534").exists());
}

#[test]
fn restart_keeps_records_data_and_host_key() {
    let mut g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "k");
    g.provision(77, "db.dump", &key);
    let src = g.dir.path().join("db.dump");
    random_file(&src, 2_000_000);
    let out = g.sftp("user_77", &key, "put db.dump\n", g.dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record = g.api("GET", "/v1/requests/77", None).1["request"].clone();
    let host_key = std::fs::read(g.dir.path().join("hostkeys/ssh_host_ed25519_key")).unwrap();

    assert_eq!(g.stop("TERM"), Some(0), "SIGTERM must exit 0: {}", g.log());
    g.launch(&[]);
    let after = g.api("GET", "/v1/requests/77", None).1["request"].clone();
    for field in [
        "filename",
        "state",
        "ssh_keys",
        "filesize",
        "created_at",
        "updated_at",
    ] {
        assert_eq!(after[field], record[field], "{field}");
    }
    assert_eq!(sha256(&g.upload_path(77)), sha256(&src));
    assert_eq!(
        std::fs::read(g.dir.path().join("hostkeys/ssh_host_ed25519_key")).unwrap(),
        host_key
    );
    let out = g.sftp("user_77", &key, "ls -l\n", g.dir.path());
    assert!(
        text(&out.stdout).contains("2000000"),
        "{}",
        text(&out.stdout)
    );

    // A crash between writing the new record and renaming it over the old one leaves
    // the old record, whole.
    assert_eq!(g.stop("TERM"), Some(0));
    g.launch_env(&[], &[("SFTPGATE_CRASH_AT", "record-before-rename")]);
    let _ = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            "--data-binary",
            "{\"state\": \"cancelled\"}",
        ])
        .arg(format!("http://{}/v1/requests/77/state", g.admin))
        .output()
        .unwrap();
    let crashed = g.child.as_mut().unwrap().wait().unwrap();
    assert!(!crashed.success(), "the crash hook did not fire");
    g.child = None;
    g.launch(&[]);
    let (code, body) = g.api("GET", "/v1/requests/77", None);
    assert_eq!(
        (code, body["request"]["state"].as_str()),
        (200, Some("draft")),
        "{body}"
    );
}

#[test]
fn huge_bodies_remote_binds_and_secrets() {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "k");
    g.provision(6, "db.dump", &key);
    let big = format!("{{\"filename\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let body_file = g.dir.path().join("big.json");
    std::fs::write(&body_file, &big).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "PUT",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("http://{}/v1/requests/6", g.admin))
        .output()
        .unwrap();
    let t = text(&out.stdout);
    let (body, code) = t.rsplit_once('\n').unwrap();
    assert_eq!(code, "413");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(reason(&v), "BODY:TOO_LARGE");

    // The operator API refuses to listen beyond loopback unless told to.
    let out = Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
        ])
        .arg("--data-dir")
        .arg(g.dir.path().join("other-data"))
        .arg("--host-key-dir")
        .arg(g.dir.path().join("other-keys"))
        .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--admin-allow-remote"),
        "{}",
        text(&out.stderr)
    );

    // Neither the admin token nor a request key shows up in any log line or response.
    let q = "?request=6&key=secret-6";
    let out = Command::new("curl")
        .args(["-sS", "-F", &format!("ssh_keys={}", key.public().trim())])
        .arg(format!(
            "http://{}/database/v1/request_sftp_access{q}",
            g.admin
        ))
        .output()
        .unwrap();
    let access = text(&out.stdout);
    assert!(access.contains("\"failures\":[]"), "{access}");
    let listing = g.api("GET", "/v1/requests", None).1.to_string();
    for secret in [TOKEN, "secret-6"] {
        assert!(!g.log().contains(secret), "{secret} reached the log");
        assert!(
            !access.contains(secret) && !listing.contains(secret),
            "{secret} in a response"
        );
    }
}
