//! What nodes send each other over the broker, and on which subjects.
//!
//! One JSON object per broker message: `{"v":1,"from":NODE,"body":{KIND:{…}}}`. JSON rather than
//! a binary format: a notification's `data` is JSON text already and is carried as it is (a
//! `RawValue`, never parsed into a tree), the rest is a few short fields, and an operator can
//! read what crosses the broker with `nats sub` or `redis-cli psubscribe`. An envelope is about
//! the size of the notification it carries plus ~100 bytes.
//!
//! Subjects, all under the cluster's name (`--cluster`, so clusters can share a broker):
//! - `{cluster}.user.{shard}`: everything about the users of one shard ([`shard_of`]);
//!   a node subscribes to the shards of the users it has clients for.
//! - `{cluster}.topic.{shard}`: the `topic` events of the topics of one shard
//!   ([`topic_shard_of`]); a node subscribes to the shards of the topics its tabs listen to.
//! - `{cluster}.nodes`: heartbeats, departures, resync requests and presence queries, for every
//!   node.
//! - `{cluster}.reply.{hash}`: answers to one node's presence queries.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{
    Audience, ClientId, CloseReason, InboxCounts, InboxEvent, ListenError, Notification, Seq, SessionId,
    Topic, TopicEvent, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The envelope format's version. A node drops (and counts) envelopes of another version: a
/// rolling upgrade that changes the format must run both for a while.
pub(crate) const VERSION: u8 = 1;

/// How many shards users are spread over on the broker. A node subscribes to the shard of each
/// user it has clients for, so it receives the messages of those users and of the others that
/// share their shards; at most this many subscriptions per node.
pub const BUS_SHARDS: u32 = 1024;

/// The shard of `user`: FNV-1a of its bytes, so that every node computes the same one (the
/// std hasher is seeded per process).
pub fn shard_of(user: &UserId) -> u32 {
    fnv_shard(user.as_str())
}

fn fnv_shard(key: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(BUS_SHARDS)) as u32
}

pub(crate) fn user_subject(cluster: &str, shard: u32) -> String {
    format!("{cluster}.user.{shard}")
}

/// The shard of `topic`, as [`shard_of`] for users (FNV-1a, the same on every node).
pub fn topic_shard_of(topic: &Topic) -> u32 {
    fnv_shard(topic.as_str())
}

pub(crate) fn topic_subject(cluster: &str, shard: u32) -> String {
    format!("{cluster}.topic.{shard}")
}

pub(crate) fn nodes_subject(cluster: &str) -> String {
    format!("{cluster}.nodes")
}

/// Where `node` takes answers: its id hashed (a node id may hold characters subjects cannot).
pub(crate) fn reply_subject(cluster: &str, node: &str, started_ms: i64) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain(started_ms.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{cluster}.reply.{hash:016x}")
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) v: u8,
    pub(crate) from: Arc<str>,
    pub(crate) body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Body {
    /// A notification, after its commit when durable.
    Notification {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
        #[serde(rename = "type")]
        kind: Arc<str>,
        data: Arc<RawValue>,
        at: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<ClientId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<ClientId>,
    },
    /// An `inbox` event, as clients get it (`event`), with what the hub routes it by.
    Inbox {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<ClientId>,
        followers_only: bool,
        counts: InboxCounts,
        event: Box<RawValue>,
    },
    /// A `topic` event.
    Topic {
        topic: Topic,
        /// A durable event's place in its topic's log (absent: ephemeral).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tseq: Option<Seq>,
        #[serde(rename = "type")]
        kind: Arc<str>,
        data: Arc<RawValue>,
        at: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except_user: Option<UserId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except_client: Option<ClientId>,
    },
    /// The user's listens kept in the store changed: read them again.
    ListensChanged { user: UserId },
    /// Close the clients of a session (all sessions when `None`).
    Close {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionId>,
        reason: String,
    },
    /// A client id was taken over on the sender at `at` (ms): other nodes end their connection
    /// for it with `replaced`.
    Claim { user: UserId, session: SessionId, client: ClientId, at: i64 },
    /// End and forget this client with `evicted`: its session is over the client limit,
    /// counting every node.
    Evict { user: UserId, session: SessionId, client: ClientId },
    /// The sender is alive; `started` tells its restarts apart.
    Heartbeat { started: i64 },
    /// The sender is shutting down: not silent, gone.
    Leaving,
    /// The sender could not publish for a while: every node checks its users against the store.
    Resync,
    /// Who of `user` is connected to you? Answer on `reply`, with `id`.
    PresenceQuery { user: UserId, id: u64, reply: String },
    /// The sender's clients of the user a [`Body::PresenceQuery`] asked about.
    PresenceAnswer { id: u64, sessions: Vec<WireSession> },
    /// Which user and session is `client` of? (A publish to `{"client": C}` made on a node the
    /// client is not connected to.) Answer on `reply`, with `id`.
    LocateQuery { client: ClientId, id: u64, reply: String },
    /// Make `client` (of `user` in `session`) listen (`listen`) or stop listening to `topics`,
    /// if it is connected to you (a listen made on a node the tab is not connected to). Answer
    /// on `reply`, with `id`.
    ListenQuery {
        user: UserId,
        session: SessionId,
        client: ClientId,
        topics: Vec<Topic>,
        listen: bool,
        id: u64,
        reply: String,
    },
    /// What the node the tab of a [`Body::ListenQuery`] is connected to did; `None` from the
    /// others.
    ListenAnswer {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<ListenOutcome>,
    },
    /// Which of your tabs listen to `topic` (at most `max`)? Answer on `reply`, with `id`.
    TopicQuery { topic: Topic, max: usize, id: u64, reply: String },
    /// The sender's tabs a [`Body::TopicQuery`] asked about, and how many it has in all.
    TopicAnswer { id: u64, tabs: Vec<WireTab>, total: usize },
    /// Several bodies for the users of one shard, in order (a publish's notifications and
    /// counts). Never nested.
    Batch(Vec<Body>),
    /// Where the client a [`Body::LocateQuery`] asked about is, if the sender knows it.
    LocateAnswer {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        found: Option<(UserId, SessionId)>,
    },
}

