//! Subscriber tokens: [`mint_token`] signs the HS256 JWT that `GET /v1/stream` and `GET /v1/poll`
//! accept, with the server's secret. An app's backend mints one per signed-in session and hands
//! it to its browser code; `herald token` does the same from the shell. [`mint_token_with_topics`]
//! adds the `topics` claim: the topics the tabs may listen to by themselves.
//!
//! Also the checks of ids and topics the server makes, made here too so that a bad one fails
//! before any request (a topic with a `,` would otherwise split in `?topics=a,b`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

/// Longest user or session id the server accepts, in bytes (checked here too, so that a bad id
/// fails where it is minted rather than at the first connection).
pub const ID_BYTES_MAX: usize = 128;

/// Longest token lifetime [`mint_token`] signs: ten years. Anything longer is surely a mistake
/// (a unit typo), and keeps `exp` far from overflow.
pub const TTL_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Longest topic the server accepts, in bytes.
pub const TOPIC_BYTES_MAX: usize = 128;

/// Most patterns in a token's `topics` claim: the server refuses a token with more (401).
pub const TOPIC_PATTERNS_MAX: usize = 100;

/// The claims of a subscriber token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The session id; without it, the server derives the session from the token, so every
    /// client given the same token shares one session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Issued at, seconds since the Unix epoch. Required by the server: signing a session out
    /// refuses the tokens issued until then.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch. The server closes a stream with reason
    /// `token_expired` at this second.
    pub exp: u64,
    /// The topics the tabs of this token may listen to by themselves (`?topics=`,
    /// [`crate::Subscriber::listen`]): names (`"post:42"`) and prefixes (`"room:*"`; `"*"` for
    /// every topic). Without it they listen only to what the app's backend makes them listen to
    /// ([`crate::Publisher::listen`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
}

/// Signs a subscriber token for `user` (and `session`, if given) valid for `ttl` from now.
///
/// Ids are checked like the server checks them: non-empty, at most [`ID_BYTES_MAX`] bytes, no
/// control characters. `ttl` must be at least one second and at most [`TTL_MAX`]; it is rounded
/// up to whole seconds. The server refuses tokens that live longer than its `--token-ttl-max`
/// (30 days by default).
pub fn mint_token(secret: &[u8], user: &str, session: Option<&str>, ttl: Duration) -> Result<String> {
    mint(secret, user, session, ttl, None)
}

/// [`mint_token`] with a `topics` claim ([`Claims::topics`]): each pattern a topic
/// ([`check_topic`]) or a topic's first bytes followed by one `*` (`"room:*"`, `"*"`), at most
/// [`TOPIC_PATTERNS_MAX`]. No pattern at all mints a token without the claim.
pub fn mint_token_with_topics(
    secret: &[u8],
    user: &str,
    session: Option<&str>,
    ttl: Duration,
    topics: &[impl AsRef<str>],
) -> Result<String> {
    if topics.len() > TOPIC_PATTERNS_MAX {
        return Err(ClientError::invalid(
            "topics claim",
            format!("it has {} patterns; at most {TOPIC_PATTERNS_MAX} are accepted", topics.len()),
        ));
    }
    let mut patterns = Vec::with_capacity(topics.len());
    for pattern in topics {
        let pattern = pattern.as_ref();
        match pattern.strip_suffix('*') {
            Some(prefix) => check_topic_text("topic pattern", prefix)?,
            None => check_topic(pattern)?,
        }
        patterns.push(pattern.to_owned());
    }
    mint(secret, user, session, ttl, (!patterns.is_empty()).then_some(patterns))
}

fn mint(
    secret: &[u8],
    user: &str,
    session: Option<&str>,
    ttl: Duration,
    topics: Option<Vec<String>>,
) -> Result<String> {
    if secret.is_empty() {
        return Err(ClientError::invalid("secret", "it is empty"));
    }
    check_id("user id", user)?;
    if let Some(session) = session {
        check_id("session id", session)?;
    }
    if ttl < Duration::from_secs(1) || ttl > TTL_MAX {
        return Err(ClientError::invalid("ttl", format!("{ttl:?} is not between 1 s and 10 years")));
    }
    let iat = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ttl_s = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let claims =
        Claims { sub: user.to_owned(), sid: session.map(str::to_owned), iat, exp: iat + ttl_s, topics };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .map_err(ClientError::Token)
}

/// Checks an id as the server does: non-empty, at most [`ID_BYTES_MAX`] bytes, no control
/// characters.
pub(crate) fn check_id(what: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(ClientError::invalid(what, "it is empty"));
    }
    if id.len() > ID_BYTES_MAX {
        return Err(ClientError::invalid(
            what,
            format!("it is {} bytes long; at most {ID_BYTES_MAX} are allowed", id.len()),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(ClientError::invalid(what, "it contains a control character"));
    }
    Ok(())
}

/// Checks a topic as the server does: 1 to [`TOPIC_BYTES_MAX`] bytes of `[A-Za-z0-9_.:@/-]`.
pub fn check_topic(topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(ClientError::invalid("topic", "it is empty"));
    }
    check_topic_text("topic", topic)
}

