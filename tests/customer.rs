//! The customer's side of the reference API: `request_sftp_access` called by the
//! reference's own curl + jq script, key-file checks, expiry, and the upload hook. The
//! operator's side goes through the `sftpgate` CLI.
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const KEY: &str = "Aw7pItGVKFuZ_FOR3U8VFQ==";

/// The reference's bash sample, unchanged but for its URL and the keys file path.
const REFERENCE_SCRIPT: &str = r#"REQUEST_SFTP_ACCESS_URL="@URL@"
SSH_KEYS=@KEYS@
KEY="Aw7pItGVKFuZ_FOR3U8VFQ=="
REQUEST_ID="10534"
URL_PARAMS="key=${KEY}&request=${REQUEST_ID}"
curl -sS "${REQUEST_SFTP_ACCESS_URL}?${URL_PARAMS}" -F ssh_keys=@${SSH_KEYS} > request_sftp_result.json
# check for failures
failures=$(cat request_sftp_result.json | jq -r '.failures[]')
if [ "$failures" != "" ]; then
echo $failures | jq -r '.'
exit 1
fi
"#;

fn cli(g: &Gateway, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .args(args)
        .args(["--admin", &format!("http://{}", g.admin)])
        .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
        .current_dir(g.dir.path())
        .output()
        .unwrap()
}

/// The reference's pycurl sample, unchanged but for its URL and keys file path. It is
/// Python 2 (`from urllib import urlencode`); a `sitecustomize` provides that name on Python 3.
const REFERENCE_PYCURL: &str = r#"import os
import pycurl
from urllib import urlencode
UPLOAD_URL = "@URL@"
SSH_KEYS="@KEYS@"
fields = dict([
('request', '10534'),
('key', 'Aw7pItGVKFuZ_FOR3U8VFQ=='),
])
postfields = urlencode(fields)
c = pycurl.Curl()
c.setopt(pycurl.URL, UPLOAD_URL+"?"+postfields)
c.setopt(pycurl.POST, 1)
c.setopt(c.HTTPPOST,[("ssh_keys",
(c.FORM_FILE, SSH_KEYS,
c.FORM_CONTENTTYPE, "text/plain"))
])
c.perform()
c.close()
"#;

fn run_reference_pycurl(g: &Gateway, keys: &Path) -> Value {
    let shim = py2_shim(g.dir.path());
    let script = REFERENCE_PYCURL
        .replace(
            "@URL@",
            &format!("http://{}/database/v1/request_sftp_access", g.admin),
        )
        .replace("@KEYS@", keys.to_str().unwrap());
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", &shim)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn run_reference_script(g: &Gateway, keys: &Path) -> (bool, Value) {
    let script = REFERENCE_SCRIPT
        .replace(
            "@URL@",
            &format!("http://{}/database/v1/request_sftp_access", g.admin),
        )
        .replace("@KEYS@", keys.to_str().unwrap());
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(g.dir.path())
        .output()
        .unwrap();
    let result = std::fs::read(g.dir.path().join("request_sftp_result.json")).unwrap();
    (
        out.status.success(),
        serde_json::from_slice(&result).unwrap(),
    )
}

/// Runs the response's sample command, adding only the test's key and host-key options.
fn run_sample(g: &Gateway, sample: &str, key: &ClientKey, batch: &str, cwd: &Path) -> Output {
    let args: Vec<&str> = sample.split_whitespace().collect();
    assert_eq!(args[0], "sftp", "{sample}");
    let mut cmd = Command::new("sftp");
    cmd.args(key.client_opts())
        .args(["-b", "-"])
        .args(&args[1..])
        .current_dir(cwd);
    let _ = g;
    run_with_input(cmd, batch)
}

