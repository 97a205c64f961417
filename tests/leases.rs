//! Upload leases as the SFTP request loop sees them, over an in-memory stream (no SSH, no
//! network): a WRITE after this node lost the lease is refused and writes nothing; a write
//! open waits boundedly for another node's lease, then fails with a clear message; a new
//! session waits for another node to finish writing before it reads the size to resume
//! from; the lease is given up only after the last write handle's fsync. Other nodes are
//! played through the embedded lease backend the keeper uses.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sha256;
use common::wire::{s, shared_file, status_of, Client, CLOSE, EXTENDED, OPEN, STAT, WRITE};
use sftpgate::leases::{LeaseSettings, Leases, HELD_ELSEWHERE};
use sftpgate::sftp::{LeaseHold, SharedFile, WriteClosed, WriteLeases, LEASE_LOST};
use sftpgate::store::{LeaseStore, MemoryLeases};

const FSETSTAT: u8 = 10;
const WRITE_CREATE_TRUNCATE: u32 = 0x02 | 0x08 | 0x10;
const WRITE_CREATE_APPEND: u32 = 0x02 | 0x04 | 0x08;
const REQUEST: u64 = 1;
const OTHER: &str = "another-node";

/// The message of a STATUS reply.
fn message(reply: &[u8]) -> String {
    let len = u32::from_be_bytes(reply[9..13].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&reply[13..13 + len]).into_owned()
}

async fn open(c: &mut Client, pflags: u32) -> Vec<u8> {
    c.call(
        OPEN,
        &[&s(b"db.dump"), &pflags.to_be_bytes(), &0u32.to_be_bytes()],
    )
    .await
}

async fn write(c: &mut Client, handle: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
    c.call(WRITE, &[&s(handle), &offset.to_be_bytes(), &s(data)])
        .await
}

/// Asserts a reply is a handle and returns it.
fn handle(reply: Vec<u8>) -> Vec<u8> {
    assert_eq!(reply[0], 102, "not a HANDLE: {reply:?}");
    reply[9..].to_vec()
}

fn size_of(stat: &[u8]) -> u64 {
    assert_eq!(stat[0], 105, "not ATTRS: {stat:?}");
    u64::from_be_bytes(stat[9..17].try_into().unwrap())
}

fn upload(dir: &Path, leases: Arc<dyn WriteLeases>) -> SharedFile {
    SharedFile {
        leases: Some(leases),
        ..shared_file("db.dump", &dir.join("upload"), true)
    }
}

fn keeper(backend: &Arc<MemoryLeases>, wait: Duration) -> Leases {
    let settings = LeaseSettings {
        node: "test".into(),
        ttl: Duration::from_secs(15),
        wait,
    };
    Leases::start(backend.clone(), settings)
}

/// The SFTP side's own contract: a hold the test ends, as the keeper ends one whose
/// renewal failed. Acquiring again hands out the same (so, once ended, an ended) hold.
#[derive(Debug, Default)]
struct Ended(AtomicBool);

