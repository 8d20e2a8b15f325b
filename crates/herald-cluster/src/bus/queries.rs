//! Presence across nodes: merging the other nodes' answers into this node's.

use std::sync::Arc;

use herald_core::hub::{ClientPresence, SessionPresence};
use herald_core::{Presence, Transport};

use crate::envelope::Body;

/// Merges the answers of other nodes into this node's presence: one entry per session, its
/// clients from every node, sessions in the order they arrived (their first client's).
pub(super) fn merge_presence(mut presence: Presence, answers: Vec<(Arc<str>, Body)>) -> Presence {
    for (node, answer) in answers {
        let Body::PresenceAnswer { sessions, .. } = answer else { continue };
        for wire in sessions {
            let clients = wire.clients.into_iter().filter_map(|c| {
                Some(ClientPresence {
                    client: c.client,
                    transport: Transport::parse(&c.transport)?,
                    connected_at_ms: c.connected_at,
                    last_seq: c.last_seq,
                    node: Some(node.clone()),
                    topics: c.topics,
                })
            });
            match presence.sessions.iter_mut().find(|s| s.session == wire.session) {
                Some(session) => session.clients.extend(clients),
                None => presence
                    .sessions
                    .push(SessionPresence { session: wire.session, clients: clients.collect() }),
            }
        }
    }
    presence.sessions.retain(|s| !s.clients.is_empty());
    for session in &mut presence.sessions {
        session.clients.sort_by_key(|c| c.connected_at_ms);
    }
    presence.sessions.sort_by_key(|s| s.clients.first().map(|c| c.connected_at_ms));
    presence
}