fn provision_reference(g: &Gateway) {
    let out = cli(
        g,
        &[
            "request",
            "put",
            "10534",
            "--filename",
            "openchs.70.cdump",
            "--key",
            KEY,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn reference_script_upload_then_download() {
    let g = Gateway::start();
    let work = g.dir.path();
    provision_reference(&g);
    let key = ClientKey::new(work, "customer");
    let keys_file = work.join("authorized_keys");
    std::fs::write(&keys_file, format!("# my keys\n\n{}", key.public())).unwrap();

    let (ok, res) = run_reference_script(&g, &keys_file);
    assert!(ok, "{res}");
    let r = &res["request"];
    assert_eq!(r["sftp_user"], "user_10534");
    assert_eq!(r["shared_file"], "openchs.70.cdump");
    assert_eq!(r["request_id"], 10534);
    assert_eq!(r["sftp_port"], g.ssh_port);
    assert_eq!(
        r["sample_command"],
        format!("sftp -P {} user_10534@127.0.0.1", g.ssh_port)
    );
    assert!(r["expires_at"].is_string());

    let src = work.join("openchs.70.cdump");
    random_file(&src, 3_000_000);
    let sample = r["sample_command"].as_str().unwrap();
    let out = run_sample(
        &g,
        sample,
        &key,
        "put openchs.70.cdump openchs.70.cdump\n",
        work,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(10534)), sha256(&src));

    // The operator fetches the upload, pushes the upgraded dump and marks it done.
    let fetched = work.join("fetched");
    let out = cli(&g, &["original", "get", "10534", fetched.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&fetched), sha256(&src));
    let upgraded = work.join("upgraded.dump");
    random_file(&upgraded, 2_000_000);
    let out = cli(
        &g,
        &["upgraded", "put", "10534", upgraded.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(&g, &["request", "state", "10534", "done"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("request 10534 (done)"),
        "{}",
        text(&out.stdout)
    );

    let (ok, res) = run_reference_script(&g, &keys_file);
    assert!(ok, "{res}");
    assert_eq!(res["request"]["shared_file"], "upgraded_openchs.70.cdump");
    let res = run_reference_pycurl(&g, &keys_file);
    assert_eq!(res["failures"], json!([]), "{res}");
    assert_eq!(res["request"]["shared_file"], "upgraded_openchs.70.cdump");
    assert_eq!(res["request"]["sftp_user"], "user_10534");
    let dl = work.join("dl");
    std::fs::create_dir(&dl).unwrap();
    let out = run_sample(&g, sample, &key, "get upgraded_openchs.70.cdump\n", &dl);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        sha256(&dl.join("upgraded_openchs.70.cdump")),
        sha256(&upgraded)
    );
}

/// The reference's curl sample pastes the key into the URL unencoded, so a `+` in it
/// arrives as a space.
#[test]
fn a_key_with_plus_signs_pasted_into_the_url_still_matches() {
    let g = Gateway::start();
    let out = cli(
        &g,
        &[
            "request",
            "put",
            "77",
            "--filename",
            "db.dump",
            "--key",
            "q+r/s+t==",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = ClientKey::new(g.dir.path(), "c");
    let keys = g.dir.path().join("keys");
    std::fs::write(&keys, key.public()).unwrap();
    let keys = format!("@{}", keys.display());
    let form = [("ssh_keys", keys.as_str())];
    let wrong = g.request_sftp_access(&form, "?request=77&key=q+r/s-t==");
    assert_eq!(reasons(&wrong), ["KEY:INVALID"]);
    let v = g.request_sftp_access(&form, "?request=77&key=q+r/s+t==");
    assert_eq!(v["failures"], serde_json::json!([]), "{v}");
    assert_eq!(v["request"]["sftp_user"], "user_77");
    let out = g.sftp("user_77", &key, "ls\n", g.dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn every_failure_changes_nothing() {
    let g = Gateway::start();
    provision_reference(&g);
    let work = g.dir.path();
    let key = ClientKey::new(work, "c");
    let good = work.join("good");
    std::fs::write(&good, key.public()).unwrap();
    let record = || std::fs::read(g.data().join("requests/10534/request.json")).unwrap();
    let before = record();
    let q = format!("?request=10534&key={KEY}");
    let file = |name: &str, content: &str| {
        let p = work.join(name);
        std::fs::write(&p, content).unwrap();
        format!("@{}", p.display())
    };
    let ed = key.public();
    let many = ed.repeat(101);
    let huge = format!("{ed}#{}\n", "x".repeat(70_000));
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            g.request_sftp_access(
                &[("ssh_keys", &format!("@{}", good.display()))],
                "?request=10534&key=wrong",
            ),
            vec!["KEY:INVALID"],
        ),
        (
            g.request_sftp_access(
                &[("ssh_keys", &format!("@{}", good.display()))],
                &format!("?request=999&key={KEY}"),
            ),
            vec!["KEY:INVALID"],
        ),
        (
            g.request_sftp_access(
                &[("ssh_keys", &format!("@{}", good.display()))],
                "?request=abc&key=x",
            ),
            vec!["REQUEST:INVALID"],
        ),
        (g.request_sftp_access(&[], &q), vec!["SSH_KEYS:MISSING"]),
        (
            g.request_sftp_access(&[("ssh_keys", &format!("@{}", good.display()))], ""),
            vec!["REQUEST:MISSING", "KEY:MISSING"],
        ),
        (
            g.request_sftp_access(
                &[(
                    "ssh_keys",
                    &file(
                        "bad",
                        &format!("{ed}garbage line\nssh-dss AAAAB3NzaC1kc3M\n"),
                    ),
                )],
                &q,
            ),
            vec!["SSH_KEYS:INVALID", "SSH_KEYS:INVALID"],
        ),
        (
            g.request_sftp_access(&[("ssh_keys", &file("empty", "# nothing\n\n"))], &q),
            vec!["SSH_KEYS:EMPTY"],
        ),
        (
            g.request_sftp_access(&[("ssh_keys", &file("many", &many))], &q),
            vec!["SSH_KEYS:TOO_LARGE"],
        ),
        (
            g.request_sftp_access(&[("ssh_keys", &file("huge", &huge))], &q),
            vec!["SSH_KEYS:TOO_LARGE"],
        ),
        (
            g.request_sftp_access(
                &[("ssh_keys", &file("opt", &format!("bogus-option {ed}")))],
                &q,
            ),
            vec!["SSH_KEYS:INVALID"],
        ),
    ];
    for (res, want) in &cases {
        assert_eq!(reasons(res), *want, "{res}");
        assert_eq!(record(), before, "a failure changed the record: {res}");
    }
    let bad = &cases[5].0["failures"];
    assert_eq!(
        (bad[0]["line"].as_u64(), bad[1]["line"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(bad[0]["value"], "garbage line");
    assert!(bad[1]["message"].as_str().unwrap().contains("DSA"));

    // Not draft nor done.
    assert!(cli(&g, &["request", "state", "10534", "pending"])
        .status
        .success());
    let before = record();
    let res = g.request_sftp_access(&[("ssh_keys", &format!("@{}", good.display()))], &q);
    assert_eq!(reasons(&res), ["STATE:INVALID"]);
    assert_eq!(res["failures"][0]["value"], "pending");
    assert_eq!(res["failures"][0]["expected"], json!(["draft", "done"]));
    assert_eq!(record(), before);

    // Repeated wrong keys are throttled, even for the right key afterwards.
    assert!(cli(&g, &["request", "state", "10534", "draft"])
        .status
        .success());
    for _ in 0..5 {
        g.request_sftp_access(
            &[("ssh_keys", &format!("@{}", good.display()))],
            "?request=10534&key=wrong",
        );
    }
    let res = g.request_sftp_access(&[("ssh_keys", &format!("@{}", good.display()))], &q);
    assert_eq!(reasons(&res), ["KEY:THROTTLED"]);
    // Other requests are not affected.
    assert!(cli(
        &g,
        &["request", "put", "2", "--filename", "f", "--key", "k2"]
    )
    .status
    .success());
    let res = g.request_sftp_access(
        &[("ssh_keys", &format!("@{}", good.display()))],
        "?request=2&key=k2",
    );
    assert_eq!(reasons(&res), Vec::<String>::new(), "{res}");
    // Form fields work as well as the query string, and unhonoured options are reported.
    let res = g.request_sftp_access(
        &[
            ("request", "2"),
            ("key", "k2"),
            ("ssh_keys", &format!("command=\"ls\" {}", ed.trim())),
        ],
        "",
    );
    assert_eq!(reasons(&res), Vec::<String>::new(), "{res}");
    assert_eq!(res["warnings"][0]["option"], "command=\"ls\"");
    // No body at all still answers JSON.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            &format!("http://{}/database/v1/request_sftp_access", g.admin),
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reasons(&v),
        ["REQUEST:MISSING", "KEY:MISSING", "SSH_KEYS:MISSING"]
    );
}

#[test]
fn expiry_and_key_replacement_close_live_sessions() {
    let g = Gateway::start_with(&["--access-ttl", "3s"]);
    provision_reference(&g);
    let work = g.dir.path();
    let key = ClientKey::new(work, "k1");
    let other = ClientKey::new(work, "k2");
    let k1 = work.join("k1.keys");
    std::fs::write(&k1, key.public()).unwrap();
    let q = format!("?request=10534&key={KEY}");
    assert_eq!(
        reasons(&g.request_sftp_access(&[("ssh_keys", &format!("@{}", k1.display()))], &q)),
        Vec::<String>::new()
    );

    // Expiry: the session ends once the access time is over, and new logins are refused.
    let (child, stdin) = g.spawn_sftp("user_10534", &key, &[], work, "ls\n");
    assert!(wait_until(Duration::from_secs(5), || g.sessions(10534) == 1));
    g.assert_closed_by_server(child, stdin, 1);
    assert_failed_with(
        &g.sftp("user_10534", &key, "ls\n", work),
        "Permission denied (publickey)",
    );

    // Replacing the keys ends sessions of keys no longer listed.
    assert!(
        cli(&g, &["request", "put", "10534", "--expires-at", "none"])
            .status
            .success()
    );
    let both = work.join("both.keys");
    std::fs::write(&both, format!("{}{}", key.public(), other.public())).unwrap();
    assert!(cli(
        &g,
        &[
            "request",
            "put",
            "10534",
            "--ssh-keys",
            both.to_str().unwrap(),
            "--expires-at",
            "none"
        ]
    )
    .status
    .success());
    let (first, first_in) = g.spawn_sftp("user_10534", &key, &[], work, "ls\n");
    let (mut second, _b) = g.spawn_sftp("user_10534", &other, &[], work, "ls\n");
    assert!(wait_until(Duration::from_secs(5), || g.sessions(10534) == 2));
    let only_other = work.join("other.keys");
    std::fs::write(&only_other, other.public()).unwrap();
    assert!(cli(
        &g,
        &[
            "request",
            "put",
            "10534",
            "--ssh-keys",
            only_other.to_str().unwrap()
        ]
    )
    .status
    .success());
    g.assert_closed_by_server(first, first_in, 2);
    assert!(
        second.try_wait().unwrap().is_none(),
        "the listed key lost its session"
    );
    let _ = second.kill();
}

/// Provisions the reference request on `g` with a key limited by `from=`: refused under
/// `refused`, then allowed under `allowed`. Returns the key.
fn from_refused_then_allowed(g: &Gateway, refused: &str, allowed: &str) -> ClientKey {
    provision_reference(g);
    let key = ClientKey::new(g.dir.path(), "k");
    let set = |from: &str| {
        let p = g.dir.path().join("keys");
        std::fs::write(&p, format!("from=\"{from}\" {}", key.public())).unwrap();
        let q = format!("?request=10534&key={KEY}");
        let res = g.request_sftp_access(&[("ssh_keys", &format!("@{}", p.display()))], &q);
        assert_eq!(reasons(&res), Vec::<String>::new());
    };
    set(refused);
    assert_failed_with(
        &g.sftp("user_10534", &key, "ls\n", g.dir.path()),
        "Permission denied (publickey)",
    );
    set(allowed);
    key
}

#[test]
fn from_option_is_enforced() {
    let g = Gateway::start();
    let key = from_refused_then_allowed(&g, "10.0.0.0/8", "127.0.0.0/8,!10.*");
    let out = g.sftp("user_10534", &key, "ls\n", g.dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Customers connecting over IPv6: the gateway on `[::1]`, `from=` matched against the
/// IPv6 address, an upload. Where the machine has no IPv6 loopback it fails in CI and is
/// skipped elsewhere.
#[test]
fn ipv6_upload_and_from_patterns() {
    if let Err(e) = TcpListener::bind("[::1]:0") {
        missing_capability(&format!(
            "no IPv6 loopback (binding [::1]:0: {e}): enable IPv6 on lo \
             (sysctl -w net.ipv6.conf.lo.disable_ipv6=0; in a container, IPv6 enabled)"
        ));
        return;
    }
    let g = Gateway::start_on("[::1]");
    let key = from_refused_then_allowed(&g, "127.0.0.0/8", "::1,10.*");
    let work = g.dir.path();
    let src = work.join("src.bin");
    random_file(&src, 2_000_003);
    let out = g.sftp("user_10534", &key, "put src.bin openchs.70.cdump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(10534)), sha256(&src));
}

#[test]
fn upload_hook_is_posted_and_a_dead_hook_harms_nothing() {
    let (url, events) = hook_server();
    let mut g = Gateway::start_with(&["--on-upload-closed", &url]);
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    g.provision(9, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 1_234_567);
    let out = g.sftp("user_9", &key, "put db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let event = events
        .recv_timeout(Duration::from_secs(10))
        .expect("no hook call");
    assert_eq!(event["event"], "upload-closed");
    assert_eq!(event["request_id"], 9);
    assert_eq!(event["user"], "user_9");
    assert_eq!(event["bytes_written"], 1_234_567);
    assert_eq!(event["final_size"], 1_234_567);
    assert!(event["key_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("SHA256:"));
    assert!(event["client"].as_str().unwrap().starts_with("127.0.0.1:"));

    // A hook nobody listens on: uploads work as before.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    g.stop("TERM");
    g.launch(&["--on-upload-closed", &format!("http://{dead}/hook")]);
    let out = g.sftp("user_9", &key, "put db.dump\nput db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(9)), sha256(&src));
}

#[test]
fn cli_reports_failures_with_a_nonzero_exit() {
    let g = Gateway::start();
    let out = cli(&g, &["request", "show", "5"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("REQUEST:NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(
        &g,
        &["request", "put", "5", "--filename", "../x", "--key", "k"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("FILENAME:INVALID"),
        "{}",
        text(&out.stderr)
    );
    assert!(cli(
        &g,
        &["request", "put", "5", "--filename", "x.dump", "--key", "k"]
    )
    .status
    .success());
    let out = cli(&g, &["request", "list", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requests"][0]["id"], 5);
    let out = cli(&g, &["request", "list"]);
    assert!(
        text(&out.stdout).contains("x.dump"),
        "{}",
        text(&out.stdout)
    );
    assert!(cli(&g, &["request", "delete", "5", "--purge"])
        .status
        .success());
    assert_failed_with(&cli(&g, &["request", "show", "5"]), "REQUEST:NOT_FOUND");
}
