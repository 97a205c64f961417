//! The operator status page, looked at in headless Chromium (Debian's `chromium`, driven
//! over the DevTools protocol by a short Python script): log in through the form, see a
//! provisioned request and an upload in progress, take a screenshot.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const DRIVER: &str = r#"
import json, os, subprocess, sys, tempfile, time, urllib.request
import websocket

admin, token, shot = sys.argv[1], sys.argv[2], sys.argv[3]
profile = tempfile.mkdtemp()
browser = subprocess.Popen([
    "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--user-data-dir=" + profile, "--remote-debugging-port=0", "--window-size=1200,600", "about:blank",
], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    port_file = os.path.join(profile, "DevToolsActivePort")
    for _ in range(300):
        if os.path.exists(port_file) and open(port_file).read().strip():
            break
        time.sleep(0.05)
    port = open(port_file).read().split()[0]
    pages = json.load(urllib.request.urlopen("http://127.0.0.1:%s/json/list" % port))
    page = [p for p in pages if p["type"] == "page"][0]
    ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=20, suppress_origin=True)
    ids = iter(range(1, 10**6))
    def call(method, **params):
        i = next(ids)
        ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            m = json.loads(ws.recv())
            if m.get("id") == i:
                return m.get("result", {})
    def js(expr):
        return call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")
    def wait_for(expr, limit=15):
        end = time.time() + limit
        while time.time() < end:
            if js(expr):
                return True
            time.sleep(0.1)
        raise SystemExit("timed out waiting for " + expr + "; page: " + str(js("document.body && document.body.innerText")))
    call("Page.enable")
    call("Page.navigate", url="http://%s/" % admin)
    wait_for("document.getElementById('token') !== null")
    js("document.getElementById('token').value = %s" % json.dumps(token))
    js("document.getElementById('login').click()")
    wait_for("document.getElementById('requests') !== null")
    wait_for("document.body.innerText.includes('uploading')")
    print(js("document.body.innerText"))
    png = call("Page.captureScreenshot", format="png")["data"]
    import base64
    open(shot, "wb").write(base64.b64decode(png))
finally:
    browser.kill()
"#;

#[test]
fn status_page_shows_requests_and_an_upload_in_progress() {
    assert!(
        Command::new("chromium")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the status page test needs Debian's chromium (apt-get install chromium; the README's ./run-tests does)"
    );
    let g = Gateway::start();
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "page");
    g.provision(10534, "<b>openchs<b>&amp;.70.cdump", &key);
    g.provision(10535, "idle.dump", &key);
    let src = work.join("src.bin");
    random_file(&src, 64 * 1024 * 1024);
    // A slow upload, so that it is in progress while the page is looked at.
    let (mut child, _stdin) = g.spawn_sftp(
        "user_10534",
        &key,
        &["-l", "8000"],
        &work,
        "put src.bin \"/<b>openchs<b>&amp;.70.cdump\"\n",
    );
    assert!(wait_until(Duration::from_secs(20), || {
        g.api("GET", "/v1/requests/10534", None).1["request"]["writing"] == true
    }));
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let page = run_python(DRIVER, &[&g.admin, TOKEN, shot.to_str().unwrap()]);
    let _ = child.kill();
    assert!(page.contains("10534") && page.contains("10535"), "{page}");
    // The file name is shown as text, not interpreted as markup.
    assert!(page.contains("<b>openchs<b>&amp;.70.cdump"), "{page}");
    assert!(
        page.contains("idle.dump") && page.contains("draft"),
        "{page}"
    );
    assert!(page.contains("uploading:"), "{page}");
    assert!(
        page.contains("127.0.0.1:"),
        "client address missing: {page}"
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 5_000,
        "screenshot too small"
    );

    // Without the token cookie, the page is only a login form.
    let out = Command::new("curl")
        .args(["-sS", &format!("http://{}/", g.admin)])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("name=\"token\"") && !text(&out.stdout).contains("10534"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data",
            "token=wrong",
            &format!("http://{}/login", g.admin),
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "401");
}

/// One page request with curl: (status, headers as received, body).
fn page(
    g: &Gateway,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    from: &str,
) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--interface", from]);
    if let Some(c) = cookie {
        cmd.args(["-H", &format!("Cookie: {c}")]);
    }
    if let Some(f) = form {
        cmd.args(["--data", f]);
    }
    let out = cmd
        .arg(format!("http://{}{path}", g.admin))
        .output()
        .unwrap();
    let all = text(&out.stdout);
    let (head, body) = all
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{all:?}"));
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .map(str::trim)
        .collect()
}

/// POSTs the login form with `token` from address `from`.
fn login_from(g: &Gateway, token: &str, from: &str) -> (u16, String, String) {
    page(g, "/login", None, Some(&format!("token={token}")), from)
}

