//! Presence as the app hears of it (webhooks): the vocabulary of presence *transitions*.
//!
//! The hub knows this node's tabs; it tells a [`PresenceHook`] each time one of them becomes
//! connected or stops being so (a tab, not yet a user: grace periods and other nodes are decided
//! further up, by the tracker in `presence_tracker`). The store records what was reported online
//! ([`PresenceChange`] in, [`PresenceEvent`]s out, each with its user's next `user_seq`), so that
//! a user is online once however many nodes have its tabs, and so that what a node reported
//! online can be reported offline after it died.
//!
//! Nothing here knows how events travel (HTTP, signatures, retries: herald-server `webhook`).

use std::sync::Arc;

use crate::ids::{ClientId, SessionId, UserId};

/// What a presence event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceKind {
    /// The user's first tab anywhere (no session of the user was online).
    UserOnline,
    /// The user's last tab anywhere is gone (after the grace period).
    UserOffline,
    /// The session's first tab anywhere.
    SessionOnline,
    /// The session's last tab anywhere is gone (after the grace period).
    SessionOffline,
    /// One tab connected (only when per-tab events are on).
    ClientOnline,
    /// One tab gone (after the grace period; only when per-tab events are on).
    ClientOffline,
}

impl PresenceKind {
    /// The event's name on the wire (`user.online`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserOnline => "user.online",
            Self::UserOffline => "user.offline",
            Self::SessionOnline => "session.online",
            Self::SessionOffline => "session.offline",
            Self::ClientOnline => "client.online",
            Self::ClientOffline => "client.offline",
        }
    }

    /// The kind named `name` ([`PresenceKind::as_str`]).
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::UserOnline,
            Self::UserOffline,
            Self::SessionOnline,
            Self::SessionOffline,
            Self::ClientOnline,
            Self::ClientOffline,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// One presence transition, numbered by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    pub kind: PresenceKind,
    pub user: UserId,
    /// The session, for session and client events.
    pub session: Option<SessionId>,
    /// The tab, for client events.
    pub client: Option<ClientId>,
    /// The user's presence sequence: strictly increasing per user, across restarts and nodes
    /// (the store gives it out), so that a receiver can order a user's events and drop repeats.
    pub user_seq: u64,
    /// The node whose tabs made the transition (or, for events of a node that died, that node).
    pub node: Arc<str>,
    /// When the transition was recorded, Unix ms.
    pub at_ms: i64,
}

/// What one node saw change in one session of a user, to record in the store
/// ([`crate::Store::record_presence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub user: UserId,
    pub session: SessionId,
    /// `Some(true)`: the session has a tab on this node now (it had none reported);
    /// `Some(false)`: it has none any more (grace over); `None`: unchanged.
    pub online: Option<bool>,
    /// Tabs that came (`true`) or went (`false`), when per-tab events are on; the store only
    /// numbers them.
    pub clients: Vec<(ClientId, bool)>,
    pub at_ms: i64,
}

/// What [`crate::Store::presence_heartbeat`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceBeat {
    /// Whether this node was still registered: `false` after another node took it for dead and
    /// released its sessions (they must be recorded again), or on its first beat.
    pub was_registered: bool,
    /// Other nodes whose last beat is older than the bound asked for: dead, their sessions to
    /// release ([`crate::Store::release_presence`]).
    pub dead_nodes: Vec<String>,
}

/// Hears each tab of the hub become connected or not. Called with a hub shard locked: it must
/// only record and wake, never block or await (like [`crate::Interest`]).
pub trait PresenceHook: Send + Sync + 'static {
    /// `client` of `user` in `session` is connected to this node now (`connected`), or is not
    /// any more. A parked poller counts as connected until its linger ends.
    fn tab_changed(&self, user: &UserId, session: &SessionId, client: &ClientId, connected: bool);
}

/// What a store does with its row of (user, session, node) for a [`PresenceChange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowChange {
    Keep,
    Insert,
    Delete,
}

/// What a [`PresenceChange`] does, decided once for every store ([`PresenceChange::plan`]):
/// the row to write and the events to number, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresencePlan {
    pub row: RowChange,
    pub events: Vec<(PresenceKind, Option<ClientId>)>,
}

