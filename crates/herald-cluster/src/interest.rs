//! Which shards this node subscribes to: the users its hub has clients for and the topics its
//! tabs listen to ([`InterestTable`], the hub's [`Interest`]), kept in step with the broker by
//! the bus's reconciling task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_core::{ClientId, Interest, SessionId, Topic, UserId};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};

use crate::envelope::{BUS_SHARDS, shard_of, topic_shard_of};

/// How long a new subscription waits for its shard's subscription to be in force before it
/// reads the store anyway. Past it (a broker that does not answer), the bus is degraded and its
/// store poll delivers what the subscription would have missed (see [`crate::bus`]).
pub const INTEREST_READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Claims waiting for the bus: client ids taken over here (to publish) and new clients (whose
/// limits to check across nodes). At the bound a claim is dropped (and logged): another node's
/// older connection for a taken-over client then stays open until it ends by itself (both get
/// the client's notifications), or a new client's limits are only this node's.
pub const CLAIMS_QUEUE_CAPACITY: usize = 1024;

#[derive(Debug, Clone, Copy, Default)]
struct ShardState {
    /// Users with an entry in this node's hub.
    users: u32,
    /// Whether the broker has this node's subscription to the shard.
    subscribed: bool,
}

/// What the hub told the bus about a client, to act on outside the hub's lock.
#[derive(Debug)]
pub(crate) enum Claim {
    /// A client id taken over here at `at_ms`: publish it, so other nodes end theirs.
    Taken { user: UserId, session: SessionId, client: ClientId, at_ms: i64 },
    /// A new client here: check the limits across nodes.
    Joined { user: UserId, session: SessionId, client: ClientId },
}

/// The hub's [`Interest`]: counts users per shard and wakes the reconciler when a shard gains
/// its first user or loses its last.
pub(crate) struct InterestTable {
    shards: Mutex<Vec<ShardState>>,
    /// The same for topics: `users` counts the topics of the shard that tabs here listen to.
    topic_shards: Mutex<Vec<ShardState>>,
    /// `subscribed` of every topic shard, for [`Interest::topic_ready`].
    topic_flags: Arc<[AtomicBool]>,
    /// Wakes the reconciler.
    pub(crate) changed: Notify,
    /// Bumped whenever a shard becomes subscribed: wakes [`Interest::ready`] waiters.
    subscribed: watch::Sender<u64>,
    /// `subscribed` of every shard, readable without the lock by `ready`'s future.
    flags: Arc<[AtomicBool]>,
    /// While the broker is away, `ready` resolves at once: the store poll covers.
    pub(crate) connected: Arc<AtomicBool>,
    claims: mpsc::Sender<Claim>,
}

impl InterestTable {
    pub(crate) fn new() -> (Arc<Self>, mpsc::Receiver<Claim>) {
        let (claims, claims_rx) = mpsc::channel(CLAIMS_QUEUE_CAPACITY);
        let table = Self {
            shards: Mutex::new(vec![ShardState::default(); BUS_SHARDS as usize]),
            topic_shards: Mutex::new(vec![ShardState::default(); BUS_SHARDS as usize]),
            changed: Notify::new(),
            subscribed: watch::channel(0).0,
            flags: (0..BUS_SHARDS).map(|_| AtomicBool::new(false)).collect(),
            topic_flags: (0..BUS_SHARDS).map(|_| AtomicBool::new(false)).collect(),
            connected: Arc::new(AtomicBool::new(true)),
            claims,
        };
        (Arc::new(table), claims_rx)
    }

    /// Shards to subscribe to and to leave, to match the users.
    pub(crate) fn diff(&self) -> (Vec<u32>, Vec<u32>) {
        diff_of(&self.shards.lock())
    }

    /// Topic shards to subscribe to and to leave, to match the topics listened to here.
    pub(crate) fn topic_diff(&self) -> (Vec<u32>, Vec<u32>) {
        diff_of(&self.topic_shards.lock())
    }

    pub(crate) fn set_topic_subscribed(&self, shard: u32, subscribed: bool) {
        self.topic_shards.lock()[shard as usize].subscribed = subscribed;
        self.topic_flags[shard as usize].store(subscribed, Ordering::Release);
        if subscribed {
            self.subscribed.send_modify(|n| *n += 1);
        }
    }

    /// Resolves once `flags[shard]` is set (its subscription is in force), the broker is away,
    /// or after [`INTEREST_READY_TIMEOUT`].
    fn wait_for_shard(
        &self,
        flags: &Arc<[AtomicBool]>,
        shard: usize,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        if flags[shard].load(Ordering::Acquire) || !self.connected.load(Ordering::Relaxed) {
            return Box::pin(std::future::ready(()));
        }
        let mut changes = self.subscribed.subscribe();
        let flags = flags.clone();
        let connected = self.connected.clone();
        Box::pin(async move {
            let wait = async {
                while !flags[shard].load(Ordering::Acquire) && connected.load(Ordering::Relaxed) {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            };
            if tokio::time::timeout(INTEREST_READY_TIMEOUT, wait).await.is_err() {
                tracing::warn!(
                    shard,
                    "the broker did not confirm a subscription in time: relying on the store poll"
                );
            }
        })
    }

    pub(crate) fn subscribed_topic_shards(&self) -> usize {
        self.topic_shards.lock().iter().filter(|s| s.subscribed).count()
    }

    pub(crate) fn set_subscribed(&self, shard: u32, subscribed: bool) {
        self.shards.lock()[shard as usize].subscribed = subscribed;
        self.flags[shard as usize].store(subscribed, Ordering::Release);
        if subscribed {
            self.subscribed.send_modify(|n| *n += 1);
        }
    }

    pub(crate) fn subscribed_shards(&self) -> usize {
        self.shards.lock().iter().filter(|s| s.subscribed).count()
    }

    /// Wakes `ready` waiters without a new subscription (the broker went away).
    pub(crate) fn wake_waiters(&self) {
        self.subscribed.send_modify(|n| *n += 1);
    }
}

/// Shards whose interest and subscription differ: `(to join, to leave)`.
fn diff_of(shards: &[ShardState]) -> (Vec<u32>, Vec<u32>) {
    let mut join = Vec::new();
    let mut leave = Vec::new();
    for (shard, state) in shards.iter().enumerate() {
        match (state.users > 0, state.subscribed) {
            (true, false) => join.push(shard as u32),
            (false, true) => leave.push(shard as u32),
            _ => {}
        }
    }
    (join, leave)
}

impl Interest for InterestTable {
    fn gained(&self, user: &UserId) {
        let mut shards = self.shards.lock();
        let state = &mut shards[shard_of(user) as usize];
        state.users += 1;
        if state.users == 1 && !state.subscribed {
            self.changed.notify_one();
        }
    }

    fn lost(&self, user: &UserId) {
        let mut shards = self.shards.lock();
        let state = &mut shards[shard_of(user) as usize];
        state.users = state.users.saturating_sub(1);
        if state.users == 0 && state.subscribed {
            self.changed.notify_one();
        }
    }

    fn ready(&self, user: &UserId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.wait_for_shard(&self.flags, shard_of(user) as usize)
    }

    fn topic_ready(&self, topic: &Topic) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.wait_for_shard(&self.topic_flags, topic_shard_of(topic) as usize)
    }

    fn claimed(&self, user: &UserId, session: &SessionId, client: &ClientId, at_ms: i64) {
        let claim =
            Claim::Taken { user: user.clone(), session: session.clone(), client: client.clone(), at_ms };
        if self.claims.try_send(claim).is_err() {
            tracing::warn!(%user, "too many client claims waiting: one is not sent to the other nodes");
        }
    }

    fn topic_gained(&self, topic: &Topic) {
        let mut shards = self.topic_shards.lock();
        let state = &mut shards[topic_shard_of(topic) as usize];
        state.users += 1;
        if state.users == 1 && !state.subscribed {
            self.changed.notify_one();
        }
    }

    fn topic_lost(&self, topic: &Topic) {
        let mut shards = self.topic_shards.lock();
        let state = &mut shards[topic_shard_of(topic) as usize];
        state.users = state.users.saturating_sub(1);
        if state.users == 0 && state.subscribed {
            self.changed.notify_one();
        }
    }

    fn joined(&self, user: &UserId, session: &SessionId, client: &ClientId) {
        let claim = Claim::Joined { user: user.clone(), session: session.clone(), client: client.clone() };
        if self.claims.try_send(claim).is_err() {
            tracing::warn!(%user, "too many client claims waiting: a new client's limits are checked on this node only");
        }
    }
}
