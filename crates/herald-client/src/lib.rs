//! A typed Rust client for Herald's HTTP API (`docs/PROTOCOL.md`): publish notifications, ask
//! for presence, subscribe over SSE or long-polling, listen to topics, and mint subscriber
//! tokens. The `herald` CLI and the integration tests use it; so can any Rust app.
//!
//! # Layout
//! In reading order, each module using only those above it:
//! - [`types`]: the JSON bodies: [`To`], [`PublishRequest`], [`Notification`], [`TopicEvent`],
//!   [`Event`], [`Scope`], [`Listens`], [`TopicListeners`]…
//! - [`error`]: the error type, [`ClientError`].
//! - [`token`]: [`mint_token`], the HS256 subscriber token, and its [`Claims`] (with
//!   [`mint_token_with_topics`], the topics its tabs may listen to by themselves); the checks of
//!   ids and topics.
//! - [`resume`]: [`ResumePoint`], where a client stands in its user's log and in each durable
//!   topic's (the SSE id `17;room:1=5`, with the epoch).
//! - [`sse`]: [`SseParser`], an incremental, bounded `text/event-stream` parser.
//! - `http`: what the handles share: the base URL and its routes, the HTTP client's settings,
//!   and reading answers within bounds.
//! - [`inbox`]: [`Inbox`], a user's inbox: counts, pages, marks, deletions.
//! - [`publisher`]: [`Publisher`], the publishers' API (API key): publish, presence, stored
//!   notifications, closing sessions, making a tab, a session or a user listen to topics and
//!   asking who listens, any user's [`Inbox`].
//! - [`subscriber`]: [`Subscriber`], one client's API (token): an SSE [`EventStream`] of
//!   [`Event`]s, long-polls, the topics of its tab, session or user, and its user's own
//!   [`Inbox`].
//! - [`listener`]: [`Listener`], a subscriber that resumes by itself after a dropped connection,
//!   with backoff, never yields a durable notification or topic event twice, skips none, and
//!   keeps its topics.
//!
//! # Topics
//! A topic (`"room:1"`, 1–128 bytes of `[A-Za-z0-9_.:@/-]`) is a key any client may listen to,
//! whoever its user; a publish `to` [`To::topic`] reaches every client listening, as an
//! [`Event::Topic`] (leave out the user who caused it with [`PublishRequest::except_user`]).
//! Such a publish is **durable** by default: stored in the topic's log with its own sequence
//! number, the `tseq` ([`TopicEvent::tseq`], [`PublishResponse::topic`]), so that a client
//! resumes every topic it listens to exactly, as it resumes its user's notifications: its
//! [`ResumePoint`] names the user's seq and each topic's position, and a [`Listener`] keeps it
//! and sends it back on every reconnect. A position older than the topic's log retains gets an
//! [`Event::TopicReset`] for that topic alone. [`PublishRequest::ephemeral`] publishes an event
//! that only the clients connected at that moment get (no tseq, never replayed).
//!
//! A client listens by naming topics when it connects ([`StreamOptions::topics`],
//! [`PollOptions::topics`], [`ListenerOptions::topics`]) or later ([`Subscriber::listen`],
//! [`Listener::listen`]), each one allowed by its token's `topics` claim
//! ([`mint_token_with_topics`]; else 403 `topic_forbidden`); or the app's backend makes it
//! listen with the API key ([`Publisher::listen`]).
//!
//! Listens have three [`Scope`]s: one tab (above), every tab of a session, and every tab of a
//! user on every device, those opened later included (the user **follows** the topic). The two
//! last are kept in the server's store, so they need no tab: a subscriber names them with its
//! token alone ([`Subscriber::listen_at`] with a [`StoredScope`]), the app's backend for anyone
//! ([`Publisher::listen_at`]); both answer the scope's topics ([`Listens`]), and
//! [`Publisher::topic_listeners`] says who listens to a topic. A publish to a topic with
//! [`PublishRequest::inbox`] is durable: one notification stored in the inbox of each follower.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use herald_client::{Event, Listener, ListenerOptions, PublishRequest, Publisher, Subscriber, To};
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), herald_client::ClientError> {
//! let url = "http://127.0.0.1:7300";
//! // The app's backend mints a token for a signed-in user's session…
//! let token = herald_client::mint_token(b"the server's secret", "alice", Some("laptop"), Duration::from_secs(3600))?;
//! // …a client listens with it, resuming by itself after a dropped connection…
//! let mut listener = Listener::new(Subscriber::new(url, token)?, ListenerOptions::default());
//! // …and a publisher notifies every tab of every session of alice.
//! let publisher = Publisher::new(url, "the API key")?;
//! let request = PublishRequest::new(To::user("alice"), json!({"text": "You have a new message"})).kind("message.new");
//! let answer = publisher.publish(&request).await?;
//! println!("stored as seq {}", answer.notifications[0].seq);
//! while let Some(event) = listener.next_event().await? {
//!     if let Event::Notification(n) = event {
//!         println!("{:?} {} {}", n.seq, n.kind, n.data);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Only plain HTTP is built in; the `rustls-tls` feature adds HTTPS.

#![forbid(unsafe_code)]

pub mod error;
mod http;
pub mod inbox;
pub mod listener;
pub mod publisher;
pub mod resume;
pub mod sse;
pub mod subscriber;
pub mod token;
pub mod types;

pub use error::{ClientError, Result};
pub use http::{CONNECT_TIMEOUT, MAX_ERROR_BODY_BYTES, MAX_RESPONSE_BYTES, REQUEST_TIMEOUT};
pub use inbox::{
    Inbox, InboxChange, InboxCounts, InboxItem, InboxOp, InboxPage, InboxQuery, InboxSelection, InboxStatus,
    Mark,
};
pub use listener::{ListenTransport, Listener, ListenerOptions, is_final_close};
pub use publisher::Publisher;
pub use resume::ResumePoint;
pub use sse::{SseEvent, SseItem, SseParser};
pub use subscriber::{EventStream, PollOptions, StreamOptions, Subscriber};
pub use token::{Claims, check_topic, mint_token, mint_token_with_topics};
pub use types::{
    ClientPresence, Event, ListeningClient, ListeningSession, Listens, Notification, PollResponse, Presence,
    PublishRequest, PublishResponse, Published, PublishedTopic, Scope, SessionPresence, StoredScope, To,
    TopicEvent, TopicListeners, TopicReset, Undecodable,
};