impl LeaseHold for Ended {
    fn valid(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct OneHold(Arc<Ended>);

impl WriteLeases for OneHold {
    fn wait_until_free(&self) -> bool {
        true
    }

    fn acquire(&self, _wait: bool) -> Result<Arc<dyn LeaseHold>, String> {
        Ok(self.0.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_the_lease_is_lost_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Arc::new(Ended::default());
    let file = upload(dir.path(), Arc::new(OneHold(hold.clone())));
    let path = dir.path().join("upload");
    let (mut c, _) = Client::start_on(file, Arc::default()).await;
    let h = handle(open(&mut c, WRITE_CREATE_TRUNCATE).await);
    let data = vec![7u8; 100_000];
    assert_eq!(status_of(&write(&mut c, &h, 0, &data).await), 0);

    hold.0.store(true, Ordering::Relaxed);
    let before = sha256(&path);
    for offset in [100_000, 0, 50_000] {
        let r = write(&mut c, &h, offset, b"late bytes").await;
        assert_eq!((status_of(&r), message(&r)), (4, LEASE_LOST.to_string()));
    }
    let size = [&1u32.to_be_bytes()[..], &0u64.to_be_bytes()].concat();
    let r = c.call(FSETSTAT, &[&s(&h), &size]).await;
    assert_eq!((status_of(&r), message(&r)), (4, LEASE_LOST.to_string()));
    let r = c.call(EXTENDED, &[&s(b"fsync@openssh.com"), &s(&h)]).await;
    assert_eq!((status_of(&r), message(&r)), (4, LEASE_LOST.to_string()));
    let r = c.call(CLOSE, &[&s(&h)]).await;
    assert_eq!((status_of(&r), message(&r)), (4, LEASE_LOST.to_string()));
    // Nor may a new write handle truncate it.
    let r = open(&mut c, WRITE_CREATE_TRUNCATE).await;
    assert_eq!((status_of(&r), message(&r)), (4, LEASE_LOST.to_string()));
    assert_eq!(sha256(&path), before);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_open_waits_for_another_nodes_lease_then_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryLeases::default());
    let theirs = backend.acquire(REQUEST, OTHER, Duration::from_secs(60));
    let theirs = theirs.await.unwrap().expect("free");
    let leases = keeper(&backend, Duration::from_millis(600));
    let file = upload(dir.path(), leases.for_request(REQUEST));
    let path = dir.path().join("upload");

    let started = Instant::now();
    let (mut c, _) = Client::start_on(file.clone(), Arc::default()).await;
    let r = open(&mut c, WRITE_CREATE_TRUNCATE).await;
    let waited = started.elapsed();
    assert_eq!(
        (status_of(&r), message(&r)),
        (4, HELD_ELSEWHERE.to_string())
    );
    // One bound in all: the session's start waited it out, the open did not wait again.
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(!path.exists(), "a refused open created the file");
    let stats = leases.stats();
    assert_eq!((stats.held, stats.refusals), (0, 1));
    assert!(stats.waits >= 1);

    // Once the other node lets go, a new session writes.
    backend.release(REQUEST, OTHER, theirs).await.unwrap();
    let (mut c, _) = Client::start_on(file, Arc::default()).await;
    let h = handle(open(&mut c, WRITE_CREATE_TRUNCATE).await);
    assert_eq!(status_of(&write(&mut c, &h, 0, b"mine").await), 0);
    assert!(backend.held_elsewhere(REQUEST, OTHER).await.unwrap());
}

/// A client cut off on another node resumes here: its session waits until that node has
/// written what it received and let go, so the size it reads, and appends after, is the
/// one that node left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_through_another_node_starts_from_the_size_the_first_node_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let source: Vec<u8> = (0..3000u32).map(|i| (i * 31 % 251) as u8).collect();
    let path = dir.path().join("upload");
    std::fs::write(&path, &source[..1000]).unwrap();
    let backend = Arc::new(MemoryLeases::default());
    let theirs = backend.acquire(REQUEST, OTHER, Duration::from_secs(60));
    let theirs = theirs.await.unwrap().expect("free");
    // The other node still writes what its client sent, then syncs and lets go.
    let (late, other_backend) = (path.clone(), backend.clone());
    let rest = source[1000..2000].to_vec();
    let other_node = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&late)
            .unwrap();
        std::io::Write::write_all(&mut f, &rest).unwrap();
        f.sync_all().unwrap();
        other_backend.release(REQUEST, OTHER, theirs).await.unwrap();
    });
    let leases = keeper(&backend, Duration::from_secs(10));
    let (mut c, _) = Client::start_on(
        upload(dir.path(), leases.for_request(REQUEST)),
        Arc::default(),
    )
    .await;
    let resume_at = size_of(&c.call(STAT, &[&s(b"db.dump")]).await);
    assert_eq!(resume_at, 2000);
    other_node.await.unwrap();
    let h = handle(open(&mut c, WRITE_CREATE_APPEND).await);
    let r = write(&mut c, &h, resume_at, &source[resume_at as usize..]).await;
    assert_eq!(status_of(&r), 0);
    assert_eq!(status_of(&c.call(CLOSE, &[&s(&h)]).await), 0);
    assert_eq!(std::fs::read(&path).unwrap(), source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_released_after_the_last_write_handle_is_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryLeases::default());
    let leases = keeper(&backend, Duration::from_millis(100));
    // Called by the request loop once a write handle's file was fsynced.
    let held_at_close = Arc::new(Mutex::new(Vec::new()));
    let closed: WriteClosed = {
        let (backend, seen) = (backend.clone(), held_at_close.clone());
        Arc::new(move |_| {
            // Time for a release spawned too early to have landed.
            std::thread::sleep(Duration::from_millis(100));
            let held = futures::executor::block_on(backend.held_elsewhere(REQUEST, OTHER));
            seen.lock().unwrap().push(held.unwrap());
            Ok(())
        })
    };
    let file = upload(dir.path(), leases.for_request(REQUEST));
    let (mut c, _) = Client::start_watched(file, Arc::default(), Some(closed)).await;
    let first = handle(open(&mut c, WRITE_CREATE_TRUNCATE).await);
    let second = handle(open(&mut c, 0x02).await);
    assert_eq!(status_of(&write(&mut c, &first, 0, b"abc").await), 0);
    assert_eq!(status_of(&write(&mut c, &second, 3, b"def").await), 0);
    // One lease for both handles.
    assert_eq!(leases.stats().held, 1);

    assert_eq!(status_of(&c.call(CLOSE, &[&s(&first)]).await), 0);
    let ttl = Duration::from_secs(60);
    assert_eq!(backend.acquire(REQUEST, OTHER, ttl).await.unwrap(), None);
    assert_eq!(status_of(&c.call(CLOSE, &[&s(&second)]).await), 0);
    assert_eq!(*held_at_close.lock().unwrap(), [true, true]);
    let started = Instant::now();
    while backend
        .acquire(REQUEST, OTHER, ttl)
        .await
        .unwrap()
        .is_none()
    {
        assert!(started.elapsed() < Duration::from_secs(5), "never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(leases.stats().held, 0);
    assert_eq!(std::fs::read(dir.path().join("upload")).unwrap(), b"abcdef");
}
