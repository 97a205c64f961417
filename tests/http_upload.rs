//! The reference's `upload` call, `POST /database/v1/upload?key=...&request=...` with the
//! dump as the body, against the real gateway over loopback: the reference's own curl and
//! pycurl samples, the key, state and size refusals (nothing changed), memory under a
//! 64 MiB body, resume by `Content-Range` and `?offset=`, one writer beside SFTP (both
//! ways, on one node and across two), a cancel mid-body, a client cut off mid-body or gone
//! silent, and `sftp put -a` going on from what an HTTP upload left.
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KEY: &str = "Aw7pItGVKFuZ_FOR3U8VFQ==";

/// The reference's bash sample, verbatim but for its URL.
const REFERENCE_CURL: &str = r#"UPLOAD_URL="@URL@"
DUMPFILE="openchs.70.cdump"
KEY="Aw7pItGVKFuZ_FOR3U8VFQ=="
REQUEST_ID="10534"
URL_PARAMS="key=${KEY}&request=${REQUEST_ID}"
HEADER="Content-Type: application/octet-stream"
curl -H $HEADER --data-binary "@${DUMPFILE}" "${UPLOAD_URL}?${URL_PARAMS}"
"#;

/// The reference's pycurl sample, verbatim but for its URL. It is Python 2 (`from urllib
/// import urlencode`); [`py2_shim`] provides that name on Python 3.
const REFERENCE_PYCURL: &str = r#"import os
import pycurl
from urllib import urlencode
UPLOAD_URL = "@URL@"
DUMPFILE = "openchs.70.cdump"
fields = dict([
('request', '10534'),
('key', 'Aw7pItGVKFuZ_FOR3U8VFQ=='),
])
headers = {"Content-Type": "application/octet-stream"}
postfields = urlencode(fields)
c = pycurl.Curl()
c.setopt(pycurl.URL, UPLOAD_URL+"?"+postfields)
c.setopt(pycurl.POST, 1)
filesize = os.path.getsize(DUMPFILE)
c.setopt(pycurl.POSTFIELDSIZE, filesize)
fp = open(DUMPFILE, 'rb')
c.setopt(pycurl.READFUNCTION, fp.read)
c.setopt(
pycurl.HTTPHEADER,
['%s: %s' % (k, headers[k]) for k in headers])
c.perform()
c.close()
"#;

fn upload_url(g: &Gateway) -> String {
    format!("http://{}/database/v1/upload", g.admin)
}

/// Creates request `id` in draft with request key `key` and no SSH keys.
fn provision_key(g: &Gateway, id: u64, filename: &str, key: &str) {
    let body = json!({"filename": filename, "key": key});
    let (code, v) = g.api("PUT", &format!("/v1/requests/{id}"), Some(&body));
    assert_eq!(code, 200, "{v}");
}

/// The customer's upload as the operator API serves it, written to `to`.
fn fetch_original(g: &Gateway, id: u64, to: &Path) {
    let out = Command::new("curl")
        .args(["-sS", "-f", "-o"])
        .arg(to)
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("http://{}/v1/requests/{id}/original", g.admin))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// POSTs `body` (a file) to the upload call with `query` and the `headers` given.
fn post(g: &Gateway, query: &str, body: &Path, headers: &[&str]) -> (u16, Value) {
    g.upload_post(query, body, headers)
}

/// The first `len` bytes of `src` from `at`, written to a new file `to`.
fn piece(src: &Path, at: u64, len: usize, to: &Path) {
    let mut f = std::fs::File::open(src).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    std::fs::write(to, buf).unwrap();
}

/// A raw HTTP/1.1 upload whose body the test sends by hand: the head announces
/// `length` bytes.
fn raw_upload(g: &Gateway, query: &str, length: u64) -> TcpStream {
    let mut s = TcpStream::connect(&g.admin).unwrap();
    write!(
        s,
        "POST /database/v1/upload?{query} HTTP/1.1\r\nHost: gw\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    s
}

/// Reads a whole HTTP answer from `s` (the gateway closes a connection whose body it did
/// not read to the end); returns its status and JSON body.
fn read_answer(mut s: TcpStream) -> (u16, Value) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    let mut reader = BufReader::new(&mut s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
    }
    match len {
        Some(n) => {
            all.resize(n, 0);
            reader.read_exact(&mut all).unwrap();
        }
        None => {
            reader.read_to_end(&mut all).unwrap();
        }
    }
    (code, serde_json::from_slice(&all).unwrap())
}

