//! The schema migrations: the SQL files beside this one, embedded, in order, and how a
//! node applies the pending ones at start (one transaction under a lock, so that nodes
//! starting at once apply each exactly once).

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::{query, PgStoreError};

/// Key of the transaction-scoped advisory lock that serializes migrations ("sftpgate" in
/// ASCII). Per-record locks use the two-key form, a separate lock space.
const MIGRATION_LOCK: i64 = 0x7366_7470_6761_7465;

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every schema change, in order; applied ones are listed in `schema_version`.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "records",
        sql: include_str!("0001_records.sql"),
    },
    Migration {
        version: 2,
        name: "node_sessions",
        sql: include_str!("0002_node_sessions.sql"),
    },
    Migration {
        version: 3,
        name: "host_keys",
        sql: include_str!("0003_host_keys.sql"),
    },
    Migration {
        version: 4,
        name: "leases",
        sql: include_str!("0004_leases.sql"),
    },
    Migration {
        version: 5,
        name: "listing",
        sql: include_str!("0005_listing.sql"),
    },
    Migration {
        version: 6,
        name: "outbox",
        sql: include_str!("0006_outbox.sql"),
    },
    Migration {
        version: 7,
        name: "multipart",
        sql: include_str!("0007_multipart.sql"),
    },
];

/// The schema migrations this build knows, `(version, name)` in order.
pub fn migrations() -> Vec<(i32, String)> {
    MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_string()))
        .collect()
}

/// Applies the pending migrations, as one transaction under the migration lock: a node
/// that starts while another migrates waits for it, then finds nothing left to do.
pub(super) async fn migrate(pool: &PgPool) -> Result<(), PgStoreError> {
    let mut tx = pool.begin().await?;
    query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, \
         name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let current: i32 = query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        .fetch_one(&mut *tx)
        .await?
        .try_get("v")?;
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let failed = |source| PgStoreError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        sqlx::raw_sql(m.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        query("INSERT INTO schema_version (version, name) VALUES ($1, $2)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied a schema migration"
        );
    }
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > known {
        tracing::warn!(
            schema = current,
            known,
            "the database schema is newer than this node; running on it (migrations only add)"
        );
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }
}
