//! The SFTP v3 wire format (draft-ietf-secsh-filexfer-02 plus OpenSSH's extensions): request
//! decoding from a received packet and reply encoding. Paths stay raw bytes, so a name that
//! is not UTF-8 is just a name that matches nothing, not a decoding error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The SSH_FX_* codes of an SSH_FXP_STATUS reply (draft-ietf-secsh-filexfer-02, section 7).
/// Defined here rather than taken from russh-sftp, which was a dependency for this enum
/// alone and brought chrono, dashmap and wasm crates with it. `NoConnection` and
/// `ConnectionLost` are client-side pseudo-errors a server must not send; they are listed so
/// the numbering is the draft's, complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum StatusCode {
    Ok = 0,
    Eof = 1,
    NoSuchFile = 2,
    PermissionDenied = 3,
    Failure = 4,
    BadMessage = 5,
    NoConnection = 6,
    ConnectionLost = 7,
    OpUnsupported = 8,
}

pub const SSH_FXP_INIT: u8 = 1;
pub const SSH_FXP_VERSION: u8 = 2;
pub const SSH_FXP_OPEN: u8 = 3;
pub const SSH_FXP_CLOSE: u8 = 4;
pub const SSH_FXP_READ: u8 = 5;
pub const SSH_FXP_WRITE: u8 = 6;
pub const SSH_FXP_LSTAT: u8 = 7;
pub const SSH_FXP_FSTAT: u8 = 8;
pub const SSH_FXP_SETSTAT: u8 = 9;
pub const SSH_FXP_FSETSTAT: u8 = 10;
pub const SSH_FXP_OPENDIR: u8 = 11;
pub const SSH_FXP_READDIR: u8 = 12;
pub const SSH_FXP_REMOVE: u8 = 13;
pub const SSH_FXP_MKDIR: u8 = 14;
pub const SSH_FXP_RMDIR: u8 = 15;
pub const SSH_FXP_REALPATH: u8 = 16;
pub const SSH_FXP_STAT: u8 = 17;
pub const SSH_FXP_RENAME: u8 = 18;
pub const SSH_FXP_READLINK: u8 = 19;
pub const SSH_FXP_SYMLINK: u8 = 20;
pub const SSH_FXP_STATUS: u8 = 101;
pub const SSH_FXP_HANDLE: u8 = 102;
pub const SSH_FXP_DATA: u8 = 103;
pub const SSH_FXP_NAME: u8 = 104;
pub const SSH_FXP_ATTRS: u8 = 105;
pub const SSH_FXP_EXTENDED: u8 = 200;
pub const SSH_FXP_EXTENDED_REPLY: u8 = 201;

pub const FXF_READ: u32 = 0x01;
pub const FXF_WRITE: u32 = 0x02;
pub const FXF_APPEND: u32 = 0x04;
pub const FXF_CREAT: u32 = 0x08;
pub const FXF_TRUNC: u32 = 0x10;

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// File attributes; `None` fields are absent on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid_gid: Option<(u32, u32)>,
    pub permissions: Option<u32>,
    /// (atime, mtime), seconds since the epoch.
    pub times: Option<(u32, u32)>,
}

/// A decoded client request. Strings and data borrow from the received packet.
#[derive(Debug)]
pub enum Request {
    Init {
        version: u32,
    },
    Open {
        id: u32,
        path: Bytes,
        pflags: u32,
        attrs: Attrs,
    },
    Close {
        id: u32,
        handle: Bytes,
    },
    Read {
        id: u32,
        handle: Bytes,
        offset: u64,
        len: u32,
    },
    Write {
        id: u32,
        handle: Bytes,
        offset: u64,
        data: Bytes,
    },
    Lstat {
        id: u32,
        path: Bytes,
    },
    Fstat {
        id: u32,
        handle: Bytes,
    },
    SetStat {
        id: u32,
        path: Bytes,
        attrs: Attrs,
    },
    FSetStat {
        id: u32,
        handle: Bytes,
        attrs: Attrs,
    },
    OpenDir {
        id: u32,
        path: Bytes,
    },
    ReadDir {
        id: u32,
        handle: Bytes,
    },
    Remove {
        id: u32,
        path: Bytes,
    },
    MkDir {
        id: u32,
        path: Bytes,
    },
    RmDir {
        id: u32,
        path: Bytes,
    },
    RealPath {
        id: u32,
        path: Bytes,
    },
    Stat {
        id: u32,
        path: Bytes,
    },
    Rename {
        id: u32,
        from: Bytes,
        to: Bytes,
    },
    ReadLink {
        id: u32,
        path: Bytes,
    },
    Symlink {
        id: u32,
    },
    Extended {
        id: u32,
        name: Bytes,
        data: Bytes,
    },
}

/// Why a packet could not be decoded. Carries the request id when the packet had one, so
/// the client gets its answer under the right id.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A known request type whose body is malformed.
    Malformed { id: Option<u32> },
    /// A type the server does not implement.
    Unsupported { id: Option<u32>, kind: u8 },
}

