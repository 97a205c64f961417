//! The event outbox in PostgreSQL ([`Outbox`] for nodes sharing a database, tables of
//! migration 5). Storing an event is one transaction (the request's next number, the
//! event, and for an expiry its mark); a delivery claim is one autocommit statement that
//! takes due, unclaimed requests with `FOR UPDATE SKIP LOCKED` and stamps them with a
//! claim number and an expiry by the database's clock, so the nodes' clocks never matter.
//!
//! The bound is checked against the depth as last counted (the delivery loop counts every
//! few seconds) plus what this node stored since: counting on every store would scan the
//! table each time. Across nodes it may therefore be passed by what the others stored
//! since the last count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use crate::store::outbox::{
    Claim, Event, NewEvent, Outbox, OutboxError, OutboxLimits, OutboxStats, Release,
};

pub struct PgOutbox {
    pool: PgPool,
    limits: OutboxLimits,
    /// The depth as last counted, plus the events stored here since.
    depth: AtomicU64,
}

fn db(e: sqlx::Error) -> OutboxError {
    OutboxError::Database(e.to_string())
}

fn query(sql: &str) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql).persistent(false)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgOutbox {
    pub fn new(pool: PgPool, limits: OutboxLimits) -> PgOutbox {
        PgOutbox {
            pool,
            limits,
            depth: AtomicU64::new(0),
        }
    }

    fn check_room(&self) -> Result<(), OutboxError> {
        let depth = self.depth.load(Ordering::Relaxed);
        if depth >= self.limits.events {
            return Err(OutboxError::Full(depth));
        }
        Ok(())
    }

    /// Numbers and stores `event` in `tx`, then commits.
    async fn store(
        &self,
        mut tx: Transaction<'_, Postgres>,
        event: NewEvent,
    ) -> Result<Event, OutboxError> {
        let request = event.request_id.to_string();
        // The row lock taken here orders concurrent stores of one request: the second
        // gets the next number once the first has committed. No row: the request's share
        // is used up (the transaction is rolled back, an expiry's mark with it).
        let row = query(
            "INSERT INTO outbox_requests (request_id, last_seq, pending) VALUES ($1::numeric, 1, 1) \
             ON CONFLICT (request_id) DO UPDATE SET last_seq = outbox_requests.last_seq + 1, \
                 pending = outbox_requests.pending + 1 \
               WHERE outbox_requests.pending < $2 \
             RETURNING last_seq",
        )
        .bind(&request)
        .bind(i64::try_from(self.limits.per_request).unwrap_or(i64::MAX))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Err(OutboxError::RequestFull(self.limits.per_request));
        };
        let seq: i64 = row.try_get("last_seq").map_err(db)?;
        let stored = event.numbered(u64::try_from(seq).unwrap_or(0));
        query(
            "INSERT INTO outbox_events (request_id, seq, event_id, body, created_at) \
             VALUES ($1::numeric, $2, $3, $4, $5)",
        )
        .bind(&request)
        .bind(seq)
        .bind(&stored.id)
        .bind(&stored.body)
        .bind(stored.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.depth.fetch_add(1, Ordering::Relaxed);
        Ok(stored)
    }
}

#[async_trait::async_trait]
impl Outbox for PgOutbox {
    async fn push(&self, event: NewEvent) -> Result<Event, OutboxError> {
        self.check_room()?;
        let tx = self.pool.begin().await.map_err(db)?;
        self.store(tx, event).await
    }

    async fn push_expiry(
        &self,
        event: NewEvent,
        expires_at: OffsetDateTime,
    ) -> Result<Option<Event>, OutboxError> {
        self.check_room()?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        // A row back only when this expiry was not marked yet; another node marking it at
        // the same time waits on the key, then finds it marked.
        let marked = query(
            "INSERT INTO outbox_expiries (request_id, expires_at) VALUES ($1::numeric, $2) \
             ON CONFLICT (request_id) DO UPDATE SET expires_at = EXCLUDED.expires_at \
               WHERE outbox_expiries.expires_at IS DISTINCT FROM EXCLUDED.expires_at \
             RETURNING request_id::text",
        )
        .bind(event.request_id.to_string())
        .bind(expires_at)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if marked.is_none() {
            tx.rollback().await.map_err(db)?;
            return Ok(None);
        }
        self.store(tx, event).await.map(Some)
    }

