//! Web Push's vocabulary: a browser's push subscription kept for one session of a user
//! ([`PushSubscription`]), the bounds on how many a user keeps ([`PushBounds`]), a push waiting
//! in the store's outbox to be sent ([`PushDelivery`]), and the marker a durable publish leaves
//! in its append's transaction until its pushes are in the outbox ([`PushRequest`],
//! [`PushPending`]).
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
//! (at least once), nothing else does. Senders *claim* due rows with a lease
//! ([`crate::Store::push_claim`]): two nodes on one store never take the same row while its
//! lease runs, and a node that dies mid-send leaves its rows to be claimed again once it ends.
//!
//! **Why a marker.** A durable publish's pushes are decided after its append (the `offline`
//! policy looks at presence once the notification was handed over), so a process that died
//! in between would lose them, and an idempotent retry ([`crate::Appended::Duplicate`]) never
//! makes them. So the append itself, in its transaction, keeps a marker ("push pending") for
//! each stored notification whose user has a push subscription, carrying the publish's
//! [`PushRequest`]. After the hand-over the notifier turns the markers into deliveries and
//! removes them in one store call ([`crate::Store::push_expand`]; a marker already expanded
//! makes nothing, so each is expanded once). A marker the publish did not expand (its process
//! died, or it was over [`PUSH_USERS_PER_PUBLISH_MAX`] users) is expanded by a sender
//! ([`crate::Notifier::expand_pending_pushes`]) once its `expand_by_ms` passed: without the
//! presence seen at publish time, so every subscription of the user gets a delivery that is
//! sent only if its session has no live tab when it is due (at least once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{Seq, SessionId, UserId};

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

/// Most users of one publish whose pushes the publish expands itself, right after its hand-over
/// (each is one store read, and one presence look-up under `offline`). The markers of the
/// others are left to the senders, due at once ([`crate::Notifier::expand_pending_pushes`]):
/// they get their push too, a little later. An ephemeral `always` publish (no marker) pushes to
/// this many users at most; the others get no push, and a warning is logged.
pub const PUSH_USERS_PER_PUBLISH_MAX: usize = 100;

/// How long after its push was due a marker the publish did not expand waits before a sender
/// expands it (30 s): the publish's own expansion comes within milliseconds, so a marker this
/// old belongs to a process that died in between. A marker's `expand_by_ms` is its push's due
/// time (the publish, plus the grace period under `offline`) plus this.
pub const PUSH_MARKER_ORPHANED_AFTER: Duration = Duration::from_secs(30);

/// Most deliveries the push outbox holds (100,000): what a push service that refuses everything
/// for an hour can pile up. At the bound new deliveries are dropped (logged, and counted in
/// `herald_push_dropped_total{reason="outbox_full"}`); the notifications are in the inboxes
/// all the same. The depth checked is the one the sender last counted
/// ([`PushOutbox::depth`], refreshed every few seconds), plus what this node added since, so
/// no publish counts the outbox.
pub const PUSH_OUTBOX_DELIVERIES_MAX: u64 = 100_000;

/// A push's default `TTL` (RFC 8030): how long a push service keeps it for a browser that is
/// offline, 1 day. Longer is pointless for a notification also kept in the inbox.
pub const PUSH_TTL_SECS_DEFAULT: u32 = 24 * 3600;

/// Longest `Topic` header (RFC 8030: 32 characters of URL-safe base64).
pub const PUSH_TOPIC_BYTES_MAX: usize = 32;

/// What a durable publish asks of Web Push, kept by its append with each marker (see the
/// module's "Why a marker"). `None` in [`crate::NewNotification::push`] for `never`, for an
/// ephemeral publish, and whenever push is off ([`crate::Limits::push_enabled`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// [`PushPolicy::Offline`] or [`PushPolicy::Always`].
    pub policy: PushPolicy,
    /// JSON text the push carries instead of the notification's `data` (`push_payload`).
    pub payload: Option<String>,
    pub ttl_secs: u32,
    pub urgency: PushUrgency,
    /// The `Topic` header (given, or made from the notification's type).
    pub topic: String,
    /// When the pushes are due: the publish, plus the grace period under `offline`.
    pub due_at_ms: i64,
    /// When a sender expands the marker if the publish did not ([`PUSH_MARKER_ORPHANED_AFTER`]
    /// after `due_at_ms`).
    pub expand_by_ms: i64,
}

/// A marker's key: one stored notification (its user and seq).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PushMarker {
    pub user: UserId,
    pub seq: Seq,
}

/// A marker as the store keeps it: a notification whose pushes are not in the outbox yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPending {
    pub marker: PushMarker,
    pub request: PushRequest,
}

