use super::*;
use std::net::Ipv4Addr;

/// A v2 header: version/command byte, family/protocol byte, then the payload.
fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(cmd);
    h.push(fam);
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut p = src.to_vec();
    p.extend_from_slice(&[127, 0, 0, 1]);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&2200u16.to_be_bytes());
    p
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let h = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 2200\r\nSSH-2.0-x\r\n";
    let (claim, len) = parse(h).unwrap();
    assert_eq!(claim, Claim::Client(addr("192.0.2.7:51234")));
    assert_eq!(&h[len..], b"SSH-2.0-x\r\n");

    let h = b"PROXY TCP6 2001:db8::1 ::1 40000 22\r\n";
    assert_eq!(
        parse(h).unwrap(),
        (Claim::Client(addr("[2001:db8::1]:40000")), h.len())
    );
    // A mapped address is the IPv4 client.
    let h = b"PROXY TCP6 ::ffff:192.0.2.9 ::1 40000 22\r\n";
    assert_eq!(parse(h).unwrap().0, Claim::Client(addr("192.0.2.9:40000")));

    for h in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
    ] {
        assert_eq!(parse(h).unwrap(), (Claim::Unknown, h.len()));
    }
    assert_eq!(Claim::Unknown.or(addr("10.0.0.1:9")), addr("10.0.0.1:9"));
}