/// One tab in a [`Body::TopicAnswer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireTab {
    pub(crate) user: UserId,
    pub(crate) session: SessionId,
    pub(crate) client: ClientId,
}

/// What a node did with a [`Body::ListenQuery`] for a tab it has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ListenOutcome {
    /// The topics the tab listens to now.
    Listening(Vec<Topic>),
    /// Refused: the tab would listen to `count` topics, over `max`.
    TooManyTopics { count: usize, max: usize },
}

impl ListenOutcome {
    pub(crate) fn from_hub(outcome: Result<Vec<Topic>, ListenError>) -> Option<Self> {
        match outcome {
            Ok(topics) => Some(Self::Listening(topics)),
            Err(ListenError::TooManyTopics { count, max }) => Some(Self::TooManyTopics { count, max }),
            Err(ListenError::ClientNotFound(_)) => None,
        }
    }

    pub(crate) fn into_hub(self) -> Result<Vec<Topic>, ListenError> {
        match self {
            Self::Listening(topics) => Ok(topics),
            Self::TooManyTopics { count, max } => Err(ListenError::TooManyTopics { count, max }),
        }
    }
}

/// One session's clients on one node, in a [`Body::PresenceAnswer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireSession {
    pub(crate) session: SessionId,
    pub(crate) clients: Vec<WireClient>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireClient {
    pub(crate) client: ClientId,
    pub(crate) transport: String,
    pub(crate) connected_at: i64,
    pub(crate) last_seq: Seq,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) topics: Vec<Topic>,
}

/// The first bytes of every envelope `node` sends: `{"v":1,"from":"<node>",` (the fields are
/// written in that order, and the node id as JSON escapes it). A node drops its own echoes by
/// them, without parsing.
pub(crate) fn echo_prefix(node: &str) -> Vec<u8> {
    let node = serde_json::to_string(node).expect("a string always serializes");
    format!("{{\"v\":{VERSION},\"from\":{node},").into_bytes()
}

impl Envelope {
    pub(crate) fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("an envelope always serializes"))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl Body {
    pub(crate) fn notification(notification: &Notification) -> Self {
        Body::Notification {
            user: notification.user.clone(),
            seq: notification.seq,
            kind: notification.kind.clone(),
            data: notification.data.clone(),
            at: notification.created_at_ms,
            session: notification.audience.session.clone(),
            client: notification.audience.client.clone(),
            except: notification.audience.except_client.clone(),
        }
    }

    pub(crate) fn inbox(event: &InboxEvent) -> Self {
        let text = std::str::from_utf8(event.json()).expect("an inbox event is JSON text").to_owned();
        Body::Inbox {
            user: event.user.clone(),
            except: event.except_client.clone(),
            followers_only: event.followers_only,
            counts: event.counts,
            event: RawValue::from_string(text).expect("an inbox event is JSON"),
        }
    }

    pub(crate) fn topic(event: &TopicEvent) -> Self {
        Body::Topic {
            topic: event.topic.clone(),
            tseq: event.tseq,
            kind: event.kind.clone(),
            data: event.data.clone(),
            at: event.created_at_ms,
            except_user: event.except_user.clone(),
            except_client: event.except_client.clone(),
        }
    }

    pub(crate) fn close(user: &UserId, session: Option<&SessionId>, reason: CloseReason) -> Self {
        Body::Close { user: user.clone(), session: session.cloned(), reason: reason.as_str().to_owned() }
    }
}

