//! Web Push's vocabulary: a browser's push subscription kept for one session of a user
//! ([`PushSubscription`]), the bounds on how many a user keeps ([`PushBounds`]), and a push
//! waiting in the store's outbox to be sent ([`PushDelivery`]).
//!
//! Nothing here encrypts, signs or speaks HTTP: herald-server checks a subscription's endpoint
//! and keys before it is stored, and sends the outbox (RFC 8030/8291/8292). Core only says what
//! is kept, and the store keeps it.
//!
//! **Why an outbox.** A push is due later than its publish (the grace period of the `offline`
//! policy) and may be retried for minutes (a push service answering 429 or 5xx), so it is kept
//! in the store until it is sent: one row per notification and subscription, whose id makes a
//! second enqueue of the same pair a no-op. A sender takes due rows, sends, then removes them
//! ([`crate::Store::push_settle`]): a crash between the send and the removal sends it again
//! (at least once), nothing else does.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{SessionId, UserId};

/// How long the `offline` policy waits before it pushes to a session with no live tab (5 s by
/// default, [`crate::Limits::push_grace`]): a reload or a navigation closes a tab and opens
/// another within it, and the new tab replays the notification, so no push is due. When the
/// push is due the session is looked at again; a tab that came back meanwhile cancels it.
pub const PUSH_GRACE_DEFAULT: Duration = Duration::from_secs(5);

/// Longest plaintext a push carries, in bytes: push services take 4,096 bytes of encrypted
/// body, and aes128gcm adds 86 bytes of header, a 16-byte tag and a padding delimiter (RFC 8291,
/// one record), so 3,993 would fit; a little is kept in hand. A `push_payload` over it is
/// refused; a notification's `data` over it is pushed without its data (`"truncated": true`).
pub const PUSH_PAYLOAD_BYTES_MAX: usize = 3_800;

/// Most users of one publish whose subscriptions are looked up to push (each is one store
/// read, and one presence look-up under `offline`). Beyond it the remaining users get no push,
/// and a warning is logged: a broadcast to thousands is not what Web Push is for.
pub const PUSH_USERS_PER_PUBLISH_MAX: usize = 100;

/// A push's default `TTL` (RFC 8030): how long a push service keeps it for a browser that is
/// offline, 1 day. Longer is pointless for a notification also kept in the inbox.
pub const PUSH_TTL_SECS_DEFAULT: u32 = 24 * 3600;

/// Longest `Topic` header (RFC 8030: 32 characters of URL-safe base64).
pub const PUSH_TOPIC_BYTES_MAX: usize = 32;

/// Whom a publish is pushed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushPolicy {
    /// The default: for a durable notification, each of the user's subscriptions whose session
    /// has no live tab now, nor [`crate::Limits::push_grace`] later; an ephemeral one is never
    /// pushed under it.
    #[default]
    Offline,
    /// Every subscription of the user, at once, tabs or not.
    Always,
    /// No push.
    Never,
}

/// What a publish says about Web Push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    pub policy: PushPolicy,
    /// What the push carries instead of the notification's `data` (a title, a URL…): at most
    /// [`PUSH_PAYLOAD_BYTES_MAX`] with the rest of the push's JSON.
    pub payload: Option<Arc<RawValue>>,
    /// `None`: [`PUSH_TTL_SECS_DEFAULT`].
    pub ttl_secs: Option<u32>,
    pub urgency: PushUrgency,
    /// The `Topic` header (a newer push with one replaces an older one the push service still
    /// holds): 1–32 characters of `[A-Za-z0-9_-]`. `None`: made from the notification's type.
    pub topic: Option<String>,
}

/// Whether `topic` can be an RFC 8030 `Topic` header.
pub fn is_push_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= PUSH_TOPIC_BYTES_MAX
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `Topic` header of a notification of type `kind` when none was given: the type itself
/// if it can be one, else 22 characters of its SHA-256 (URL-safe base64), so that pushes of
/// one type replace each other at the push service.
pub fn push_topic_of_kind(kind: &str) -> String {
    if is_push_topic(kind) {
        return kind.to_owned();
    }
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(kind.as_bytes())[..16])
}

/// Most push subscriptions a user keeps by default (every browser of every sign-in). One more
/// replaces the user's oldest.
pub const PUSH_SUBSCRIPTIONS_PER_USER_MAX: usize = 20;

/// Most push subscriptions one session keeps by default: a browser has one per service-worker
/// scope, and a few scopes at most. One more replaces the session's oldest.
pub const PUSH_SUBSCRIPTIONS_PER_SESSION_MAX: usize = 4;

