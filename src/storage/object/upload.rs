//! One upload on object storage, as this node writes it: an S3 multipart upload with
//! parts of a fixed size, the parts recorded in the request store as they commit, and the
//! tail that does not fill a part yet in the node's [`Spool`].
//!
//! What it guarantees, and how:
//! - The object, and every committed part, is an exact prefix of what the client sent:
//!   writes are taken only at the end (a write elsewhere is refused), parts are cut from
//!   the spool in order, and a part counts only once the store has recorded it, in order.
//! - STAT reports the committed parts plus this node's tail. A node that dies loses only
//!   its tail; through another node STAT reports what was committed, and `put -a` resends
//!   from there.
//! - When the last write handle closes, the tail is sent as the last part and the upload
//!   is completed: the object exists. A later resume starts a new multipart upload whose
//!   first parts are server-side copies of the object (or, below S3's 5 MiB part minimum,
//!   its bytes rewritten through the spool).
//! - Nothing about S3 is on the per-packet path: a WRITE is a `pwritev` into the spool;
//!   full parts are sent by background tasks, at most [`Ctx::parts_per_upload`] per upload
//!   and [`Ctx::send_permits`] in the process, each holding one part in memory.
//!
//! Longer than the others (about 650 lines) because the state machine's transitions share
//! one lock and one `Inner`; splitting the send tasks and the resume/rename starts into
//! files of their own is issue 18's.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use super::plan::{copy_ranges, largest_upload, MAX_COPY};
use super::spool::Spool;
use super::{io_err, wait, Ctx};
use crate::store::multipart::{Multipart, Object, Part};

/// How often a part is sent before its upload is given up on (the client's CLOSE then
/// fails, and a resume starts from what was committed).
const SEND_ATTEMPTS: u32 = 3;

pub struct Upload {
    ctx: Arc<Ctx>,
    request: u64,
    object: Object,
    key: String,
    spool_dir: PathBuf,
    inner: Mutex<Inner>,
    /// Wakes writers waiting for a part to commit, and closes waiting for all of them.
    moved: Condvar,
}

#[derive(Default)]
struct Inner {
    /// `mp`, `spool` and `object` were read since this node last let go of the upload.
    loaded: bool,
    /// The multipart upload in progress, with the parts the store has recorded.
    mp: Option<Multipart>,
    spool: Option<Spool>,
    /// Where the next part starts: the committed parts and those being sent end here.
    cut: u64,
    /// The end of what was written.
    end: u64,
    /// Parts sealed and being sent, oldest first.
    sending: VecDeque<Range<u64>>,
    /// The newest send task: each one records its part only after its predecessor.
    last_send: Option<JoinHandle<Result<(), String>>>,
    /// Why a part could not be committed: writes and the close are refused, and the next
    /// open starts again from what the store recorded.
    broken: Option<String>,
    /// Write handles open on this node.
    writers: usize,
    /// The completed object, if any: its size and when it was written.
    object: Option<(u64, SystemTime)>,
}

impl Inner {
    fn idle(&self) -> bool {
        self.writers == 0 && self.sending.is_empty()
    }
}