/// A marker turned into its deliveries ([`crate::Store::push_expand`]): the store adds the
/// deliveries only if it removes the marker, so a marker is expanded once, by whoever comes
/// first (the publish, or a sender that took it for orphaned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushExpansion {
    pub marker: PushMarker,
    /// Empty: nothing to push (the outbox is full, the notification is gone), the marker goes.
    pub deliveries: Vec<PushDelivery>,
}

/// Why pushes were dropped, in the order of [`PushCounters::dropped`]
/// (`herald_push_dropped_total{reason}`).
pub const PUSH_DROP_REASONS: [&str; 6] =
    ["outbox_full", "attempts_exhausted", "rejected", "unsubscribed", "tab_live", "endpoint_not_allowed"];

/// Why a send failed, in the order of [`PushCounters::failed`] (`herald_push_failed_total{reason}`):
/// the push service's answer by class, no answer within the send timeout, or no answer at all
/// (the connection was refused or broke).
pub const PUSH_FAILURE_REASONS: [&str; 4] = ["4xx", "5xx", "timeout", "refused"];

/// What Web Push did on this node, for `/metrics`: relaxed atomics.
#[derive(Debug, Default)]
pub struct PushCounters {
    /// Pushes a push service accepted (2xx).
    pub sent: AtomicU64,
    /// Sends that failed, by [`PUSH_FAILURE_REASONS`] (a send retried counts each time).
    pub failed: [AtomicU64; PUSH_FAILURE_REASONS.len()],
    /// Deliveries dropped unsent, by [`PUSH_DROP_REASONS`].
    pub dropped: [AtomicU64; PUSH_DROP_REASONS.len()],
    /// Subscriptions removed because the push service said they are gone (404, 410).
    pub subscriptions_removed: AtomicU64,
}

impl PushCounters {
    /// Counts `count` deliveries dropped for `reason` (one of [`PUSH_DROP_REASONS`]).
    pub fn drop_pushes(&self, reason: &str, count: u64) {
        if let Some(i) = PUSH_DROP_REASONS.iter().position(|r| *r == reason) {
            self.dropped[i].fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Counts a failed send for `reason` (one of [`PUSH_FAILURE_REASONS`]).
    pub fn fail(&self, reason: &str) {
        if let Some(i) = PUSH_FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// This node's side of the push outbox, shared by the notifier (which adds deliveries) and the
/// sender (which sends them): the depth last counted, the sender's wake-up, the counters.
#[derive(Debug, Default)]
pub struct PushOutbox {
    /// Deliveries in the outbox as the sender last counted them, plus those this node added
    /// since, less those it settled for good since.
    depth: AtomicU64,
    /// Wakes the sender when this node adds deliveries, instead of its next poll.
    wake: tokio::sync::Notify,
    pub counters: PushCounters,
}

impl PushOutbox {
    /// The depth last counted, plus what this node added since, less what it removed.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// The sender counted `depth` deliveries in the outbox.
    pub fn set_depth(&self, depth: u64) {
        self.depth.store(depth, Ordering::Relaxed);
    }

    /// Whether the outbox is at [`PUSH_OUTBOX_DELIVERIES_MAX`]: new deliveries are dropped.
    pub fn is_full(&self) -> bool {
        self.depth() >= PUSH_OUTBOX_DELIVERIES_MAX
    }

    /// `count` deliveries were added: counted in the depth, and the sender woken.
    pub fn added(&self, count: usize) {
        if count > 0 {
            self.depth.fetch_add(count as u64, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// A delivery left the outbox (sent, or dropped for good): one less in the depth, until the
    /// next count.
    pub fn removed(&self) {
        let _ = self.depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(1)));
    }

    /// Wakes the sender: there are markers for it to expand now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves once [`PushOutbox::added`] or [`PushOutbox::wake`] was called (at once if it was since the last wait).
    pub async fn added_since(&self) {
        self.wake.notified().await;
    }
}

/// The plaintext of a push: `{"type", "seq", "data"}` (`seq` null for an ephemeral
/// notification), and `"truncated": true` when the data did not fit and was left out. `data`
/// is JSON text checked already.
pub fn push_body(kind: &str, seq: Option<Seq>, data: &str, truncated: bool) -> String {
    let kind = serde_json::to_string(kind).expect("a string serializes");
    let seq = seq.map_or_else(|| "null".to_owned(), |s| s.to_string());
    if truncated {
        format!(r#"{{"type":{kind},"seq":{seq},"data":null,"truncated":true}}"#)
    } else {
        format!(r#"{{"type":{kind},"seq":{seq},"data":{data}}}"#)
    }
}

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
