//! Unit tests of request decoding: WRITE heads, malformed and unsupported packets that
//! keep their id, attributes, and extension requests with their arguments.

use super::*;

fn packet(parts: &[&[u8]]) -> Bytes {
    parts.concat().into()
}

fn s(x: &[u8]) -> Vec<u8> {
    [&(x.len() as u32).to_be_bytes()[..], x].concat()
}

/// WRITE id 7, handle "h1", offset 9.
fn write_packet(data: &[u8]) -> Bytes {
    packet(&[
        &[SSH_FXP_WRITE],
        &7u32.to_be_bytes(),
        &s(b"h1"),
        &9u64.to_be_bytes(),
        &s(data),
    ])
}

#[test]
fn decodes_a_write_head_from_a_prefix() {
    let p = write_packet(b"ab");
    let head = decode_write_head(p.slice(..p.len() - 2)).unwrap();
    assert_eq!(
        head,
        WriteHead {
            id: 7,
            handle: Bytes::from_static(b"h1"),
            offset: 9,
            len: 2,
            size: 23
        }
    );
    assert_eq!(decode_write_head(p.slice(..20)), None);
    assert_eq!(
        decode_write_head(packet(&[&[SSH_FXP_READ], &7u32.to_be_bytes()])),
        None
    );
}

#[test]
fn decodes_write_without_copying_semantics() {
    match decode(write_packet(b"abc")).unwrap() {
        Request::Write {
            id,
            handle,
            offset,
            data,
        } => {
            assert_eq!(
                (id, &handle[..], offset, &data[..]),
                (7, &b"h1"[..], 9, &b"abc"[..])
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_utf8_paths_decode() {
    let p = packet(&[&[SSH_FXP_STAT], &3u32.to_be_bytes(), &s(b"\xff\xfe")]);
    assert!(matches!(decode(p), Ok(Request::Stat { id: 3, .. })));
}

#[test]
fn malformed_keeps_the_id() {
    let p = packet(&[&[SSH_FXP_OPEN], &42u32.to_be_bytes(), &[0, 0, 1]]);
    assert_eq!(
        decode(p).unwrap_err(),
        DecodeError::Malformed { id: Some(42) }
    );
    let p = packet(&[&[99], &43u32.to_be_bytes()]);
    assert_eq!(
        decode(p).unwrap_err(),
        DecodeError::Unsupported {
            id: Some(43),
            kind: 99
        }
    );
    assert_eq!(
        decode(Bytes::new()).unwrap_err(),
        DecodeError::Malformed { id: None }
    );
    let p = packet(&[&[SSH_FXP_READ], &[0, 0]]);
    assert_eq!(decode(p).unwrap_err(), DecodeError::Malformed { id: None });
}

#[test]
fn attrs_with_extensions() {
    let p = packet(&[
        &[SSH_FXP_SETSTAT],
        &1u32.to_be_bytes(),
        &s(b"f"),
        &(ATTR_SIZE | ATTR_ACMODTIME | ATTR_EXTENDED).to_be_bytes(),
        &5u64.to_be_bytes(),
        &10u32.to_be_bytes(),
        &20u32.to_be_bytes(),
        &1u32.to_be_bytes(),
        &s(b"k"),
        &s(b"v"),
    ]);
    match decode(p).unwrap() {
        Request::SetStat { attrs, .. } => {
            assert_eq!(
                attrs,
                Attrs {
                    size: Some(5),
                    times: Some((10, 20)),
                    ..Attrs::default()
                }
            );
        }
        other => panic!("{other:?}"),
    }
}

fn extended(name: &str, args: &[&[u8]]) -> Result<Request, DecodeError> {
    let head = [
        &[SSH_FXP_EXTENDED][..],
        &9u32.to_be_bytes(),
        &s(name.as_bytes()),
    ]
    .concat();
    decode(packet(&[&head, &args.concat()]))
}

#[test]
fn extensions_decode_their_arguments() {
    let attrs = [
        &ATTR_ACMODTIME.to_be_bytes()[..],
        &1u32.to_be_bytes(),
        &2u32.to_be_bytes(),
    ]
    .concat();
    match extended(ext::LSETSTAT, &[&s(b"f"), &attrs]).unwrap() {
        Request::Extended {
            id: 9,
            ext: Extension::LSetStat { path, attrs },
        } => assert_eq!(
            (&path[..], attrs),
            (
                &b"f"[..],
                Attrs {
                    times: Some((1, 2)),
                    ..Attrs::default()
                }
            )
        ),
        other => panic!("{other:?}"),
    }
    match extended(ext::POSIX_RENAME, &[&s(b"a"), &s(b"b")]).unwrap() {
        Request::Extended {
            ext: Extension::PosixRename { from, to },
            ..
        } => assert_eq!((&from[..], &to[..]), (&b"a"[..], &b"b"[..])),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        extended(ext::LIMITS, &[]),
        Ok(Request::Extended {
            ext: Extension::Limits,
            ..
        })
    ));
    // Refused by name: whatever follows is not read.
    assert!(matches!(
        extended(ext::HARDLINK, &[&[1]]),
        Ok(Request::Extended {
            ext: Extension::Hardlink,
            ..
        })
    ));
    match extended("expand-path@openssh.com", &[&s(b"~")]).unwrap() {
        Request::Extended {
            ext: Extension::Other { name },
            ..
        } => assert_eq!(&name[..], b"expand-path@openssh.com"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_extension_arguments_keep_the_id() {
    for (name, args) in [
        (ext::FSYNC, &[][..]),
        (ext::STATVFS, &[0, 0, 0, 9, b'x'][..]),
        (ext::LSETSTAT, &[0, 0, 0, 1, b'f', 0, 0, 0, 1][..]),
        (ext::POSIX_RENAME, &[0, 0, 0, 1, b'a'][..]),
    ] {
        assert_eq!(
            extended(name, &[args]).unwrap_err(),
            DecodeError::Malformed { id: Some(9) },
            "{name}"
        );
    }
}
