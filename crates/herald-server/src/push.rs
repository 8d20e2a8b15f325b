//! Web Push's server side that is not HTTP routing: the VAPID key ([`VapidKey`], RFC 8292) and
//! the rules a browser's push endpoint must follow before it is kept ([`EndpointRules`]), with
//! [`PushSettings`], how a server is configured for both. The routes are in `api::push`.
//!
//! **Why an allow-list of push-service hosts.** A subscription's endpoint is a URL the browser
//! gives and Herald later POSTs to: without a check, any subscriber could make the server send
//! requests wherever they like (SSRF). Endpoints must be `https://` on a known push service's
//! host ([`PUSH_HOSTS_DEFAULT`], or the operator's list); a loopback address (`http://` or
//! `https://`) only when the settings allow it (dev mode, or a test's local push service).
//!
//! # Layout
//! - [`VapidKey`]: the application server's P-256 key, from its private key in URL-safe base64
//!   (the format of `web-push generate-vapid-keys`) or generated; its public key (what
//!   `pushManager.subscribe` takes) and the `Authorization: vapid t=…, k=…` header of a push.
//! - [`EndpointRules`]: the endpoint check; [`check_keys`]: the browser's `p256dh` and `auth`.
//! - [`sender`]: the loop that sends the outbox's due pushes, with its bounds and retries.

pub mod sender;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_core::{PUSH_ENDPOINT_BYTES_MAX, PushBounds};
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;

/// The push services of the browsers in use, by host: Chrome and Edge's (FCM), Firefox's
/// (Mozilla autopush), Windows' (WNS, any of its `*.notify.windows.com` hosts) and Safari's
/// (Apple, `web.push.apple.com` and its regional `*.push.apple.com`). A leading `*.` allows any
/// subdomain.
pub const PUSH_HOSTS_DEFAULT: &[&str] = &[
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.notify.windows.com",
    "web.push.apple.com",
    "*.push.apple.com",
];

/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours; push services refuse
/// longer). Each push signs a new one.
pub const VAPID_TOKEN_TTL_SECS: u64 = 12 * 3600;

/// The subject a dev-mode server gives its generated key (a real deployment names a contact).
pub const VAPID_SUBJECT_DEV: &str = "mailto:dev@herald.invalid";

/// Why a VAPID key or subject was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VapidError {
    #[error("the VAPID private key must be 32 bytes in URL-safe base64 (43 characters), a P-256 scalar")]
    BadKey,
    #[error("the VAPID subject must be a `mailto:` address or an `https://` URL, not {0:?}")]
    BadSubject(String),
}

/// Why a dev-mode server has no VAPID key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevKeyError {
    #[error(transparent)]
    Vapid(#[from] VapidError),
    #[error("cannot read or write the dev VAPID key {}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

/// The application server's key pair and subject (RFC 8292).
#[derive(Clone)]
pub struct VapidKey {
    signing: p256::ecdsa::SigningKey,
    /// The public key, uncompressed (65 bytes), URL-safe base64 without padding.
    public_key: String,
    subject: String,
}

impl std::fmt::Debug for VapidKey {
    // Never the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_key)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    /// The key from its private scalar in URL-safe base64 (padding allowed), with `subject`.
    pub fn from_private_key(private_key: &str, subject: &str) -> Result<Self, VapidError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(private_key.trim().trim_end_matches('='))
            .map_err(|_| VapidError::BadKey)?;
        let secret = p256::SecretKey::from_slice(&bytes).map_err(|_| VapidError::BadKey)?;
        Self::new(secret, subject)
    }

    /// A new random key, with `subject`.
    pub fn generate(subject: &str) -> Result<Self, VapidError> {
        loop {
            // A random 32-byte string is a valid scalar except with probability ~2^-32.
            if let Ok(secret) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                return Self::new(secret, subject);
            }
        }
    }

    fn new(secret: p256::SecretKey, subject: &str) -> Result<Self, VapidError> {
        let subject_ok = subject.strip_prefix("mailto:").is_some_and(|a| a.contains('@'))
            || url::Url::parse(subject).is_ok_and(|u| u.scheme() == "https" && u.host().is_some());
        if !subject_ok {
            return Err(VapidError::BadSubject(subject.to_owned()));
        }
        let point = secret.public_key().to_encoded_point(false);
        Ok(Self {
            signing: p256::ecdsa::SigningKey::from(secret),
            public_key: URL_SAFE_NO_PAD.encode(point.as_bytes()),
            subject: subject.to_owned(),
        })
    }

    /// A dev-mode server's key: the one kept in `data_dir` ([`crate::config::DEV_VAPID_KEY_FILE`]),
    /// or a new one written there (mode 0600), so that browsers' subscriptions survive a
    /// restart; without a data dir (`--memory`), a new one at every start.
    pub fn dev(data_dir: Option<&std::path::Path>, subject: &str) -> Result<Self, DevKeyError> {
        let Some(dir) = data_dir else { return Ok(Self::generate(subject)?) };
        let path = dir.join(crate::config::DEV_VAPID_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(kept) => Ok(Self::from_private_key(&kept, subject)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(subject)?;
                crate::config::write_private(&path, key.private_key().as_bytes())
                    .map_err(|source| DevKeyError::Io { path: path.clone(), source })?;
                Ok(key)
            }
            Err(source) => Err(DevKeyError::Io { path, source }),
        }
    }

    /// The private key in URL-safe base64, as [`VapidKey::from_private_key`] reads it.
    pub fn private_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.signing.to_bytes())
    }

    /// The application server key for `pushManager.subscribe` (65 bytes, URL-safe base64).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The `Authorization` header of a push to `endpoint` at `now_secs`: `vapid t=JWT, k=KEY`
    /// (RFC 8292), the JWT signed ES256 with `aud` the endpoint's origin (its port included when
    /// not the scheme's default), `exp` [`VAPID_TOKEN_TTL_SECS`] ahead and `sub` the subject.
    pub fn authorization(&self, endpoint: &url::Url, now_secs: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": endpoint.origin().ascii_serialization(),
            "exp": now_secs + VAPID_TOKEN_TTL_SECS,
            "sub": self.subject,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature: p256::ecdsa::Signature = self.signing.sign(signing_input.as_bytes());
        format!(
            "vapid t={signing_input}.{}, k={}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes()),
            self.public_key
        )
    }
}

