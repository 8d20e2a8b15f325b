//! Configuration: [`ServeArgs`] (the `herald serve` options, each also an env var) and
//! [`Credentials`] (the token secret and the API key, generated and kept in dev mode).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_core::{Limits, Retention};
use serde::{Deserialize, Serialize};

use crate::caps::{Caps, IpNet};
use crate::origin::{AllowedOrigins, InvalidOrigin, Origin};

/// File in the data dir holding the dev-mode credentials.
pub const DEV_CREDENTIALS_FILE: &str = "dev-credentials.json";

/// Shortest `HERALD_SECRET` accepted, in bytes: HS256 keys shorter than its 32-byte output can
/// be brute-forced offline from any one token. Shorter: `herald serve` refuses to start.
pub const SECRET_BYTES_MIN: usize = 32;

/// Options of `herald serve`. Every option is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, `host:port`: an IP (`127.0.0.1:7300`, `[::1]:7300`,
    /// `0.0.0.0:7300`) or a host name (`localhost:7300`), whose first address is used.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:7300")]
    pub listen: String,
    /// Directory of the embedded SQLite database (and of the dev credentials).
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    pub data_dir: PathBuf,
    /// Keep nothing on disk: notifications live in memory and are lost on restart.
    #[arg(long, env = "HERALD_MEMORY")]
    pub memory: bool,
    /// HS256 key of subscriber tokens. Without it and the API key: dev mode.
    #[arg(long, env = "HERALD_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The publishers' API key. Without it and the secret: dev mode.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Days a notification is kept.
    #[arg(long, env = "HERALD_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u64,
    /// Notifications kept per user; the oldest go first.
    #[arg(long, env = "HERALD_RETENTION_MAX_PER_USER", default_value_t = 10_000)]
    pub retention_max_per_user: u64,
    /// Sessions per user; one more evicts the least recently active.
    #[arg(long, env = "HERALD_SESSIONS_PER_USER_MAX", default_value_t = 50)]
    pub sessions_per_user_max: usize,
    /// Clients per session; one more evicts the least recently active.
    #[arg(long, env = "HERALD_CLIENTS_PER_SESSION_MAX", default_value_t = 50)]
    pub clients_per_session_max: usize,
    /// Events queued per client; a client whose queue is full is closed with reason `lagging`.
    #[arg(long, env = "HERALD_CLIENT_QUEUE_LEN_MAX", default_value_t = 1_000)]
    pub client_queue_len_max: usize,
    /// Largest notification `data`, in bytes of JSON.
    #[arg(long, env = "HERALD_DATA_BYTES_MAX", default_value_t = 64 * 1024)]
    pub data_bytes_max: usize,
    /// Largest publish, in bytes: the size of `data` times the number of users it goes to.
    #[arg(long, env = "HERALD_PUBLISH_BYTES_MAX", default_value_t = 4 * 1024 * 1024)]
    pub publish_bytes_max: usize,
    /// Seconds between keep-alive comments on idle streams.
    #[arg(long, env = "HERALD_KEEPALIVE_SECS", default_value_t = 15)]
    pub keepalive_secs: u64,
    /// Serve HTTPS (and HTTP/2) with this PEM certificate chain; needs `--tls-key`. Reloaded
    /// with the key on SIGHUP.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Origins besides Herald's own (comma-separated, e.g. `https://app.example`) whose pages
    /// may use the `herald_token` cookie and read Herald's answers (CORS).
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub allowed_origins: Vec<Origin>,
    /// Connections open at once; one more is answered 503 `overloaded`. Default: the open-files
    /// limit (raised to its hard limit at start) minus 256. 0: no cap.
    #[arg(long, env = "HERALD_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Streams, WebSockets and polls open at once per client address; one more is answered 429
    /// `too_many_connections`. 0: no limit.
    #[arg(long, env = "HERALD_IP_CONNECTIONS_MAX", default_value_t = Caps::default().ip_connections_max)]
    pub ip_connections_max: u32,
    /// Subscriber requests (streams, polls, WebSockets, /v1/inbox…) per second per client
    /// address; over it, 429 `rate_limited`. 0: no limit.
    #[arg(long, env = "HERALD_IP_REQUESTS_PER_SEC", default_value_t = Caps::default().ip_requests_per_sec)]
    pub ip_requests_per_sec: u32,
    /// Subscriber requests per client address at once after a quiet period.
    #[arg(long, env = "HERALD_IP_REQUESTS_BURST", default_value_t = Caps::default().ip_requests_burst)]
    pub ip_requests_burst: u32,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose `X-Forwarded-For` names the
    /// client address. Without them the header is ignored.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// Inbox changes (marks, deletes) per second per user with a subscriber token; over it, 429
    /// `rate_limited`. The publisher API is not limited. 0: no limit.
    #[arg(long, env = "HERALD_INBOX_WRITES_PER_SEC", default_value_t = Caps::default().inbox_writes_per_sec)]
    pub inbox_writes_per_sec: u32,
    /// Inbox changes per user at once after a quiet period.
    #[arg(long, env = "HERALD_INBOX_WRITES_BURST", default_value_t = Caps::default().inbox_writes_burst)]
    pub inbox_writes_burst: u32,
    /// Longest subscriber-token lifetime accepted (`exp - iat`, and `exp - now`), such as `30d`,
    /// `12h` or seconds; also how long sign-outs are remembered.
    #[arg(long, env = "HERALD_TOKEN_TTL_MAX", default_value = "30d", value_parser = parse_duration)]
    pub token_ttl_max: Duration,
    /// The `aud` subscriber tokens must carry. Unset: tokens with an `aud` are refused.
    #[arg(long, env = "HERALD_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
}

