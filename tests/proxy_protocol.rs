//! Behind a TCP load balancer that speaks the PROXY protocol: real HAProxy (Debian's
//! `haproxy`) in TCP mode with `send-proxy-v2` in front of two gateways, the OpenSSH client
//! bound to 127.0.0.2 or 127.0.0.3. `from=` options, audit logs and the API's `peers` see
//! the real client; a forged header from a source outside `--proxy-from` is refused and
//! does not pass `from=`; the balancer's address without a header is refused.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::haproxy::Haproxy;
use common::*;

/// The balancer's address, as the gateways see its connections.
const BALANCER: &str = "127.0.0.1";
const REQUEST: u64 = 77;

/// A gateway that reads PROXY headers from the balancer's address, named `node`.
fn node(name: &str) -> Gateway {
    node_with(name, &[])
}

fn node_with(name: &str, extra: &[&str]) -> Gateway {
    let mut g = Gateway::start();
    g.stop("TERM");
    let from = format!("{BALANCER}/32");
    let mut args = vec![
        "--proxy-protocol",
        "--proxy-from",
        &from,
        "--node-name",
        name,
        "--login-grace-secs",
        "3",
    ];
    args.extend_from_slice(extra);
    g.launch_env(
        &args,
        // The debug line of each header read (the claim) is looked for below.
        &[("SFTPGATE_LOG", "info,russh=warn,sftpgate::ssh=debug")],
    );
    g
}

/// Request `REQUEST` in draft with `key` allowed only from `from`.
fn provision_from(g: &Gateway, key: &ClientKey, from: &str) {
    let body = serde_json::json!({
        "filename": "db.dump",
        "key": "secret-77",
        "ssh_keys": format!("from=\"{from}\" {}", key.public()),
    });
    let (code, json) = g.api("PUT", &format!("/v1/requests/{REQUEST}"), Some(&body));
    assert_eq!(code, 200, "{json}");
}

/// `sftp -b -` as `user_REQUEST` to `port` from the local address `bind`.
fn sftp_from_as(bind: &str, port: u16, key: &ClientKey, extra: &[&str]) -> Command {
    sftp_from(bind, port, &format!("user_{REQUEST}"), key, extra)
}

/// The audit lines of `event` in a log, without their colours.
fn events(log: &str, event: &str) -> Vec<String> {
    let needle = format!("event=\"{event}\"");
    log.lines()
        .map(plain)
        .filter(|l| l.contains(&needle))
        .collect()
}

/// A log line without its ANSI colour sequences (`ESC [ ... m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn behind_haproxy_from_is_matched_against_the_real_client() {
    let (a, b) = (node("gw-a"), node("gw-b"));
    let key = ClientKey::new(a.dir.path(), "customer");
    for g in [&a, &b] {
        provision_from(g, &key, "127.0.0.2");
        assert!(
            g.log()
                .lines()
                .map(plain)
                .any(|l| l.contains("listening node=gw-")),
            "no node name in: {}",
            g.log()
        );
    }
    let lb = Haproxy::start(a.dir.path(), &[a.ssh_port, b.ssh_port]);

    // Health checks arrive as v2 LOCAL headers and are taken as the balancer's own.
    for g in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(10), || g
                .log()
                .lines()
                .any(|l| plain(l).contains("PROXY header read claim=Local"))),
            "no health check seen: {}",
            g.log()
        );
    }

    // From 127.0.0.2 through the balancer, twice: round robin reaches both nodes.
    for _ in 0..2 {
        let out = run_with_input(sftp_from_as("127.0.0.2", lb.port, &key, &[]), "ls\n");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    for (g, name) in [(&a, "gw-a"), (&b, "gw-b")] {
        let log = g.log();
        let logins = events(&log, "login");
        assert_eq!(logins.len(), 1, "{log}");
        assert!(logins[0].contains("peer=127.0.0.2:"), "{}", logins[0]);
        // The span names the node, the client and the balancer it came through.
        assert!(
            logins[0].contains(&format!("node=\"{name}\""))
                || logins[0].contains(&format!("node={name}")),
            "{}",
            logins[0]
        );
        assert!(
            logins[0].contains(&format!("via={BALANCER}:")),
            "{}",
            logins[0]
        );
    }

    // From 127.0.0.3 through the balancer: the same key, refused by its from= option.
    for _ in 0..2 {
        let out = run_with_input(sftp_from_as("127.0.0.3", lb.port, &key, &[]), "ls\n");
        assert_failed_with(&out, "Permission denied");
    }
    for g in [&a, &b] {
        let log = g.log();
        let refused = events(&log, "auth-refused");
        assert!(!refused.is_empty(), "{log}");
        assert!(
            refused.iter().all(|l| l.contains("peer=127.0.0.3:")),
            "{refused:?}"
        );
        assert_eq!(events(&log, "login").len(), 1, "{log}");
    }

    // A live session: the API's peers show the client, not the balancer.
    let (child, stdin) = spawn_with_input(sftp_from_as("127.0.0.2", lb.port, &key, &[]), "ls\n");
    let live = || a.sessions(REQUEST) + b.sessions(REQUEST);
    assert!(wait_until(Duration::from_secs(10), || live() == 1));
    let g = if a.sessions(REQUEST) == 1 { &a } else { &b };
    let peers =
        g.api("GET", &format!("/v1/requests/{REQUEST}"), None).1["request"]["peers"].clone();
    let peers = peers.as_array().unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert!(
        peers[0].as_str().unwrap().starts_with("127.0.0.2:"),
        "{peers:?}"
    );
    drop(stdin);
    let out = wait_output(child, Duration::from_secs(20));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Nothing the balancer sent was refused.
    for g in [&a, &b] {
        assert!(
            events(&g.log(), "proxy-header-refused").is_empty(),
            "{}",
            g.log()
        );
    }
}

