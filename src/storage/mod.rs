//! Where dumps live: files under the data directory (paths from the request store), or
//! objects in an S3-compatible bucket ([`object`]). The SFTP session reaches either
//! through [`crate::sftp::storage::Storage`]; the gateway and the operator API through
//! [`Dumps`].

pub mod object;

use std::sync::Arc;

use crate::sftp::storage::Storage;
use crate::sftp::LocalStorage;
use crate::store::multipart::Object;

/// The dumps of every request.
#[derive(Clone)]
pub enum Dumps {
    /// Files under DATA_DIR/requests (the default).
    Local,
    /// Objects in one bucket.
    S3(Arc<object::S3Dumps>),
}

impl Dumps {
    /// What an SFTP session reaches: the upload (`writable`, with its `.filepart` where
    /// the storage offers one) or the upgraded dump; and whether the `.filepart` is offered.
    pub fn sftp(
        &self,
        request: u64,
        writable: bool,
        paths: impl Fn(Object) -> std::path::PathBuf,
    ) -> (Arc<dyn Storage>, bool) {
        match self {
            Dumps::Local if writable => {
                let path = paths(Object::Upload);
                let partial = Some(paths(Object::Partial));
                (Arc::new(LocalStorage { path, partial }), true)
            }
            Dumps::Local => (
                Arc::new(LocalStorage {
                    path: paths(Object::Upgraded),
                    partial: None,
                }),
                false,
            ),
            Dumps::S3(s3) => (s3.sftp(request, writable), writable),
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Dumps::S3(_))
    }
}
