//! OpenSSH's extensions (SSH_FXP_EXTENDED): which are advertised in the VERSION reply and
//! what each does here. `limits@` tells clients the packet and I/O sizes served, `statvfs@`
//! and `fstatvfs@` report the storage's space, `fsync@` syncs a handle, `lsetstat@` is
//! SETSTAT (there are no links to not follow) and `posix-rename@` is RENAME; hard links and
//! server-side copies are refused.

use crate::sftp::vfs::Resolved;
use crate::sftp::wire::{ext, Extension, StatusCode};
use crate::sftp::{LEASE_LOST, MAX_HANDLES, MAX_IO_LEN, MAX_PACKET_LEN};

use super::handles::file_of;
use super::reply::Reply;
use super::Session;

/// The extensions named in the VERSION reply, with their versions.
pub(super) const ADVERTISED: &[(&str, &str)] = &[
    (ext::LIMITS, "1"),
    (ext::FSYNC, "1"),
    (ext::STATVFS, "2"),
    (ext::FSTATVFS, "2"),
    (ext::LSETSTAT, "1"),
    // Advertised so that clients send them and get a clear refusal.
    (ext::POSIX_RENAME, "1"),
    (ext::HARDLINK, "1"),
];

impl Session {
    pub(super) fn extended(&mut self, id: u32, ext: Extension) -> Reply {
        match ext {
            Extension::Limits => Reply::U64s {
                id,
                values: vec![
                    MAX_PACKET_LEN.into(),
                    MAX_IO_LEN.into(),
                    MAX_IO_LEN.into(),
                    MAX_HANDLES as u64,
                ],
            },
            Extension::StatVfs { path } => match self.resolve(&path) {
                Resolved::Root | Resolved::File | Resolved::Partial => self.statvfs(id),
                Resolved::Other => Reply::no_such_file(id),
            },
            Extension::FStatVfs { handle } => match self.handle_of(&handle) {
                Some(_) => self.statvfs(id),
                None => Reply::invalid_handle(id),
            },
            Extension::Fsync { handle } => self.fsync(id, &handle),
            Extension::LSetStat { path, attrs } => self.setstat_path(id, &path, &attrs),
            Extension::PosixRename { from, to } => self.rename(id, &from, &to),
            Extension::Hardlink | Extension::CopyData => Reply::denied(id),
            Extension::Other { .. } => {
                Reply::status(id, StatusCode::OpUnsupported, "extension not supported")
            }
        }
    }

    fn fsync(&mut self, id: u32, handle: &[u8]) -> Reply {
        let Some(f) = file_of(&mut self.handles, handle) else {
            return Reply::invalid_handle(id);
        };
        // Synced all the same: what was written under the lease belongs on disk.
        match f.body.sync() {
            Ok(()) if f.lease_lost() => Reply::failure(id, LEASE_LOST),
            Ok(()) => Reply::ok(id),
            Err(e) => Reply::io(id, &e),
        }
    }

    fn statvfs(&self, id: u32) -> Reply {
        let s = match self.shared.storage.statvfs() {
            Ok(s) => s,
            Err(e) => return Reply::io(id, &e),
        };
        let mut flag = 0x2; // ST_NOSUID
        if !self.shared.writable {
            flag |= 0x1; // ST_RDONLY
        }
        Reply::U64s {
            id,
            values: vec![
                s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.favail, s.fsid,
                flag, s.namemax,
            ],
        }
    }
}
