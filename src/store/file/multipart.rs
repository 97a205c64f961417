//! The file store's multipart uploads ([`MultipartStore`]): one file per request and
//! object, `requests/<id>/multipart-upload.json` and `multipart-upgraded.json`, holding the
//! current upload (id, key, start) and its parts as `[number, etag, size]` triples, and
//! cached in memory as the records are.
//!
//! Each change rewrites the whole file as records are written (temp file, fsync, rename,
//! fsync of the directory: [`replace_file`]), under the request's writer turn, and only
//! then changes the cache. A part is 16 MiB by default, so that is one small rewrite per
//! 16 MiB sent: at S3's 10,000 parts the file is about 600 KB, and the rewrites of a whole
//! upload come to about 2% of its bytes. An append-only log would write less, but would
//! need a torn-tail rule and compaction of its own; a rewrite is all or nothing, and a
//! crash leaves at most a temp file, which the loader never reads.
//!
//! Only a request with a record has uploads: beginning one for a missing request is
//! refused, and deleting the record removes the files (purge or not).

use std::fs;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{remove_file, replace_file, sync_dir, FileStore, Inner};
use crate::store::multipart::{
    check_begin, check_part, Multipart, MultipartError, MultipartStore, Object, Part,
};
use crate::store::StoreError;

/// A multipart upload as its file holds it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    upload_id: String,
    key: String,
    #[serde(with = "time::serde::rfc3339")]
    started: OffsetDateTime,
    /// `[number, etag, size]`: a part's fields without their names, which would make up
    /// half of a 10,000-part file.
    parts: Vec<(u32, String, u64)>,
}

impl From<&Multipart> for Stored {
    fn from(m: &Multipart) -> Stored {
        Stored {
            upload_id: m.upload_id.clone(),
            key: m.key.clone(),
            started: m.started,
            parts: m
                .parts
                .iter()
                .map(|p| (p.number, p.etag.clone(), p.size))
                .collect(),
        }
    }
}

impl From<Stored> for Multipart {
    fn from(s: Stored) -> Multipart {
        Multipart {
            upload_id: s.upload_id,
            key: s.key,
            started: s.started,
            parts: s
                .parts
                .into_iter()
                .map(|(number, etag, size)| Part { number, etag, size })
                .collect(),
        }
    }
}

fn file_name(object: Object) -> String {
    format!("multipart-{}.json", object.as_str())
}

fn corrupt(path: PathBuf, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt { path, source }
}

/// The uploads recorded in the request directory `dir`. A file that cannot be read is an
/// error, as a record is: starting without it would lose the committed parts' ETags.
pub(super) fn load(dir: &Path) -> Result<Vec<(Object, Multipart)>, StoreError> {
    let mut found = Vec::new();
    for object in Object::ALL {
        let path = dir.join(file_name(object));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(super::io_err(&path)(e)),
        };
        let stored: Stored =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(path.clone(), e))?;
        let upload = Multipart::from(stored);
        if let Err(why) = upload.check() {
            return Err(corrupt(path, serde::de::Error::custom(why)));
        }
        found.push((object, upload));
    }
    Ok(found)
}

/// Unlinks the upload files of the request directory `dir` (the caller syncs it).
pub(super) fn remove_all(dir: &Path) -> Result<(), StoreError> {
    for object in Object::ALL {
        remove_file(&dir.join(file_name(object)))?;
    }
    Ok(())
}

impl Inner {
    fn multiparts_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, std::collections::BTreeMap<(u64, Object), Multipart>> {
        self.multiparts.write().unwrap_or_else(|p| p.into_inner())
    }

    fn cached_multipart(&self, id: u64, object: Object) -> Option<Multipart> {
        self.multiparts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(id, object))
            .cloned()
    }

    /// Drops the cached uploads of `id`, whose record was deleted (with their files).
    pub(super) fn forget_multiparts(&self, id: u64) {
        let mut cache = self.multiparts_mut();
        for object in Object::ALL {
            cache.remove(&(id, object));
        }
    }

    /// Writes `upload` as the current one of `(id, object)`, then caches it; the one it
    /// replaced is returned.
    fn put_multipart(
        &self,
        id: u64,
        object: Object,
        upload: Multipart,
    ) -> Result<Option<Multipart>, StoreError> {
        let dir = self.dir(id);
        let name = file_name(object);
        let json =
            serde_json::to_vec(&Stored::from(&upload)).map_err(|e| corrupt(dir.join(&name), e))?;
        replace_file(&dir, &name, &json, "multipart-before-rename")?;
        Ok(self.multiparts_mut().insert((id, object), upload))
    }

    fn remove_multipart(&self, id: u64, object: Object) -> Result<(), StoreError> {
        let dir = self.dir(id);
        remove_file(&dir.join(file_name(object)))?;
        sync_dir(&dir)?;
        self.multiparts_mut().remove(&(id, object));
        Ok(())
    }
}

impl FileStore {
    /// Runs `write` on a blocking thread, within the writer turn of `id`: the turn goes
    /// with the write, so a caller that gives up does not let the next writer in before
    /// it is on disk and cached.
    async fn write_in_turn<T: Send + 'static>(
        &self,
        turn: super::Turn,
        write: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            write(&inner)
        })
        .await?
    }
}

#[async_trait::async_trait]
impl MultipartStore for FileStore {
    async fn multipart(&self, id: u64, object: Object) -> Result<Option<Multipart>, StoreError> {
        Ok(self.inner.cached_multipart(id, object))
    }

