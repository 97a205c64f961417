//! Dumps on S3-compatible object storage: each request's upload and upgraded dump are
//! objects under the bucket's prefix (`<prefix>/<id>/upload`, `<prefix>/<id>/upgraded`).
//! Uploads are multipart uploads ([`upload`]); downloads are ranged GETs with read-ahead
//! ([`reader`]). One [`Upload`] per request and object on this node, shared by its
//! sessions, so that they see one tail and one set of parts in flight.

mod plan;
mod reader;
mod spool;
mod sweep;
mod upload;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::s3::S3;
use crate::sftp::storage::{Body, FsStats, Meta, Name, OpenMode, Storage};
use crate::store::multipart::Object;
use crate::store::Store;

pub use plan::{MAX_PARTS, MIN_PART};
use reader::ObjectBody;
use spool::Spool;
use upload::Upload;

/// The default size of an upload's parts: 10,000 of them reach 156 GiB.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// Parts of one upload being sent at once.
pub const PARTS_PER_UPLOAD: usize = 2;
/// Parts being sent at once in the process, each held in memory while it is sent.
pub const PARTS_IN_FLIGHT: usize = 16;
/// Read-ahead chunks held at once in the process (4 MiB each).
pub const READ_CHUNKS: usize = 64;

/// What every upload and reader of the process shares.
pub struct Ctx {
    pub s3: S3,
    pub store: Arc<dyn Store>,
    pub rt: Handle,
    /// Where the tails of uploads are spooled.
    pub spool_root: PathBuf,
    pub part_size: u64,
    pub parts_per_upload: usize,
    pub send_permits: Arc<Semaphore>,
    pub read_chunks: Arc<Semaphore>,
}

impl Ctx {
    /// `<prefix>/<id>/upload`, `.../upgraded`, `.../upload.filepart`.
    pub fn key(&self, request: u64, object: Object) -> String {
        let name = match object {
            Object::Partial => "upload.filepart",
            o => o.as_str(),
        };
        self.s3.key(&format!("{request}/{name}"))
    }
}

/// Runs `f` on the runtime and waits for it on this (blocking) thread. It works from any
/// thread but a runtime worker: the request loop's, and the reply writer's, which is
/// itself inside a `block_on` (where the runtime's own `block_on` would panic).
pub(crate) fn wait<F>(rt: &Handle, f: F) -> io::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    futures::executor::block_on(rt.spawn(f))
        .map_err(|e| io::Error::other(format!("a storage task failed: {e}")))
}

/// An error of the bucket or the store, as a client's STATUS message reports it.
pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("object storage: {e}"))
}