struct Reader(Bytes);

impl Reader {
    fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32())
    }
    fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64())
    }
    fn string(&mut self) -> Option<Bytes> {
        let len = self.u32()? as usize;
        (self.0.remaining() >= len).then(|| self.0.split_to(len))
    }
    fn attrs(&mut self) -> Option<Attrs> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.uid_gid = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.string()?;
                self.string()?;
            }
        }
        Some(a)
    }
}

/// The id of a request packet (type byte then id), if it is long enough to have one.
pub fn peek_id(packet: &[u8]) -> Option<u32> {
    let b: [u8; 4] = packet.get(1..5)?.try_into().ok()?;
    (packet.first() != Some(&SSH_FXP_INIT)).then(|| u32::from_be_bytes(b))
}

/// The part of a WRITE before its data.
#[derive(Debug, PartialEq)]
pub struct WriteHead {
    pub id: u32,
    pub handle: Bytes,
    pub offset: u64,
    /// Length of the data that follows.
    pub len: usize,
    /// Bytes of the packet body taken by these fields.
    pub size: usize,
}

/// Decodes the fields of a WRITE from the first bytes of its body, so that its data can be
/// taken from where it lies. `None` if `prefix` is not a WRITE or too short to hold them.
pub fn decode_write_head(prefix: Bytes) -> Option<WriteHead> {
    let total = prefix.len();
    let mut r = Reader(prefix);
    if r.u8()? != SSH_FXP_WRITE {
        return None;
    }
    let (id, handle, offset, len) = (r.u32()?, r.string()?, r.u64()?, r.u32()?);
    Some(WriteHead {
        id,
        handle,
        offset,
        len: len as usize,
        size: total - r.0.remaining(),
    })
}

/// Decodes one packet body (without its length prefix). Trailing bytes are ignored, as
/// later protocol versions append fields v3 servers do not know.
pub fn decode(packet: Bytes) -> Result<Request, DecodeError> {
    let id = peek_id(&packet);
    let mut r = Reader(packet);
    let kind = r.u8().ok_or(DecodeError::Malformed { id: None })?;
    let req = match kind {
        SSH_FXP_INIT => r.u32().map(|version| Request::Init { version }),
        _ => decode_request(kind, &mut r),
    };
    req.ok_or(match kind {
        SSH_FXP_INIT..=SSH_FXP_SYMLINK | SSH_FXP_EXTENDED => DecodeError::Malformed { id },
        _ => DecodeError::Unsupported { id, kind },
    })
}

fn decode_request(kind: u8, r: &mut Reader) -> Option<Request> {
    let id = r.u32()?;
    Some(match kind {
        SSH_FXP_OPEN => Request::Open {
            id,
            path: r.string()?,
            pflags: r.u32()?,
            attrs: r.attrs()?,
        },
        SSH_FXP_CLOSE => Request::Close {
            id,
            handle: r.string()?,
        },
        SSH_FXP_READ => Request::Read {
            id,
            handle: r.string()?,
            offset: r.u64()?,
            len: r.u32()?,
        },
        SSH_FXP_WRITE => Request::Write {
            id,
            handle: r.string()?,
            offset: r.u64()?,
            data: r.string()?,
        },
        SSH_FXP_LSTAT => Request::Lstat {
            id,
            path: r.string()?,
        },
        SSH_FXP_FSTAT => Request::Fstat {
            id,
            handle: r.string()?,
        },
        SSH_FXP_SETSTAT => Request::SetStat {
            id,
            path: r.string()?,
            attrs: r.attrs()?,
        },
        SSH_FXP_FSETSTAT => Request::FSetStat {
            id,
            handle: r.string()?,
            attrs: r.attrs()?,
        },
        SSH_FXP_OPENDIR => Request::OpenDir {
            id,
            path: r.string()?,
        },
        SSH_FXP_READDIR => Request::ReadDir {
            id,
            handle: r.string()?,
        },
        SSH_FXP_REMOVE => Request::Remove {
            id,
            path: r.string()?,
        },
        // Attributes of MKDIR and the target of SYMLINK are never looked at: those
        // operations are refused whatever they name.
        SSH_FXP_MKDIR => Request::MkDir {
            id,
            path: r.string()?,
        },
        SSH_FXP_RMDIR => Request::RmDir {
            id,
            path: r.string()?,
        },
        SSH_FXP_REALPATH => Request::RealPath {
            id,
            path: r.string()?,
        },
        SSH_FXP_STAT => Request::Stat {
            id,
            path: r.string()?,
        },
        SSH_FXP_RENAME => Request::Rename {
            id,
            from: r.string()?,
            to: r.string()?,
        },
        SSH_FXP_READLINK => Request::ReadLink {
            id,
            path: r.string()?,
        },
        SSH_FXP_SYMLINK => Request::Symlink { id },
        SSH_FXP_EXTENDED => {
            let name = r.string()?;
            Request::Extended {
                id,
                name,
                data: std::mem::take(&mut r.0),
            }
        }
        _ => return None,
    })
}

