//! The PostgreSQL store, for several gateway nodes on one database (issue 13): records,
//! their keys, state, expiry and key hash live in tables; every change is one transaction
//! that locks the record, lets the caller decide, writes, and notifies the other nodes
//! (`NOTIFY sftpgate_records, '<id>'`). The files stay on the data directory, which the
//! nodes share, laid out as [`super::FileStore`] lays them out.
//!
//! The driver is sqlx (maintained, async on tokio, its own bounded pool, rustls). Queries
//! are checked at run time, not with its compile-time macros, so building needs no
//! database; and they are sent unnamed (`persistent(false)`) and the migration lock is
//! transaction-scoped, so that a PgBouncer in transaction mode can sit in between (the
//! change feed, [`PgStore::listen`], needs a direct connection: LISTEN is per session).
//!
//! Migrations are the SQL files beside this one, embedded, applied at start in one
//! transaction under `pg_advisory_xact_lock`, so nodes starting at once apply each exactly
//! once, and a failed one leaves nothing half done. They must only add (columns,
//! tables): a node not yet upgraded keeps running on the newer schema.
//!
//! This file holds the store's handle, its errors, connecting, the node-level queries
//! (health, the session exchange) and the files' paths. Beside it in `postgres/`:
//! `migrate.rs`, the migrations; `records.rs`, the records' queries and the locked
//! update; `feed.rs`, the change feed (LISTEN/NOTIFY); `store_impl.rs`, the
//! [`super::Store`] trait over all of it; and the outbox, lease and multipart tables'
//! own files.

mod feed;
mod leases;
mod migrate;
mod multipart;
mod outbox;
mod records;
mod store_impl;

pub use feed::{Change, Changes};
pub use leases::PgLeases;
pub use migrate::migrations;
pub use outbox::PgOutbox;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row};

use super::{private, sync_dir_io, NodeSessions, Operation, RequestSessions, StoreCounting};

/// The notification channel; the payload is the changed record's id.
pub const CHANNEL: &str = "sftpgate_records";

/// Connections per node unless configured: a few writers at once are plenty (each update
/// is a handful of short statements), and ten nodes then fit in PostgreSQL's default
/// `max_connections` of 100.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// How long the health probe and the session exchange wait for PostgreSQL: a balancer's
/// health check must get its answer well within its own timeout, and a node must not
/// hang on a database that stopped answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a health answer is reused: a flood of health checks costs the database at
/// most one `SELECT 1` per this.
const HEALTH_CACHE: Duration = Duration::from_secs(1);
/// A connection idle this long is pinged before it is used (see `connect_with`): one
/// in use more often than this answered its release ping less than this ago.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);
/// Other nodes' published sessions older than this are ignored (their node stopped or
/// lost the database), and removed.
pub const SESSIONS_STALE: Duration = Duration::from_secs(6);

