//! Request decoding: one received packet (without its length prefix) to a [`Request`],
//! extension requests to their [`Extension`] with the same readers (the attributes of
//! `lsetstat@openssh.com` are read as SETSTAT's are), and the head of a WRITE from its
//! first bytes so that its data can stay where it arrived.

use bytes::{Buf, Bytes};

use super::*;

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
                ext: decode_extension(name, r)?,
            }
        }
        _ => return None,
    })
}

/// The arguments of the extension `name`, read from what follows it in the packet.
fn decode_extension(name: Bytes, r: &mut Reader) -> Option<Extension> {
    let Ok(known) = std::str::from_utf8(&name) else {
        return Some(Extension::Other { name });
    };
    Some(match known {
        ext::LIMITS => Extension::Limits,
        ext::STATVFS => Extension::StatVfs { path: r.string()? },
        ext::FSTATVFS => Extension::FStatVfs {
            handle: r.string()?,
        },
        ext::FSYNC => Extension::Fsync {
            handle: r.string()?,
        },
        ext::LSETSTAT => Extension::LSetStat {
            path: r.string()?,
            attrs: r.attrs()?,
        },
        ext::POSIX_RENAME => Extension::PosixRename {
            from: r.string()?,
            to: r.string()?,
        },
        ext::HARDLINK => Extension::Hardlink,
        ext::COPY_DATA => Extension::CopyData,
        _ => Extension::Other { name },
    })
}

#[cfg(test)]
mod tests;
