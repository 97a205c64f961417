//! The whole SFTP request loop (`sftpgate::sftp::serve`) over an in-memory stream, serving
//! one file in a temp dir, with every allocation counted: an input whose session holds
//! more than `SFTPGATE_FUZZ_MEM_MB` (default 16) MiB at once is a crash, so memory
//! amplification is found at the input that causes it, not a second later by libFuzzer's
//! RSS thread (`-rss_limit_mb` is the backstop).
//!
//! Input: one flags byte, then the packets. Flags: bit 0 the file is writable (draft),
//! bit 1 the rest is the raw client stream (u32 lengths, as on the wire: lying lengths,
//! oversized packets, cut packets), otherwise a sequence of u16-length-prefixed packet
//! bodies that the harness frames; bit 2 a lazy client (a 4 KiB window, reads replies only
//! after a delay); bits 3-4 the file's size (0, 10 bytes, 64 KiB, 4 MiB sparse); bit 5 a
//! `.filepart` name is allowed. The harness sends INIT first.
//!
//! Checked: no panic, no hang (libFuzzer's `-timeout`), the replies are well framed and
//! start with VERSION, and in framed mode every packet gets exactly one reply, in order,
//! under its own id.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sftpgate::fuzzing::{serve, Activity, IoInbound, IoOutbound, SharedFile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

const NAME: &str = "db.dump";

struct World {
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    path: PathBuf,
    partial: PathBuf,
    mem_limit: usize,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
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
            path: dir.path().join("upload"),
            partial: dir.path().join("upload.filepart"),
            _dir: dir,
            mem_limit: mem_mb << 20,
        }
    })
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// The packet bodies of a framed-mode input.
fn packets(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while rest.len() >= 2 {
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let body = &rest[2..(2 + n).min(rest.len())];
        out.push(body);
        rest = &rest[2 + body.len()..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    let (writable, raw, lazy) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let size: u64 = [0, 10, 64 << 10, 4 << 20][usize::from((flags >> 3) & 3)];
    let file = std::fs::File::create(&w.path).expect("create");
    std::io::Write::write_all(&mut &file, &b"0123456789"[..size.min(10) as usize]).expect("write");
    file.set_len(size).expect("set_len");
    drop(file);
    let _ = std::fs::remove_file(&w.partial);
    let shared = SharedFile {
        name: NAME.into(),
        path: w.path.clone(),
        writable,
        max_size: Some(8 << 20),
        partial_path: (flags & 32 != 0).then(|| w.partial.clone()),
        leases: None,
    };

    let mut stream = framed(&[1, 0, 0, 0, 3]);
    let bodies = if raw {
        stream.extend_from_slice(rest);
        Vec::new()
    } else {
        let bodies = packets(rest);
        for b in &bodies {
            stream.extend(framed(b));
        }
        bodies
    };

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let output = w.runtime.block_on(async move {
        let (client, server) = tokio::io::duplex(if lazy { 4096 } else { 1 << 20 });
        let (r, wr) = tokio::io::split(server);
        let session = tokio::spawn(serve(
            shared,
            Arc::new(Activity::default()),
            None,
            IoInbound(r),
            IoOutbound(wr),
            std::future::pending(),
        ));
        let (mut cr, mut cw) = tokio::io::split(client);
        let send = async move {
            let _ = cw.write_all(&stream).await;
            let _ = cw.shutdown().await;
        };
        let recv = async move {
            if lazy {
                for _ in 0..64 {
                    tokio::task::yield_now().await;
                }
            }
            // Only each reply's head is kept (and the framing checked as it comes): the
            // data of many READs would be the client's memory, not the session's.
            let mut heads: Vec<Vec<u8>> = Vec::new();
            let mut len = [0u8; 4];
            let mut cut_short = false;
            loop {
                match cr.read_exact(&mut len[..1]).await {
                    Ok(_) => {}
                    Err(_) => break,
                }
                if cr.read_exact(&mut len[1..]).await.is_err() {
                    cut_short = true;
                    break;
                }
                let n = u32::from_be_bytes(len) as usize;
                let mut head = vec![0u8; n.min(16)];
                if cr.read_exact(&mut head).await.is_err() {
                    cut_short = true;
                    break;
                }
                let rest = (n - head.len()) as u64;
                let copied =
                    tokio::io::copy(&mut (&mut cr).take(rest), &mut tokio::io::sink()).await;
                if copied.map_or(true, |c| c != rest) {
                    cut_short = true;
                    break;
                }
                heads.push(head);
            }
            (heads, cut_short)
        };
        let ((), out) = tokio::join!(send, recv);
        let summary = session.await.expect("the session task panicked");
        (out, summary)
    });
    let (output, summary) = output;
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

    // The replies: well framed, VERSION first.
    let (replies, cut_short) = output;
    assert!(!cut_short, "a reply cut short");
    assert!(replies.iter().all(|r| !r.is_empty()), "an empty reply");
    assert_eq!(
        replies.first().map(|r| r[0]),
        Some(2),
        "no VERSION first ({} replies in {:?}, {summary:?})",
        replies.len(),
        started.elapsed()
    );
    // A session whose client has not read its replies for a few seconds after its input
    // ended may drop them (sftp::serve's drain timeouts): only on a machine loaded enough
    // to stall this in-memory client that long is that not one reply per packet.
    let stalled = started.elapsed() >= std::time::Duration::from_secs(4);
    if !raw && !stalled {
        assert_eq!(replies.len(), 1 + bodies.len(), "not one reply per packet");
        for (body, reply) in bodies.iter().zip(&replies[1..]) {
            if body.len() >= 5 && body[0] != 1 {
                assert!(reply.len() >= 5, "a reply without an id");
                assert_eq!(reply[1..5], body[1..5], "a reply under another id");
            }
        }
    }
});
