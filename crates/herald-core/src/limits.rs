//! [`Limits`]: every configurable bound of the delivery engine, with its default and what
//! happens when it is reached.

use std::time::Duration;

/// Bounds of the hub and of publishing. Every field says what happens at the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long the `offline` push policy waits for a tab of the session to come back before
    /// pushing ([`crate::push::PUSH_GRACE_DEFAULT`], 5 s).
    pub push_grace: Duration,
    /// Whether Web Push is on (false by default): herald-server sets it when it has a VAPID
    /// key, and so a sender. Off, a publish touches no push table at all: no marker, no look-up
    /// of subscriptions.
    pub push_enabled: bool,
    /// Sessions per user (Eliom's default, 50). One more evicts the least recently active
    /// session: its clients get `closed` with reason `evicted`.
    pub sessions_per_user_max: usize,
    /// Clients per session (50). One more evicts the least recently active client of that
    /// session, which gets `closed` with reason `evicted`.
    pub clients_per_session_max: usize,
    /// Events waiting in one client's queue (1,000). A client whose queue is full is closed with
    /// reason `lagging`; it resumes its durable notifications from its last seq on reconnect,
    /// but ephemeral ones that did not fit are lost to it.
    pub client_queue_len_max: usize,
    /// Size of a notification's `data` as JSON text (64 KiB). Larger: refused (HTTP 413).
    pub data_bytes_max: usize,
    /// Users in one `{"users": […]}` publish (1,000). More: refused (HTTP 400).
    pub users_per_publish_max: usize,
    /// What one publish may make the server hold, counted as the size of `data` times the
    /// number of users it goes to (4 MiB). More: refused (HTTP 413), nothing stored. Each user
    /// gets a notification of its own (its own seq, its own JSON), so without this bound one
    /// 75 KiB request to 1,000 users stored and serialized 64 MB.
    pub publish_bytes_max: usize,
    /// Notifications read from the store per replay page (100). Bounds the memory one
    /// reconnecting client can pin at a time.
    pub replay_page_len: usize,
    /// How long a client that left (a closed stream, or a poller whose last poll ended) stays
    /// known: its id still routes `{"client": C}` publishes to its log, and a poller counts in
    /// presence (60 s). After it, the client is forgotten.
    pub client_linger: Duration,
    /// Topics one tab listens to (100). A listen that would take a tab over it is refused
    /// whole (`TooManyTopics`, HTTP 409 `too_many_topics`), changing nothing.
    pub topics_per_client_max: usize,
    /// Topics a user listens to at user scope, kept in the store (1,000). Over it: refused the
    /// same way.
    pub topics_per_user_max: usize,
    /// Topics one session listens to at session scope, kept in the store (100). Over it:
    /// refused the same way. At most [`Limits::sessions_per_user_max`] sessions of a user keep
    /// session-scope listens: a listen for one more forgets those of the session whose latest
    /// listen is the oldest.
    pub topics_per_session_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sessions_per_user_max: 50,
            clients_per_session_max: 50,
            client_queue_len_max: 1_000,
            data_bytes_max: 64 * 1024,
            users_per_publish_max: 1_000,
            publish_bytes_max: 4 * 1024 * 1024,
            replay_page_len: 100,
            client_linger: Duration::from_secs(60),
            topics_per_client_max: 100,
            topics_per_user_max: 1_000,
            topics_per_session_max: 100,
            push_grace: crate::push::PUSH_GRACE_DEFAULT,
            push_enabled: false,
        }
    }
}
