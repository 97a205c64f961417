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

mod leases;
mod multipart;
mod outbox;

pub use leases::PgLeases;
pub use outbox::PgOutbox;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use super::{
    private, sync_dir_io, Changed, Decision, HostKey, NodeSessions, Operation, PageQuery, Record,
    RequestSessions, State, Store, StoreCounters, StoreCounting, StoreError, Updated,
};

/// The notification channel; the payload is the changed record's id.
pub const CHANNEL: &str = "sftpgate_records";

/// Connections per node unless configured: a few writers at once are plenty (each update
/// is a handful of short statements), and ten nodes then fit in PostgreSQL's default
/// `max_connections` of 100.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

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
        sql: include_str!("postgres/0001_records.sql"),
    },
    Migration {
        version: 2,
        name: "node_sessions",
        sql: include_str!("postgres/0002_node_sessions.sql"),
    },
    Migration {
        version: 3,
        name: "host_keys",
        sql: include_str!("postgres/0003_host_keys.sql"),
    },
    Migration {
        version: 4,
        name: "leases",
        sql: include_str!("postgres/0004_leases.sql"),
    },
    Migration {
        version: 5,
        name: "listing",
        sql: include_str!("postgres/0005_listing.sql"),
    },
    Migration {
        version: 6,
        name: "outbox",
        sql: include_str!("postgres/0006_outbox.sql"),
    },
    Migration {
        version: 7,
        name: "multipart",
        sql: include_str!("postgres/0007_multipart.sql"),
    },
];

/// How long the health probe and the session exchange wait for PostgreSQL: a balancer's
/// health check must get its answer well within its own timeout, and a node must not
/// hang on a database that stopped answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a health answer is reused: a flood of health checks costs the database at
/// most one `SELECT 1` per this.
const HEALTH_CACHE: Duration = Duration::from_secs(1);
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

/// The schema migrations this build knows, `(version, name)` in order.
pub fn migrations() -> Vec<(i32, String)> {
    MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_string()))
        .collect()
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

/// The record columns, and its key lines as an array (empty: no keys), of `records r`.
const SELECT: &str = "SELECT r.id::text AS id, r.filename, r.state, r.key_sha256, \
    r.expires_at, r.operator_expires_at, r.created_at, r.updated_at, \
    ARRAY(SELECT k.line FROM record_keys k WHERE k.record_id = r.id ORDER BY k.position) AS keys \
    FROM records r";

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
            .connect_with(connect)
            .await?;
        migrate(&pool).await?;
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

    pub async fn get(&self, id: u64) -> Result<Option<Record>, PgStoreError> {
        // A login waits on this read. While the database is known to be down, probe it
        // (at most PROBE_TIMEOUT, shared by concurrent logins through the health cache)
        // instead of waiting the pool's acquire timeout: logins fail closed in about 2 s,
        // not 10, and work again as soon as a probe succeeds.
        if self.known_down() {
            self.health().await?;
        }
        let sql = format!("{SELECT} WHERE r.id = $1::numeric");
        let row = query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
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

    /// One page of records in id order (see [`Store::page`]): one query, served by the
    /// primary key, or by the indexes of migration 5 for the filters. Statements are sent
    /// unnamed, so PostgreSQL plans each with its values and the `IS NULL` branches of
    /// absent filters fold away.
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
    /// earlier record of that id left is removed first), as in [`super::FileStore`].
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

    /// The ids of records that change, from any node. Notifications are not queued for
    /// a listener that is reconnecting, so each loss of the connection is reported as
    /// [`Change::Missed`]: re-read everything then (and re-check now and then anyway).
    /// Holds one of the pool's connections.
    pub async fn listen(&self) -> Result<Changes, PgStoreError> {
        PgStore::listen_on(&self.pool).await
    }

    async fn listen_on(pool: &PgPool) -> Result<Changes, PgStoreError> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Changes { listener })
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

/// The change feed of [`PgStore::listen`].
pub struct Changes {
    listener: PgListener,
}

