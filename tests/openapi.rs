//! The OpenAPI spec: the one a live gateway serves at `/openapi.json` is the committed
//! `docs/openapi.json`, and schemathesis (PyPI, in the tests' venv) finds nothing against
//! a live gateway with the admin token, over every operation.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const REGENERATE: &str = "SFTPGATE_WRITE_OPENAPI=1 cargo test --test openapi";

fn served_spec(g: &Gateway) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", &format!("http://{}/openapi.json", g.admin)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn the_served_spec_is_the_committed_one() {
    let g = Gateway::start();
    let served = served_spec(&g);
    let spec: Value = serde_json::from_str(&served).expect("the spec is JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("SFTPGATE_WRITE_OPENAPI").is_some() {
        std::fs::write(&committed, &served).unwrap();
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        on_disk == served,
        "docs/openapi.json differs from the spec the gateway serves; regenerate it with `{REGENERATE}` and commit it"
    );
    // Every route of the API is described (the status page's HTML routes are not).
    let mut ops: Vec<String> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    ops.sort();
    assert_eq!(
        ops,
        [
            "DELETE /v1/requests/{id}",
            "GET /healthz",
            "GET /metrics",
            "GET /openapi.json",
            "GET /v1/requests",
            "GET /v1/requests/{id}",
            "GET /v1/requests/{id}/original",
            "GET /v1/server",
            "POST /database/v1/request_sftp_access",
            "POST /database/v1/upload",
            "POST /v1/requests/{id}/state",
            "PUT /v1/requests/{id}",
            "PUT /v1/requests/{id}/upgraded",
        ]
    );
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // The spec holds no secret: it is served without a token, and the token is not in it.
    assert!(!served.contains(TOKEN));
}

/// schemathesis' CLI in the tests' venv; installs it on first use.
fn schemathesis() -> std::path::PathBuf {
    let st = python().with_file_name("st");
    assert!(
        st.exists(),
        "schemathesis is missing from the test venv ({}): pip install schemathesis",
        st.display()
    );
    st
}

#[test]
fn schemathesis_finds_nothing() {
    let g = Gateway::start();
    let work = g.dir.path().to_path_buf();
    // Some records for it to find: one in draft with an upload, one done.
    let key = ClientKey::new(&work, "k");
    g.provision(1, "a.dump", &key);
    g.provision(2, "b.dump", &key);
    let upgraded = work.join("upgraded");
    random_file(&upgraded, 4096);
    g.finish(2, &upgraded);
    std::fs::write(work.join("a.dump"), b"some bytes").unwrap();
    let out = g.sftp("user_1", &key, "put a.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let report = work.join("schemathesis");
    let started = std::time::Instant::now();
    let child = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://{}/openapi.json", g.admin))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg("--report-dir")
        .arg(&report)
        .env("NO_COLOR", "1")
        .current_dir(&work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(300));
    let elapsed = started.elapsed();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures (exit {:?}, {elapsed:?}):\n{stdout}\n{}",
        out.status.code(),
        text(&out.stderr)
    );
    // It really ran every operation (all but `GET /openapi.json`, which schemathesis
    // leaves out as the schema's own address; the test above checks that one), and the
    // gateway is still whole.
    assert!(stdout.contains("12 selected / 12 total"), "{stdout}");
    assert!(stdout.contains("No issues found"), "{stdout}");
    let (code, v) = g.api("GET", "/healthz", None);
    assert_eq!(code, 200, "{v}");
    eprintln!("schemathesis took {elapsed:?}");
}

/// One id parser: `+5` and `05` are refused by the operator's routes, the customers' call
/// and the CLI alike, and `5` is accepted by all three.
#[test]
fn ids_have_one_spelling_everywhere() {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "k");
    g.provision(5, "a.dump", &key);
    let keys_file = key.path.with_extension("pub");
    let access = |request: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-X", "POST", "-F"])
            .arg(format!("ssh_keys=@{}", keys_file.display()))
            .args(["-F", &format!("request={request}"), "-F", "key=secret-5"])
            .arg(format!(
                "http://{}/database/v1/request_sftp_access",
                g.admin
            ))
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        reasons(&v)
    };
    let cli = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_sftpgate"))
            .args(["request", "show", id, "--admin"])
            .arg(format!("http://{}", g.admin))
            .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    for bad in ["+5", "05"] {
        let (code, v) = g.api("GET", &format!("/v1/requests/{bad}"), None);
        assert_eq!(
            (code, reasons(&v)),
            (400, vec!["REQUEST:INVALID_ID".to_string()])
        );
        assert_eq!(access(bad), ["REQUEST:INVALID"]);
        let out = cli(bad);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("a request id is a positive integer"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(g.api("GET", "/v1/requests/5", None).0, 200);
    assert_eq!(access("5"), Vec::<String>::new());
    let out = cli("5");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("sftp -P"),
        "{}",
        text(&out.stdout)
    );
}
