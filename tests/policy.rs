//! What a user may not do: every refused SFTP operation, other users' keys, other auth
//! methods, shells and forwarding. Each refusal is answered, and nothing changes.
//!
//! Over 400 lines on purpose: one test binary per subject, each test independent; a
//! second file would be a second binary linking the whole crate again, for no gain.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn setup() -> (Gateway, ClientKey) {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "carol");
    g.provision(42, "db.dump", &key);
    (g, key)
}

#[test]
fn refused_sftp_operations_change_nothing() {
    let (g, key) = setup();
    let work = g.dir.path();
    let src = work.join("db.dump");
    random_file(&src, 100_000);
    let out = g.sftp("user_42", &key, "put db.dump\n", work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = sha256(&g.upload_path(42));

    let cases: &[(&str, &str)] = &[
        ("put db.dump other.dump", "Permission denied"),
        ("put db.dump /tmp/x", "Permission denied"),
        ("put db.dump ../../escape", "Permission denied"),
        ("put db.dump upgraded_db.dump", "Permission denied"),
        ("mkdir newdir", "Permission denied"),
        ("rmdir /", "Permission denied"),
        ("rm db.dump", "Permission denied"),
        ("rename db.dump other", "Permission denied"),
        ("ln -s db.dump link", "Permission denied"),
        ("ln db.dump hard", "Permission denied"),
        ("get /etc/passwd", "not found"),
        ("get ../../../../etc/passwd", "not found"),
        ("get upgraded_db.dump", "not found"),
        ("ls /etc", "not found"),
        ("cd /etc", "No such file"),
    ];
    for (cmd, want) in cases {
        let out = g.sftp("user_42", &key, &format!("{cmd}\n"), work);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{cmd} succeeded");
        assert!(err.contains(want), "{cmd}: expected {want:?} in {err:?}");
    }
    // Only the one file exists, unchanged.
    let names: Vec<_> = std::fs::read_dir(g.data().join("requests/42"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}"); // request.json and upload
    assert_eq!(sha256(&g.upload_path(42)), before);

    // Attribute changes a client sends after an upload are accepted.
    let out = g.sftp(
        "user_42",
        &key,
        "chmod 600 db.dump\nchgrp 0 db.dump\n",
        work,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&g.upload_path(42)), before);
}

#[test]
fn other_keys_users_and_methods_are_refused_alike() {
    let (g, key) = setup();
    let stranger = ClientKey::new(g.dir.path(), "mallory");
    let other = ClientKey::new(g.dir.path(), "dave");
    g.provision(43, "other.dump", &other);
    for (user, k) in [
        ("user_42", &stranger),
        ("user_43", &key),
        ("user_999", &key),
        ("root", &key),
        ("user_042", &key),
    ] {
        let out = g.sftp(user, k, "ls\n", g.dir.path());
        assert!(!out.status.success(), "{user} logged in");
        assert!(
            text(&out.stderr).contains("Permission denied (publickey)"),
            "{user}: {}",
            text(&out.stderr)
        );
    }
    // Password and keyboard-interactive are never offered nor accepted.
    let out = g.ssh(
        "user_42",
        &key,
        &[
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "BatchMode=no",
            "-o",
            "NumberOfPasswordPrompts=0",
        ],
        &[],
    );
    assert_failed_with(&out, "Permission denied (publickey)");
    // Not in draft or done: nobody logs in.
    assert_state_set(&g, 42, "pending");
    let out = g.sftp("user_42", &key, "ls\n", g.dir.path());
    assert_failed_with(&out, "Permission denied (publickey)");
    // Expired: nobody logs in.
    assert_state_set(&g, 42, "draft");
    let (code, _) = g.api(
        "PUT",
        "/v1/requests/42",
        Some(&serde_json::json!({"expires_at": "2020-01-01T00:00:00Z"})),
    );
    assert_eq!(code, 200);
    let out = g.sftp("user_42", &key, "ls\n", g.dir.path());
    assert_failed_with(&out, "Permission denied (publickey)");
}

/// Moves request `id` to `state` and asserts it moved: a failed move would let a refusal
/// check after it pass for another reason.
fn assert_state_set(g: &Gateway, id: u64, state: &str) {
    let (code, v) = g.set_state(id, state);
    assert_eq!(
        (code, v["request"]["state"].as_str()),
        (200, Some(state)),
        "{v}"
    );
}

#[test]
fn shells_commands_and_forwarding_are_refused_without_hanging() {
    let (g, key) = setup();
    let out = g.ssh("user_42", &key, &["-T"], &["echo", "hi"]);
    assert_failed_with(&out, "exec request failed");
    assert!(!text(&out.stdout).contains("hi"));

    let out = g.ssh("user_42", &key, &["-T"], &[]);
    assert_failed_with(&out, "shell request failed");

    let out = g.ssh("user_42", &key, &["-tt", "-o", "RequestTTY=force"], &[]);
    assert_failed_with(&out, "PTY allocation request failed");

    let out = g.ssh("user_42", &key, &["-s", "-T"], &["shell"]);
    assert_failed_with(&out, "subsystem request failed");

    // Stdio forwarding opens a direct-tcpip channel at once.
    // A real service to forward to, so that a forward that got through would show.
    let target = greeter();
    let out = g.ssh(
        "user_42",
        &key,
        &["-W", &format!("127.0.0.1:{target}")],
        &[],
    );
    assert_failed_with(&out, "stdio forwarding failed");

    assert_remote_forward_refused(&g, &key, "127.0.0.1:0:127.0.0.1:9");

    // -L: the client listens locally and asks for a channel per connection.
    let (mut fwd, mut conn) = local_forward(&g, &key, |port| {
        vec!["-L".into(), format!("127.0.0.1:{port}:127.0.0.1:{target}")]
    });
    let _ = conn.write_all(b"x");
    let mut buf = [0u8; 16];
    // The forwarded connection is closed: no data ever comes back.
    let n = std::io::Read::read(&mut conn, &mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    fwd.kill().unwrap();
    let _ = fwd.wait();
    assert!(g.wait_log("\"direct-tcpip\"", 1), "{}", g.log());
}

#[test]
fn revoking_a_request_closes_its_live_session() {
    let (g, key) = setup();
    for (n, (action, revoke)) in [("state", 0), ("delete", 1)].into_iter().enumerate() {
        let (child, stdin) = g.spawn_sftp("user_42", &key, &[], g.dir.path(), "ls\n");
        assert!(
            wait_until(Duration::from_secs(10), || g.sessions(42) == 1),
            "{action}: session did not start"
        );
        if revoke == 0 {
            assert_state_set(&g, 42, "progress");
        } else {
            g.api("DELETE", "/v1/requests/42", None);
        }
        // The client is disconnected while its stdin is still open.
        g.assert_closed_by_server(child, stdin, n + 1);
        if revoke == 0 {
            assert_state_set(&g, 42, "draft");
        }
    }
}

#[test]
fn login_grace_drops_silent_connections_but_not_sessions() {
    let g = Gateway::start_with(&["--login-grace-secs", "1"]);
    let key = ClientKey::new(g.dir.path(), "erin");
    g.provision(50, "db.dump", &key);

    let started = std::time::Instant::now();
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", g.ssh_port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    // The server sends its banner, then closes the connection once the grace time is over.
    let _ = std::io::Read::read_to_end(&mut silent, &mut seen);
    assert!(
        text(&seen).starts_with("SSH-2.0-sftpgate"),
        "{}",
        text(&seen)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // An authenticated session lives on past the grace time.
    let (child, mut stdin) = g.spawn_sftp("user_50", &key, &[], g.dir.path(), "");
    assert!(wait_until(Duration::from_secs(10), || g.sessions(50) == 1));
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(b"ls\n").unwrap();
    drop(stdin);
    let out = wait_output(child, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("db.dump"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let g = Gateway::start_with(&["--max-connections", "1"]);
    let mut first = std::net::TcpStream::connect(("127.0.0.1", g.ssh_port)).unwrap();
    let mut banner = [0u8; 8];
    std::io::Read::read_exact(&mut first, &mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    // The slot is taken: the next connection is closed without a banner.
    let mut second = std::net::TcpStream::connect(("127.0.0.1", g.ssh_port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut seen = Vec::new();
    let _ = std::io::Read::read_to_end(&mut second, &mut seen);
    assert!(seen.is_empty(), "{}", text(&seen));
    // Once the first goes away, the slot is free again.
    drop(first);
    assert!(wait_until(Duration::from_secs(5), || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", g.ssh_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 8];
        std::io::Read::read_exact(&mut c, &mut b).is_ok()
    }));
}

/// Reads the server's KEXINIT (sent in the clear) and returns its ten name-lists.
fn server_kexinit(port: u16) -> Vec<Vec<String>> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"SSH-2.0-probe\r\n").unwrap();
    // The identification line, then one binary packet.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        s.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut packet = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut packet).unwrap();
    let payload = &packet[1..];
    assert_eq!(payload[0], 20, "not a KEXINIT");
    let mut at = 17;
    (0..10)
        .map(|_| {
            let n = u32::from_be_bytes(payload[at..at + 4].try_into().unwrap()) as usize;
            let list = String::from_utf8_lossy(&payload[at + 4..at + 4 + n]).into_owned();
            at += 4 + n;
            list.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn only_strong_algorithms_are_offered() {
    let g = Gateway::start();
    let lists = server_kexinit(g.ssh_port);
    let all: Vec<&String> = lists.iter().flatten().collect();
    for name in &all {
        let weak = name.contains("sha1")
            || name.contains("cbc")
            || name.contains("dss")
            || name.contains("md5")
            || name.as_str() == "ssh-rsa"
            || name.contains("arcfour")
            || name.contains("3des")
            || name.contains("group1-");
        assert!(!weak, "weak algorithm offered: {name}");
    }
    assert_eq!(lists[6], ["none"], "compression client to server");
    assert_eq!(lists[7], ["none"], "compression server to client");
}

/// Each set's lists exactly as the README documents them (host-key algorithms: those the
/// three generated keys serve).
#[test]
fn each_algorithm_set_offers_exactly_its_documented_lists() {
    const CIPHERS: &[&str] = &[
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-ctr",
        "aes192-ctr",
        "aes128-ctr",
    ];
    let compatible = (
        vec![
            "mlkem768x25519-sha256",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "ecdh-sha2-nistp256",
            "ecdh-sha2-nistp384",
            "ecdh-sha2-nistp521",
            "diffie-hellman-group16-sha512",
            "diffie-hellman-group18-sha512",
        ],
        vec![
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "rsa-sha2-512",
            "rsa-sha2-256",
        ],
        vec![
            "hmac-sha2-512-etm@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
            "hmac-sha2-512",
            "hmac-sha2-256",
        ],
    );
    let hardened = (
        vec![
            "mlkem768x25519-sha256",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "diffie-hellman-group16-sha512",
            "diffie-hellman-group18-sha512",
        ],
        vec!["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"],
        vec![
            "hmac-sha2-512-etm@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
        ],
    );
    for (set, (mut kex, keys, macs)) in [("compatible", compatible), ("hardened", hardened)] {
        let g = Gateway::start_with(&["--algorithms", set]);
        let lists = server_kexinit(g.ssh_port);
        kex.extend(["ext-info-s", "kex-strict-s-v00@openssh.com"]);
        assert_eq!(lists[0], kex, "{set}: key exchange");
        assert_eq!(lists[1], keys, "{set}: host keys");
        assert_eq!(lists[2], CIPHERS, "{set}: ciphers client to server");
        assert_eq!(lists[3], CIPHERS, "{set}: ciphers server to client");
        assert_eq!(lists[4], macs, "{set}: MACs client to server");
        assert_eq!(lists[5], macs, "{set}: MACs server to client");
    }
}

#[test]
fn a_second_session_channel_and_other_subsystems_are_refused() {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "p");
    g.provision(60, "db.dump", &key);
    let script = r#"
import sys, time, paramiko
t = paramiko.Transport(("127.0.0.1", int(sys.argv[1])))
t.connect(username="user_60", pkey=paramiko.Ed25519Key.from_private_key_file(sys.argv[2]))
first = t.open_session()
first.invoke_subsystem("sftp")
started = time.time()
try:
    t.open_session(timeout=2)
    print("second channel opened")
except Exception:
    print("second channel refused")
assert time.time() - started < 2.5
t.close()
t = paramiko.Transport(("127.0.0.1", int(sys.argv[1])))
t.connect(username="user_60", pkey=paramiko.Ed25519Key.from_private_key_file(sys.argv[2]))
c = t.open_session()
try:
    c.invoke_subsystem("shell")
    print("subsystem accepted")
except Exception:
    print("subsystem refused")
"#;
    let out = run_python(
        script,
        &[&g.ssh_port.to_string(), key.path.to_str().unwrap()],
    );
    assert_eq!(out, "second channel refused\nsubsystem refused\n");
}

#[test]
fn x11_agent_socks_and_unix_socket_forwarding_are_refused() {
    let (g, key) = setup();
    // X11 and agent forwarding are asked for on the session channel before the command;
    // both are refused (logged), then so is the command. The client only asks with a
    // DISPLAY and an agent, so give it both (an agent that holds no key).
    let agent_path = g.dir.path().join("agent.sock");
    let agent = std::os::unix::net::UnixListener::bind(&agent_path).unwrap();
    std::thread::spawn(move || {
        for conn in agent.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::Read;
                let mut len = [0u8; 4];
                while conn.read_exact(&mut len).is_ok() {
                    let mut msg = vec![0u8; u32::from_be_bytes(len) as usize];
                    if conn.read_exact(&mut msg).is_err() {
                        return;
                    }
                    // Any request: "no identities" (12) or failure (5).
                    let reply: &[u8] = if msg.first() == Some(&11) {
                        &[0, 0, 0, 5, 12, 0, 0, 0, 0]
                    } else {
                        &[0, 0, 0, 1, 5]
                    };
                    let _ = conn.write_all(reply);
                }
            });
        }
    });
    let child = std::process::Command::new("ssh")
        .args(key.client_opts())
        .args([
            "-Y",
            "-A",
            "-o",
            "XAuthLocation=/nonexistent",
            "-p",
            &g.ssh_port.to_string(),
            "user_42@127.0.0.1",
            "true",
        ])
        .env("DISPLAY", "127.0.0.1:0")
        .env("SSH_AUTH_SOCK", &agent_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(20));
    assert!(!out.status.success());
    assert!(g.wait_log("\"x11\"", 1), "{}", g.log());
    assert!(g.wait_log("\"agent forwarding\"", 1), "{}", g.log());

    // Remote forwarding of a Unix socket: refused, and the client is told.
    assert_remote_forward_refused(&g, &key, "/tmp/sftpgate-test.sock:127.0.0.1:9");

    // SOCKS (-D): the CONNECT through the tunnel is refused.
    let (mut socks, mut conn) = local_forward(&g, &key, |port| {
        vec!["-D".into(), format!("127.0.0.1:{port}")]
    });
    use std::io::Read;
    conn.write_all(&[5, 1, 0]).unwrap();
    let mut hello = [0u8; 2];
    conn.read_exact(&mut hello).unwrap();
    assert_eq!(hello, [5, 0]);
    let target = greeter().to_be_bytes();
    conn.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, target[0], target[1]])
        .unwrap();
    let mut reply = [0u8; 2];
    let granted = conn.read_exact(&mut reply).is_ok() && reply[1] == 0;
    assert!(!granted, "SOCKS connect through the gateway succeeded");
    socks.kill().unwrap();
    let _ = socks.wait();
    assert!(g.wait_log("\"direct-tcpip\"", 1), "{}", g.log());
}

/// Starts `ssh -N` with a local listening forward (`-L`/`-D` built by `spec` from a free
/// port) and returns it with a connection to that port, once the client listens.
fn local_forward(
    g: &Gateway,
    key: &ClientKey,
    spec: impl Fn(u16) -> Vec<String>,
) -> (std::process::Child, std::net::TcpStream) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("ssh")
        .args(key.client_opts())
        .arg("-N")
        .args(spec(port))
        .args(["-p", &g.ssh_port.to_string(), "user_42@127.0.0.1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = None;
    assert!(wait_until(Duration::from_secs(10), || {
        conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        conn.is_some()
    }));
    let conn = conn.unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (child, conn)
}

/// A local service that greets every connection with "hello": the port a forwarding test
/// aims at, so that a forward the gateway wrongly allowed would carry data back.
fn greeter() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"hello");
        }
    });
    port
}

/// `ssh -R spec` as user_42: the client must report that the forwarding failed.
fn assert_remote_forward_refused(g: &Gateway, key: &ClientKey, spec: &str) {
    let out = g.ssh(
        "user_42",
        key,
        &["-N", "-o", "ExitOnForwardFailure=yes", "-R", spec],
        &[],
    );
    assert_failed_with(&out, "forwarding failed");
}
