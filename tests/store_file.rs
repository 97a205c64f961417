//! The file store against the store contract it shares with the PostgreSQL store
//! (tests/common/store_contract.rs). `Store` is imported for the suite: the file store has
//! only the trait's methods.

#[macro_use]
mod common;

use sftpgate::store::{Decision, FileStore, Store};

async fn fresh_file() -> (FileStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("data dir");
    (FileStore::open(dir.path()).expect("open"), dir)
}

/// The store a restarted node opens on the same data directory.
async fn reopen_file(dir: &tempfile::TempDir) -> FileStore {
    FileStore::open(dir.path()).expect("reopen")
}

store_contract!(
    contract,
    fresh = fresh_file,
    reopen = reopen_file,
    decision = Decision
);