    async fn claim(
        &self,
        node: &str,
        max: usize,
        ttl: Duration,
    ) -> Result<Vec<Claim>, OutboxError> {
        let rows = query(
            "UPDATE outbox_requests o SET claim = nextval('outbox_claim'), claimed_by = $1, \
                 claimed_until = now() + make_interval(secs => $3) \
             FROM (SELECT request_id FROM outbox_requests \
                    WHERE pending > 0 AND due_at <= now() \
                      AND (claimed_until IS NULL OR claimed_until < now()) \
                    ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED) due \
             WHERE o.request_id = due.request_id \
             RETURNING o.request_id::text AS id, o.claim, o.attempts",
        )
        .bind(node)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .bind(secs(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id").map_err(db)?;
                Ok(Claim {
                    request_id: id
                        .parse()
                        .map_err(|_| OutboxError::Database(format!("bad request id {id}")))?,
                    token: u64::try_from(r.try_get::<i64, _>("claim").map_err(db)?).unwrap_or(0),
                    attempts: u32::try_from(r.try_get::<i32, _>("attempts").map_err(db)?)
                        .unwrap_or(0),
                })
            })
            .collect()
    }

    async fn pending(&self, claim: &Claim, limit: usize) -> Result<Vec<Event>, OutboxError> {
        let rows = query(
            "SELECT seq, event_id, body, created_at FROM outbox_events \
             WHERE request_id = $1::numeric ORDER BY seq LIMIT $2",
        )
        .bind(claim.request_id.to_string())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    id: r.try_get("event_id").map_err(db)?,
                    request_id: claim.request_id,
                    seq: u64::try_from(r.try_get::<i64, _>("seq").map_err(db)?).unwrap_or(0),
                    body: r.try_get("body").map_err(db)?,
                    created_at: r.try_get("created_at").map_err(db)?,
                })
            })
            .collect()
    }

    async fn delivered(&self, claim: &Claim, seq: u64) -> Result<(), OutboxError> {
        // Deleting an event already gone (delivered under a claim that expired) changes
        // no count.
        query(
            "WITH gone AS (DELETE FROM outbox_events WHERE request_id = $1::numeric AND seq = $2 \
                 RETURNING 1) \
             UPDATE outbox_requests SET pending = pending - (SELECT count(*) FROM gone) \
             WHERE request_id = $1::numeric",
        )
        .bind(claim.request_id.to_string())
        .bind(i64::try_from(seq).unwrap_or(-1))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let _ = self
            .depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(1))
            });
        Ok(())
    }

    async fn release(&self, claim: &Claim, how: Release) -> Result<(), OutboxError> {
        let (attempts, retry_in) = match how {
            Release::Done => (0, Duration::ZERO),
            Release::Failed { attempts, retry_in } => (attempts, retry_in),
        };
        query(
            "UPDATE outbox_requests SET claim = NULL, claimed_by = NULL, claimed_until = NULL, \
                 attempts = $3, due_at = now() + make_interval(secs => $4) \
             WHERE request_id = $1::numeric AND claim = $2",
        )
        .bind(claim.request_id.to_string())
        .bind(i64::try_from(claim.token).unwrap_or(-1))
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(secs(retry_in))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let row = query(
            "SELECT count(*) AS depth, COALESCE(sum(octet_length(body)), 0)::bigint AS bytes, \
                 min(created_at) AS oldest FROM outbox_events",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        let depth = u64::try_from(row.try_get::<i64, _>("depth").map_err(db)?).unwrap_or(0);
        self.depth.store(depth, Ordering::Relaxed);
        Ok(OutboxStats {
            depth,
            bytes: u64::try_from(row.try_get::<i64, _>("bytes").map_err(db)?).unwrap_or(0),
            oldest: row
                .try_get::<Option<OffsetDateTime>, _>("oldest")
                .map_err(db)?,
        })
    }
}
