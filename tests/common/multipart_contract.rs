//! The multipart half of the store contract (tests/common/store_contract.rs), expanded by
//! `store_contract!` inside its suite's module, where `fresh`, `reopen`, `Decision` and
//! `record` are: uploads begun, parts recorded only in order and only for the current
//! upload, uploads that go with their request's record, survive a restart, and one of two
//! racing parts that wins.

#[allow(unused_macros)]
macro_rules! multipart_contract {
    () => {
        use sftpgate::store::multipart::MAX_PARTS;
        use sftpgate::store::{
            Multipart, MultipartError, MultipartStore, Object, Part, StoreError,
        };

        /// A part of `number` as S3 would answer it (a quoted hex ETag).
        fn part(number: u32, size: u64) -> Part {
            Part {
                number,
                etag: format!("\"{:032x}\"", u64::from(number) * 7919),
                size,
            }
        }

        const MIB16: u64 = 16 << 20;

        /// The whole life of an upload: begun, parts recorded in order, listed, ended.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn multipart_begin_add_end() {
            let (store, _guard) = fresh().await;
            let id = 1u64 << 63;
            let put = record(id);
            store
                .update(id, change(move |_| Decision::Put(put)))
                .await
                .expect("put");
            assert_eq!(
                store.multipart(id, Object::Upload).await.expect("read"),
                None
            );
            assert_eq!(store.multiparts().await.expect("list"), vec![]);
            let before = OffsetDateTime::now_utc().replace_nanosecond(0).expect("s");
            let replaced = store
                .begin_multipart(id, Object::Upload, "pfx/req/upload", "up-1")
                .await
                .expect("begin");
            assert_eq!(replaced, None);
            let begun = store
                .multipart(id, Object::Upload)
                .await
                .expect("read")
                .expect("begun");
            let after = OffsetDateTime::now_utc() + time::Duration::SECOND;
            assert!(
                before <= begun.started && begun.started <= after,
                "{before} {} {after}",
                begun.started
            );
            assert_eq!(
                begun,
                Multipart {
                    upload_id: "up-1".into(),
                    key: "pfx/req/upload".into(),
                    started: begun.started,
                    parts: vec![],
                }
            );
            let parts = [part(1, MIB16), part(2, MIB16), part(3, 12345)];
            for p in &parts {
                assert!(
                    store
                        .add_part(id, Object::Upload, "up-1", p)
                        .await
                        .expect("add"),
                    "part {}",
                    p.number
                );
            }
            let now = store
                .multipart(id, Object::Upload)
                .await
                .expect("read")
                .expect("current");
            assert_eq!(now.parts, parts);
            assert_eq!(now.committed(), 2 * MIB16 + 12345);
            assert_eq!(now.started, begun.started);
            // The other object has none; the sweeper sees the one there is.
            assert_eq!(
                store.multipart(id, Object::Upgraded).await.expect("read"),
                None
            );
            assert_eq!(
                store.multiparts().await.expect("list"),
                vec![(id, Object::Upload, now.clone())]
            );
            assert!(!store
                .end_multipart(id, Object::Upload, "up-other")
                .await
                .expect("end"));
            assert!(!store
                .end_multipart(id, Object::Upgraded, "up-1")
                .await
                .expect("end"));
            assert!(store
                .end_multipart(id, Object::Upload, "up-1")
                .await
                .expect("end"));
            assert_eq!(
                store.multipart(id, Object::Upload).await.expect("read"),
                None
            );
            assert_eq!(store.multiparts().await.expect("list"), vec![]);
            assert!(!store
                .end_multipart(id, Object::Upload, "up-1")
                .await
                .expect("end again"));
            // A part of an ended upload is not recorded.
            assert!(!store
                .add_part(id, Object::Upload, "up-1", &part(4, 1))
                .await
                .expect("add"));
            assert!(!store
                .add_part(id, Object::Upload, "up-1", &part(1, 1))
                .await
                .expect("add"));
            assert_eq!(store.multiparts().await.expect("list"), vec![]);
        }

        /// Only the next number is recorded: no gap, no repeat, no part 0.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn multipart_parts_are_contiguous() {
            let (store, _guard) = fresh().await;
            let put = record(2);
            store
                .update(2, change(move |_| Decision::Put(put)))
                .await
                .expect("put");
            store
                .begin_multipart(2, Object::Upgraded, "k", "u")
                .await
                .expect("begin");
            let add = |p: Part| {
                let store = &store;
                async move {
                    store
                        .add_part(2, Object::Upgraded, "u", &p)
                        .await
                        .expect("add")
                }
            };
            assert!(!add(part(2, 1)).await, "a gap");
            assert!(!add(part(0, 1)).await, "part 0");
            assert!(add(part(1, 5)).await);
            assert!(!add(part(1, 6)).await, "a repeat");
            assert!(!add(part(3, 1)).await, "a gap");
            assert!(add(part(2, 7)).await);
            let now = store
                .multipart(2, Object::Upgraded)
                .await
                .expect("read")
                .expect("current");
            assert_eq!(now.parts, [part(1, 5), part(2, 7)]);
            // Past S3's limit is an error, not a race lost.
            let err = store
                .add_part(2, Object::Upgraded, "u", &part(MAX_PARTS + 1, 1))
                .await
                .expect_err("past the limit");
            assert!(
                matches!(
                    err,
                    StoreError::Multipart(MultipartError::TooManyParts { number: 10_001 })
                ),
                "{err}"
            );
            assert_eq!(
                err.to_string(),
                "part number 10001 is past S3's limit of 10000 parts per upload \
                 (the object needs a larger part size)"
            );
            let err = store
                .add_part(2, Object::Upgraded, "u", &part(3, (5 << 30) + 1))
                .await
                .expect_err("a part past 5 GiB");
            assert!(
                matches!(
                    err,
                    StoreError::Multipart(MultipartError::PartTooLarge { .. })
                ),
                "{err}"
            );
            assert_eq!(
                store.multipart(2, Object::Upgraded).await.expect("read"),
                Some(now)
            );
        }

        /// A new upload replaces the current one, which `begin` hands back to be aborted;
        /// the old upload id records nothing more, and the other object is untouched.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn multipart_a_replaced_upload_is_stale() {
            let (store, _guard) = fresh().await;
            let put = record(3);
            store
                .update(3, change(move |_| Decision::Put(put)))
                .await
                .expect("put");
            store
                .begin_multipart(3, Object::Upload, "k1", "old")
                .await
                .expect("begin");
            store
                .begin_multipart(3, Object::Upgraded, "k2", "other")
                .await
                .expect("begin");
            for n in 1..=2 {
                assert!(store
                    .add_part(3, Object::Upload, "old", &part(n, MIB16))
                    .await
                    .expect("add"));
            }
            let old = store
                .multipart(3, Object::Upload)
                .await
                .expect("read")
                .expect("current");
            let replaced = store
                .begin_multipart(3, Object::Upload, "k1", "new")
                .await
                .expect("begin");
            assert_eq!(replaced, Some(old));
            // Number 1 is the new upload's next, but not under the old id.
            for n in [1, 3] {
                assert!(!store
                    .add_part(3, Object::Upload, "old", &part(n, 1))
                    .await
                    .expect("stale add"));
            }
            assert!(!store
                .end_multipart(3, Object::Upload, "old")
                .await
                .expect("stale end"));
            let new = store
                .multipart(3, Object::Upload)
                .await
                .expect("read")
                .expect("current");
            assert_eq!((new.upload_id.as_str(), new.parts.len()), ("new", 0));
            assert!(store
                .add_part(3, Object::Upload, "new", &part(1, 9))
                .await
                .expect("add"));
            let listed = store.multiparts().await.expect("list");
            let listed: Vec<_> = listed
                .iter()
                .map(|(id, o, m)| (*id, *o, m.upload_id.as_str(), m.committed()))
                .collect();
            assert_eq!(
                listed,
                [
                    (3, Object::Upload, "new", 9),
                    (3, Object::Upgraded, "other", 0)
                ]
            );
        }

        /// Only a request with a record has uploads, and they go with its record (a
        /// purge or not); replacing the record keeps them.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn multipart_uploads_go_with_their_request() {
            let (store, _guard) = fresh().await;
            let err = store
                .begin_multipart(7, Object::Upload, "k", "u")
                .await
                .expect_err("no record");
            assert!(
                matches!(err, StoreError::Multipart(MultipartError::NoRequest(7))),
                "{err}"
            );
            assert_eq!(
                err.to_string(),
                "request 7 does not exist (deleted?): no multipart upload is recorded for it"
            );
            for id in [7, 8] {
                let put = record(id);
                store
                    .update(id, change(move |_| Decision::Put(put)))
                    .await
                    .expect("put");
                for object in [Object::Upload, Object::Upgraded] {
                    store
                        .begin_multipart(id, object, "k", &format!("u-{id}-{object:?}"))
                        .await
                        .expect("begin");
                    assert!(store
                        .add_part(id, object, &format!("u-{id}-{object:?}"), &part(1, 1))
                        .await
                        .expect("add"));
                }
            }
            let mut changed = record(7);
            changed.state = State::Progress;
            store
                .update(7, change(move |_| Decision::Put(changed)))
                .await
                .expect("replace");
            assert_eq!(store.multiparts().await.expect("list").len(), 4);
            store
                .update(7, change(|_| Decision::Delete { purge: false }))
                .await
                .expect("delete");
            let ids: Vec<_> = store
                .multiparts()
                .await
                .expect("list")
                .into_iter()
                .map(|(id, o, _)| (id, o))
                .collect();
            assert_eq!(ids, [(8, Object::Upload), (8, Object::Upgraded)]);
            assert_eq!(
                store.multipart(7, Object::Upload).await.expect("read"),
                None
            );
            assert!(!store
                .add_part(7, Object::Upload, "u-7-Upload", &part(2, 1))
                .await
                .expect("add after delete"));
            store
                .update(8, change(|_| Decision::Delete { purge: true }))
                .await
                .expect("purge");
            assert_eq!(store.multiparts().await.expect("list"), vec![]);
            // A new record under a used id starts without uploads.
            let put = record(8);
            store
                .update(8, change(move |_| Decision::Put(put)))
                .await
                .expect("put");
            assert_eq!(
                store.multipart(8, Object::Upload).await.expect("read"),
                None
            );
            assert_eq!(store.multiparts().await.expect("list"), vec![]);
        }

        /// What is recorded survives a restart, exactly.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn multipart_uploads_survive_a_restart() {
            let (store, guard) = fresh().await;
            let put = record(u64::MAX);
            store
                .update(u64::MAX, change(move |_| Decision::Put(put)))
                .await
                .expect("put");
            store
                .begin_multipart(u64::MAX, Object::Upgraded, "a/b/c", "u")
                .await
                .expect("begin");
            for n in 1..=3 {
                assert!(store
                    .add_part(
                        u64::MAX,
                        Object::Upgraded,
                        "u",
                        &part(n, MIB16 + u64::from(n))
                    )
                    .await
                    .expect("add"));
            }
            let before = store.multiparts().await.expect("list");
            drop(store);
            let store = reopen(&guard).await;
            assert_eq!(store.multiparts().await.expect("list"), before);
            assert!(store
                .add_part(u64::MAX, Object::Upgraded, "u", &part(4, 1))
                .await
                .expect("add after restart"));
        }

        /// Many writers recording the same part at once: exactly one is recorded.
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn multipart_one_of_racing_parts_wins() {
            let (store, _guard) = fresh().await;
            let store = Arc::new(store);
            let put = record(5);
            store
                .update(5, change(move |_| Decision::Put(put)))
                .await
                .expect("put");
            store
                .begin_multipart(5, Object::Upload, "k", "u")
                .await
                .expect("begin");
            for n in 1..=3u32 {
                let tasks: Vec<_> = (0..10u64)
                    .map(|i| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            store
                                .add_part(5, Object::Upload, "u", &part(n, i))
                                .await
                                .expect("add")
                        })
                    })
                    .collect();
                let mut won = 0;
                for t in tasks {
                    won += usize::from(t.await.expect("task"));
                }
                assert_eq!(won, 1, "part {n}");
            }
            let now = store
                .multipart(5, Object::Upload)
                .await
                .expect("read")
                .expect("current");
            let numbers: Vec<u32> = now.parts.iter().map(|p| p.number).collect();
            assert_eq!(numbers, [1, 2, 3]);
        }
    };
}
