//! [`Store`] for [`PgStore`]: each call counted and its error mapped, and the host-key
//! check, which only a shared store needs.

use std::path::PathBuf;

use sqlx::Row;
use time::OffsetDateTime;

use super::feed::{follow, FEED_QUEUE};
use super::records::record_from;
use super::{query, PgStore, PgStoreError, SELECT};
use crate::store::{
    Changed, HostKey, NodeSessions, Operation, PageQuery, Record, RequestSessions, State, Store,
    StoreCounters, StoreError, Updated,
};

#[async_trait::async_trait]
impl Store for PgStore {
    async fn get(&self, id: u64) -> Result<Option<Record>, StoreError> {
        Ok(self.counted(Operation::Read, PgStore::get(self, id).await)?)
    }

    async fn list(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self.counted(Operation::Read, PgStore::list(self).await)?)
    }

    async fn page(&self, query: &PageQuery) -> Result<Vec<Record>, StoreError> {
        Ok(self.counted(Operation::Read, PgStore::page(self, query).await)?)
    }

    async fn count_by_state(&self) -> Result<[(State, u64); 6], StoreError> {
        Ok(self.counted(Operation::Read, PgStore::count_by_state(self).await)?)
    }

    async fn update(
        &self,
        id: u64,
        change: crate::store::Change<'_>,
    ) -> Result<Updated, StoreError> {
        self.counted(Operation::Update, PgStore::update(self, id, change).await)
            .map_err(|e| match e {
                PgStoreError::IdMismatch { id, got } => StoreError::WrongId { id, got },
                e => e.into(),
            })
    }

    fn upload_path(&self, id: u64) -> PathBuf {
        PgStore::upload_path(self, id)
    }

    fn upgraded_path(&self, id: u64) -> PathBuf {
        PgStore::upgraded_path(self, id)
    }

    async fn check_host_keys(&self, node: &str, keys: &[HostKey]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(PgStoreError::from)?;
        // Two nodes starting at once with different keys: one records, the other compares.
        query("LOCK TABLE host_keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(PgStoreError::from)?;
        for key in keys {
            let recorded =
                query("SELECT fingerprint, recorded_by FROM host_keys WHERE algorithm = $1")
                    .bind(&key.algorithm)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(PgStoreError::from)?;
            match recorded {
                Some(row) => {
                    let fingerprint: String =
                        row.try_get("fingerprint").map_err(PgStoreError::from)?;
                    if fingerprint != key.fingerprint {
                        let by: String = row.try_get("recorded_by").map_err(PgStoreError::from)?;
                        return Err(StoreError::HostKeyMismatch {
                            algorithm: key.algorithm.clone(),
                            ours: key.fingerprint.clone(),
                            recorded: fingerprint,
                            by,
                        });
                    }
                }
                None => {
                    query("INSERT INTO host_keys (algorithm, fingerprint, recorded_by) VALUES ($1, $2, $3)")
                        .bind(&key.algorithm)
                        .bind(&key.fingerprint)
                        .bind(node)
                        .execute(&mut *tx)
                        .await
                        .map_err(PgStoreError::from)?;
                    tracing::info!(algorithm = %key.algorithm, fingerprint = %key.fingerprint,
                        "recorded this node's host key for the other nodes");
                }
            }
        }
        tx.commit().await.map_err(PgStoreError::from)?;
        Ok(())
    }

    async fn get_many(&self, ids: &[u64]) -> Result<Vec<Record>, StoreError> {
        let sql = format!("{SELECT} WHERE r.id = ANY($1::numeric[]) ORDER BY r.id");
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        let read = async {
            let rows = query(&sql).bind(ids).fetch_all(&self.pool).await?;
            rows.iter()
                .map(record_from)
                .collect::<Result<Vec<Record>, PgStoreError>>()
        };
        Ok(self.counted(Operation::Read, read.await)?)
    }

    async fn expired(
        &self,
        _now: OffsetDateTime,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<(u64, OffsetDateTime)>, StoreError> {
        // By the database's clock, as every node then agrees; only expiries without their
        // event yet (the outbox's mark).
        let read = async {
            let rows = query(
                "SELECT r.id::text AS id, r.expires_at FROM records r \
                 WHERE r.expires_at <= now() AND ($1::timestamptz IS NULL OR r.expires_at > $1) \
                   AND NOT EXISTS (SELECT 1 FROM outbox_expiries e \
                     WHERE e.request_id = r.id AND e.expires_at = r.expires_at) \
                 ORDER BY r.expires_at LIMIT $2",
            )
            .bind(since)
            .bind(crate::store::MAX_EXPIRED as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| -> Result<(u64, OffsetDateTime), PgStoreError> {
                    let id: String = row.try_get("id")?;
                    let id = id.parse().map_err(|_| PgStoreError::Corrupt {
                        id: id.clone(),
                        why: "the id is not a request id".into(),
                    })?;
                    Ok((id, row.try_get("expires_at")?))
                })
                .collect::<Result<Vec<_>, PgStoreError>>()
        };
        Ok(self.counted(Operation::Read, read.await)?)
    }

    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<Changed>> {
        let (tx, rx) = tokio::sync::mpsc::channel(FEED_QUEUE);
        let pool = self.pool.clone();
        tokio::spawn(follow(pool, tx, self.counting.clone()));
        Some(rx)
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(PgStore::health(self).await?)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn exchange_sessions(
        &self,
        node: &str,
        mine: &[RequestSessions],
    ) -> Result<Vec<NodeSessions>, StoreError> {
        let exchanged = PgStore::exchange_sessions(self, node, mine).await;
        Ok(self.counted(Operation::Sessions, exchanged)?)
    }

    fn counters(&self) -> StoreCounters {
        self.counting.snapshot()
    }
}
