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
        "the status page test needs Debian's chromium (apt-get install chromium; .ci/run does)"
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
