//! Host keys and algorithm sets from the outside: the three host keys each served and
//! published on `GET /v1/server`, an Ed25519-only key dir from an older version upgraded in
//! place, `ssh-rsa` only when opted into, unknown algorithm names refused at start, and
//! ssh-audit (PyPI, in the tests' venv) run against both sets, and the clients `hardened` must
//! still connect (libssh2 1.11 among them).
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// `ssh-keygen -lf` of a `.pub` file: its `SHA256:...` fingerprint.
fn fingerprint_of(pub_file: &std::path::Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// What `ssh-keyscan -t TYPE` reads from the gateway, as fingerprints by key type.
fn keyscan(g: &Gateway, types: &str) -> BTreeMap<String, String> {
    let out = Command::new("ssh-keyscan")
        .args(["-p", &g.ssh_port.to_string(), "-t", types, "127.0.0.1"])
        .output()
        .unwrap();
    let scanned = g.dir.path().join(format!("scanned-{}", rand_u64()));
    let mut found = BTreeMap::new();
    for line in text(&out.stdout).lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split_whitespace().skip(1);
        let (kind, blob) = (f.next().unwrap(), f.next().unwrap());
        std::fs::write(&scanned, format!("{kind} {blob}\n")).unwrap();
        found.insert(kind.to_string(), fingerprint_of(&scanned));
    }
    found
}

fn published(g: &Gateway) -> Value {
    let (code, body) = g.api("GET", "/v1/server", None);
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn three_host_keys_are_served_and_published() {
    let g = Gateway::start();
    let keys = g.dir.path().join("hostkeys");
    let body = published(&g);
    assert_eq!(body["algorithm_set"], "compatible");
    assert_eq!(body["algorithms_overridden"], false);
    let list = body["host_keys"].as_array().unwrap();
    let by_type: BTreeMap<&str, &Value> = list
        .iter()
        .map(|k| (k["type"].as_str().unwrap(), k))
        .collect();
    assert_eq!(by_type.len(), 3, "{body}");
    for (kind, file, algorithm, offered) in [
        (
            "ed25519",
            "ssh_host_ed25519_key",
            "ssh-ed25519",
            vec!["ssh-ed25519"],
        ),
        (
            "ecdsa",
            "ssh_host_ecdsa_key",
            "ecdsa-sha2-nistp256",
            vec!["ecdsa-sha2-nistp256"],
        ),
        (
            "rsa",
            "ssh_host_rsa_key",
            "ssh-rsa",
            vec!["rsa-sha2-512", "rsa-sha2-256"],
        ),
    ] {
        let k = by_type[kind];
        assert_eq!(k["algorithm"], algorithm);
        assert_eq!(k["offered_as"], serde_json::json!(offered), "{kind}");
        let fp = fingerprint_of(&keys.join(format!("{file}.pub")));
        assert_eq!(k["fingerprint"], fp.as_str(), "{kind}");
        // The start-up log names every fingerprint too.
        assert!(g.log().contains(&fp), "{fp} not in {}", g.log());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // Each is what a client is actually shown.
    let scanned = keyscan(&g, "ed25519,ecdsa,rsa");
    assert_eq!(scanned["ssh-ed25519"], by_type["ed25519"]["fingerprint"]);
    assert_eq!(
        scanned["ecdsa-sha2-nistp256"],
        by_type["ecdsa"]["fingerprint"]
    );
    assert_eq!(scanned["ssh-rsa"], by_type["rsa"]["fingerprint"]);
    // Behind the token like every /v1 route.
    let (code, _) = g.api_raw("GET", "/v1/server", None, None);
    assert_eq!(code, 401);
}

/// A key dir from a version with only Ed25519 keeps its key and gets the other two, once,
/// each logged with its fingerprint.
#[test]
fn an_ed25519_only_key_dir_is_upgraded_in_place_once() {
    // A fresh key dir, as an older version left it: only the Ed25519 key.
    let mut g = Gateway::start();
    g.stop("TERM");
    let keys = g.dir.path().join("hostkeys");
    std::fs::remove_dir_all(&keys).unwrap();
    g.launch(&["--host-key-types", "ed25519"]);
    let names = |dir: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&keys),
        ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    );
    let old = std::fs::read(keys.join("ssh_host_ed25519_key")).unwrap();
    g.stop("TERM");
    g.launch(&[]);
    assert_eq!(
        std::fs::read(keys.join("ssh_host_ed25519_key")).unwrap(),
        old
    );
    let log = g.log();
    for file in ["ssh_host_ecdsa_key", "ssh_host_rsa_key"] {
        let fp = fingerprint_of(&keys.join(format!("{file}.pub")));
        let line = log
            .lines()
            .find(|l| l.contains(&fp))
            .unwrap_or_else(|| panic!("{fp} not logged: {log}"));
        assert!(line.contains("generated a new host key"), "{line}");
    }
    // The log holds every launch: the upgrade added exactly two, the next start none.
    let generated = log.matches("generated a new host key").count();
    g.stop("TERM");
    g.launch(&[]);
    assert_eq!(
        g.log().matches("generated a new host key").count(),
        generated,
        "generated again: {}",
        g.log()
    );
    assert_eq!(published(&g)["host_keys"].as_array().unwrap().len(), 3);
}

