//! Inputs found by the `sftp_session` fuzz target (fuzz/fuzz_targets/sftp_session.rs),
//! replayed through that target's own harness (`sftpgate::fuzzing::sftp_replay`: in
//! memory, allocations counted here as there), so each stays fixed. The files are in
//! tests/fuzz_regressions/sftp_session/, in the target's input format.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use sftpgate::fuzzing::sftp_replay::{self, Replay};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak memory is process-wide: one replay at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `input` replayed through the fuzz target's own harness, with the session's peak heap.
async fn replay(input: &[u8], dir: &Path) -> (Replay, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = sftp_replay::replay(input, dir)
        .await
        .expect("the harness failed, or the session panicked")
        .expect("an empty input");
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// The target's check, and one reply per packet however long the replay took (these
/// inputs are quick: a slow machine must not excuse a lost reply here).
fn one_reply_each(r: &Replay) -> Result<(), String> {
    r.check()?;
    let sent = r.packets.as_ref().map_or(0, Vec::len);
    match r.replies.len().checked_sub(1) {
        Some(n) if n == sent => Ok(()),
        n => Err(format!("{n:?} replies to {sent} packets")),
    }
}

fn input(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions/sftp_session")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// 400 pipelined 261120-byte READs of a 4 MiB file, then a WRITE to a bogus handle,
/// from a client behind a 4 KiB window (issue 12, item 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_then_a_write_stay_under_16_mib() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (r, peak) = replay(&input("amplification-400-reads-then-write"), dir.path()).await;
    assert!(peak <= 16 << 20, "the session held {} KiB", peak >> 10);
    // Every READ answered with data, then the WRITE refused.
    assert_eq!(r.replies.len(), 1 + 402);
}

/// A lazy client's session ended with replies still queued: once, under the fuzzer, the
/// last of them never reached the client. Replayed many times, every packet must be
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_packet_is_answered_when_the_client_reads_late() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = input("lost-replies-lazy-client");
    for round in 0..200 {
        let (r, peak) = replay(&data, dir.path()).await;
        assert_eq!(one_reply_each(&r), Ok(()), "round {round}");
        assert!(peak <= 16 << 20, "round {round}: {} KiB", peak >> 10);
    }
}

/// Quick sessions whose request loop filled and closed the reply queue while the writer
/// was looking at it: the writer took the queue for closed and empty, and the client got
/// no reply at all (found twice by the fuzzer, 1 in some thousands of inputs). Replayed
/// many times, every packet must be answered, VERSION first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_session_gets_every_reply() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    for name in ["no-reply-at-all", "quick-session-all-replies-lost"] {
        let data = input(name);
        for round in 0..300 {
            let (r, _) = replay(&data, dir.path()).await;
            assert_eq!(one_reply_each(&r), Ok(()), "{name} {round}");
        }
    }
}
