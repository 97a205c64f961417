//! What a session needs of the place its file's bytes are kept: a local file ([`super::local`])
//! or an object store (`crate::storage`). The session decides what a client may do; the
//! storage only keeps bytes, and says when it cannot keep them the way it was asked to
//! (an object store refuses a write that is not at the end, for example).
//!
//! Every call blocks: the session's request loop and its reply writer run on blocking
//! threads, so a storage may wait on the disk or the network here.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

/// Which of the session's names a call is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// The shared file.
    File,
    /// Its `.filepart` (see [`super::vfs::PARTIAL_SUFFIX`]).
    Partial,
}

/// What a file looks like: what STAT reports of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    pub accessed: SystemTime,
    pub modified: SystemTime,
}

/// How a handle is opened (already checked against what the session allows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub read: bool,
    pub write: bool,
    /// Writes go to the end, wherever the client says (SSH_FXF_APPEND).
    pub append: bool,
    /// The file starts over empty.
    pub truncate: bool,
    /// A file that does not exist yet is created empty (a read of a draft upload that
    /// nothing was written to, too).
    pub create: bool,
}

/// What `statvfs@openssh.com` reports, in its order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub favail: u64,
    pub fsid: u64,
    pub namemax: u64,
}

/// The names a session may reach, wherever their bytes live.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The file's attributes; `None` if it does not exist.
    fn stat(&self, name: Name) -> io::Result<Option<Meta>>;
    fn open(&self, name: Name, mode: OpenMode) -> io::Result<Arc<dyn Body>>;
    /// Removes the name (the session allows this only for an abandoned `.filepart`).
    fn remove(&self, name: Name) -> io::Result<()>;
    /// Replaces the file with its `.filepart`, atomically.
    fn rename_partial(&self) -> io::Result<()>;
    /// Applies a SETSTAT by name: `size` truncates or extends, times are set.
    fn set_attrs(
        &self,
        name: Name,
        size: Option<u64>,
        times: Option<(SystemTime, SystemTime)>,
    ) -> io::Result<()>;
    fn statvfs(&self) -> io::Result<FsStats>;
}

/// An open handle's bytes. Shared by the request loop (writes) and the reply writer
/// (reads), hence `&self`.
pub trait Body: Send + Sync {
    fn meta(&self) -> io::Result<Meta>;
    /// Appends up to `len` bytes from `offset` to `buf`; fewer (or none) at the end.
    fn read_into(&self, buf: &mut BytesMut, offset: u64, len: usize) -> io::Result<()>;
    /// As `read_into`, but only if that needs no wait for a disk or a network (the data is
    /// in the page cache): true if it appended all of it (or all there is), false with
    /// nothing appended otherwise, errors included (`read_into` then says what they are).
    /// The reply writer calls it on the runtime's own thread, which must never block.
    fn read_cached_into(&self, _buf: &mut BytesMut, _offset: u64, _len: usize) -> bool {
        false
    }
    /// Writes `data` at `offset`, or at the end for `None` (an APPEND handle), all of it.
    fn write(&self, offset: Option<u64>, data: &[Bytes]) -> io::Result<()>;
    /// A SETSTAT through the handle (see [`Storage::set_attrs`]).
    fn set_attrs(
        &self,
        size: Option<u64>,
        times: Option<(SystemTime, SystemTime)>,
    ) -> io::Result<()>;
    /// `fsync@openssh.com`: what was written is durable when it returns.
    fn sync(&self) -> io::Result<()>;
    /// The CLOSE of a write handle: what was written is durable, and where the storage
    /// finishes an upload on close (an object store) finished, when it returns. Returns
    /// the file's size.
    fn finish(&self) -> io::Result<u64>;
}