/// Logs in from 127.0.0.1; returns the `name=value` of the cookie and its whole Set-Cookie.
fn log_in(g: &Gateway) -> (String, String) {
    let (code, head, _) = login_from(g, TOKEN, "127.0.0.1");
    assert_eq!(code, 303, "{head}");
    let set = header(&head, "set-cookie");
    assert_eq!(set.len(), 1, "{head}");
    let cookie = set[0].split(';').next().unwrap().to_string();
    (cookie, set[0].to_string())
}

fn shows_requests(g: &Gateway, cookie: &str) -> bool {
    let (code, _, body) = page(g, "/", Some(cookie), None, "127.0.0.1");
    assert_eq!(code, 200);
    body.contains("id=\"requests\"")
}

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[test]
fn login_gives_a_session_that_logout_revokes() {
    let g = Gateway::start();
    let (cookie, set) = log_in(&g);
    assert!(!set.contains(&TOKEN.to_ascii_lowercase()), "{set}");
    let id = cookie.strip_prefix("sftpgate_session=").unwrap();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{cookie}"
    );
    assert_eq!(
        set,
        format!("{cookie}; httponly; samesite=strict; path=/; max-age=43200"),
        "plain http: no Secure"
    );
    assert!(shows_requests(&g, &cookie));
    // The token itself is not a cookie that logs in.
    assert!(!shows_requests(&g, &format!("sftpgate_session={TOKEN}")));
    assert!(!shows_requests(&g, &format!("sftpgate_token={TOKEN}")));
    // A second login is another session.
    let (other, _) = log_in(&g);
    assert_ne!(other, cookie);

    let (code, head, _) = page(&g, "/logout", Some(&cookie), Some(""), "127.0.0.1");
    assert_eq!(code, 303);
    assert_eq!(
        header(&head, "set-cookie"),
        ["sftpgate_session=; httponly; samesite=strict; path=/; max-age=0"]
    );
    assert!(
        !shows_requests(&g, &cookie),
        "a copy of the cookie outlived logout"
    );
    assert!(
        shows_requests(&g, &other),
        "logout ends only its own session"
    );
}

#[test]
fn page_responses_forbid_framing_and_foreign_content() {
    let g = Gateway::start();
    let (cookie, _) = log_in(&g);
    for (path, cookie, form) in [
        ("/", None, None),
        ("/", Some(cookie.as_str()), None),
        ("/login", None, Some("token=wrong")),
        ("/logout", Some(cookie.as_str()), Some("")),
    ] {
        let (_, head, _) = page(&g, path, cookie, form, "127.0.0.1");
        assert_eq!(header(&head, "x-frame-options"), ["deny"], "{path}: {head}");
        assert_eq!(
            header(&head, "content-security-policy"),
            [CSP.to_ascii_lowercase()],
            "{path}: {head}"
        );
        assert_eq!(
            header(&head, "cache-control"),
            ["no-store"],
            "{path}: {head}"
        );
    }
}

#[test]
fn sessions_expire_and_https_cookies_are_secure() {
    let g = Gateway::start_with(&["--page-session-ttl", "2s", "--page-https"]);
    let (cookie, set) = log_in(&g);
    assert_eq!(
        set,
        // The cookie crate's order of attributes (which carries no meaning).
        format!("{cookie}; httponly; samesite=strict; secure; path=/; max-age=2")
    );
    assert!(shows_requests(&g, &cookie));
    assert!(
        wait_until(Duration::from_secs(10), || !shows_requests(&g, &cookie)),
        "the session outlived its 2 s"
    );
}

#[test]
fn failed_logins_are_throttled_per_source() {
    let g = Gateway::start();
    for _ in 0..5 {
        let (code, _, body) = login_from(&g, "wrong", "127.0.0.1");
        assert_eq!(code, 401);
        assert!(body.contains("that token is not valid"), "{body}");
    }
    for token in ["wrong", TOKEN] {
        let (code, head, body) = login_from(&g, token, "127.0.0.1");
        assert_eq!(code, 429, "{head}");
        assert!(
            body.contains("too many failed logins from this address: try again later"),
            "{body}"
        );
        assert!(header(&head, "set-cookie").is_empty(), "{head}");
        let wait: u64 = header(&head, "retry-after")[0].parse().unwrap();
        assert!((1..=60).contains(&wait), "{head}");
    }
    // Another address is not affected.
    let (code, head, _) = login_from(&g, TOKEN, "127.0.0.2");
    assert_eq!(code, 303, "{head}");
    assert!(g.wait_log("page-login-throttled", 2));
    // Throttled attempts cannot flood the log: a few lines per window, the rest counted.
    for _ in 0..30 {
        assert_eq!(login_from(&g, "wrong", "127.0.0.1").0, 429);
    }
    let lines = g.log().matches("page-login-throttled").count();
    assert!(
        (2..=5).contains(&lines),
        "{lines} log lines for 32 throttled logins"
    );
}
