//! A customer with a valid key cannot raise the gateway's memory by more than a few MiB:
//! requests whose replies are never read (a tiny SSH window, replies left unread) are
//! answered within a byte budget, and past it the session stops reading requests. Each
//! case is measured from `/proc/<pid>/status` of the gateway under test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::*;

/// The most one hostile session may add to the gateway's resident memory.
const MAX_GROWTH_KIB: u64 = 16 * 1024;

/// Logs in with paramiko with a 32 KiB window, opens the file, signals `ready`, then on a
/// line from stdin sends the attack and never reads a reply; `sent` once it is all sent
/// (or the gateway stopped taking it), then holds the connection until stdin closes.
const ATTACK: &str = r#"
import struct, sys, threading, paramiko

port, keyfile, name, mode, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
t = paramiko.Transport(("127.0.0.1", port), default_window_size=32768, default_max_packet_size=32768)
t.connect(username=sys.argv[6], pkey=paramiko.Ed25519Key.from_private_key_file(keyfile))
ch = t.open_session(window_size=32768, max_packet_size=32768)
ch.invoke_subsystem("sftp")

def s(b): return struct.pack(">I", len(b)) + b
def pkt(kind, body): return s(bytes([kind]) + body)
def recv_exact(n):
    out = b""
    while len(out) < n:
        more = ch.recv(n - len(out))
        if not more: raise SystemExit("closed")
        out += more
    return out
def recv_packet(): return recv_exact(struct.unpack(">I", recv_exact(4))[0])

ch.sendall(pkt(1, struct.pack(">I", 3)))
assert recv_packet()[0] == 2
pflags = 1 if mode == "done" else 3  # READ, or READ|WRITE
ch.sendall(pkt(3, struct.pack(">I", 1) + s(name.encode()) + struct.pack(">II", pflags, 0)))
reply = recv_packet()
assert reply[0] == 102, reply
handle = reply[9:]
print("ready", flush=True)
sys.stdin.readline()

attack = []
if mode == "stat":
    attack = [pkt(17, struct.pack(">I", 10 + i) + s(name.encode())) for i in range(count)]
else:
    attack = [pkt(5, struct.pack(">I", 10 + i) + s(handle) + struct.pack(">QI", 0, 261120)) for i in range(count)]
    target = handle if mode == "write" else b"bogus!"
    attack.append(pkt(6, struct.pack(">I", 9) + s(target) + struct.pack(">Q", 0) + s(b"x" * 10)))
data = b"".join(attack)
sender = threading.Thread(target=ch.sendall, args=(data,), daemon=True)
sender.start()
sender.join(10)
print("sent" if not sender.is_alive() else "stalled", flush=True)
sys.stdin.readline()
"#;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Runs one attack against a fresh gateway; returns (how the sending ended, growth KiB).
fn attack(mode: &str, count: usize) -> (String, u64) {
    let g = Gateway::start();
    let key = ClientKey::new(g.dir.path(), "hostile");
    let id = 60 + rand_u64() % 1000;
    g.provision(id, "db.dump", &key);
    // A file long enough that every read would carry a full 255 KiB.
    random_file(&g.upload_path(id), 1 << 20);
    if mode == "done" {
        let upgraded = g.dir.path().join("upgraded");
        random_file(&upgraded, 1 << 20);
        g.finish(id, &upgraded);
    }
    let name = if mode == "done" {
        "upgraded_db.dump"
    } else {
        "db.dump"
    };
    let (port, count, user) = (
        g.ssh_port.to_string(),
        count.to_string(),
        format!("user_{id}"),
    );
    let mut py = spawn_python(
        ATTACK,
        &[&port, key.path.to_str().unwrap(), name, mode, &count, &user],
    );
    let mut stdin = py.stdin.take().unwrap();
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(next(), "ready", "log: {}", g.log());
    let pid = g.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    writeln!(stdin).unwrap();
    let sent = next();
    // No signal says the gateway has handled what it took in: watch the memory for a
    // while and keep the peak (the unbounded code reached 100 MiB within a second).
    let mut peak = before;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let _ = py.wait();
    (sent, peak.saturating_sub(before))
}

fn assert_bounded(mode: &str, count: usize) {
    let (sent, growth) = attack(mode, count);
    eprintln!("{mode} x{count} ({sent}): grew by {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "{mode} x{count} ({sent}): the gateway grew by {growth} KiB"
    );
}

#[test]
fn pipelined_reads_then_a_write_to_a_bogus_handle() {
    assert_bounded("bogus", 400);
}

#[test]
fn pipelined_reads_then_a_write_to_the_file() {
    assert_bounded("write", 800);
}

#[test]
fn pipelined_reads_in_done_mode() {
    assert_bounded("done", 800);
}

#[test]
fn stats_whose_replies_are_never_read() {
    // 25 MB of requests: more than the socket buffers on both sides hold, so the client
    // only gets them all out if the gateway reads them all.
    let (sent, growth) = attack("stat", 1_000_000);
    eprintln!("stat x1000000 ({sent}): grew by {growth} KiB");
    assert!(growth < MAX_GROWTH_KIB, "grew by {growth} KiB");
    // The gateway stopped reading the requests instead of answering them all.
    assert_eq!(sent, "stalled");
}
