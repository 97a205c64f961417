//! The whole SFTP request loop (`sftpgate::sftp::serve`) over an in-memory stream, serving
//! one file in a temp dir, with every allocation counted: an input whose session holds
//! more than `SFTPGATE_FUZZ_MEM_MB` (default 16) MiB at once is a crash, so memory
//! amplification is found at the input that causes it, not a second later by libFuzzer's
//! RSS thread (`-rss_limit_mb` is the backstop).
//!
//! The input format and the harness are `sftpgate::fuzzing::sftp_replay` (shared with
//! tests/fuzz_regressions.rs, which replays this target's findings). Checked: no panic, no
//! hang (libFuzzer's `-timeout`), and `Replay::check`: the replies are well framed and
//! start with VERSION, and in framed mode every packet gets exactly one reply, in order,
//! under its own id.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sftpgate::fuzzing::sftp_replay::replay;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

struct World {
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    mem_limit: usize,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mem_mb: usize = std::env::var("SFTPGATE_FUZZ_MEM_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16);
        World {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
            dir: tempfile::tempdir().expect("temp dir"),
            mem_limit: mem_mb << 20,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let replayed = w
        .runtime
        .block_on(replay(data, w.dir.path()))
        .expect("the harness failed, or the session task panicked");
    let Some(replayed) = replayed else {
        return;
    };
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    if std::env::var_os("SFTPGATE_FUZZ_SHOW_MEM").is_some() {
        eprintln!("peak {} KiB", peak >> 10);
    }
    assert!(
        peak <= w.mem_limit,
        "the session held {} MiB at once (limit {} MiB)",
        peak >> 20,
        w.mem_limit >> 20
    );
    if let Err(e) = replayed.check() {
        panic!("{e}");
    }
});
