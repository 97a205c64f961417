//! The operator HTTP listener against slow and idle clients: silent, slow-header, slow-body
//! and idle keep-alive connections are closed by the server within the configured timeouts,
//! and connections past `--http-max-connections` are answered 503 and closed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn short_timeouts() -> Gateway {
    Gateway::start_with(&[
        "--http-header-timeout-secs",
        "2",
        "--http-body-timeout-secs",
        "2",
    ])
}

fn healthz_works(g: &Gateway) {
    let (code, json) = g.api_raw("GET", "/healthz", None, None);
    assert_eq!((code, json["status"].as_str()), (200, Some("ok")), "{json}");
}

/// Generous against the 2 s timeouts (a loaded machine), far short of "never".
const BOUND: Duration = Duration::from_secs(10);

#[test]
fn silent_connections_are_closed() {
    let g = short_timeouts();
    let mut silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&g.admin).unwrap())
        .collect();
    healthz_works(&g);
    let started = Instant::now();
    for s in &mut silent {
        let (got, closed) = read_until_closed(s, BOUND);
        assert!(closed, "a silent connection was still open after {BOUND:?}");
        assert_eq!(got, "");
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn slow_headers_are_cut_off() {
    let g = short_timeouts();
    let mut s = TcpStream::connect(&g.admin).unwrap();
    let mut w = s.try_clone().unwrap();
    // One byte every 500 ms: never silent for long, never a whole head within 2 s.
    let trickle = std::thread::spawn(move || {
        for b in
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
        {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let (got, closed) = read_until_closed(&mut s, BOUND);
    assert!(
        closed,
        "a slow-header connection was still open after {BOUND:?}"
    );
    assert_eq!(got, "", "no answer to a request that never arrived");
    healthz_works(&g);
    drop(s);
    trickle.join().unwrap();
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let g = short_timeouts();
    let mut s = TcpStream::connect(&g.admin).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, BOUND);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("\"status\":\"ok\""), "{got}");
    assert!(
        closed,
        "an idle keep-alive connection was still open after {BOUND:?}"
    );
}

/// Provisions request `id` and sends the head of a PUT of its upgraded dump, no body yet.
fn start_upgraded_upload(g: &Gateway, id: u64, len: usize) -> TcpStream {
    let key = ClientKey::new(g.dir.path(), "k");
    g.provision(id, "db.dump", &key);
    let mut s = TcpStream::connect(&g.admin).unwrap();
    write!(
        s,
        "PUT /v1/requests/{id}/upgraded HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

#[test]
fn stalled_bodies_are_answered_and_closed() {
    let g = short_timeouts();
    let mut s = start_upgraded_upload(&g, 7, 1_000_000);
    s.write_all(b"0123456789").unwrap();
    let (got, closed) = read_until_closed(&mut s, BOUND);
    assert!(closed, "a stalled upload was still open after {BOUND:?}");
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(got.contains("\"reason\":\"BODY:INTERRUPTED\""), "{got}");
    // Nothing was stored from the partial body.
    let (code, json) = g.api("GET", "/v1/requests/7", None);
    assert_eq!(code, 200);
    assert!(!g.data().join("requests/7/upgraded").exists(), "{json}");
    healthz_works(&g);
}

#[test]
fn a_trickling_body_is_not_cut_off() {
    // A progress timeout, not a deadline: 5 s of body at one chunk every 500 ms is fine.
    let g = short_timeouts();
    let mut s = start_upgraded_upload(&g, 8, 10);
    for b in b"0123456789" {
        std::thread::sleep(Duration::from_millis(500));
        s.write_all(&[*b]).unwrap();
    }
    let (got, closed) = read_until_closed(&mut s, BOUND);
    assert!(closed && got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert_eq!(
        std::fs::read(g.data().join("requests/8/upgraded")).unwrap(),
        b"0123456789"
    );
}

#[test]
fn connections_past_the_cap_are_refused() {
    let g = Gateway::start_with(&["--http-max-connections", "3"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&g.admin).unwrap())
        .collect();
    let mut extra = TcpStream::connect(&g.admin).unwrap();
    let (got, closed) = read_until_closed(&mut extra, BOUND);
    assert!(closed, "the connection past the cap was kept open");
    assert!(
        got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{got}"
    );
    assert!(
        got.ends_with(
            "{\"failures\":[{\"message\":\"the operator API has too many open connections; retry shortly\",\"reason\":\"HTTP:TOO_MANY_CONNECTIONS\"}]}"
        ),
        "{got}"
    );
    assert!(g.log().contains("too many open"), "{}", g.log());
    // A slot frees when a held connection closes.
    drop(held);
    assert!(wait_until(Duration::from_secs(10), || {
        g.api_raw("GET", "/healthz", None, None).0 == 200
    }));
}

#[test]
fn a_client_that_stops_reading_a_download_is_cut_off() {
    let g = short_timeouts();
    let key = ClientKey::new(g.dir.path(), "k");
    g.provision(9, "db.dump", &key);
    const LEN: u64 = 256 * 1024 * 1024;
    std::fs::File::create(g.upload_path(9))
        .unwrap()
        .set_len(LEN)
        .unwrap();
    let mut s = TcpStream::connect(&g.admin).unwrap();
    write!(
        s,
        "GET /v1/requests/9/original HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    // The stall under test: the client takes nothing for twice the 2 s timeout.
    std::thread::sleep(Duration::from_secs(4));
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    s.set_read_timeout(Some(BOUND)).unwrap();
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => panic!("read after {total} bytes: {e}"),
        }
    };
    // What the socket buffers held when the server gave up, not the 256 MiB.
    assert!(total > 0 && total < LEN / 4, "{total} bytes, then {end}");
    healthz_works(&g);
}
