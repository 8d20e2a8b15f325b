//! The [`PresenceTracker`]: this node's tabs ([`PresenceHook`], from the hub) into user and
//! session transitions, recorded in the store and handed to a [`PresenceSink`] (herald-server's
//! webhooks).
//!
//! # How a transition is decided
//! The hub tells the tracker of each tab that connects or goes; the tracker only records that
//! (under its own mutex, which is taken after a hub shard and never the other way round) and
//! wakes its task. The task reconciles each user it was woken for: a tab is *wanted online*
//! while it is connected and for [`PresenceTrackerOptions::offline_grace`] after it went, a
//! session while one of its tabs is. Where that differs from what was recorded, it records the
//! change in the store ([`Store::record_presence`]), which decides, across every node of a
//! cluster, whether the user and the session were or are still online anywhere, and numbers the
//! events. So a reload within the grace period changes nothing (the tab, or a new one, is back
//! before the old one stops being wanted) and sends nothing; and a user with tabs on two nodes
//! is online once.
//!
//! # Nodes that die
//! Every [`PRESENCE_HEARTBEAT_INTERVAL`] the task records that its node is alive, and learns of
//! nodes silent for [`PRESENCE_NODE_DEAD_AFTER`]: it releases their sessions
//! ([`Store::release_presence`], which makes their offline events). At start, before anything
//! else, it releases what its own node id left (a `kill -9`, a crash, or a shutdown). A node
//! that finds, at a heartbeat, that another node took it for dead records its sessions again.
//! The store rather than the bus decides liveness because the store holds what was reported:
//! a node cut off from the broker but not from the database still holds its tabs.
//!
//! # Bounds
//! The tracker's state is one entry per tab the hub has, kept until its offline is recorded,
//! and one timer per tab that went within the last grace period (a queue in time order: every
//! grace period is as long); a failed store call is retried after [`PRESENCE_STORE_RETRY`]
//! (the change waits, nothing is lost, and the task sleeps meanwhile); users are reconciled
//! [`PRESENCE_USERS_AT_ONCE`] at a time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::ids::{ClientId, SessionId, UserId};
use crate::notification::now_ms;
use crate::presence::{PresenceChange, PresenceEvent, PresenceHook};
use crate::store::Store;

/// How often a node records that it is alive (one small store write).
pub const PRESENCE_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// A node whose last heartbeat is older than this is dead: another node releases its online
/// sessions (their offline events come then). Six missed heartbeats: a node busy or briefly cut
/// off from the database is not taken for dead.
pub const PRESENCE_NODE_DEAD_AFTER: Duration = Duration::from_secs(30);

/// After a store call failed, the change is tried again this much later.
pub const PRESENCE_STORE_RETRY: Duration = Duration::from_secs(1);

/// Users reconciled concurrently (each its own store calls, in order per user).
pub const PRESENCE_USERS_AT_ONCE: usize = 64;

/// Sessions of a dead node released per store call.
pub const PRESENCE_RELEASE_CHUNK: usize = 500;

/// The default grace period before a tab, a session or a user that lost its last tab is
/// reported offline.
pub const PRESENCE_OFFLINE_GRACE_DEFAULT: Duration = Duration::from_secs(10);

/// How the tracker decides.
#[derive(Debug, Clone)]
pub struct PresenceTrackerOptions {
    /// This node's id, in the store's rows and in every event.
    pub node: Arc<str>,
    /// How long a tab that went still counts as online: a reload within it sends nothing.
    pub offline_grace: Duration,
    /// Whether to make `client.online` / `client.offline` events (one per tab).
    pub client_events: bool,
    /// When another node counts as dead ([`PRESENCE_NODE_DEAD_AFTER`]; shorter in tests). The
    /// heartbeat comes every sixth of it, at most every [`PRESENCE_HEARTBEAT_INTERVAL`].
    pub node_dead_after: Duration,
}

impl PresenceTrackerOptions {
    fn heartbeat_interval(&self) -> Duration {
        (self.node_dead_after / 6).min(PRESENCE_HEARTBEAT_INTERVAL)
    }
}

/// Where the tracker's events go, in order per user. Must not block: the sink bounds itself
/// (herald-server's webhook queue counts what it drops).
pub trait PresenceSink: Send + Sync + 'static {
    fn send(&self, events: Vec<PresenceEvent>);
}

/// See the module docs. Cheap to clone: clones share the same tracker.
#[derive(Clone)]
pub struct PresenceTracker {
    inner: Arc<Inner>,
}

struct Inner {
    options: PresenceTrackerOptions,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    users: HashMap<UserId, Vec<SessionTabs>>,
    /// Users whose tabs changed since they were last reconciled.
    dirty: HashSet<UserId>,
    /// When a gone tab's grace period ends, and its user: reconciled again then. In time
    /// order, since every grace period is as long (pushed at the back, taken from the front);
    /// one entry per tab that went within the last grace period.
    grace_ends: VecDeque<(Instant, UserId)>,
}

struct SessionTabs {
    id: SessionId,
    tabs: Vec<Tab>,
    /// What the store has for this session and this node.
    recorded: bool,
}