/// An answer's status and its failure reasons: `409 OFFSET:MISMATCH`.
fn outcome(code: u16, v: &Value) -> String {
    format!("{code} {}", reasons(v).join(" "))
}

fn bytes_of(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn reference_curl_sample_uploads_the_dump() {
    let (events_url, events) = hook_server();
    let g = Gateway::start_with(&["--on-upload-closed", &events_url]);
    let work = g.dir.path();
    provision_key(&g, 10534, "openchs.70.cdump", KEY);
    let src = work.join("openchs.70.cdump");
    // Over curl's 1 MiB threshold: it asks for `100 Continue` first.
    random_file(&src, 3_000_017);
    let script = REFERENCE_CURL.replace("@URL@", &upload_url(&g));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work)
        .output()
        .unwrap();
    // `-H $HEADER` is unquoted in the reference: curl gets `-H Content-Type:` (no content
    // type at all) and a first URL `application/octet-stream`, which does not resolve;
    // the upload is the second URL, and its answer is all of stdout.
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(answer["failures"], json!([]), "{answer}");
    assert_eq!(answer["upload"]["size"], 3_000_017);
    assert_eq!(answer["upload"]["bytes_written"], 3_000_017);
    assert_eq!(answer["upload"]["filename"], "openchs.70.cdump");
    let fetched = work.join("fetched");
    fetch_original(&g, 10534, &fetched);
    assert_eq!(sha256(&fetched), sha256(&src));

    // The same event as an SFTP write handle's close, marked as HTTP.
    let event = events
        .recv_timeout(Duration::from_secs(10))
        .expect("no event");
    assert_eq!(event["event"], "upload-closed");
    assert_eq!(event["request_id"], 10534);
    assert_eq!(event["user"], "user_10534");
    assert_eq!(event["via"], "http");
    assert_eq!(event["key_fingerprint"], Value::Null);
    assert_eq!(event["bytes_written"], 3_000_017);
    assert_eq!(event["final_size"], 3_000_017);
    assert!(event["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(g.log().contains("upload closed"), "no audit line");
    assert_eq!(g.metric("uploads_completed_total"), 1);
}

#[test]
fn reference_pycurl_sample_uploads_the_dump() {
    let g = Gateway::start();
    let work = g.dir.path();
    provision_key(&g, 10534, "openchs.70.cdump", KEY);
    let src = work.join("openchs.70.cdump");
    random_file(&src, 2_500_003);
    // A smaller file there first: the plain call replaces it.
    random_file(&g.upload_path(10534), 4_000_000);
    let script = REFERENCE_PYCURL.replace("@URL@", &upload_url(&g));
    let out = Command::new(python())
        .arg("-c")
        .arg(&script)
        .env("PYTHONPATH", py2_shim(work))
        .current_dir(work)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // pycurl without a WRITEFUNCTION prints the answer.
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    assert_eq!(answer["failures"], json!([]), "{answer}");
    assert_eq!(answer["upload"]["size"], 2_500_003);
    let fetched = work.join("fetched");
    fetch_original(&g, 10534, &fetched);
    assert_eq!(sha256(&fetched), sha256(&src));
}

#[test]
fn refusals_change_nothing() {
    let (g, _, first) = customer(&[], 20, 100_000);
    let q = "request=20&key=secret-20";
    let work = g.dir.path();
    let (code, v) = post(&g, q, &first, &[]);
    assert_eq!((code, v["failures"].clone()), (200, json!([])), "{v}");
    let other = work.join("other");
    random_file(&other, 200_000);
    let unchanged = |g: &Gateway| assert_eq!(sha256(&g.upload_path(20)), sha256(&first));

    for (query, status, reason) in [
        ("request=20&key=wrong", 403, "KEY:INVALID"),
        ("request=21&key=secret-20", 403, "KEY:INVALID"),
        ("request=20", 400, "KEY:MISSING"),
        ("key=secret-20", 400, "REQUEST:MISSING"),
        ("request=x20&key=secret-20", 400, "REQUEST:INVALID"),
        ("request=20&key=secret-20&offset=abc", 400, "OFFSET:INVALID"),
    ] {
        let (code, v) = post(&g, query, &other, &[]);
        assert_eq!(
            outcome(code, &v),
            format!("{status} {reason}"),
            "{query}: {v}"
        );
        unchanged(&g);
    }
    let (code, v) = post(&g, q, &other, &["Content-Range: bytes 5-4/*"]);
    assert_eq!(outcome(code, &v), "400 RANGE:INVALID", "{v}");
    unchanged(&g);
    // The unknown request's refusal is the wrong key's, word for word.
    let (_, wrong) = post(&g, "request=20&key=wrong", &other, &[]);
    let (_, unknown) = post(&g, "request=999&key=wrong", &other, &[]);
    assert_eq!(wrong, unknown);
    assert!(!g.upload_path(999).exists() && !g.upload_path(21).exists());

    // Only a draft request takes an upload.
    let upgraded = work.join("upgraded");
    random_file(&upgraded, 1000);
    g.finish(20, &upgraded);
    let (code, v) = post(&g, q, &other, &[]);
    assert_eq!(code, 409, "{v}");
    assert_eq!(reasons(&v), ["STATE:INVALID"]);
    assert_eq!(v["failures"][0]["value"], "done");
    assert_eq!(v["failures"][0]["expected"], json!(["draft"]));
    unchanged(&g);
    assert_eq!(g.set_state(20, "cancelled").0, 200);
    let (code, v) = post(&g, q, &other, &[]);
    assert_eq!(outcome(code, &v), "409 STATE:INVALID");
    assert_eq!(v["failures"][0]["value"], "cancelled");
    unchanged(&g);

    // The same throttle as request_sftp_access: five wrong keys for one request from one
    // address, and the right key is refused too for a while.
    provision_key(&g, 30, "db.dump", "secret-30");
    for _ in 0..5 {
        let (code, v) = post(&g, "request=30&key=nope", &other, &[]);
        assert_eq!(outcome(code, &v), "403 KEY:INVALID", "{v}");
    }
    let (code, v) = post(&g, "request=30&key=secret-30", &other, &[]);
    assert_eq!(outcome(code, &v), "429 KEY:THROTTLED", "{v}");
    assert!(!g.upload_path(30).exists());
    assert_eq!(g.log().matches("access-refused").count(), 9, "{}", g.log());
}

#[test]
fn the_size_limit_refuses_before_writing_when_the_length_is_known() {
    let (g, _, small) = customer(&["--max-upload-size", "1000000"], 40, 300_000);
    let q = "request=40&key=secret-40";
    let work = g.dir.path();
    assert_eq!(post(&g, q, &small, &[]).0, 200);
    let big = work.join("big");
    random_file(&big, 2_000_000);
    let (code, v) = post(&g, q, &big, &[]);
    assert_eq!(outcome(code, &v), "413 UPLOAD:TOO_LARGE", "{v}");
    assert_eq!(v["failures"][0]["value"], 1_000_000);
    assert_eq!(sha256(&g.upload_path(40)), sha256(&small));
    // An append that would cross it, and a total past it, likewise.
    let (code, _) = post(&g, &format!("{q}&offset=300000"), &big, &[]);
    assert_eq!(code, 413);
    let (code, _) = post(&g, q, &small, &["Content-Range: bytes 300000-*/2000000"]);
    assert_eq!(code, 413);
    assert_eq!(sha256(&g.upload_path(40)), sha256(&small));

    // Without a length (chunked), the bytes up to the limit are written, then refused:
    // the file is the dump's first 1,000,000 bytes, as if cut off there.
    let (code, v) = post(&g, q, &big, &["Transfer-Encoding: chunked"]);
    assert_eq!(outcome(code, &v), "413 UPLOAD:TOO_LARGE", "{v}");
    assert_eq!(v["upload"]["size"], 1_000_000);
    assert_eq!(g.upload_size(40), 1_000_000);
    assert!(is_prefix(&g.upload_path(40), &big));
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_64_mib_body_is_streamed_in_bounded_memory() {
    let (g, _, src) = customer(&[], 50, 64 << 20);
    let work = g.dir.path();
    let pid = g.child.as_ref().unwrap().id();
    // Warm up: the first call sets up what every call uses.
    let tiny = work.join("tiny");
    random_file(&tiny, 1000);
    assert_eq!(post(&g, "request=50&key=secret-50", &tiny, &[]).0, 200);
    let before = vm_kib(pid, "VmHWM:");
    // -T streams the file (curl does not read it whole, unlike --data-binary).
    let out = Command::new("curl")
        .args(["-sS", "-f", "-X", "POST", "-T"])
        .arg(&src)
        .arg(format!("{}?request=50&key=secret-50", upload_url(&g)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["upload"]["size"], 64 << 20);
    let grown = vm_kib(pid, "VmHWM:").saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB for a 64 MiB body");
    assert!(grown < 16 * 1024, "peak RSS grew by {grown} KiB");
    assert_eq!(sha256(&g.upload_path(50)), sha256(&src));
}

#[test]
fn resume_by_content_range_and_offset() {
    let (g, _, src) = customer(&[], 60, 3_000_000);
    let work = g.dir.path();
    let (a, b, c, d) = (
        work.join("a"),
        work.join("b"),
        work.join("c"),
        work.join("d"),
    );
    piece(&src, 0, 1_000_000, &a);
    piece(&src, 1_000_000, 700_000, &b);
    piece(&src, 1_700_000, 800_000, &c);
    piece(&src, 2_500_000, 500_000, &d);
    let q = "request=60&key=secret-60";
    let ranged = |body: &Path, range: &str| {
        let header = format!("Content-Range: bytes {range}");
        post(&g, q, body, &[&header])
    };
    assert_eq!(post(&g, q, &a, &[]).0, 200);

    let (code, v) = ranged(&b, "1000000-*/*");
    assert_eq!(outcome(code, &v), "200 ", "{v}");
    assert_eq!(v["upload"]["offset"], 1_000_000);
    assert_eq!(v["upload"]["bytes_written"], 700_000);
    assert_eq!(v["upload"]["size"], 1_700_000);

    // A wrong offset is refused with the size to go on from; nothing changes.
    for wrong in ["0", "1000000", "1700001"] {
        let (code, v) = post(&g, &format!("{q}&offset={wrong}"), &c, &[]);
        assert_eq!(outcome(code, &v), "409 OFFSET:MISMATCH", "{v}");
        assert_eq!(v["failures"][0]["value"], wrong.parse::<u64>().unwrap());
        assert_eq!(v["failures"][0]["expected"], json!(["1700000"]));
        assert_eq!(v["upload"]["size"], 1_700_000);
        assert_eq!(g.upload_size(60), 1_700_000);
    }
    let (code, v) = ranged(&c, "5-*/*");
    assert_eq!(outcome(code, &v), "409 OFFSET:MISMATCH");

    let (code, v) = post(&g, &format!("{q}&offset=1700000"), &c, &[]);
    assert_eq!(outcome(code, &v), "200 ", "{v}");
    // The complete form, with the last byte and the total.
    let (code, v) = ranged(&d, "2500000-2999999/3000000");
    assert_eq!(outcome(code, &v), "200 ", "{v}");
    assert_eq!(v["upload"]["size"], 3_000_000);
    let fetched = work.join("fetched");
    fetch_original(&g, 60, &fetched);
    assert_eq!(sha256(&fetched), sha256(&src));
}

/// Holds a paramiko write handle on `db.dump` open (with 1000 bytes written) until told to
/// close it; or, with `open` as its mode, tries to open one and prints what happened.
const PARAMIKO: &str = r#"
import sys, time, paramiko
port, key, user, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key))
sftp = paramiko.SFTPClient.from_transport(t)
if mode == "hold":
    f = sftp.open("db.dump", "w")
    f.write(b"x" * 1000)
    f.flush()
    print("open", flush=True)
    sys.stdin.readline()
    f.close()
    print("closed", flush=True)
    sys.stdin.readline()
else:
    started = time.monotonic()
    try:
        sftp.open("db.dump", "w").close()
        print("opened", flush=True)
    except IOError as e:
        print("refused after %.2f s: %s" % (time.monotonic() - started, e), flush=True)
"#;

fn paramiko(g: &Gateway, key: &ClientKey, user: &str, mode: &str) -> std::process::Child {
    let port = g.ssh_port.to_string();
    spawn_python(PARAMIKO, &[&port, key.path.to_str().unwrap(), user, mode])
}

/// A gateway started with `flags`, request `id` in draft for SSH key `k` (request key
/// `secret-<id>`), and a `db.dump` of `len` random bytes to upload.
fn customer(flags: &[&str], id: u64, len: usize) -> (Gateway, ClientKey, std::path::PathBuf) {
    let g = Gateway::start_with(flags);
    let key = ClientKey::new(g.dir.path(), "k");
    g.provision(id, "db.dump", &key);
    let src = g.dir.path().join("db.dump");
    random_file(&src, len);
    (g, key, src)
}

/// With a paramiko write handle held open through `sftp`, an upload of `src` to request
/// `id` through `http` waits at least `wait`, then is refused `UPLOAD:BUSY` with the file
/// unchanged; once the handle is closed, the same call goes through.
fn busy_beside_a_write_handle(
    sftp: &Gateway,
    http: &Gateway,
    key: &ClientKey,
    id: u64,
    src: &Path,
    wait: Duration,
) {
    let query = format!("request={id}&key=secret-{id}");
    let mut holder = paramiko(sftp, key, &format!("user_{id}"), "hold");
    let mut out = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "open");
    let started = Instant::now();
    let (code, v) = post(http, &query, src, &[]);
    let waited = started.elapsed();
    assert_eq!(outcome(code, &v), "409 UPLOAD:BUSY", "{v}");
    assert!(
        waited >= wait && waited < wait + Duration::from_secs(10),
        "{waited:?}"
    );
    assert_eq!(bytes_of(&http.upload_path(id)), vec![b'x'; 1000]);
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin).unwrap();
    assert_eq!(out.next().unwrap().unwrap(), "closed");
    let (code, v) = post(http, &query, src, &[]);
    assert_eq!(outcome(code, &v), "200 ", "{v}");
    assert_eq!(sha256(&sftp.upload_path(id)), sha256(src));
    drop(stdin);
    holder.wait().unwrap();
}

