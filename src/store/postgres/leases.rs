//! Upload leases in PostgreSQL ([`LeaseStore`] for nodes sharing a database): one row per
//! leased request, every call one autocommit statement timed by the database's clock (so
//! the nodes' clocks never matter, and PgBouncer in transaction mode may sit in between).

use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::records::read_again_if_broken;
use crate::store::lease::{Fence, LeaseError, LeaseStore};

pub struct PgLeases {
    pool: PgPool,
}

impl PgLeases {
    pub fn new(pool: PgPool) -> PgLeases {
        PgLeases { pool }
    }
}

fn unavailable(e: sqlx::Error) -> LeaseError {
    LeaseError::Unavailable(e.to_string())
}

/// A TTL as PostgreSQL's `interval`, in microseconds (what the column keeps).
fn micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

/// A fence as stored (`bigint`, from a sequence, never negative).
fn fence_of(v: i64) -> Fence {
    Fence::try_from(v).unwrap_or(0)
}

#[async_trait::async_trait]
impl LeaseStore for PgLeases {
    async fn acquire(
        &self,
        request: u64,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Fence>, LeaseError> {
        let row = sqlx::query(
            "INSERT INTO leases (request_id, node, fence, expires_at) \
             VALUES ($1::numeric, $2, nextval('lease_fence'), now() + make_interval(secs => $3::float8 / 1e6)) \
             ON CONFLICT (request_id) DO UPDATE \
                 SET node = EXCLUDED.node, fence = EXCLUDED.fence, expires_at = EXCLUDED.expires_at \
               WHERE leases.expires_at < now() OR leases.node = EXCLUDED.node \
             RETURNING fence",
        )
        .persistent(false)
        .bind(request.to_string())
        .bind(node)
        .bind(micros(ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|r| r.try_get::<i64, _>("fence").map(fence_of))
            .transpose()
            .map_err(unavailable)
    }

    async fn renew(
        &self,
        node: &str,
        leases: &[(u64, Fence)],
        ttl: Duration,
    ) -> Result<Vec<(u64, bool)>, LeaseError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = leases.iter().map(|(id, _)| id.to_string()).collect();
        let fences: Vec<i64> = leases
            .iter()
            .map(|(_, f)| i64::try_from(*f).unwrap_or(-1))
            .collect();
        let rows = sqlx::query(
            "UPDATE leases SET expires_at = now() + make_interval(secs => $4::float8 / 1e6) \
               FROM unnest($2::numeric[], $3::bigint[]) AS mine(request_id, fence) \
              WHERE leases.request_id = mine.request_id AND leases.fence = mine.fence \
                AND leases.node = $1 \
             RETURNING leases.request_id::text AS id",
        )
        .persistent(false)
        .bind(node)
        .bind(&ids)
        .bind(&fences)
        .bind(micros(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let renewed: std::collections::HashSet<String> = rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>("id").ok())
            .collect();
        Ok(leases
            .iter()
            .map(|(id, _)| (*id, renewed.contains(&id.to_string())))
            .collect())
    }

    async fn release(&self, request: u64, node: &str, fence: Fence) -> Result<(), LeaseError> {
        sqlx::query(
            "DELETE FROM leases WHERE request_id = $1::numeric AND node = $2 AND fence = $3",
        )
        .persistent(false)
        .bind(request.to_string())
        .bind(node)
        .bind(i64::try_from(fence).unwrap_or(-1))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn held_elsewhere(&self, request: u64, node: &str) -> Result<bool, LeaseError> {
        // A login waits on this read too: read again on a connection that died unpinged
        // (see `PgStore::connect_with`), as the record's read is.
        read_again_if_broken(&self.pool, || {
            sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM leases WHERE request_id = $1::numeric \
                    AND node <> $2 AND expires_at > now()) AS held",
            )
            .persistent(false)
            .bind(request.to_string())
            .bind(node)
            .fetch_one(&self.pool)
        })
        .await
        .and_then(|r| r.try_get::<bool, _>("held"))
        .map_err(unavailable)
    }
}
