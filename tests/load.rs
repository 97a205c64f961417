//! Load and abuse: many concurrent uploads, floods of connections that never log in,
//! clients that stop reading (stopped by the SSH window, or with a 2 GiB window at the
//! socket), and repeated failed logins from one address. The gateway keeps serving
//! legitimate clients through all of it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn three_hundred_concurrent_sessions_all_upload() {
    // All from 127.0.0.1, all logging in at once.
    let g = Gateway::start_with(&["--max-startups-per-source", "300"]);
    let work = g.dir.path();
    let key = ClientKey::new(work, "many");
    // More sessions than tokio's default pool of 512 blocking threads can serve at two
    // threads each: every upload must finish while all the sessions are still open.
    let n = 300;
    for i in 0..n {
        g.provision(1000 + i, "db.dump", &key);
    }
    let src = work.join("db.dump");
    random_file(&src, 1024 * 1024);
    let children: Vec<_> = (0..n)
        .map(|i| {
            g.spawn_sftp(
                &format!("user_{}", 1000 + i),
                &key,
                &[],
                work,
                "put db.dump\n",
            )
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(120), || g
            .log()
            .matches("upload-closed")
            .count()
            >= n as usize),
        "not every session finished its upload while all were open"
    );
    for (i, (child, stdin)) in children.into_iter().enumerate() {
        drop(stdin);
        let out = wait_output(child, Duration::from_secs(180));
        assert!(out.status.success(), "upload {i}: {}", text(&out.stderr));
    }
    let want = sha256(&src);
    for i in 0..n {
        assert_eq!(sha256(&g.upload_path(1000 + i)), want, "upload {i}");
    }
}

