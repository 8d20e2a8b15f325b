//! Who is calling: subscribers with an HS256 JWT ([`Subscriber`]), publishers with the API key
//! ([`Publisher`]).
//!
//! A subscriber token is taken from `Authorization: Bearer …`, then `?token=…` (EventSource
//! cannot set headers; given twice, it is refused), then the `herald_token` cookie. Only HS256
//! is accepted (so `alg: none` and every other algorithm are refused); `sub`, `exp` and `iat`
//! are required; there is no leeway on `exp` nor `nbf`: a token is refused from the second it
//! expires, and until its `nbf`. A token may live at most [`TokenRules::ttl_max`] (`exp - iat`,
//! and `exp - now`), may not be issued more than [`IAT_FUTURE_SECS_MAX`] ahead of our clock,
//! and carries an `aud` exactly when the server has an audience. Then the deny-list of closed
//! sessions ([`herald_core::Revocations`]) refuses a token issued at or before its session's
//! close (`token_revoked`). Every refusal message is ours: the JWT library's errors are never
//! shown (they name its internals).
//! A token from the cookie is accepted only from the pages [`crate::origin`] allows (403
//! `forbidden_origin` otherwise), before it is verified.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use herald_core::{SessionId, TOPIC_PATTERNS_MAX, Topic, TopicPatterns, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::error::ApiError;

/// Name of the cookie that may carry a subscriber token.
pub const TOKEN_COOKIE: &str = "herald_token";

/// Longest token lifetime accepted by default (`--token-ttl-max`): 30 days.
pub const TOKEN_TTL_MAX_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);

/// How far in the future a token's `iat` may be (the app's clock may run a little ahead of
/// ours). More: refused. Bounds how long a token issued "later" can escape a revocation.
pub const IAT_FUTURE_SECS_MAX: u64 = 60;

/// What a subscriber token must satisfy beyond its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// Longest lifetime: `exp - iat` and `exp - now` may not exceed it. Also how long
    /// revocations are kept (after it, every token they refuse has expired).
    pub ttl_max: Duration,
    /// `Some`: tokens must carry this `aud` (a string, or an array holding it). `None`: tokens
    /// with an `aud` are refused (they were meant for some other service).
    pub audience: Option<String>,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self { ttl_max: TOKEN_TTL_MAX_DEFAULT, audience: None }
    }
}

/// Verifies subscriber tokens and the publishers' API key.
pub struct Auth {
    decoding_key: DecodingKey,
    /// Only for the dev-mode demo, which mints tokens ([`Auth::mint_token`]).
    encoding_key: EncodingKey,
    validation: Validation,
    rules: TokenRules,
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
    iat: u64,
    /// Topics (and `prefix*` patterns) the tabs may listen to by themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topics: Option<Vec<String>>,
}

/// A verified subscriber: the user and session its token names.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub user: UserId,
    pub session: SessionId,
    /// Expiry of the token, seconds since the Unix epoch.
    pub expires_at: u64,
    /// When the token was issued (`iat`), seconds since the Unix epoch: revocations compare
    /// it with the time of the close.
    pub issued_at: u64,
    /// The token's `topics` claim: what the tabs may listen to by themselves (empty without it).
    pub topics: Arc<TopicPatterns>,
}

impl Subscriber {
    /// Checks that the token lets its tabs listen to each of `topics` by themselves: 403
    /// `topic_forbidden`, naming the first that it does not.
    pub fn check_may_listen(&self, topics: &[Topic]) -> Result<(), ApiError> {
        match topics.iter().find(|t| !self.topics.allows(t)) {
            None => Ok(()),
            Some(topic) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "topic_forbidden",
                format!("the token's `topics` claim does not allow listening to {:?}", topic.as_str()),
            )),
        }
    }

    /// How long the token is valid still (zero once it expired): a wait held for this
    /// subscriber (a long poll) ends by then, so the next request shows the token again.
    pub fn time_left(&self) -> std::time::Duration {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        std::time::Duration::from_secs(self.expires_at).saturating_sub(now)
    }
}

/// A caller that presented the API key.
#[derive(Debug, Clone, Copy)]
pub struct Publisher;

