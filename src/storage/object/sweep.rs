//! Abandoned multipart uploads are aborted: S3 keeps (and bills) the parts of an upload
//! nobody completes. An upload is abandoned when its request no longer takes it (deleted,
//! cancelled, done: a purge aborts its own at once), or when the store never
//! recorded it (a node that died between creating it and recording it). An upload the
//! store records for a request still in draft is kept, however old: it is what a `put -a`
//! resumes, after a node was lost as well.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::{io_err, Ctx};
use crate::store::multipart::Object;
use crate::store::State;

/// How old an upload the store does not record must be before it is aborted: it may be
/// one that a node has just created and is recording.
pub const UNRECORDED_GRACE: Duration = Duration::from_secs(3600);
/// How long an operator's PUT of the upgraded dump may run before its upload counts as
/// abandoned (one whose node died).
pub const UPGRADED_GRACE: Duration = Duration::from_secs(24 * 3600);

/// One pass: returns how many uploads were aborted. `seen` remembers when this process
/// first saw each unrecorded upload: an upload is aborted only once both S3's `initiated`
/// and that are older than the grace (some servers, moto's among them, answer a fixed
/// `initiated`).
pub async fn sweep(
    ctx: &Ctx,
    now: OffsetDateTime,
    seen: &mut HashMap<String, Instant>,
) -> std::io::Result<usize> {
    let mut aborted = 0;
    let mut kept = HashSet::new();
    for (id, object, mp) in ctx.store.multiparts().await.map_err(io_err)? {
        let record = ctx.store.get(id).await.map_err(io_err)?;
        let keep = match (object, record) {
            // Also once its access expired: the customer may ask for access again and
            // resume.
            (Object::Upload | Object::Partial, Some(r)) => r.state == State::Draft,
            (Object::Upgraded, Some(_)) => now - mp.started < UPGRADED_GRACE,
            (_, None) => false,
        };
        if keep {
            kept.insert(mp.upload_id);
            continue;
        }
        ctx.s3.abort(&mp.key, &mp.upload_id).await.map_err(io_err)?;
        ctx.store
            .end_multipart(id, object, &mp.upload_id)
            .await
            .map_err(io_err)?;
        tracing::info!(target: "audit", event = "upload-aborted", request = id, object = object.as_str(), "an abandoned multipart upload was aborted");
        aborted += 1;
    }
    let uploads = ctx.s3.list_uploads("").await.map_err(io_err)?;
    let listed: HashSet<&str> = uploads.iter().map(|u| u.upload_id.as_str()).collect();
    seen.retain(|id, _| listed.contains(id.as_str()) && !kept.contains(id));
    for u in &uploads {
        if kept.contains(&u.upload_id) {
            continue;
        }
        let first = *seen.entry(u.upload_id.clone()).or_insert_with(Instant::now);
        if now - u.initiated < UNRECORDED_GRACE || first.elapsed() < UNRECORDED_GRACE {
            continue;
        }
        // Recorded ones were decided above, with the store read first: one recorded
        // since is younger than the grace.
        ctx.s3.abort(&u.key, &u.upload_id).await.map_err(io_err)?;
        tracing::info!(target: "audit", event = "upload-aborted", key = %u.key, "an unrecorded multipart upload was aborted");
        seen.remove(&u.upload_id);
        aborted += 1;
    }
    if !kept.is_empty() {
        tracing::info!(kept = kept.len(), "multipart uploads in progress kept");
    }
    Ok(aborted)
}
