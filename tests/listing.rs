//! `GET /v1/requests` in pages: `limit`, the `after` cursor, the `state` and
//! `updated_since` filters, their refusals, and its callers (the CLI pages through
//! everything; the status page shows one bounded page with a link to the next). The
//! gateway starts on records written straight into its data directory, as the file store
//! keeps them, so that a listing of over a thousand costs no thousand API calls.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

const STATES: [&str; 4] = ["draft", "pending", "done", "cancelled"];

/// The i-th seeded record: id 3i (gaps between ids), states in turn, updated i minutes
/// into 2026.
fn seeded(i: u64) -> (u64, &'static str, String) {
    let t = time::macros::datetime!(2026-01-01 00:00 UTC) + time::Duration::minutes(i as i64);
    let at = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    (3 * i, STATES[(i % 4) as usize], at)
}

/// Writes `n` records into `data`'s store before the gateway opens it.
fn seed(data: &Path, n: u64) {
    for i in 1..=n {
        let (id, state, at) = seeded(i);
        let dir = data.join(format!("requests/{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let record = json!({"id": id, "filename": format!("db-{id}.dump"), "state": state,
            "key_sha256": "0".repeat(64), "ssh_keys": "", "expires_at": null,
            "created_at": at, "updated_at": at});
        std::fs::write(dir.join("request.json"), record.to_string()).unwrap();
    }
}

fn seeded_gateway(n: u64) -> Gateway {
    let mut g = Gateway::start();
    g.stop("TERM");
    seed(&g.data(), n);
    g.launch(&[]);
    g
}

fn ids(v: &Value) -> Vec<u64> {
    v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

/// Pages through `/v1/requests?<query>` with `limit`; returns every id in the order
/// received, and the number of calls.
fn page_through(g: &Gateway, query: &str, limit: usize) -> (Vec<u64>, usize) {
    let (mut all, mut calls, mut after) = (Vec::new(), 0, None::<u64>);
    loop {
        let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let (code, v) = g.api(
            "GET",
            &format!("/v1/requests?limit={limit}{cursor}{query}"),
            None,
        );
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["failures"], json!([]));
        calls += 1;
        let page = ids(&v);
        assert!(page.len() <= limit);
        all.extend(&page);
        match v["next"].as_u64() {
            Some(next) => {
                assert_eq!(Some(&next), page.last(), "next is the page's last id");
                assert_eq!(page.len(), limit, "only a full page has a next");
                after = Some(next);
            }
            None => {
                assert!(v["next"].is_null(), "{v}");
                return (all, calls);
            }
        }
    }
}

