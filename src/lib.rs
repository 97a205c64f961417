//! sftpgate: an embedded SSH/SFTP gateway that gives each upgrade request exactly one file.
//!
//! The crate is layered like SFTPGo: `sftp` is a one-file virtual filesystem that knows
//! nothing of accounts; `storage` keeps the dumps (files, or objects in a bucket, through
//! the S3 client `s3`); `store` holds request records; `keys` parses host and client keys;
//! `ssh` and `admin` sit on top and are wired together by `server`.

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod hook;
pub mod http;
pub mod keys;
pub mod leases;
pub mod limits;
pub mod metrics;
pub mod proxy_protocol;
pub mod ratelog;
pub mod s3;
pub mod server;
pub mod sftp;
pub mod shutdown;
pub mod ssh;
pub mod storage;
pub mod store;
