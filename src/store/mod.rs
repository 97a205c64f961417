//! Request records and their persistence. The [`Store`] trait is what the SSH and admin
//! layers use, so that a shared database could back several gateway nodes later;
//! [`FileStore`] is the embedded default.

mod file;
mod lease;
pub mod multipart;
pub mod outbox;
mod outbox_file;
pub mod postgres;
pub mod private;
mod record;

pub use file::{sync_dir_io, FileStore};
pub use lease::{Fence, LeaseError, LeaseStore, MemoryLeases};
pub use multipart::{Multipart, MultipartError, MultipartStore, Object, Part};
pub use outbox::{Claim, Event, NewEvent, Outbox, OutboxError, OutboxLimits, OutboxStats, Release};
pub use outbox_file::FileOutbox;
pub use record::{
    hash_key, parse_id, validate_filename, validate_key, Access, FilenameError, Record, State,
};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record {path} is not valid JSON: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("a change of record {id} tried to write record {got}")]
    WrongId { id: u64, got: u64 },
    #[error("the store's writer thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("the store answered a change of record {id} without consulting it")]
    NotConsulted { id: u64 },
    #[error(transparent)]
    Postgres(#[from] postgres::PgStoreError),
    #[error(transparent)]
    Multipart(#[from] MultipartError),
    #[error("this node's {algorithm} host key is {ours}, but the nodes sharing the store present {recorded} (recorded by node {by}): every node must have the same host keys, or clients see the key change between connections; copy the host-key directory from a running node")]
    HostKeyMismatch {
        algorithm: String,
        ours: String,
        recorded: String,
        by: String,
    },
}

/// What [`Store::page`] reads: a keyset page (by id, so that records created or deleted
/// between two calls never shift the next page), with optional filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageQuery {
    /// Only ids above this one; 0 starts at the beginning.
    pub after: u64,
    /// At most this many records.
    pub limit: usize,
    /// Only records in this state.
    pub state: Option<State>,
    /// Only records updated at or after this time.
    pub updated_since: Option<OffsetDateTime>,
}

impl PageQuery {
    /// Whether `r` passes the filters (not the id bound).
    pub fn matches(&self, r: &Record) -> bool {
        self.state.is_none_or(|s| r.state == s)
            && self.updated_since.is_none_or(|t| r.updated_at >= t)
    }
}

/// A host key a node presents, by algorithm and SHA-256 fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKey {
    pub algorithm: String,
    pub fingerprint: String,
}

/// What a change decides, given the record as it is.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Leave the record as it is (also: leave it absent).
    Keep,
    /// Create or replace the record (its `id` must be the one changed). A record created
    /// under an id that is not in the store starts with no files: whatever an earlier
    /// record of that id left behind (deleted without purge) is removed first, so it can
    /// never reach the new customer.
    Put(Record),
    /// Remove the record; with `purge` also its files, including those an earlier delete
    /// without purge left behind (so a purge does something even without a record).
    Delete { purge: bool },
}

/// The closure of [`Store::update`]: sees the current record, decides what becomes of it.
pub type Change<'a> = Box<dyn FnOnce(Option<&Record>) -> Decision + Send + 'a>;

/// What an [`Store::update`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Updated {
    /// The record the change saw.
    pub before: Option<Record>,
    /// The record now stored (`before` again after [`Decision::Keep`]).
    pub after: Option<Record>,
    /// A purge removed files (the request's directory was there).
    pub removed_files: bool,
}

impl Updated {
    /// Whether a delete removed anything: a record, or (purging) files.
    pub fn deleted(&self) -> bool {
        self.after.is_none() && (self.before.is_some() || self.removed_files)
    }
}

