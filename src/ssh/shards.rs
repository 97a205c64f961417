//! The threads SSH connections run on: one single-threaded tokio runtime per core, each
//! connection on the least busy one for its whole life.
//!
//! On tokio's shared multi-threaded runtime, every packet that woke one worker also woke
//! an idle sibling to look for work to steal, which found none and went back to sleep: a
//! futex pair and a context switch per arriving packet. A connection's work is one chain
//! (socket, russh's session loop, the SFTP pump) that gains nothing from moving between
//! cores, so each connection now lives on one thread, its socket registered there, and
//! only its blocking file work leaves it (that runtime's own blocking pool). Uploads: futex
//! calls per 32 KiB 0.54 -> 0.32, context switches 0.85 -> 0.68, wake-ups 0.30 -> 0.17,
//! server CPU 0-12% less; downloads and the throughput of 50 concurrent uploads unchanged
//! (bench/RESULTS.md, issue 17, "Levers tried").
//!
//! Everything else (the admin API, the store's and the sweeper's loops) stays on the main
//! runtime. Handles on a shard outlive nothing: the shards stop once the server and every
//! connection on them are gone.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Shards {
    shards: Vec<Shard>,
    /// Cancelled when the last holder drops the shards: each thread then leaves its loop.
    stop: CancellationToken,
}

struct Shard {
    handle: Handle,
    /// Connections living on this shard now.
    load: Arc<AtomicUsize>,
}

/// How long a stopping shard waits for blocking work still running (a file being synced);
/// the process is ending by then.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Shards {
    /// `count` runtimes (at least one), each with up to `max_blocking` threads for
    /// blocking work, started on demand and ended after tokio's idle time.
    pub fn start(count: usize, max_blocking: usize) -> io::Result<Shards> {
        let stop = CancellationToken::new();
        let mut shards = Vec::new();
        for n in 0..count.max(1) {
            let rt = Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(max_blocking)
                .thread_name(format!("ssh-{n}-blocking"))
                .build()?;
            let handle = rt.handle().clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("ssh-{n}"))
                .spawn(move || {
                    rt.block_on(stop.cancelled());
                    rt.shutdown_timeout(STOP_GRACE);
                })?;
            shards.push(Shard {
                handle,
                load: Arc::default(),
            });
        }
        Ok(Shards { shards, stop })
    }

    /// Runs `connection` on the shard with the fewest connections, tracked by `tracker`.
    /// `connection` is made on that shard, so that the socket it takes is registered with
    /// that shard's reactor: its readiness wakes that thread and no other.
    pub fn spawn<F, Fut>(&self, tracker: &TaskTracker, connection: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static + Send,
    {
        let Some(shard) = self
            .shards
            .iter()
            .min_by_key(|s| s.load.load(Ordering::Relaxed))
        else {
            return; // `start` makes at least one
        };
        let load = shard.load.clone();
        load.fetch_add(1, Ordering::Relaxed);
        tracker.spawn_on(
            async move {
                connection().await;
                load.fetch_sub(1, Ordering::Relaxed);
            },
            &shard.handle,
        );
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(shards: &Shards) -> Vec<usize> {
        let load = |s: &Shard| s.load.load(Ordering::Relaxed);
        shards.shards.iter().map(load).collect()
    }

    #[test]
    fn connections_go_to_the_least_busy_shard_and_stay_on_its_thread() {
        let shards = Shards::start(2, 4).unwrap();
        let tracker = TaskTracker::new();
        let names = Arc::new(std::sync::Mutex::new(Vec::new()));
        // Shard 0 already carries one connection (counted, not run). Each connection below
        // lasts until its sender is dropped.
        shards.shards[0].load.store(1, Ordering::Relaxed);
        let mut ends = Vec::new();
        for _ in 0..3 {
            let (end, ended) = tokio::sync::oneshot::channel::<()>();
            ends.push(end);
            let names = names.clone();
            shards.spawn(&tracker, move || async move {
                let me = std::thread::current().name().unwrap_or("").to_string();
                names.lock().unwrap().push(me);
                let _ = ended.await;
            });
        }
        // The loads were 1/0, 1/1, 2/1 at each choice (taking turns would give 3/1).
        assert_eq!(loads(&shards), vec![2, 2]);
        drop(ends); // the connections end
        tracker.close();
        let main = Builder::new_current_thread().enable_all().build().unwrap();
        main.block_on(tracker.wait());
        let mut seen = names.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, vec!["ssh-0", "ssh-1", "ssh-1"]);
        // Each ended connection is no longer counted.
        assert_eq!(loads(&shards), vec![1, 0]);
    }
}
