//! The transfer tests of the file storage, on S3-compatible object storage
//! (`--storage s3://...`): a real S3 server (moto's, from PyPI, or the endpoint of
//! `SFTPGATE_TEST_S3_URL`) started by the tests on loopback, real OpenSSH `sftp` and curl
//! clients, and every byte compared by sha256 against the object as the server holds it
//! (read back with boto3, not with the gateway's own client).

mod common;

use std::path::Path;
use std::time::Duration;

use common::s3::TestS3;
use common::*;

/// A test's bucket (or prefix, on an external endpoint), and a way to look at it with
/// boto3, an S3 client independent of the gateway's.
struct Bucket {
    s3: TestS3,
    name: String,
    /// The key prefix objects are under, with its trailing `/` (empty on moto).
    prefix: String,
}

impl Bucket {
    fn new() -> Bucket {
        let s3 = TestS3::new();
        let path = s3.url.trim_start_matches("s3://").to_string();
        let (name, prefix) = match path.split_once('/') {
            Some((b, p)) => (b.to_string(), format!("{}/", p.trim_matches('/'))),
            None => (path, String::new()),
        };
        Bucket { s3, name, prefix }
    }

    fn gateway_flags(&self) -> Vec<String> {
        self.s3.flags()
    }

    fn env(&self) -> Vec<(String, String)> {
        self.s3.env()
    }

    /// Runs `body` with `s3` (a boto3 client on the endpoint), `BUCKET` and `PREFIX` set;
    /// its output.
    fn boto3(&self, body: &str) -> String {
        let script = format!(
            "import boto3\n\
             s3 = boto3.client('s3', endpoint_url={endpoint})\n\
             BUCKET = {bucket:?}\nPREFIX = {prefix:?}\n{body}",
            endpoint = self
                .s3
                .endpoint
                .as_ref()
                .map_or("None".to_string(), |e| format!("{e:?}")),
            bucket = self.name,
            prefix = self.prefix,
        );
        let out = std::process::Command::new(python())
            .arg("-c")
            .arg(&script)
            .envs(self.env())
            .output()
            .unwrap();
        assert!(out.status.success(), "boto3: {}", text(&out.stderr));
        text(&out.stdout)
    }
}

/// Small parts, so that a few MiB make several of them (S3's minimum is 5 MiB).
const PART: u64 = 5 * 1024 * 1024;

