//! One input of the `sftp_session` fuzz target, run: the input decoded into a client
//! stream, the whole SFTP request loop ([`serve`]) run over an in-memory stream against one
//! file in a directory, and what the client got back. The fuzz target and the replay of
//! its findings (tests/fuzz_regressions.rs) both run inputs through this, so a finding is
//! replayed exactly as it was found. Heap accounting stays with each binary (a global
//! allocator is per binary): the caller reads its counters around [`replay`].
//!
//! Input: one flags byte, then the packets. Flags: bit 0 the file is writable (draft),
//! bit 1 the rest is the raw client stream (u32 lengths, as on the wire: lying lengths,
//! oversized packets, cut packets), otherwise a sequence of u16-length-prefixed packet
//! bodies that the harness frames; bit 2 a lazy client (a 4 KiB window, reads replies only
//! after a delay); bits 3-4 the file's size (0, 10 bytes, 64 KiB, 4 MiB sparse); bit 5 a
//! `.filepart` name is allowed. The harness sends INIT first.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sftp::{
    serve, Activity, IoInbound, IoOutbound, LocalStorage, SessionSummary, SharedFile,
};

/// The file the session serves, under this name.
const NAME: &str = "db.dump";

/// What one replay saw.
#[derive(Debug)]
pub struct Replay {
    /// The head (first 16 bytes at most) of each reply, in order: the data of many READs
    /// would be the client's memory, not the session's.
    pub replies: Vec<Vec<u8>>,
    /// The reply stream ended inside a reply.
    pub cut_short: bool,
    /// The packet bodies sent after INIT (framed mode); `None` in raw mode.
    pub packets: Option<Vec<Vec<u8>>>,
    pub summary: SessionSummary,
    pub elapsed: Duration,
}

impl Replay {
    /// The target's invariants: replies well framed and VERSION first; in framed mode one
    /// reply per packet, in order, under its own id. A session whose client has not read
    /// its replies for a few seconds after its input ended may drop them (`serve`'s drain
    /// timeouts), so only a replay that took under 4 s is held to one reply per packet: on
    /// a machine loaded enough to stall this in-memory client that long it is not.
    pub fn check(&self) -> Result<(), String> {
        if self.cut_short {
            return Err("a reply cut short".into());
        }
        if self.replies.iter().any(|r| r.is_empty()) {
            return Err("an empty reply".into());
        }
        if self.replies.first().map(|r| r[0]) != Some(2) {
            return Err(format!(
                "no VERSION first ({} replies in {:?}, {:?})",
                self.replies.len(),
                self.elapsed,
                self.summary
            ));
        }
        let Some(packets) = &self.packets else {
            return Ok(());
        };
        if self.elapsed >= Duration::from_secs(4) {
            return Ok(());
        }
        if self.replies.len() != 1 + packets.len() {
            return Err(format!(
                "not one reply per packet: {} replies to {} packets",
                self.replies.len() - 1,
                packets.len()
            ));
        }
        for (body, reply) in packets.iter().zip(&self.replies[1..]) {
            if body.len() >= 5 && body[0] != 1 {
                if reply.len() < 5 {
                    return Err("a reply without an id".into());
                }
                if reply[1..5] != body[1..5] {
                    return Err("a reply under another id".into());
                }
            }
        }
        Ok(())
    }
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// The packet bodies of a framed-mode input (a last length longer than what is left
/// takes what is left).
fn packets(mut rest: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while rest.len() >= 2 {
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let body = &rest[2..(2 + n).min(rest.len())];
        out.push(body.to_vec());
        rest = &rest[2 + body.len()..];
    }
    out
}

/// Runs `input` against a file `upload` (and maybe `upload.filepart`) in `dir`, which it
/// creates afresh. `None` for an empty input. Errors are only the harness's own (the
/// file could not be made).
pub async fn replay(input: &[u8], dir: &Path) -> std::io::Result<Option<Replay>> {
    let Some((&flags, rest)) = input.split_first() else {
        return Ok(None);
    };
    let (writable, raw, lazy) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let size: u64 = [0, 10, 64 << 10, 4 << 20][usize::from((flags >> 3) & 3)];
    let path = dir.join("upload");
    let partial = dir.join("upload.filepart");
    let file = std::fs::File::create(&path)?;
    std::io::Write::write_all(&mut &file, &b"0123456789"[..size.min(10) as usize])?;
    file.set_len(size)?;
    drop(file);
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let with_partial = flags & 32 != 0;
    let shared = SharedFile {
        name: NAME.into(),
        storage: std::sync::Arc::new(LocalStorage {
            path,
            partial: with_partial.then_some(partial),
        }),
        writable,
        max_size: Some(8 << 20),
        partial: with_partial,
        leases: None,
    };

    let mut stream = framed(&[1, 0, 0, 0, 3]);
    let bodies = if raw {
        stream.extend_from_slice(rest);
        None
    } else {
        let bodies = packets(rest);
        for b in &bodies {
            stream.extend(framed(b));
        }
        Some(bodies)
    };

    let started = Instant::now();
    let (client, server) = tokio::io::duplex(if lazy { 4096 } else { 1 << 20 });
    let (r, w) = tokio::io::split(server);
    let session = tokio::spawn(serve(
        shared,
        Arc::new(Activity::default()),
        None,
        IoInbound(r),
        IoOutbound(w),
        std::future::pending(),
    ));
    let (mut cr, mut cw) = tokio::io::split(client);
    let send = async move {
        // The session may end before it has read everything (a fatal packet): not an error.
        let _ = cw.write_all(&stream).await;
        let _ = cw.shutdown().await;
    };
    let recv = async move {
        if lazy {
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
        }
        let mut heads: Vec<Vec<u8>> = Vec::new();
        let mut len = [0u8; 4];
        loop {
            if cr.read_exact(&mut len[..1]).await.is_err() {
                return (heads, false);
            }
            if cr.read_exact(&mut len[1..]).await.is_err() {
                return (heads, true);
            }
            let n = u32::from_be_bytes(len) as usize;
            let mut head = vec![0u8; n.min(16)];
            if cr.read_exact(&mut head).await.is_err() {
                return (heads, true);
            }
            let rest = (n - head.len()) as u64;
            let copied = tokio::io::copy(&mut (&mut cr).take(rest), &mut tokio::io::sink()).await;
            if copied.map_or(true, |c| c != rest) {
                return (heads, true);
            }
            heads.push(head);
        }
    };
    let ((), (replies, cut_short)) = tokio::join!(send, recv);
    let summary = session.await.map_err(std::io::Error::other)?;
    Ok(Some(Replay {
        replies,
        cut_short,
        packets: bodies,
        summary,
        elapsed: started.elapsed(),
    }))
}