/// The dumps of every request, on one bucket.
pub struct S3Dumps {
    ctx: Arc<Ctx>,
    uploads: Mutex<HashMap<(u64, Object), Weak<Upload>>>,
    /// Unrecorded multipart uploads, by id, and when the sweeper first saw each.
    unrecorded: tokio::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl S3Dumps {
    pub fn new(ctx: Ctx) -> S3Dumps {
        S3Dumps {
            ctx: Arc::new(ctx),
            uploads: Mutex::default(),
            unrecorded: tokio::sync::Mutex::default(),
        }
    }

    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// This node's one [`Upload`] of `object`.
    fn upload(&self, request: u64, object: Object) -> Arc<Upload> {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = map.get(&(request, object)).and_then(Weak::upgrade) {
            return u;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let u = Arc::new(Upload::new(self.ctx.clone(), request, object));
        map.insert((request, object), Arc::downgrade(&u));
        u
    }

    /// The size of an object, or of its upload in progress (the committed parts: the
    /// tails are on the nodes writing them).
    pub async fn size(&self, request: u64, object: Object) -> io::Result<Option<u64>> {
        if let Some(mp) = self
            .ctx
            .store
            .multipart(request, object)
            .await
            .map_err(io_err)?
        {
            return Ok(Some(mp.committed()));
        }
        let head = self.ctx.s3.head(&self.ctx.key(request, object)).await;
        Ok(head.map_err(io_err)?.map(|h| h.size))
    }

    /// The completed object's size, `None` if there is none.
    pub async fn object_size(&self, request: u64, object: Object) -> io::Result<Option<u64>> {
        let head = self.ctx.s3.head(&self.ctx.key(request, object)).await;
        Ok(head.map_err(io_err)?.map(|h| h.size))
    }

    /// The bytes of `range` of the object (all of it for `None`).
    pub async fn stream(
        &self,
        request: u64,
        object: Object,
        range: Option<std::ops::Range<u64>>,
    ) -> io::Result<ObjectStream> {
        let key = self.ctx.key(request, object);
        self.ctx.s3.get_stream(&key, range).await.map_err(io_err)
    }

    /// Aborts abandoned multipart uploads (see [`sweep`]); how many.
    pub async fn sweep(&self) -> io::Result<usize> {
        let mut seen = self.unrecorded.lock().await;
        sweep::sweep(&self.ctx, time::OffsetDateTime::now_utc(), &mut seen).await
    }

    /// Deletes a request's objects and aborts its multipart uploads.
    pub async fn purge(&self, request: u64) -> io::Result<()> {
        let uploads = self.ctx.s3.list_uploads(&format!("{request}/")).await;
        for u in uploads.map_err(io_err)? {
            self.ctx
                .s3
                .abort(&u.key, &u.upload_id)
                .await
                .map_err(io_err)?;
        }
        for object in [Object::Upload, Object::Partial, Object::Upgraded] {
            self.ctx
                .s3
                .delete(&self.ctx.key(request, object))
                .await
                .map_err(io_err)?;
            Spool::remove(
                &self
                    .ctx
                    .spool_root
                    .join(format!("{request}-{}", object.as_str())),
            );
        }
        Ok(())
    }

    /// The size an append to request `request`'s upload continues from on this node:
    /// committed parts plus this node's tail (blocking).
    pub fn upload_size(&self, request: u64) -> io::Result<u64> {
        Ok(self
            .upload(request, Object::Upload)
            .meta()?
            .map_or(0, |m| m.0))
    }

    /// A writer of `object` that starts it over (`truncate`) or appends to it, for the
    /// operator's PUT and the customer's HTTP upload; blocking, like an SFTP handle.
    pub fn writer(&self, request: u64, object: Object, truncate: bool) -> io::Result<ObjectWriter> {
        let upload = self.upload(request, object);
        upload.open_writer(truncate)?;
        Ok(ObjectWriter { upload })
    }

    /// What an SFTP session of request `request` reaches: the upload (`writable`) or the
    /// upgraded dump.
    pub fn sftp(&self, request: u64, writable: bool) -> Arc<dyn Storage> {
        let object = if writable {
            Object::Upload
        } else {
            Object::Upgraded
        };
        Arc::new(S3Files {
            ctx: self.ctx.clone(),
            upload: self.upload(request, object),
            partial: writable.then(|| self.upload(request, Object::Partial)),
            writable,
        })
    }
}

/// One session's view of its object, and of the upload's `.filepart` (another object,
/// `<id>/upload.filepart`, renamed onto the upload by a server-side copy).
#[derive(Clone)]
struct S3Files {
    ctx: Arc<Ctx>,
    upload: Arc<Upload>,
    partial: Option<Arc<Upload>>,
    writable: bool,
}

impl std::fmt::Debug for S3Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Files")
            .field("key", &self.upload.key())
            .finish()
    }
}

impl S3Files {
    fn of(&self, name: Name) -> io::Result<&Arc<Upload>> {
        match name {
            Name::File => Ok(&self.upload),
            Name::Partial => self
                .partial
                .as_ref()
                .ok_or_else(|| io::ErrorKind::PermissionDenied.into()),
        }
    }
}

fn meta(size: u64, modified: SystemTime) -> Meta {
    Meta {
        size,
        accessed: modified,
        modified,
    }
}

impl Storage for S3Files {
    fn stat(&self, name: Name) -> io::Result<Option<Meta>> {
        Ok(self.of(name)?.meta()?.map(|(size, t)| meta(size, t)))
    }