/// The flags of a node on `bucket`: 5 MiB parts, a quick sweeper, and `extra`.
fn s3_flags(bucket: &Bucket, extra: &[&str]) -> Vec<String> {
    let mut flags = bucket.gateway_flags();
    let part = PART.to_string();
    flags.extend(
        ["--s3-part-size", &part, "--s3-sweep-every", "1s"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
    );
    flags
}

/// Starts (or restarts) `g` on `bucket` with [`s3_flags`].
fn launch_on(g: &mut Gateway, bucket: &Bucket, extra: &[&str]) {
    let flags = s3_flags(bucket, extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env = bucket.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    g.launch_env(&flags, &env);
}

/// A gateway on a fresh bucket, with 5 MiB parts and a quick sweeper.
fn s3_gateway(bucket: &Bucket, extra: &[&str]) -> Gateway {
    let mut g = Gateway::unstarted("127.0.0.1");
    launch_on(&mut g, bucket, extra);
    g
}

/// The sha256 of the object at `key` under the bucket's prefix, `None` if there is none.
fn object_sha(bucket: &Bucket, key: &str) -> Option<String> {
    let out = bucket.boto3(&format!(
        "import hashlib\n\
         try:\n    body = s3.get_object(Bucket=BUCKET, Key=PREFIX + {key:?})['Body'].read()\n\
         except s3.exceptions.NoSuchKey:\n    print('none'); raise SystemExit\n\
         print(hashlib.sha256(body).hexdigest())\n"
    ));
    let out = out.trim();
    (out != "none").then(|| out.to_string())
}

/// The multipart uploads in progress under the bucket's prefix, as the server lists them.
fn pending_uploads(bucket: &Bucket) -> Vec<String> {
    let out = bucket.boto3(
        "r = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=PREFIX)\n\
         for u in r.get('Uploads', []):\n    print(u['Key'])\n",
    );
    out.lines().map(str::to_string).collect()
}

fn objects(bucket: &Bucket) -> Vec<String> {
    let out = bucket.boto3(
        "r = s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)\n\
         for o in r.get('Contents', []):\n    print(o['Key'])\n",
    );
    out.lines().map(str::to_string).collect()
}

/// The gateway's log without its colours.
fn plain_log(g: &Gateway) -> String {
    let log = g.log();
    let mut out = String::with_capacity(log.len());
    let mut rest = log.as_str();
    while let Some(at) = rest.find('\x1b') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = rest.find('m').map_or("", |m| &rest[m + 1..]);
    }
    out.push_str(rest);
    out
}

fn prefix_of(path: &Path, len: u64, to: &Path) {
    let data = std::fs::read(path).unwrap();
    std::fs::write(to, &data[..len as usize]).unwrap();
}

fn remote_size(g: &Gateway, user: &str, key: &ClientKey, name: &str, cwd: &Path) -> u64 {
    let out = g.sftp(user, key, &format!("ls -l {name}\n"), cwd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let line = listing
        .lines()
        // Not the batch's own echo (`sftp> ls -l NAME`).
        .find(|l| l.ends_with(name) && !l.starts_with("sftp>"))
        .unwrap_or_else(|| panic!("{name} not listed: {listing}"));
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

/// Request `id`'s row on the operator's status page (logged in with curl), as HTML.
fn status_row(g: &Gateway, id: u64) -> String {
    let login = std::process::Command::new("curl")
        .args(["-sS", "-i", "--data", &format!("token={TOKEN}")])
        .arg(format!("http://{}/login", g.admin))
        .output()
        .unwrap();
    let head = text(&login.stdout);
    let cookie = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("set-cookie: ")
                .map(str::to_string)
        })
        .and_then(|c| c.split(';').next().map(str::to_string))
        .unwrap_or_else(|| panic!("no session cookie: {head}"));
    let page = std::process::Command::new("curl")
        .args(["-sS", "-H", &format!("Cookie: {cookie}")])
        .arg(format!("http://{}/", g.admin))
        .output()
        .unwrap();
    let page = text(&page.stdout);
    let start = page
        .find(&format!("id=\"request-{id}\""))
        .unwrap_or_else(|| panic!("no row for {id}: {page}"));
    let end = page[start..]
        .find("</tr>")
        .map_or(page.len(), |e| start + e);
    page[start..end].to_string()
}

#[test]
fn upload_resume_after_close_and_download_on_s3() {
    let bucket = Bucket::new();
    let g = s3_gateway(&bucket, &[]);
    let work = g.dir.path();
    let key = ClientKey::new(work, "alice");
    g.provision(10534, "openchs.70.cdump", &key);
    let src = work.join("openchs.70.cdump");
    random_file(&src, 3 * PART as usize + 12345);

    // Listed empty before anything was uploaded, so that `put -a` can start from nothing.
    assert_eq!(
        remote_size(&g, "user_10534", &key, "openchs.70.cdump", work),
        0
    );
    // A first upload of 7 MiB: one part and a tail, completed at the close.
    let part = work.join("part");
    prefix_of(&src, 7 * 1024 * 1024, &part);
    let out = g.sftp("user_10534", &key, "put part openchs.70.cdump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(object_sha(&bucket, "10534/upload"), Some(sha256(&part)));
    assert_eq!(
        remote_size(&g, "user_10534", &key, "openchs.70.cdump", work),
        7 * 1024 * 1024
    );
    // Resumed after that completed close: the new upload starts with a server-side copy
    // of the object (it is above 5 MiB), then the rest is sent.
    let out = g.sftp("user_10534", &key, "put -a openchs.70.cdump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(object_sha(&bucket, "10534/upload"), Some(sha256(&src)));
    assert!(plain_log(&g).contains("copied=7340032"), "{}", g.log());
    assert!(pending_uploads(&bucket).is_empty());

    // A small object (below a part) is resumed by rewriting its own bytes.
    let small = work.join("small");
    prefix_of(&src, 1_000_001, &small);
    let out = g.sftp("user_10534", &key, "put small openchs.70.cdump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(object_sha(&bucket, "10534/upload"), Some(sha256(&small)));
    let out = g.sftp("user_10534", &key, "put -a openchs.70.cdump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(object_sha(&bucket, "10534/upload"), Some(sha256(&src)));
    assert!(plain_log(&g).contains("rewritten=1000001"), "{}", g.log());
    // Its size, as the operator's API and status page show it, is the object's.
    let (_, v) = g.api("GET", "/v1/requests/10534", None);
    assert_eq!(v["request"]["filesize"], 3 * PART + 12345, "{v}");
    let row = status_row(&g, 10534);
    assert!(row.contains("<td>15.0 MiB</td>"), "{row}");

    // The operator's original, whole and by range.
    let got = work.join("original");
    assert_eq!(g.original(10534, None, &got), 200);
    assert_eq!(sha256(&got), sha256(&src));
    assert_eq!(g.original(10534, Some("bytes=5242870-5242889"), &got), 206);
    let data = std::fs::read(&src).unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), &data[5242870..5242890]);

    // Upgraded in (a multipart upload of its own) and out, with `get -a`.
    let upgraded = work.join("upgraded.src");
    random_file(&upgraded, 2 * PART as usize + 7);
    let record = g.finish(10534, &upgraded);
    assert_eq!(record["shared_file"], "upgraded_openchs.70.cdump");
    assert_eq!(
        object_sha(&bucket, "10534/upgraded"),
        Some(sha256(&upgraded))
    );
    let dl = work.join("dl");
    std::fs::create_dir(&dl).unwrap();
    let out = g.sftp("user_10534", &key, "get upgraded_openchs.70.cdump\n", &dl);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = dl.join("upgraded_openchs.70.cdump");
    assert_eq!(sha256(&got), sha256(&upgraded));
    truncate(&got, 4_000_000);
    let out = g.sftp(
        "user_10534",
        &key,
        "get -a upgraded_openchs.70.cdump\n",
        &dl,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&got), sha256(&upgraded));
    assert!(pending_uploads(&bucket).is_empty());
}

#[test]
fn writes_elsewhere_than_the_end_are_refused_on_s3() {
    let bucket = Bucket::new();
    let g = s3_gateway(&bucket, &[]);
    let work = g.dir.path();
    let key = ClientKey::new(work, "wes");
    g.provision(3, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 100_000);
    let out = g.sftp("user_3", &key, "put db.dump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // paramiko writes at offset 10 of the 100,000-byte upload, opened without TRUNC.
    let out = run_python(
        "import sys, paramiko\n\
         t = paramiko.Transport(('127.0.0.1', int(sys.argv[1])))\n\
         t.connect(username='user_3', pkey=paramiko.Ed25519Key.from_private_key_file(sys.argv[2]))\n\
         s = paramiko.SFTPClient.from_transport(t)\n\
         f = s.open('db.dump', 'r+')\n\
         f.seek(10)\n\
         try:\n    f.write(b'x' * 10); f.flush(); print('written')\n\
         except IOError as e:\n    print('refused:', e)\n",
        &[&g.ssh_port.to_string(), key.path.to_str().unwrap()],
    );
    assert!(
        out.contains("refused:") && out.contains("grows only at its end (100000)"),
        "{out}"
    );
    assert_eq!(object_sha(&bucket, "3/upload"), Some(sha256(&src)));
}

#[test]
fn killed_client_leaves_a_prefix_that_put_a_completes_on_s3() {
    use rand::{Rng, SeedableRng};
    const SIZE: u64 = 48 * 1024 * 1024;
    const KILLS: u64 = 4;
    let bucket = Bucket::new();
    let g = s3_gateway(&bucket, &[]);
    let work = g.dir.path();
    let key = ClientKey::new(work, "bob");
    g.provision(7, "big.dump", &key);
    let src = work.join("big.dump");
    random_file(&src, SIZE as usize);
    let seed = rand_u64();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let received = || g.metric("bytes_received_total");
    for round in 0..KILLS {
        let before = received();
        let target = before + rng.gen_range(1024 * 1024..=8 * 1024 * 1024);
        let cmd = if round == 0 {
            "put big.dump\n"
        } else {
            "put -a big.dump\n"
        };
        let (mut child, _stdin) = g.spawn_sftp("user_7", &key, &["-l", "200000"], work, cmd);
        assert!(
            wait_until(Duration::from_secs(60), || received() >= target),
            "seed {seed} round {round}: stuck; log: {}",
            g.log()
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // The session ends, its handle is closed by the server: the upload is completed
        // with what was received, which is a prefix of the source.
        assert!(wait_until(Duration::from_secs(20), || g.sessions(7) == 0));
        let got = work.join("got");
        let code = g.original(7, None, &got);
        assert_eq!(code, 200, "seed {seed} round {round}");
        assert!(
            is_prefix(&got, &src),
            "seed {seed} round {round}: not a prefix"
        );
    }
    let out = g.sftp("user_7", &key, "put -a big.dump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        object_sha(&bucket, "7/upload"),
        Some(sha256(&src)),
        "seed {seed}"
    );
    assert!(pending_uploads(&bucket).is_empty());
}

#[test]
fn a_node_lost_mid_part_loses_only_its_tail_and_put_a_through_another_completes() {
    let bucket = Bucket::new();
    let db = common::postgres::database();
    let flags = common::postgres::node_flags(&db);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut a = s3_gateway(&bucket, &flags);
    // Another machine: the same host keys, its own data directory (and spool).
    let b = {
        let f = s3_flags(&bucket, &flags);
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        Gateway::start_peer(&a, &f, &bucket.env())
    };
    let work = b.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "nina");
    a.provision(9, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 4 * PART as usize + 999);

    let (child, _stdin) = a.spawn_sftp("user_9", &key, &["-l", "100000"], &work, "put db.dump\n");
    // Two parts committed, and a part's worth more received but not committed.
    let committed = || {
        let (_, v) = b.api("GET", "/v1/requests/9", None);
        v["request"]["filesize"].as_u64().unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || committed() >= 2 * PART),
        "{}",
        a.log()
    );
    assert_eq!(a.stop("KILL"), None);
    drop(wait_output(child, Duration::from_secs(20)));
    // Through the other node, STAT reports what was committed: whole parts.
    let size = remote_size(&b, "user_9", &key, "db.dump", &work);
    assert_eq!(size % PART, 0, "{size}");
    assert!(size >= 2 * PART);
    let out = b.sftp("user_9", &key, "put -a db.dump\n", &work);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), b.log());
    assert_eq!(object_sha(&bucket, "9/upload"), Some(sha256(&src)));
    assert!(pending_uploads(&bucket).is_empty());
}

