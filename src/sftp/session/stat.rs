//! Attributes: STAT, LSTAT and FSTAT report the file as the virtual filesystem shows it;
//! SETSTAT, FSETSTAT (and `lsetstat@openssh.com`) apply times, and a size in draft, and
//! accept the rest without applying it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::sftp::storage::{Body, Meta, Name};
use crate::sftp::vfs::{self, Resolved};
use crate::sftp::wire::Attrs;
use crate::sftp::{LeaseHold, MAX_WRITE_GAP};

use super::handles::OpenHandle;
use super::reply::Reply;
use super::Session;

impl Session {
    pub(super) fn file_attrs(&self, meta: Option<&Meta>) -> Attrs {
        vfs::file_attrs(meta, self.shared.writable)
    }

    pub(super) fn stat(&self, id: u32, path: &[u8]) -> Reply {
        let attrs = match self.resolve(path) {
            Resolved::Root => vfs::root_attrs(),
            Resolved::Other => return Reply::no_such_file(id),
            Resolved::Partial => match self.shared.storage.stat(Name::Partial) {
                Ok(Some(m)) => self.file_attrs(Some(&m)),
                Ok(None) => return Reply::no_such_file(id),
                Err(e) => return Reply::io(id, &e),
            },
            Resolved::File => match self.shared.storage.stat(Name::File) {
                Ok(Some(m)) => self.file_attrs(Some(&m)),
                Ok(None) if self.shared.writable => self.file_attrs(None),
                Ok(None) => return Reply::no_such_file(id),
                Err(e) => return Reply::io(id, &e),
            },
        };
        Reply::Attrs { id, attrs }
    }

    pub(super) fn fstat(&self, id: u32, handle: &[u8]) -> Reply {
        let attrs = match self.handle_of(handle) {
            Some(OpenHandle::File(f)) => match f.body.meta() {
                Ok(m) => self.file_attrs(Some(&m)),
                Err(e) => return Reply::io(id, &e),
            },
            Some(OpenHandle::Dir { .. }) => vfs::root_attrs(),
            None => return Reply::invalid_handle(id),
        };
        Reply::Attrs { id, attrs }
    }

    pub(super) fn setstat_path(&self, id: u32, path: &[u8], attrs: &Attrs) -> Reply {
        match self.resolve(path) {
            Resolved::File => self.setstat(id, None, None, Name::File, attrs),
            Resolved::Partial => match self.shared.storage.stat(Name::Partial) {
                Ok(Some(_)) => self.setstat(id, None, None, Name::Partial, attrs),
                Ok(None) => Reply::no_such_file(id),
                Err(e) => Reply::io(id, &e),
            },
            Resolved::Root => Reply::denied(id),
            Resolved::Other => Reply::no_such_file(id),
        }
    }

    pub(super) fn fsetstat(&self, id: u32, handle: &[u8], attrs: &Attrs) -> Reply {
        match self.handle_of(handle) {
            Some(OpenHandle::File(f)) => {
                let (body, lease) = (f.body.clone(), f.lease.clone());
                self.setstat(id, Some(&body), lease, Name::File, attrs)
            }
            Some(OpenHandle::Dir { .. }) => Reply::denied(id),
            None => Reply::invalid_handle(id),
        }
    }

    /// Size (draft only) and times are applied; owner and permissions are accepted and
    /// ignored, so clients that set them after an upload do not fail. A read-only file is
    /// never changed.
    fn setstat(
        &self,
        id: u32,
        handle: Option<&Arc<dyn Body>>,
        lease: Option<Arc<dyn LeaseHold>>,
        name: Name,
        attrs: &Attrs,
    ) -> Reply {
        if !self.shared.writable || (attrs.size.is_none() && attrs.times.is_none()) {
            return Reply::ok(id);
        }
        // A size is a write; times are not worth a lease.
        let _lease = match attrs.size.map(|_| self.lease_for_change(lease)) {
            Some(Err(msg)) => return Reply::failure(id, msg),
            Some(Ok(lease)) => lease,
            None => None,
        };
        self.queue.settle_reads();
        let result = (|| {
            if let Some(size) = attrs.size {
                if self.shared.max_size.is_some_and(|max| size > max) {
                    return Err(std::io::Error::other("upload size limit exceeded"));
                }
                let now = match handle {
                    Some(b) => b.meta()?.size,
                    None => self.shared.storage.stat(name)?.map_or(0, |m| m.size),
                };
                // As for writes: the file stays a prefix of the upload, not a sparse giant.
                if size > now.saturating_add(MAX_WRITE_GAP) {
                    return Err(std::io::Error::other(format!(
                        "size {size} would leave a hole of more than {MAX_WRITE_GAP} bytes"
                    )));
                }
            }
            let at = |s: u32| SystemTime::UNIX_EPOCH + Duration::from_secs(s.into());
            let times = attrs.times.map(|(a, m)| (at(a), at(m)));
            match handle {
                Some(b) => b.set_attrs(attrs.size, times),
                None => self.shared.storage.set_attrs(name, attrs.size, times),
            }
        })();
        match result {
            Ok(()) => Reply::ok(id),
            Err(e) => Reply::io(id, &e),
        }
    }
}
