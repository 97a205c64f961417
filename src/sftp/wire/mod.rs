//! The SFTP v3 wire format (draft-ietf-secsh-filexfer-02 plus OpenSSH's extensions): the
//! numbers and attributes both directions share. What a request decodes to is in
//! `request.rs`, decoding a received packet in `decode.rs` (extension requests included, so
//! the session never parses bytes), reply encoding in `encode.rs`. Paths stay raw bytes, so
//! a name that is not UTF-8 is just a name that matches nothing, not a decoding error.

mod decode;
mod encode;
mod request;

pub use decode::{decode, decode_write_head, peek_id, WriteHead};
pub use encode::{Encoder, NameEntry};
pub use request::{DecodeError, Extension, Request};

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

// The attribute flags, read by `decode` and written by `encode`.
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

/// The extensions this server knows by name: the session advertises some in its VERSION
/// reply and [`decode()`] recognises each in an SSH_FXP_EXTENDED request.
pub mod ext {
    pub const LIMITS: &str = "limits@openssh.com";
    pub const FSYNC: &str = "fsync@openssh.com";
    pub const STATVFS: &str = "statvfs@openssh.com";
    pub const FSTATVFS: &str = "fstatvfs@openssh.com";
    pub const LSETSTAT: &str = "lsetstat@openssh.com";
    pub const POSIX_RENAME: &str = "posix-rename@openssh.com";
    pub const HARDLINK: &str = "hardlink@openssh.com";
    pub const COPY_DATA: &str = "copy-data";
}
