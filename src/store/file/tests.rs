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
