//! Exactly-once accounting: every acknowledged publish to user `u` must reach every connected
//! client of `u` once. Compares what each client received with the publish log, per
//! (publish id, client). A broadcast's topic is one such "user" that every client belongs to
//! (see [`crate::proto::audience_of`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A subscriber as the accounting sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    pub user: u32,
    /// Whether it ever connected. One that never did is reported as a failed connection and
    /// expects nothing.
    pub connected: bool,
}

/// Deliveries of one phase, compared with the publish log.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryStats {
    /// (publish, client) pairs that must arrive: each acknowledged publish times the connected
    /// clients of its user.
    pub expected: u64,
    /// Expected pairs that arrived (once or more).
    pub delivered: u64,
    /// Expected pairs that never arrived.
    pub lost: u64,
    /// Extra copies of pairs that arrived more than once.
    pub duplicated: u64,
    /// Arrivals at a client of another user than the publish's.
    pub misrouted: u64,
    /// Arrivals for publishes whose answer was an error or never came (the server may have
    /// stored them anyway); neither expected nor lost.
    pub unacked: u64,
    /// Arrivals with an id of another phase: late ones, already counted lost in their phase.
    pub stray: u64,
    /// Connected clients that missed at least one of their expected publishes.
    #[serde(default)]
    pub clients_short: u64,
    /// Clients that got at least one publish more than once.
    #[serde(default)]
    pub clients_duplicated: u64,
}

impl DeliveryStats {
    pub fn add(&mut self, o: &Self) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.misrouted += o.misrouted;
        self.unacked += o.unacked;
        self.stray += o.stray;
        self.clients_short += o.clients_short;
        self.clients_duplicated += o.clients_duplicated;
    }
}

/// Accounts for one phase. `receptions` holds `(client slot, publish id)` for every arrival
/// (sorted here); `clients[slot]` says whose client each slot is; `log[i]` is the user of
/// publish `first_id + i`, or -1 if that publish was not acknowledged.
pub fn verify(
    receptions: &mut [(u32, u64)],
    clients: &[ClientInfo],
    first_id: u64,
    log: &[i64],
) -> DeliveryStats {
    let mut expected_per_user: HashMap<u32, u64> =
        clients.iter().filter(|c| c.connected).map(|c| (c.user, 0)).collect();
    for &owner in log {
        if let Ok(user) = u32::try_from(owner)
            && let Some(n) = expected_per_user.get_mut(&user)
        {
            *n += 1;
        }
    }
    receptions.sort_unstable();
    let mut stats = DeliveryStats::default();
    let mut r = 0;
    for (slot, client) in clients.iter().enumerate() {
        let start = r;
        while r < receptions.len() && receptions[r].0 as usize == slot {
            r += 1;
        }
        let got = &receptions[start..r];
        let mut delivered = 0;
        let mut duplicated = 0;
        let mut i = 0;
        while i < got.len() {
            let id = got[i].1;
            let copies = got[i..].iter().take_while(|(_, other)| *other == id).count() as u64;
            i += copies as usize;
            let owner = id.checked_sub(first_id).and_then(|at| log.get(at as usize)).copied();
            match owner {
                None => stats.stray += copies,
                Some(owner) if owner < 0 => stats.unacked += copies,
                Some(owner) if owner as u32 != client.user => stats.misrouted += copies,
                Some(_) => {
                    delivered += 1;
                    duplicated += copies - 1;
                }
            }
        }
        stats.duplicated += duplicated;
        stats.clients_duplicated += u64::from(duplicated > 0);
        if client.connected {
            let expected = expected_per_user[&client.user];
            stats.expected += expected;
            stats.delivered += delivered;
            stats.lost += expected.saturating_sub(delivered);
            stats.clients_short += u64::from(delivered < expected);
        }
    }
    debug_assert_eq!(r, receptions.len(), "every reception belongs to a known client slot");
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ClientInfo = ClientInfo { user: 0, connected: true };
    const B: ClientInfo = ClientInfo { user: 1, connected: true };

    #[test]
    fn exactly_once_is_clean() {
        // Publishes 10 (user 0), 11 (user 1), 12 (user 0); clients 0 and 1 are user 0's.
        let log = [0, 1, 0];
        let mut got = vec![(0, 10), (0, 12), (1, 12), (1, 10), (2, 11)];
        let stats = verify(&mut got, &[A, A, B], 10, &log);
        assert_eq!(stats, DeliveryStats { expected: 5, delivered: 5, ..Default::default() });
    }

    #[test]
    fn losses_duplicates_and_misroutes_are_counted() {
        let log = [0, 1, 0];
        // Client 0 gets 10 twice and misses 12; client 1 gets 11 (user 1's): misrouted, and
        // misses 10 and 12; client 2 (user 1) gets 11 three times.
        let mut got = vec![(0, 10), (0, 10), (1, 11), (2, 11), (2, 11), (2, 11)];
        let stats = verify(&mut got, &[A, A, B], 10, &log);
        assert_eq!(
            stats,
            DeliveryStats {
                expected: 5,
                delivered: 2,
                lost: 3,
                duplicated: 3,
                misrouted: 1,
                clients_short: 2,
                clients_duplicated: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn unacked_stray_and_unconnected() {
        // 20 was not acknowledged; 5 and 99 are not of this phase; client 1 never connected.
        let log = [-1, 0];
        let mut got = vec![(0, 20), (0, 21), (0, 5), (0, 99)];
        let never = ClientInfo { user: 0, connected: false };
        let stats = verify(&mut got, &[A, never], 20, &log);
        assert_eq!(
            stats,
            DeliveryStats { expected: 1, delivered: 1, unacked: 1, stray: 2, ..Default::default() }
        );
    }
}
