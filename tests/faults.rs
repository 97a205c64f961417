//! Faults: the gateway killed mid-upload, uploads hitting a size limit or a full disk.
//! After each, the file is a prefix of the source and `put -a` completes it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn gateway_killed_mid_upload_loses_no_acknowledged_byte() {
    let mut g = Gateway::start();
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    g.provision(3, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 32 * 1024 * 1024);
    let record = std::fs::read(g.data().join("requests/3/request.json")).unwrap();
    for round in 0..3 {
        let before = g.upload_size(3);
        let cmd = if round == 0 {
            "put db.dump\n"
        } else {
            "put -a db.dump\n"
        };
        let (child, _stdin) = g.spawn_sftp("user_3", &key, &["-l", "60000"], &work, cmd);
        assert!(wait_until(Duration::from_secs(30), || g.upload_size(3)
            > before + 2 * 1024 * 1024));
        assert_eq!(g.stop("KILL"), None);
        let _ = wait_output(child, Duration::from_secs(20));
        assert!(
            is_prefix(&g.upload_path(3), &src),
            "round {round}: not a prefix"
        );
        g.launch(&[]);
        assert_eq!(
            std::fs::read(g.data().join("requests/3/request.json")).unwrap(),
            record
        );
    }
    let out = g.sftp("user_3", &key, "put -a db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(3)), sha256(&src));
}

#[test]
fn size_limit_gives_a_clear_error_and_put_a_finishes_later() {
    let mut g = Gateway::start_with(&["--max-upload-size", "3000000"]);
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    g.provision(4, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 5_000_000);
    let out = g.sftp("user_4", &key, "put db.dump\n", &work);
    // OpenSSH's client prints only the status ("Failure"); the message is in the reply and
    // in the gateway's log.
    assert_failed_with(&out, "write remote \"/db.dump\": Failure");
    assert!(
        g.log()
            .contains("upload size limit of 3000000 bytes exceeded"),
        "{}",
        g.log()
    );
    assert!(g.upload_size(4) <= 3_000_000);
    assert!(is_prefix(&g.upload_path(4), &src));
    let (code, body) = g.api("GET", "/v1/requests/4", None);
    assert_eq!(
        (code, body["request"]["state"].as_str()),
        (200, Some("draft"))
    );

    g.stop("TERM");
    g.launch(&["--max-upload-size", "6000000"]);
    let out = g.sftp("user_4", &key, "put -a db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(4)), sha256(&src));
}

/// A real ENOSPC: the data directory on a small tmpfs, mounted before the gateway starts.
/// Needs root (mount); where mounting is not allowed it fails in CI and is skipped
/// elsewhere.
#[test]
fn full_disk_gives_a_clear_error_and_put_a_finishes_after_space_is_freed() {
    let mut g = Gateway::unstarted("127.0.0.1");
    let mnt = g.data();
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        let why = match &mounted {
            Ok(o) => text(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        missing_capability(&format!(
            "cannot mount a tmpfs on the data directory ({why}): run the tests as root \
             (mount needs CAP_SYS_ADMIN; in a container, --cap-add SYS_ADMIN)"
        ));
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    g.launch(&[]);
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "k");
    g.provision(5, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 5 * 1024 * 1024);
    let filler = mnt.join("filler");
    random_file(&filler, 3 * 1024 * 1024);

    let out = g.sftp("user_5", &key, "put db.dump\n", &work);
    assert_failed_with(&out, "write remote \"/db.dump\": Failure");
    assert!(g.log().contains("No space left on device"), "{}", g.log());
    assert!(is_prefix(&g.upload_path(5), &src));
    let (code, body) = g.api("GET", "/v1/requests/5", None);
    assert_eq!(
        (code, body["request"]["filename"].as_str()),
        (200, Some("db.dump"))
    );

    std::fs::remove_file(&filler).unwrap();
    let out = g.sftp("user_5", &key, "put -a db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(5)), sha256(&src));
    g.stop("TERM");
}
