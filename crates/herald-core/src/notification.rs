//! Notifications and who they are for: [`Notification`], [`Audience`], [`Target`], [`Receipt`].
//!
//! A [`Notification`] is built once per user it goes to and then shared (`Arc`) by every
//! client queue it lands in. Its canonical JSON object is serialized once, at construction, so
//! the hot path never serializes per client.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ids::{ClientId, Seq, SessionId, Topic, UserId};

/// The `type` a notification gets when the publisher names none.
pub const DEFAULT_KIND: &str = "notification";

/// Longest notification `type`, in bytes. Longer (or empty): refused, by the notifier at
/// publish and by the inbox service as a page's filter.
pub const KIND_BYTES_MAX: usize = 128;

/// Which of a user's clients a notification is for. The user itself is implied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    /// Only the clients of this session.
    pub session: Option<SessionId>,
    /// Only this client.
    pub client: Option<ClientId>,
    /// Every client but this one: the tab that caused the notification (Eliom's `notfor: Me`).
    pub except_client: Option<ClientId>,
}

impl Audience {
    /// The whole user: every session, every client.
    pub fn user() -> Self {
        Self::default()
    }

    /// Whether the client `client` of session `session` is in this audience.
    pub fn includes(&self, session: &SessionId, client: &ClientId) -> bool {
        self.session.as_ref().is_none_or(|s| s == session)
            && self.client.as_ref().is_none_or(|c| c == client)
            && self.except_client.as_ref() != Some(client)
    }
}

/// One notification for one user, durable (with a `seq`) or ephemeral (without).
#[derive(Debug)]
pub struct Notification {
    pub user: UserId,
    /// `Some` for a durable notification, assigned by the store; `None` for an ephemeral one.
    pub seq: Option<Seq>,
    /// The notification's `type`, chosen by the publisher.
    pub kind: Arc<str>,
    /// The publisher's JSON payload, kept as text: Herald never looks inside it.
    pub data: Arc<RawValue>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    pub audience: Audience,
    /// When this node made it (after its append, for a durable one; on arrival from the bus,
    /// for another node's; read from the store, for a replayed one): the start of the
    /// publish-to-write latency of `/metrics`.
    pub made_at: Instant,
    /// `{"seq":…,"type":…,"data":…,"created_at":…}` (no `seq` when ephemeral), serialized once.
    json: Bytes,
}

#[derive(Serialize)]
struct WireNotification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a RawValue,
    created_at: &'a str,
}

impl Notification {
    pub fn new(
        user: UserId,
        seq: Option<Seq>,
        kind: Arc<str>,
        data: Arc<RawValue>,
        created_at_ms: i64,
        audience: Audience,
    ) -> Self {
        let created_at = format_timestamp_ms(created_at_ms);
        let wire = WireNotification { seq, kind: &kind, data: &data, created_at: &created_at };
        let mut json = serde_json::to_vec(&wire).expect("a notification always serializes");
        // The publisher's `data` is kept as sent and may be pretty-printed. Line breaks can only
        // be whitespace in JSON (inside strings they are escaped), so turning them into spaces
        // changes nothing and keeps the object on one line, as SSE `data:` needs.
        for byte in &mut json {
            if *byte == b'\n' || *byte == b'\r' {
                *byte = b' ';
            }
        }
        let json = Bytes::from(json);
        Self { user, seq, kind, data, created_at_ms, audience, made_at: Instant::now(), json }
    }

    /// The canonical JSON object of this notification, as clients receive it, on one line.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    pub fn is_durable(&self) -> bool {
        self.seq.is_some()
    }
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC with millisecond precision.
pub fn format_timestamp_ms(ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let at = at.replace_nanosecond((ms.rem_euclid(1000) as u32) * 1_000_000).unwrap_or(at);
    at.format(&Rfc3339).expect("RFC 3339 formats every UTC time")
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Whom a publish is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every client of one user.
    User(UserId),
    /// Every client of each of these users (at most [`crate::Limits::users_per_publish_max`]).
    Users(Vec<UserId>),
    /// Every client of one session of a user.
    Session(UserId, SessionId),
    /// One client.
    Client(ClientId),
    /// Every tab listening to a topic (whoever its user), on every node.
    Topic(Topic),
    /// The inbox of every user who follows a topic (listens at user scope): one durable
    /// notification each, in their logs, as for [`Target::Users`] (at most
    /// [`FOLLOWERS_PER_PUBLISH_MAX`]).
    Followers(Topic),
}

