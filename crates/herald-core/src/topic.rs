//! Topics, Eliom_notif's keys ([`Topic`] itself is in `ids`): the patterns of a token's `topics` claim
//! ([`TopicPatterns`]), and the `topic` event ([`TopicEvent`], serialized once like a
//! notification).
//!
//! A tab listens to a topic (Eliom's `listen key`); a publisher notifies everyone listening to it
//! (`notify ?notfor key v`), except one user or one tab if it says so. Unlike a notification, a
//! topic event belongs to no user's log: it is fanned out to the tabs listening, wherever their
//! users are.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::ids::{ClientId, InvalidTopic, Seq, SessionId, Topic, UserId, check_topic_text};
use crate::notification::format_timestamp_ms;

/// Most patterns in one token's `topics` claim.
pub const TOPIC_PATTERNS_MAX: usize = 100;

/// The topics a subscriber token lets its tabs listen to by themselves: its `topics` claim, a
/// list of topic names (`"post:42"`) and prefixes (`"room:*"`, and `"*"` for every topic).
/// Without the claim a tab listens only to what the app's backend makes it listen to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicPatterns {
    exact: Vec<Topic>,
    prefixes: Vec<Box<str>>,
}

impl TopicPatterns {
    /// Reads a claim's patterns: each a topic, or a topic's first bytes followed by one `*`.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, InvalidTopic> {
        let mut parsed = Self::default();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            match pattern.strip_suffix('*') {
                Some(prefix) => {
                    check_topic_text(prefix)?;
                    parsed.prefixes.push(Box::from(prefix));
                }
                None => parsed.exact.push(Topic::new(pattern)?),
            }
        }
        Ok(parsed)
    }

    /// Whether a tab may listen to `topic` by itself.
    pub fn allows(&self, topic: &Topic) -> bool {
        self.exact.contains(topic) || self.prefixes.iter().any(|p| topic.as_str().starts_with(&**p))
    }

    /// Whether the claim allows nothing (absent or empty).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// A `topic` event: one publish to everyone listening to a topic, serialized once into its
/// canonical JSON and shared (`Arc`) by every tab's queue.
#[derive(Debug)]
pub struct TopicEvent {
    pub topic: Topic,
    /// A durable event's place in its topic's log (`tseq`, 1, 2, … per topic, never reused);
    /// `None` for an ephemeral one.
    pub tseq: Option<Seq>,
    /// The event's `type`, chosen by the publisher.
    pub kind: Arc<str>,
    /// The publisher's JSON payload, kept as text.
    pub data: Arc<RawValue>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// No tab of this user gets it (Eliom's `notfor`: the user who caused it).
    pub except_user: Option<UserId>,
    /// This tab does not get it (the tab that caused it).
    pub except_client: Option<ClientId>,
    /// `{"topic":…,"type":…,"data":…,"created_at":…}`, on one line.
    json: Bytes,
}

#[derive(Serialize)]
struct WireTopicEvent<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tseq: Option<Seq>,
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a RawValue,
    created_at: &'a str,
}

impl TopicEvent {
    /// An ephemeral event (no `tseq`).
    pub fn new(
        topic: Topic,
        kind: Arc<str>,
        data: Arc<RawValue>,
        created_at_ms: i64,
        except_user: Option<UserId>,
        except_client: Option<ClientId>,
    ) -> Self {
        Self::with_tseq(None, topic, kind, data, created_at_ms, except_user, except_client)
    }

    /// An event with its `tseq` if it is durable (stored in its topic's log).
    pub fn with_tseq(
        tseq: Option<Seq>,
        topic: Topic,
        kind: Arc<str>,
        data: Arc<RawValue>,
        created_at_ms: i64,
        except_user: Option<UserId>,
        except_client: Option<ClientId>,
    ) -> Self {
        let created_at = format_timestamp_ms(created_at_ms);
        let wire =
            WireTopicEvent { topic: topic.as_str(), tseq, kind: &kind, data: &data, created_at: &created_at };
        let mut json = serde_json::to_vec(&wire).expect("a topic event always serializes");
        // As for a notification: line breaks can only be whitespace here (escaped in strings).
        for byte in &mut json {
            if *byte == b'\n' || *byte == b'\r' {
                *byte = b' ';
            }
        }
        Self { topic, tseq, kind, data, created_at_ms, except_user, except_client, json: Bytes::from(json) }
    }

    /// The canonical JSON object of this event, as tabs receive it, on one line.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// Whether the tab `client` of `user` gets it (it listens to the topic).
    pub fn is_for(&self, user: &UserId, client: &ClientId) -> bool {
        self.except_user.as_ref() != Some(user) && self.except_client.as_ref() != Some(client)
    }
}

