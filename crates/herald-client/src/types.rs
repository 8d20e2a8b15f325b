//! The JSON bodies of the API, as serde types. Fields the server may add later are ignored when
//! reading, so a newer server does not break an older client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One notification as a client receives it (SSE `data`, long-poll and stored lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The user's sequence number; `None` for an ephemeral notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The notification's `type`, chosen by the publisher (`"notification"` by default).
    #[serde(rename = "type")]
    pub kind: String,
    /// The publisher's payload, as it was sent.
    pub data: Value,
    /// When it was published, RFC 3339 in UTC.
    pub created_at: String,
}

/// One event of a topic the client listens to (SSE `event: topic`, a poll answer's `topic`).
/// A durable one has its `tseq` (its place in the topic's log: a stream resumes each topic
/// after the last tseq handled, without gap or duplicate); an ephemeral one has none and is
/// never replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicEvent {
    /// The topic it was published to.
    pub topic: String,
    /// Its sequence number in the topic's log; `None` for an ephemeral one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tseq: Option<u64>,
    /// Its `type`, chosen by the publisher (`"notification"` by default).
    #[serde(rename = "type")]
    pub kind: String,
    /// The publisher's payload, as it was sent.
    pub data: Value,
    /// When it was published, RFC 3339 in UTC.
    pub created_at: String,
}

/// A notification (or topic event) this client could not decode: its `data` nests deeper than
/// serde_json's 128 levels, holds a number beyond f64 (`1e999999`) or a lone surrogate escape
/// (`"\ud800"`). A server refuses such `data` at publish since it checks it, but one may have
/// been stored before (an old database), or a server may send something else broken. It comes as
/// an event of its own, with its seq, so that one notification never ends a stream: a
/// [`crate::Listener`] moves past its seq like past any notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undecodable {
    /// Its seq, when the envelope or the SSE `id` said it; `None` for an ephemeral one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Its `type`, when it could be read.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its topic, when it is a topic event and that could be read (`None` for a notification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Its tseq, when it is a durable topic event and that could be read: a
    /// [`crate::Listener`] moves the topic's position past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tseq: Option<u64>,
    /// Why it could not be decoded (serde_json's message).
    pub error: String,
    /// Its JSON text as the server sent it, for a more lenient parser or a log.
    pub raw: String,
}

// `Result<_, Undecodable>` is how a list holds each item decoded or not (`PollResponse`); the
// error is as large as the items it stands for (136 bytes with its topic and tseq), and rare.
// Boxing it would change the public types for nothing.
#[allow(clippy::result_large_err)]
impl Undecodable {
    /// `raw`, which failed to decode with `error`; its seq and type read leniently from the
    /// envelope (skipping `data` without decoding it), else the seq from `id` (an SSE `id:`,
    /// a resume point whose seq part is the notification's).
    pub fn new(raw: &str, id: Option<&str>, error: &serde_json::Error) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            seq: Option<u64>,
            #[serde(rename = "type")]
            kind: Option<String>,
            topic: Option<String>,
            tseq: Option<u64>,
        }
        let (seq, kind, topic, tseq) = match serde_json::from_str::<Envelope>(raw) {
            Ok(Envelope { seq, kind, topic, tseq }) => (seq, kind, topic, tseq),
            Err(_) => {
                // The seq part of a resume point (`17;room:1=5`; see `crate::resume`).
                let seq = id.and_then(|id| id.split(';').next()?.trim().parse().ok());
                (seq, None, None, None)
            }
        };
        Self { seq, kind, topic, tseq, error: error.to_string(), raw: raw.to_owned() }
    }

    /// Decodes the notification `raw`, or says why not.
    pub fn decode(raw: &str, id: Option<&str>) -> Result<Notification, Undecodable> {
        serde_json::from_str(raw).map_err(|error| Self::new(raw, id, &error))
    }

    /// Decodes the topic event `raw`, or says why not.
    pub fn decode_topic_event(raw: &str) -> Result<TopicEvent, Undecodable> {
        serde_json::from_str(raw).map_err(|error| Self::new(raw, None, &error))
    }
}