#[test]
fn a_gateway_killed_mid_part_and_restarted_keeps_its_spooled_tail() {
    let bucket = Bucket::new();
    let mut g = s3_gateway(&bucket, &[]);
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "ruth");
    g.provision(6, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 2 * PART as usize + 4321);
    let (child, _stdin) = g.spawn_sftp("user_6", &key, &["-l", "16000"], &work, "put db.dump\n");
    // Less than a part written: nothing is on S3 yet, all of it is in this node's spool.
    const WRITTEN: u64 = 2 * 1024 * 1024;
    assert!(
        wait_until(Duration::from_secs(60), || g.metric("bytes_received_total")
            >= WRITTEN),
        "{}",
        g.log()
    );
    assert_eq!(g.stop("KILL"), None);
    drop(wait_output(child, Duration::from_secs(20)));
    launch_on(&mut g, &bucket, &[]);
    // Restarted on the same node, STAT reports the spooled tail: every acknowledged byte.
    let size = remote_size(&g, "user_6", &key, "db.dump", &work);
    assert!(
        (WRITTEN..PART).contains(&size),
        "{size}: the tail was lost; {}",
        g.log()
    );
    let out = g.sftp("user_6", &key, "put -a db.dump\n", &work);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), g.log());
    assert_eq!(object_sha(&bucket, "6/upload"), Some(sha256(&src)));
    assert!(pending_uploads(&bucket).is_empty());
}

