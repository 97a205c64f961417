//! Reply encoding: each [`Encoder`] function appends one complete packet, length prefix
//! included, to the reply buffer.

use bytes::{BufMut, BytesMut};

use super::*;

/// One entry of a NAME reply.
#[derive(Debug)]
pub struct NameEntry {
    /// The file name, raw bytes as paths are.
    pub name: Vec<u8>,
    /// The `ls -l` line clients show.
    pub long: String,
    pub attrs: Attrs,
}

/// Appends replies to a buffer.
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

    pub fn attrs_reply(&mut self, id: u32, attrs: &Attrs) {
        let at = self.begin(SSH_FXP_ATTRS);
        self.0.put_u32(id);
        self.attrs(attrs);
        self.finish(at);
    }

    /// One NAME packet.
    pub fn name(&mut self, id: u32, entries: &[NameEntry]) {
        let at = self.begin(SSH_FXP_NAME);
        self.0.put_u32(id);
        self.0.put_u32(entries.len() as u32);
        for NameEntry { name, long, attrs } in entries {
            self.string(name);
            self.string(long.as_bytes());
            self.attrs(attrs);
        }
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
