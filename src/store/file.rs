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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::OwnedMutexGuard;

use super::multipart::{Multipart, Object};
use super::{private, Change, Decision, PageQuery, Record, State, Store, StoreError, Updated};

mod multipart;

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

/// The records by id, and (expiry, id) of those with an expiry: [`Store::expired`] is a
/// range of the index. Scanning every record instead cost 37 ms a second at 100,000
/// records (bench/records.sh, a loaded machine).
#[derive(Default)]
struct Cache {
    records: BTreeMap<u64, Record>,
    by_expiry: BTreeSet<(time::OffsetDateTime, u64)>,
}

impl Cache {
    fn insert(&mut self, record: Record) {
        if let Some(t) = record.expires_at {
            self.by_expiry.insert((t, record.id));
        }
        if let Some(old) = self.records.insert(record.id, record) {
            self.unindex(&old);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(old) = self.records.remove(&id) {
            self.unindex(&old);
        }
    }

    /// Drops `old`'s index entry unless the record now in its place has the same expiry.
    fn unindex(&mut self, old: &Record) {
        let Some(t) = old.expires_at else { return };
        let same = self
            .records
            .get(&old.id)
            .is_some_and(|r| r.expires_at == Some(t));
        if !same {
            self.by_expiry.remove(&(t, old.id));
        }
    }

    /// Expiries in `(since, now]`, earliest first, at most `limit`.
    fn expired(
        &self,
        now: time::OffsetDateTime,
        since: Option<time::OffsetDateTime>,
        limit: usize,
    ) -> Vec<(u64, time::OffsetDateTime)> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        // (t, u64::MAX) is past every entry at t: `since` itself is left out, `now` kept.
        let start = since.map_or(Unbounded, |s| Excluded((s, u64::MAX)));
        self.by_expiry
            .range((start, Included((now, u64::MAX))))
            .take(limit)
            .map(|&(t, id)| (id, t))
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{hash_key, State};
    use std::time::Duration;
    use time::OffsetDateTime;

    pub(super) fn record(id: u64) -> Record {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        Record {
            id,
            filename: "db.dump".into(),
            state: State::Draft,
            key_sha256: hash_key("k"),
            ssh_keys: String::new(),
            expires_at: None,
            operator_expires_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    async fn put(store: &FileStore, r: Record) {
        let id = r.id;
        store
            .update(id, Box::new(move |_| Decision::Put(r)))
            .await
            .unwrap();
    }

    /// The old `delete`'s answer: whether a record or (purging) files were removed.
    async fn delete(store: &FileStore, id: u64, purge: bool) -> bool {
        store
            .update(id, Box::new(move |_| Decision::Delete { purge }))
            .await
            .unwrap()
            .deleted()
    }

    /// An update of `id` on a task of its own.
    fn spawn_update(
        store: &Arc<FileStore>,
        id: u64,
        change: impl FnOnce(Option<&Record>) -> Decision + Send + 'static,
    ) -> tokio::task::JoinHandle<Updated> {
        let store = store.clone();
        tokio::spawn(async move { store.update(id, Box::new(change)).await.unwrap() })
    }

    async fn get(store: &FileStore, id: u64) -> Option<Record> {
        store.get(id).await.unwrap()
    }

    /// The expiry index follows every change: a new expiry, a moved one, one removed, a
    /// deleted record, and a reopened store; `since` is left out and `now` kept.
    #[tokio::test]
    async fn expired_reads_the_index_as_changes_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let t0 = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let at = |s: i64| t0 + time::Duration::seconds(s);
        for (id, s) in [(1, 10), (2, 20), (3, 30), (4, 20)] {
            put(
                &store,
                Record {
                    expires_at: Some(at(s)),
                    ..record(id)
                },
            )
            .await;
        }
        put(&store, record(5)).await;
        let due = |store: &FileStore, now, since| {
            let cache = store.inner.cache.read().unwrap();
            cache.expired(now, since, 1000)
        };
        assert_eq!(
            due(&store, at(20), None),
            vec![(1, at(10)), (2, at(20)), (4, at(20))]
        );
        assert_eq!(due(&store, at(30), Some(at(20))), vec![(3, at(30))]);
        // Moved past now, expiry dropped, record deleted.
        put(
            &store,
            Record {
                expires_at: Some(at(40)),
                ..record(1)
            },
        )
        .await;
        put(&store, record(2)).await;
        assert!(delete(&store, 4, false).await);
        assert_eq!(due(&store, at(30), None), vec![(3, at(30))]);
        assert_eq!(
            store.expired(at(40), None).await.unwrap(),
            vec![(3, at(30)), (1, at(40))]
        );
        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(due(&reopened, at(40), None), vec![(3, at(30)), (1, at(40))]);
        assert_eq!(
            due(&reopened, at(40), None).len(),
            reopened.inner.cache.read().unwrap().by_expiry.len()
        );
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        put(&store, record(7)).await;
        put(&store, record(3)).await;
        let mut changed = record(7);
        changed.state = State::Done;
        put(&store, changed.clone()).await;
        drop(store);

        let store = FileStore::open(dir.path()).unwrap();
        let ids: Vec<_> = store.list().await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 7]);
        assert_eq!(get(&store, 7).await, Some(changed));
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("requests/7"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["request.json"]);
    }

