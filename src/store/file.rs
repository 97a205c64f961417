//! The embedded store: one directory per request under `DATA_DIR/requests/<id>/` holding
//! `request.json`, `upload` and `upgraded`. Records are replaced atomically (temp file,
//! fsync, rename, fsync of the directory) and cached in memory.
//!
//! Reads are answered from the cache, whose lock is only ever held to copy a record in or
//! out: never across a disk write, so logins and the sweeper keep going while a slow disk
//! syncs. Writers of one id take turns on an async lock of that id (kept only while some
//! writer holds or waits for it, so the map stays as small as the writes in flight), read
//! the record from the cache, decide, write it on a blocking thread and only then update
//! the cache. The cache also indexes records by expiry, so that the once-a-second look
//! for expired requests reads only those due, not every record.
//!
//! The S3 multipart uploads of a request's files (`file/multipart.rs`) are files of the
//! same directory, written the same way, under the same per-id turns.
//!
//! Beside this file in `file/`: `cache.rs`, the records in memory and their expiry index;
//! `tests.rs`, the unit tests.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::OwnedMutexGuard;

use super::multipart::{Multipart, Object};
use super::{private, Change, Decision, PageQuery, Record, State, Store, StoreError, Updated};

mod cache;
mod multipart;
#[cfg(test)]
mod tests;

use cache::Cache;

const RECORD: &str = "request.json";

pub struct FileStore {
    inner: Arc<Inner>,
}

/// What the blocking writes share with the store (they outlive a caller that gave up).
struct Inner {
    root: PathBuf,
    cache: RwLock<Cache>,
    /// The current multipart uploads, as on disk; changed, as `cache`, only by the writer
    /// whose turn it is, after its write is durable.
    multiparts: RwLock<BTreeMap<(u64, Object), Multipart>>,
    /// The writers' lock of each id that a writer holds or waits for.
    turns: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Test hook: runs in each write before its first fsync, e.g. to stand for a slow disk.
    #[cfg(test)]
    before_sync: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

/// One writer's turn at an id: held from before the writer waits until its write is
/// durable and cached. Dropping it lets the next writer of the id go, and removes the id's
/// lock from the map when nobody else holds or waits for it.
struct Turn {
    inner: Arc<Inner>,
    id: u64,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.guard.take();
        let mut turns = self.inner.lock_turns();
        // The map's own reference is the last one: no writer holds or waits for the lock
        // (one that starts waiting takes its reference under this same map lock).
        if turns
            .get(&self.id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            turns.remove(&self.id);
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileStore {
    /// Opens (creating if needed) the store under `data_dir` and loads every record.
    /// A record that cannot be read is an error: starting without it would silently revoke
    /// a customer's access.
    pub fn open(data_dir: &Path) -> Result<FileStore, StoreError> {
        let root = data_dir.join("requests");
        private::create_dir(&root).map_err(io_err(&root))?;
        private::tighten(data_dir);
        private::tighten(&root);
        let mut cache = Cache::default();
        let mut multiparts = BTreeMap::new();
        for entry in fs::read_dir(&root).map_err(io_err(&root))? {
            let entry = entry.map_err(io_err(&root))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            private::tighten_dir(&entry.path());
            let path = entry.path().join(RECORD);
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                // A directory whose record was deleted but whose files were kept.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let record: Record =
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                    path: path.clone(),
                    source,
                })?;
            if record.id == id {
                // Only a record's: those in a directory whose record was deleted are not
                // current (a crash between the two unlinks of a delete may leave them).
                for (object, upload) in multipart::load(&entry.path())? {
                    multiparts.insert((id, object), upload);
                }
                cache.insert(record);
            }
        }
        Ok(FileStore {
            inner: Arc::new(Inner {
                root,
                cache: RwLock::new(cache),
                multiparts: RwLock::new(multiparts),
                turns: Mutex::default(),
                #[cfg(test)]
                before_sync: None,
            }),
        })
    }

    /// Waits for the turn of `id` among its writers.
    async fn turn(&self, id: u64) -> Turn {
        let mut turn = Turn {
            inner: self.inner.clone(),
            id,
            guard: None,
        };
        let lock = turn.inner.lock_turns().entry(id).or_default().clone();
        // A named local, so that a caller giving up while it waits drops it (and its
        // reference to the lock) before `turn`, whose drop then sees the lock unused.
        let acquire = lock.lock_owned();
        turn.guard = Some(acquire.await);
        turn
    }
}

impl Inner {
    fn lock_turns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<tokio::sync::Mutex<()>>>> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, id: u64) -> Option<Record> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .records
            .get(&id)
            .cloned()
    }

    /// Takes the cache's write lock only to change an entry, never across a disk write.
    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    fn before_sync(&self, _id: u64) {
        #[cfg(test)]
        if let Some(hook) = &self.before_sync {
            hook(_id);
        }
    }

    /// Writes `record`; `fresh` when no record of its id exists, in which case files an
    /// earlier record of that id left behind are removed first.
    fn write_record(&self, record: &Record, fresh: bool) -> Result<(), StoreError> {
        let dir = self.dir(record.id);
        if fresh && dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            tracing::info!(target: "audit", event = "leftovers-removed", request = record.id,
                "files left by a deleted request with this id were removed");
        }
        self.before_sync(record.id);
        if !dir.exists() {
            private::create_dir(&dir).map_err(io_err(&dir))?;
            sync_dir(&self.root)?;
        }
        let json = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Corrupt {
            path: dir.join(RECORD),
            source,
        })?;
        replace_file(&dir, RECORD, &json, "record-before-rename")
    }

    /// Removes the record of `id` (`had`: the cache holds one) and, with `purge`, its
    /// directory; `true` if the purge found a directory to remove.
    fn delete_record(&self, id: u64, had: bool, purge: bool) -> Result<bool, StoreError> {
        let dir = self.dir(id);
        self.before_sync(id);
        if purge {
            // Also after a delete without purge: the files are still there to remove.
            return match fs::remove_dir_all(&dir) {
                Ok(()) => sync_dir(&self.root).map(|()| true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io_err(&dir)(e)),
            };
        }
        if !had {
            return Ok(false);
        }
        remove_file(&dir.join(RECORD))?;
        // Its multipart uploads go with it (the sweeper aborts them on S3), in the same
        // directory sync; one left by a crash before it is ignored without the record.
        multipart::remove_all(&dir)?;
        sync_dir(&dir)?;
        Ok(false)
    }

    /// Applies a decision durably, then to the cache: a reader sees the new record only
    /// once it would survive a crash.
    fn apply(&self, id: u64, had: bool, decision: Decision) -> Result<bool, StoreError> {
        match decision {
            Decision::Keep => Ok(false),
            Decision::Put(record) => {
                self.write_record(&record, !had)?;
                self.cache_mut().insert(record);
                Ok(false)
            }
            Decision::Delete { purge } => {
                let removed = self.delete_record(id, had, purge)?;
                self.cache_mut().remove(id);
                self.forget_multiparts(id);
                Ok(removed)
            }
        }
    }
}

