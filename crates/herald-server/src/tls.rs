//! Built-in TLS: the certificate and key from PEM files, reloaded on SIGHUP, and the rustls
//! configuration that offers HTTP/2 (ALPN `h2`) before HTTP/1.1.
//!
//! Why built in: behind no proxy, browsers allow six HTTP/1.1 connections per host, so a user
//! with seven tabs on one Herald has a tab that never connects (the top complaint of Mercure's
//! users); over HTTP/2 every tab of a browser shares one connection. A proxy in front (nginx,
//! Caddy) can do the same, and then Herald runs without TLS.
//!
//! What this module does not do: ACME (certificates come from files, renewed by whatever
//! writes them: certbot, a secret mount…), client certificates, OCSP stapling.
//!
//! Reloading: [`CertificateReloader::reload`] reads both files again and swaps the certificate
//! for new handshakes only; connections already open keep theirs. A reload that fails (a file
//! missing, a key that does not match) keeps the old certificate and says why, so a renewal
//! script that writes the two files one after the other cannot take the server down.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// ALPN protocol ids, in the server's order of preference.
pub(crate) const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Where the certificate chain and its private key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then the intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("the key in {} cannot be used: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// The server's certificate, swapped on [`reload`](Self::reload); rustls asks it for the
/// certificate at every handshake.
#[derive(Debug)]
pub struct CertificateReloader {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertificateReloader {
    /// Loads the certificate and key; fails if either cannot be used.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = load_certified_key(&files, &provider)?;
        Ok(Arc::new(Self { files, provider, current: RwLock::new(Arc::new(current)) }))
    }

    /// Reads the files again and uses them for new connections. On error the old certificate
    /// stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_certified_key(&self.files, &self.provider)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// The files this reloader reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The rustls server configuration: this certificate, ALPN `h2` then `http/1.1`.
    pub(crate) fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        config
    }
}

impl ResolvesServerCert for CertificateReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn load_certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: files.cert.clone() });
    }
    let key_pem = read(&files.key)?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey { path: files.key.clone() })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey { path: files.key.clone(), reason: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // Catches the renewal script that wrote a new key but not yet its certificate.
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(TlsError::Mismatch { cert: files.cert.clone(), key: files.key.clone() })
        }
        // The key's type cannot tell (rare): accept, as rustls itself would.
        Err(_) => Ok(certified),
    }
}