/// A topic a user listens to in every tab (`session` `None`: **user scope**, the "follow" case)
/// or in the tabs of one session (**session scope**), kept in the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredListen {
    pub session: Option<SessionId>,
    pub topic: Topic,
}

/// A user, or one of its sessions, listening to a topic: a page of `Store::topic_listeners`,
/// and where the next page starts (after the last one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicListener {
    pub user: UserId,
    /// `None`: the user listens at user scope.
    pub session: Option<SessionId>,
}

/// What a [`Prepare`] hook makes of a topic event for one user's tabs.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// The event as published.
    Keep,
    /// Nothing: the user's tabs do not get it.
    Drop,
    /// The event with this `data` instead (what this user may see of it). It must be JSON every
    /// client can decode ([`crate::check_data`]) within the publish's data bound; one that is
    /// not is dropped, with a warning.
    Rewrite(Arc<RawValue>),
}

/// Eliom_notif's `prepare`: decides, for each user whose tabs listen to a topic, what they get
/// of one of its events (keep it, drop it, or rewrite its `data`), e.g. to leave out what the
/// user may not see. Set on the [`crate::Notifier`] of every node; each node runs it for the
/// users of its own tabs, **once per user** per event, not once per tab.
///
/// It runs during the fan-out, with the topic's shard of the hub locked: it must be quick and
/// must not block (no I/O, no lock the publisher may hold); what it needs should be in memory.
pub trait Prepare: Send + Sync + 'static {
    fn prepare(&self, user: &UserId, event: &TopicEvent) -> Prepared;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TOPIC_BYTES_MAX;

    #[test]
    fn topics_take_only_their_characters_and_length() {
        assert!(Topic::new("post:42").is_ok());
        assert!(Topic::new("room/a_b-c.d@e").is_ok());
        assert_eq!(Topic::new(""), Err(InvalidTopic::Empty));
        assert_eq!(Topic::new("a b"), Err(InvalidTopic::Character { at: 1, found: ' ' }));
        assert_eq!(Topic::new("a,b"), Err(InvalidTopic::Character { at: 1, found: ',' }));
        assert_eq!(Topic::new("é"), Err(InvalidTopic::Character { at: 0, found: 'é' }));
        assert_eq!(Topic::new("a*"), Err(InvalidTopic::Character { at: 1, found: '*' }));
        assert!(Topic::new("x".repeat(TOPIC_BYTES_MAX)).is_ok());
        assert_eq!(Topic::new("x".repeat(TOPIC_BYTES_MAX + 1)), Err(InvalidTopic::TooLong { len: 129 }));
    }

    #[test]
    fn patterns_allow_names_and_prefixes() {
        let patterns = TopicPatterns::parse(&["post:42", "room:*"]).unwrap();
        let allows = |t: &str| patterns.allows(&Topic::new(t).unwrap());
        assert!(allows("post:42") && allows("room:1") && allows("room:"));
        assert!(!allows("post:43") && !allows("post:420") && !allows("roo") && !allows("rooms"));
        let everything = TopicPatterns::parse(&["*"]).unwrap();
        assert!(everything.allows(&Topic::new("anything").unwrap()));
        assert!(TopicPatterns::parse::<&str>(&[]).unwrap().is_empty());
        assert!(TopicPatterns::parse(&["a*b"]).is_err(), "a star is only a pattern's last byte");
        assert!(TopicPatterns::parse(&["a**"]).is_err());
        assert!(TopicPatterns::parse(&[""]).is_err());
    }

    #[test]
    fn events_serialize_once_on_one_line_and_leave_out_who_they_except() {
        let data: Arc<RawValue> = Arc::from(RawValue::from_string("{\n\"text\": \"hi\"}".into()).unwrap());
        let alice = UserId::new("alice").unwrap();
        let tab = ClientId::new("c1").unwrap();
        let event = TopicEvent::new(
            Topic::new("post:42").unwrap(),
            Arc::from("comment"),
            data,
            1_700_000_000_123,
            Some(alice.clone()),
            None,
        );
        assert_eq!(
            std::str::from_utf8(event.json()).unwrap(),
            r#"{"topic":"post:42","type":"comment","data":{ "text": "hi"},"created_at":"2023-11-14T22:13:20.123Z"}"#
        );
        assert!(!event.is_for(&alice, &tab));
        assert!(event.is_for(&UserId::new("bob").unwrap(), &tab));
    }
}
