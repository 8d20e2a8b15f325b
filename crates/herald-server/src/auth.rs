//! Who is calling: subscribers with an HS256 JWT ([`Subscriber`]), publishers with the API key
//! ([`Publisher`]).
//!
//! A subscriber token is taken from `Authorization: Bearer …`, then `?token=…` (EventSource
//! cannot set headers), then the `herald_token` cookie. Only HS256 is accepted (so `alg: none`
//! and every other algorithm are refused), `sub` and `exp` are required, and there is no leeway
//! on `exp`: a token is refused from the second it expires. A token from the cookie is accepted
//! only from the pages [`crate::origin`] allows (403 `forbidden_origin` otherwise).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use herald_core::{SessionId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::error::ApiError;

/// Name of the cookie that may carry a subscriber token.
pub const TOKEN_COOKIE: &str = "herald_token";

/// Verifies subscriber tokens and the publishers' API key.
pub struct Auth {
    decoding_key: DecodingKey,
    /// Only for the dev-mode demo, which mints tokens ([`Auth::mint_token`]).
    encoding_key: EncodingKey,
    validation: Validation,
    api_key: Vec<u8>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

#[derive(Debug, Deserialize, Serialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    exp: u64,
}

/// A verified subscriber: the user and session its token names.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub user: UserId,
    pub session: SessionId,
    /// Expiry of the token, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// A caller that presented the API key.
#[derive(Debug, Clone, Copy)]
pub struct Publisher;

impl Auth {
    pub fn new(secret: &[u8], api_key: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // `exp` is the first second at which the token is refused (RFC 7519); jsonwebtoken alone
        // still accepts it during that second (`exp < now`), while streams close at `exp` sharp.
        validation.reject_tokens_expiring_in_less_than = 1;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            decoding_key: DecodingKey::from_secret(secret),
            encoding_key: EncodingKey::from_secret(secret),
            validation,
            api_key: api_key.to_vec(),
        }
    }

    /// A subscriber token for `user` (and `session`) that expires at `expires_at` (Unix
    /// seconds). Herald itself only mints tokens for the dev-mode demo; apps mint their own.
    pub fn mint_token(&self, user: &UserId, session: Option<&SessionId>, expires_at: u64) -> String {
        let claims = Claims {
            sub: user.as_str().to_owned(),
            sid: session.map(|s| s.as_str().to_owned()),
            exp: expires_at,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding_key)
            .expect("HS256 signing cannot fail")
    }

    /// Verifies a subscriber token and returns who it is for.
    pub fn verify_token(&self, token: &str) -> Result<Subscriber, ApiError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding_key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => {
                        ApiError::unauthorized("token_expired", "the token has expired")
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        ApiError::unauthorized("invalid_token", format!("the token has no `{claim}` claim"))
                    }
                    ErrorKind::InvalidSignature => {
                        ApiError::unauthorized("invalid_token", "the token's signature is wrong")
                    }
                    ErrorKind::InvalidAlgorithm => {
                        ApiError::unauthorized("invalid_token", "the token must be signed with HS256")
                    }
                    _ => ApiError::unauthorized("invalid_token", format!("the token is not valid: {e}")),
                }
            })?;
        let claims = data.claims;
        let user =
            UserId::new(&claims.sub).map_err(|e| ApiError::unauthorized("invalid_token", e.to_string()))?;
        let session = match claims.sid {
            Some(sid) => {
                SessionId::new(sid).map_err(|e| ApiError::unauthorized("invalid_token", e.to_string()))?
            }
            None => session_of_token(token),
        };
        Ok(Subscriber { user, session, expires_at: claims.exp })
    }

    /// Checks a publisher's API key in constant time.
    pub fn verify_api_key(&self, presented: &str) -> Result<Publisher, ApiError> {
        if bool::from(presented.as_bytes().ct_eq(&self.api_key)) {
            Ok(Publisher)
        } else {
            Err(ApiError::unauthorized(
                "invalid_api_key",
                "the API key is wrong (publisher routes need the API key)",
            ))
        }
    }
}

/// The session of a token without `sid`: derived from the token itself, so that every tab given
/// the same token shares one session.
fn session_of_token(token: &str) -> SessionId {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    SessionId::new(format!("t-{hex}")).expect("a derived session id is valid")
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn query_token(parts: &Parts) -> Option<String> {
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    axum::extract::Query::<TokenQuery>::try_from_uri(&parts.uri).ok()?.0.token
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value)
}

impl FromRequestParts<Arc<App>> for Subscriber {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let token = match bearer(&parts.headers).map(str::to_owned).or_else(|| query_token(parts)) {
            Some(token) => token,
            None => {
                let token = cookie_token(&parts.headers).ok_or_else(|| {
                    ApiError::unauthorized(
                        "missing_token",
                        "send a subscriber token as `Authorization: Bearer …`, `?token=…` or the `herald_token` cookie",
                    )
                })?;
                // The browser attaches the cookie whatever page sent the request: first make
                // sure that page may use it (see `crate::origin`).
                app.settings.allowed_origins.check_cookie_request(&parts.headers, &parts.uri)?;
                token.to_owned()
            }
        };
        app.auth.verify_token(&token)
    }
}

impl FromRequestParts<Arc<App>> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let key = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("missing_api_key", "send the API key as `Authorization: Bearer <key>`")
        })?;
        app.auth.verify_api_key(key)
    }
}
