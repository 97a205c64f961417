//! The store contract as a test suite that any store can be run against: what the
//! gateway relies on from `get`, `list` and the atomic `update`, whichever backend holds
//! the records, and from the multipart uploads recorded for them (`MultipartStore`).
//! `store_contract!(name, fresh = f, reopen = r, decision = D)` expands to a module of
//! tests; `f` is an async fn returning `(store, guard)`, a fresh empty store and whatever
//! must live as long as it (its database, its data directory); `r` is an async fn taking
//! `&guard` and returning another store on the same data (a restarted node); `D` is the
//! store's `Decision` enum (`Keep`, `Put(Record)`, `Delete { purge }`). The store is only
//! called through method syntax (`get`, `list`, `page`, `count_by_state`, `update`,
//! `upload_path`, `upgraded_path`, and `MultipartStore`'s, imported by the multipart
//! half), so inherent methods and the methods of a trait imported where the macro is
//! invoked both work. The records' tests are here; the multipart uploads' are
//! `multipart_contract!` (tests/common/multipart_contract.rs), expanded in the same module.
//!
//! Timestamps are whole seconds here: PostgreSQL keeps microseconds, the file store
//! nanoseconds, and the contract is about what both keep.

#[allow(unused_macros)]
macro_rules! store_contract {
    ($suite:ident, fresh = $fresh:ident, reopen = $reopen:ident, decision = $decision:ident) => {
        mod $suite {
            // The glob brings in the caller's imports, such as a store trait.
            #[allow(unused_imports)]
            use super::*;
            use super::{$decision as Decision, $fresh as fresh, $reopen as reopen};
            use sftpgate::store::{hash_key, Record, State};
            use std::sync::Arc;
            use time::OffsetDateTime;

            /// A change as the object-safe `Store::update` takes it; stores with a generic
            /// `update` take it too. (The `impl FnOnce` argument is what gives a closure
            /// its higher-ranked signature.)
            fn change<'a>(
                f: impl FnOnce(Option<&Record>) -> Decision + Send + 'a,
            ) -> Box<dyn FnOnce(Option<&Record>) -> Decision + Send + 'a> {
                Box::new(f)
            }

            /// A draft record with whole-second timestamps.
            pub fn record(id: u64) -> Record {
                let now = OffsetDateTime::now_utc()
                    .replace_nanosecond(0)
                    .expect("whole seconds");
                Record {
                    id,
                    filename: "db.dump".into(),
                    state: State::Draft,
                    key_sha256: hash_key(&format!("key-{id}")),
                    ssh_keys: String::new(),
                    expires_at: None,
                    operator_expires_at: None,
                    created_at: now,
                    updated_at: now,
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn records_round_trip_and_list_in_id_order() {
                let (store, _guard) = fresh().await;
                assert_eq!(store.list().await.expect("list"), vec![]);
                let day = time::Duration::DAY;
                let mut wanted = Vec::new();
                for (id, state) in [
                    (7, State::Done),
                    (3, State::Draft),
                    (u64::MAX, State::Cancelled),
                    (1 << 63, State::Progress),
                ] {
                    let mut r = record(id);
                    r.state = state;
                    r.filename = format!("données {id}.sql.gz");
                    r.ssh_keys = format!(
                        "# keys of {id}\r\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{id} a@b\n\n"
                    );
                    r.expires_at = Some(r.created_at + day);
                    r.operator_expires_at = (id == 7).then(|| r.created_at + 2 * day);
                    let put = r.clone();
                    let done = store
                        .update(
                            id,
                            change(move |before| {
                                assert!(before.is_none());
                                Decision::Put(put)
                            }),
                        )
                        .await
                        .expect("put");
                    assert_eq!(done.before, None);
                    assert_eq!(done.after.as_ref(), Some(&r));
                    assert!(!done.removed_files);
                    wanted.push(r);
                }
                for r in &wanted {
                    assert_eq!(store.get(r.id).await.expect("get").as_ref(), Some(r));
                }
                assert_eq!(store.get(4).await.expect("get"), None);
                wanted.sort_by_key(|r| r.id);
                assert_eq!(store.list().await.expect("list"), wanted);
            }

            /// Microseconds (what both stores keep) and key text with what an SQL array
            /// or a text protocol would quote or escape come back exactly, through every
            /// read.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn odd_text_and_microseconds_read_back_exactly() {
                let (store, _guard) = fresh().await;
                let mut r = record(42);
                let micros = time::Duration::microseconds(123_457);
                r.created_at += micros;
                r.updated_at = r.created_at + time::Duration::microseconds(1);
                r.expires_at = Some(r.created_at + time::Duration::HOUR);
                r.operator_expires_at = Some(r.created_at - micros + time::Duration::DAY);
                r.filename = "a \"quoted\", {braced} \\ 'name'.dump".into();
                r.ssh_keys = "NULL\n\"quoted\" {a,b} \\x\r\n\nssh-ed25519 AAAA c,d\n".into();
                let put = r.clone();
                store
                    .update(42, change(move |_| Decision::Put(put)))
                    .await
                    .expect("put");
                assert_eq!(store.get(42).await.expect("get").as_ref(), Some(&r));
                assert_eq!(store.list().await.expect("list"), vec![r.clone()]);
                let kept = store
                    .update(42, change(|_| Decision::Keep))
                    .await
                    .expect("keep");
                assert_eq!(kept.before.as_ref(), Some(&r));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keep_changes_nothing() {
                let (store, _guard) = fresh().await;
                let r = record(11);
                let put = r.clone();
                store
                    .update(11, change(move |_| Decision::Put(put)))
                    .await
                    .expect("put");
                let kept = store
                    .update(
                        11,
                        change(|before| {
                            assert!(before.is_some());
                            Decision::Keep
                        }),
                    )
                    .await
                    .expect("keep");
                assert_eq!(kept.before.as_ref(), Some(&r));
                assert_eq!(kept.after.as_ref(), Some(&r));
                let none = store
                    .update(12, change(|_| Decision::Keep))
                    .await
                    .expect("keep");
                assert_eq!((none.before, none.after), (None, None));
                assert_eq!(store.list().await.expect("list"), vec![r]);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replacing_keeps_files_and_replaces_keys() {
                let (store, _guard) = fresh().await;
                let mut r = record(5);
                r.ssh_keys = "ssh-ed25519 AAAA first\n".into();
                let put = r.clone();
                store
                    .update(5, change(move |_| Decision::Put(put)))
                    .await
                    .expect("put");
                std::fs::write(store.upload_path(5), b"uploaded").expect("upload");
                let mut changed = r.clone();
                changed.state = State::Done;
                changed.ssh_keys = "ssh-ed25519 AAAA second\nssh-rsa AAAA third".into();
                changed.updated_at += time::Duration::seconds(1);
                let put = changed.clone();
                let done = store
                    .update(5, change(move |_| Decision::Put(put)))
                    .await
                    .expect("replace");
                assert_eq!(done.before, Some(r));
                assert_eq!(done.after.as_ref(), Some(&changed));
                assert!(!done.removed_files);
                assert_eq!(
                    std::fs::read(store.upload_path(5)).expect("kept"),
                    b"uploaded"
                );
                let mut no_keys = changed.clone();
                no_keys.ssh_keys.clear();
                let put = no_keys.clone();
                store
                    .update(5, change(move |_| Decision::Put(put)))
                    .await
                    .expect("replace");
                assert_eq!(store.get(5).await.expect("get"), Some(no_keys));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delete_keeps_files_until_purged() {
                let (store, _guard) = fresh().await;
                for id in [1, 2] {
                    let put = record(id);
                    store
                        .update(id, change(move |_| Decision::Put(put)))
                        .await
                        .expect("put");
                    std::fs::write(store.upload_path(id), b"data").expect("upload");
                    std::fs::write(store.upgraded_path(id), b"done").expect("upgraded");
                }
                let kept = store
                    .update(1, change(|_| Decision::Delete { purge: false }))
                    .await
                    .expect("delete");
                assert_eq!(kept.before.map(|r| r.id), Some(1));
                assert_eq!(kept.after, None);
                assert!(!kept.removed_files);
                assert!(store.upload_path(1).exists());
                let purged = store
                    .update(2, change(|_| Decision::Delete { purge: true }))
                    .await
                    .expect("purge");
                assert_eq!(purged.before.map(|r| r.id), Some(2));
                assert!(purged.removed_files);
                assert!(!store.upload_path(2).exists());
                assert!(!store.upgraded_path(2).exists());
                let again = store
                    .update(2, change(|_| Decision::Delete { purge: true }))
                    .await
                    .expect("purge");
                assert_eq!((again.before, again.removed_files), (None, false));
                assert_eq!(store.list().await.expect("list"), vec![]);
                // A purge after a delete without purge removes the files it kept.
                let late = store
                    .update(1, change(|_| Decision::Delete { purge: true }))
                    .await
                    .expect("purge");
                assert_eq!((late.before, late.removed_files), (None, true));
                assert!(!store.upload_path(1).exists());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_new_record_under_a_used_id_starts_without_files() {
                let (store, _guard) = fresh().await;
                let put = record(4);
                store
                    .update(4, change(move |_| Decision::Put(put)))
                    .await
                    .expect("put");
                std::fs::write(store.upload_path(4), b"first customer").expect("upload");
                std::fs::write(store.upgraded_path(4), b"first upgraded").expect("upgraded");
                store
                    .update(4, change(|_| Decision::Delete { purge: false }))
                    .await
                    .expect("delete");
                let put = record(4);
                let fresh_one = store
                    .update(4, change(move |_| Decision::Put(put)))
                    .await
                    .expect("put");
                // Leftovers are audited, not reported: `removed_files` is a purge's.
                assert!(!fresh_one.removed_files);
                assert!(!store.upload_path(4).exists());
                assert!(!store.upgraded_path(4).exists());
                // Its directory is there for the new customer's upload.
                std::fs::write(store.upload_path(4), b"second").expect("upload");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_updates_lose_nothing() {
                const TASKS: u64 = 50;
                let (store, _guard) = fresh().await;
                let store = Arc::new(store);
                let mut first = record(8);
                first.filename = "0".into();
                store
                    .update(8, change(move |_| Decision::Put(first)))
                    .await
                    .expect("put");
                let tasks: Vec<_> = (0..TASKS)
                    .map(|i| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            store
                                .update(
                                    8,
                                    change(move |before| {
                                        let mut r = before.expect("record 8").clone();
                                        let n: u64 = r.filename.parse().expect("a count");
                                        r.filename = (n + 1).to_string();
                                        r.ssh_keys.push_str(&format!("ssh-ed25519 AAAA k{i}\n"));
                                        Decision::Put(r)
                                    }),
                                )
                                .await
                                .expect("update")
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                let last = store.get(8).await.expect("get").expect("record 8");
                assert_eq!(last.filename, TASKS.to_string(), "an update was lost");
                let mut keys: Vec<_> = last.ssh_keys.lines().collect();
                keys.sort_unstable();
                let mut want: Vec<_> = (0..TASKS)
                    .map(|i| format!("ssh-ed25519 AAAA k{i}"))
                    .collect();
                want.sort_unstable();
                assert_eq!(keys, want);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_creates_create_once() {
                let (store, _guard) = fresh().await;
                let store = Arc::new(store);
                let tasks: Vec<_> = (0..20)
                    .map(|i| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let mut r = record(9);
                            r.filename = format!("by-{i}");
                            store
                                .update(
                                    9,
                                    change(move |before| match before {
                                        None => Decision::Put(r),
                                        Some(_) => Decision::Keep,
                                    }),
                                )
                                .await
                                .expect("update")
                        })
                    })
                    .collect();
                let mut created = Vec::new();
                for t in tasks {
                    let done = t.await.expect("task");
                    if done.before.is_none() {
                        created.push(done.after.expect("created"));
                    }
                }
                assert_eq!(created.len(), 1, "created more than once: {created:?}");
                assert_eq!(store.list().await.expect("list"), created);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_record_under_another_id_is_refused() {
                let (store, _guard) = fresh().await;
                let other = record(6);
                assert!(store
                    .update(5, change(move |_| Decision::Put(other)))
                    .await
                    .is_err());
                assert_eq!(store.list().await.expect("list"), vec![]);
            }

            /// `count_by_state` counts every state; `page`: ids above `after` in order, at most `limit`, filtered by state and
            /// `updated_at >= updated_since`; paging with any limit returns each once.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pages_in_id_order_with_filters() {
                use sftpgate::store::PageQuery;
                let (store, _guard) = fresh().await;
                let base = record(1).updated_at;
                let ids = [5u64, 1, 9, 1 << 63, u64::MAX, 3, 12, 7];
                let mut all = Vec::new();
                for (i, id) in ids.into_iter().enumerate() {
                    let mut r = record(id);
                    r.state = if i % 2 == 0 {
                        State::Draft
                    } else {
                        State::Done
                    };
                    r.updated_at = base + time::Duration::minutes(i as i64);
                    let put = r.clone();
                    store
                        .update(id, change(move |_| Decision::Put(put)))
                        .await
                        .expect("put");
                    all.push(r);
                }
                all.sort_by_key(|r| r.id);
                let query = |after, limit, state, updated_since| PageQuery {
                    after,
                    limit,
                    state,
                    updated_since,
                };
                let page = |q: PageQuery| {
                    let store = &store;
                    async move { store.page(&q).await.expect("page") }
                };
                assert_eq!(page(query(0, 100, None, None)).await, all);
                let counts = store.count_by_state().await.expect("count");
                for (state, n) in counts {
                    let wanted = all.iter().filter(|r| r.state == state).count() as u64;
                    assert_eq!(n, wanted, "{state:?}");
                }
                assert_eq!(counts.len(), 6);
                assert_eq!(page(query(0, 3, None, None)).await, all[..3]);
                assert_eq!(page(query(5, 2, None, None)).await, all[3..5]);
                assert_eq!(page(query(12, 10, None, None)).await, all[6..]);
                assert_eq!(page(query(1 << 63, 10, None, None)).await, all[7..]);
                assert_eq!(page(query(u64::MAX, 10, None, None)).await, vec![]);
                for limit in 1..=4 {
                    for (state, since) in [
                        (None, None),
                        (Some(State::Draft), None),
                        (Some(State::Done), Some(base + time::Duration::minutes(3))),
                        (None, Some(base + time::Duration::minutes(5))),
                        (Some(State::Cancelled), None),
                    ] {
                        let wanted: Vec<Record> = all
                            .iter()
                            .filter(|r| state.is_none_or(|s| r.state == s))
                            .filter(|r| since.is_none_or(|t| r.updated_at >= t))
                            .cloned()
                            .collect();
                        let (mut got, mut after) = (Vec::new(), 0);
                        loop {
                            let p = page(query(after, limit, state, since)).await;
                            assert!(p.len() <= limit);
                            got.extend(p.iter().cloned());
                            match p.last() {
                                Some(last) if p.len() == limit => after = last.id,
                                _ => break,
                            }
                        }
                        assert_eq!(got, wanted, "limit {limit}, {state:?}, {since:?}");
                    }
                }
            }

            multipart_contract!();
        }
    };
}
