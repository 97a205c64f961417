//! The gateway's Ed25519 host key: generated once (0600 in a 0700 directory) and loaded on
//! every later start, so clients never see its fingerprint change.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use russh::keys::ssh_key::{private::Ed25519Keypair, LineEnding, PrivateKey};

pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "host key {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("host key {path} is not an unencrypted OpenSSH private key: {reason}")]
    Unparsable { path: PathBuf, reason: String },
}

/// Loads `dir/ssh_host_ed25519_key`, generating it (and `dir`) on first start.
/// Returns the key and whether it was generated now.
pub fn load_or_generate_host_key(dir: &Path) -> Result<(PrivateKey, bool), HostKeyError> {
    let path = dir.join(HOST_KEY_FILE);
    let io = |source| HostKeyError::Io {
        path: path.clone(),
        source,
    };
    match fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(HostKeyError::Permissions { path, mode });
            }
            let text = fs::read_to_string(&path).map_err(io)?;
            let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|e| {
                HostKeyError::Unparsable {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            if key.is_encrypted() {
                return Err(HostKeyError::Unparsable {
                    path,
                    reason: "it is encrypted".into(),
                });
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            generate(dir, &path).map(|k| (k, true))
        }
        Err(e) => Err(io(e)),
    }
}

fn generate(dir: &Path, path: &Path) -> Result<PrivateKey, HostKeyError> {
    let io = |source| HostKeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment("sftpgate host key");
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Unparsable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    // Write under a temporary name and rename, so a crash never leaves a half key behind.
    let tmp = dir.join(format!(".{HOST_KEY_FILE}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(pem.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Ok(public) = key.public_key().to_openssh() {
        let _ = fs::write(dir.join(format!("{HOST_KEY_FILE}.pub")), public + "\n");
    }
    crate::store::sync_dir_io(dir).map_err(io)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_loaded() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("keys");
        let (first, generated) = load_or_generate_host_key(&dir).unwrap();
        assert!(generated);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(HOST_KEY_FILE)), 0o600);
        let (second, generated) = load_or_generate_host_key(&dir).unwrap();
        assert!(!generated);
        assert_eq!(
            first.public_key().key_data(),
            second.public_key().key_data()
        );
    }

    #[test]
    fn refuses_readable_or_garbage_keys() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path();
        load_or_generate_host_key(dir).unwrap();
        let path = dir.join(HOST_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_generate_host_key(dir),
            Err(HostKeyError::Permissions { mode: 0o644, .. })
        ));
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_generate_host_key(dir),
            Err(HostKeyError::Unparsable { .. })
        ));
    }
}