/// While an upload to request `id` through `http` is under way, a paramiko write open
/// through `sftp` is refused, saying `why`; then the upload ends well.
fn sftp_kept_out_by_an_upload(http: &Gateway, sftp: &Gateway, key: &ClientKey, id: u64, why: &str) {
    let mut s = raw_upload(http, &format!("request={id}&key=secret-{id}"), 2000);
    s.write_all(&[b'a'; 1000]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || http.upload_size(id) == 1000));
    let opener = paramiko(sftp, key, &format!("user_{id}"), "open");
    let said = text(&opener.wait_with_output().unwrap().stdout);
    assert!(
        said.starts_with("refused after") && said.contains(why),
        "{said}"
    );
    s.write_all(&[b'b'; 1000]).unwrap();
    let (code, v) = read_answer(s);
    assert_eq!(outcome(code, &v), "200 ", "{v}");
    let mut want = vec![b'a'; 1000];
    want.extend([b'b'; 1000]);
    assert_eq!(bytes_of(&sftp.upload_path(id)), want);
}

#[test]
fn one_writer_at_a_time_beside_sftp() {
    let (g, key, src) = customer(&["--lease-wait", "1s"], 70, 500_000);
    // The last attempt is the last that fits in the wait, polled every quarter of it.
    busy_beside_a_write_handle(&g, &g, &key, 70, &src, Duration::from_millis(700));
    sftp_kept_out_by_an_upload(&g, &g, &key, 70, "being written by another transfer");
}