/// One item of the change feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Record `id` was created, replaced or deleted.
    Record(u64),
    /// The connection was lost; changes made meanwhile were not seen. The next call
    /// reconnects.
    Missed,
}

impl Changes {
    /// Waits for the next change. An error means reconnecting failed (PostgreSQL is
    /// down): call again, after a pause, to retry.
    pub async fn next(&mut self) -> Result<Change, PgStoreError> {
        loop {
            let Some(notification) = self.listener.try_recv().await? else {
                return Ok(Change::Missed);
            };
            match notification.payload().parse::<u64>() {
                Ok(id) => return Ok(Change::Record(id)),
                // Someone else's NOTIFY on our channel; nothing of ours changed.
                Err(_) => tracing::warn!(
                    payload = notification.payload(),
                    "ignored a notification that names no record"
                ),
            }
        }
    }
}

/// Applies the pending migrations, as one transaction under the migration lock: a node
/// that starts while another migrates waits for it, then finds nothing left to do.
async fn migrate(pool: &PgPool) -> Result<(), PgStoreError> {
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

fn record_from(row: &PgRow) -> Result<Record, PgStoreError> {
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
    let keys: Vec<String> = row.try_get("keys")?;
    Ok(Record {
        id,
        filename: row.try_get("filename")?,
        state,
        key_sha256: row.try_get("key_sha256")?,
        ssh_keys: keys.join("\n"),
        expires_at: row.try_get::<Option<OffsetDateTime>, _>("expires_at")?,
        operator_expires_at: row.try_get::<Option<OffsetDateTime>, _>("operator_expires_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
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

    async fn update(&self, id: u64, change: super::Change<'_>) -> Result<Updated, StoreError> {
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
            .bind(super::MAX_EXPIRED as i64)
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

/// Changes waiting for the gateway; past this many it is told to re-read everything.
const FEED_QUEUE: usize = 1024;
/// How long the change feed waits before it tries PostgreSQL again.
const FEED_RETRY: Duration = Duration::from_secs(1);

/// Forwards the other nodes' notifications to the gateway until it stops listening. A
/// connection lost, a failed reconnect or a full queue are all reported as
/// [`Changed::Unknown`] (changes may have been missed), once the feed works again.
async fn follow(
    pool: PgPool,
    tx: tokio::sync::mpsc::Sender<Changed>,
    counting: Arc<StoreCounting>,
) {
    let mut missed = false;
    loop {
        let mut changes = match PgStore::listen_on(&pool).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the change feed cannot listen; retrying");
                missed = true;
                tokio::select! {
                    _ = tokio::time::sleep(FEED_RETRY) => continue,
                    _ = tx.closed() => return,
                }
            }
        };
        // Listening again: whatever happened before this point is read afresh.
        if std::mem::take(&mut missed) && tx.send(Changed::Unknown).await.is_err() {
            return;
        }
        // A lost connection shows as `Missed`, then (if PostgreSQL is still away) as the
        // error of the listener's own reconnect: counted once.
        let mut lost = false;
        loop {
            let change = tokio::select! {
                c = changes.next() => c,
                _ = tx.closed() => return,
            };
            let item = match change {
                Ok(Change::Record(id)) => {
                    lost = false;
                    Changed::Record(id)
                }
                Ok(Change::Missed) => {
                    counting.feed_reconnect();
                    lost = true;
                    Changed::Unknown
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the change feed lost PostgreSQL; reconnecting");
                    if !lost {
                        counting.feed_reconnect();
                    }
                    missed = true;
                    break;
                }
            };
            match tx.try_send(item) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    // The gateway is behind: one re-read of everything replaces the rest.
                    counting.feed_overflow();
                    if tx.send(Changed::Unknown).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
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

    #[test]
    fn store_urls() {
        assert!(is_postgres_url("postgres://u@h:5432/db"));
        assert!(is_postgres_url("postgresql://u@h/db"));
        assert!(!is_postgres_url("file"));
        assert!(!is_postgres_url("mysql://h/db"));
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }
}
