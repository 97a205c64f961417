//! Uploads, resumes and downloads with the real OpenSSH `sftp` client.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn upload_list_resume_then_download_when_done() {
    let g = Gateway::start();
    let work = g.dir.path();
    let key = ClientKey::new(work, "alice");
    g.provision(10534, "openchs.70.cdump", &key);
    let src = work.join("openchs.70.cdump");
    random_file(&src, 5 * 1024 * 1024 + 123);

    // Before any upload the file is listed, empty, so `put -a` can start from nothing.
    let out = g.sftp("user_10534", &key, "ls -l\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing.contains("-rw-rw-rw-    1 0        0               0 "),
        "{listing}"
    );
    assert!(listing.contains(" openchs.70.cdump"), "{listing}");

    let out = g.sftp(
        "user_10534",
        &key,
        "put -a openchs.70.cdump openchs.70.cdump\nls -l openchs.70.cdump\ndf -h\ndf -i\n",
        work,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("5243003"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(sha256(&g.upload_path(10534)), sha256(&src));

    // Truncate the upload to a prefix, as an interrupted transfer leaves it, and resume.
    truncate(&g.upload_path(10534), 1_000_001);
    let out = g.sftp("user_10534", &key, "put -a openchs.70.cdump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(10534)), sha256(&src));

    // A plain put replaces the file.
    let other = work.join("other.bin");
    random_file(&other, 300_000);
    let out = g.sftp(
        "user_10534",
        &key,
        "put other.bin /openchs.70.cdump\n",
        work,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(10534)), sha256(&other));

    // Done: only the upgraded file is visible, read-only.
    let upgraded = work.join("upgraded.src");
    random_file(&upgraded, 3 * 1024 * 1024 + 7);
    let (code, json) = g.set_state(10534, "done");
    assert_eq!(
        (code, json["failures"][0]["reason"].as_str()),
        (409, Some("UPGRADED:MISSING"))
    );
    let record = g.finish(10534, &upgraded);
    assert_eq!(record["shared_file"], "upgraded_openchs.70.cdump");

    let dl = work.join("dl");
    std::fs::create_dir(&dl).unwrap();
    let out = g.sftp(
        "user_10534",
        &key,
        "ls -l\nget upgraded_openchs.70.cdump\n",
        &dl,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("-r--r--r--"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        !text(&out.stdout).contains(" openchs.70.cdump"),
        "{}",
        text(&out.stdout)
    );
    let got = dl.join("upgraded_openchs.70.cdump");
    assert_eq!(sha256(&got), sha256(&upgraded));

    // reget: a partial local copy is completed.
    truncate(&got, 12345);
    let out = g.sftp(
        "user_10534",
        &key,
        "get -a upgraded_openchs.70.cdump\n",
        &dl,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    assert_eq!(
        sha256(&g.data().join("requests/10534/upgraded")),
        sha256(&upgraded)
    );
}

#[test]
fn killed_client_leaves_a_prefix_that_put_a_completes() {
    use rand::{Rng, SeedableRng};
    const SIZE: u64 = 256 * 1024 * 1024;
    const KILLS: u64 = 20;
    let g = Gateway::start();
    let work = g.dir.path();
    let key = ClientKey::new(work, "bob");
    g.provision(7, "big.dump", &key);
    let src = work.join("big.dump");
    random_file(&src, SIZE as usize);
    let seed = rand_u64();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let size = || {
        std::fs::metadata(g.upload_path(7))
            .map(|m| m.len())
            .unwrap_or(0)
    };

    for round in 0..KILLS {
        // A random kill point ahead, spread so that all 20 fall inside the file.
        let now = size();
        let step = (SIZE - now) / (KILLS - round + 1);
        let target = now + rng.gen_range(step / 4..=step.max(step / 4 + 1));
        // Throttled (-l, Kbit/s) so the kill lands mid-transfer; 256 writes in flight.
        let cmd = if round == 0 {
            "put big.dump\n"
        } else {
            "put -a big.dump\n"
        };
        let (mut child, _stdin) =
            g.spawn_sftp("user_7", &key, &["-l", "400000", "-R", "256"], work, cmd);
        let reached = wait_until(Duration::from_secs(60), || size() >= target);
        assert!(
            reached,
            "seed {seed} round {round}: upload stuck at {} (target {target}); log: {}",
            size(),
            g.log()
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // The server notices the dead connection; whatever it acknowledged is a prefix.
        assert!(wait_until(Duration::from_secs(10), || g.sessions(7) == 0));
        assert!(
            is_prefix(&g.upload_path(7), &src),
            "seed {seed} round {round}: not a prefix"
        );
    }
    let out = g.sftp("user_7", &key, "put -a big.dump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(7)), sha256(&src), "seed {seed}");
}

#[test]
fn sigterm_mid_upload_exits_cleanly_and_put_a_completes_after_restart() {
    let mut g = Gateway::start();
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "frank");
    g.provision(8, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 32 * 1024 * 1024);
    let (child, _stdin) = g.spawn_sftp(
        "user_8",
        &key,
        &["-l", "80000"],
        &work,
        "put db.dump
",
    );
    assert!(wait_until(Duration::from_secs(30), || {
        std::fs::metadata(g.upload_path(8))
            .map(|m| m.len())
            .unwrap_or(0)
            > 2 * 1024 * 1024
    }));
    assert_eq!(g.stop("TERM"), Some(0), "{}", g.log());
    let client = wait_output(child, Duration::from_secs(20));
    assert!(
        !client.status.success(),
        "the client should see its session end"
    );
    assert!(is_prefix(&g.upload_path(8), &src));

    g.launch(&[]);
    let out = g.sftp("user_8", &key, "put -a db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(8)), sha256(&src));
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
