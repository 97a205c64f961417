//! The S3-only transfer scenarios of object storage (`--storage s3://...`): a node lost
//! mid-part, a restart keeping the spooled tail, abandoned uploads aborted and nothing left
//! after a purge, the HTTP upload's offset resume, the `.filepart` rename. The scenarios
//! both storages share run on each in tests/transfer.rs. A real S3 server (moto's, from
//! PyPI, or the endpoint of `SFTPGATE_TEST_S3_URL`) started by the tests on loopback, real
//! OpenSSH `sftp`, paramiko and curl clients, and every byte compared by sha256 against
//! the object as the server holds it (read back with boto3, not the gateway's own client).

mod common;

use std::path::Path;
use std::time::Duration;

use common::storage::{prefix_of, remote_size, Storage, PART};
use common::*;

/// The bucket of S3 `storage`, to list what the server holds.
fn bucket(storage: &Storage) -> &common::boto3::Bucket {
    storage.bucket().expect("S3 storage")
}

#[test]
fn a_node_lost_mid_part_loses_only_its_tail_and_put_a_through_another_completes() {
    let s3 = Storage::s3();
    let db = common::postgres::database();
    let flags = common::postgres::node_flags(&db);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut a = s3.gateway(&flags);
    // Another machine: the same host keys, its own data directory (and spool).
    let b = {
        let f = s3.flags(&flags);
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        Gateway::start_peer(&a, &f, &s3.env())
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
    s3.assert_put_a_completes(&b, 9, &key, &src);
}

#[test]
fn a_gateway_killed_mid_part_and_restarted_keeps_its_spooled_tail() {
    let s3 = Storage::s3();
    let (mut g, key, src) = s3.with_request(6, "db.dump", 2 * PART + 4321);
    let work = g.dir.path().to_path_buf();
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
    s3.launch(&mut g, &[]);
    // Restarted on the same node, STAT reports the spooled tail: every acknowledged byte.
    let size = remote_size(&g, "user_6", &key, "db.dump", &work);
    assert!(
        (WRITTEN..PART).contains(&size),
        "{size}: the tail was lost; {}",
        g.log()
    );
    s3.assert_put_a_completes(&g, 6, &key, &src);
}

#[test]
fn abandoned_uploads_are_aborted_and_a_purge_leaves_nothing() {
    let s3 = Storage::s3();
    let b = bucket(&s3);
    let (mut g, key, _) = s3.with_request(5, "db.dump", 3 * PART);
    let work = g.dir.path().to_path_buf();
    let (child, _stdin) = g.spawn_sftp("user_5", &key, &["-l", "100000"], &work, "put db.dump\n");
    assert!(wait_until(Duration::from_secs(60), || {
        let (_, v) = g.api("GET", "/v1/requests/5", None);
        v["request"]["filesize"].as_u64().unwrap_or(0) >= PART
    }));
    // The gateway dies mid-upload: the multipart upload stays, recorded, for a resume.
    assert_eq!(g.stop("KILL"), None);
    drop(wait_output(child, Duration::from_secs(20)));
    assert_eq!(b.pending_uploads(), vec![format!("{}5/upload", b.prefix)]);
    let kept = "multipart uploads in progress kept";
    let before = g.log().matches(kept).count();
    s3.launch(&mut g, &[]);
    // Still in draft: kept by every sweep, for a resume.
    assert!(g.wait_log(kept, before + 2), "{}", g.log());
    assert_eq!(b.pending_uploads().len(), 1);
    // Cancelled: the sweeper aborts it.
    let (code, _) = g.set_state(5, "cancelled");
    assert_eq!(code, 200);
    assert!(
        wait_until(Duration::from_secs(20), || b.pending_uploads().is_empty()),
        "{}",
        g.log()
    );
    // A purge removes the objects (here: an upgraded dump stored meanwhile).
    let upgraded = work.join("up");
    random_file(&upgraded, 1000);
    assert_eq!(g.push_upgraded(5, &upgraded), 200);
    assert_eq!(b.objects(), vec![format!("{}5/upgraded", b.prefix)]);
    let (code, _) = g.api("DELETE", "/v1/requests/5?purge=true", None);
    assert_eq!(code, 200);
    assert!(b.objects().is_empty());
    s3.assert_no_pending_uploads();
}

#[test]
fn the_http_upload_and_its_offset_resume_on_s3() {
    let s3 = Storage::s3();
    let g = s3.gateway(&[]);
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
        let (code, json) = g.upload_post(&format!("key=k-6&request=6{query}"), file, &[]);
        (code, json.to_string())
    };
    let (code, body) = post("", &first);
    assert_eq!(code, 200, "{body}");
    assert_eq!(s3.stored_sha(&g, 6, "upload"), Some(sha256(&first)));
    // An append at the wrong offset is refused with the size; at the size it goes on.
    let (code, body) = post("&offset=5", &rest);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("OFFSET:MISMATCH") && body.contains(&(PART + 100).to_string()),
        "{body}"
    );
    let (code, body) = post(&format!("&offset={}", PART + 100), &rest);
    assert_eq!(code, 200, "{body}");
    assert_eq!(s3.stored_sha(&g, 6, "upload"), Some(sha256(&src)));
    s3.assert_no_pending_uploads();
}

#[test]
fn a_filepart_upload_is_renamed_onto_the_upload_on_s3() {
    let s3 = Storage::s3();
    let (g, key, src) = s3.with_request(4, "db.dump", PART + 777);
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
    assert_eq!(s3.stored_sha(&g, 4, "upload"), Some(sha256(&src)));
    assert_eq!(s3.stored_sha(&g, 4, "upload.filepart"), None);
    s3.assert_no_pending_uploads();
}
