//! Reads of an object as an SFTP file: ranged GETs of fixed-size chunks, the next ones
//! fetched while the current one is sent, so that a client's pipelined READs (OpenSSH's 64
//! of 255 KiB) are answered from memory instead of one round trip each. What a reader
//! holds is bounded twice: [`AHEAD`] chunks per handle, and a process-wide count of
//! chunks ([`Ctx::read_chunks`]) that a prefetch never waits for.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use super::{wait, Ctx};
use crate::sftp::storage::{Body, Meta};

/// The size of one ranged GET.
pub const CHUNK: u64 = 4 << 20;
/// Chunks fetched past the one being read.
pub const AHEAD: u64 = 3;

type Fetch = JoinHandle<Result<(Bytes, OwnedSemaphorePermit), String>>;

enum Chunk {
    Fetching(Fetch),
    Ready(Bytes, #[allow(dead_code)] OwnedSemaphorePermit),
}

pub struct ObjectBody {
    ctx: Arc<Ctx>,
    key: String,
    meta: Meta,
    /// Chunks by index, in order, starting at `first`.
    window: Mutex<(u64, VecDeque<Chunk>)>,
}

impl ObjectBody {
    pub fn new(ctx: Arc<Ctx>, key: String, size: u64, modified: SystemTime) -> ObjectBody {
        ObjectBody {
            ctx,
            key,
            meta: Meta {
                size,
                accessed: modified,
                modified,
            },
            window: Mutex::new((0, VecDeque::new())),
        }
    }

    fn fetch(&self, index: u64, permit: OwnedSemaphorePermit) -> Fetch {
        let start = index * CHUNK;
        let end = (start + CHUNK).min(self.meta.size);
        let (s3, key) = (self.ctx.s3.clone(), self.key.clone());
        self.ctx.rt.spawn(async move {
            let data = s3
                .get_range(&key, start..end)
                .await
                .map_err(|e| e.to_string())?;
            if data.len() as u64 != end - start {
                return Err(format!(
                    "the object changed while it was read ({} bytes where {} were expected)",
                    data.len(),
                    end - start
                ));
            }
            Ok((data, permit))
        })
    }

    /// The bytes of chunk `index`, fetching it (and the ones after it) as needed.
    fn chunk(&self, index: u64) -> io::Result<Bytes> {
        let last = self.meta.size.saturating_sub(1) / CHUNK;
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (first, chunks) = &mut *w;
        // A read before the window, or past it: start the window here.
        if index < *first || index >= *first + chunks.len() as u64 + AHEAD {
            for c in chunks.drain(..) {
                if let Chunk::Fetching(f) = c {
                    f.abort();
                }
            }
            *first = index;
        }
        // Chunks before this one were sent: let them go.
        while *first < index {
            if let Some(Chunk::Fetching(f)) = chunks.pop_front() {
                f.abort();
            }
            *first += 1;
        }
        // The one needed waits for memory; the ones ahead are fetched only if there is some.
        while (chunks.len() as u64) <= AHEAD && *first + (chunks.len() as u64) <= last {
            let next = *first + chunks.len() as u64;
            let permit = if chunks.is_empty() {
                let sem = self.ctx.read_chunks.clone();
                wait(&self.ctx.rt, async move { sem.acquire_owned().await })?
                    .map_err(|_| io::Error::other("the gateway is shutting down"))?
            } else {
                match self.ctx.read_chunks.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => break,
                }
            };
            chunks.push_back(Chunk::Fetching(self.fetch(next, permit)));
        }
        if matches!(chunks.front(), Some(Chunk::Fetching(_))) {
            if let Some(Chunk::Fetching(f)) = chunks.pop_front() {
                match wait(&self.ctx.rt, f)? {
                    Ok(Ok((data, permit))) => chunks.push_front(Chunk::Ready(data, permit)),
                    // Not kept: the next read of this chunk asks again.
                    Ok(Err(e)) => return Err(io::Error::other(e)),
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
            }
        }
        match chunks.front() {
            Some(Chunk::Ready(data, _)) => Ok(data.clone()),
            _ => Err(io::Error::other("read past the end of the object")),
        }
    }
}

impl Body for ObjectBody {
    fn meta(&self) -> io::Result<Meta> {
        Ok(self.meta)
    }

    fn read_into(&self, buf: &mut BytesMut, offset: u64, len: usize) -> io::Result<()> {
        let end = offset.saturating_add(len as u64).min(self.meta.size);
        let mut at = offset;
        while at < end {
            let data = self.chunk(at / CHUNK)?;
            let from = (at % CHUNK) as usize;
            let to = data.len().min(from + (end - at) as usize);
            buf.extend_from_slice(&data[from..to]);
            at += (to - from) as u64;
        }
        Ok(())
    }

    fn write(&self, _: Option<u64>, _: &[Bytes]) -> io::Result<()> {
        Err(io::ErrorKind::PermissionDenied.into())
    }

    fn set_attrs(&self, _: Option<u64>, _: Option<(SystemTime, SystemTime)>) -> io::Result<()> {
        Err(io::ErrorKind::PermissionDenied.into())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn finish(&self) -> io::Result<u64> {
        Ok(self.meta.size)
    }
}

impl Drop for ObjectBody {
    fn drop(&mut self) {
        let w = self.window.get_mut().unwrap_or_else(|p| p.into_inner());
        for c in w.1.drain(..) {
            if let Chunk::Fetching(f) = c {
                f.abort();
            }
        }
    }
}