#[test]
fn v2_proxy_local_and_unspecified() {
    let mut h = v2(0x21, 0x11, &tcp4([192, 0, 2, 7], 51234));
    let len = h.len();
    h.extend_from_slice(b"SSH-2.0-x\r\n");
    assert_eq!(
        parse(&h).unwrap(),
        (Claim::Client(addr("192.0.2.7:51234")), len)
    );

    let mut p = vec![0u8; 36];
    p[..16].copy_from_slice(
        &"2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    p[15 + 16] = 1; // destination ::1
    p[32..34].copy_from_slice(&443u16.to_be_bytes());
    let h = v2(0x21, 0x21, &p);
    assert_eq!(
        parse(&h).unwrap().0,
        Claim::Client(addr("[2001:db8::5]:443"))
    );

    // LOCAL (a health check) ignores its addresses, with or without them.
    assert_eq!(parse(&v2(0x20, 0x00, &[])).unwrap().0, Claim::Local);
    assert_eq!(
        parse(&v2(0x20, 0x11, &tcp4([1, 2, 3, 4], 5))).unwrap().0,
        Claim::Local
    );
    assert_eq!(Claim::Local.or(addr("10.0.0.1:9")), addr("10.0.0.1:9"));
    // PROXY with an unspecified family, and AF_UNIX.
    assert_eq!(parse(&v2(0x21, 0x00, &[])).unwrap().0, Claim::Unknown);
    assert_eq!(parse(&v2(0x21, 0x31, &[0; 216])).unwrap().0, Claim::Unknown);
    // TLVs after the addresses are skipped, within the cap.
    let mut p = tcp4([192, 0, 2, 8], 1);
    p.extend_from_slice(&[0x05, 0x00, 0x03, b'a', b'b', b'c']);
    assert_eq!(
        parse(&v2(0x21, 0x11, &p)).unwrap().0,
        Claim::Client(addr("192.0.2.8:1"))
    );
}

#[test]
fn truncated_headers() {
    let whole = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 2200\r\n";
    for n in 0..whole.len() {
        assert!(
            matches!(parse(&whole[..n]), Err(HeaderError::Truncated)),
            "{n}"
        );
    }
    let whole = v2(0x21, 0x11, &tcp4([192, 0, 2, 7], 1));
    for n in 0..whole.len() {
        assert!(
            matches!(parse(&whole[..n]), Err(HeaderError::Truncated)),
            "{n}"
        );
    }
}

#[test]
fn oversized_headers_are_refused_unread() {
    let mut h = b"PROXY TCP4 ".to_vec();
    h.resize(200, b'1');
    assert!(matches!(parse(&h), Err(HeaderError::TooLong)));
    // The length field alone condemns it: nothing past the 16 fixed bytes is asked for.
    let big = v2(0x21, 0x11, &vec![0; V2_MAX_PAYLOAD + 1]);
    assert!(matches!(
        step(&big[..16]),
        Err(HeaderError::TooLarge(n)) if n == V2_MAX_PAYLOAD + 1
    ));
    assert!(parse(&v2(0x21, 0x11, &{
        let mut p = tcp4([1, 1, 1, 1], 1);
        p.resize(V2_MAX_PAYLOAD, 0);
        p
    }))
    .is_ok());
}

#[test]
fn garbage_is_refused() {
    // An SSH client that was not proxied.
    assert!(matches!(
        parse(b"SSH-2.0-OpenSSH_9.2\r\n"),
        Err(HeaderError::Missing)
    ));
    assert!(matches!(parse(b""), Err(HeaderError::Truncated)));
    for bad in [
        &b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    ] {
        assert!(
            matches!(parse(bad), Err(HeaderError::Invalid(_))),
            "{:?}: {:?}",
            String::from_utf8_lossy(bad),
            parse(bad)
        );
    }
    // v2: version 1, command 2, family 4, UDP, addresses longer than the length.
    for bad in [
        v2(0x11, 0x11, &tcp4([1, 2, 3, 4], 1)),
        v2(0x22, 0x11, &tcp4([1, 2, 3, 4], 1)),
        v2(0x21, 0x41, &tcp4([1, 2, 3, 4], 1)),
        v2(0x21, 0x11, &[1, 2, 3]),
    ] {
        assert!(
            matches!(parse(&bad), Err(HeaderError::Invalid(_))),
            "{bad:?}: {:?}",
            parse(&bad)
        );
    }
    assert!(matches!(
        parse(&v2(0x21, 0x12, &tcp4([1, 2, 3, 4], 1))),
        Err(HeaderError::Datagram)
    ));
}

#[test]
fn signatures_are_told_apart() {
    assert_eq!(signature(b""), Signature::Maybe);
    assert_eq!(signature(b"PRO"), Signature::Maybe);
    assert_eq!(signature(b"PROXY TCP4"), Signature::Present);
    assert_eq!(signature(b"\r\n\r\n"), Signature::Maybe);
    assert_eq!(signature(&V2_SIGNATURE), Signature::Present);
    assert_eq!(signature(b"SSH-2.0-"), Signature::Absent);
    assert_eq!(signature(b"PROXX"), Signature::Absent);
}

#[tokio::test]
async fn the_reader_takes_exactly_the_header() {
    let (mut near, mut far) = tokio::io::duplex(4096);
    let mut h = v2(0x21, 0x11, &tcp4([192, 0, 2, 7], 7));
    h.extend_from_slice(b"SSH-2.0-rest");
    tokio::io::AsyncWriteExt::write_all(&mut far, &h)
        .await
        .unwrap();
    let claim = read_header(&mut near, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        claim,
        Claim::Client(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 7))
    );
    let mut rest = [0u8; 12];
    near.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"SSH-2.0-rest");

    // v1, written a byte at a time: nothing past its LF is read.
    let (mut near, mut far) = tokio::io::duplex(4096);
    let writer = tokio::spawn(async move {
        for b in b"PROXY UNKNOWN\r\nSSH" {
            tokio::io::AsyncWriteExt::write_all(&mut far, &[*b])
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        far
    });
    assert_eq!(
        read_header(&mut near, Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Unknown
    );
    let _far = writer.await.unwrap();
    let mut rest = [0u8; 3];
    near.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"SSH");
}

#[tokio::test]
async fn the_reader_gives_up_on_silence_and_hang_ups() {
    let (mut near, far) = tokio::io::duplex(64);
    let r = read_header(&mut near, Duration::from_millis(50)).await;
    assert!(matches!(r, Err(HeaderError::Timeout(_))), "{r:?}");
    drop(far);
    let r = read_header(&mut near, Duration::from_secs(5)).await;
    assert!(matches!(r, Err(HeaderError::Truncated)), "{r:?}");
}