/// Checks the topics of one request: at least one, each a topic.
pub(crate) fn check_topics(topics: &[impl AsRef<str>]) -> Result<()> {
    if topics.is_empty() {
        return Err(ClientError::invalid("topics", "name at least one"));
    }
    topics.iter().try_for_each(|topic| check_topic(topic.as_ref()))
}

/// The bytes of a topic, or of a pattern's prefix (which may be empty: `"*"`).
fn check_topic_text(what: &'static str, text: &str) -> Result<()> {
    if text.len() > TOPIC_BYTES_MAX {
        return Err(ClientError::invalid(
            what,
            format!("{text:?} is {} bytes long; at most {TOPIC_BYTES_MAX} are allowed", text.len()),
        ));
    }
    let is_topic_byte =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'-');
    match text.bytes().position(|b| !is_topic_byte(b)) {
        Some(at) => Err(ClientError::invalid(
            what,
            format!(
                "{text:?} has {:?} at byte {at}; only A-Z a-z 0-9 _ . : @ / - are allowed",
                &text[at..].chars().next().unwrap_or('?')
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn decode(token: &str, secret: &[u8]) -> Claims {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation).unwrap().claims
    }

    #[test]
    fn mints_hs256_with_the_claims() {
        let token = mint_token(b"s3cret", "alice", Some("s1"), Duration::from_secs(3600)).unwrap();
        let claims = decode(&token, b"s3cret");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.sid.as_deref(), Some("s1"));
        assert_eq!(claims.exp - claims.iat, 3600);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
    }

    #[test]
    fn omits_sid_without_a_session_and_rounds_ttl_up() {
        let token = mint_token(b"k", "a/b c", None, Duration::from_millis(1500)).unwrap();
        let claims = decode(&token, b"k");
        assert_eq!(claims.sid, None);
        assert_eq!(claims.exp - claims.iat, 2);
        let json = serde_json::to_value(&claims).unwrap();
        assert!(json.get("sid").is_none(), "{json}");
    }

    #[test]
    fn refuses_bad_ids_ttls_and_secrets() {
        let hour = Duration::from_secs(3600);
        assert!(mint_token(b"k", "", None, hour).is_err());
        assert!(mint_token(b"k", &"x".repeat(129), None, hour).is_err());
        assert!(mint_token(b"k", &"x".repeat(128), None, hour).is_ok());
        assert!(mint_token(b"k", "a\nb", None, hour).is_err());
        assert!(mint_token(b"k", "a", Some(""), hour).is_err());
        assert!(mint_token(b"k", "a", None, Duration::ZERO).is_err());
        assert!(mint_token(b"k", "a", None, TTL_MAX + hour).is_err());
        assert!(mint_token(b"", "a", None, hour).is_err());
    }

    #[test]
    fn mints_a_topics_claim_only_when_given_patterns() {
        let hour = Duration::from_secs(3600);
        let token =
            mint_token_with_topics(b"k", "alice", Some("s1"), hour, &["post:42", "room:*", "*"]).unwrap();
        let claims = decode(&token, b"k");
        assert_eq!(claims.topics, Some(vec!["post:42".to_owned(), "room:*".to_owned(), "*".to_owned()]));
        assert_eq!(claims.sid.as_deref(), Some("s1"));
        let none: [&str; 0] = [];
        let token = mint_token_with_topics(b"k", "alice", None, hour, &none).unwrap();
        let json = serde_json::to_value(decode(&token, b"k")).unwrap();
        assert!(json.get("topics").is_none(), "{json}");
        // Nor from `mint_token`.
        assert_eq!(decode(&mint_token(b"k", "a", None, hour).unwrap(), b"k").topics, None);
    }

    #[test]
    fn refuses_patterns_and_topics_the_server_refuses() {
        let hour = Duration::from_secs(3600);
        for bad in ["", "a b", "a*b", "**", "room,1", "é", &"x".repeat(129)] {
            let error = mint_token_with_topics(b"k", "a", None, hour, &[bad]).unwrap_err();
            assert!(matches!(error, ClientError::InvalidArgument { .. }), "{bad:?}: {error:?}");
        }
        let many: Vec<String> = (0..=TOPIC_PATTERNS_MAX).map(|i| format!("t{i}")).collect();
        assert!(mint_token_with_topics(b"k", "a", None, hour, &many).is_err());
        assert!(mint_token_with_topics(b"k", "a", None, hour, &many[..TOPIC_PATTERNS_MAX]).is_ok());
        assert!(mint_token_with_topics(b"k", "a", None, hour, &["x".repeat(128)]).is_ok());
        assert!(check_topic("A-z_0.9:@/x").is_ok());
        assert!(check_topic("*").is_err() && check_topic("").is_err());
        assert!(check_topics(&["a", "b"]).is_ok());
        let none: [&str; 0] = [];
        assert!(check_topics(&none).is_err() && check_topics(&["a", "b,c"]).is_err());
    }
}
