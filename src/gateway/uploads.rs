//! The file a grant's SFTP session serves, where a request's dumps live, and what an
//! upload's end reports: the audit line and, with a hook, the upload-closed event, stored
//! before the client is answered. Also the lease an HTTP upload takes to write alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Gateway, Grant};
use crate::events::{Events, UploadClosed};
use crate::keys::fingerprint;
use crate::leases::Hold;
use crate::metrics::Metrics;
use crate::sftp::{SharedFile, WriteClosed, WriteSummary};
use crate::storage::Dumps;
use crate::store::multipart::Object;
use crate::store::Access;

/// How an upload reached the gateway, as its upload-closed event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Sftp,
    Http,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Sftp => "sftp",
            Via::Http => "http",
        }
    }
}

impl Gateway {
    /// The file a grant's SFTP session serves.
    pub fn shared_file(&self, grant: &Grant) -> SharedFile {
        let record = grant.record();
        let writable = grant.access == Access::Upload;
        let (storage, partial) = self.dumps.sftp(record.id, writable, |object| {
            self.local_path(record.id, object)
        });
        SharedFile {
            name: record.visible_name(grant.access),
            storage,
            writable,
            max_size: if writable { self.max_upload_size } else { None },
            partial,
            leases: writable.then(|| self.leases.for_request(record.id)),
        }
    }

    /// Where the dumps live.
    pub fn dumps(&self) -> &Dumps {
        &self.dumps
    }

    /// The size of request `id`'s upload or upgraded dump, `None` if there is none: on
    /// object storage, an upload in progress counts its committed parts.
    pub async fn dump_size(&self, id: u64, object: Object) -> std::io::Result<Option<u64>> {
        match &self.dumps {
            Dumps::S3(s3) => s3.size(id, object).await,
            Dumps::Local => match tokio::fs::metadata(self.local_path(id, object)).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// Where `object` of request `id` lives on local disk.
    fn local_path(&self, id: u64, object: Object) -> PathBuf {
        match object {
            Object::Upload => self.store.upload_path(id),
            Object::Partial => self.store.upload_path(id).with_extension("filepart"),
            Object::Upgraded => self.store.upgraded_path(id),
        }
    }

    /// Removes request `id`'s objects, and aborts its multipart uploads (best effort: the
    /// sweeper aborts what this misses).
    pub(super) async fn purge_objects(&self, id: u64) {
        if let Dumps::S3(s3) = &self.dumps {
            if let Err(e) = s3.purge(id).await {
                tracing::warn!(request = id, error = %e, "cannot remove a request's objects");
            }
        }
    }

    /// What to do each time a write handle of this grant's session is closed: see
    /// [`upload_closed`](Self::upload_closed). It runs on the session's request thread
    /// (which may block) and returns the failure to answer the CLOSE with when the event
    /// could not be stored.
    pub fn on_write_closed(self: &Arc<Self>, grant: &Grant, peer: SocketAddr) -> WriteClosed {
        let request = grant.request_id;
        let key = fingerprint(&grant.key);
        let gateway = self.clone();
        Arc::new(move |w| {
            tokio::runtime::Handle::current().block_on(gateway.upload_closed(
                request,
                Some(&key),
                peer,
                Via::Sftp,
                &w,
            ))
        })
    }

    /// An upload of `request` ended with its file durable: an SFTP write handle was closed,
    /// or an HTTP upload's body ended (`key`: the SSH key's fingerprint; an HTTP upload has
    /// none). One audit line, and with a hook the upload-closed event, stored in the
    /// outbox before this returns (so before the client is answered); the failure to
    /// answer with when it could not be stored.
    pub async fn upload_closed(
        &self,
        request: u64,
        key: Option<&str>,
        peer: SocketAddr,
        via: Via,
        w: &WriteSummary,
    ) -> Result<(), String> {
        Metrics::inc(&self.metrics.uploads_completed_total);
        let duration_ms = w.duration.as_millis() as u64;
        tracing::info!(target: "audit", event = "upload-closed", request, key = key.unwrap_or("-"), via = via.as_str(), peer = %peer,
            bytes = w.bytes, size = w.size, duration_ms, "upload closed");
        let Some(events) = &self.events else {
            return Ok(());
        };
        let event = Events::upload_closed(UploadClosed {
            request_id: request,
            key_fingerprint: key,
            via: via.as_str(),
            client: peer.to_string(),
            bytes_written: w.bytes,
            final_size: w.size,
            duration_ms,
        });
        events.emit(event).await.map(|_| ()).map_err(|e| {
            format!(
                "the upload is saved, but its upload-closed event could not be recorded ({e}); \
                 upload again to close it again (put -a resumes)"
            )
        })
    }

    /// The size limit of uploads (`--max-upload-size`), as upload sessions apply it.
    pub fn max_upload_size(&self) -> Option<u64> {
        self.max_upload_size
    }

    /// The lease of request `id`'s upload for a writer that must be alone on it (an HTTP
    /// upload): no SFTP write handle of the request is open here or on another node
    /// while it is held, and none opens. Waits at most `--lease-wait`.
    pub async fn lease_upload_alone(&self, id: u64) -> Result<Arc<Hold>, &'static str> {
        self.leases.acquire_exclusive(id).await
    }
}