/// Whom a notification is for. Serialized as the exact JSON shapes of `to`:
/// `{"user": U}`, `{"users": [U, …]}`, `{"user": U, "session": S}`, `{"client": C}`,
/// `{"topic": T}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum To {
    // `Session` comes before `User`: when reading, the first variant that fits wins, and
    // `{"user", "session"}` would fit `User` too (unknown fields are ignored).
    /// Every client of one session of a user.
    Session { user: String, session: String },
    /// Every client of one user.
    User { user: String },
    /// Every client of each of these users (at most 1,000).
    Users { users: Vec<String> },
    /// One client.
    Client { client: String },
    /// Every tab listening to this topic, whoever its user: a `topic` event
    /// ([`Event::Topic`]), not a notification. Durable by default: stored in the topic's log
    /// with its `tseq` ([`PublishResponse::topic`]), so that a tab resuming the topic gets it;
    /// [`PublishRequest::ephemeral`] for one only the tabs connected at that moment get. With
    /// [`PublishRequest::inbox`] instead, it is a durable notification stored for each of the
    /// topic's followers (the users listening at user scope).
    Topic { topic: String },
}

impl To {
    pub fn user(user: impl Into<String>) -> Self {
        To::User { user: user.into() }
    }

    pub fn users<I: IntoIterator<Item = S>, S: Into<String>>(users: I) -> Self {
        To::Users { users: users.into_iter().map(Into::into).collect() }
    }

    pub fn session(user: impl Into<String>, session: impl Into<String>) -> Self {
        To::Session { user: user.into(), session: session.into() }
    }

    pub fn client(client: impl Into<String>) -> Self {
        To::Client { client: client.into() }
    }

    /// Every tab listening to `topic`; see [`To::Topic`].
    pub fn topic(topic: impl Into<String>) -> Self {
        To::Topic { topic: topic.into() }
    }
}

/// Who listens to a topic: one of the three scopes (Eliom's hierarchy). Serialized as the
/// exact JSON shapes a publisher names it with, and an answer names it back: `{"client": C}`,
/// `{"user": U, "session": S}`, `{"user": U}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scope {
    // The order matters when reading, as for `To`: `{"user", "session"}` would fit `User` too.
    /// One tab, until it unlistens or the server forgets its client id (after its linger).
    Client { client: String },
    /// Every tab of one session, those opened later included; kept in the store until the
    /// session is closed.
    Session { user: String, session: String },
    /// Every tab of the user, on every device, those opened later included; kept in the store
    /// until unlistened: the user **follows** the topic (see [`PublishRequest::inbox`]).
    User { user: String },
}

impl Scope {
    pub fn client(client: impl Into<String>) -> Self {
        Scope::Client { client: client.into() }
    }

    pub fn session(user: impl Into<String>, session: impl Into<String>) -> Self {
        Scope::Session { user: user.into(), session: session.into() }
    }

    pub fn user(user: impl Into<String>) -> Self {
        Scope::User { user: user.into() }
    }
}

/// The scopes a subscriber names with its token alone (`"scope"` in `POST /v1/listen`): its
/// token's session or its token's user. (Client scope names the tab:
/// [`crate::Subscriber::listen`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredScope {
    /// Every tab of the token's session ([`Scope::Session`]).
    Session,
    /// Every tab of the token's user ([`Scope::User`]).
    User,
}

/// The answer of a listen or unlisten: the scope and every topic it listens to now (a tab's:
/// at client scope only, besides its session's and user's; a session's or user's: sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listens {
    #[serde(flatten)]
    pub scope: Scope,
    pub topics: Vec<String>,
    /// A listen's topics' last tseqs, read after the listen took effect: where a client that
    /// resumes these topics later starts (empty for an unlisten).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub positions: BTreeMap<String, u64>,
}

