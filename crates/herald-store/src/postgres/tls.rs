//! TLS to PostgreSQL, with libpq's `sslmode` and `sslrootcert` (managed databases require TLS).
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` and leaves the certificate
//! checks to the connector it is given; libpq's `verify-ca` and `verify-full`, and
//! `sslrootcert`, are read here (`PostgresOptions::from_url` takes them out of the URL) and
//! become the connector's rules, so a URL written for psql means the same to Herald:
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | not given, `disable` | no | – |
//! | `allow`, `prefer` | if the server offers it | not checked (as libpq), unless `sslrootcert` is given: then its chain |
//! | `require` | yes | not checked (as libpq), unless `sslrootcert` is given: then its chain |
//! | `verify-ca` | yes | its chain, to `sslrootcert` or the system's roots |
//! | `verify-full` | yes | its chain and that it names the host |
//!
//! One difference from libpq: without `sslmode`, libpq tries TLS (`prefer`); Herald does not, as
//! before TLS existed here (TLS on a loopback or private network costs CPU on every message), so
//! TLS is always asked for in the URL. Without `sslrootcert`, `verify-*` trust the system's roots
//! (`/etc/ssl/certs`), not libpq's `~/.postgresql/root.crt`; `sslrootcert=system` says so
//! explicitly. Client certificates (`sslcert`, `sslkey`) are refused: not supported yet.
//!
//! The handshake's signatures are always checked, whatever the mode: "not checked" means that
//! the certificate is not judged, not that the server need not hold its key. rustls with the
//! `ring` provider, like the server's own TLS.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use herald_core::StoreError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// libpq's `sslmode`, all six.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum TlsMode {
    #[default]
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    pub(super) fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to insist.
    pub(super) fn ssl_mode(self) -> SslMode {
        match self {
            Self::Disable => SslMode::Disable,
            Self::Allow | Self::Prefer => SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => SslMode::Require,
        }
    }
}

/// Where the roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RootCerts {
    /// `sslrootcert` not given.
    Unset,
    /// `sslrootcert=system`.
    System,
    /// `sslrootcert=PATH`: PEM certificates.
    File(PathBuf),
}

/// The TLS part of a store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsSettings {
    pub(super) mode: TlsMode,
    pub(super) roots: RootCerts,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self { mode: TlsMode::Disable, roots: RootCerts::Unset }
    }
}

impl TlsSettings {
    /// The connector for these settings; with `sslmode` `disable` it is never used. Reads the
    /// roots (a missing or empty `sslrootcert` file is an error now, not at the first
    /// connection).
    pub(super) fn connector(&self) -> Result<TlsConnector, StoreError> {
        let invalid = |reason: String| StoreError::Unavailable(format!("PostgreSQL TLS: {reason}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let roots = match (&self.roots, self.mode) {
            (RootCerts::File(path), _) => Some(roots_from_file(path).map_err(invalid)?),
            (RootCerts::System, _) | (RootCerts::Unset, TlsMode::VerifyCa | TlsMode::VerifyFull) => {
                Some(system_roots().map_err(invalid)?)
            }
            (RootCerts::Unset, _) => None,
        };
        let check = match (roots, self.mode) {
            (None, _) => Check::Nothing,
            (Some(roots), TlsMode::VerifyFull) => Check::Full(webpki(roots, &provider).map_err(invalid)?),
            (Some(roots), _) => Check::Chain(webpki(roots, &provider).map_err(invalid)?),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { check, algorithms }))
            .with_no_client_auth();
        Ok(TlsConnector { config: Arc::new(config) })
    }
}

fn webpki(roots: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("cannot build the certificate verifier: {e}"))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
    let (added, _) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(format!("sslrootcert {shown} holds no certificate"));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no root certificates found on this system ({}); give sslrootcert=FILE",
            errors.join("; ")
        ));
    }
    Ok(roots)
}

/// How much of the server's certificate is judged (the handshake's signatures always are).
#[derive(Debug)]
enum Check {
    Nothing,
    /// The chain to the roots, not the name: `verify-ca`, or `sslrootcert` with a weaker mode.
    Chain(Arc<WebPkiServerVerifier>),
    /// The chain and the name: `verify-full`.
    Full(Arc<WebPkiServerVerifier>),
}

#[derive(Debug)]
struct Verifier {
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            Check::Nothing => Ok(ServerCertVerified::assertion()),
            Check::Full(webpki) => {
                webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            Check::Chain(webpki) => {
                match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                    )) => Ok(ServerCertVerified::assertion()),
                    other => other,
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS connector over tokio-rustls. Cheap to clone (one `Arc`): the pool clones
/// it for every connection it makes.
#[derive(Clone)]
pub(super) struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

impl<S> MakeTlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = TlsHandshake;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TlsHandshake, io::Error> {
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("TLS server name {domain:?}: {e}"))
        })?;
        Ok(TlsHandshake { connector: tokio_rustls::TlsConnector::from(self.config.clone()), name })
    }
}

/// One connection's handshake.
pub(super) struct TlsHandshake {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for TlsHandshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { Ok(TlsStream(self.connector.connect(self.name, stream).await?)) })
    }
}

/// A TLS connection to PostgreSQL. No channel binding: SCRAM's `tls-server-end-point` would
/// need the hash named by the certificate's signature algorithm; tokio-postgres then uses plain
/// SCRAM, which it accepts by default (`channel_binding=prefer`).
pub(super) struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