#[test]
fn connection_floods_are_dropped_and_a_real_upload_still_works() {
    let mut g = Gateway::start();
    g.stop("TERM");
    // Penalties are off here: from one address, this flood would (rightly) get 127.0.0.1
    // refused, legitimate client included; they have their own test below.
    g.launch(&[
        "--login-grace-secs",
        "2",
        "--penalty-failures",
        "0",
        "--max-startups-per-source",
        "1000",
        // 700 connections from one address: past the default half of --max-connections,
        // the legitimate client would be refused until the grace time closed some.
        "--max-connections-per-source",
        "1000",
    ]);
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "legit");
    g.provision(7, "db.dump", &key);
    let addr: SocketAddr = format!("127.0.0.1:{}", g.ssh_port).parse().unwrap();

    // 500 connections that never send a byte, and 200 that send an identification line
    // and then never go on to authenticate.
    let mut silent: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut half: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"SSH-2.0-flood\r\n").unwrap();
            s
        })
        .collect();

    let src = work.join("db.dump");
    random_file(&src, 8 * 1024 * 1024);
    let out = g.sftp("user_7", &key, "put db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(7)), sha256(&src));

    // Every flooding connection is closed by the server within the grace time (plus slack).
    let started = Instant::now();
    for s in silent.iter_mut().chain(half.iter_mut()) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => panic!("connection not closed by the server: {e}"),
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Opens a session with a 2 GiB window, pipelines READs for the whole file, then stops
/// itself (every thread, so nothing reads the socket any more).
const HUGE_WINDOW_READER: &str = r#"
import os, signal, socket, sys, time
import paramiko

port, key = int(sys.argv[1]), sys.argv[2]
t = paramiko.Transport(socket.create_connection(("127.0.0.1", port)),
                       default_window_size=2**31 - 1)
t.connect(username="user_8", pkey=paramiko.Ed25519Key.from_private_key_file(key))
sftp = paramiko.SFTPClient.from_transport(t, window_size=2**31 - 1)
f = sftp.open("db.dump", "rb")
f.prefetch()
time.sleep(0.5)
print("stopping", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"#;

#[test]
fn a_client_that_stops_reading_blocks_nothing_and_is_cut_off() {
    let mut g = Gateway::start_with(&["--idle-timeout-secs", "3"]);
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "slow");
    g.provision(8, "db.dump", &key);
    let src = work.join("db.dump");
    random_file(&src, 64 * 1024 * 1024);
    let out = g.sftp("user_8", &key, "put db.dump\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Start a download and freeze the client's ssh process once data flows: it stops
    // reading, and the server stops at the end of the client's window.
    let (child, _stdin) = g.spawn_sftp("user_8", &key, &[], &work, "get db.dump /dev/null\n");
    let ssh_pid = {
        let mut pid = None;
        assert!(wait_until(Duration::from_secs(10), || {
            let out = Command::new("pgrep")
                .args(["-P", &child.id().to_string(), "ssh"])
                .output()
                .unwrap();
            pid = text(&out.stdout)
                .split_whitespace()
                .next()
                .map(str::to_string);
            pid.is_some()
        }));
        pid.unwrap()
    };
    assert!(wait_until(Duration::from_secs(10), || {
        g.metric("bytes_sent_total") > 0
    }));
    Command::new("kill")
        .args(["-STOP", &ssh_pid])
        .status()
        .unwrap();

    // Meanwhile another client downloads the whole file.
    let out = g.sftp("user_8", &key, "get db.dump other.bin\n", &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&work.join("other.bin")), sha256(&src));

    // The frozen one is cut off by the idle timeout.
    assert!(
        wait_until(Duration::from_secs(10), || g.sessions(8) == 0),
        "the wedged session was not closed: {}",
        g.log()
    );
    Command::new("kill")
        .args(["-CONT", &ssh_pid])
        .status()
        .unwrap();
    let _ = wait_output(child, Duration::from_secs(20));

    // A client that advertised a window of 2 GiB, asked for the whole file and froze: no
    // SSH window stops the server first, its socket writes block. The connection is closed
    // all the same (by russh's timer, which 0.65 polls while a write is blocked, or else by
    // the watchdog).
    let sent_before = g.metric("bytes_sent_total");
    let mut frozen = Command::new(python())
        .args(["-c", HUGE_WINDOW_READER, &g.ssh_port.to_string()])
        .arg(&key.path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(frozen.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "stopping");
    let closed = wait_until(Duration::from_secs(20), || g.sessions(8) == 0);
    let _ = frozen.kill();
    let _ = frozen.wait();
    assert!(closed, "the blocked session was not closed: {}", g.log());
    // It got past a default 2 MiB window (what follows fills socket buffers, whose size
    // the kernel tunes: 3.97 MiB once under load, so only the window is asserted) and
    // stopped well before the end of the file.
    let sent = g.metric("bytes_sent_total") - sent_before;
    assert!(
        ((2 << 20) + 1..64 << 20).contains(&sent),
        "sent {sent} bytes to the frozen client"
    );

    // And a wedged client does not hold up shutdown.
    let (child, _stdin) = g.spawn_sftp("user_8", &key, &[], &work, "get db.dump /dev/null\n");
    assert!(wait_until(Duration::from_secs(10), || g.sessions(8) == 1));
    let out = Command::new("pgrep")
        .args(["-P", &child.id().to_string(), "ssh"])
        .output()
        .unwrap();
    let pid = text(&out.stdout).trim().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let started = Instant::now();
    assert_eq!(g.stop("TERM"), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        started.elapsed()
    );
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let _ = wait_output(child, Duration::from_secs(20));
}

#[test]
fn a_thousand_failed_logins_from_one_address_are_penalized() {
    // Default limits: 100 failed connections a minute earn a 60 s refusal.
    let g = Gateway::start();
    let work = g.dir.path().to_path_buf();
    let key = ClientKey::new(&work, "ok");
    let wrong = ClientKey::new(&work, "wrong");
    g.provision(9, "db.dump", &key);
    let login = |src: &str, k: &ClientKey| {
        g.sftp_cmd("user_9", k, &["-o", &format!("BindAddress={src}")])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let mut attempts = 0;
    // Real failed logins until the address is refused outright...
    let refused = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf.is_empty()
    };
    loop {
        attempts += 1;
        assert!(attempts <= 150, "no penalty after {attempts} failed logins");
        let out = login("127.0.0.1", &wrong);
        assert!(!out.status.success());
        // A refused connection ends before authentication: no "Permission denied".
        if !text(&out.stderr).contains("Permission denied") {
            break;
        }
    }
    assert!(attempts > 100, "penalized after only {attempts}");
    // ...then the rest of the thousand: every one closed before the server says a word.
    while attempts < 1000 {
        let mut s = TcpStream::connect(("127.0.0.1", g.ssh_port)).unwrap();
        assert!(refused(&mut s), "attempt {attempts} got a banner");
        attempts += 1;
    }
    // The right key from the penalized address is refused too, for now...
    assert!(
        !login("127.0.0.1", &key).status.success(),
        "penalized address logged in"
    );
    // ...while another address logs in at once.
    let started = Instant::now();
    let out = login("127.0.0.2", &key);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(g.log().contains("penalty"));
}
