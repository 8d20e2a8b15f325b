//! Who may use the admin page: signing in with the API key, the session cookie it gets, and the
//! check against cross-site requests (CSRF) on everything that changes something.
//!
//! - **The cookie holds a random token, never the key.** A sign-in that gives the API key gets
//!   `herald_admin=<32 random bytes, hex>` (`HttpOnly`, `SameSite=Strict`, `Path=/admin`,
//!   `Secure` when the page is served over TLS). The node keeps the SHA-256 of each token with
//!   its expiry, in memory: at most [`ADMIN_SESSIONS_MAX`] (then the one that expires first is
//!   dropped), each for [`ADMIN_SESSION_TTL`]. A restart signs everyone out; each node has its
//!   own sessions.
//! - **Wrong keys are slowed down.** A sign-in first takes one of [`SIGN_IN_ATTEMPTS_MAX`]
//!   places, then checks the key (in constant time); a wrong key keeps its place for
//!   [`SIGN_IN_FAILURE_DELAY`] before the 401. With every place taken the attempt is refused at
//!   once with 429, without its key being checked. So at most 4 guesses a second reach the key,
//!   whoever sends them (an operator may have to wait while someone else guesses).
//! - **CSRF.** The cookie is `SameSite=Strict`, so a browser does not send it with a request
//!   another site started. Besides, every request that changes something (sign-in, sign-out,
//!   closes, test notifications) must carry the header `X-Herald-Admin: 1`, which a page of
//!   another origin cannot add without a CORS preflight the admin listener never grants, and
//!   its `Origin`, when a browser sends one, must be the page's own (`http(s)://` + `Host`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::AdminUi;
use crate::error::ApiError;

/// The session cookie's name.
pub const ADMIN_COOKIE: &str = "herald_admin";
/// How long a sign-in lasts (12 hours); then the page asks for the key again.
pub const ADMIN_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most admin sessions a node keeps. At the bound, a new sign-in drops the session that expires
/// first (its page asks for the key again).
pub const ADMIN_SESSIONS_MAX: usize = 64;
/// Sign-ins checked at once, a wrong key's included while it waits: beyond, 429 at once.
pub const SIGN_IN_ATTEMPTS_MAX: usize = 4;
/// How long a wrong key waits before its 401 (holding its place: see the module docs).
pub const SIGN_IN_FAILURE_DELAY: Duration = Duration::from_secs(1);
/// The header every state-changing admin request carries (value `1`): the CSRF check.
pub const CSRF_HEADER: &str = "x-herald-admin";

/// The node's admin sessions and its sign-in places.
pub(crate) struct AdminSessions {
    /// SHA-256 of each session's token → when it expires.
    sessions: Mutex<HashMap<[u8; 32], Instant>>,
    sign_in_places: Arc<Semaphore>,
    /// Whether the page is served over TLS (the cookie is then `Secure`).
    secure_cookie: bool,
}

impl AdminSessions {
    pub(crate) fn new(secure_cookie: bool) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            sign_in_places: Arc::new(Semaphore::new(SIGN_IN_ATTEMPTS_MAX)),
            secure_cookie,
        }
    }

    /// Checks `key` against the API key (`check`), slowing down wrong ones (see the module
    /// docs); on success, a new session and the `Set-Cookie` value that carries it.
    pub(crate) async fn sign_in(
        &self,
        check: impl FnOnce() -> Result<(), ApiError>,
    ) -> Result<HeaderValue, ApiError> {
        let Ok(_place) = self.sign_in_places.clone().try_acquire_owned() else {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sign_in_attempts",
                format!(
                    "{SIGN_IN_ATTEMPTS_MAX} sign-ins are being checked already (a wrong key waits {} s): try again in a moment",
                    SIGN_IN_FAILURE_DELAY.as_secs()
                ),
            )
            .with_retry_after(SIGN_IN_FAILURE_DELAY.as_secs()));
        };
        if check().is_err() {
            tokio::time::sleep(SIGN_IN_FAILURE_DELAY).await;
            return Err(ApiError::unauthorized(
                "invalid_api_key",
                "the API key is wrong: the admin page signs in with the server's API key (HERALD_API_KEY)",
            ));
        }
        let mut token = [0u8; 32];
        rand::rng().fill_bytes(&mut token);
        let token_hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        {
            let mut sessions = self.sessions.lock();
            sessions.retain(|_, expires| *expires > now);
            if sessions.len() >= ADMIN_SESSIONS_MAX {
                let first = sessions.iter().min_by_key(|(_, expires)| **expires).map(|(k, _)| *k);
                if let Some(first) = first {
                    sessions.remove(&first);
                }
            }
            sessions.insert(digest(&token_hex), now + ADMIN_SESSION_TTL);
        }
        Ok(self.cookie(&token_hex, ADMIN_SESSION_TTL.as_secs()))
    }

    /// Ends the session of `headers`' cookie, if any; the `Set-Cookie` value that clears it.
    pub(crate) fn sign_out(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(token) = cookie(headers) {
            self.sessions.lock().remove(&digest(token));
        }
        self.cookie("", 0)
    }

    /// When the session of `headers`' cookie expires (Unix seconds), if it is a live one.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<u64, ApiError> {
        let not_signed_in = || {
            ApiError::unauthorized(
                "not_signed_in",
                "sign in to the admin page first (POST /admin/sign-in with the API key)",
            )
        };
        let token = cookie(headers).ok_or_else(not_signed_in)?;
        let expires = *self.sessions.lock().get(&digest(token)).ok_or_else(not_signed_in)?;
        let left = expires.checked_duration_since(Instant::now()).ok_or_else(not_signed_in)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok((now + left).as_secs())
    }

    /// Whether the session of `headers`' cookie is still live (an open event stream asks).
    pub(crate) fn is_live(&self, headers: &HeaderMap) -> bool {
        self.check(headers).is_ok()
    }

    fn cookie(&self, value: &str, max_age_secs: u64) -> HeaderValue {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        let cookie = format!(
            "{ADMIN_COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
        );
        HeaderValue::from_str(&cookie).expect("hex and ASCII make a valid header value")
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == ADMIN_COOKIE)
        .map(|(_, value)| value)
}