/// The answer of `GET /v1/topics/{topic}`: who listens to a topic. At most 1,000 of each list
/// (`truncated` says when there were more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicListeners {
    pub topic: String,
    /// The users listening at user scope (its followers), sorted.
    #[serde(default)]
    pub users: Vec<String>,
    /// The sessions listening at session scope, sorted.
    #[serde(default)]
    pub sessions: Vec<ListeningSession>,
    /// The tabs listening at any scope, on every node.
    #[serde(default)]
    pub clients: Vec<ListeningClient>,
    /// Some list had more than the server lists.
    #[serde(default)]
    pub truncated: bool,
    /// The topic's last tseq (0 when it has no durable event).
    #[serde(default)]
    pub last_tseq: u64,
}

/// A session listening to a topic at session scope, in [`TopicListeners`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListeningSession {
    pub user: String,
    pub session: String,
}

/// A tab listening to a topic (at any scope), in [`TopicListeners`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListeningClient {
    pub client: String,
    pub user: String,
    pub session: String,
    /// The node it is connected to (`--node-id`).
    pub node: String,
}

/// The body of `POST /v1/notify`. Fields left `None` are not sent, so the server's defaults
/// apply (`type` `"notification"`, durable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishRequest {
    pub to: To,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<bool>,
    /// Every client but this one: the tab that caused the notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_client: Option<String>,
    /// No tab of this user (the one who caused it, say the author of a comment). Topic targets
    /// only: with another target the server answers 400 `invalid_target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_user: Option<String>,
    /// A repeated key within 24 hours gets the first answer and stores nothing new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// With a topic target: into the inboxes of the topic's followers; see
    /// [`PublishRequest::inbox`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<bool>,
}

impl PublishRequest {
    /// A durable notification of the default type.
    pub fn new(to: To, data: Value) -> Self {
        Self {
            to,
            kind: None,
            data,
            durable: None,
            except_client: None,
            except_user: None,
            idempotency_key: None,
            inbox: None,
        }
    }

    /// Sets `type`.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Makes it ephemeral: only connected clients get it; no seq, never replayed.
    pub fn ephemeral(mut self) -> Self {
        self.durable = Some(false);
        self
    }

    pub fn except_client(mut self, client: impl Into<String>) -> Self {
        self.except_client = Some(client.into());
        self
    }

    /// Leaves out every tab of `user`; topic targets only (see [`PublishRequest::except_user`]).
    pub fn except_user(mut self, user: impl Into<String>) -> Self {
        self.except_user = Some(user.into());
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Into the followers' inboxes (`"inbox": true`): a publish to [`To::topic`] becomes one
    /// durable notification, stored with its seq in the log and inbox of every user who listens
    /// to the topic **at user scope** ([`Scope::User`]; session and client listens do not
    /// count), as [`To::users`] of them would. The answer lists each follower's seq; a topic
    /// nobody follows stores nothing. [`PublishRequest::except_user`] leaves one out (the
    /// author), [`PublishRequest::except_client`] one tab, [`PublishRequest::idempotency_key`]
    /// works as for users. The server refuses it with another target (400 `invalid_target`),
    /// made ephemeral (400 `invalid_request`) and for more than 10,000 followers (413
    /// `too_many_followers`, nothing stored).
    ///
    /// ```
    /// use herald_client::{PublishRequest, To};
    /// use serde_json::json;
    ///
    /// let request = PublishRequest::new(To::topic("post:42"), json!({"text": "a new comment"}))
    ///     .kind("comment.new")
    ///     .inbox()
    ///     .except_user("bob");
    /// assert_eq!(
    ///     serde_json::to_value(&request).unwrap(),
    ///     json!({"to": {"topic": "post:42"}, "type": "comment.new", "data": {"text": "a new comment"},
    ///            "except_user": "bob", "inbox": true})
    /// );
    /// ```
    pub fn inbox(mut self) -> Self {
        self.inbox = Some(true);
        self
    }
}

/// One stored notification in a [`PublishResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub user: String,
    pub seq: u64,
}

