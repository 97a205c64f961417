//! Checks and derivations over a whole [`Config`]: settings that cannot work together are
//! refused, with the flags named, before anything starts; the hook's key and the SSH
//! algorithm lists are derived from several settings.

use super::{parse_secret, Config, ConfigError, Secret};
use crate::ssh::Algorithms;

impl Config {
    /// Settings that cannot work together, named before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.proxy_protocol && self.proxy_from.is_empty() {
            // No default: a header believed from anyone would let any client claim any
            // address, and "loopback only" would silently fit no real balancer.
            return Err(ConfigError::Invalid(
                "--proxy-protocol needs --proxy-from CIDR[,CIDR...]: the load balancers' addresses, the only sources whose PROXY headers are believed".into(),
            ));
        }
        if !self.proxy_protocol && !self.proxy_from.is_empty() {
            return Err(ConfigError::Invalid(
                "--proxy-from is set but --proxy-protocol is not: pass --proxy-protocol to read PROXY headers from those sources".into(),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "--tls-cert needs --tls-key: the certificate's private key (PEM)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "--tls-key needs --tls-cert: the certificate chain (PEM) it is the key of"
                        .into(),
                ))
            }
            _ => {}
        }
        if let Some(url) = &self.on_upload_closed {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "--on-upload-closed {url}: only http:// and https:// URLs are supported"
                )));
            }
        }
        if self.hook_secret.is_some() && self.hook_secret_file.is_some() {
            return Err(ConfigError::Invalid(
                "--hook-secret and --hook-secret-file are both set: give the hook's key one way"
                    .into(),
            ));
        }
        if self.on_upload_closed.is_none()
            && (self.hook_secret.is_some() || self.hook_secret_file.is_some())
        {
            return Err(ConfigError::Invalid(
                "a hook secret is set but no hook: add --on-upload-closed URL".into(),
            ));
        }
        if self.host_key_types.is_empty() {
            return Err(ConfigError::Invalid(
                "--host-key-types is empty: name at least one of ed25519, ecdsa, rsa".into(),
            ));
        }
        self.algorithms()?;
        if self.node_name.chars().any(char::is_control) {
            return Err(ConfigError::Invalid(
                "--node-name may not contain control characters".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The hook's signing key, read from `--hook-secret-file` if that is how it is given.
    pub fn hook_key(&self) -> Result<Option<Secret>, ConfigError> {
        let Some(path) = &self.hook_secret_file else {
            return Ok(self.hook_secret.clone());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        parse_secret(&text)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
    }

    /// The algorithm set with the config file's lists in place; refuses unknown names, and
    /// a host-key list that no configured host-key type can serve.
    pub fn algorithms(&self) -> Result<Algorithms, ConfigError> {
        let algorithms = Algorithms::resolve(self.algorithm_set, &self.algorithm_overrides)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let served = |a: &russh::keys::Algorithm| self.host_key_types.iter().any(|t| t.serves(a));
        if !algorithms.host_key.iter().any(served) {
            let types: Vec<&str> = self.host_key_types.iter().map(|t| t.name()).collect();
            return Err(ConfigError::Invalid(format!(
                "no host key can be offered: --host-key-types {} has none for the {} set's host-key algorithms ({})",
                types.join(","),
                self.algorithm_set.name(),
                algorithms
                    .host_key
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(algorithms)
    }
}