/// Refuses a state-changing request that may come from another site (see the module docs).
pub(crate) fn check_csrf(parts: &Parts) -> Result<(), ApiError> {
    if matches!(parts.method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    let refused = |why: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_refused",
            format!("{why}: admin requests that change something must come from the admin page itself"),
        )
    };
    if parts.headers.get(CSRF_HEADER).is_none_or(|v| v.as_bytes() != b"1") {
        return Err(refused("the header X-Herald-Admin: 1 is missing"));
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let origin = origin.to_str().unwrap_or_default();
        let same = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host);
        if !same {
            return Err(refused("the request's Origin is not the admin page's"));
        }
    }
    Ok(())
}

/// A request that passed the CSRF check (the sign-in and sign-out, which need no session).
/// Rejection: 403 `csrf_refused`.
pub(crate) struct SameSite;

impl<S: Send + Sync> FromRequestParts<S> for SameSite {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        check_csrf(parts)?;
        Ok(SameSite)
    }
}

/// A request of a signed-in operator, which passed the CSRF check if it changes something.
/// Rejections: 401 `not_signed_in`, 403 `csrf_refused`.
pub(crate) struct Operator {
    /// When its session expires, Unix seconds.
    pub(crate) expires_at: u64,
}

impl FromRequestParts<Arc<AdminUi>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ui: &Arc<AdminUi>) -> Result<Self, ApiError> {
        let expires_at = ui.sessions.check(&parts.headers)?;
        check_csrf(parts)?;
        Ok(Operator { expires_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers
            .insert(header::COOKIE, HeaderValue::from_str(&format!("a=b; {ADMIN_COOKIE}={value}")).unwrap());
        headers
    }

    #[tokio::test]
    async fn a_session_lives_until_sign_out_and_the_count_is_bounded() {
        let sessions = AdminSessions::new(true);
        let set_cookie = sessions.sign_in(|| Ok(())).await.unwrap();
        let set_cookie = set_cookie.to_str().unwrap();
        assert!(
            set_cookie.ends_with("; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=43200; Secure"),
            "{set_cookie}"
        );
        let token = set_cookie.split(';').next().unwrap().strip_prefix("herald_admin=").unwrap();
        assert_eq!(token.len(), 64);
        let headers = headers_with_cookie(token);
        assert!(sessions.is_live(&headers));
        assert!(!sessions.is_live(&headers_with_cookie(&"0".repeat(64))), "a forged token");

        for _ in 0..ADMIN_SESSIONS_MAX {
            sessions.sign_in(|| Ok(())).await.unwrap();
        }
        assert_eq!(sessions.sessions.lock().len(), ADMIN_SESSIONS_MAX);
        assert!(!sessions.is_live(&headers), "the first to expire was dropped at the bound");

        let last = sessions.sign_in(|| Ok(())).await.unwrap();
        let last = last
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("herald_admin=")
            .unwrap()
            .to_owned();
        let cleared = sessions.sign_out(&headers_with_cookie(&last));
        assert!(
            cleared
                .to_str()
                .unwrap()
                .contains("herald_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0")
        );
        assert!(!sessions.is_live(&headers_with_cookie(&last)));
    }

    #[tokio::test]
    async fn wrong_keys_wait_and_take_a_place_each() {
        let sessions = Arc::new(AdminSessions::new(false));
        let wrong = || Err(ApiError::unauthorized("invalid_api_key", "the API key is wrong"));
        let started = std::time::Instant::now();
        let waiting: Vec<_> = (0..SIGN_IN_ATTEMPTS_MAX)
            .map(|_| {
                let sessions = sessions.clone();
                tokio::spawn(async move { sessions.sign_in(wrong).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let refused = sessions.sign_in(|| panic!("not checked: every place is taken")).await.unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.code), (429, "too_many_sign_in_attempts"));
        for attempt in waiting {
            let error = attempt.await.unwrap().unwrap_err();
            assert_eq!((error.status.as_u16(), error.code), (401, "invalid_api_key"));
        }
        assert!(started.elapsed() >= SIGN_IN_FAILURE_DELAY);
        assert!(sessions.sign_in(|| Ok(())).await.is_ok(), "the places are free again");
    }
}
