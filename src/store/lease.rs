//! Upload leases: at most one gateway node writes a request's upload at a time. A lease is
//! a row per request naming the node that holds it, a fencing number and an expiry kept by
//! the backend's clock; a node renews its leases on a timer and loses them when it stops.
//!
//! Leases, not database session advisory locks: an advisory lock pins one database
//! connection for as long as it is held (and is silently shared or lost behind a
//! transaction-pooling PgBouncer), while a lease is a plain row any connection can renew.
//! The fencing number changes with every acquisition, so a node's late renewal or release
//! of a lease it has already lost (a slow network, a paused process) can never touch the
//! lease another node took since: every renew and release names the fence it was given.
//!
//! [`MemoryLeases`] is the embedded backend, for one node (it is always granted, but keeps
//! the same rules, fences and expiry, so the node's logic is exercised the same way). A
//! database backend is expected to look like this (PostgreSQL, its own clock throughout so
//! that the nodes' clocks never matter):
//!
//! ```sql
//! CREATE SEQUENCE lease_fence;
//! CREATE TABLE leases (
//!     request_id bigint PRIMARY KEY,
//!     node       text        NOT NULL,
//!     fence      bigint      NOT NULL,
//!     expires_at timestamptz NOT NULL
//! );
//! -- acquire($1 request, $2 node, $3 ttl): a fence, or no row while another node holds it.
//! INSERT INTO leases (request_id, node, fence, expires_at)
//!      VALUES ($1, $2, nextval('lease_fence'), now() + $3)
//! ON CONFLICT (request_id) DO UPDATE
//!         SET node = EXCLUDED.node, fence = EXCLUDED.fence, expires_at = EXCLUDED.expires_at
//!       WHERE leases.expires_at < now() OR leases.node = EXCLUDED.node
//! RETURNING fence;
//! -- renew($1 node, $2 request ids, $3 fences, $4 ttl): the ids still held, in one statement.
//! UPDATE leases SET expires_at = now() + $4
//!   FROM unnest($2::bigint[], $3::bigint[]) AS mine(request_id, fence)
//!  WHERE leases.request_id = mine.request_id AND leases.fence = mine.fence AND leases.node = $1
//! RETURNING leases.request_id;
//! -- release($1 request, $2 node, $3 fence)
//! DELETE FROM leases WHERE request_id = $1 AND node = $2 AND fence = $3;
//! -- held_elsewhere($1 request, $2 node)
//! SELECT EXISTS (SELECT 1 FROM leases
//!                 WHERE request_id = $1 AND node <> $2 AND expires_at > now());
//! ```
//!
//! Each is one autocommit statement (no transaction spans a round trip), so they work
//! through PgBouncer in transaction mode. `now()` is the transaction's start, which for
//! one statement is when the database began it: never earlier than the node's own start of
//! the call, which is what the node's local deadline counts from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A lease's fencing number: unique per acquisition, growing (a `bigint` in a database).
pub type Fence = u64;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The backend could not be reached or did not answer; nothing is known of the lease.
    #[error("the lease store is unavailable: {0}")]
    Unavailable(String),
}

/// Where leases live. Every call is one short round trip; none waits for a lease to become
/// free (the node's keeper polls). Object safe, as [`Store`](super::Store).
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease of `request` for `node` for `ttl`, with a new fence: granted when
    /// nobody holds it, its holder let it expire, or `node` holds it already (a node that
    /// asks again gets a new fence, and its old one stops working). `None` while another
    /// node holds it.
    async fn acquire(
        &self,
        request: u64,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Fence>, LeaseError>;

    /// Extends each `(request, fence)` that `node` still holds under that fence to `ttl`
    /// from now, in one call. Answers each request with whether it was renewed; one
    /// released, taken over or acquired again since is not.
    async fn renew(
        &self,
        node: &str,
        leases: &[(u64, Fence)],
        ttl: Duration,
    ) -> Result<Vec<(u64, bool)>, LeaseError>;

    /// Gives the lease up, if `node` still holds it under `fence` (otherwise nothing).
    async fn release(&self, request: u64, node: &str, fence: Fence) -> Result<(), LeaseError>;

    /// Whether a node other than `node` holds the lease of `request` now.
    async fn held_elsewhere(&self, request: u64, node: &str) -> Result<bool, LeaseError>;
}