#[derive(Debug, thiserror::Error)]
pub enum PgStoreError {
    #[error("invalid PostgreSQL store URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("PostgreSQL schema migration {version} ({name}): {source}")]
    Migration {
        version: i32,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record {id} in PostgreSQL is not valid: {why}")]
    Corrupt { id: String, why: String },
    #[error("record {got} cannot be stored under id {id}")]
    IdMismatch { id: u64, got: u64 },
    #[error("record {0} holds a NUL character, which PostgreSQL text cannot store")]
    Nul(u64),
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error("PostgreSQL was unreachable a moment ago: {0}")]
    Unhealthy(String),
    #[error("the sessions another node published are not valid: {0}")]
    Sessions(#[source] serde_json::Error),
}

/// Settings of a node's connection pool.
#[derive(Clone, Debug)]
pub struct PgStoreOptions {
    /// At most this many connections to PostgreSQL [default: DEFAULT_MAX_CONNECTIONS].
    pub max_connections: u32,
    /// How long an operation waits for a free connection (or a new one) before it fails.
    pub acquire_timeout: Duration,
}

impl Default for PgStoreOptions {
    fn default() -> Self {
        PgStoreOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether `store` names a PostgreSQL store (`postgres://` or `postgresql://`).
pub fn is_postgres_url(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

pub struct PgStore {
    pool: PgPool,
    /// `DATA_DIR/requests`, on storage every node shares.
    root: PathBuf,
    /// This process's row in `node_sessions`: random per start.
    instance: String,
    counting: Arc<StoreCounting>,
    /// The last health answer and when it was got. An async lock, so that concurrent
    /// health checks wait for one probe instead of each sending their own.
    health: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// A timestamp column of `records r` as RFC 3339 text in UTC, to the microsecond (what
/// PostgreSQL keeps), named as the column.
macro_rules! utc {
    ($column:literal) => {
        concat!(
            "to_char(r.",
            $column,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS ",
            $column
        )
    };
}

/// The record columns of `records r`, and its key lines joined by `\n` (NULL: no keys).
/// All of it text, so that a read answers the same through the simple query protocol
/// (see [`PgStore::get`]) as through a bound statement: sqlx reads text-format
/// timestamps only when they have a fraction, and arrays need quoting rules; RFC 3339 and
/// a joined string have neither problem.
const SELECT: &str = concat!(
    "SELECT r.id::text AS id, r.filename, r.state, r.key_sha256, ",
    utc!("expires_at"),
    ", ",
    utc!("operator_expires_at"),
    ", ",
    utc!("created_at"),
    ", ",
    utc!("updated_at"),
    ", (SELECT string_agg(k.line, chr(10) ORDER BY k.position) FROM record_keys k \
     WHERE k.record_id = r.id) AS keys FROM records r"
);

/// A statement sent unnamed, so that no prepared statement outlives its transaction
/// (PgBouncer in transaction mode hands the next one to another client).
fn query(sql: &str) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql).persistent(false)
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`, libpq's URL parameters such as
    /// `sslmode` apply), applies pending migrations, and keeps files under
    /// `data_dir/requests`.
    pub async fn connect(url: &str, data_dir: &Path) -> Result<PgStore, PgStoreError> {
        PgStore::connect_with(url, data_dir, PgStoreOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        data_dir: &Path,
        options: PgStoreOptions,
    ) -> Result<PgStore, PgStoreError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(PgStoreError::Url)?
            .application_name("sftpgate");
        let root = data_dir.join("requests");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PgStoreError::Io { path, source }
        };
        private::create_dir(&root).map_err(io(&root))?;
        private::tighten(data_dir);
        private::tighten(&root);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            // sqlx pings every connection it hands out, and again every one given back:
            // a round trip before each statement that the caller waits for. The one on
            // release stays (sqlx always makes it); a connection is pinged before use only
            // when it has been idle long enough to have died unseen. One that died within
            // that time fails its statement: reads by id are read again (`records.rs`).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect)
            .await?;
        migrate::migrate(&pool).await?;
        Ok(PgStore {
            pool,
            root,
            instance: format!("{:016x}", rand::random::<u64>()),
            counting: Arc::default(),
            health: tokio::sync::Mutex::new(None),
        })
    }

    /// `SELECT 1` within [`PROBE_TIMEOUT`]; an answer is reused for [`HEALTH_CACHE`].
    pub async fn health(&self) -> Result<(), PgStoreError> {
        let mut last = self.health.lock().await;
        let answer = match &*last {
            Some((at, answer)) if at.elapsed() < HEALTH_CACHE => answer.clone(),
            _ => {
                let probe = within(PROBE_TIMEOUT, async {
                    query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string());
                if probe.is_err() {
                    // Counted per probe, not per health check answered from the cache.
                    self.counting.error(Operation::Health);
                }
                *last = Some((Instant::now(), probe.clone()));
                probe
            }
        };
        answer.map_err(PgStoreError::Unhealthy)
    }

    /// Writes this node's row of `node_sessions` and reads the other nodes' fresh rows,
    /// in one statement (a data-modifying CTE): one round trip per node and period. Stale
    /// rows of other nodes are removed on the way, so the table stays as small as the
    /// set of running nodes.
    pub async fn exchange_sessions(
        &self,
        node: &str,
        mine: &[RequestSessions],
    ) -> Result<Vec<NodeSessions>, PgStoreError> {
        let mine = serde_json::to_string(mine).map_err(PgStoreError::Sessions)?;
        let rows = within(PROBE_TIMEOUT, async {
            Ok(query(
                "WITH gone AS (DELETE FROM node_sessions                    WHERE instance <> $1 AND heartbeat_at < now() - make_interval(secs => $4)),                  mine AS (INSERT INTO node_sessions (instance, node, sessions, heartbeat_at)                    VALUES ($1, $2, $3::jsonb, now()) ON CONFLICT (instance) DO UPDATE                    SET node = EXCLUDED.node, sessions = EXCLUDED.sessions,                    heartbeat_at = EXCLUDED.heartbeat_at)                  SELECT node, sessions::text AS sessions FROM node_sessions                  WHERE instance <> $1 AND heartbeat_at >= now() - make_interval(secs => $4)                  ORDER BY node, instance",
            )
            .bind(&self.instance)
            .bind(node)
            .bind(mine)
            .bind(SESSIONS_STALE.as_secs_f64())
            .fetch_all(&self.pool)
            .await?)
        })
        .await?;
        rows.iter()
            .map(|row| -> Result<NodeSessions, PgStoreError> {
                let sessions: String = row.try_get("sessions")?;
                Ok(NodeSessions {
                    node: row.try_get("node")?,
                    requests: serde_json::from_str(&sessions).map_err(PgStoreError::Sessions)?,
                })
            })
            .collect()
    }

    /// The pool, for tests and diagnostics.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// Where the customer's upload of request `id` lives.
    pub fn upload_path(&self, id: u64) -> PathBuf {
        self.dir(id).join("upload")
    }

    /// Where the upgraded dump of request `id` lives.
    pub fn upgraded_path(&self, id: u64) -> PathBuf {
        self.dir(id).join("upgraded")
    }

    /// Removes `requests/<id>/`; `false` if there was none. `leftovers`: the files of an
    /// earlier record, removed for a new one (audited as FileStore does).
    async fn remove_files(&self, id: u64, leftovers: bool) -> Result<bool, PgStoreError> {
        let (dir, root) = (self.dir(id), self.root.clone());
        let removed = blocking(dir.clone(), move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir_io(&root).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await?;
        if removed && leftovers {
            tracing::info!(target: "audit", event = "leftovers-removed", request = id,
                "files left by a deleted request with this id were removed");
        }
        Ok(removed)
    }

    /// Creates `requests/<id>/` (0700) for the record's files if it is not there.
    async fn ensure_dir(&self, id: u64) -> Result<(), PgStoreError> {
        let (dir, root) = (self.dir(id), self.root.clone());
        blocking(dir.clone(), move || {
            if dir.is_dir() {
                return Ok(());
            }
            private::create_dir(&dir)?;
            sync_dir_io(&root)
        })
        .await
    }
}

/// `work`, or [`PgStoreError::Timeout`] once `limit` has passed (the pool would otherwise
/// keep retrying a refused connection for its whole acquire timeout).
async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, PgStoreError>>,
) -> Result<T, PgStoreError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(PgStoreError::Timeout(limit)))
}

/// Runs file-system work off the async threads; errors are reported against `path`.
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, PgStoreError> {
    let result = tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    result.map_err(|source| PgStoreError::Io { path, source })
}

impl PgStore {
    /// `result`, its failure counted under `op`.
    fn counted<T>(
        &self,
        op: Operation,
        result: Result<T, PgStoreError>,
    ) -> Result<T, PgStoreError> {
        if result.is_err() {
            self.counting.error(op);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert!(is_postgres_url("postgres://u@h:5432/db"));
        assert!(is_postgres_url("postgresql://u@h/db"));
        assert!(!is_postgres_url("file"));
        assert!(!is_postgres_url("mysql://h/db"));
    }
}