/// `ssh-rsa` (SHA-1 signatures) is offered only when the host-key list names it.
#[test]
fn ssh_rsa_only_when_opted_in() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClientKey::new(dir.path(), "rsa-client");
    let ls = |g: &Gateway, host_key_algorithm: &str| {
        g.provision(51, "db.dump", &key);
        let (child, stdin) = g.spawn_sftp(
            "user_51",
            &key,
            &["-o", &format!("HostKeyAlgorithms={host_key_algorithm}")],
            g.dir.path(),
            "ls\n",
        );
        drop(stdin);
        wait_output(child, std::time::Duration::from_secs(60))
    };
    let g = Gateway::start();
    // The RSA key signs with SHA-2 by default...
    let out = ls(&g, "rsa-sha2-512");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // ...and never with SHA-1 (the client sees the connection end in the negotiation).
    let out = ls(&g, "ssh-rsa");
    // (This client logs quietly: the negotiation's end is all it says; not "Permission
    // denied", which would mean the key exchange passed.)
    assert_failed_with(&out, "Connection closed");
    assert!(!text(&out.stderr).contains("Permission denied"));
    let g = Gateway::start_with(&[
        "--host-key-algorithms",
        "ssh-ed25519,rsa-sha2-512,rsa-sha2-256,ssh-rsa",
    ]);
    let out = ls(&g, "ssh-rsa");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(published(&g)["algorithms_overridden"], true);
}

/// Runs `serve` with `args`, expecting it to refuse to start.
fn refused(dir: &std::path::Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--host-key-dir")
        .arg(dir.join("hostkeys"))
        .args(args)
        .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started: {}", text(&out.stdout));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    out
}