    fn open(&self, name: Name, mode: OpenMode) -> io::Result<Arc<dyn Body>> {
        let upload = self.of(name)?;
        if mode.write {
            if !self.writable {
                return Err(io::ErrorKind::PermissionDenied.into());
            }
            upload.open_writer(mode.truncate)?;
            return Ok(Arc::new(UploadBody {
                upload: upload.clone(),
            }));
        }
        let body = |size, t| -> Arc<dyn Body> {
            Arc::new(ObjectBody::new(
                self.ctx.clone(),
                upload.key().to_string(),
                size,
                t,
            ))
        };
        match upload.readable()? {
            Ok(Some((size, t))) => Ok(body(size, t)),
            // A draft nothing was uploaded to reads as an empty file.
            Ok(None) if mode.create => Ok(body(0, SystemTime::now())),
            Ok(None) => Err(io::ErrorKind::NotFound.into()),
            Err(why) => Err(io::Error::other(why)),
        }
    }

    fn remove(&self, name: Name) -> io::Result<()> {
        self.of(name)?.discard()
    }

    fn rename_partial(&self) -> io::Result<()> {
        self.upload.replace_with(self.of(Name::Partial)?)
    }

    fn set_attrs(
        &self,
        name: Name,
        size: Option<u64>,
        _times: Option<(SystemTime, SystemTime)>,
    ) -> io::Result<()> {
        // Times are accepted and not kept: an object's time is when it was written.
        match size {
            Some(size) => self.of(name)?.set_size(size),
            None => Ok(()),
        }
    }

    /// A bucket has no size: plenty of room, as S3 clients assume.
    fn statvfs(&self) -> io::Result<FsStats> {
        let blocks = 1 << 40;
        Ok(FsStats {
            bsize: 1 << 20,
            frsize: 1 << 20,
            blocks,
            bfree: blocks,
            bavail: blocks,
            files: 1 << 20,
            ffree: 1 << 20,
            favail: 1 << 20,
            fsid: 0,
            namemax: 255,
        })
    }
}

/// A stream of an object's bytes.
pub type ObjectStream = futures::stream::BoxStream<'static, Result<Bytes, crate::s3::S3Error>>;

/// The operator's or an HTTP client's writer of an object (see [`S3Dumps::writer`]).
pub struct ObjectWriter {
    upload: Arc<Upload>,
}

impl ObjectWriter {
    /// Appends `data` at the end.
    pub fn write(&self, data: Bytes) -> io::Result<()> {
        self.upload.write(None, &[data])
    }

    /// Where the next write goes.
    pub fn end(&self) -> io::Result<u64> {
        Ok(self.upload.meta()?.map_or(0, |m| m.0))
    }

    /// Completes the object: it replaces the old one, whole. Returns its size.
    pub fn finish(self) -> io::Result<u64> {
        self.upload.finish()
    }

    /// Gives up: the object stays as it was and the upload is aborted.
    pub fn abandon(self) {
        self.upload.abandon();
    }
}

/// A write handle of an upload.
struct UploadBody {
    upload: Arc<Upload>,
}

impl Body for UploadBody {
    fn meta(&self) -> io::Result<Meta> {
        Ok(self
            .upload
            .meta()?
            .map_or_else(|| meta(0, SystemTime::now()), |(s, t)| meta(s, t)))
    }

    fn read_into(&self, _: &mut BytesMut, _: u64, _: usize) -> io::Result<()> {
        Err(io::Error::other(
            "an upload cannot be read on object storage while it is written",
        ))
    }

    fn write(&self, offset: Option<u64>, data: &[Bytes]) -> io::Result<()> {
        self.upload.write(offset, data)
    }

    fn set_attrs(&self, size: Option<u64>, _: Option<(SystemTime, SystemTime)>) -> io::Result<()> {
        match size {
            Some(size) => self.upload.set_size(size),
            None => Ok(()),
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.upload.sync()
    }

    fn finish(&self) -> io::Result<u64> {
        self.upload.finish()
    }
}
