//! Keys: the gateway's host keys and the customers' authorized_keys files.

mod authorized;
mod host;
mod pattern;

pub use authorized::{
    parse_authorized_keys, AuthorizedKey, KeyLineError, KeyOptions, KeysError, MAX_BYTES, MAX_KEYS,
};
pub use host::{
    load_or_generate_host_key, load_or_generate_host_keys, HostKeyError, HostKeyFile, HostKeyType,
};
pub use pattern::{match_pattern_list, validate_pattern_list};

use russh::keys::ssh_key::{HashAlg, PublicKey};

/// `SHA256:...`, the form OpenSSH prints and logs.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}