/// Reply encoding: each function appends one complete packet (length prefix included).
pub struct Encoder<'a>(pub &'a mut BytesMut);

impl Encoder<'_> {
    /// Starts a packet and returns the offset of its length field, patched by `finish`.
    fn begin(&mut self, kind: u8) -> usize {
        let at = self.0.len();
        self.0.put_u32(0);
        self.0.put_u8(kind);
        at
    }

    fn finish(&mut self, at: usize) {
        let len = (self.0.len() - at - 4) as u32;
        self.0[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn string(&mut self, s: &[u8]) {
        self.0.put_u32(s.len() as u32);
        self.0.put_slice(s);
    }

    fn attrs(&mut self, a: &Attrs) {
        let mut flags = 0;
        flags |= if a.size.is_some() { ATTR_SIZE } else { 0 };
        flags |= if a.uid_gid.is_some() { ATTR_UIDGID } else { 0 };
        flags |= if a.permissions.is_some() {
            ATTR_PERMISSIONS
        } else {
            0
        };
        flags |= if a.times.is_some() { ATTR_ACMODTIME } else { 0 };
        self.0.put_u32(flags);
        if let Some(size) = a.size {
            self.0.put_u64(size);
        }
        if let Some((uid, gid)) = a.uid_gid {
            self.0.put_u32(uid);
            self.0.put_u32(gid);
        }
        if let Some(p) = a.permissions {
            self.0.put_u32(p);
        }
        if let Some((atime, mtime)) = a.times {
            self.0.put_u32(atime);
            self.0.put_u32(mtime);
        }
    }

    pub fn version(&mut self, extensions: &[(&str, &str)]) {
        let at = self.begin(SSH_FXP_VERSION);
        self.0.put_u32(3);
        for (name, value) in extensions {
            self.string(name.as_bytes());
            self.string(value.as_bytes());
        }
        self.finish(at);
    }

    pub fn status(&mut self, id: u32, code: StatusCode, message: &str) {
        let at = self.begin(SSH_FXP_STATUS);
        self.0.put_u32(id);
        self.0.put_u32(code as u32);
        self.string(message.as_bytes());
        self.string(b"en");
        self.finish(at);
    }

    pub fn handle(&mut self, id: u32, handle: &[u8]) {
        let at = self.begin(SSH_FXP_HANDLE);
        self.0.put_u32(id);
        self.string(handle);
        self.finish(at);
    }

    /// One NAME packet; each entry is (filename, longname, attrs).
    pub fn name(&mut self, id: u32, entries: &[(&[u8], &str, &Attrs)]) {
        let at = self.begin(SSH_FXP_NAME);
        self.0.put_u32(id);
        self.0.put_u32(entries.len() as u32);
        for (file, long, attrs) in entries {
            self.string(file);
            self.string(long.as_bytes());
            self.attrs(attrs);
        }
        self.finish(at);
    }

    pub fn attrs_reply(&mut self, id: u32, attrs: &Attrs) {
        let at = self.begin(SSH_FXP_ATTRS);
        self.0.put_u32(id);
        self.attrs(attrs);
        self.finish(at);
    }

    /// An EXTENDED_REPLY whose body is a list of u64, as limits@ and statvfs@ send.
    pub fn extended_u64s(&mut self, id: u32, values: &[u64]) {
        let at = self.begin(SSH_FXP_EXTENDED_REPLY);
        self.0.put_u32(id);
        for v in values {
            self.0.put_u64(*v);
        }
        self.finish(at);
    }

    /// Starts a DATA packet: the caller appends the data to the buffer, then calls
    /// `data_finish` with the mark returned.
    pub fn data_begin(&mut self, id: u32) -> (usize, usize) {
        let at = self.begin(SSH_FXP_DATA);
        self.0.put_u32(id);
        self.0.put_u32(0);
        (at, self.0.len())
    }

    pub fn data_finish(&mut self, (at, start): (usize, usize)) {
        let n = (self.0.len() - start) as u32;
        self.0[start - 4..start].copy_from_slice(&n.to_be_bytes());
        self.finish(at);
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn encodes_framed_replies() {
        let mut buf = BytesMut::new();
        let mut e = Encoder(&mut buf);
        e.status(5, StatusCode::Eof, "EOF");
        let m = e.data_begin(6);
        e.0.extend_from_slice(b"xyz");
        e.data_finish(m);
        let status_len = 4 + 1 + 4 + 4 + 4 + 3 + 4 + 2;
        assert_eq!(
            u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize,
            status_len - 4
        );
        let d = &buf[status_len..];
        assert_eq!(
            d,
            &[
                0,
                0,
                0,
                12,
                SSH_FXP_DATA,
                0,
                0,
                0,
                6,
                0,
                0,
                0,
                3,
                b'x',
                b'y',
                b'z'
            ]
        );
    }
}
