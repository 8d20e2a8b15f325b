//! What the hub says about clients, acted on outside its lock: takeovers published to the other
//! nodes (`replaced`), and a new client's session and client limits counted on every node.

use herald_core::hub::{ClientPresence, SessionPresence};
use herald_core::{Bus, ClientId, CloseReason, SessionId, UserId};
use tokio::sync::mpsc;

use super::{ClusterBus, PEER_SILENT_AFTER};
use crate::envelope::Body;
use crate::interest::Claim;

/// Limit checks of new clients running at once (each a presence query of up to
/// [`super::PRESENCE_TIMEOUT`]). At the bound the claims wait in their queue.
pub const LIMIT_CHECKS_MAX: usize = 32;

pub(super) async fn send_claims(bus: ClusterBus, mut claims: mpsc::Receiver<Claim>) {
    let inner = bus.inner.clone();
    let checks = std::sync::Arc::new(tokio::sync::Semaphore::new(LIMIT_CHECKS_MAX));
    loop {
        let claim = tokio::select! {
            () = inner.stop.cancelled() => return,
            claim = claims.recv() => match claim { Some(claim) => claim, None => return },
        };
        match claim {
            Claim::Taken { user, session, client, at_ms } => {
                let body = Body::Claim { user: user.clone(), session, client, at: at_ms };
                inner.send_about(&user, body).await;
            }
            Claim::Joined { user, session, client } => {
                // Each check waits for the other nodes (up to the presence timeout): several run
                // at once, at most LIMIT_CHECKS_MAX; past it, this task waits for a slot (and the
                // claims queue, bounded, takes the overflow).
                let Ok(permit) = checks.clone().acquire_owned().await else { return };
                let bus = bus.clone();
                tokio::spawn(async move {
                    enforce_limits(&bus, &user, &session, &client).await;
                    drop(permit);
                });
            }
        }
    }
}

/// After a new client joined here: the user's sessions and the session's clients on every node
/// together, against the limits. The sessions (and clients) whose latest connection is the
/// oldest are evicted, on whichever node they are, never the one that just joined. A node that
/// does not answer the presence query in time is not counted: its clients are evicted later or
/// not at all (the limits are then per node for them).
async fn enforce_limits(bus: &ClusterBus, user: &UserId, session: &SessionId, joined: &ClientId) {
    let inner = &bus.inner;
    let limits = inner.hub.limits();
    if !inner.peers.lock().values().any(|p| p.last_heard.elapsed() < PEER_SILENT_AFTER) {
        return; // No other node: the hub's own limits are the cluster's.
    }
    let Ok(presence) = bus.presence(user).await else { return };
    if presence.sessions.len() > limits.sessions_per_user_max {
        let mut others: Vec<&SessionPresence> =
            presence.sessions.iter().filter(|s| &s.session != session).collect();
        others.sort_by_key(|s| s.clients.iter().map(|c| c.connected_at_ms).max());
        let excess = presence.sessions.len() - limits.sessions_per_user_max;
        for evicted in others.into_iter().take(excess) {
            let _ = bus.close_sessions(user, Some(&evicted.session), CloseReason::Evicted).await;
        }
    }
    let Some(mine) = presence.sessions.iter().find(|s| &s.session == session) else { return };
    if mine.clients.len() > limits.clients_per_session_max {
        let mut others: Vec<&ClientPresence> = mine.clients.iter().filter(|c| &c.client != joined).collect();
        others.sort_by_key(|c| c.connected_at_ms);
        let excess = mine.clients.len() - limits.clients_per_session_max;
        for evicted in others.into_iter().take(excess) {
            inner.hub.evict_client(user, session, &evicted.client);
            let body =
                Body::Evict { user: user.clone(), session: session.clone(), client: evicted.client.clone() };
            inner.send_about(user, body).await;
        }
    }
}