struct Row {
    node: String,
    fence: Fence,
    expires: Instant,
}

/// Leases in this process's memory: the embedded backend, for a gateway that is alone.
/// Any number of node names may use it, which is how the keeper's tests play other nodes.
#[derive(Default)]
pub struct MemoryLeases {
    rows: Mutex<HashMap<u64, Row>>,
    fences: AtomicU64,
}

impl MemoryLeases {
    fn rows(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Row>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl LeaseStore for MemoryLeases {
    async fn acquire(
        &self,
        request: u64,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Fence>, LeaseError> {
        let now = Instant::now();
        let mut rows = self.rows();
        if rows
            .get(&request)
            .is_some_and(|r| r.node != node && r.expires > now)
        {
            return Ok(None);
        }
        let fence = self.fences.fetch_add(1, Ordering::Relaxed) + 1;
        rows.insert(
            request,
            Row {
                node: node.to_string(),
                fence,
                expires: now + ttl,
            },
        );
        Ok(Some(fence))
    }

    async fn renew(
        &self,
        node: &str,
        leases: &[(u64, Fence)],
        ttl: Duration,
    ) -> Result<Vec<(u64, bool)>, LeaseError> {
        let now = Instant::now();
        let mut rows = self.rows();
        Ok(leases
            .iter()
            .map(|&(request, fence)| {
                let row = rows
                    .get_mut(&request)
                    .filter(|r| r.node == node && r.fence == fence);
                let renewed = row.is_some();
                if let Some(r) = row {
                    r.expires = now + ttl;
                }
                (request, renewed)
            })
            .collect())
    }

    async fn release(&self, request: u64, node: &str, fence: Fence) -> Result<(), LeaseError> {
        let mut rows = self.rows();
        if rows
            .get(&request)
            .is_some_and(|r| r.node == node && r.fence == fence)
        {
            rows.remove(&request);
        }
        Ok(())
    }

    async fn held_elsewhere(&self, request: u64, node: &str) -> Result<bool, LeaseError> {
        let now = Instant::now();
        Ok(self
            .rows()
            .get(&request)
            .is_some_and(|r| r.node != node && r.expires > now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn one_node_at_a_time_and_stale_fences_do_nothing() {
        let m = MemoryLeases::default();
        let a1 = m.acquire(7, "a", TTL).await.unwrap().expect("free");
        assert_eq!(m.acquire(7, "b", TTL).await.unwrap(), None);
        assert!(m.held_elsewhere(7, "b").await.unwrap());
        assert!(!m.held_elsewhere(7, "a").await.unwrap());
        // Asking again gives a new fence; the old one renews and releases nothing.
        let a2 = m.acquire(7, "a", TTL).await.unwrap().expect("own lease");
        assert!(a2 > a1);
        assert_eq!(
            m.renew("a", &[(7, a1), (8, 1)], TTL).await.unwrap(),
            [(7, false), (8, false)]
        );
        m.release(7, "a", a1).await.unwrap();
        assert!(m.held_elsewhere(7, "b").await.unwrap());
        assert_eq!(m.renew("b", &[(7, a2)], TTL).await.unwrap(), [(7, false)]);
        assert_eq!(m.renew("a", &[(7, a2)], TTL).await.unwrap(), [(7, true)]);
        m.release(7, "a", a2).await.unwrap();
        assert!(m.acquire(7, "b", TTL).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn an_expired_lease_goes_to_the_next_node() {
        let m = MemoryLeases::default();
        let a = m
            .acquire(1, "a", Duration::from_millis(30))
            .await
            .unwrap()
            .expect("free");
        assert_eq!(m.acquire(1, "b", TTL).await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!m.held_elsewhere(1, "b").await.unwrap());
        let b = m.acquire(1, "b", TTL).await.unwrap().expect("expired");
        assert!(b > a);
        assert_eq!(m.renew("a", &[(1, a)], TTL).await.unwrap(), [(1, false)]);
    }
}