/// Why a push endpoint was refused; each names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("the endpoint is not a URL")]
    NotAUrl,
    #[error("the endpoint is longer than {PUSH_ENDPOINT_BYTES_MAX} bytes")]
    TooLong,
    #[error("the endpoint must be https://")]
    NotHttps,
    #[error("the endpoint's host {0:?} is not a push service this server sends to")]
    HostNotAllowed(String),
    #[error("the endpoint must not carry user info")]
    UserInfo,
}

/// Which endpoints are kept.
#[derive(Debug, Clone)]
pub struct EndpointRules {
    /// Hosts (a leading `*.`: any subdomain), compared in lower case.
    pub hosts: Vec<String>,
    /// Loopback addresses (`127.0.0.0/8`, `::1`, `localhost`), over `http://` too: for dev mode
    /// and tests, whose push service runs on this machine.
    pub allow_loopback: bool,
}

impl Default for EndpointRules {
    fn default() -> Self {
        Self { hosts: PUSH_HOSTS_DEFAULT.iter().map(|h| (*h).to_owned()).collect(), allow_loopback: false }
    }
}

impl EndpointRules {
    /// The endpoint, parsed, if it follows the rules.
    pub fn check(&self, endpoint: &str) -> Result<url::Url, EndpointError> {
        if endpoint.len() > PUSH_ENDPOINT_BYTES_MAX {
            return Err(EndpointError::TooLong);
        }
        let url = url::Url::parse(endpoint).map_err(|_| EndpointError::NotAUrl)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EndpointError::UserInfo);
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(EndpointError::NotAUrl),
        };
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        if loopback && self.allow_loopback && matches!(url.scheme(), "http" | "https") {
            return Ok(url);
        }
        if url.scheme() != "https" {
            return Err(EndpointError::NotHttps);
        }
        let allowed = self.hosts.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(parent) => host.strip_suffix(parent).is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            None => host == pattern.to_ascii_lowercase(),
        });
        if allowed { Ok(url) } else { Err(EndpointError::HostNotAllowed(host)) }
    }
}

/// Why a subscription's keys were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    #[error("keys.p256dh must be an uncompressed P-256 public key (65 bytes) in URL-safe base64")]
    BadP256dh,
    #[error("keys.auth must be 16 bytes in URL-safe base64")]
    BadAuth,
}

/// Checks the browser's keys: `p256dh` a point on P-256, uncompressed; `auth` 16 bytes. Both
/// URL-safe base64, padding allowed (browsers give none).
pub fn check_keys(p256dh: &str, auth: &str) -> Result<(), KeysError> {
    let point = URL_SAFE_NO_PAD.decode(p256dh.trim_end_matches('=')).map_err(|_| KeysError::BadP256dh)?;
    if point.len() != 65 || point[0] != 4 || p256::PublicKey::from_sec1_bytes(&point).is_err() {
        return Err(KeysError::BadP256dh);
    }
    match URL_SAFE_NO_PAD.decode(auth.trim_end_matches('=')) {
        Ok(secret) if secret.len() == 16 => Ok(()),
        _ => Err(KeysError::BadAuth),
    }
}