impl Upload {
    pub fn new(ctx: Arc<Ctx>, request: u64, object: Object) -> Upload {
        let key = ctx.key(request, object);
        let spool_dir = ctx
            .spool_root
            .join(format!("{request}-{}", object.as_str()));
        Upload {
            ctx,
            request,
            object,
            key,
            spool_dir,
            inner: Mutex::default(),
            moved: Condvar::new(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the upload's state from the store and the bucket, unless this node is writing
    /// it (then nobody else is: the lease), in which case what it knows is current.
    fn refresh(&self, g: &mut Inner) -> io::Result<()> {
        if g.loaded && !g.idle() {
            return Ok(());
        }
        let (store, request, object) = (self.ctx.store.clone(), self.request, self.object);
        let mp = wait(&self.ctx.rt, async move {
            store.multipart(request, object).await
        })?
        .map_err(io_err)?;
        let (s3, key) = (self.ctx.s3.clone(), self.key.clone());
        let head = wait(&self.ctx.rt, async move { s3.head(&key).await })?.map_err(io_err)?;
        g.object = head.map(|h| (h.size, SystemTime::from(h.modified)));
        g.spool = None;
        g.broken = None;
        match &mp {
            Some(mp) => {
                let committed = mp.committed();
                let (spool, end) = Spool::open(&self.spool_dir, &mp.upload_id, committed)?;
                (g.cut, g.end, g.spool) = (committed, end, Some(spool));
            }
            None => {
                Spool::remove(&self.spool_dir);
                (g.cut, g.end) = (0, 0);
            }
        }
        g.mp = mp;
        g.loaded = true;
        Ok(())
    }

    /// The file's size and times as a STAT reports them; `None` if there is neither an
    /// upload in progress nor an object.
    pub fn meta(&self) -> io::Result<Option<(u64, SystemTime)>> {
        let mut g = self.lock();
        self.refresh(&mut g)?;
        Ok(match &g.mp {
            Some(_) => Some((g.end, SystemTime::now())),
            None => g.object,
        })
    }

    /// Whether the completed object may be read now (no upload of it is in progress),
    /// and its size and time.
    pub fn readable(&self) -> io::Result<Result<Option<(u64, SystemTime)>, &'static str>> {
        let mut g = self.lock();
        self.refresh(&mut g)?;
        Ok(match g.mp {
            Some(_) => Err("the upload is in progress on object storage: it can be read once its last write handle is closed"),
            None => Ok(g.object),
        })
    }

    /// A write handle opens: `truncate` starts the upload over at once (a STAT must then
    /// report an empty file), otherwise it resumes lazily, at the first write.
    pub fn open_writer(self: &Arc<Self>, truncate: bool) -> io::Result<()> {
        let mut g = self.lock();
        self.refresh(&mut g)?;
        if truncate {
            self.start(&mut g, None)?;
        }
        g.writers += 1;
        Ok(())
    }

    /// Starts a new multipart upload, replacing any in progress; its first parts are the
    /// bytes of `source` (an object's key and size) if given: this object's own for a
    /// resume, the `.filepart`'s for its rename.
    fn start(&self, g: &mut Inner, source: Option<(String, u64)>) -> io::Result<()> {
        if !g.sending.is_empty() {
            return Err(io::Error::other(
                "parts of the upload are still being sent; try again",
            ));
        }
        let (s3, key) = (self.ctx.s3.clone(), self.key.clone());
        let upload_id =
            wait(&self.ctx.rt, async move { s3.create_multipart(&key).await })?.map_err(io_err)?;
        let (store, request, object) = (self.ctx.store.clone(), self.request, self.object);
        let (k, id) = (self.key.clone(), upload_id.clone());
        let replaced = wait(&self.ctx.rt, async move {
            store.begin_multipart(request, object, &k, &id).await
        })?
        .map_err(io_err)?;
        if let Some(old) = replaced {
            // Best effort: the sweeper aborts what this misses.
            let s3 = self.ctx.s3.clone();
            self.ctx.rt.spawn(async move {
                if let Err(e) = s3.abort(&old.key, &old.upload_id).await {
                    tracing::warn!(error = %e, "cannot abort a replaced multipart upload");
                }
            });
        }
        let mut mp = Multipart {
            upload_id: upload_id.clone(),
            key: self.key.clone(),
            started: OffsetDateTime::now_utc(),
            parts: Vec::new(),
        };
        let (from, size) = source.unwrap_or_else(|| (self.key.clone(), 0));
        let ranges = copy_ranges(size, MAX_COPY);
        for (i, range) in ranges.iter().enumerate() {
            let number = i as u32 + 1;
            let (s3, key, id, r, from) = (
                self.ctx.s3.clone(),
                self.key.clone(),
                upload_id.clone(),
                range.clone(),
                from.clone(),
            );
            let etag = wait(&self.ctx.rt, async move {
                s3.copy_part(&key, &id, number, &from, r).await
            })?
            .map_err(io_err)?;
            let part = Part {
                number,
                etag,
                size: range.end - range.start,
            };
            self.record(&upload_id, &part)?;
            mp.parts.push(part);
        }
        let committed = mp.committed();
        let (spool, _) = Spool::open(&self.spool_dir, &upload_id, committed)?;
        let mut end = committed;
        if ranges.is_empty() && size > 0 {
            // Too small to copy as a part: its bytes become the start of the tail.
            let (s3, key) = (self.ctx.s3.clone(), from.clone());
            let data = wait(
                &self.ctx.rt,
                async move { s3.get_range(&key, 0..size).await },
            )?
            .map_err(io_err)?;
            if data.len() as u64 != size {
                return Err(io::Error::other("the object changed while it was read"));
            }
            spool.write(0, &[data])?;
            end = size;
        }
        tracing::info!(
            request = self.request,
            object = self.object.as_str(),
            copied = committed,
            rewritten = end - committed,
            "multipart upload started"
        );
        (g.cut, g.end, g.spool, g.mp) = (committed, end, Some(spool), Some(mp));
        g.broken = None;
        g.last_send = None;
        Ok(())
    }

    /// Records a committed part in the store.
    fn record(&self, upload_id: &str, part: &Part) -> io::Result<()> {
        let (store, request, object) = (self.ctx.store.clone(), self.request, self.object);
        let (id, p) = (upload_id.to_owned(), part.clone());
        let recorded = wait(&self.ctx.rt, async move {
            store.add_part(request, object, &id, &p).await
        })?
        .map_err(io_err)?;
        if recorded {
            Ok(())
        } else {
            Err(io::Error::other(
                "the upload was replaced meanwhile (another writer started it over)",
            ))
        }
    }

    pub fn write(self: &Arc<Self>, offset: Option<u64>, data: &[Bytes]) -> io::Result<()> {
        let mut g = self.lock();
        if let Some(why) = &g.broken {
            return Err(io::Error::other(why.clone()));
        }
        let len: u64 = data.iter().map(|d| d.len() as u64).sum();
        // Where the upload ends, and the lowest offset still in this node's tail: checked
        // before a resume starts a new multipart upload, so that a refused write costs
        // nothing.
        let (end, lowest) = match &g.mp {
            Some(_) => (g.end, g.cut),
            None => {
                let size = g.object.map_or(0, |o| o.0);
                (size, size)
            }
        };
        let at = offset.unwrap_or(end);
        if at > end || at < lowest {
            return Err(io::Error::other(format!(
                "write at offset {at} refused: on object storage an upload grows only at its \
                 end ({end}), where a resume (put -a) continues"
            )));
        }
        if g.mp.is_none() {
            let source = g.object.map(|o| (self.key.clone(), o.0));
            self.start(&mut g, source)?;
        }
        let parts = g.mp.as_ref().map_or(0, |m| m.parts.len()) + g.sending.len();
        let largest = largest_upload(g.cut, parts as u32, self.ctx.part_size);
        if at + len > largest {
            return Err(io::Error::other(format!(
                "upload size limit of {largest} bytes reached: S3 allows 10,000 parts of the \
                 configured {} bytes",
                self.ctx.part_size
            )));
        }
        let spool = g
            .spool
            .as_ref()
            .ok_or_else(|| io::Error::other("no spool"))?;
        spool.write(at, data)?;
        g.end = g.end.max(at + len);
        while g.end - g.cut >= self.ctx.part_size {
            g = self.seal(g)?;
        }
        Ok(())
    }

    /// Hands the next full part to a background task; waits while too many are in flight.
    fn seal<'a>(
        self: &'a Arc<Self>,
        mut g: MutexGuard<'a, Inner>,
    ) -> io::Result<MutexGuard<'a, Inner>> {
        let permit = loop {
            while g.sending.len() >= self.ctx.parts_per_upload && g.broken.is_none() {
                g = self.moved.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            if let Some(why) = &g.broken {
                return Err(io::Error::other(why.clone()));
            }
            // A process-wide permit, held while the part is in memory. Waited for without
            // the lock: send tasks take it, on the runtime's workers, to commit their part.
            match self.ctx.send_permits.clone().try_acquire_owned() {
                Ok(p) => break p,
                Err(_) => {
                    drop(g);
                    let sem = self.ctx.send_permits.clone();
                    let permit = wait(&self.ctx.rt, async move { sem.acquire_owned().await })?
                        .map_err(|_| io::Error::other("the gateway is shutting down"))?;
                    g = self.lock();
                    // Another writer of the upload may have sealed meanwhile.
                    if g.end - g.cut < self.ctx.part_size {
                        return Ok(g);
                    }
                    if g.sending.len() < self.ctx.parts_per_upload {
                        break permit;
                    }
                }
            }
        };
        let (Some(mp), Some(spool)) = (&g.mp, &g.spool) else {
            return Err(io::Error::other("no upload in progress"));
        };
        let number = (mp.parts.len() + g.sending.len() + 1) as u32;
        let upload_id = mp.upload_id.clone();
        let range = g.cut..g.cut + self.ctx.part_size;
        let data = spool.read(range.clone())?;
        let prev = g.last_send.take();
        let me = self.clone();
        let r = range.clone();
        let task = self.ctx.rt.spawn(async move {
            let sent = me.send_part(&upload_id, number, data).await;
            drop(permit);
            let recorded = async {
                if let Some(prev) = prev {
                    prev.await.map_err(|e| e.to_string())??;
                }
                let part = Part {
                    number,
                    etag: sent?,
                    size: r.end - r.start,
                };
                let store = me.ctx.store.clone();
                match store
                    .add_part(me.request, me.object, &upload_id, &part)
                    .await
                {
                    Ok(true) => Ok(part),
                    Ok(false) => Err("the upload was replaced meanwhile".to_owned()),
                    Err(e) => Err(format!("cannot record a part of the upload: {e}")),
                }
            }
            .await;
            me.committed(&upload_id, r, recorded)
        });
        g.last_send = Some(task);
        g.sending.push_back(range.clone());
        g.cut = range.end;
        Ok(g)
    }

    async fn send_part(&self, upload_id: &str, number: u32, data: Bytes) -> Result<String, String> {
        let mut attempt = 1;
        loop {
            match self
                .ctx
                .s3
                .put_part(&self.key, upload_id, number, data.clone())
                .await
            {
                Ok(etag) => return Ok(etag),
                Err(e) if attempt >= SEND_ATTEMPTS => {
                    return Err(format!("cannot send part {number} of the upload: {e}"))
                }
                Err(e) => {
                    tracing::warn!(request = self.request, part = number, attempt, error = %e, "sending a part failed; retrying");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    attempt += 1;
                }
            }
        }
    }

    /// A send task's end: the part counts, its spool bytes are freed, waiters are woken.
    fn committed(
        &self,
        upload_id: &str,
        range: Range<u64>,
        part: Result<Part, String>,
    ) -> Result<(), String> {
        let mut g = self.lock();
        let current = g.mp.as_ref().is_some_and(|m| m.upload_id == upload_id);
        let result = match part {
            Ok(part) if current => {
                // Only the next part: after a reload the store's parts are already here.
                if let Some(mp) =
                    g.mp.as_mut()
                        .filter(|m| m.parts.len() as u32 + 1 == part.number)
                {
                    mp.parts.push(part);
                }
                if let Some(spool) = &g.spool {
                    spool.release(range);
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(why) => {
                tracing::warn!(request = self.request, reason = %why, "an upload part was not committed");
                if current {
                    g.broken = Some(why.clone());
                }
                Err(why)
            }
        };
        g.sending.pop_front();
        self.moved.notify_all();
        result
    }

    /// `fsync@openssh.com`: the tail is durable on this node.
    pub fn sync(&self) -> io::Result<()> {
        match &self.lock().spool {
            Some(s) => s.sync(),
            None => Ok(()),
        }
    }

    /// A write handle closes. The last one on this node completes the upload.
    pub fn finish(&self) -> io::Result<u64> {
        let mut g = self.lock();
        g.writers = g.writers.saturating_sub(1);
        if let Some(spool) = &g.spool {
            spool.sync()?;
        }
        if g.writers > 0 {
            return Ok(g.end);
        }
        while !g.sending.is_empty() && g.broken.is_none() {
            g = self.moved.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        let result = self.complete(&mut g);
        // The next open reads the upload afresh, from the store.
        g.loaded = false;
        result
    }

    fn complete(&self, g: &mut Inner) -> io::Result<u64> {
        if let Some(why) = g.broken.take() {
            return Err(io::Error::other(why));
        }
        let Some(mp) = g.mp.clone() else {
            // Nothing was written through the handle.
            return Ok(g.object.map_or(0, |o| o.0));
        };
        let mut parts: Vec<(u32, String)> = mp
            .parts
            .iter()
            .map(|p| (p.number, p.etag.clone()))
            .collect();
        if g.end > g.cut {
            // The tail is the last part: any size. It is not recorded as a part, since a
            // resume after a failed completion must be able to write past it.
            let spool = g
                .spool
                .as_ref()
                .ok_or_else(|| io::Error::other("no spool"))?;
            let data = spool.read(g.cut..g.end)?;
            let number = parts.len() as u32 + 1;
            let etag = {
                let (s3, key, id) = (self.ctx.s3.clone(), self.key.clone(), mp.upload_id.clone());
                wait(&self.ctx.rt, async move {
                    s3.put_part(&key, &id, number, data).await
                })?
                .map_err(io_err)?
            };
            parts.push((number, etag));
        }
        let (s3, key, id) = (self.ctx.s3.clone(), self.key.clone(), mp.upload_id.clone());
        if parts.is_empty() {
            // An empty file: S3 completes no upload without a part.
            wait(&self.ctx.rt, async move {
                s3.put(&key, Bytes::new()).await?;
                s3.abort(&key, &id).await
            })?
            .map_err(io_err)?;
        } else {
            wait(
                &self.ctx.rt,
                async move { s3.complete(&key, &id, &parts).await },
            )?
            .map_err(io_err)?;
        }
        let (store, request, object, id) = (
            self.ctx.store.clone(),
            self.request,
            self.object,
            mp.upload_id.clone(),
        );
        wait(&self.ctx.rt, async move {
            store.end_multipart(request, object, &id).await
        })?
        .map_err(io_err)?;
        Spool::remove(&self.spool_dir);
        let size = g.end;
        tracing::info!(
            request = self.request,
            object = self.object.as_str(),
            size,
            parts = mp.parts.len() + 1,
            "multipart upload completed"
        );
        (g.mp, g.spool, g.object) = (None, None, Some((size, SystemTime::now())));
        Ok(size)
    }

    /// A SETSTAT of the size: the upload's own size changes nothing, 0 starts it over;
    /// anything else cannot be done on object storage.
    pub fn set_size(&self, size: u64) -> io::Result<()> {
        let mut g = self.lock();
        self.refresh(&mut g)?;
        let now = match &g.mp {
            Some(_) => g.end,
            None => g.object.map_or(0, |o| o.0),
        };
        if size == now {
            return Ok(());
        }
        if size == 0 {
            return self.start(&mut g, None);
        }
        Err(io::Error::other(format!(
            "cannot change the size from {now} to {size} on object storage (only to 0, which starts over)"
        )))
    }

    /// A writer gives up (the operator's PUT whose body broke off): the upload in
    /// progress is aborted, and the object stays as it was.
    pub fn abandon(&self) {
        let mut g = self.lock();
        g.writers = g.writers.saturating_sub(1);
        while !g.sending.is_empty() {
            g = self.moved.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(mp) = g.mp.take() {
            if let Err(e) = self.drop_upload(mp) {
                // The sweeper aborts what is left (an upgraded dump's upload after a day).
                tracing::warn!(error = %e, "cannot abort an abandoned multipart upload");
            }
        }
        Spool::remove(&self.spool_dir);
        (g.spool, g.loaded, g.broken) = (None, false, None);
    }

    /// The rename of a completed `.filepart` (`source`) onto this object: a new upload of
    /// its bytes (server-side copies, or rewritten below 5 MiB), completed at once, then
    /// the `.filepart` is removed. The object is replaced whole, or not at all.
    pub fn replace_with(&self, source: &Upload) -> io::Result<()> {
        let size = match source.readable()? {
            Ok(Some((size, _))) => size,
            Ok(None) => return Err(io::ErrorKind::NotFound.into()),
            Err(why) => return Err(io::Error::other(why)),
        };
        {
            let mut g = self.lock();
            self.refresh(&mut g)?;
            if g.writers > 0 {
                return Err(io::Error::other("the file is open for writing"));
            }
            self.start(&mut g, Some((source.key.clone(), size)))?;
            let done = self.complete(&mut g);
            g.loaded = false;
            done?;
        }
        source.discard()
    }

    /// Forgets `mp` in the store, then aborts it on S3 (in that order: the store never
    /// names an upload that S3 no longer has).
    fn drop_upload(&self, mp: Multipart) -> io::Result<()> {
        let (s3, store, request, object) = (
            self.ctx.s3.clone(),
            self.ctx.store.clone(),
            self.request,
            self.object,
        );
        wait(&self.ctx.rt, async move {
            store
                .end_multipart(request, object, &mp.upload_id)
                .await
                .map_err(io_err)?;
            s3.abort(&mp.key, &mp.upload_id).await.map_err(io_err)
        })?
    }

    /// Removes the object and any upload of it in progress (an abandoned `.filepart`).
    pub fn discard(&self) -> io::Result<()> {
        let mut g = self.lock();
        self.refresh(&mut g)?;
        if g.writers > 0 || !g.sending.is_empty() {
            return Err(io::Error::other("the file is open for writing"));
        }
        if let Some(mp) = g.mp.take() {
            self.drop_upload(mp)?;
        }
        let (s3, key) = (self.ctx.s3.clone(), self.key.clone());
        wait(&self.ctx.rt, async move { s3.delete(&key).await })?.map_err(io_err)?;
        Spool::remove(&self.spool_dir);
        (g.spool, g.object, g.loaded) = (None, None, false);
        Ok(())
    }
}