#[test]
fn abandoned_uploads_are_aborted_and_a_purge_leaves_nothing() {
    let bucket = Bucket::new();
    let mut g = s3_gateway(&bucket, &[]);
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "abby");
    g.provision(5, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 3 * PART as usize);
    let (child, _stdin) = g.spawn_sftp("user_5", &key, &["-l", "100000"], &work, "put db.dump\n");
    assert!(wait_until(Duration::from_secs(60), || {
        let (_, v) = g.api("GET", "/v1/requests/5", None);
        v["request"]["filesize"].as_u64().unwrap_or(0) >= PART
    }));
    // The gateway dies mid-upload: the multipart upload stays, recorded, for a resume.
    assert_eq!(g.stop("KILL"), None);
    drop(wait_output(child, Duration::from_secs(20)));
    assert_eq!(
        pending_uploads(&bucket),
        vec![format!("{}5/upload", bucket.prefix)]
    );
    let kept = "multipart uploads in progress kept";
    let before = g.log().matches(kept).count();
    launch_on(&mut g, &bucket, &[]);
    // Still in draft: kept by every sweep, for a resume.
    assert!(g.wait_log(kept, before + 2), "{}", g.log());
    assert_eq!(pending_uploads(&bucket).len(), 1);
    // Cancelled: the sweeper aborts it.
    let (code, _) = g.set_state(5, "cancelled");
    assert_eq!(code, 200);
    assert!(
        wait_until(Duration::from_secs(20), || pending_uploads(&bucket)
            .is_empty()),
        "{}",
        g.log()
    );
    // A purge removes the objects (here: an upgraded dump stored meanwhile).
    let upgraded = work.join("up");
    random_file(&upgraded, 1000);
    assert_eq!(g.push_upgraded(5, &upgraded), 200);
    assert_eq!(
        objects(&bucket),
        vec![format!("{}5/upgraded", bucket.prefix)]
    );
    let (code, _) = g.api("DELETE", "/v1/requests/5?purge=true", None);
    assert_eq!(code, 200);
    assert!(objects(&bucket).is_empty());
    assert!(pending_uploads(&bucket).is_empty());
}

