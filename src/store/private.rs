//! Private files: dumps and records are the most sensitive things the gateway holds, so
//! its directories are created 0700 and its files 0600 whatever the umask, and ones left
//! readable by an older version are tightened at start. The systemd unit's `UMask=0077`
//! is then a second guard, not the only one.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory the gateway creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the gateway creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and any missing parents with [`DIR_MODE`].
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Permissions for a new file (for `tempfile::Builder::permissions`).
pub fn file_permissions() -> Permissions {
    Permissions::from_mode(FILE_MODE)
}

/// Takes group and other bits off `path` if it has any (symlinks are left alone). Best
/// effort: a directory the operator owns differently only gets a warning.
pub fn tighten(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    let want = if meta.is_dir() {
        DIR_MODE
    } else if meta.is_file() {
        FILE_MODE
    } else {
        return;
    };
    if mode & 0o077 == 0 {
        return;
    }
    match fs::set_permissions(path, Permissions::from_mode(want)) {
        Ok(()) => {
            tracing::info!(path = %path.display(), from = format!("{mode:o}"), to = format!("{want:o}"), "made private")
        }
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot make private"),
    }
}

/// [`tighten`] on `dir` and the files directly in it.
pub fn tighten_dir(dir: &Path) {
    tighten(dir);
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            tighten(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn created_private_and_tightened() {
        let dir = tempfile::tempdir().expect("temp dir");
        let deep = dir.path().join("a/b");
        create_dir(&deep).expect("create");
        assert_eq!((mode(&dir.path().join("a")), mode(&deep)), (0o700, 0o700));
        let f = deep.join("f");
        fs::write(&f, b"x").expect("write");
        fs::set_permissions(&f, Permissions::from_mode(0o644)).expect("chmod");
        fs::set_permissions(&deep, Permissions::from_mode(0o755)).expect("chmod");
        tighten_dir(&deep);
        assert_eq!((mode(&deep), mode(&f)), (0o700, 0o600));
    }
}
