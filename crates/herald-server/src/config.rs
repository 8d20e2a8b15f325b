//! The data dir's files ([`DATABASE_FILE`], [`DATA_DIR_LOCK_FILE`], [`DEV_CREDENTIALS_FILE`])
//! and [`Credentials`]: the token secret and the API key, configured, or generated and kept in
//! the data dir in dev mode. (`herald serve`'s options are the `herald` binary's.)

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// File name of the SQLite database in the data dir.
pub const DATABASE_FILE: &str = "herald.db";
/// File name of the data dir's lock: held by the server running on the data dir, with its pid.
pub const DATA_DIR_LOCK_FILE: &str = "herald.lock";
/// File in the data dir holding the dev-mode credentials.
pub const DEV_CREDENTIALS_FILE: &str = "dev-credentials.json";

/// File in the data dir holding a dev-mode server's generated VAPID private key (Web Push; see
/// [`crate::push::VapidKey::dev`]), URL-safe base64, readable by the owner only.
pub const DEV_VAPID_KEY_FILE: &str = "dev-vapid-private-key";

/// Shortest `HERALD_SECRET` accepted, in bytes: HS256 keys shorter than its 32-byte output can
/// be brute-forced offline from any one token. Shorter: `herald serve` refuses to start.
pub const SECRET_BYTES_MIN: usize = 32;

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
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