/// How a server does Web Push. Without a key, push is off: the push routes answer 404
/// `push_not_configured` and publishes push nothing.
#[derive(Debug, Clone, Default)]
pub struct PushSettings {
    pub vapid: Option<Arc<VapidKey>>,
    pub endpoints: EndpointRules,
    /// Subscriptions kept per user and per session.
    pub bounds: PushBounds,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_on_an_allowed_host() {
        let rules = EndpointRules::default();
        assert!(rules.check("https://fcm.googleapis.com/fcm/send/abc").is_ok());
        assert!(rules.check("https://wns2-par02p.notify.windows.com/w/?token=x").is_ok());
        assert_eq!(
            rules.check("https://notify.windows.com.evil.example/"),
            Err(EndpointError::HostNotAllowed("notify.windows.com.evil.example".into()))
        );
        assert_eq!(
            rules.check("https://evilnotify.windows.com/"),
            Err(EndpointError::HostNotAllowed("evilnotify.windows.com".into()))
        );
        assert_eq!(rules.check("http://fcm.googleapis.com/x"), Err(EndpointError::NotHttps));
        assert_eq!(
            rules.check("https://127.0.0.1:9/x"),
            Err(EndpointError::HostNotAllowed("127.0.0.1".into()))
        );
        assert_eq!(rules.check("https://u:p@fcm.googleapis.com/x"), Err(EndpointError::UserInfo));
        assert_eq!(rules.check("not a url"), Err(EndpointError::NotAUrl));
        let long = format!("https://fcm.googleapis.com/{}", "a".repeat(PUSH_ENDPOINT_BYTES_MAX));
        assert_eq!(rules.check(&long), Err(EndpointError::TooLong));
        let loopback = EndpointRules { allow_loopback: true, ..EndpointRules::default() };
        assert!(loopback.check("http://127.0.0.1:9/x").is_ok());
        assert!(loopback.check("https://[::1]:9/x").is_ok());
        assert_eq!(loopback.check("http://10.0.0.1/x"), Err(EndpointError::NotHttps));
    }

    #[test]
    fn keys_are_a_p256_point_and_16_bytes() {
        let point = p256::SecretKey::from_slice(&[7u8; 32]).unwrap().public_key().to_encoded_point(false);
        let p256dh = URL_SAFE_NO_PAD.encode(point.as_bytes());
        let auth = URL_SAFE_NO_PAD.encode([1u8; 16]);
        assert_eq!(check_keys(&p256dh, &auth), Ok(()));
        let mut off_curve = point.as_bytes().to_vec();
        off_curve[64] ^= 1;
        assert_eq!(check_keys(&URL_SAFE_NO_PAD.encode(&off_curve), &auth), Err(KeysError::BadP256dh));
        let compressed = p256::SecretKey::from_slice(&[7u8; 32]).unwrap().public_key().to_encoded_point(true);
        assert_eq!(
            check_keys(&URL_SAFE_NO_PAD.encode(compressed.as_bytes()), &auth),
            Err(KeysError::BadP256dh)
        );
        assert_eq!(check_keys(&p256dh, &URL_SAFE_NO_PAD.encode([1u8; 15])), Err(KeysError::BadAuth));
        assert_eq!(check_keys(&p256dh, "!!"), Err(KeysError::BadAuth));
    }

    #[test]
    fn a_vapid_key_round_trips_and_signs_a_verifiable_token() {
        use p256::ecdsa::signature::Verifier as _;
        let key = VapidKey::generate("mailto:ops@example.com").unwrap();
        let again = VapidKey::from_private_key(&key.private_key(), "https://example.com/contact").unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert!(VapidKey::from_private_key("short", "mailto:a@b").is_err());
        assert!(VapidKey::generate("ops@example.com").is_err());
        assert!(VapidKey::generate("http://example.com").is_err());
        let header = key.authorization(&url::Url::parse("https://push.example:8443/p/1").unwrap(), 1_000);
        let (token, k) = header.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap();
        assert_eq!(k, key.public_key());
        let (input, signature) = token.rsplit_once('.').unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(input.split_once('.').unwrap().1).unwrap())
                .unwrap();
        assert_eq!(claims["aud"], "https://push.example:8443");
        assert_eq!(claims["exp"], 1_000 + VAPID_TOKEN_TTL_SECS);
        let public = p256::PublicKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(k).unwrap()).unwrap();
        let signature =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
        p256::ecdsa::VerifyingKey::from(public).verify(input.as_bytes(), &signature).unwrap();
    }
}