/// Where a durable topic publish was stored: its topic and its tseq there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTopic {
    pub topic: String,
    pub tseq: u64,
}

/// The answer of `POST /v1/notify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// The seq each user's copy got; empty for an ephemeral notification or a topic event.
    #[serde(default)]
    pub notifications: Vec<Published>,
    /// A durable topic publish's topic and tseq; `None` for anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<PublishedTopic>,
    /// How many clients it was handed to.
    pub delivered: u64,
}

/// The answer of `GET /v1/users/{user}/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub user: String,
    #[serde(default)]
    pub sessions: Vec<SessionPresence>,
}

/// One session in a [`Presence`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPresence {
    pub session: String,
    #[serde(default)]
    pub clients: Vec<ClientPresence>,
}

/// One client in a [`Presence`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPresence {
    pub client: String,
    /// `"sse"` or `"poll"` (more transports may come).
    pub transport: String,
    /// RFC 3339.
    pub connected_at: String,
    /// Every seq up to this one was handed to the client.
    #[serde(default)]
    pub last_seq: u64,
    /// The node it is connected to (`--node-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The topics it listens to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
}

/// The answer of `GET /v1/poll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    /// The client id: give it back with the next poll.
    pub client: String,
    /// At most 100, durable ones in seq order; each decoded, or [`Undecodable`] (one
    /// notification the client cannot decode does not make the whole answer unreadable).
    #[serde(default, deserialize_with = "decode_each", serialize_with = "encode_each")]
    pub notifications: Vec<Result<Notification, Undecodable>>,
    /// The events of the client's topics that came while the poll was open (or since the last
    /// poll), each decoded or [`Undecodable`].
    #[serde(
        default,
        deserialize_with = "decode_each_topic_event",
        serialize_with = "encode_each",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub topic: Vec<Result<TopicEvent, Undecodable>>,
    /// Every topic the client listens to now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// The client's position in each durable topic after this answer: poll next with them
    /// ([`crate::PollOptions::positions`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub positions: BTreeMap<String, u64>,
    /// Topics whose position given was lost (past retention, another epoch): each goes on after
    /// its `last_tseq`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topic_resets: Vec<TopicReset>,
    /// Poll next with `after` = this.
    pub last_seq: u64,
    /// The epoch of `last_seq`: poll next with it. `None` from a server without epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The `after` given is no longer retained, or of another epoch: the app should reload its
    /// state.
    #[serde(default)]
    pub reset: bool,
    /// The server ended this client (`evicted`, `replaced`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
}

/// A topic whose position was lost to the client (its log no longer holds what followed it, or
/// it is of another epoch): the topic goes on after `last_tseq`. A poll answer's
/// `topic_resets`; on a stream, [`Event::TopicReset`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicReset {
    pub topic: String,
    pub last_tseq: u64,
}

/// Reads each notification of a list on its own: first as raw JSON text (which has no depth
/// limit and keeps numbers and strings as text), then decoded.
#[allow(clippy::result_large_err)] // See `impl Undecodable`.
fn decode_each<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Result<Notification, Undecodable>>, D::Error> {
    let raw = Vec::<Box<serde_json::value::RawValue>>::deserialize(deserializer)?;
    Ok(raw.iter().map(|raw| Undecodable::decode(raw.get(), None)).collect())
}

/// [`decode_each`] for topic events.
#[allow(clippy::result_large_err)] // See `impl Undecodable`.
fn decode_each_topic_event<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Result<TopicEvent, Undecodable>>, D::Error> {
    let raw = Vec::<Box<serde_json::value::RawValue>>::deserialize(deserializer)?;
    Ok(raw.iter().map(|raw| Undecodable::decode_topic_event(raw.get())).collect())
}

