//! HTTPS for the operator listener: rustls with the `ring` provider, the one sqlx's rustls
//! already builds with (russh uses aws-lc-rs for SSH; rustls with both providers enabled
//! would have no process default, and sqlx's TLS to PostgreSQL relies on it). The
//! certificate chain and key are PEM files (the key PKCS#8, PKCS#1 RSA or SEC1 EC), read
//! at start and again on [`Tls::reload`] (SIGHUP): the certificate is picked per handshake
//! by a resolver, so a reload changes what new handshakes get while live connections
//! keep theirs; a reload that fails keeps the certificate in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// The PEM files the listener serves.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate file {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("TLS key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS key {key} does not fit certificate {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS settings: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate new handshakes are given.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The listener's TLS: an acceptor built once, whose certificate [`reload`](Tls::reload)
/// replaces.
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(&files, &provider)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The listener speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            files,
            provider,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// The SHA-256 fingerprint (hex) of the leaf certificate in use.
    pub fn fingerprint(&self) -> String {
        let current = self.current.0.read().unwrap_or_else(|p| p.into_inner());
        leaf_fingerprint(&current)
    }

    /// Reads the files again; on success new handshakes get the new certificate, on
    /// failure the one in use stays.
    pub fn reload(&self) -> Result<String, TlsError> {
        let key = certified_key(&self.files, &self.provider)?;
        let fingerprint = leaf_fingerprint(&key);
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        Ok(fingerprint)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn leaf_fingerprint(key: &CertifiedKey) -> String {
    key.cert
        .first()
        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
        .unwrap_or_default()
}

/// The chain of `files.cert` (leaf first) with the key of `files.key`, checked to match.
fn certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_err = |path: &Path, message: String| TlsError::Cert {
        path: path.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| cert_err(&files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err(
            &files.cert,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        message: format!("{e} (a PEM private key is expected: PKCS#8, PKCS#1 RSA or SEC1 EC)"),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

/// Reloads `tls` on every SIGHUP until `shutdown`; the outcome is logged either way.
pub async fn reload_on_hangup(
    tls: Arc<Tls>,
    mut hangups: tokio::signal::unix::Signal,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        let files = tls.files();
        match tls.reload() {
            Ok(fingerprint) => tracing::info!(
                cert = %files.cert.display(),
                fingerprint = %fingerprint,
                "reloaded the TLS certificate; new connections get it"
            ),
            Err(e) => tracing::error!(
                error = %e,
                fingerprint = %tls.fingerprint(),
                "cannot reload the TLS certificate; keeping the one in use"
            ),
        }
    }
}