    #[tokio::test]
    async fn delete_keeps_or_purges_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        put(&store, record(1)).await;
        put(&store, record(2)).await;
        fs::write(store.upload_path(1), b"data").unwrap();
        fs::write(store.upload_path(2), b"data").unwrap();
        assert!(delete(&store, 1, false).await);
        assert!(delete(&store, 2, true).await);
        assert!(!delete(&store, 2, true).await);
        assert!(store.upload_path(1).exists());
        assert!(!dir.path().join("requests/2").exists());
        let store = FileStore::open(dir.path()).unwrap();
        assert!(store.list().await.unwrap().is_empty());
        // A purge after a delete without purge removes the files it kept.
        assert!(!delete(&store, 1, false).await);
        assert!(delete(&store, 1, true).await);
        assert!(!dir.path().join("requests/1").exists());
    }

    #[tokio::test]
    async fn a_new_record_under_a_used_id_starts_without_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        put(&store, record(4)).await;
        fs::write(store.upload_path(4), b"first customer").unwrap();
        fs::write(store.upgraded_path(4), b"first upgraded").unwrap();
        assert!(delete(&store, 4, false).await);
        put(&store, record(4)).await;
        assert!(!store.upload_path(4).exists());
        assert!(!store.upgraded_path(4).exists());
        // Replacing an existing record keeps its files.
        fs::write(store.upload_path(4), b"second").unwrap();
        put(&store, record(4)).await;
        assert_eq!(fs::read(store.upload_path(4)).unwrap(), b"second");
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("requests/5")).unwrap();
        fs::write(dir.path().join("requests/5/request.json"), b"{\"id\": 5").unwrap();
        assert!(matches!(
            FileStore::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn a_change_sees_what_it_changes_and_keep_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let u = store
            .update(
                9,
                Box::new(|seen| {
                    assert!(seen.is_none());
                    Decision::Keep
                }),
            )
            .await
            .unwrap();
        assert!(u.before.is_none() && u.after.is_none() && !u.deleted());
        assert!(!dir.path().join("requests/9").exists());
        put(&store, record(9)).await;
        let u = store
            .update(
                9,
                Box::new(|seen| {
                    let mut r = seen.cloned().unwrap();
                    r.state = State::Cancelled;
                    Decision::Put(r)
                }),
            )
            .await
            .unwrap();
        assert_eq!(u.before.map(|r| r.state), Some(State::Draft));
        assert_eq!(u.after.map(|r| r.state), Some(State::Cancelled));
        // A change cannot write another id's record.
        let wrong = store
            .update(9, Box::new(|_| Decision::Put(record(10))))
            .await;
        assert!(matches!(wrong, Err(StoreError::WrongId { id: 9, got: 10 })));
        assert_eq!(get(&store, 10).await, None);
        assert!(store.inner.lock_turns().is_empty());
    }

    /// Read-modify-writes racing on one id from many tasks and threads: none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn updates_of_one_record_are_serialised() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStore::open(dir.path()).unwrap());
        put(&store, record(1)).await;
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                spawn_update(&store, 1, |seen| {
                    let mut r = seen.cloned().unwrap();
                    r.ssh_keys.push('x');
                    Decision::Put(r)
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(get(&store, 1).await.unwrap().ssh_keys, "x".repeat(40));
        // What is on disk too.
        drop(store);
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(get(&store, 1).await.unwrap().ssh_keys.len(), 40);
        assert!(store.inner.lock_turns().is_empty());
    }

    /// A store whose writes of `slow` stall until the returned sender sends (or is dropped),
    /// and tell the returned receiver when they have begun to stall.
    fn stalling_store(
        dir: &Path,
        slow: u64,
    ) -> (
        Arc<FileStore>,
        std::sync::mpsc::SyncSender<()>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(0);
        let (stalled_tx, stalled) = tokio::sync::mpsc::unbounded_channel();
        let rx = Mutex::new(rx);
        let mut store = FileStore::open(dir).unwrap();
        let inner = Arc::get_mut(&mut store.inner).unwrap();
        inner.before_sync = Some(Box::new(move |id| {
            if id == slow {
                let _ = stalled_tx.send(());
                let _ = rx.lock().unwrap().recv();
            }
        }));
        (Arc::new(store), tx, stalled)
    }

    /// While a write of one record waits for a slow disk, reads of it and of others, and
    /// writes of other records, go on; the next writer of that record waits, and then sees
    /// the stalled write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_and_other_records_do_not_wait_behind_a_slow_write() {
        let dir = tempfile::tempdir().unwrap();
        let (store, release, mut stalled) = stalling_store(dir.path(), 1);
        put(&store, record(2)).await;
        let slow = {
            let store = store.clone();
            tokio::spawn(async move { put(&store, record(1)).await })
        };
        // The next writer comes once the first holds its turn, stalled in its write.
        stalled.recv().await.unwrap();
        let queued = spawn_update(&store, 1, |seen| {
            let mut r = seen.cloned().expect("the stalled write came first");
            r.state = State::Cancelled;
            Decision::Put(r)
        });
        let quick = Duration::from_secs(5);
        // The stalled record is not visible yet (it is not durable), the others are.
        assert_eq!(get(&store, 1).await, None);
        assert!(get(&store, 2).await.is_some());
        assert_eq!(store.list().await.unwrap().len(), 1);
        let mut other = record(2);
        other.state = State::Done;
        tokio::time::timeout(quick, put(&store, other))
            .await
            .expect("a write of another record went on");
        assert!(!queued.is_finished() && !slow.is_finished());
        assert_eq!(store.inner.lock_turns().len(), 1);

        release.send(()).unwrap();
        drop(release);
        tokio::time::timeout(quick, slow).await.unwrap().unwrap();
        let u = tokio::time::timeout(quick, queued).await.unwrap().unwrap();
        assert_eq!(u.after.map(|r| r.state), Some(State::Cancelled));
        assert!(store.inner.lock_turns().is_empty());
    }

    /// A writer that gives up while it waits leaves no lock behind; one that gives up while
    /// its write runs keeps the next writer out until the write is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_that_give_up_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (store, release, mut stalled) = stalling_store(dir.path(), 1);
        let short = Duration::from_millis(100);
        // The first writer gives up once its write runs (stalled on the disk), not before:
        // a writer dropped before its write began leaves nothing to wait for.
        let first = {
            let store = store.clone();
            tokio::spawn(async move { put(&store, record(1)).await })
        };
        stalled.recv().await.unwrap();
        first.abort();
        assert!(tokio::time::timeout(short, put(&store, record(1)))
            .await
            .is_err());
        assert_eq!(store.inner.lock_turns().len(), 1);
        let next = spawn_update(&store, 1, |seen| {
            assert!(seen.is_some(), "went in before the write it followed");
            Decision::Keep
        });
        tokio::time::sleep(short).await;
        assert!(!next.is_finished());
        drop(release);
        next.await.unwrap();
        // The stalled writer's thread may still be ending its turn (it let `next` in
        // first): the entry goes once it has, not at some later write.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !store.inner.lock_turns().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "a lock entry stayed behind"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