struct Tab {
    client: ClientId,
    connected: bool,
    /// When it went, if it is not connected.
    gone_at: Option<Instant>,
    /// Whether its `client.online` was recorded (only with client events).
    recorded: bool,
}

impl Tab {
    fn wanted_online(&self, now: Instant, grace: Duration) -> bool {
        self.connected || self.gone_at.is_some_and(|at| now.duration_since(at) < grace)
    }
}

impl PresenceHook for PresenceTracker {
    fn tab_changed(&self, user: &UserId, session: &SessionId, client: &ClientId, connected: bool) {
        let mut state = self.inner.state.lock();
        let sessions = state.users.entry(user.clone()).or_default();
        let index = match sessions.iter().position(|s| &s.id == session) {
            Some(i) => i,
            None => {
                sessions.push(SessionTabs { id: session.clone(), tabs: Vec::new(), recorded: false });
                sessions.len() - 1
            }
        };
        let tabs = &mut sessions[index].tabs;
        let tab = match tabs.iter().position(|t| &t.client == client) {
            Some(i) => &mut tabs[i],
            None => {
                tabs.push(Tab { client: client.clone(), connected: false, gone_at: None, recorded: false });
                tabs.last_mut().expect("just pushed")
            }
        };
        tab.connected = connected;
        let now = Instant::now();
        tab.gone_at = (!connected).then_some(now);
        if !connected {
            let grace_end = now + self.inner.options.offline_grace;
            state.grace_ends.push_back((grace_end, user.clone()));
        }
        state.dirty.insert(user.clone());
        drop(state);
        self.inner.wake.notify_one();
    }
}

impl PresenceTracker {
    pub fn new(options: PresenceTrackerOptions) -> Self {
        Self { inner: Arc::new(Inner { options, state: Mutex::default(), wake: Notify::new() }) }
    }

    pub fn options(&self) -> &PresenceTrackerOptions {
        &self.inner.options
    }

    /// Tabs the tracker holds (connected, or within their grace period, or not yet recorded
    /// offline): for tests and metrics.
    pub fn tabs(&self) -> usize {
        self.inner.state.lock().users.values().flatten().map(|s| s.tabs.len()).sum()
    }

    /// Runs the tracker until `stop` resolves: first releases what this node id left in the
    /// store, then reconciles users as their tabs change and heartbeats.
    pub async fn run(
        &self,
        store: Arc<dyn Store>,
        sink: Arc<dyn PresenceSink>,
        stop: impl Future<Output = ()>,
    ) {
        tokio::select! {
            () = stop => {}
            () = self.run_forever(&*store, &*sink) => {}
        }
    }

