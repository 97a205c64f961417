//! What a client's request decodes to: one [`Request`] per packet type, and for
//! SSH_FXP_EXTENDED the [`Extension`] it names with its arguments, or why the packet could
//! not be decoded ([`DecodeError`]).

use bytes::Bytes;

use super::Attrs;

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
        ext: Extension,
    },
}

/// An SSH_FXP_EXTENDED request by the extension it names (see [`super::ext`]), its
/// arguments decoded as any request's are: arguments that do not decode make the request
/// [`DecodeError::Malformed`].
#[derive(Debug)]
pub enum Extension {
    /// `limits@openssh.com`, without arguments.
    Limits,
    StatVfs {
        path: Bytes,
    },
    FStatVfs {
        handle: Bytes,
    },
    Fsync {
        handle: Bytes,
    },
    LSetStat {
        path: Bytes,
        attrs: Attrs,
    },
    PosixRename {
        from: Bytes,
        to: Bytes,
    },
    /// `hardlink@openssh.com` and `copy-data` are refused whatever they name, so their
    /// arguments are never read.
    Hardlink,
    CopyData,
    /// An extension this server does not know.
    Other {
        name: Bytes,
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