/// Replaces `dir/name` by `bytes`, atomically and durably: a temp file `.<name>.*.tmp`
/// beside it, written and fsynced, renamed over it, then `dir` fsynced. A crash leaves the
/// old file or the new one, never a torn one (and maybe a temp file, which nothing reads).
/// `crash` names the crash point between the fsync and the rename.
fn replace_file(dir: &Path, name: &str, bytes: &[u8], crash: &str) -> Result<(), StoreError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(private::file_permissions())
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    crash_point(crash);
    let path = dir.join(name);
    tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
    sync_dir(dir)
}

/// Unlinks `path` if it is there (the directory is not synced).
fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Test hook: with `SFTPGATE_CRASH_AT=<point>` in the environment the process aborts at
/// that point, so tests can show a crash there leaves the old or the new record, never a
/// torn one.
fn crash_point(point: &str) {
    if std::env::var_os("SFTPGATE_CRASH_AT").is_some_and(|p| p == point) {
        std::process::abort();
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    sync_dir_io(dir).map_err(io_err(dir))
}

/// Makes a rename or a new entry in `dir` durable.
pub fn sync_dir_io(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait::async_trait]
impl Store for FileStore {
    async fn get(&self, id: u64) -> Result<Option<Record>, StoreError> {
        Ok(self.inner.cached(id))
    }

    async fn list(&self) -> Result<Vec<Record>, StoreError> {
        let cache = self.inner.cache.read().unwrap_or_else(|p| p.into_inner());
        Ok(cache.records.values().cloned().collect())
    }

    async fn page(&self, query: &PageQuery) -> Result<Vec<Record>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        // The cache is ordered by id: the page starts where `after` ends, and only the
        // records on it are copied (filtered ones are skipped in place, under the read lock).
        let cache = self.inner.cache.read().unwrap_or_else(|p| p.into_inner());
        Ok(cache
            .records
            .range((Excluded(query.after), Unbounded))
            .map(|(_, r)| r)
            .filter(|r| query.matches(r))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn count_by_state(&self) -> Result<[(State, u64); 6], StoreError> {
        let cache = self.inner.cache.read().unwrap_or_else(|p| p.into_inner());
        let mut counts = State::ALL.map(|s| (s, 0));
        for r in cache.records.values() {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == r.state) {
                c.1 += 1;
            }
        }
        Ok(counts)
    }

    async fn expired(
        &self,
        now: time::OffsetDateTime,
        since: Option<time::OffsetDateTime>,
    ) -> Result<Vec<(u64, time::OffsetDateTime)>, StoreError> {
        let cache = self.inner.cache.read().unwrap_or_else(|p| p.into_inner());
        Ok(cache.expired(now, since, super::MAX_EXPIRED))
    }

    async fn update(&self, id: u64, change: Change<'_>) -> Result<Updated, StoreError> {
        let turn = self.turn(id).await;
        // Only writers change the cache, and this is the only writer of `id` now: what it
        // holds for `id` is current until the turn ends.
        let before = self.inner.cached(id);
        let decision = change(before.as_ref());
        let after = match &decision {
            Decision::Keep => before.clone(),
            Decision::Put(r) if r.id != id => return Err(StoreError::WrongId { id, got: r.id }),
            Decision::Put(r) => Some(r.clone()),
            Decision::Delete { .. } => None,
        };
        if matches!(decision, Decision::Keep) {
            return Ok(Updated {
                before,
                after,
                removed_files: false,
            });
        }
        let inner = self.inner.clone();
        let had = before.is_some();
        // The turn goes with the write: a caller that gives up (its HTTP client left) does
        // not let the next writer of `id` in before this write is on disk and cached.
        let removed_files = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            inner.apply(id, had, decision)
        })
        .await??;
        Ok(Updated {
            before,
            after,
            removed_files,
        })
    }

    fn upload_path(&self, id: u64) -> PathBuf {
        self.inner.dir(id).join("upload")
    }

    fn upgraded_path(&self, id: u64) -> PathBuf {
        self.inner.dir(id).join("upgraded")
    }
}
