//! The records' queries: reads (one record, all, a page, the counts by state) and the
//! update, one transaction that locks the record, lets the caller decide and writes the
//! decision, notifying the other nodes.

use std::time::Instant;

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Executor, Postgres, Row, Transaction};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{query, PgStore, PgStoreError, CHANNEL, SELECT};
use crate::store::{Decision, PageQuery, Record, State, Updated};

impl PgStore {
    pub async fn get(&self, id: u64) -> Result<Option<Record>, PgStoreError> {
        // A login waits on this read. While the database is known to be down, probe it
        // (at most PROBE_TIMEOUT, shared by concurrent logins through the health cache)
        // instead of waiting the pool's acquire timeout: logins fail closed in about 2 s,
        // not 10, and work again as soon as a probe succeeds.
        if self.known_down() {
            self.health().await?;
        }
        // One round trip: the simple query protocol, the id written into the text (an
        // integer, nothing to escape). A bound statement, sent unnamed (see `query`), takes
        // two, Parse then Bind, and a login or an API read waits on each.
        let sql = format!("{SELECT} WHERE r.id = {id}::numeric");
        let row = read_again_if_broken(&self.pool, || {
            // Not `RawSql::fetch_optional`: in sqlx 0.8 it is `fetch_one`.
            self.pool.fetch_optional(sqlx::raw_sql(&sql))
        })
        .await
        .inspect_err(|e| self.note_unreachable(e))?;
        row.as_ref().map(record_from).transpose()
    }

    /// The last health answer, of any age, was a failure. Never waits: a probe under way
    /// counts as not known.
    fn known_down(&self) -> bool {
        self.health
            .try_lock()
            .is_ok_and(|last| matches!(&*last, Some((_, Err(_)))))
    }