/// Rebuilds a `topic` event another node sent.
pub(crate) fn topic_event_from(body: Body) -> Option<TopicEvent> {
    let Body::Topic { topic, tseq, kind, data, at, except_user, except_client } = body else { return None };
    Some(TopicEvent::with_tseq(tseq, topic, kind, data, at, except_user, except_client))
}

/// Rebuilds a notification another node sent.
pub(crate) fn notification_from(body: Body) -> Option<Notification> {
    let Body::Notification { user, seq, kind, data, at, session, client, except } = body else {
        return None;
    };
    let audience = Audience { session, client, except_client: except };
    Some(Notification::new(user, seq, kind, data, at, audience))
}

/// Rebuilds an `inbox` event another node sent.
pub(crate) fn inbox_event_from(body: Body) -> Option<InboxEvent> {
    let Body::Inbox { user, except, followers_only, counts, event } = body else { return None };
    let json = Bytes::from(String::from(Box::<str>::from(event)));
    Some(InboxEvent::from_parts(user, except, followers_only, counts, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn a_notification_crosses_as_it_was() {
        let data: Arc<RawValue> =
            Arc::from(RawValue::from_string(r#"{"text":"hi","n":[1,2]}"#.into()).unwrap());
        let audience = Audience {
            session: Some(SessionId::new("s1").unwrap()),
            client: None,
            except_client: Some(ClientId::new("c9").unwrap()),
        };
        let sent =
            Notification::new(user("alice"), Some(42), Arc::from("chat"), data, 1_700_000_000_123, audience);
        let envelope = Envelope { v: VERSION, from: Arc::from("node-a"), body: Body::notification(&sent) };
        let received = Envelope::decode(&envelope.encode()).unwrap();
        assert_eq!(&*received.from, "node-a");
        let got = notification_from(received.body).unwrap();
        assert_eq!(got.json(), sent.json(), "clients get the same bytes from every node");
        assert_eq!(got.audience, sent.audience);
        assert_eq!((got.user, got.seq, got.created_at_ms), (sent.user, sent.seq, sent.created_at_ms));
    }

    #[test]
    fn an_inbox_event_crosses_as_it_was() {
        let counts = InboxCounts { unread: 3, unseen: 2, total: 5, archived: 0, version: 9 };
        let sent = InboxEvent::appended(user("bob"), &[4, 5], counts);
        let envelope = Envelope { v: VERSION, from: Arc::from("n"), body: Body::inbox(&sent) };
        let got = inbox_event_from(Envelope::decode(&envelope.encode()).unwrap().body).unwrap();
        assert_eq!(got.json(), sent.json());
        assert_eq!((got.followers_only, got.counts, got.user), (true, counts, sent.user));
    }

    #[test]
    fn own_envelopes_are_known_by_their_first_bytes() {
        for node in ["n1", "web-1:7300", "odd\"name"] {
            let bytes = Envelope { v: VERSION, from: Arc::from(node), body: Body::Resync }.encode();
            assert!(bytes.starts_with(&echo_prefix(node)), "{}", String::from_utf8_lossy(&bytes));
            assert!(!bytes.starts_with(&echo_prefix(&format!("{node}x"))));
            assert!(!bytes.starts_with(&echo_prefix("n")), "a prefix of another node's id");
        }
    }

    #[test]
    fn a_batch_crosses_in_order() {
        let counts = InboxCounts { unread: 1, unseen: 1, total: 1, archived: 0, version: 1 };
        let data: Arc<RawValue> = Arc::from(RawValue::from_string("1".into()).unwrap());
        let sent = Notification::new(user("alice"), Some(1), Arc::from("t"), data, 0, Audience::user());
        let batch = Body::Batch(vec![
            Body::notification(&sent),
            Body::inbox(&InboxEvent::appended(user("alice"), &[1], counts)),
        ]);
        let envelope = Envelope { v: VERSION, from: Arc::from("n"), body: batch };
        let Body::Batch(bodies) = Envelope::decode(&envelope.encode()).unwrap().body else {
            panic!("a batch")
        };
        assert!(matches!(&bodies[..], [Body::Notification { .. }, Body::Inbox { .. }]), "{bodies:?}");
    }

    #[test]
    fn bad_envelopes_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"v":1,"from":"n","body":{"nope":{}}}"#,
            br#"{"v":1,"from":"n","body":{"close":{"user":""}}}"#,
        ] {
            assert!(Envelope::decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        // The same on every node and every build: the value is part of the wire format.
        assert_eq!(shard_of(&user("alice")), 263);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            seen.insert(shard_of(&user(&format!("user-{i}"))));
        }
        assert!(seen.len() > (BUS_SHARDS as usize) * 9 / 10, "{} shards used", seen.len());
    }
}