impl PresenceChange {
    /// The plan, given what the store holds before the change (read in the change's
    /// transaction, with the user serialized): whether this node's row of the session exists,
    /// how many rows the session has (all nodes), and how many the user has (all sessions, all
    /// nodes).
    pub fn plan(&self, had_row: bool, session_rows: u64, user_rows: u64) -> PresencePlan {
        let mut events = Vec::new();
        let mut row = RowChange::Keep;
        let clients = |online: bool| {
            self.clients.iter().filter(move |(_, o)| *o == online).map(move |(c, _)| {
                (
                    if online { PresenceKind::ClientOnline } else { PresenceKind::ClientOffline },
                    Some(c.clone()),
                )
            })
        };
        events.extend(clients(false));
        match self.online {
            Some(true) if !had_row => {
                row = RowChange::Insert;
                if user_rows == 0 {
                    events.push((PresenceKind::UserOnline, None));
                }
                if session_rows == 0 {
                    events.push((PresenceKind::SessionOnline, None));
                }
            }
            Some(false) if had_row => {
                row = RowChange::Delete;
                if session_rows <= 1 {
                    events.push((PresenceKind::SessionOffline, None));
                }
                if user_rows <= 1 {
                    events.push((PresenceKind::UserOffline, None));
                }
            }
            _ => {}
        }
        events.extend(clients(true));
        PresencePlan { row, events }
    }
}

impl PresencePlan {
    /// The plan's events for `change` of `node`, numbered `first_seq`, `first_seq + 1`, …
    pub fn numbered(&self, node: &str, change: &PresenceChange, first_seq: u64) -> Vec<PresenceEvent> {
        let node: Arc<str> = Arc::from(node);
        self.events
            .iter()
            .zip(first_seq..)
            .map(|((kind, client), user_seq)| PresenceEvent {
                kind: *kind,
                user: change.user.clone(),
                session: (*kind != PresenceKind::UserOnline && *kind != PresenceKind::UserOffline)
                    .then(|| change.session.clone()),
                client: client.clone(),
                user_seq,
                node: node.clone(),
                at_ms: change.at_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(online: Option<bool>, clients: &[(&str, bool)]) -> PresenceChange {
        PresenceChange {
            user: UserId::new("u").unwrap(),
            session: SessionId::new("s").unwrap(),
            online,
            clients: clients.iter().map(|(c, o)| (ClientId::new(*c).unwrap(), *o)).collect(),
            at_ms: 0,
        }
    }

    fn kinds(plan: &PresencePlan) -> Vec<&'static str> {
        plan.events.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// The user and the session are online once across nodes; tabs come after the session
    /// that holds them and go before it.
    #[test]
    fn a_plan_makes_user_and_session_events_only_at_the_edges() {
        let first = change(Some(true), &[("c", true)]).plan(false, 0, 0);
        assert_eq!(first.row, RowChange::Insert);
        assert_eq!(kinds(&first), ["user.online", "session.online", "client.online"]);
        assert_eq!(
            kinds(&change(Some(true), &[]).plan(false, 1, 1)),
            Vec::<&str>::new(),
            "another node has it"
        );
        assert_eq!(kinds(&change(Some(true), &[]).plan(false, 0, 2)), ["session.online"]);
        assert_eq!(change(Some(true), &[]).plan(true, 1, 1).row, RowChange::Keep, "already recorded");
        let last = change(Some(false), &[("c", false)]).plan(true, 1, 1);
        assert_eq!(last.row, RowChange::Delete);
        assert_eq!(kinds(&last), ["client.offline", "session.offline", "user.offline"]);
        assert_eq!(kinds(&change(Some(false), &[]).plan(true, 2, 3)), Vec::<&str>::new());
        assert_eq!(kinds(&change(Some(false), &[]).plan(false, 0, 0)), Vec::<&str>::new(), "not recorded");
        let numbered = last.numbered("n", &change(Some(false), &[]), 7);
        assert_eq!(numbered.iter().map(|e| e.user_seq).collect::<Vec<_>>(), [7, 8, 9]);
        assert!(numbered[2].session.is_none() && numbered[1].session.is_some());
    }
}
