//! The operator CLI's text output: a request described, one line per request in a list,
//! and the API's failures as the command's error.

use anyhow::bail;

use crate::api::{Failure, RequestView};

/// Fails with the API's failure messages, if any.
pub(super) fn check(failures: &[Failure]) -> anyhow::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = failures
        .iter()
        .map(|f| format!("{}: {}", f.reason, f.message))
        .collect();
    bail!("{}", lines.join("\n"))
}

pub(super) fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub(super) fn describe(r: &RequestView) -> String {
    let keys: Vec<String> = r
        .ssh_keys
        .iter()
        .map(|k| format!("{} {} ({})", k.fingerprint, k.comment, k.algorithm))
        .collect();
    format!(
        "request {} ({})\n  file:         {} ({} bytes uploaded, upgraded: {})\n  shared file:  {}\n  connect:      {}\n  expires:      {}\n  keys:         {}\n  sessions:     {} {}",
        r.id,
        r.state.as_str(),
        r.filename,
        r.filesize,
        or_dash(r.upgraded_filesize),
        or_dash(r.shared_file.as_ref()),
        r.sample_command,
        or_dash(r.expires_at.and_then(crate::api::time_format::format)),
        if keys.is_empty() { "-".into() } else { keys.join("\n                ") },
        r.sessions,
        r.peers.join(", "),
    )
}

pub(super) fn row(r: &RequestView) -> String {
    format!(
        "{:>8}  {:<9}  {:<32}  {:>12} bytes  {} sessions",
        r.id,
        r.state.as_str(),
        r.filename,
        r.filesize,
        r.sessions
    )
}
