//! One writer per upload across gateway nodes, as the request loop sees it. Before an
//! upload's file is opened for writing (or truncated, renamed onto, removed), this node must
//! hold the upload's lease; while it is held, every WRITE, fsync and CLOSE of a write handle
//! first asks the hold whether it is still [valid](LeaseHold::valid), and once it is not,
//! nothing more is written or acknowledged through it. How leases are taken, renewed and
//! lost is the caller's business (the gateway's lease keeper); this side never sees it.
//!
//! A hold is released when its last reference is dropped: a write handle keeps one, and
//! drops it only after the handle's file was fsynced, so that the next node to take the
//! lease sees every byte this one acknowledged.

use std::sync::Arc;

/// What a client is told when this node may no longer write for it: resuming through a new
/// connection takes the lease again and starts from what is on disk.
pub const LEASE_LOST: &str = "this node lost the upload's lease; reconnect and resume with put -a";

/// The leases of one request's upload, for the request loop. Both calls may block the
/// calling (blocking) thread, each at most for a bound the implementation sets.
pub trait WriteLeases: Send + Sync + std::fmt::Debug {
    /// Waits while another node holds the upload's lease; `false` if it still did when the
    /// bound passed. An upload session calls it before its first request: a client cut off
    /// on another node reconnects here and resumes from the size it reads, which must be
    /// the size that node leaves once it has written what it had received.
    fn wait_until_free(&self) -> bool;

    /// This node's hold on the upload's lease (shared by whoever holds it on this node).
    /// Waits while another node holds it, if `wait`, at most the bound. `Err`: the reason,
    /// for the client.
    fn acquire(&self, wait: bool) -> Result<Arc<dyn LeaseHold>, String>;
}

/// A held lease. Dropping the last reference releases it.
pub trait LeaseHold: Send + Sync {
    /// Whether writes may still be acknowledged under this lease. Called before every
    /// WRITE, so it must be cheap (no lock, no I/O); once `false`, it stays `false`.
    fn valid(&self) -> bool;
}
