//! Limits per source and per request: one address or one customer cannot keep others
//! out, a connection flood from one address (ssh-audit's DHEat test) is refused before the
//! key exchange, and refusals a client can repeat at will do not flood the log.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Whether the server sends its identification line on `s` (rather than closing it).
fn greeted(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"SSH-"))
}

/// A raw TCP connection from 127.0.0.1 (other sources are tried with ssh's BindAddress).
fn connect(port: u16) -> TcpStream {
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap()
}

fn upload_from(g: &Gateway, src: &str, id: u64, key: &ClientKey) {
    let work = g.dir.path();
    let file = work.join(format!("dump-{id}"));
    random_file(&file, 100_000);
    let bind = format!("BindAddress={src}");
    let batch = format!("put dump-{id} db.dump\n");
    let (child, stdin) = g.spawn_sftp(&format!("user_{id}"), key, &["-o", &bind], work, &batch);
    drop(stdin);
    let out = wait_output(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "upload from {src}: {}",
        text(&out.stderr)
    );
    assert_eq!(sha256(&g.upload_path(id)), sha256(&file));
}

#[test]
fn silent_connections_from_one_address_leave_room_for_others() {
    let g = Gateway::start_with(&["--max-connections", "20"]);
    let key = ClientKey::new(g.dir.path(), "other");
    g.provision(41, "db.dump", &key);
    // 20 silent connections from 127.0.0.1: only the default 10 unauthenticated ones of
    // one source are kept (each is greeted), the others are closed at once.
    let mut conns: Vec<TcpStream> = (0..20).map(|_| connect(g.ssh_port)).collect();
    let kept = conns.iter_mut().map(greeted).filter(|g| *g).count();
    assert_eq!(kept, 10, "unauthenticated connections kept from one source");
    // A customer on another address still gets in.
    upload_from(&g, "127.0.0.2", 41, &key);
    drop(conns);
}

#[test]
fn one_request_holds_at_most_its_sessions() {
    let g = Gateway::start_with(&["--max-connections", "20", "--max-sessions-per-request", "4"]);
    let work = g.dir.path();
    let key = ClientKey::new(work, "greedy");
    let other = ClientKey::new(work, "other");
    g.provision(42, "db.dump", &key);
    g.provision(43, "db.dump", &other);
    let held: Vec<_> = (0..4)
        .map(|_| g.spawn_sftp("user_42", &key, &[], work, ""))
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || g.sessions(42) == 4),
        "sessions: {}",
        g.sessions(42)
    );
    // The fifth is refused, with a reason in the log.
    let out = g.sftp("user_42", &key, "ls\n", work);
    assert_failed_with(&out, "Permission denied");
    assert!(g.log().contains("login-refused"), "{}", g.log());
    assert_eq!(g.sessions(42), 4);
    // Another customer is not affected.
    upload_from(&g, "127.0.0.2", 43, &other);
    drop(held);
}

#[test]
fn a_connection_flood_from_one_address_is_refused_before_the_key_exchange() {
    // The default rate: 10 new connections a second from one source, in bursts of 20.
    let g = Gateway::start_with(&["--connection-rate-per-source", "10"]);
    let key = ClientKey::new(g.dir.path(), "calm");
    g.provision(44, "db.dump", &key);
    let started = Instant::now();
    let mut greeted_count = 0;
    for _ in 0..200 {
        let mut c = connect(g.ssh_port);
        if greeted(&mut c) {
            greeted_count += 1;
        }
    }
    // The burst, plus what the bucket refilled while the flood ran.
    let allowed = 20 + (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        (20..=allowed).contains(&greeted_count),
        "{greeted_count} of 200 greeted, at most {allowed} allowed"
    );
    // The refusals are not logged one line each.
    let lines = g.log().matches("new-connection rate").count();
    assert!(lines <= 20, "{lines} log lines for the refusals");
    // Another address is served at once.
    upload_from(&g, "127.0.0.2", 44, &key);
}

/// Opens 2000 refused channels on one connection with paramiko.
const CHANNEL_FLOOD: &str = r#"
import sys, paramiko
port, key = int(sys.argv[1]), sys.argv[2]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="user_45", pkey=paramiko.Ed25519Key.from_private_key_file(key))
refused = 0
for _ in range(2000):
    try:
        t.open_channel("direct-tcpip", ("127.0.0.1", 9), ("127.0.0.1", 0), timeout=10)
    except paramiko.ChannelException:
        refused += 1
t.close()
print(refused)
"#;

#[test]
fn repeated_refusals_do_not_flood_the_log() {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "noisy");
    g.provision(45, "db.dump", &key);
    let out = run_python(
        CHANNEL_FLOOD,
        &[&g.ssh_port.to_string(), key.path.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "2000");
    assert!(
        g.wait_log("refusals-suppressed", 1),
        "no summary: {}",
        g.log()
    );
    let log = g.log();
    let lines = log.matches("channel-refused").count();
    assert!(lines <= 15, "{lines} lines for 2000 refusals");
    // The login that matters is still there.
    assert_eq!(log.matches(" accepted ").count(), 1, "{log}");
}
