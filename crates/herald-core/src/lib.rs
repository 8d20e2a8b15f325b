//! Herald's model and delivery engine, with no HTTP and no SQL.
//!
//! A **user** (Eliom's session group) has **sessions** (sign-ins: browsers, devices), each with
//! **clients** (tabs), each with one live connection. A publisher sends a notification to a
//! [`Target`]; durable notifications are appended to the user's log in a [`Store`], which gives
//! them the user's next [`Seq`]; then the [`Bus`] hands them to the [`Hub`] of every node, which
//! fans them out to the queues of the user's clients. A [`Subscription`] turns one client's
//! queue plus the store into an exact, gap-free, duplicate-free stream of [`ClientEvent`]s that a
//! transport (SSE, long-poll, WebSocket: in `herald-server`) only has to encode.
//!
//! # Layout
//! In reading order: each module uses only modules above it (`tests/module_dag.rs` fails on a
//! cycle), from the vocabulary through the mechanisms to the services.
//! - [`ids`]: [`UserId`], [`SessionId`], [`ClientId`] (and the [`ClientIdMinter`]), [`Seq`],
//!   [`Topic`].
//! - [`node`]: who a node is: [`NodeId`], [`ClusterName`].
//! - [`health`]: [`Health`], how a node's store or bus is doing.
//! - [`limits`]: every configurable bound, in one place.
//! - [`data`]: [`check_data`], what a notification's `data` may hold so that every client can
//!   decode it.
//! - [`push`]: Web Push's vocabulary: a session's [`PushSubscription`], the user's
//!   [`PushBounds`], and a [`PushDelivery`] waiting in the store's outbox;
//!   a publish's [`PushOptions`].
//! - [`notification`]: [`Notification`] (serialized once, shared by all its clients), [`Audience`],
//!   [`Target`], [`Publish`], [`Receipt`].
//! - [`client`]: who a connected client is ([`ClientInfo`]), its [`Transport`], and why its
//!   connection ends ([`CloseReason`]).
//! - [`inbox`]: the inbox's vocabulary: each notification's seen / read / archived state
//!   ([`ItemState`], [`Mark`]), the users' counts ([`InboxCounts`]), pages, selections, and the
//!   `inbox` event ([`InboxEvent`], serialized once like a notification).
//! - [`topic`]: what Eliom_notif's keys need beyond their names: a token's [`TopicPatterns`], the `topic`
//!   event ([`TopicEvent`], serialized once like a notification).
//! - [`metrics`]: the node's counters for `/metrics` ([`Metrics`]: atomics, striped where they
//!   move per delivery), read as a [`MetricsSnapshot`].
//! - [`presence`]: presence transitions as the app hears of them ([`PresenceEvent`]), and the
//!   [`PresenceHook`] by which the hub tells of its tabs.
//! - `queue`: each client's bounded queue of events (private).
//! - [`hub`]: the [`Hub`], users → sessions → clients on this node, limits and eviction, presence.
//! - [`store`]: the [`Store`] trait, each user's durable log, and the [`Epoch`] its seqs belong to.
//! - [`bus`]: the [`Bus`] trait that carries notifications to every node; [`LocalBus`] for one node.
//! - [`revocation`]: [`Revocations`], sign-out as revocation: the deny-list of closed sessions.
//! - [`inbox_service`]: the [`Inbox`] handle that reads and changes inboxes and sends `inbox`
//!   events; its refusals are [`InboxError`]s.
//! - [`notifier`]: the [`Notifier`], the cheap cloneable handle that publishes from anywhere; its
//!   refusals are [`NotifyError`]s.
//! - [`presence_tracker`]: the [`PresenceTracker`], tabs into user and session transitions
//!   after a grace period, recorded in the store, handed to a [`PresenceSink`] (webhooks).
//! - [`subscription`]: one client's stream: hello, replay, live, gap filling, close; and [`poll`].

#![forbid(unsafe_code)]

pub mod bus;
pub mod client;
pub mod data;
pub mod health;
pub mod hub;
pub mod ids;
pub mod inbox;
pub mod inbox_service;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod notification;
pub mod notifier;
pub mod presence;
pub mod presence_tracker;
pub mod push;
mod queue;
pub mod resume;
pub mod revocation;
pub mod store;
pub mod subscription;
pub mod topic;

pub use bus::{Bus, BusStats, LocalBus, RevocationNews};
pub use client::{ClientInfo, CloseReason, Transport};
pub use data::{DATA_DEPTH_MAX, DataError, check_data};
pub use health::Health;
pub use hub::{Census, Hub, Interest, ListenError, Presence, TopicTab};
pub use ids::{
    ClientId, ClientIdMinter, ID_BYTES_MAX, InvalidId, InvalidTopic, Seq, SessionId, TOPIC_BYTES_MAX, Topic,
    UserId,
};
pub use inbox::{
    InboxChange, InboxCounts, InboxEvent, InboxItem, InboxPage, InboxQuery, InboxStatus, ItemState, Mark,
    PrunedInbox, Selection,
};
pub use inbox_service::{Inbox, InboxError, InboxUpdate};
pub use jobs::{FanoutJob, JOB_CHUNK_TRIES_MAX, JOB_CHUNK_USERS_MAX, JOBS_UNFINISHED_MAX};
pub use limits::Limits;
pub use metrics::{Metrics, MetricsSnapshot};
pub use node::{CLUSTER_NAME_BYTES_MAX, ClusterName, InvalidName, NODE_ID_BYTES_MAX, NodeId};
pub use notification::{Audience, Notification, Publish, Receipt, ReceiptEntry, Target, TopicReceipt};
pub use notifier::{Notifier, NotifyError, TopicListeners};
pub use presence::{PresenceBeat, PresenceChange, PresenceEvent, PresenceHook, PresenceKind};
pub use presence_tracker::{PresenceSink, PresenceTracker, PresenceTrackerOptions};
pub use push::{
    PUSH_DROP_REASONS, PUSH_ENDPOINT_BYTES_MAX, PUSH_FAILURE_REASONS, PUSH_GRACE_DEFAULT,
    PUSH_MARKER_ORPHANED_AFTER, PUSH_OUTBOX_DELIVERIES_MAX, PUSH_PAYLOAD_BYTES_MAX,
    PUSH_SUBSCRIPTIONS_PER_SESSION_MAX, PUSH_SUBSCRIPTIONS_PER_USER_MAX, PUSH_TTL_SECS_DEFAULT,
    PUSH_USERS_PER_PUBLISH_MAX, PushBounds, PushCounters, PushDelivery, PushExpansion, PushMarker,
    PushOptions, PushOutbox, PushPending, PushPolicy, PushRequest, PushSettle, PushSubscription, PushUrgency,
    is_push_topic, push_evictions, push_subscription_id, push_topic_of_kind,
};
pub use resume::{InvalidResumePoint, RESUME_TOPICS_MAX, ResumePoint};
pub use revocation::Revocations;
pub use store::{
    Appended, EPOCH_BYTES_MAX, Epoch, ListenBounds, LogHead, LogPage, NewNotification, NewTopicEvent,
    PruneReport, Retention, Revocation, ScopeListens, Store, StoreError, StoreWriterStats, StoredListen,
    TopicAppended, TopicHead, TopicListener, TopicPage,
};
pub use subscription::{
    ClientEvent, Elapsed, EndSignal, PollAnswer, SubscribeError, SubscribeRequest, Subscription, poll,
};
pub use topic::{Prepare, Prepared, TOPIC_PATTERNS_MAX, TopicEvent, TopicPatterns};