/// Followers one [`Target::Followers`] publish stores at once, at most (fewer when their copies of
/// the data would be over the publish bound). More: a background job does it, chunk by chunk
/// (see [`crate::jobs`]).
pub const FOLLOWERS_PER_PUBLISH_MAX: usize = 10_000;

/// A publish request, as the library and the HTTP API take it.
#[derive(Debug, Clone)]
pub struct Publish {
    pub target: Target,
    pub kind: Arc<str>,
    pub data: Arc<RawValue>,
    /// Durable notifications are stored and get a seq; ephemeral ones only reach connected clients.
    pub durable: bool,
    pub except_client: Option<ClientId>,
    /// No tab of this user gets it (Eliom's `notfor`); [`Target::Topic`] only.
    pub except_user: Option<UserId>,
    /// A repeated key within the idempotency window gets the first [`Receipt`] and stores nothing.
    pub idempotency_key: Option<String>,
    /// Web Push: whom to push to, and what (see [`crate::push`]). Not for a topic's tabs.
    pub push: crate::push::PushOptions,
}

impl Publish {
    /// A durable notification of type `kind` for every client of `user`.
    pub fn to_user(user: UserId, kind: &str, data: Arc<RawValue>) -> Self {
        Self {
            target: Target::User(user),
            kind: Arc::from(kind),
            data,
            durable: true,
            except_client: None,
            except_user: None,
            idempotency_key: None,
            push: crate::push::PushOptions::default(),
        }
    }
}

/// One stored notification in a [`Receipt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptEntry {
    pub user: UserId,
    pub seq: Seq,
}

/// Where a durable topic publish was stored: its topic and tseq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicReceipt {
    pub topic: Topic,
    pub tseq: Seq,
}

/// What a publish did: the seqs it stored (the tseq for a durable topic publish), and how many
/// clients it was handed to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub notifications: Vec<ReceiptEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicReceipt>,
    /// A fan-out into followers' inboxes done as a background job: its id (nothing stored yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub delivered: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (SessionId, SessionId, ClientId, ClientId) {
        (
            SessionId::new("s1").unwrap(),
            SessionId::new("s2").unwrap(),
            ClientId::new("c1").unwrap(),
            ClientId::new("c2").unwrap(),
        )
    }

    #[test]
    fn audience_filters_by_session_client_and_exception() {
        let (s1, s2, c1, c2) = ids();
        assert!(Audience::user().includes(&s1, &c1));
        let session = Audience { session: Some(s1.clone()), ..Audience::default() };
        assert!(session.includes(&s1, &c1) && !session.includes(&s2, &c1));
        let client = Audience { client: Some(c2.clone()), ..Audience::default() };
        assert!(client.includes(&s2, &c2) && !client.includes(&s2, &c1));
        let except = Audience { except_client: Some(c1.clone()), ..Audience::default() };
        assert!(!except.includes(&s1, &c1) && except.includes(&s1, &c2));
    }

    #[test]
    fn json_is_canonical() {
        let data: Arc<RawValue> = Arc::from(RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap());
        let user = UserId::new("alice").unwrap();
        let n = Notification::new(
            user.clone(),
            Some(7),
            Arc::from("m"),
            data.clone(),
            1_700_000_000_123,
            Audience::user(),
        );
        assert_eq!(
            std::str::from_utf8(n.json()).unwrap(),
            r#"{"seq":7,"type":"m","data":{"text":"hi"},"created_at":"2023-11-14T22:13:20.123Z"}"#
        );
        let pretty: Arc<RawValue> =
            Arc::from(RawValue::from_string("{\n  \"a\": \"x\\ny\"\r\n}".into()).unwrap());
        let p = Notification::new(user.clone(), Some(1), Arc::from("m"), pretty, 0, Audience::user());
        assert_eq!(
            std::str::from_utf8(p.json()).unwrap(),
            r#"{"seq":1,"type":"m","data":{   "a": "x\ny"  },"created_at":"1970-01-01T00:00:00Z"}"#
        );
        let e = Notification::new(user, None, Arc::from("m"), data, 0, Audience::user());
        assert_eq!(
            std::str::from_utf8(e.json()).unwrap(),
            r#"{"type":"m","data":{"text":"hi"},"created_at":"1970-01-01T00:00:00Z"}"#
        );
    }
}