/// Per-source limits count the client the header names, not the balancer that every
/// client comes through.
#[test]
fn per_source_limits_count_the_real_client() {
    let g = node_with("gw-a", &["--max-startups-per-source", "2"]);
    let lb = Haproxy::start(g.dir.path(), &[g.ssh_port]);
    let connect = |from: &str| connect_from(from, lb.port);
    // Two connections from 127.0.0.3 that have not logged in: each gets the banner.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect("127.0.0.3");
        assert!(read_line(&mut s).starts_with(b"SSH-2.0-sftpgate"));
        held.push(s);
    }
    // The third is closed before the banner...
    let mut third = connect("127.0.0.3");
    let got = read_to_close(&mut third);
    assert!(got.is_empty(), "{}", text(&got));
    // ...while another client behind the same balancer is served.
    let mut other = connect("127.0.0.2");
    assert!(read_line(&mut other).starts_with(b"SSH-2.0-sftpgate"));
    // (Health checks count as the balancer's own address, so only 127.0.0.3 is looked at.)
    let log = g.log();
    let refused: Vec<_> = events(&log, "refused")
        .into_iter()
        .filter(|l| !l.contains(&format!("peer={BALANCER}:")))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains("peer=127.0.0.3:"), "{}", refused[0]);
    assert!(refused[0].contains("unauthenticated"), "{}", refused[0]);
}

/// An OpenSSH `ProxyCommand` that connects from 127.0.0.3 and sends a forged v2 header
/// claiming 127.0.0.2 before relaying the client's stream.
const FORGER: &str = r#"
import os, socket, struct, sys, threading
s = socket.socket()
s.bind(("127.0.0.3", 0))
s.connect((sys.argv[1], int(sys.argv[2])))
claim = bytes([127, 0, 0, 2, 127, 0, 0, 1]) + struct.pack(">HH", 40000, int(sys.argv[2]))
s.sendall(b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(">H", len(claim)) + claim)
def up():
    while True:
        d = os.read(0, 65536)
        if not d:
            s.shutdown(socket.SHUT_WR)
            return
        s.sendall(d)
threading.Thread(target=up, daemon=True).start()
while True:
    d = s.recv(65536)
    if not d:
        break
    os.write(1, d)
"#;

