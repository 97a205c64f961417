//! Where the dumps live (`--storage`): the data directory, or an S3 bucket with its
//! local spool, and the task that aborts the bucket's abandoned multipart uploads.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StorageSpec};
use crate::s3::{S3Options, S3};
use crate::storage::object::{Ctx, S3Dumps, PARTS_IN_FLIGHT, PARTS_PER_UPLOAD, READ_CHUNKS};
use crate::storage::Dumps;
use crate::store::{private, Store};

/// Aborts abandoned multipart uploads every `every`, until `shutdown`.
pub(super) async fn sweep_uploads(s3: Arc<S3Dumps>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match s3.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(aborted = n, "abandoned multipart uploads aborted"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep abandoned multipart uploads"),
        }
    }
}

/// Where the dumps live, per `--storage`.
pub(super) fn open_dumps(cfg: &Config, store: Arc<dyn Store>) -> anyhow::Result<Dumps> {
    let StorageSpec::S3(url) = &cfg.storage else {
        return Ok(Dumps::Local);
    };
    let opts = S3Options {
        endpoint: cfg.s3_endpoint.clone(),
        region: cfg.s3_region.clone(),
        // The usual AWS ways: environment, profile.
        access: None,
    };
    let s3 = S3::from_url(url, &opts).with_context(|| format!("cannot use the storage {url}"))?;
    let spool_root = cfg.data_dir.join("spool");
    private::create_dir(&spool_root)
        .with_context(|| format!("cannot create {}", spool_root.display()))?;
    tracing::info!(storage = %url, part_size = cfg.s3_part_size, "dumps are kept on S3");
    Ok(Dumps::S3(Arc::new(S3Dumps::new(Ctx {
        s3,
        store,
        rt: tokio::runtime::Handle::current(),
        spool_root,
        part_size: cfg.s3_part_size,
        parts_per_upload: PARTS_PER_UPLOAD,
        send_permits: Arc::new(Semaphore::new(PARTS_IN_FLIGHT)),
        read_chunks: Arc::new(Semaphore::new(READ_CHUNKS)),
    }))))
}
