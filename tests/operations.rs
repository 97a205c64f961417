//! What an operator relies on: metrics, health, structured logs, config checking, version.

mod common;

use std::process::Command;

use common::*;

fn get(url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let t = text(&out.stdout);
    let (body, code) = t.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

#[test]
fn metrics_health_and_json_logs() {
    let g = Gateway::start_with(&["--log-format", "json"]);
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "m");
    g.provision(1, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 1_500_000);
    let out = g.sftp("user_1", &key, "put db.dump\nget db.dump back.bin\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = g.sftp("user_1", &ClientKey::new(&work, "stranger"), "ls\n", &work);

    let (code, body) = get(&format!("http://{}/healthz", g.admin));
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "{\"failures\":[],\"status\":\"ok\"}")
    );

    let (code, m) = get(&format!("http://{}/metrics", g.admin));
    assert_eq!(code, "200");
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing from:\n{m}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("sftpgate_bytes_received_total"), 1_500_000);
    assert_eq!(value("sftpgate_bytes_sent_total"), 1_500_000);
    assert!(value("sftpgate_uploads_completed_total") >= 1);
    assert!(value("sftpgate_connections_total") >= 2);
    assert!(value("sftpgate_auth_total{result=\"success\"}") >= 1);
    assert!(value("sftpgate_auth_total{result=\"failure\"}") >= 1);
    assert_eq!(value("sftpgate_requests{state=\"draft\"}"), 1);
    assert_eq!(value("sftpgate_transfer_errors_total"), 0);

    // Every log line is one JSON object; the login and the upload are audit events.
    let log = g.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "{log}");
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    for want in [
        "login",
        "upload-closed",
        "auth-refused",
        "file-opened",
        "file-closed",
        "request-created",
    ] {
        assert!(events.contains(&want), "no {want} event in {events:?}");
    }
    // The download's close reports the bytes sent through its handle.
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "file-closed" && l["bytes_read"] == 1_500_000),
        "{log}"
    );
    let login = lines.iter().find(|l| l["event"] == "login").unwrap();
    assert_eq!(login["request"], 1);
    assert!(login["key"].as_str().unwrap().starts_with("SHA256:"));
}

/// paramiko signs at once, without offering the key first.
const PARAMIKO_LS: &str = r#"
import sys
import paramiko

port, key = int(sys.argv[1]), sys.argv[2]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="user_1", pkey=paramiko.Ed25519Key.from_private_key_file(key))
paramiko.SFTPClient.from_transport(t).listdir(".")
t.close()
print("ok")
"#;

/// A public-key login reads its request's record from the store once, counted by the
/// gateway itself: OpenSSH offers the key and then signs with it, decided on one read;
/// paramiko signs at once. (Twice only when a change comes between the offer and the
/// session's start, which nothing does here.) A refused key costs one read too.
#[test]
fn a_login_reads_its_record_once() {
    let g = Gateway::start();
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "r");
    g.provision(1, "db.dump", &key);
    let reads = || g.metric("record_reads_total{by=\"login\"}");
    assert_eq!(reads(), 0);

    let out = g.sftp("user_1", &key, "ls\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(reads(), 1, "OpenSSH");

    let out = run_python(
        PARAMIKO_LS,
        &[&g.ssh_port.to_string(), key.path.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(reads(), 2, "paramiko");

    let out = g.sftp("user_1", &ClientKey::new(&work, "stranger"), "ls\n", &work);
    assert_failed_with(&out, "Permission denied");
    assert_eq!(reads(), 3, "refused key");
    assert_eq!(g.metric("auth_total{result=\"success\"}"), 2);
}

#[test]
fn check_config_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_sftpgate");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:2201\"\naccess-ttl = \"2h\"\nlog-format = \"json\"\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("127.0.0.1:2201"),
        "{}",
        text(&out.stdout)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:2201\"\nlisten-addres = \"x\"\n").unwrap();
    let out = Command::new(bin)
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("listen-addres"),
        "{}",
        text(&out.stderr)
    );

    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/sftpgate.toml");
    let out = Command::new(bin)
        .args(["check-config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the shipped example config: {}",
        text(&out.stderr)
    );

    let out = Command::new(bin).arg("--version").output().unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        format!("sftpgate {}", env!("CARGO_PKG_VERSION"))
    );
}
