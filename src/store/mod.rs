//! Request records and their persistence. The [`Store`] trait is what the SSH and admin
//! layers use, so that a shared database could back several gateway nodes later;
//! [`FileStore`] is the embedded default.

mod file;
pub mod postgres;
pub mod private;
mod record;

pub use file::{sync_dir_io, FileStore};
pub use record::{
    constant_time_eq, hash_key, validate_filename, validate_key, Access, FilenameError, Record,
    State,
};

use std::path::PathBuf;

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
}

/// Persistence of request records and the location of their files.
///
/// Reads are served from memory and never block; writes are durable (fsynced) before they
/// return, so they block and belong on a blocking thread.
pub trait Store: Send + Sync + 'static {
    fn get(&self, id: u64) -> Option<Record>;
    /// All records, ordered by id.
    fn list(&self) -> Vec<Record>;
    /// Creates or replaces a record atomically. A record created under an id that is not
    /// in the store starts with no files: whatever an earlier record of that id left behind
    /// (deleted without purge) is removed first, so it can never reach the new customer.
    fn put(&self, record: Record) -> Result<(), StoreError>;
    /// Removes a record; with `purge` also its files, including those an earlier delete
    /// without purge left behind. `false` if there was neither a record nor (with `purge`)
    /// files.
    fn delete(&self, id: u64, purge: bool) -> Result<bool, StoreError>;
    /// Where the customer's upload of request `id` lives.
    fn upload_path(&self, id: u64) -> PathBuf;
    /// Where the upgraded dump of request `id` lives.
    fn upgraded_path(&self, id: u64) -> PathBuf;
}