#[test]
fn a_body_cut_off_or_silent_keeps_its_bytes_and_put_a_goes_on() {
    let (g, key, src) = customer(&["--http-body-timeout-secs", "2"], 80, 4_000_000);
    let work = g.dir.path();
    let whole = bytes_of(&src);

    // Cut off after 1,234,567 of 4,000,000 bytes: they are kept, synced, and reported.
    let mut s = raw_upload(&g, "request=80&key=secret-80", 4_000_000);
    s.write_all(&whole[..1_234_567]).unwrap();
    drop(s);
    assert!(g.wait_log("upload closed", 1), "{}", g.log());
    assert_eq!(g.upload_size(80), 1_234_567);
    assert!(is_prefix(&g.upload_path(80), &src));

    // Silent after a piece of an append: answered BODY:INTERRUPTED with the size.
    let mut s = raw_upload(&g, "request=80&key=secret-80&offset=1234567", 2_000_000);
    s.write_all(&whole[1_234_567..2_000_000]).unwrap();
    let started = Instant::now();
    let (code, v) = read_answer(s);
    assert_eq!(outcome(code, &v), "400 BODY:INTERRUPTED", "{v}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(v["upload"]["size"], 2_000_000);
    assert_eq!(v["upload"]["bytes_written"], 2_000_000 - 1_234_567);
    assert_eq!(g.upload_size(80), 2_000_000);

    // OpenSSH's put -a goes on from there, byte-exact.
    let out = g.sftp("user_80", &key, "put -a db.dump db.dump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(80)), sha256(&src));
}

#[test]
fn a_cancel_mid_body_stops_the_upload_within_seconds() {
    let (g, _, _) = customer(&[], 90, 0);
    let mut s = raw_upload(&g, "request=90&key=secret-90", 1_000_000);
    s.write_all(&[b'a'; 1000]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || g.upload_size(90) == 1000));
    assert_eq!(g.set_state(90, "cancelled").0, 200);
    // The client goes on sending nothing: the upload ends anyway, with the reason.
    let started = Instant::now();
    let (code, v) = read_answer(s);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(outcome(code, &v), "409 STATE:INVALID", "{v}");
    assert_eq!(v["failures"][0]["value"], "cancelled");
    assert_eq!(v["upload"]["size"], 1000);
    assert!(g.log().contains("stopping the upload"), "{}", g.log());
}

/// The same rule across nodes sharing a PostgreSQL store and the data directory: the
/// lease is the one SFTP write handles take.
#[test]
fn one_writer_at_a_time_across_nodes() {
    let db = common::postgres::database();
    let flags = ["--store", &db.url, "--lease-wait", "2s"];
    let (a, key, src) = customer(&flags, 75, 300_000);
    let b = Gateway::start_node(&a, &flags);
    busy_beside_a_write_handle(&b, &a, &key, 75, &src, Duration::from_millis(1400));
    sftp_kept_out_by_an_upload(&a, &b, &key, 75, "through another gateway node");
}

#[test]
fn sigterm_ends_an_upload_synced_and_the_gateway_exits() {
    let (mut g, _, _) = customer(&[], 95, 0);
    let mut s = raw_upload(&g, "request=95&key=secret-95", 1_000_000);
    s.write_all(&[b'a'; 5000]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || g.upload_size(95) == 5000));
    let mut child = g.child.take().unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (code, v) = read_answer(s);
    assert_eq!(outcome(code, &v), "503 GATEWAY:STOPPING", "{v}");
    assert_eq!(v["upload"]["size"], 5000);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(g.log().contains("upload closed"), "{}", g.log());
    assert_eq!(g.upload_size(95), 5000);
}