/// Persistence of request records and the location of their files.
///
/// Reads never wait behind a write (the file store answers them from memory). Every change
/// is one [`update`](Store::update): a read-modify-write that the store serialises per
/// record (the file store with a lock per id, a database in a transaction), so that two
/// writers of one record can never both decide from the same old version. Writes are
/// durable before `update` returns. Callers go through `Gateway::change`, which also ends
/// the live sessions a change revoked.
///
/// The S3 multipart uploads of a request's files are the supertrait's
/// ([`MultipartStore`]), implemented beside each store's own code; deleting a record
/// forgets them with it.
#[async_trait::async_trait]
pub trait Store: MultipartStore + Send + Sync + 'static {
    async fn get(&self, id: u64) -> Result<Option<Record>, StoreError>;
    /// All records, ordered by id.
    async fn list(&self) -> Result<Vec<Record>, StoreError>;
    /// At most `query.limit` records with ids above `query.after` that match its filters,
    /// ordered by id: one page of the operator's listing, read without copying or sorting
    /// the records that are not on it.
    async fn page(&self, query: &PageQuery) -> Result<Vec<Record>, StoreError>;
    /// How many records each state has (every state, zeros included), for the metrics
    /// page: counted where the records are, without copying them out.
    async fn count_by_state(&self) -> Result<[(State, u64); 6], StoreError>;
    /// Calls `change` once with the current record of `id` (or `None`), while no other
    /// update of `id` runs, and applies its decision durably. On `Ok` the change was called
    /// exactly once; on `Err` maybe not, and nothing was applied (a failed write may have
    /// left files, never a torn record).
    async fn update(&self, id: u64, change: Change<'_>) -> Result<Updated, StoreError>;
    /// Where the customer's upload of request `id` lives.
    fn upload_path(&self, id: u64) -> PathBuf;
    /// Where the upgraded dump of request `id` lives.
    fn upgraded_path(&self, id: u64) -> PathBuf;
    /// Checks that this node presents the same host keys as the other nodes sharing the
    /// store, recording those of algorithms not seen before; an error if one differs. A
    /// store only this process uses has nothing to compare with.
    async fn check_host_keys(&self, node: &str, keys: &[HostKey]) -> Result<(), StoreError> {
        let _ = (node, keys);
        Ok(())
    }
    /// The records of `ids` that exist, in one read where the store can (a database: one
    /// query), for the periodic re-check of every live session.
    async fn get_many(&self, ids: &[u64]) -> Result<Vec<Record>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for &id in ids {
            found.extend(self.get(id).await?);
        }
        Ok(found)
    }
    /// Changes made by other nodes sharing this store, as they are made. `None` for a store
    /// only this process writes (every change then goes through this node's
    /// `Gateway::change`, which re-checks at once). Taken once, by the gateway.
    fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<Changed>> {
        None
    }
    /// Whether the store answers now: cheap (a database: `SELECT 1` with a short timeout,
    /// its answer reused for a moment), for `/healthz`. A store on the local disk is
    /// always healthy here (the data directory is probed apart).
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether other nodes share this store, so that live sessions are worth
    /// [`exchanging`](Store::exchange_sessions).
    fn shared(&self) -> bool {
        false
    }
    /// Publishes the live sessions of this node (`node` is its name) for the others and
    /// returns those of the other nodes heard from lately. Called on a timer, never per
    /// packet. A store no other node shares has nothing to exchange.
    async fn exchange_sessions(
        &self,
        _node: &str,
        _mine: &[RequestSessions],
    ) -> Result<Vec<NodeSessions>, StoreError> {
        Ok(Vec::new())
    }
    /// The records whose `expires_at` is `now` or earlier (and later than `since`, if
    /// given), as `(id, expires_at)`, for the access-expired events; at most
    /// [`MAX_EXPIRED`]. A database leaves out those whose expiry has its event already
    /// (the outbox's mark, in the same database) and uses its own clock for `now`; any
    /// other store lists them all and the outbox skips the marked ones.
    async fn expired(
        &self,
        now: OffsetDateTime,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<(u64, OffsetDateTime)>, StoreError>;
    /// What the store counted so far (failed operations, change-feed reconnects), for
    /// the metrics page; zeros for a store that counts nothing.
    fn counters(&self) -> StoreCounters {
        StoreCounters::default()
    }
}

/// The most expiries [`Store::expired`] answers at once (the rest come at the next call).
pub const MAX_EXPIRED: usize = 1000;

/// Whether an expiry at `t` is in `(since, now]`.
pub fn is_due(t: OffsetDateTime, now: OffsetDateTime, since: Option<OffsetDateTime>) -> bool {
    t <= now && since.is_none_or(|s| t > s)
}

/// Client addresses listed per request and node (in the exchange and in the API); the
/// session count stays exact. Bounds what one busy request costs every node's view.
pub const MAX_PEERS_LISTED: usize = 100;

/// The live sessions of one request on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestSessions {
    pub request_id: u64,
    pub sessions: usize,
    /// Client addresses, at most [`MAX_PEERS_LISTED`] of them (the count is exact).
    pub peers: Vec<String>,
}

/// The live sessions another node published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSessions {
    /// Its `--node-name`.
    pub node: String,
    pub requests: Vec<RequestSessions>,
}

/// Operations whose failures are counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    Update,
    Health,
    Sessions,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::Read,
        Operation::Update,
        Operation::Health,
        Operation::Sessions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Update => "update",
            Operation::Health => "health",
            Operation::Sessions => "sessions",
        }
    }
}

/// Counters a store keeps (atomics, shared with its background tasks).
#[derive(Debug, Default)]
pub struct StoreCounting {
    errors: [AtomicU64; 4],
    feed_reconnects: AtomicU64,
    feed_overflows: AtomicU64,
}

impl StoreCounting {
    pub fn error(&self, op: Operation) {
        self.errors[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The change feed lost its connection (it reconnects, and everything is re-read).
    pub fn feed_reconnect(&self) {
        self.feed_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The gateway fell behind the change feed (everything is re-read).
    pub fn feed_overflow(&self) {
        self.feed_overflows.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StoreCounters {
        StoreCounters {
            errors: Operation::ALL.map(|op| (op, self.errors[op as usize].load(Ordering::Relaxed))),
            feed_reconnects: self.feed_reconnects.load(Ordering::Relaxed),
            feed_overflows: self.feed_overflows.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of [`StoreCounting`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreCounters {
    /// Failed operations, by operation.
    pub errors: [(Operation, u64); 4],
    pub feed_reconnects: u64,
    pub feed_overflows: u64,
}

impl Default for StoreCounters {
    fn default() -> Self {
        StoreCounting::default().snapshot()
    }
}

/// What another node changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Record `id` changed (or was created or deleted).
    Record(u64),
    /// Changes may have been missed (the feed reconnected, or fell behind): every record
    /// must be read again.
    Unknown,
}

/// [`Store::update`] for a change that also hands its caller a value (a refusal, what it
/// saw): the object-safe method cannot be generic, so the value goes through a slot.
pub async fn update_with<T: Send>(
    store: &dyn Store,
    id: u64,
    change: impl FnOnce(Option<&Record>) -> (Decision, T) + Send,
) -> Result<(Updated, T), StoreError> {
    let mut slot = None;
    let updated = store
        .update(
            id,
            Box::new(|record| {
                let (decision, value) = change(record);
                slot = Some(value);
                decision
            }),
        )
        .await?;
    let value = slot.ok_or(StoreError::NotConsulted { id })?;
    Ok((updated, value))
}
