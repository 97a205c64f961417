//! The operator API's token: from the environment, from its file, or generated once and
//! written to the file, readable by its owner only.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use rand::RngCore;

use crate::store::private;

/// Reads the admin token: `SFTPGATE_ADMIN_TOKEN`, else the token file, else a new random
/// token written to the file (0600). The token itself is never logged.
pub(super) fn admin_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("SFTPGATE_ADMIN_TOKEN") {
        anyhow::ensure!(!t.trim().is_empty(), "SFTPGATE_ADMIN_TOKEN is empty");
        return Ok(t.trim().to_string());
    }
    match std::fs::read_to_string(path) {
        Ok(t) => {
            anyhow::ensure!(
                !t.trim().is_empty(),
                "admin token file {} is empty",
                path.display()
            );
            // One written readable by an older version, or by hand.
            private::tighten(path);
            return Ok(t.trim().to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read admin token file {}", path.display()))
        }
    }
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = hex::encode(raw);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create admin token file {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    tracing::info!(path = %path.display(), "generated a new admin token");
    Ok(token)
}