/// Longest push endpoint URL kept, in bytes (the push services' are 150–500).
pub const PUSH_ENDPOINT_BYTES_MAX: usize = 1_024;

/// A subscription's id from its endpoint: an endpoint is the subscription (a browser that
/// subscribes again with the same endpoint replaces its keys), and the id is what the publisher
/// API shows and removes, so that endpoints (capabilities: whoever has one can push to that
/// browser) are never echoed. 22 characters, the first 128 bits of the endpoint's SHA-256 in
/// URL-safe base64.
pub fn push_subscription_id(endpoint: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(endpoint.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// A browser's `PushSubscription`, kept for the session that registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSubscription {
    /// [`push_subscription_id`] of the endpoint.
    pub id: String,
    pub user: UserId,
    pub session: SessionId,
    /// The push service's URL for this browser (`https://`, checked by the server).
    pub endpoint: String,
    /// The browser's P-256 public key, uncompressed, URL-safe base64 as the browser gives it.
    pub p256dh: String,
    /// The browser's 16-byte authentication secret, URL-safe base64.
    pub auth: String,
    pub created_at_ms: i64,
}

/// How many push subscriptions a store keeps for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushBounds {
    /// Across all the user's sessions ([`PUSH_SUBSCRIPTIONS_PER_USER_MAX`] by default).
    pub per_user_max: usize,
    /// In one session ([`PUSH_SUBSCRIPTIONS_PER_SESSION_MAX`] by default).
    pub per_session_max: usize,
}

impl Default for PushBounds {
    fn default() -> Self {
        Self {
            per_user_max: PUSH_SUBSCRIPTIONS_PER_USER_MAX,
            per_session_max: PUSH_SUBSCRIPTIONS_PER_SESSION_MAX,
        }
    }
}

/// RFC 8030's `Urgency` header: how soon the push service should wake the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushUrgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}

impl PushUrgency {
    /// The header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VeryLow => "very-low",
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// One push to one subscription, as the outbox keeps it until it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushDelivery {
    /// `{publish}/{subscription}`: one delivery per notification and subscription, so a second
    /// enqueue of the same pair (a publish retried with its idempotency key) stores nothing.
    pub id: String,
    /// The subscription's id; the subscription itself (endpoint, keys) is read when sending, so
    /// that one removed meanwhile gets nothing.
    pub subscription: String,
    pub user: UserId,
    /// Sent only if this session has no live tab when the push is due (the `offline` policy);
    /// `None`: sent regardless (`always`).
    pub unless_live: Option<SessionId>,
    /// The plaintext the browser's service worker gets (JSON text).
    pub payload: String,
    /// RFC 8030 `TTL`, seconds the push service keeps it for an unreachable browser.
    pub ttl_secs: u32,
    pub urgency: PushUrgency,
    /// RFC 8030 `Topic`: a newer push with the same topic replaces one the push service still
    /// holds (at most 32 characters of URL-safe base64).
    pub topic: Option<String>,
    /// When to send it (ms since the Unix epoch).
    pub due_at_ms: i64,
    /// Sends tried so far (each answered 429, 5xx or not at all).
    pub attempts: u32,
}

/// What to do with a delivery once a send was tried ([`crate::Store::push_settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushSettle {
    /// Sent, given up, or no longer wanted: remove it.
    Done,
    /// Try again at `due_at_ms`, having tried `attempts` times.
    Retry { due_at_ms: i64, attempts: u32 },
}

/// Which of a user's subscriptions to forget once `kept` (all the user's, the new one included)
/// is over `bounds`: the oldest of the new one's session beyond
/// [`PushBounds::per_session_max`], then the oldest of the user beyond
/// [`PushBounds::per_user_max`], oldest by `created_at_ms`, then id. The one rule every store
/// applies (each reads the user's rows, at most the bound plus one, and removes these).
pub fn push_evictions(kept: &[PushSubscription], session: &SessionId, bounds: PushBounds) -> Vec<String> {
    let mut by_age: Vec<&PushSubscription> = kept.iter().collect();
    by_age.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    let mut evicted = Vec::new();
    let in_session = by_age.iter().filter(|s| &s.session == session).count();
    let session_excess = in_session.saturating_sub(bounds.per_session_max);
    by_age
        .iter()
        .filter(|s| &s.session == session)
        .take(session_excess)
        .for_each(|s| evicted.push(s.id.clone()));
    let left = by_age.len() - evicted.len();
    let user_excess = left.saturating_sub(bounds.per_user_max);
    let user_evicted: Vec<String> =
        by_age.iter().filter(|s| !evicted.contains(&s.id)).take(user_excess).map(|s| s.id.clone()).collect();
    evicted.extend(user_evicted);
    evicted
}
