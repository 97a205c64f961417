//! The S3 client the object storage stands on: the calls a resumable multipart upload
//! needs (create, put a part, copy a part from an existing object's range, complete,
//! abort, list the uploads in progress) and the object calls (put, ranged get, streamed
//! get, head, delete, list), on an `s3://bucket/prefix` of AWS or of an S3-compatible
//! server. It knows nothing of requests or uploads' state: storage/ does.
//!
//! object_store makes every call it has (config.rs builds it, transport.rs carries it
//! over crate::http's hyper client); signed.rs makes the two it lacks. Keys are full
//! object keys: [`S3::key`] joins the prefix and a relative name. Data goes to the wire
//! as the `Bytes` handed in, uncopied; every call has bounded timeouts and retries
//! (transport.rs, config.rs, signed.rs).

mod config;
mod error;
mod profile;
mod signed;
mod transport;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutPayload};
use time::OffsetDateTime;

pub use config::{AccessKey, S3Options};
pub use error::S3Error;
pub use signed::MAX_COPY;

use error::from_store;

/// S3's largest part number.
pub const MAX_PARTS: u32 = 10_000;
/// S3's smallest part other than the last (EntityTooSmall below it).
pub const MIN_PART: u64 = 5 << 20;

/// A client for one bucket and prefix. Cheap to clone (one `Arc`), Send and Sync.
#[derive(Clone)]
pub struct S3 {
    inner: Arc<Inner>,
}

struct Inner {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    region: String,
    bucket_url: String,
    transport: transport::Transport,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("bucket_url", &self.inner.bucket_url)
            .field("prefix", &self.inner.prefix)
            .field("region", &self.inner.region)
            .finish()
    }
}

/// An object's size and modification time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub modified: OffsetDateTime,
    pub etag: Option<String>,
}

/// A multipart upload in progress. `key` is the full key. S3-compatible servers may not
/// keep `initiated` (moto answers a fixed 2010-11-10T20:48:33Z).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: OffsetDateTime,
}

/// A key as object_store's path; the same rules S3 keys get from it: no empty segment, no
/// `.` or `..` segment, no leading or trailing `/`.
fn path(key: &str) -> Result<Path, S3Error> {
    Path::parse(key).map_err(|e| S3Error::Other(format!("invalid key {key:?}: {e}")))
}

fn check_part_number(number: u32) -> Result<(), String> {
    if (1..=MAX_PARTS).contains(&number) {
        Ok(())
    } else {
        Err(format!(
            "part number {number}: parts are numbered 1 to {MAX_PARTS}"
        ))
    }
}

fn info(meta: &object_store::ObjectMeta) -> ObjectInfo {
    let modified = OffsetDateTime::from_unix_timestamp(meta.last_modified.timestamp())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        + time::Duration::nanoseconds(meta.last_modified.timestamp_subsec_nanos().into());
    ObjectInfo {
        size: meta.size,
        modified,
        etag: meta.e_tag.clone(),
    }
}