    async fn run_forever(&self, store: &dyn Store, sink: &dyn PresenceSink) {
        let node = self.inner.options.node.clone();
        // What this node id left: a previous life ended without reporting its tabs offline.
        while !self.release(store, sink, &node).await {
            tokio::time::sleep(PRESENCE_STORE_RETRY).await;
        }
        let mut next_heartbeat = Instant::now();
        loop {
            if Instant::now() >= next_heartbeat {
                next_heartbeat = Instant::now() + self.inner.options.heartbeat_interval();
                self.heartbeat(store, sink).await;
            }
            let retry_at = self.reconcile(store, sink).await;
            let wake_at = [Some(next_heartbeat), retry_at, self.next_grace_end()].into_iter().flatten().min();
            let wake_at = wake_at.expect("the heartbeat is always due some time");
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep_until(wake_at.into()) => {}
            }
        }
    }

    /// When the next grace period ends.
    fn next_grace_end(&self) -> Option<Instant> {
        self.inner.state.lock().grace_ends.front().map(|(at, _)| *at)
    }

    /// Releases `node`'s sessions in chunks; `true` once none is left, `false` if the store
    /// failed (tried again later).
    async fn release(&self, store: &dyn Store, sink: &dyn PresenceSink, node: &str) -> bool {
        loop {
            match store.release_presence(node, now_ms(), PRESENCE_RELEASE_CHUNK).await {
                Ok(None) => return true,
                Ok(Some(events)) => {
                    if !events.is_empty() {
                        sink.send(events);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, node, "presence: could not release a node's sessions");
                    return false;
                }
            }
        }
    }

    async fn heartbeat(&self, store: &dyn Store, sink: &dyn PresenceSink) {
        let now = now_ms();
        let dead_before = now - self.inner.options.node_dead_after.as_millis() as i64;
        let beat = match store.presence_heartbeat(&self.inner.options.node, now, dead_before).await {
            Ok(beat) => beat,
            Err(error) => {
                tracing::warn!(%error, "presence: heartbeat not recorded");
                return;
            }
        };
        if !beat.was_registered {
            // Taken for dead meanwhile (or the first beat): what was recorded is gone, record
            // every session again.
            let mut state = self.inner.state.lock();
            let State { users, dirty, .. } = &mut *state;
            for (user, sessions) in users.iter_mut() {
                if sessions.iter().any(|s| s.recorded) {
                    dirty.insert(user.clone());
                }
                for s in sessions.iter_mut() {
                    s.recorded = false;
                    s.tabs.iter_mut().for_each(|t| t.recorded = false);
                }
            }
        }
        for dead in beat.dead_nodes {
            tracing::info!(node = %dead, "presence: node silent, reporting its sessions offline");
            self.release(store, sink, &dead).await;
        }
    }

    /// Reconciles the users that changed or whose grace period ended. Returns when to try
    /// again if a store call failed.
    async fn reconcile(&self, store: &dyn Store, sink: &dyn PresenceSink) -> Option<Instant> {
        let mut failed = false;
        loop {
            let batch = self.take_due(PRESENCE_USERS_AT_ONCE);
            if batch.is_empty() {
                break;
            }
            let results = futures::future::join_all(
                batch.into_iter().map(|(user, changes)| self.record_user(store, sink, user, changes)),
            )
            .await;
            if results.iter().any(|ok| !ok) {
                failed = true;
                break;
            }
        }
        failed.then(|| Instant::now() + PRESENCE_STORE_RETRY)
    }

    /// Up to `max` users due for reconciling, each with the changes to record (computed now;
    /// applied to the state only once recorded).
    fn take_due(&self, max: usize) -> Vec<(UserId, Vec<PresenceChange>)> {
        let now = Instant::now();
        let grace = self.inner.options.offline_grace;
        let client_events = self.inner.options.client_events;
        let mut state = self.inner.state.lock();
        let State { users, dirty, grace_ends } = &mut *state;
        // Users whose tab's grace period ended are due too.
        while grace_ends.front().is_some_and(|(at, _)| *at <= now) {
            let (_, user) = grace_ends.pop_front().expect("checked");
            dirty.insert(user);
        }
        let due: Vec<UserId> = dirty.iter().take(max).cloned().collect();
        let mut out = Vec::with_capacity(due.len());
        let at_ms = now_ms();
        for user in due {
            dirty.remove(&user);
            let Some(sessions) = users.get(&user) else { continue };
            let mut changes = Vec::new();
            for s in sessions {
                let wanted: Vec<bool> = s.tabs.iter().map(|t| t.wanted_online(now, grace)).collect();
                let session_wanted = wanted.iter().any(|w| *w);
                let online = (session_wanted != s.recorded).then_some(session_wanted);
                let clients: Vec<(ClientId, bool)> = if client_events {
                    s.tabs
                        .iter()
                        .zip(&wanted)
                        .filter(|(t, w)| t.recorded != **w)
                        .map(|(t, w)| (t.client.clone(), *w))
                        .collect()
                } else {
                    Vec::new()
                };
                if online.is_some() || !clients.is_empty() {
                    changes.push(PresenceChange {
                        user: user.clone(),
                        session: s.id.clone(),
                        online,
                        clients,
                        at_ms,
                    });
                }
            }
            out.push((user, changes));
        }
        out
    }

    /// Records `changes` of `user` in order; applies each to the state once recorded, then
    /// forgets what is offline and recorded so. `false` if the store failed (the user is due
    /// again).
    async fn record_user(
        &self,
        store: &dyn Store,
        sink: &dyn PresenceSink,
        user: UserId,
        changes: Vec<PresenceChange>,
    ) -> bool {
        for change in changes {
            match store.record_presence(&self.inner.options.node, &change).await {
                Ok(events) => {
                    if !events.is_empty() {
                        sink.send(events);
                    }
                    self.applied(&change);
                }
                Err(error) => {
                    tracing::warn!(%error, user = %user, "presence: change not recorded, trying again");
                    self.inner.state.lock().dirty.insert(user);
                    return false;
                }
            }
        }
        self.forget_offline(&user);
        true
    }

    fn applied(&self, change: &PresenceChange) {
        let mut state = self.inner.state.lock();
        let Some(sessions) = state.users.get_mut(&change.user) else { return };
        let Some(s) = sessions.iter_mut().find(|s| s.id == change.session) else { return };
        if let Some(online) = change.online {
            s.recorded = online;
        }
        for (client, online) in &change.clients {
            if let Some(t) = s.tabs.iter_mut().find(|t| &t.client == client) {
                t.recorded = *online;
            }
        }
    }

    /// Forgets the tabs of `user` that are gone past their grace and recorded so, and the
    /// sessions and the user left with nothing.
    fn forget_offline(&self, user: &UserId) {
        let now = Instant::now();
        let grace = self.inner.options.offline_grace;
        let client_events = self.inner.options.client_events;
        let mut state = self.inner.state.lock();
        let Some(sessions) = state.users.get_mut(user) else { return };
        for s in sessions.iter_mut() {
            if s.recorded && !s.tabs.iter().any(|t| t.wanted_online(now, grace)) {
                continue; // its offline is still to be recorded
            }
            s.tabs.retain(|t| t.wanted_online(now, grace) || (client_events && t.recorded));
        }
        sessions.retain(|s| !s.tabs.is_empty() || s.recorded);
        if sessions.is_empty() {
            state.users.remove(user);
        }
    }
}