#[test]
fn the_http_upload_and_its_offset_resume_on_s3() {
    let bucket = Bucket::new();
    let g = s3_gateway(&bucket, &[]);
    let work = g.dir.path();
    let body = serde_json::json!({"filename": "db.dump", "key": "k-6", "ssh_keys": ClientKey::new(work, "hugo").public()});
    let (code, json) = g.api("PUT", "/v1/requests/6", Some(&body));
    assert_eq!(code, 200, "{json}");
    let src = work.join("db.dump");
    random_file(&src, 2 * PART as usize + 4321);
    let first = work.join("first");
    prefix_of(&src, PART + 100, &first);
    let rest = work.join("rest");
    let data = std::fs::read(&src).unwrap();
    std::fs::write(&rest, &data[(PART + 100) as usize..]).unwrap();
    let post = |query: &str, file: &Path| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Type: application/octet-stream",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!(
                "http://{}/database/v1/upload?key=k-6&request=6{query}",
                g.admin
            ))
            .output()
            .unwrap();
        let t = text(&out.stdout);
        let (body, code) = t.rsplit_once('\n').unwrap();
        (code.trim().parse::<u16>().unwrap(), body.to_string())
    };
    let (code, body) = post("", &first);
    assert_eq!(code, 200, "{body}");
    assert_eq!(object_sha(&bucket, "6/upload"), Some(sha256(&first)));
    // An append at the wrong offset is refused with the size; at the size it goes on.
    let (code, body) = post("&offset=5", &rest);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("OFFSET:MISMATCH") && body.contains(&(PART + 100).to_string()),
        "{body}"
    );
    let (code, body) = post(&format!("&offset={}", PART + 100), &rest);
    assert_eq!(code, 200, "{body}");
    assert_eq!(object_sha(&bucket, "6/upload"), Some(sha256(&src)));
    assert!(pending_uploads(&bucket).is_empty());
}

#[test]
fn a_filepart_upload_is_renamed_onto_the_upload_on_s3() {
    let bucket = Bucket::new();
    let g = s3_gateway(&bucket, &[]);
    let work = g.dir.path();
    let key = ClientKey::new(work, "winnie");
    g.provision(4, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, PART as usize + 777);
    // As WinSCP does: upload to the temporary name, then rename it onto the file.
    let out = run_python(
        "import sys, paramiko\n\
         t = paramiko.Transport(('127.0.0.1', int(sys.argv[1])))\n\
         t.connect(username='user_4', pkey=paramiko.Ed25519Key.from_private_key_file(sys.argv[2]))\n\
         s = paramiko.SFTPClient.from_transport(t)\n\
         s.put(sys.argv[3], 'db.dump.filepart')\n\
         print(sorted(s.listdir('.')))\n\
         s.rename('db.dump.filepart', 'db.dump')\n\
         print(sorted(s.listdir('.')), s.stat('db.dump').st_size)\n",
        &[
            &g.ssh_port.to_string(),
            key.path.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "['db.dump', 'db.dump.filepart']", "{out}");
    assert_eq!(lines[1], format!("['db.dump'] {}", PART + 777), "{out}");
    assert_eq!(object_sha(&bucket, "4/upload"), Some(sha256(&src)));
    assert_eq!(object_sha(&bucket, "4/upload.filepart"), None);
    assert!(pending_uploads(&bucket).is_empty());
}
