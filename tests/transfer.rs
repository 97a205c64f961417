//! Uploads, resumes and downloads with the real OpenSSH `sftp` client, each scenario on
//! both storages (`<scenario>::on_files`, `<scenario>::on_s3`; tests/common/storage.rs):
//! the same steps, and the bytes the storage holds (the file, or the object read back
//! with boto3) compared by sha256. Where the storages differ by design (README, Storage)
//! the test says so and checks each one's outcome. The S3-only scenarios (node loss, the
//! spool, the sweeper) are in tests/s3_transfer.rs.

#[macro_use]
mod common;

use std::time::Duration;

use common::storage::{plain_log, prefix_of, Storage, PART};
use common::*;

on_each_storage!(
    upload_list_resume_then_download_when_done,
    a_small_object_is_resumed,
    the_original_whole_and_by_range,
    killed_client_leaves_a_prefix_that_put_a_completes,
    writes_elsewhere_than_the_end,
    sigterm_mid_upload_exits_cleanly_and_put_a_completes_after_restart,
);

fn upload_list_resume_then_download_when_done(storage: Storage) {
    let (g, key, src) = storage.with_request(10534, "openchs.70.cdump", 3 * PART + 12345);
    let work = g.dir.path();
    let stored = |object| storage.stored_sha(&g, 10534, object);

    // Before any upload the file is listed, empty, so `put -a` can start from nothing.
    let listing = g.sftp_ok("user_10534", &key, "ls -l\n", work);
    assert!(
        listing.contains("-rw-rw-rw-    1 0        0               0 "),
        "{listing}"
    );
    assert!(listing.contains(" openchs.70.cdump"), "{listing}");

    // An interrupted transfer's 7 MiB (on S3 one part and a tail, completed at the close).
    let part = work.join("part");
    prefix_of(&src, 7 * 1024 * 1024, &part);
    let out = g.sftp_ok(
        "user_10534",
        &key,
        "put part openchs.70.cdump\nls -l openchs.70.cdump\ndf -h\ndf -i\n",
        work,
    );
    assert!(out.contains(" 7340032 "), "{out}");
    assert_eq!(stored("upload"), Some(sha256(&part)));

    // Resumed after that completed close. On S3 a new multipart upload starts with a
    // server-side copy of the object (it is above 5 MiB), then the rest is sent.
    g.sftp_ok("user_10534", &key, "put -a openchs.70.cdump\n", work);
    assert_eq!(stored("upload"), Some(sha256(&src)));
    if let Storage::S3(_) = storage {
        assert!(plain_log(&g).contains("copied=7340032"), "{}", g.log());
    }
    storage.assert_no_pending_uploads();

    // A plain put replaces it.
    let other = work.join("other.bin");
    random_file(&other, 300_000);
    g.sftp_ok(
        "user_10534",
        &key,
        "put other.bin /openchs.70.cdump\n",
        work,
    );
    assert_eq!(stored("upload"), Some(sha256(&other)));

    // Done: only the upgraded file (in through the operator API) is visible, read-only.
    let upgraded = work.join("upgraded.src");
    random_file(&upgraded, 2 * PART as usize + 7);
    let (code, json) = g.set_state(10534, "done");
    assert_eq!(
        (code, json["failures"][0]["reason"].as_str()),
        (409, Some("UPGRADED:MISSING"))
    );
    let record = g.finish(10534, &upgraded);
    assert_eq!(record["shared_file"], "upgraded_openchs.70.cdump");
    assert_eq!(stored("upgraded"), Some(sha256(&upgraded)));

    let dl = work.join("dl");
    std::fs::create_dir(&dl).unwrap();
    let listing = g.sftp_ok(
        "user_10534",
        &key,
        "ls -l\nget upgraded_openchs.70.cdump\n",
        &dl,
    );
    assert!(listing.contains("-r--r--r--"), "{listing}");
    assert!(!listing.contains(" openchs.70.cdump"), "{listing}");
    let got = dl.join("upgraded_openchs.70.cdump");
    assert_eq!(sha256(&got), sha256(&upgraded));

    // reget: a partial local copy is completed (on S3 from the middle of a read chunk).
    truncate(&got, 4_000_000);
    g.sftp_ok(
        "user_10534",
        &key,
        "get -a upgraded_openchs.70.cdump\n",
        &dl,
    );
    assert_eq!(sha256(&got), sha256(&upgraded));

    // Writing is refused in done, and nothing changes.
    let out = g.sftp(
        "user_10534",
        &key,
        "put other.bin upgraded_openchs.70.cdump\n",
        work,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(stored("upgraded"), Some(sha256(&upgraded)));
    storage.assert_no_pending_uploads();
}

/// An upload below S3's 5 MiB minimum part resumed after its close: on S3 it cannot be
/// copied as a part, so the new upload is rewritten from its own bytes.
fn a_small_object_is_resumed(storage: Storage) {
    let (g, key, src) = storage.with_request(11, "db.dump", 2 * PART + 4321);
    let work = g.dir.path();
    let small = work.join("small");
    prefix_of(&src, 1_000_001, &small);
    g.sftp_ok("user_11", &key, "put small db.dump\n", work);
    assert_eq!(storage.stored_sha(&g, 11, "upload"), Some(sha256(&small)));
    g.sftp_ok("user_11", &key, "put -a db.dump\n", work);
    assert_eq!(storage.stored_sha(&g, 11, "upload"), Some(sha256(&src)));
    if let Storage::S3(_) = storage {
        assert!(plain_log(&g).contains("rewritten=1000001"), "{}", g.log());
    }
    storage.assert_no_pending_uploads();
    // Its size, as the operator's API and status page show it.
    let (_, v) = g.api("GET", "/v1/requests/11", None);
    assert_eq!(v["request"]["filesize"], 2 * PART + 4321, "{v}");
    let row = status_row(&g, 11);
    assert!(row.contains("<td>10.0 MiB</td>"), "{row}");
}

/// `GET /v1/requests/{id}/original`, whole and by range: across a part boundary (S3),
/// to the end, a suffix, and one past the end (416).
fn the_original_whole_and_by_range(storage: Storage) {
    const SIZE: u64 = 2 * PART + 4321;
    let (g, key, src) = storage.with_request(12, "db.dump", SIZE);
    let work = g.dir.path();
    g.sftp_ok("user_12", &key, "put db.dump\n", work);

    let got = work.join("original");
    assert_eq!(g.original(12, None, &got), 200);
    assert_eq!(sha256(&got), sha256(&src));
    let data = std::fs::read(&src).unwrap();
    let ranges = [
        ("bytes=5242870-5242889", PART - 10..PART + 10),
        ("bytes=10485000-", 10_485_000..SIZE),
        ("bytes=-100", SIZE - 100..SIZE),
    ];
    for (range, want) in ranges {
        assert_eq!(g.original(12, Some(range), &got), 206, "{range}");
        let want = &data[want.start as usize..want.end as usize];
        assert!(std::fs::read(&got).unwrap() == want, "{range}");
    }
    assert_eq!(
        g.original(12, Some(&format!("bytes={SIZE}-")), &got),
        416,
        "{}",
        std::fs::read_to_string(&got).unwrap_or_default()
    );
    assert!(
        std::fs::read_to_string(&got)
            .unwrap()
            .contains("RANGE:INVALID"),
        "{}",
        std::fs::read_to_string(&got).unwrap()
    );
}

fn killed_client_leaves_a_prefix_that_put_a_completes(storage: Storage) {
    use rand::{Rng, SeedableRng};
    // On files 20 kills of 256 MiB with 256 writes in flight; on S3 fewer and smaller:
    // there every kill completes an object that the next round copies (moto's CPU).
    let (size, kills): (u64, u64) = match storage {
        Storage::Files => (256 * 1024 * 1024, 20),
        Storage::S3(_) => (48 * 1024 * 1024, 4),
    };
    let (g, key, src) = storage.with_request(7, "big.dump", size);
    let work = g.dir.path();
    let seed = rand_u64();
    // Shown with a failure, to replay these kill points.
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let received = || g.metric("bytes_received_total");

    // What the storage held after the last kill.
    let mut held = 0;
    for round in 0..kills {
        // A random kill point ahead, spread so that all of them fall inside the file.
        let step = (size - held) / (kills - round + 1);
        let target = received() + rng.gen_range(step / 4..=step.max(step / 4 + 1));
        // Throttled (-l, Kbit/s) so the kill lands mid-transfer; 256 writes in flight.
        let cmd = if round == 0 {
            "put big.dump\n"
        } else {
            "put -a big.dump\n"
        };
        let (mut child, _stdin) =
            g.spawn_sftp("user_7", &key, &["-l", "400000", "-R", "256"], work, cmd);
        assert!(
            wait_until(Duration::from_secs(60), || received() >= target),
            "seed {seed} round {round}: stuck at {} received (target {target}); log: {}",
            received(),
            g.log()
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // The server notices the dead connection and closes its handle (on S3 that
        // completes the object): whatever it acknowledged is a prefix.
        assert!(wait_until(Duration::from_secs(20), || g.sessions(7) == 0));
        let got = storage
            .stored(&g, 7, "upload")
            .unwrap_or_else(|| panic!("seed {seed} round {round}: nothing stored"));
        assert!(
            is_prefix(&got, &src),
            "seed {seed} round {round}: not a prefix"
        );
        held = std::fs::metadata(&got).unwrap().len();
    }
    storage.assert_put_a_completes(&g, 7, &key, &src);
}

/// Writes opened without TRUNC (paramiko's `r+`) elsewhere than the end of a 100,000-byte
/// upload: far past it (a hole above 32 MiB) refused on both; inside it and a little past
/// it accepted on files (out-of-order writers) and refused on S3, where the object must
/// stay a contiguous prefix.
fn writes_elsewhere_than_the_end(storage: Storage) {
    let (g, key, src) = storage.with_request(3, "db.dump", 100_000);
    let work = g.dir.path();
    g.sftp_ok("user_3", &key, "put db.dump\n", work);
    let far = 100_000 + 32 * 1024 * 1024 + 1;
    let out = run_python(
        "import sys, paramiko\n\
         t = paramiko.Transport(('127.0.0.1', int(sys.argv[1])))\n\
         t.connect(username='user_3', pkey=paramiko.Ed25519Key.from_private_key_file(sys.argv[2]))\n\
         s = paramiko.SFTPClient.from_transport(t)\n\
         for at in map(int, sys.argv[3:]):\n\
         \x20   f = s.open('db.dump', 'r+')\n\
         \x20   f.seek(at)\n\
         \x20   try:\n\
         \x20       f.write(b'x' * 10); f.flush(); print(at, 'written')\n\
         \x20   except IOError as e:\n\
         \x20       print(at, 'refused:', e)\n\
         \x20   f.close()\n",
        &[
            &g.ssh_port.to_string(),
            key.path.to_str().unwrap(),
            &far.to_string(),
            "10",
            "101000",
        ],
    );
    let hole = format!(
        "{far} refused: write at offset {far} would leave a hole of more than 33554432 bytes \
         past the end of the file"
    );
    let mut want = std::fs::read(&src).unwrap();
    let lines: Vec<String> = match storage {
        Storage::Files => {
            want[10..20].fill(b'x');
            want.resize(101_000, 0);
            want.extend([b'x'; 10]);
            vec![hole, "10 written".into(), "101000 written".into()]
        }
        Storage::S3(_) => {
            let refused = |at: u64| {
                format!(
                    "{at} refused: write at offset {at} refused: on object storage an upload \
                     grows only at its end (100000), where a resume (put -a) continues"
                )
            };
            vec![hole, refused(10), refused(101_000)]
        }
    };
    assert_eq!(out.lines().collect::<Vec<_>>(), lines, "{out}");
    let want_file = work.join("want");
    std::fs::write(&want_file, &want).unwrap();
    assert_eq!(
        storage.stored_sha(&g, 3, "upload"),
        Some(sha256(&want_file))
    );
    storage.assert_no_pending_uploads();
}

fn sigterm_mid_upload_exits_cleanly_and_put_a_completes_after_restart(storage: Storage) {
    let (mut g, key, src) = storage.with_request(8, "db.dump", 16 * 1024 * 1024);
    let work = g.dir.path().to_path_buf();
    let (child, _stdin) = g.spawn_sftp("user_8", &key, &["-l", "80000"], &work, "put db.dump\n");
    assert!(wait_until(Duration::from_secs(30), || g
        .metric("bytes_received_total")
        > 2 * 1024 * 1024));
    assert_eq!(g.stop("TERM"), Some(0), "{}", g.log());
    let client = wait_output(child, Duration::from_secs(20));
    assert!(
        !client.status.success(),
        "the client should see its session end"
    );
    let got = storage.stored(&g, 8, "upload").expect("nothing stored");
    assert!(is_prefix(&got, &src));

    storage.launch(&mut g, &[]);
    storage.assert_put_a_completes(&g, 8, &key, &src);
}

/// Clients set to check the server (`ServerAliveInterval`) stay connected while idle: every
/// keepalive is answered. Three unanswered in a row (by 3 s) would end this session.
#[test]
fn client_keepalives_are_answered_while_idle() {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "alive");
    g.provision(41, "db.dump", &key);
    let alive = ["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"];
    let (child, mut stdin) = g.spawn_sftp("user_41", &key, &alive, g.dir.path(), "ls\n");
    // The scenario is time passing with nothing to do: several keepalive rounds.
    std::thread::sleep(Duration::from_secs(4));
    std::io::Write::write_all(&mut stdin, b"ls -l\n").unwrap();
    drop(stdin);
    let out = wait_output(child, Duration::from_secs(20));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).matches("db.dump").count(),
        2,
        "{}",
        text(&out.stdout)
    );
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