/// One member of `--allowed-origins`; blanks around it are ignored.
fn parse_origin(text: &str) -> Result<Origin, InvalidOrigin> {
    text.trim().parse()
}

/// A duration as `30d`, `12h`, `90s` (humantime), or a plain number of seconds; at least 1 s.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = match text.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text.trim())
            .map_err(|e| format!("{e} (use e.g. 3600, 90s, 12h, 30d)"))?,
    };
    if duration < Duration::from_secs(1) {
        return Err("must be at least 1 second".into());
    }
    Ok(duration)
}

impl ServeArgs {
    /// The hub and publish limits these options set.
    pub fn limits(&self) -> Limits {
        Limits {
            sessions_per_user_max: self.sessions_per_user_max.max(1),
            clients_per_session_max: self.clients_per_session_max.max(1),
            client_queue_len_max: self.client_queue_len_max.max(1),
            data_bytes_max: self.data_bytes_max,
            publish_bytes_max: self.publish_bytes_max,
            ..Limits::default()
        }
    }

    /// The certificate and key files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        }
    }

    /// The origins `--allowed-origins` lists.
    pub fn allowed_origins(&self) -> AllowedOrigins {
        AllowedOrigins::new(self.allowed_origins.iter().cloned())
    }

    /// The caps these options set.
    pub fn caps(&self) -> Caps {
        Caps {
            connections_max: self.connections_max,
            ip_connections_max: self.ip_connections_max,
            ip_requests_per_sec: self.ip_requests_per_sec,
            ip_requests_burst: self.ip_requests_burst,
            trusted_proxies: self.trusted_proxies.clone(),
            inbox_writes_per_sec: self.inbox_writes_per_sec,
            inbox_writes_burst: self.inbox_writes_burst,
        }
    }

    /// The retention these options set.
    pub fn retention(&self) -> Retention {
        Retention {
            max_age: Duration::from_secs(self.retention_days.saturating_mul(24 * 3600)),
            max_per_user: self.retention_max_per_user.max(1),
            // Past the longest token lifetime, every token a sign-out refuses has expired.
            revocation_window: self.token_ttl_max,
            ..Retention::default()
        }
    }
}

/// The subscriber-token secret and the publishers' API key.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub secret: String,
    pub api_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// Why the credentials could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("set both HERALD_SECRET and HERALD_API_KEY, or neither (dev mode)")]
    OnlyOne,
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error(
        "HERALD_SECRET is {0} bytes long; it must be at least {SECRET_BYTES_MIN} (e.g. `openssl rand -base64 32`)"
    )]
    SecretTooShort(usize),
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