    async fn begin_multipart(
        &self,
        id: u64,
        object: Object,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Multipart>, StoreError> {
        check_begin(key, upload_id)?;
        let turn = self.turn(id).await;
        // The record cannot go while this turn is held: its delete waits for the turn.
        if self.inner.cached(id).is_none() {
            return Err(MultipartError::NoRequest(id).into());
        }
        let upload = Multipart {
            upload_id: upload_id.to_string(),
            key: key.to_string(),
            started: OffsetDateTime::now_utc(),
            parts: Vec::new(),
        };
        self.write_in_turn(turn, move |inner| inner.put_multipart(id, object, upload))
            .await
    }

    async fn add_part(
        &self,
        id: u64,
        object: Object,
        upload_id: &str,
        part: &Part,
    ) -> Result<bool, StoreError> {
        check_part(part)?;
        let turn = self.turn(id).await;
        let Some(mut upload) = self.inner.cached_multipart(id, object) else {
            return Ok(false);
        };
        if !upload.accepts(upload_id, part) {
            return Ok(false);
        }
        upload.parts.push(part.clone());
        self.write_in_turn(turn, move |inner| {
            inner.put_multipart(id, object, upload).map(|_| true)
        })
        .await
    }

    async fn end_multipart(
        &self,
        id: u64,
        object: Object,
        upload_id: &str,
    ) -> Result<bool, StoreError> {
        let turn = self.turn(id).await;
        let current = self.inner.cached_multipart(id, object);
        if current.is_none_or(|m| m.upload_id != upload_id) {
            return Ok(false);
        }
        self.write_in_turn(turn, move |inner| {
            inner.remove_multipart(id, object).map(|()| true)
        })
        .await
    }

    async fn multiparts(&self) -> Result<Vec<(u64, Object, Multipart)>, StoreError> {
        let cache = self
            .inner
            .multiparts
            .read()
            .unwrap_or_else(|p| p.into_inner());
        Ok(cache
            .iter()
            .map(|(&(id, object), m)| (id, object, m.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::record;
    use super::*;
    use crate::store::{Decision, Store};

    fn part(number: u32) -> Part {
        Part {
            number,
            etag: format!("\"{number:032x}\""),
            size: 16 << 20,
        }
    }

    /// A store holding request 1 with an upload of two parts.
    async fn with_upload(dir: &Path) -> FileStore {
        let store = FileStore::open(dir).unwrap();
        let r = record(1);
        store
            .update(1, Box::new(move |_| Decision::Put(r)))
            .await
            .unwrap();
        store
            .begin_multipart(1, Object::Upload, "requests/1/upload", "u1")
            .await
            .unwrap();
        for n in 1..=2 {
            assert!(store
                .add_part(1, Object::Upload, "u1", &part(n))
                .await
                .unwrap());
        }
        store
    }

    #[tokio::test]
    async fn the_file_holds_the_parts_as_triples() {
        let dir = tempfile::tempdir().unwrap();
        let _store = with_upload(dir.path()).await;
        let path = dir.path().join("requests/1/multipart-upload.json");
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["upload_id"], "u1");
        assert_eq!(json["key"], "requests/1/upload");
        assert_eq!(
            json["parts"],
            serde_json::json!([[1, part(1).etag, 16 << 20], [2, part(2).etag, 16 << 20]])
        );
        // Written as records are: private, and no temp file left.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut names: Vec<_> = fs::read_dir(dir.path().join("requests/1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["multipart-upload.json", "request.json"]);
    }

    /// A crash while a part was being recorded leaves the temp file half written: the
    /// store opens on the file it replaced.
    #[tokio::test]
    async fn a_half_written_temp_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = with_upload(dir.path()).await;
        let before = store.multipart(1, Object::Upload).await.unwrap();
        drop(store);
        let torn = dir
            .path()
            .join("requests/1/.multipart-upload.json.a1b2c3.tmp");
        fs::write(
            &torn,
            br#"{"upload_id":"u1","key":"requests/1/upload","parts":[[1,"#,
        )
        .unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.multipart(1, Object::Upload).await.unwrap(), before);
        assert!(store
            .add_part(1, Object::Upload, "u1", &part(3))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(with_upload(dir.path()).await);
        let path = dir.path().join("requests/1/multipart-upload.json");
        fs::write(&path, b"{\"upload_id\": ").unwrap();
        assert!(matches!(
            FileStore::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
        // Parts out of order are corrupt too: never a hole in what counts as committed.
        let gap = r#"{"upload_id":"u1","key":"k","started":"2026-01-01T00:00:00Z","parts":[[1,"a",1],[3,"b",1]]}"#;
        fs::write(&path, gap).unwrap();
        match FileStore::open(dir.path()) {
            Err(e @ StoreError::Corrupt { .. }) => {
                assert!(e.to_string().contains("part 2 is numbered 3"), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened with a gap in the parts"),
        }
    }

    /// The files of a record deleted without purge stay, its uploads do not; a file left
    /// without its record (a crash between the unlinks) is not loaded.
    #[tokio::test]
    async fn uploads_go_with_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = with_upload(dir.path()).await;
        fs::write(store.upload_path(1), b"spooled").unwrap();
        store
            .update(1, Box::new(|_| Decision::Delete { purge: false }))
            .await
            .unwrap();
        assert!(store.upload_path(1).exists());
        assert!(!dir.path().join("requests/1/multipart-upload.json").exists());
        assert_eq!(store.multiparts().await.unwrap(), vec![]);
        drop(store);

        let store = with_upload(dir.path()).await;
        drop(store);
        fs::remove_file(dir.path().join("requests/1/request.json")).unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.multiparts().await.unwrap(), vec![]);
    }
}