/// Writes each notification (or topic event) back as it came: decoded ones as JSON,
/// undecodable ones as their raw text.
fn encode_each<S: serde::Serializer, T: Serialize>(
    notifications: &[Result<T, Undecodable>],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::{Error as _, SerializeSeq};
    let mut seq = serializer.serialize_seq(Some(notifications.len()))?;
    for notification in notifications {
        match notification {
            Ok(notification) => seq.serialize_element(notification)?,
            Err(undecodable) => {
                let raw = serde_json::value::RawValue::from_string(undecodable.raw.clone())
                    .map_err(S::Error::custom)?;
                seq.serialize_element(&raw)?;
            }
        }
    }
    seq.end()
}

/// One event of a subscriber's stream.
///
/// It serializes as one JSON object with an `"event"` tag, which is what `herald listen`
/// prints: `{"event":"notification","seq":3,"type":"t","data":{…},"created_at":"…"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The first event of a stream: who the client is. `last_seq` is the user's last seq when
    /// it connected; `id` is where this stream starts in the user's log (the seq of its resume
    /// point); `epoch` is the epoch of both, to give back with a resume point (`None` from a
    /// server without epochs); `topics` are every topic the client listens to (empty from a
    /// server without topics), `positions` where the stream starts in each (the last tseq
    /// handled; empty when it listens to none).
    Hello {
        user: String,
        session: String,
        client: String,
        last_seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        topics: Vec<String>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        positions: BTreeMap<String, u64>,
    },
    Notification(Notification),
    /// An event of a topic the client listens to: a durable one (with its `tseq`) is replayed
    /// to a client that resumes the topic, an ephemeral one is not.
    Topic(TopicEvent),
    /// A notification or topic event this client could not decode; see [`Undecodable`]. The
    /// stream goes on.
    Undecodable(Undecodable),
    /// The resume point is no longer retained, or of another epoch (the server's database was
    /// restored or failed over, or it kept its log in memory and restarted): notifications were
    /// lost to this client, which should reload its state. The stream goes on after `last_seq`.
    Reset {
        last_seq: u64,
    },
    /// The position in `topic` was lost (its log no longer holds what followed it, or it is of
    /// another epoch): events of that topic were lost to this client. The topic goes on after
    /// `last_tseq`; the other topics and the user's notifications are not affected.
    TopicReset {
        topic: String,
        last_tseq: u64,
    },
    /// The server ends the stream: `evicted`, `replaced`, `session_closed`, `token_expired`,
    /// `lagging`, `shutdown` or `error`.
    Closed {
        reason: String,
    },
    /// A comment line: the server's keep-alive (at least every 15 s).
    KeepAlive,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn to_has_the_exact_json_shapes() {
        let cases = [
            (To::user("alice"), json!({"user": "alice"})),
            (To::users(["a", "b"]), json!({"users": ["a", "b"]})),
            (To::session("alice", "s1"), json!({"user": "alice", "session": "s1"})),
            (To::client("c1"), json!({"client": "c1"})),
            (To::topic("room:1"), json!({"topic": "room:1"})),
        ];
        for (to, expected) in cases {
            assert_eq!(serde_json::to_value(&to).unwrap(), expected);
            assert_eq!(serde_json::from_value::<To>(expected).unwrap(), to);
        }
    }

    #[test]
    fn publish_request_skips_unset_fields() {
        let request = PublishRequest::new(To::user("a"), json!({"x": 1}));
        assert_eq!(serde_json::to_value(&request).unwrap(), json!({"to": {"user": "a"}, "data": {"x": 1}}));
        let request = PublishRequest::new(To::session("a", "s"), json!(null))
            .kind("message.new")
            .ephemeral()
            .except_client("c")
            .idempotency_key("k");
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"to": {"user": "a", "session": "s"}, "type": "message.new", "data": null,
                   "durable": false, "except_client": "c", "idempotency_key": "k"})
        );
    }

    #[test]
    fn a_topic_publish_has_the_documented_shape() {
        let request =
            PublishRequest::new(To::topic("room:1"), json!({"text": "hi"})).ephemeral().except_user("alice");
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"to": {"topic": "room:1"}, "data": {"text": "hi"}, "durable": false, "except_user": "alice"})
        );
        let back: PublishRequest = serde_json::from_value(serde_json::to_value(&request).unwrap()).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn scopes_and_listens_have_the_documented_shapes() {
        let cases = [
            (Scope::client("c1"), json!({"client": "c1"})),
            (Scope::session("alice", "s1"), json!({"user": "alice", "session": "s1"})),
            (Scope::user("alice"), json!({"user": "alice"})),
        ];
        for (scope, expected) in cases {
            assert_eq!(serde_json::to_value(&scope).unwrap(), expected);
            let mut answer = expected.clone();
            answer["topics"] = json!(["a", "b"]);
            let listens: Listens = serde_json::from_value(answer.clone()).unwrap();
            assert_eq!(
                listens,
                Listens { scope, topics: vec!["a".into(), "b".into()], positions: BTreeMap::new() }
            );
            assert_eq!(serde_json::to_value(&listens).unwrap(), answer);
        }
        assert_eq!(serde_json::to_value(StoredScope::Session).unwrap(), json!("session"));
        assert_eq!(serde_json::to_value(StoredScope::User).unwrap(), json!("user"));
    }

    #[test]
    fn topic_listeners_decode() {
        let wire = json!({"topic": "post:42", "users": ["alice"], "sessions": [{"user": "bob", "session": "s1"}],
            "clients": [{"client": "c", "user": "alice", "session": "laptop", "node": "web-1:7300"}],
            "truncated": true});
        let listeners: TopicListeners = serde_json::from_value(wire).unwrap();
        assert_eq!(
            listeners,
            TopicListeners {
                topic: "post:42".into(),
                users: vec!["alice".into()],
                sessions: vec![ListeningSession { user: "bob".into(), session: "s1".into() }],
                clients: vec![ListeningClient {
                    client: "c".into(),
                    user: "alice".into(),
                    session: "laptop".into(),
                    node: "web-1:7300".into(),
                }],
                truncated: true,
                last_tseq: 0,
            }
        );
    }

    #[test]
    fn topic_events_decode_and_serialize_with_an_event_tag() {
        let wire = json!({"topic": "room:1", "type": "message", "data": {"text": "hi"},
                          "created_at": "2026-12-04T23:00:00.123Z"});
        let event: TopicEvent = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            event,
            TopicEvent {
                topic: "room:1".into(),
                tseq: None,
                kind: "message".into(),
                data: json!({"text": "hi"}),
                created_at: "2026-12-04T23:00:00.123Z".into(),
            }
        );
        // As `herald listen` prints it: the WebSocket's shape.
        let mut line = wire;
        line["event"] = json!("topic");
        assert_eq!(serde_json::to_value(Event::Topic(event)).unwrap(), line);
        // A hello lists the topics only when there are some.
        let hello = |topics: Vec<String>| Event::Hello {
            user: "u".into(),
            session: "s".into(),
            client: "c".into(),
            last_seq: 0,
            id: None,
            epoch: None,
            topics,
            positions: BTreeMap::new(),
        };
        assert!(serde_json::to_value(hello(vec![])).unwrap().get("topics").is_none());
        assert_eq!(serde_json::to_value(hello(vec!["a".into()])).unwrap()["topics"], json!(["a"]));
    }

    #[test]
    fn a_poll_answer_has_its_topic_events_and_topics() {
        let text = r#"{"client":"c","notifications":[],"last_seq":0,"epoch":"e",
            "topic":[{"topic":"room:1","type":"t","data":[1],"created_at":"x"},
                     {"topic":"room:2","type":"t","data":1e999999,"created_at":"x"}],
            "topics":["room:1","room:2"]}"#;
        let poll: PollResponse = serde_json::from_str(text).unwrap();
        assert_eq!(poll.topics, ["room:1", "room:2"]);
        assert_eq!(poll.topic.len(), 2);
        let first = poll.topic[0].as_ref().unwrap();
        assert_eq!((first.topic.as_str(), &first.data), ("room:1", &json!([1])));
        let undecodable = poll.topic[1].as_ref().unwrap_err();
        assert_eq!(
            (undecodable.seq, undecodable.kind.as_deref(), undecodable.topic.as_deref()),
            (None, Some("t"), Some("room:2"))
        );
        // Written back as they came; and absent when empty, as the server writes them.
        let back = serde_json::to_string(&poll).unwrap();
        assert!(back.contains("1e999999") && back.contains(r#""topics":["room:1","room:2"]"#), "{back}");
        let empty: PollResponse =
            serde_json::from_value(json!({"client": "c", "notifications": [], "last_seq": 0})).unwrap();
        assert!(empty.topic.is_empty() && empty.topics.is_empty());
        let back = serde_json::to_value(&empty).unwrap();
        assert!(back.get("topic").is_none() && back.get("topics").is_none(), "{back}");
    }

    #[test]
    fn durable_topic_answers_and_events_have_the_documented_shapes() {
        // A durable topic event carries its tseq, and `herald listen` prints it back.
        let wire = json!({"topic": "room:1", "tseq": 7, "type": "t", "data": 1, "created_at": "x"});
        let event: TopicEvent = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(event.tseq, Some(7));
        let mut line = wire;
        line["event"] = json!("topic");
        assert_eq!(serde_json::to_value(Event::Topic(event)).unwrap(), line);
        let reset = Event::TopicReset { topic: "room:1".into(), last_tseq: 6 };
        assert_eq!(
            serde_json::to_value(reset).unwrap(),
            json!({"event": "topic_reset", "topic": "room:1", "last_tseq": 6})
        );
        // The publish answer's topic and tseq; absent for other publishes.
        let answer: PublishResponse = serde_json::from_value(
            json!({"notifications": [], "topic": {"topic": "room:1", "tseq": 3}, "delivered": 2}),
        )
        .unwrap();
        assert_eq!(answer.topic, Some(PublishedTopic { topic: "room:1".into(), tseq: 3 }));
        let plain: PublishResponse =
            serde_json::from_value(json!({"notifications": [], "delivered": 0})).unwrap();
        assert_eq!(serde_json::to_value(&plain).unwrap(), json!({"notifications": [], "delivered": 0}));
        // A listen's answer with its topics' positions.
        let listens: Listens =
            serde_json::from_value(json!({"client": "c", "topics": ["room:1"], "positions": {"room:1": 4}}))
                .unwrap();
        assert_eq!(listens.positions, BTreeMap::from([("room:1".to_owned(), 4)]));
        // A poll answer's positions and topic resets.
        let poll: PollResponse =
            serde_json::from_value(json!({"client": "c", "notifications": [], "last_seq": 0,
            "topic": [{"topic": "room:2", "tseq": 2, "type": "t", "data": 0, "created_at": "x"}],
            "positions": {"room:1": 6, "room:2": 2}, "topic_resets": [{"topic": "room:1", "last_tseq": 6}]}))
            .unwrap();
        assert_eq!(poll.positions, BTreeMap::from([("room:1".to_owned(), 6), ("room:2".to_owned(), 2)]));
        assert_eq!(poll.topic_resets, [TopicReset { topic: "room:1".into(), last_tseq: 6 }]);
        assert_eq!(poll.topic[0].as_ref().unwrap().tseq, Some(2));
        // An undecodable durable topic event keeps its topic and tseq.
        let text = r#"{"topic":"room:1","tseq":9,"type":"t","data":1e999999,"created_at":"x"}"#;
        let undecodable = Undecodable::decode_topic_event(text).unwrap_err();
        assert_eq!((undecodable.topic.as_deref(), undecodable.tseq), (Some("room:1"), Some(9)));
    }

    #[test]
    fn events_serialize_with_an_event_tag() {
        let n =
            Notification { seq: Some(3), kind: "t".into(), data: json!({"a": 1}), created_at: "now".into() };
        assert_eq!(
            serde_json::to_value(Event::Notification(n.clone())).unwrap(),
            json!({"event": "notification", "seq": 3, "type": "t", "data": {"a": 1}, "created_at": "now"})
        );
        let ephemeral = Notification { seq: None, ..n };
        assert_eq!(
            serde_json::to_value(Event::Notification(ephemeral)).unwrap(),
            json!({"event": "notification", "type": "t", "data": {"a": 1}, "created_at": "now"})
        );
        assert_eq!(
            serde_json::to_value(Event::Closed { reason: "evicted".into() }).unwrap(),
            json!({"event": "closed", "reason": "evicted"})
        );
        assert_eq!(serde_json::to_value(Event::KeepAlive).unwrap(), json!({"event": "keep_alive"}));
    }

    #[test]
    fn a_poll_answer_with_notifications_serde_json_refuses_still_decodes() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let poison = [deep.as_str(), "1e999999", r#""\ud800""#, r#"{"a": "\udfff"}"#];
        let mut items: Vec<String> = poison
            .iter()
            .enumerate()
            .map(|(i, data)| format!(r#"{{"seq":{},"type":"t","data":{data},"created_at":"x"}}"#, i + 1))
            .collect();
        items.push(r#"{"seq":5,"type":"t","data":"fine","created_at":"x"}"#.to_owned());
        let text = format!(r#"{{"client":"c","notifications":[{}],"last_seq":5}}"#, items.join(","));
        let poll: PollResponse = serde_json::from_str(&text).unwrap();
        for (i, item) in poll.notifications[..4].iter().enumerate() {
            let undecodable = item.as_ref().unwrap_err();
            assert_eq!((undecodable.seq, undecodable.kind.as_deref()), (Some(i as u64 + 1), Some("t")));
            assert_eq!(undecodable.raw, items[i]);
            assert!(!undecodable.error.is_empty());
        }
        assert_eq!(poll.notifications[4].as_ref().unwrap().data, json!("fine"));
        // And it serializes back as it came.
        assert_eq!(serde_json::to_string(&poll).unwrap().matches(r#""\ud800""#).count(), 1);
        let event = Event::Undecodable(poll.notifications[2].clone().unwrap_err());
        let line = serde_json::to_value(&event).unwrap();
        assert_eq!(
            (&line["event"], &line["seq"], &line["type"]),
            (&json!("undecodable"), &json!(3), &json!("t"))
        );
    }

    #[test]
    fn answers_decode_and_ignore_new_fields() {
        let poll: PollResponse = serde_json::from_value(json!({
            "client": "c", "notifications": [{"seq": 1, "type": "t", "data": 5, "created_at": "x"}],
            "last_seq": 1, "future": true
        }))
        .unwrap();
        assert_eq!((poll.last_seq, poll.reset, poll.closed), (1, false, None));
        assert_eq!(poll.notifications[0].as_ref().unwrap().data, json!(5));
        let presence: Presence = serde_json::from_value(json!({
            "user": "alice", "sessions": [{"session": "s1", "clients": [
                {"client": "c", "transport": "sse", "connected_at": "x", "last_seq": 17},
                {"client": "d", "transport": "ws", "connected_at": "x", "topics": ["room:1"]}]}]
        }))
        .unwrap();
        assert_eq!(presence.sessions[0].clients[0].last_seq, 17);
        assert!(presence.sessions[0].clients[0].topics.is_empty());
        assert_eq!(presence.sessions[0].clients[1].topics, ["room:1"]);
    }
}
