//! Names: the listing of `/` (READDIR), REALPATH, and the one remove and the one rename
//! allowed, both of the `.filepart` a client uploads to before renaming it onto the file.

use time::OffsetDateTime;

use crate::sftp::storage::Name;
use crate::sftp::vfs::{self, Resolved};
use crate::sftp::wire::{Attrs, NameEntry, StatusCode};

use super::handles::{parse_handle, OpenHandle};
use super::reply::Reply;
use super::Session;

impl Session {
    pub(super) fn readdir(&mut self, id: u32, handle: &[u8]) -> Reply {
        let listed = match parse_handle(handle).and_then(|h| self.handles.get_mut(&h)) {
            Some(OpenHandle::Dir { listed }) => std::mem::replace(listed, true),
            Some(OpenHandle::File(_)) => return Reply::failure(id, "Not a directory"),
            None => return Reply::invalid_handle(id),
        };
        if listed {
            return Reply::status(id, StatusCode::Eof, "End of file");
        }
        let now = OffsetDateTime::now_utc();
        let meta = self.shared.storage.stat(Name::File).ok().flatten();
        let attrs = self.file_attrs(meta.as_ref());
        let long = vfs::longname(&self.shared.name, &attrs, now);
        let mut entries = vec![NameEntry {
            name: self.shared.name.clone().into_bytes(),
            long,
            attrs,
        }];
        // An unfinished `.filepart` is listed too, so that a client can find and resume it.
        let partial = self.shared.partial;
        if let Some(m) = partial
            .then(|| self.shared.storage.stat(Name::Partial).ok().flatten())
            .flatten()
        {
            let name = format!("{}{}", self.shared.name, vfs::PARTIAL_SUFFIX);
            let attrs = self.file_attrs(Some(&m));
            let long = vfs::longname(&name, &attrs, now);
            entries.push(NameEntry {
                name: name.into_bytes(),
                long,
                attrs,
            });
        }
        Reply::Name { id, entries }
    }

    pub(super) fn realpath(&self, id: u32, path: &[u8]) -> Reply {
        match vfs::canonical(path) {
            Some(name) => {
                let long = String::from_utf8_lossy(&name).into_owned();
                Reply::Name {
                    id,
                    entries: vec![NameEntry {
                        name,
                        long,
                        attrs: Attrs::default(),
                    }],
                }
            }
            None => Reply::no_such_file(id),
        }
    }

    /// Removing is refused, except for the temporary `.filepart` a client abandons.
    pub(super) fn remove(&self, id: u32, path: &[u8]) -> Reply {
        if self.resolve(path) != Resolved::Partial {
            return Reply::denied(id);
        }
        let _lease = match self.lease_for_change(None) {
            Ok(lease) => lease,
            Err(msg) => return Reply::failure(id, msg),
        };
        match self.shared.storage.remove(Name::Partial) {
            Ok(()) => Reply::ok(id),
            Err(e) => Reply::io(id, &e),
        }
    }

    /// The one rename allowed: the finished `.filepart` onto the file, atomically.
    pub(super) fn rename(&self, id: u32, from: &[u8], to: &[u8]) -> Reply {
        let (Resolved::Partial, Resolved::File) = (self.resolve(from), self.resolve(to)) else {
            return Reply::denied(id);
        };
        let _lease = match self.lease_for_change(None) {
            Ok(lease) => lease,
            Err(msg) => return Reply::failure(id, msg),
        };
        self.queue.settle_reads();
        match self.shared.storage.rename_partial() {
            Ok(()) => Reply::ok(id),
            Err(e) => Reply::io(id, &e),
        }
    }
}
