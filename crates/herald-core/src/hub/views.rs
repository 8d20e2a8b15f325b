//! What the hub answers about who is here: a user's [`Presence`] (sessions → tabs), this node's
//! [`Census`], and the tabs listening to a topic ([`TopicTab`]). Plain values, copied out of the
//! hub's shards (`hub.rs`) while a lock is held, so that nothing outside the hub sees its locks.

use std::sync::Arc;

use crate::client::Transport;
use crate::ids::{ClientId, Seq, SessionId, Topic, UserId};

/// One client in a [`Presence`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPresence {
    pub client: ClientId,
    pub transport: Transport,
    pub connected_at_ms: i64,
    pub last_seq: Seq,
    /// The node it is connected to, in a cluster; `None`: this node.
    pub node: Option<Arc<str>>,
    /// The topics it listens to.
    pub topics: Vec<Topic>,
}

/// One session in a [`Presence`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPresence {
    pub session: SessionId,
    pub clients: Vec<ClientPresence>,
}

/// A tab listening to a topic, in a [`Hub::topic_tabs`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTab {
    pub user: UserId,
    pub session: SessionId,
    pub client: ClientId,
    /// The node it is connected to, in a cluster; `None`: this node.
    pub node: Option<Arc<str>>,
}

/// Who is online on this node ([`Hub::census`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Users with at least one connected tab.
    pub users: u64,
    /// Sessions with at least one connected tab.
    pub sessions: u64,
    /// Connected tabs by transport, in the order of [`crate::metrics::TRANSPORTS`].
    pub tabs: [u64; 3],
}

/// Who of a user is here: connected clients, and pollers within the linger time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user: UserId,
    pub sessions: Vec<SessionPresence>,
}
