//! The embedded store: one directory per request under `DATA_DIR/requests/<id>/` holding
//! `request.json`, `upload` and `upgraded`. Records are replaced atomically (temp file,
//! fsync, rename, fsync of the directory) and cached in memory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::{private, Record, Store, StoreError};

const RECORD: &str = "request.json";

pub struct FileStore {
    root: PathBuf,
    cache: RwLock<BTreeMap<u64, Record>>,
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
        let mut cache = BTreeMap::new();
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
                cache.insert(id, record);
            }
        }
        Ok(FileStore {
            root,
            cache: RwLock::new(cache),
        })
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
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
        if !dir.exists() {
            private::create_dir(&dir).map_err(io_err(&dir))?;
            sync_dir(&self.root)?;
        }
        let json = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Corrupt {
            path: dir.join(RECORD),
            source,
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".request.")
            .suffix(".tmp")
            .permissions(private::file_permissions())
            .tempfile_in(&dir)
            .map_err(io_err(&dir))?;
        tmp.write_all(&json).map_err(io_err(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        crash_point("record-before-rename");
        let path = dir.join(RECORD);
        tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        sync_dir(&dir)
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

impl Store for FileStore {
    fn get(&self, id: u64) -> Option<Record> {
        self.cache.read().ok()?.get(&id).cloned()
    }

    fn list(&self) -> Vec<Record> {
        self.cache
            .read()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    fn put(&self, record: Record) -> Result<(), StoreError> {
        // Hold the write lock across the disk write so two writers cannot interleave.
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        self.write_record(&record, !cache.contains_key(&record.id))?;
        cache.insert(record.id, record);
        Ok(())
    }

    fn delete(&self, id: u64, purge: bool) -> Result<bool, StoreError> {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let had = cache.remove(&id).is_some();
        let dir = self.dir(id);
        if purge {
            // Also after a delete without purge: the files are still there to remove.
            return match fs::remove_dir_all(&dir) {
                Ok(()) => sync_dir(&self.root).map(|()| true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(had),
                Err(e) => Err(io_err(&dir)(e)),
            };
        }
        if !had {
            return Ok(false);
        }
        let path = dir.join(RECORD);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        sync_dir(&dir)?;
        Ok(true)
    }

    fn upload_path(&self, id: u64) -> PathBuf {
        self.dir(id).join("upload")
    }

    fn upgraded_path(&self, id: u64) -> PathBuf {
        self.dir(id).join("upgraded")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{hash_key, State};
    use time::OffsetDateTime;

    fn record(id: u64) -> Record {
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

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.put(record(7)).unwrap();
        store.put(record(3)).unwrap();
        let mut changed = record(7);
        changed.state = State::Done;
        store.put(changed.clone()).unwrap();
        drop(store);

        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(
            store.list().iter().map(|r| r.id).collect::<Vec<_>>(),
            [3, 7]
        );
        assert_eq!(store.get(7), Some(changed));
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("requests/7"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["request.json"]);
    }

    #[test]
    fn delete_keeps_or_purges_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.put(record(1)).unwrap();
        store.put(record(2)).unwrap();
        fs::write(store.upload_path(1), b"data").unwrap();
        fs::write(store.upload_path(2), b"data").unwrap();
        assert!(store.delete(1, false).unwrap());
        assert!(store.delete(2, true).unwrap());
        assert!(!store.delete(2, true).unwrap());
        assert!(store.upload_path(1).exists());
        assert!(!dir.path().join("requests/2").exists());
        let store = FileStore::open(dir.path()).unwrap();
        assert!(store.list().is_empty());
        // A purge after a delete without purge removes the files it kept.
        assert!(!store.delete(1, false).unwrap());
        assert!(store.delete(1, true).unwrap());
        assert!(!dir.path().join("requests/1").exists());
    }

    #[test]
    fn a_new_record_under_a_used_id_starts_without_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.put(record(4)).unwrap();
        fs::write(store.upload_path(4), b"first customer").unwrap();
        fs::write(store.upgraded_path(4), b"first upgraded").unwrap();
        assert!(store.delete(4, false).unwrap());
        store.put(record(4)).unwrap();
        assert!(!store.upload_path(4).exists());
        assert!(!store.upgraded_path(4).exists());
        // Replacing an existing record keeps its files.
        fs::write(store.upload_path(4), b"second").unwrap();
        store.put(record(4)).unwrap();
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
}