impl S3 {
    /// A client for `s3://bucket` or `s3://bucket/some/prefix`; config.rs says where the
    /// endpoint, region and credentials come from. Makes no request ([`S3::check`] does).
    pub fn from_url(url: &str, opts: &S3Options) -> Result<S3, S3Error> {
        let env = |k: &str| std::env::var(k).ok();
        let r = config::build(url, opts, &env)?;
        Ok(S3 {
            inner: Arc::new(Inner {
                store: r.store,
                bucket: r.bucket,
                prefix: r.prefix,
                region: r.region,
                bucket_url: r.bucket_url,
                transport: transport::Transport,
            }),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The prefix joined with `rel` (`prefix/rel`, or `rel` without a prefix).
    pub fn key(&self, rel: &str) -> String {
        let rel = rel.trim_start_matches('/');
        match (self.inner.prefix.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_string(),
            (false, true) => format!("{}/", self.inner.prefix),
            (false, false) => format!("{}/{rel}", self.inner.prefix),
        }
    }

    /// One request that succeeds only if the bucket exists and the credentials may list
    /// it: for a start-up check with a clear error.
    pub async fn check(&self) -> Result<(), S3Error> {
        self.signed_check().await
    }

    /// Starts a multipart upload of `key`; returns its upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        let p = path(key)?;
        self.inner
            .store
            .create_multipart(&p)
            .await
            .map_err(|e| from_store("create_multipart", key, None, e))
    }

    /// Uploads part `number` (1-based) of `upload_id`; returns its ETag.
    pub async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<String, S3Error> {
        let p = path(key)?;
        check_part_number(number).map_err(|e| S3Error::Other(format!("put_part {key}: {e}")))?;
        let id = upload_id.to_string();
        self.inner
            .store
            .put_part(&p, &id, (number - 1) as usize, PutPayload::from(data))
            .await
            .map(|part| part.content_id)
            .map_err(|e| from_store("put_part", key, Some(upload_id), e))
    }

    // copy_part (UploadPartCopy) is in signed.rs.

    /// Completes `upload_id` from `parts` (number, ETag), which must be numbered 1 to n
    /// without gaps (any order); the object then exists. No parts makes an empty object.
    pub async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), S3Error> {
        let p = path(key)?;
        let mut sorted: Vec<&(u32, String)> = parts.iter().collect();
        sorted.sort_by_key(|(n, _)| *n);
        // object_store numbers the parts it sends by their position.
        if let Some((i, (n, _))) = sorted
            .iter()
            .enumerate()
            .find(|(i, (n, _))| *n as usize != i + 1)
        {
            return Err(S3Error::Other(format!(
                "complete {key}: parts must be numbered 1 to {} without gaps; found part {n} at position {}",
                sorted.len(),
                i + 1
            )));
        }
        let ids = sorted
            .into_iter()
            .map(|(_, etag)| PartId {
                content_id: etag.clone(),
            })
            .collect();
        self.inner
            .store
            .complete_multipart(&p, &upload_id.to_string(), ids)
            .await
            .map(|_| ())
            .map_err(|e| from_store("complete", key, Some(upload_id), e))
    }

    /// Aborts `upload_id`, dropping its parts. An unknown upload is not an error.
    pub async fn abort(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let p = path(key)?;
        match self
            .inner
            .store
            .abort_multipart(&p, &upload_id.to_string())
            .await
            .map_err(|e| from_store("abort", key, Some(upload_id), e))
        {
            Ok(()) | Err(S3Error::NoSuchUpload(_) | S3Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The multipart uploads in progress whose keys start with `key(rel_prefix)`, all
    /// pages.
    pub async fn list_uploads(&self, rel_prefix: &str) -> Result<Vec<PendingUpload>, S3Error> {
        let prefix = self.key(rel_prefix);
        self.signed_list_uploads(&prefix).await
    }

    /// The objects under the directory `key(rel_dir)` (every depth), with their full keys.
    pub async fn list(&self, rel_dir: &str) -> Result<Vec<(String, ObjectInfo)>, S3Error> {
        let dir = self.key(rel_dir);
        let dir = dir.trim_end_matches('/');
        let p = if dir.is_empty() {
            None
        } else {
            Some(path(dir)?)
        };
        self.inner
            .store
            .list(p.as_ref())
            .map_ok(|m| (m.location.to_string(), info(&m)))
            .try_collect()
            .await
            .map_err(|e| from_store("list", dir, None, e))
    }

    /// The object's size and modification time; `None` if there is none.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        let p = path(key)?;
        match self.inner.store.head(&p).await {
            Ok(meta) => Ok(Some(info(&meta))),
            Err(e) => match from_store("head", key, None, e) {
                S3Error::NotFound(_) => Ok(None),
                e => Err(e),
            },
        }
    }

    /// The bytes of `range`; fewer if the object ends inside it. An empty range is empty
    /// without a request; one that starts at or after the end is [`S3Error::InvalidRange`].
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, S3Error> {
        let p = path(key)?;
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        self.inner
            .store
            .get_range(&p, range)
            .await
            .map_err(|e| from_store("get_range", key, None, e))
    }

    /// The object (or `range` of it, as [`S3::get_range`]) as a stream of chunks as they
    /// arrive.
    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, S3Error>>, S3Error> {
        let p = path(key)?;
        if range.as_ref().is_some_and(|r| r.start >= r.end) {
            return Ok(futures::stream::empty().boxed());
        }
        let result = self
            .inner
            .store
            .get_opts(&p, GetOptions::new().with_range(range))
            .await
            .map_err(|e| from_store("get", key, None, e))?;
        let key = key.to_string();
        Ok(result
            .into_stream()
            .map_err(move |e| from_store("get", &key, None, e))
            .boxed())
    }

    /// Writes the whole object in one request (S3 allows up to 5 GiB).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), S3Error> {
        let p = path(key)?;
        self.inner
            .store
            .put(&p, PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| from_store("put", key, None, e))
    }

    /// Deletes the object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        let p = path(key)?;
        match self.inner.store.delete(&p).await {
            Ok(()) => Ok(()),
            Err(e) => match from_store("delete", key, None, e) {
                S3Error::NotFound(_) => Ok(()),
                e => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> S3 {
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("eu-west-3".into()),
            access: Some(AccessKey {
                id: "id".into(),
                secret: "secret".into(),
                token: None,
            }),
        };
        S3::from_url(url, &opts).unwrap()
    }

    #[test]
    fn keys_join_the_prefix() {
        let s3 = client("s3://dumps/a/b/");
        assert_eq!(s3.key("req/1"), "a/b/req/1");
        assert_eq!(s3.key("/req/1"), "a/b/req/1");
        assert_eq!(s3.key(""), "a/b/");
        let s3 = client("s3://dumps");
        assert_eq!(s3.key("req/1"), "req/1");
        assert_eq!(s3.inner.bucket_url, "http://127.0.0.1:9/dumps");
        assert_eq!(s3.inner.region, "eu-west-3");
        assert!(!format!("{s3:?}").contains("secret"));
    }

    #[tokio::test]
    async fn bad_arguments_are_refused_without_a_request() {
        let s3 = client("s3://dumps");
        let e = s3.put_part("k", "u", 0, Bytes::new()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "S3: put_part k: part number 0: parts are numbered 1 to 10000"
        );
        let e = s3
            .complete("k", "u", &[(1, "a".into()), (3, "b".into())])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "S3: complete k: parts must be numbered 1 to 2 without gaps; found part 3 at position 2"
        );
        let e = s3.copy_part("k", "u", 1, "src", 5..5).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "S3: copy_part k: source range 5..5: must be non-empty and at most 5 GiB"
        );
        assert!(s3.head("a//b").await.is_err());
        assert_eq!(s3.get_range("k", 3..3).await.unwrap(), Bytes::new());
    }
}