/// How the credentials were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsSource {
    /// Both given by the operator.
    Configured,
    /// Dev mode: generated at this start (and kept in the data dir, unless `--memory`).
    DevGenerated,
    /// Dev mode: read back from the data dir, where an earlier start kept them.
    DevLoaded,
}

impl CredentialsSource {
    /// Whether this is dev mode (credentials nobody configured).
    pub fn is_dev(self) -> bool {
        self != Self::Configured
    }
}

/// The addresses `--listen` names: `value` is `host:port`, the host an IP or a name to resolve.
/// Errors are one sentence for the command line.
pub async fn listen_addresses(value: &str) -> Result<Vec<SocketAddr>, String> {
    let usage = "give host:port, e.g. 127.0.0.1:7300, [::1]:7300 or localhost:7300";
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("--listen {value:?} has no port: {usage}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("--listen {value:?} is not host:port: {usage}"));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(value)
        .await
        .map_err(|e| format!("--listen {value:?}: cannot resolve {host:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("--listen {value:?}: {host:?} resolves to no address"));
    }
    Ok(addrs)
}

impl Credentials {
    fn generate() -> Self {
        let random = || URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        Self { secret: random(), api_key: format!("hk_{}", random()) }
    }

    /// The configured credentials; or in dev mode, those kept in `data_dir` (created on first
    /// run), or fresh ones kept nowhere when `data_dir` is `None` (`--memory`).
    pub fn resolve(
        secret: Option<&str>,
        api_key: Option<&str>,
        data_dir: Option<&Path>,
    ) -> Result<(Self, CredentialsSource), CredentialsError> {
        match (secret, api_key) {
            (Some(secret), Some(api_key)) => {
                if secret.is_empty() {
                    return Err(CredentialsError::Empty("HERALD_SECRET"));
                }
                if api_key.is_empty() {
                    return Err(CredentialsError::Empty("HERALD_API_KEY"));
                }
                if secret.len() < SECRET_BYTES_MIN {
                    return Err(CredentialsError::SecretTooShort(secret.len()));
                }
                let credentials = Self { secret: secret.to_owned(), api_key: api_key.to_owned() };
                Ok((credentials, CredentialsSource::Configured))
            }
            (None, None) => match data_dir {
                Some(dir) => Self::load_or_create(dir),
                None => Ok((Self::generate(), CredentialsSource::DevGenerated)),
            },
            _ => Err(CredentialsError::OnlyOne),
        }
    }

    /// Reads the dev credentials kept in `data_dir`, if there are any.
    pub fn load_dev(data_dir: &Path) -> Result<Option<Self>, CredentialsError> {
        let path = data_dir.join(DEV_CREDENTIALS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| CredentialsError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CredentialsError::Io { path, source }),
        }
    }

    fn load_or_create(data_dir: &Path) -> Result<(Self, CredentialsSource), CredentialsError> {
        if let Some(credentials) = Self::load_dev(data_dir)? {
            return Ok((credentials, CredentialsSource::DevLoaded));
        }
        let path = data_dir.join(DEV_CREDENTIALS_FILE);
        let io = |source| CredentialsError::Io { path: path.clone(), source };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let credentials = Self::generate();
        let json = serde_json::to_vec_pretty(&credentials).expect("credentials serialize");
        write_private(&path, &json).map_err(io)?;
        Ok((credentials, CredentialsSource::DevGenerated))
    }
}

/// Writes `bytes` to `path`, readable by the owner only where the platform allows it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ttl_max_takes_humantime_or_seconds() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_short_secret_is_refused_outside_dev_mode() {
        let short = "a".repeat(SECRET_BYTES_MIN - 1);
        let error = Credentials::resolve(Some(&short), Some("key"), None).unwrap_err();
        assert!(matches!(error, CredentialsError::SecretTooShort(31)), "{error}");
        let long = "a".repeat(SECRET_BYTES_MIN);
        assert!(Credentials::resolve(Some(&long), Some("key"), None).is_ok());
        // Dev mode generates its own, long enough.
        let (dev, _) = Credentials::resolve(None, None, None).unwrap();
        assert!(dev.secret.len() >= SECRET_BYTES_MIN);
    }
}
