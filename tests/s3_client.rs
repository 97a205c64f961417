//! The S3 client (src/s3/) against a real S3-compatible server (moto, tests/common/s3.rs;
//! or the endpoint of `SFTPGATE_TEST_S3_URL`): every call, with exact outcomes. Each test
//! has a bucket of its own, so they run in parallel.

mod common;

use bytes::Bytes;
use futures::TryStreamExt;
use sftpgate::s3::{S3Error, MIN_PART};
use sha2::{Digest, Sha256};

use common::s3::TestS3;

const MIB: usize = 1 << 20;

/// `len` bytes that differ at every offset of a part (so a misplaced range shows).
fn data(len: usize, seed: u8) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut x = seed as u32 | 1;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    Bytes::from(v)
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[tokio::test]
async fn a_three_part_upload_reads_back_exactly() {
    let t = TestS3::new();
    let s3 = t.client();
    s3.check().await.unwrap();
    let key = s3.key("req/1/dump.sql");
    let parts = [data(5 * MIB, 1), data(5 * MIB, 2), data(123_457, 3)];
    let id = s3.create_multipart(&key).await.unwrap();
    let mut done = Vec::new();
    // Out of order on purpose: the numbers, not the order, place the parts.
    for n in [2u32, 1, 3] {
        let etag = s3
            .put_part(&key, &id, n, parts[n as usize - 1].clone())
            .await
            .unwrap();
        done.push((n, etag));
    }
    assert_eq!(
        s3.head(&key).await.unwrap(),
        None,
        "not an object before complete"
    );
    s3.complete(&key, &id, &done).await.unwrap();
    let whole: Vec<u8> = parts.concat();
    let info = s3.head(&key).await.unwrap().unwrap();
    assert_eq!(info.size, whole.len() as u64);
    let age = time::OffsetDateTime::now_utc() - info.modified;
    assert!(
        age.whole_seconds().abs() < 300,
        "modified {}",
        info.modified
    );
    let streamed: Vec<Bytes> = s3
        .get_stream(&key, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(sha(&streamed.concat()), sha(&whole));
    // A completed upload is gone.
    assert!(s3.list_uploads("req/").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_small_part_other_than_the_last_is_entity_too_small() {
    let t = TestS3::new();
    let s3 = t.client();
    let key = s3.key("small");
    let id = s3.create_multipart(&key).await.unwrap();
    let a = s3.put_part(&key, &id, 1, data(MIB, 4)).await.unwrap();
    let b = s3.put_part(&key, &id, 2, data(10, 5)).await.unwrap();
    let e = s3.complete(&key, &id, &[(1, a), (2, b)]).await.unwrap_err();
    assert!(
        matches!(&e, S3Error::EntityTooSmall(k) if *k == key),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("S3: the multipart upload of {key} has a part other than the last under the 5 MiB minimum (EntityTooSmall)")
    );
    // The upload is still there to abort.
    s3.abort(&key, &id).await.unwrap();
    assert_eq!(s3.head(&key).await.unwrap(), None);
}

#[tokio::test]
async fn copied_ranges_then_new_parts_make_the_exact_concatenation() {
    let t = TestS3::new();
    let s3 = t.client();
    let source = s3.key("old");
    let old = data(12 * MIB + 77, 6);
    s3.put(&source, old.clone()).await.unwrap();

    let key = s3.key("new");
    let id = s3.create_multipart(&key).await.unwrap();
    let first = 0..MIN_PART;
    let second = MIN_PART..2 * MIN_PART + 3;
    let e1 = s3
        .copy_part(&key, &id, 1, &source, first.clone())
        .await
        .unwrap();
    let e2 = s3
        .copy_part(&key, &id, 2, &source, second.clone())
        .await
        .unwrap();
    let tail = data(5 * MIB, 7);
    let e3 = s3.put_part(&key, &id, 3, tail.clone()).await.unwrap();
    let last = data(1000, 8);
    let e4 = s3.put_part(&key, &id, 4, last.clone()).await.unwrap();
    s3.complete(&key, &id, &[(1, e1), (2, e2), (3, e3), (4, e4)])
        .await
        .unwrap();

    let r = |r: std::ops::Range<u64>| &old[r.start as usize..r.end as usize];
    let want = [r(first), r(second), &tail, &last].concat();
    let got = s3.get_range(&key, 0..want.len() as u64).await.unwrap();
    assert_eq!(got.len(), want.len());
    assert_eq!(sha(&got), sha(&want));
    // The copy of a missing source names the source.
    let id2 = s3.create_multipart(&key).await.unwrap();
    let missing = s3.key("missing");
    let e = s3
        .copy_part(&key, &id2, 1, &missing, 0..10)
        .await
        .unwrap_err();
    assert!(matches!(&e, S3Error::NotFound(k) if *k == missing), "{e:?}");
    s3.abort(&key, &id2).await.unwrap();
}

#[tokio::test]
async fn ranges_heads_puts_and_deletes() {
    let t = TestS3::new();
    let s3 = t.client();
    let key = s3.key("dir/obj");
    let body = data(3 * MIB + 5, 9);
    s3.put(&key, body.clone()).await.unwrap();
    assert_eq!(
        s3.get_range(&key, 1_000_000..1_000_100).await.unwrap(),
        body.slice(1_000_000..1_000_100)
    );
    // The last bytes, and a range that ends past the end: the rest.
    let n = body.len() as u64;
    assert_eq!(
        s3.get_range(&key, n - 5..n).await.unwrap(),
        body.slice(body.len() - 5..)
    );
    assert_eq!(
        s3.get_range(&key, n - 5..n + 100).await.unwrap(),
        body.slice(body.len() - 5..)
    );
    let e = s3.get_range(&key, n..n + 10).await.unwrap_err();
    assert!(matches!(&e, S3Error::InvalidRange(k) if *k == key), "{e:?}");
    let part: Vec<Bytes> = s3
        .get_stream(&key, Some(7..MIB as u64 + 7))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(part.concat(), body[7..MIB + 7]);

    let info = s3.head(&key).await.unwrap().unwrap();
    assert_eq!(info.size, n);
    assert_eq!(s3.list("dir").await.unwrap().len(), 1);
    assert_eq!(s3.list("dir").await.unwrap()[0].0, key);

    assert_eq!(s3.head(&s3.key("nothing-here")).await.unwrap(), None);
    let e = s3
        .get_range(&s3.key("nothing-here"), 0..1)
        .await
        .unwrap_err();
    assert!(matches!(e, S3Error::NotFound(_)), "{e:?}");
    s3.delete(&key).await.unwrap();
    assert_eq!(s3.head(&key).await.unwrap(), None);
    // Deleting what is not there is fine.
    s3.delete(&key).await.unwrap();
}

#[tokio::test]
async fn uploads_in_progress_are_listed_until_aborted() {
    let t = TestS3::new();
    let s3 = t.client();
    let a = s3.key("up/a");
    let b = s3.key("up/b");
    let other = s3.key("elsewhere/c");
    let ida = s3.create_multipart(&a).await.unwrap();
    let idb = s3.create_multipart(&b).await.unwrap();
    let idc = s3.create_multipart(&other).await.unwrap();
    s3.put_part(&a, &ida, 1, data(100, 10)).await.unwrap();

    let mut listed: Vec<(String, String)> = s3
        .list_uploads("up/")
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.key, u.upload_id))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![(a.clone(), ida.clone()), (b.clone(), idb.clone())]
    );
    assert_eq!(s3.list_uploads("").await.unwrap().len(), 3);

    s3.abort(&a, &ida).await.unwrap();
    let left: Vec<String> = s3
        .list_uploads("up/")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.upload_id)
        .collect();
    assert_eq!(left, vec![idb.clone()]);
    // (A part for the aborted upload would be NoSuchUpload on S3; moto answers 500 with
    // an HTML page, a KeyError of its own, so that is not asserted here.)
    // Aborting it again, or an upload that never was, is fine.
    s3.abort(&a, &ida).await.unwrap();
    s3.abort(&a, "no-such-upload-id").await.unwrap();
    s3.abort(&b, &idb).await.unwrap();
    s3.abort(&other, &idc).await.unwrap();
    assert!(s3.list_uploads("").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_missing_bucket_fails_the_check_clearly() {
    let t = TestS3::new();
    let opts = t.options();
    let bucket = format!("sftpgate-no-such-bucket-{:016x}", common::rand_u64());
    let s3 = sftpgate::s3::S3::from_url(&format!("s3://{bucket}"), &opts).unwrap();
    let e = s3.check().await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("S3: check s3://{bucket}/: NoSuchBucket: ")),
        "{e}"
    );
}