#[test]
fn unknown_algorithm_names_are_refused_at_start_with_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = refused(
        dir.path(),
        &["--kex-algorithms", "curve25519-sha256,curve9999"],
    );
    assert!(
        text(&out.stderr).contains("\"curve9999\""),
        "{}",
        text(&out.stderr)
    );
    let out = refused(dir.path(), &["--algorithms", "paranoid"]);
    assert!(
        text(&out.stderr).contains("paranoid"),
        "{}",
        text(&out.stderr)
    );
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        "algorithms = \"hardened\"\nmacs = [\"hmac-sha2-256-etm@openssh.com\", \"hmac-md5\"]\n",
    )
    .unwrap();
    let out = refused(dir.path(), &["--config", config.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(
        err.contains("macs") && err.contains("\"hmac-md5\""),
        "{err}"
    );
    // A host-key list no configured key type can serve.
    let out = refused(
        dir.path(),
        &["--algorithms", "hardened", "--host-key-types", "ecdsa"],
    );
    assert!(
        text(&out.stderr).contains("no host key can be offered"),
        "{}",
        text(&out.stderr)
    );
}

/// ssh-audit's JSON report on the gateway: every (list, algorithm) with a fail, sorted.
/// `--skip-rate-test`: the DHEat connection-rate finding belongs to the per-source limits
/// (the tests run with the per-source rate off), not to the algorithm sets.
fn ssh_audit_fails(g: &Gateway) -> Vec<String> {
    let audit = python().with_file_name("ssh-audit");
    let out = Command::new(&audit)
        .args(["-j", "-n", "--skip-rate-test", "-t", "20"])
        .args(["-p", &g.ssh_port.to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ssh-audit gave no JSON ({e}): {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    assert_eq!(
        report["cves"].as_array().map(Vec::len),
        Some(0),
        "{report:#}"
    );
    let mut fails = Vec::new();
    for list in ["kex", "key", "enc", "mac"] {
        for entry in report[list].as_array().unwrap_or(&Vec::new()) {
            if entry["notes"]["fail"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
            {
                fails.push(format!("{list} {}", entry["algorithm"].as_str().unwrap()));
            }
        }
    }
    // What it saw, so that a scan that saw nothing does not pass.
    assert!(
        report["kex"].as_array().is_some_and(|k| !k.is_empty()),
        "{report:#}"
    );
    fails.sort();
    fails
}

#[test]
fn ssh_audit_finds_no_fail_in_hardened() {
    let g = Gateway::start_with(&["--algorithms", "hardened"]);
    assert_eq!(ssh_audit_fails(&g), Vec::<String>::new());
}

/// `compatible` fails exactly where the README says, for JSch and FIPS-mode clients.
#[test]
fn ssh_audit_fails_compatible_only_as_the_readme_lists() {
    let g = Gateway::start();
    assert_eq!(
        ssh_audit_fails(&g),
        [
            "kex ecdh-sha2-nistp256",
            "kex ecdh-sha2-nistp384",
            "kex ecdh-sha2-nistp521",
            "key ecdsa-sha2-nistp256",
        ]
    );
}

/// `hardened` still connects OpenSSH, paramiko and asyncssh (README's client table).
#[test]
fn hardened_connects_openssh_paramiko_and_asyncssh() {
    let g = Gateway::start_with(&["--algorithms", "hardened"]);
    let key = ClientKey::new(g.dir.path(), "hardened");
    g.provision(52, "db.dump", &key);
    let src = g.dir.path().join("src.bin");
    random_file(&src, 100_003);
    let out = g.sftp("user_52", &key, "put src.bin db.dump\n", g.dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(52)), sha256(&src));
    let script = r#"
import asyncio, sys
import asyncssh, paramiko

port, key = int(sys.argv[1]), sys.argv[2]
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
client.connect("127.0.0.1", port, username="user_52", key_filename=key,
               allow_agent=False, look_for_keys=False)
print("paramiko", client.open_sftp().listdir("."))

async def main():
    async with asyncssh.connect("127.0.0.1", port, username="user_52", client_keys=[key],
                                known_hosts=None) as conn:
        async with conn.start_sftp_client() as sftp:
            print("asyncssh", await sftp.listdir("."))
asyncio.run(main())
"#;
    let out = run_python(
        script,
        &[&g.ssh_port.to_string(), key.path.to_str().unwrap()],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["paramiko ['db.dump']", "asyncssh ['db.dump']"]
    );
}

/// `hardened` connects libssh2 1.11 (the issue's floor; Debian's curl has 1.10), through
/// ssh2-python, whose wheel bundles libssh2 1.11.1: upload, listing and download of the
/// one file, byte-exact, with the host key and algorithms libssh2 negotiated printed.
#[test]
fn hardened_connects_libssh2_1_11() {
    let g = Gateway::start_with(&["--algorithms", "hardened"]);
    let key = ClientKey::new(g.dir.path(), "libssh2");
    g.provision(53, "db.dump", &key);
    let src = g.dir.path().join("src.bin");
    random_file(&src, 300_007);
    let back = g.dir.path().join("back.bin");
    let script = r#"
import socket, sys
import ssh2.utils
from ssh2.session import Session, LIBSSH2_METHOD_KEX, LIBSSH2_METHOD_MAC_CS, LIBSSH2_METHOD_CRYPT_CS
from ssh2.sftp import LIBSSH2_FXF_WRITE, LIBSSH2_FXF_CREAT, LIBSSH2_FXF_TRUNC, LIBSSH2_FXF_READ, \
    LIBSSH2_SFTP_S_IRUSR, LIBSSH2_SFTP_S_IWUSR

port, key, src, back = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
print("libssh2", ssh2.utils.version().decode())
sock = socket.create_connection(("127.0.0.1", port))
s = Session()
s.handshake(sock)
print("kex", s.methods(LIBSSH2_METHOD_KEX))
print("cipher", s.methods(LIBSSH2_METHOD_CRYPT_CS))
print("mac", s.methods(LIBSSH2_METHOD_MAC_CS))
s.userauth_publickey_fromfile("user_53", key)
sftp = s.sftp_init()
with open(src, "rb") as f, sftp.open("db.dump", LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC,
                                      LIBSSH2_SFTP_S_IRUSR | LIBSSH2_SFTP_S_IWUSR) as h:
    while True:
        chunk = f.read(32768)
        if not chunk:
            break
        h.write(chunk)
with sftp.opendir(".") as d:
    print("ls", sorted(name.decode() for _, name, _ in d.readdir() if name not in (b".", b"..")))
with sftp.open("db.dump", LIBSSH2_FXF_READ, 0) as h, open(back, "wb") as out:
    for _, data in h:
        out.write(data)
"#;
    let out = run_python(
        script,
        &[
            &g.ssh_port.to_string(),
            key.path.to_str().unwrap(),
            src.to_str().unwrap(),
            back.to_str().unwrap(),
        ],
    );
    eprintln!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "libssh2 1.11.1", "{out}");
    // The hardened set's own choices (README, Algorithm sets): no NIST curve, ETM only.
    assert!(lines[1].starts_with("kex curve25519-sha256"), "{out}");
    assert!(
        lines[3].starts_with("mac ") && lines[3].ends_with("-etm@openssh.com"),
        "{out}"
    );
    assert_eq!(lines[4], "ls ['db.dump']", "{out}");
    assert_eq!(sha256(&g.upload_path(53)), sha256(&src));
    assert_eq!(sha256(&back), sha256(&src));
}