#[test]
fn pages_return_each_record_once_in_order_with_filters() {
    let n = 1234;
    let g = seeded_gateway(n);
    let every: Vec<u64> = (1..=n).map(|i| seeded(i).0).collect();

    // No parameters: the first 100, and where the next page starts.
    let (code, v) = g.api("GET", "/v1/requests", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(ids(&v), every[..100]);
    assert_eq!(v["next"], every[99]);
    assert_eq!(
        v["requests"][0]["sample_command"],
        format!("sftp -P {} user_3@127.0.0.1", g.ssh_port)
    );

    let (all, calls) = page_through(&g, "", 97);
    assert_eq!(all, every);
    assert_eq!(calls, 13); // 12 full pages of 97 and one of 70
    let (all, _) = page_through(&g, "", 1000);
    assert_eq!(all, every);

    for state in STATES {
        let wanted: Vec<u64> = (1..=n)
            .map(seeded)
            .filter(|(_, s, _)| *s == state)
            .map(|(id, _, _)| id)
            .collect();
        let (all, _) = page_through(&g, &format!("&state={state}"), 50);
        assert_eq!(all, wanted, "{state}");
    }
    // Updated at or after the 1000th record's time: the last 235, and of those the drafts.
    let since = seeded(1000).2;
    let (all, _) = page_through(&g, &format!("&updated_since={since}"), 100);
    assert_eq!(all, every[999..]);
    let (all, _) = page_through(&g, &format!("&updated_since={since}&state=draft"), 7);
    let drafts: Vec<u64> = (1000..=n).filter(|i| i % 4 == 0).map(|i| 3 * i).collect();
    assert_eq!(all, drafts);
    // The same time with its offset written out, `+` percent-encoded or not.
    let (code, v) = g.api(
        "GET",
        "/v1/requests?limit=1000&updated_since=2026-01-01T17:40:00%2B01:00",
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(ids(&v), every[999..]);
    let (code, v) = g.api(
        "GET",
        "/v1/requests?limit=1000&updated_since=2026-01-01T17:40:00+01:00",
        None,
    );
    assert_eq!((code, ids(&v)), (200, every[999..].to_vec()));
    // Past the last id: an empty last page.
    let (code, v) = g.api("GET", &format!("/v1/requests?after={}", 3 * n), None);
    assert_eq!(
        (code, ids(&v), v["next"].clone()),
        (200, vec![], Value::Null)
    );
}

#[test]
fn a_cursor_is_stable_while_records_come_and_go() {
    let g = seeded_gateway(10);
    let (_, first) = g.api("GET", "/v1/requests?limit=4", None);
    assert_eq!(ids(&first), [3, 6, 9, 12]);
    // Created behind the cursor (id 4) and ahead of it (id 16); deleted ahead (id 15).
    let body = json!({"filename": "new.dump", "key": "k-new"});
    for id in [4, 16] {
        let (code, v) = g.api("PUT", &format!("/v1/requests/{id}"), Some(&body));
        assert_eq!(code, 200, "{v}");
    }
    assert_eq!(g.api("DELETE", "/v1/requests/15", None).0, 200);
    let (_, second) = g.api("GET", "/v1/requests?limit=4&after=12", None);
    assert_eq!(ids(&second), [16, 18, 21, 24]);
    let (_, last) = g.api("GET", "/v1/requests?limit=4&after=24", None);
    assert_eq!(
        (ids(&last), last["next"].clone()),
        (vec![27, 30], Value::Null)
    );
}

#[test]
fn bad_parameters_are_refused_with_their_reason() {
    let g = seeded_gateway(3);
    let cases = [
        (
            "limit=0",
            "limit: must be an integer from 1 to 1000",
            json!("0"),
        ),
        (
            "limit=1001",
            "limit: must be an integer from 1 to 1000",
            json!("1001"),
        ),
        (
            "limit=%2B5",
            "limit: must be an integer from 1 to 1000",
            json!("+5"),
        ),
        (
            "after=abc",
            "after: must be a request id (a positive integer), or 0 for the start",
            json!("abc"),
        ),
        (
            "after=-1",
            "after: must be a request id (a positive integer), or 0 for the start",
            json!("-1"),
        ),
        ("state=open", "state: unknown state \"open\"", json!("open")),
        (
            "updated_since=yesterday",
            "updated_since: must be an RFC 3339 time such as 2026-12-01T00:00:00Z",
            json!("yesterday"),
        ),
        (
            "page=2",
            "page: unknown parameter; known: limit, after, state, updated_since",
            json!("2"),
        ),
        ("limit=5&limit=6", "limit: given more than once", json!("6")),
    ];
    for (query, message, value) in cases {
        let (code, v) = g.api("GET", &format!("/v1/requests?{query}"), None);
        assert_eq!(code, 400, "{query}: {v}");
        let mut want = json!({"reason": "QUERY:INVALID", "message": message, "value": value});
        if query.starts_with("state") {
            want["expected"] = json!(STATES_ALL);
        }
        assert_eq!(v["failures"], json!([want]), "{query}");
        assert!(v.get("requests").is_none(), "{query}: {v}");
    }
    // Every problem at once.
    let (code, v) = g.api("GET", "/v1/requests?limit=x&after=y", None);
    assert_eq!(code, 400);
    assert_eq!(reasons(&v), ["QUERY:INVALID", "QUERY:INVALID"]);
}

const STATES_ALL: [&str; 6] = [
    "draft",
    "pending",
    "progress",
    "done",
    "failed",
    "cancelled",
];

fn cli(g: &Gateway, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sftpgate"))
        .args(args)
        .args(["--admin", &format!("http://{}", g.admin)])
        .env("SFTPGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap()
}

#[test]
fn the_cli_lists_every_page_or_one() {
    let n = 1234;
    let g = seeded_gateway(n);
    // Everything, in two calls of 1000 and 234.
    let out = cli(&g, &["request", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let every: Vec<u64> = (1..=n).map(|i| seeded(i).0).collect();
    assert_eq!(ids(&v), every);
    assert!(v["next"].is_null());
    let out = cli(&g, &["request", "list"]);
    assert_eq!(text(&out.stdout).lines().count(), n as usize);
    // One page, filtered, with where to go on.
    let out = cli(
        &g,
        &[
            "request", "list", "--limit", "3", "--state", "done", "--after", "6",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (line, id) in lines.iter().zip([18, 30, 42]) {
        assert!(line.trim_start().starts_with(&format!("{id} ")), "{line}");
        assert!(line.contains("done"), "{line}");
    }
    assert_eq!(lines[3], "more: --after 42");
    let out = cli(&g, &["request", "list", "--limit", "0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("QUERY:INVALID: limit: must be an integer from 1 to 1000"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_status_page_shows_one_page_and_links_the_next() {
    let g = seeded_gateway(150);
    let jar = g.dir.path().join("cookies");
    let login = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-c"])
        .arg(&jar)
        .args(["--data-urlencode", &format!("token={TOKEN}")])
        .arg(format!("http://{}/login", g.admin))
        .output()
        .unwrap();
    assert_eq!(text(&login.stdout), "303");
    let page = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-b"])
            .arg(&jar)
            .arg(format!("http://{}{path}", g.admin))
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let first = page("/");
    assert_eq!(first.matches("<tr id=\"request-").count(), 100);
    assert!(first.contains("Requests 3 to 300 (by id)"), "{first}");
    assert!(
        first.contains("<a href=\"/?after=300\" id=\"next\">"),
        "{first}"
    );
    let second = page("/?after=300");
    assert_eq!(second.matches("<tr id=\"request-").count(), 50);
    assert!(second.contains("id=\"request-303\""));
    assert!(!second.contains("id=\"next\""), "{second}");
    assert!(second.contains("<a href=\"/\" id=\"first\">"), "{second}");
}