#[test]
fn a_forged_header_from_a_direct_client_is_refused_and_does_not_pass_from() {
    let g = node("gw-a");
    let key = ClientKey::new(g.dir.path(), "customer");
    provision_from(&g, &key, "127.0.0.2");
    let forger = g.dir.path().join("forge.py");
    std::fs::write(&forger, FORGER).unwrap();

    // 127.0.0.3 claims to be 127.0.0.2: refused before authentication.
    let proxy_cmd = format!("ProxyCommand=python3 {} %h %p", forger.display());
    let out = run_with_input(
        sftp_from_as("127.0.0.3", g.ssh_port, &key, &["-o", &proxy_cmd]),
        "ls\n",
    );
    assert!(!out.status.success(), "a forged header got in");
    let log = g.log();
    let refused = events(&log, "proxy-header-refused");
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains("peer=127.0.0.3:"), "{}", refused[0]);
    assert!(events(&log, "login").is_empty(), "{log}");
    assert!(events(&log, "auth-refused").is_empty(), "{log}");

    // A v1 header, raw: the connection is closed after the banner, nothing more is said.
    let mut s = connect_from("127.0.0.3", g.ssh_port);
    s.write_all(b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 2200\r\nSSH-2.0-OpenSSH_9.2\r\n")
        .unwrap();
    let got = read_to_close(&mut s);
    // Only the banner, which the server sends first.
    assert!(got.starts_with(b"SSH-2.0-sftpgate"), "{}", text(&got));
    assert_eq!(
        got.iter().filter(|&&b| b == b'\n').count(),
        1,
        "{}",
        text(&got)
    );
    assert!(g.wait_log("proxy-header-refused", 2), "{}", g.log());

    // The same client without a header is a direct client, and 127.0.0.2 itself, direct,
    // is allowed by from=.
    let out = run_with_input(sftp_from_as("127.0.0.2", g.ssh_port, &key, &[]), "ls\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_with_input(sftp_from_as("127.0.0.3", g.ssh_port, &key, &[]), "ls\n");
    assert_failed_with(&out, "Permission denied");
    let log = g.log();
    let logins = events(&log, "login");
    assert_eq!(logins.len(), 1, "{log}");
    assert!(logins[0].contains("peer=127.0.0.2:"), "{}", logins[0]);
}

#[test]
fn the_balancer_without_a_header_is_refused() {
    let g = node("gw-a");
    let key = ClientKey::new(g.dir.path(), "customer");
    provision_from(&g, &key, "127.0.0.0/8");

    // An SSH client from the balancer's address, without a header.
    let out = run_with_input(sftp_from_as(BALANCER, g.ssh_port, &key, &[]), "ls\n");
    assert!(!out.status.success(), "served without a header");
    let log = g.log();
    let refused = events(&log, "proxy-header-refused");
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains(&format!("via={BALANCER}:")),
        "{}",
        refused[0]
    );
    assert!(events(&log, "login").is_empty(), "{log}");

    // A silent one: closed once the header time (here the 3 s login grace) is up, and
    // never sent the banner, which comes only after a header.
    let started = Instant::now();
    let mut s = connect_from(BALANCER, g.ssh_port);
    let got = read_to_close(&mut s);
    assert!(got.is_empty(), "{}", text(&got));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(g.wait_log("proxy-header-refused", 2), "{}", g.log());
}

#[test]
fn proxy_protocol_needs_its_sources() {
    for (args, needle) in [
        (&["--proxy-protocol"][..], "--proxy-from"),
        (&["--proxy-from", "10.0.0.0/8"][..], "--proxy-protocol"),
        (
            &["--proxy-protocol", "--proxy-from", "10.0.0.0/33"][..],
            "10.0.0.0/33",
        ),
    ] {
        let err = refused_start(args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A TCP connection to `port` on 127.0.0.1 (the gateway or the balancer) from the local
/// address `bind` (std's TcpStream cannot bind before it connects, so it is made with libc).
fn connect_from(bind: &str, port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    let sin = |ip: &str, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip.parse::<std::net::Ipv4Addr>().unwrap()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (local, remote) = (sin(bind, 0), sin("127.0.0.1", port));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor owned by `stream` from its creation; the
    // address structs outlive the calls.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let bound = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len);
        assert_eq!(bound, 0, "bind {bind}: {}", std::io::Error::last_os_error());
        let connected = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
        assert_eq!(connected, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
}

/// Everything the server sends until it closes the connection.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("reading: {e} after {:?}", text(&got)),
        }
    }
}

/// One line from the server (the SSH banner), up to its LF.
fn read_line(s: &mut TcpStream) -> Vec<u8> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            other => panic!("no whole line: {other:?} after {:?}", text(&line)),
        }
    }
    line
}