    /// Records a read that could not reach the database as a failed health answer, so
    /// that the next logins probe instead of waiting on the pool as this one did.
    fn note_unreachable(&self, e: &sqlx::Error) {
        if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
            if let Ok(mut last) = self.health.try_lock() {
                *last = Some((Instant::now(), Err(e.to_string())));
            }
        }
    }

    /// All records, ordered by id.
    pub async fn list(&self) -> Result<Vec<Record>, PgStoreError> {
        let sql = format!("{SELECT} ORDER BY r.id");
        let rows = query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(record_from).collect()
    }

    /// One page of records in id order (see [`crate::store::Store::page`]): one query,
    /// served by the primary key, or by the indexes of migration 5 for the filters.
    /// Statements are sent unnamed, so PostgreSQL plans each with its values and the
    /// `IS NULL` branches of absent filters fold away.
    pub async fn page(&self, q: &PageQuery) -> Result<Vec<Record>, PgStoreError> {
        let sql = format!(
            "{SELECT} WHERE r.id > $1::numeric AND ($2::text IS NULL OR r.state = $2::text) \
             AND ($3::timestamptz IS NULL OR r.updated_at >= $3::timestamptz) \
             ORDER BY r.id LIMIT $4"
        );
        let rows = query(&sql)
            .bind(q.after.to_string())
            .bind(q.state.map(State::as_str))
            .bind(q.updated_since)
            .bind(i64::try_from(q.limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from).collect()
    }

    /// How many records each state has, in one `GROUP BY`.
    pub async fn count_by_state(&self) -> Result<[(State, u64); 6], PgStoreError> {
        let rows = query("SELECT state, count(*) AS n FROM records GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = State::ALL.map(|s| (s, 0));
        for row in &rows {
            let state: String = row.try_get("state")?;
            let n: i64 = row.try_get("n")?;
            let state = State::parse(&state).ok_or_else(|| PgStoreError::Corrupt {
                id: "?".into(),
                why: format!("unknown state {state:?}"),
            })?;
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state) {
                c.1 = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(counts)
    }

    /// Reads record `id` locked, lets `change` decide, and applies the decision in the same
    /// transaction, so no other node's update of that id interleaves (no lost update).
    /// `change` runs while the record is locked: it must be quick and must not call the
    /// store. A record created under an id that has none starts with no files (whatever an
    /// earlier record of that id left is removed first), as in [`crate::store::FileStore`].
    pub async fn update<F>(&self, id: u64, change: F) -> Result<Updated, PgStoreError>
    where
        F: FnOnce(Option<&Record>) -> Decision + Send,
    {
        let mut tx = self.pool.begin().await?;
        // `FOR UPDATE` cannot lock a row that does not exist yet, and two nodes creating
        // the same id would both see none; a transaction-scoped advisory lock on the id
        // (its two 32-bit halves) serializes them too. It is released at commit or
        // rollback, so it never pins a connection.
        query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind((id >> 32) as u32 as i32)
            .bind(id as u32 as i32)
            .execute(&mut *tx)
            .await?;
        let before = read_locked(&mut tx, id).await?;
        match change(before.as_ref()) {
            Decision::Keep => {
                tx.commit().await?;
                Ok(Updated {
                    after: before.clone(),
                    before,
                    removed_files: false,
                })
            }
            Decision::Put(record) => {
                if record.id != id {
                    return Err(PgStoreError::IdMismatch { id, got: record.id });
                }
                if [&record.filename, &record.key_sha256, &record.ssh_keys]
                    .iter()
                    .any(|s| s.contains('\0'))
                {
                    return Err(PgStoreError::Nul(id));
                }
                // Under the lock, so a concurrent purge cannot remove the new record's
                // files; before commit, so the record never exists with old files.
                if before.is_none() {
                    self.remove_files(id, true).await?;
                }
                self.ensure_dir(id).await?;
                write(&mut tx, &record, before.as_ref()).await?;
                notify(&mut tx, id).await?;
                let after = read_locked(&mut tx, id).await?;
                tx.commit().await?;
                Ok(Updated {
                    before,
                    after,
                    removed_files: false,
                })
            }
            Decision::Delete { purge } => {
                if before.is_some() {
                    // The keys go with it (ON DELETE CASCADE).
                    query("DELETE FROM records WHERE id = $1::numeric")
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await?;
                    notify(&mut tx, id).await?;
                }
                // Still under the lock: a record created right after must not lose its
                // new files to this purge.
                let removed_files = purge && self.remove_files(id, false).await?;
                tx.commit().await?;
                Ok(Updated {
                    before,
                    after: None,
                    removed_files,
                })
            }
        }
    }
}

/// `read`, run again while it fails on a broken connection, at most once per connection
/// the pool may hold (for every read a login waits on: the record here, the lease look in
/// `leases.rs`): after PostgreSQL restarted, the pool's connections that were idle
/// too briefly to be pinged (see `PgStore::connect_with`) fail on first use, and each
/// failure closes one. A read is safe to repeat; a database that is down fails the
/// connect (or the pool's timeout) instead, which is not repeated.
pub(super) async fn read_again_if_broken<T, F, Fut>(
    pool: &PgPool,
    mut read: F,
) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut left = pool.options().get_max_connections();
    loop {
        match read().await {
            Err(e) if left > 0 && broken_connection(&e) => {
                tracing::debug!(error = %e, "a pooled connection was broken; reading again");
                left -= 1;
            }
            answer => return answer,
        }
    }
}

/// Whether `e` says the connection was lost, rather than that the statement failed: an
/// I/O error, or PostgreSQL's classes 08 (connection exception) and 57P (the server
/// shutting down or restarting).
fn broken_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Record `id`, its row locked until the transaction ends.
async fn read_locked(
    tx: &mut Transaction<'_, Postgres>,
    id: u64,
) -> Result<Option<Record>, PgStoreError> {
    let sql = format!("{SELECT} WHERE r.id = $1::numeric FOR UPDATE OF r");
    let row = query(&sql)
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(record_from).transpose()
}

/// Creates or replaces `record`'s row, and its key lines if they changed.
async fn write(
    tx: &mut Transaction<'_, Postgres>,
    record: &Record,
    before: Option<&Record>,
) -> Result<(), PgStoreError> {
    let id = record.id.to_string();
    query(
        "INSERT INTO records (id, filename, state, key_sha256, expires_at, \
         operator_expires_at, created_at, updated_at) \
         VALUES ($1::numeric, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET filename = EXCLUDED.filename, \
         state = EXCLUDED.state, key_sha256 = EXCLUDED.key_sha256, \
         expires_at = EXCLUDED.expires_at, \
         operator_expires_at = EXCLUDED.operator_expires_at, \
         created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at",
    )
    .bind(&id)
    .bind(&record.filename)
    .bind(record.state.as_str())
    .bind(&record.key_sha256)
    .bind(record.expires_at)
    .bind(record.operator_expires_at)
    .bind(record.created_at)
    .bind(record.updated_at)
    .execute(&mut **tx)
    .await?;
    if before.is_some_and(|b| b.ssh_keys == record.ssh_keys) {
        return Ok(());
    }
    // Key replacement: the old lines go and the new ones come in this same transaction,
    // so no reader ever sees a mix, or a record without its keys.
    query("DELETE FROM record_keys WHERE record_id = $1::numeric")
        .bind(&id)
        .execute(&mut **tx)
        .await?;
    let lines = key_lines(&record.ssh_keys);
    if !lines.is_empty() {
        query(
            "INSERT INTO record_keys (record_id, position, line) \
             SELECT $1::numeric, t.position, t.line \
             FROM unnest($2::text[]) WITH ORDINALITY AS t(line, position)",
        )
        .bind(&id)
        .bind(lines)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Queues the change notification; PostgreSQL delivers it at commit, and not at all on
/// rollback.
async fn notify(tx: &mut Transaction<'_, Postgres>, id: u64) -> Result<(), PgStoreError> {
    query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The rows of an authorized_keys text: split on `\n` only, so that joining them gives
/// back exactly the text (`\r`, blank lines and a final newline included).
fn key_lines(text: &str) -> Vec<&str> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split('\n').collect()
    }
}

pub(super) fn record_from(row: &PgRow) -> Result<Record, PgStoreError> {
    let raw_id: String = row.try_get("id")?;
    let corrupt = |why: String| PgStoreError::Corrupt {
        id: raw_id.clone(),
        why,
    };
    let id = raw_id
        .parse::<u64>()
        .map_err(|_| corrupt("the id is not a request id".into()))?;
    let state: String = row.try_get("state")?;
    let state = State::parse(&state).ok_or_else(|| corrupt(format!("unknown state {state:?}")))?;
    let keys: Option<String> = row.try_get("keys")?;
    // The timestamps come as RFC 3339 text (see `SELECT`).
    let time = |column: &str| -> Result<Option<OffsetDateTime>, PgStoreError> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|t| {
            OffsetDateTime::parse(&t, &Rfc3339).map_err(|e| corrupt(format!("{column} {t:?}: {e}")))
        })
        .transpose()
    };
    let required = |column: &str| time(column)?.ok_or_else(|| corrupt(format!("no {column}")));
    Ok(Record {
        id,
        filename: row.try_get("filename")?,
        state,
        key_sha256: row.try_get("key_sha256")?,
        ssh_keys: keys.unwrap_or_default(),
        expires_at: time("expires_at")?,
        operator_expires_at: time("operator_expires_at")?,
        created_at: required("created_at")?,
        updated_at: required("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_round_trip() {
        for text in ["", "a", "a\n", "\n", "a\r\n\n# c\nb", "\n\n"] {
            assert_eq!(key_lines(text).join("\n"), text, "{text:?}");
        }
        assert!(key_lines("").is_empty());
    }
}