impl Auth {
    pub fn new(secret: &[u8], api_key: &[u8], rules: TokenRules) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // `exp` is the first second at which the token is refused (RFC 7519); jsonwebtoken alone
        // still accepts it during that second (`exp < now`), while streams close at `exp` sharp.
        validation.reject_tokens_expiring_in_less_than = 1;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Without an audience configured, jsonwebtoken refuses tokens that carry one; with it,
        // tokens must carry it.
        match &rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "sub", "iat", "aud"]);
            }
            None => validation.set_required_spec_claims(&["exp", "sub", "iat"]),
        }
        Self {
            decoding_key: DecodingKey::from_secret(secret),
            encoding_key: EncodingKey::from_secret(secret),
            validation,
            rules,
            api_key: api_key.to_vec(),
        }
    }

    /// The rules tokens are checked against.
    pub fn rules(&self) -> &TokenRules {
        &self.rules
    }

    /// A subscriber token for `user` (and `session`) issued now that expires at `expires_at`
    /// (Unix seconds). Herald itself only mints tokens for the dev-mode demo; apps mint their
    /// own.
    pub fn mint_token(&self, user: &UserId, session: Option<&SessionId>, expires_at: u64) -> String {
        self.mint_token_listening(user, session, expires_at, &[])
    }

    /// [`Auth::mint_token`], with a `topics` claim (when `topics` is not empty).
    pub fn mint_token_listening(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        expires_at: u64,
        topics: &[&str],
    ) -> String {
        #[derive(Serialize)]
        struct Minted<'a> {
            #[serde(flatten)]
            claims: Claims,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
        }
        let claims = Claims {
            sub: user.as_str().to_owned(),
            sid: session.map(|s| s.as_str().to_owned()),
            exp: expires_at,
            iat: now_secs(),
            topics: (!topics.is_empty()).then(|| topics.iter().map(|t| (*t).to_owned()).collect()),
        };
        let minted = Minted { claims, aud: self.rules.audience.as_deref() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &minted, &self.encoding_key)
            .expect("HS256 signing cannot fail")
    }

    /// Verifies a subscriber token (signature and claims, not revocation) and returns who it is
    /// for.
    pub fn verify_token(&self, token: &str) -> Result<Subscriber, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding_key, &self.validation)
            .map_err(|e| self.refusal(e.kind()))?;
        let claims = data.claims;
        let now = now_secs();
        let ttl_max = self.rules.ttl_max.as_secs();
        if claims.iat > now.saturating_add(IAT_FUTURE_SECS_MAX) {
            return Err(invalid(format!(
                "the token was issued in the future (`iat` is more than {IAT_FUTURE_SECS_MAX} s ahead of the server's clock)"
            )));
        }
        if claims.exp.saturating_sub(claims.iat) > ttl_max || claims.exp.saturating_sub(now) > ttl_max {
            return Err(invalid(format!(
                "the token lives too long: at most {ttl_max} s from `iat` to `exp` (and from now to `exp`) are accepted"
            )));
        }
        let user = UserId::new(&claims.sub).map_err(|e| invalid(format!("the token's `sub`: {e}")))?;
        let session = match claims.sid {
            Some(sid) => SessionId::new(sid).map_err(|e| invalid(format!("the token's `sid`: {e}")))?,
            None => session_of_token(token),
        };
        let topics = match &claims.topics {
            None => TopicPatterns::default(),
            Some(patterns) if patterns.len() > TOPIC_PATTERNS_MAX => {
                return Err(invalid(format!(
                    "the token's `topics` claim has {} patterns; at most {TOPIC_PATTERNS_MAX} are accepted",
                    patterns.len()
                )));
            }
            Some(patterns) => TopicPatterns::parse(patterns)
                .map_err(|e| invalid(format!("the token's `topics` claim: {e}")))?,
        };
        Ok(Subscriber {
            user,
            session,
            expires_at: claims.exp,
            issued_at: claims.iat,
            topics: Arc::new(topics),
        })
    }

    /// Our words for jsonwebtoken's refusal `kind` (its own messages name its internals).
    fn refusal(&self, kind: &jsonwebtoken::errors::ErrorKind) -> ApiError {
        use jsonwebtoken::errors::ErrorKind;
        match kind {
            ErrorKind::ExpiredSignature => ApiError::unauthorized("token_expired", "the token has expired"),
            ErrorKind::ImmatureSignature => {
                invalid("the token is not valid yet (its `nbf` is in the future)")
            }
            ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                "iat" => invalid("the token has no `iat` claim (when it was issued): it is required"),
                "aud" => invalid("the token has no `aud` claim; this server requires its audience"),
                "exp" => invalid("the token has no `exp` claim"),
                "sub" => invalid("the token has no `sub` claim"),
                _ => invalid("the token lacks a required claim"),
            },
            ErrorKind::InvalidAudience => match self.rules.audience {
                Some(_) => invalid("the token's `aud` is not this server's audience"),
                None => invalid(
                    "the token has an `aud` claim, and this server accepts none (see --token-audience)",
                ),
            },
            ErrorKind::InvalidSignature => invalid("the token's signature is wrong"),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
                invalid("the token must be signed with HS256")
            }
            ErrorKind::Json(_) => invalid(
                "the token's header or claims are not what is expected (`sub` a string, `exp`, `iat` and `nbf` whole seconds)",
            ),
            _ => invalid("the token is not a well-formed JWT"),
        }
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

/// The `?token=` of the query, if any; more than one is refused (which to believe?).
fn query_token(parts: &Parts) -> Result<Option<String>, ApiError> {
    if parts.uri.query().is_none() {
        return Ok(None);
    }
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map_err(|_| ApiError::bad_request("invalid_query", "the query string is not valid"))?
        .0;
    let mut tokens = pairs.into_iter().filter(|(name, _)| name == "token").map(|(_, value)| value);
    let token = tokens.next();
    if tokens.next().is_some() {
        return Err(invalid("send one token: `token` appears more than once in the query"));
    }
    Ok(token)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unauthorized("invalid_token", message)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
        let token = match bearer(&parts.headers) {
            Some(token) => Some(token.to_owned()),
            None => query_token(parts)?,
        };
        let token = match token {
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
        let subscriber = app.auth.verify_token(&token)?;
        subscriber.check_not_revoked(app).await?;
        Ok(subscriber)
    }
}

impl Subscriber {
    /// Refuses (401 `token_revoked`) a token issued at or before the close of its session or of
    /// all its user's sessions. Cheap: the deny-list is cached (see [`herald_core::revocation`]).
    pub async fn check_not_revoked(&self, app: &App) -> Result<(), ApiError> {
        if app.notifier.revocations().is_revoked(&self.user, &self.session, self.issued_at).await? {
            return Err(ApiError::unauthorized(
                "token_revoked",
                "this token's session was closed (signed out) after the token was issued; sign in again",
            ));
        }
        Ok(())
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
