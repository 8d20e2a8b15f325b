//! The [`Hub`]: this node's map of users → sessions → clients, each client with its bounded
//! queue; fan-out, limits and eviction, and presence. The topic index (topic → the tabs
//! listening), listens and a topic's fan-out are the hub's too, in `hub/topics.rs`.
//!
//! The hub is sharded by user; a shard is a `parking_lot::Mutex` held only for short, non-async
//! work (never across an `.await`). Lock order, where two are taken: user shard, then client
//! index shard or topic shard (never both of the latter).
//!
//! A client entry outlives its connection by [`Limits::client_linger`]: a poller is still
//! "present" between two polls, and a tab that reloads can be found by `{"client": C}` publishes.
//! [`Hub::sweep`] forgets entries older than that. A poller's entry is more than present between
//! polls: it is **parked**, its queue still taking what is fanned out to it, and its next poll
//! takes the queue back (`Hub::resume_parked`) and answers from it, without reading the store,
//! and with the ephemeral notifications and `inbox` events that came in between (Eliom's client
//! process, which outlives each comet request).
//!
//! In a cluster the hub stays this node's own; a multi-node bus follows it through the
//! [`Interest`] hook (users gained and lost, client ids taken over, new clients) and acts on it
//! from outside with [`Hub::replace_client`], [`Hub::evict_client`] and
//! [`Hub::close_connected_before`].
//!
//! One job, one file: everything that takes the hub's shard locks is here, so that the lock
//! rules above can be checked in one place. The answer types are in `hub/views.rs`, the bus
//! hook in `hub/interest.rs`, the tests in `hub/tests.rs`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;

use crate::client::{ClientInfo, CloseReason, Transport};
use crate::data::check_data;
use crate::ids::{ClientId, ClientIdMinter, Seq, SessionId, Topic, UserId};
use crate::inbox::InboxEvent;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::notification::{Notification, now_ms};
use crate::presence::PresenceHook;
use crate::queue::{EventQueue, PushError, Queued};
use crate::topic::{Prepare, Prepared, StoredListen, TopicEvent};

mod interest;
mod topics;
mod views;

pub use interest::Interest;
pub use views::{Census, ClientPresence, Presence, SessionPresence, TopicTab};

use topics::{TabTopics, TopicIndex, effective_topics, union_of_topics};

/// Shards of the user map and of the client index. A power of two well above the core count
/// keeps contention negligible; each costs one mutex and one empty map.
const SHARDS: usize = 64;

/// State shared between a client's hub entry, its connection and the topic index. One per
/// connection: a reconnect gets a new one.
#[derive(Debug)]
pub(crate) struct ClientShared {
    /// Who the connection is for. Here, once per connection, rather than in each holder: the
    /// topic index then holds only this `Arc` per tab and topic (8 bytes, issue 13's memory per
    /// listening tab), and reads who a tab is from it for `except_user`, `except_client` and
    /// [`Prepare`]; the hub's entry and the subscription read their client id and user here too.
    pub(crate) info: ClientInfo,
    /// Why the connection must end: 1 + the reason's place in [`CloseReason::ALL`], 0 while it
    /// need not. A byte, and `expires_at_secs` four, rather than a `OnceLock` and a `u64` (8
    /// bytes each): with `info` this state is 152 bytes, a 176-byte malloc chunk with its `Arc`'s
    /// counts, where 8 more would make it 192 (every tab's cost; see `docs/BENCHMARKS.md`).
    close_reason: AtomicU8,
    /// Every durable seq up to here was handled by this client: for presence.
    pub(crate) last_seq: AtomicU64,
    /// Notifications waiting for the connection.
    pub(crate) queue: EventQueue,
    /// When the connection's credentials expire, Unix seconds (0: never; `u32::MAX`, in 2106,
    /// for anything later). [`Hub::tick`] closes the connection with `token_expired` then.
    expires_at_secs: AtomicU32,
}

impl ClientShared {
    fn new(info: ClientInfo, queue: EventQueue) -> Self {
        Self {
            info,
            close_reason: AtomicU8::new(0),
            last_seq: AtomicU64::new(0),
            queue,
            expires_at_secs: AtomicU32::new(0),
        }
    }

    /// Records why the connection must end (the first reason wins) and wakes it.
    pub(crate) fn close(&self, reason: CloseReason) {
        let code = reason.index() + 1;
        // Release: whoever reads the reason after this (the queue's close also orders it)
        // sees the one set first.
        let _ = self.close_reason.compare_exchange(0, code as u8, Ordering::Release, Ordering::Relaxed);
        self.queue.close();
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        let code = self.close_reason.load(Ordering::Acquire);
        code.checked_sub(1).map(|at| CloseReason::ALL[usize::from(at)])
    }

    /// Makes [`Hub::tick`] close the connection with `token_expired` at `unix_secs` (at least 1:
    /// 0 means never; beyond `u32::MAX`, in 2106, it is then).
    pub(crate) fn expire_at(&self, unix_secs: u64) {
        let secs = u32::try_from(unix_secs.max(1)).unwrap_or(u32::MAX);
        self.expires_at_secs.store(secs, Ordering::Relaxed);
    }

    /// When the connection's credentials expire, Unix seconds (0: never).
    fn expires_at_secs(&self) -> u64 {
        u64::from(self.expires_at_secs.load(Ordering::Relaxed))
    }
}

/// A tab of a session. Its client id and transport are its connection's (`shared.info`): the
/// id stays the same across reconnects, which replace `shared`.
struct ClientEntry {
    connected_at_ms: i64,
    last_active: Instant,
    shared: Arc<ClientShared>,
    /// Whether a connection is attached (it takes from `shared.queue`).
    connected: bool,
    /// Whether the connection follows its user's inbox counts: it also gets the `append` inbox
    /// events (see [`crate::inbox`]). Here rather than in `shared`: it fits in this entry's
    /// padding, and only the hub reads it.
    follows_inbox: bool,
    /// Which attachment is connected, so that a replaced connection's late detach is ignored.
    attachment: u64,
    /// A poller between two polls: `connected` stays true (its queue takes what is fanned out)
    /// until its next poll takes the queue back, or [`Hub::sweep`] ends it after
    /// [`Limits::client_linger`].
    parked: bool,
    /// The topics this tab listens to (at most [`Limits::topics_per_client_max`]), each also in
    /// the hub's topic index: one inline, more boxed (see [`TabTopics`]).
    topics: TabTopics,
}

impl ClientEntry {
    fn id(&self) -> &ClientId {
        &self.shared.info.client
    }

    fn transport(&self) -> Transport {
        self.shared.info.transport
    }

    /// Ends the connection with `reason`; returns whether one was connected (for the
    /// [`PresenceHook`]).
    fn end_connection(&mut self, reason: CloseReason) -> bool {
        let was_connected = std::mem::take(&mut self.connected);
        if was_connected {
            self.shared.close(reason);
        }
        was_connected
    }
}

#[derive(Default)]
struct SessionEntry {
    /// At most [`Limits::clients_per_session_max`]: a linear scan beats hashing at that size.
    clients: Vec<ClientEntry>,
}

impl SessionEntry {
    fn is_connected(&self) -> bool {
        self.clients.iter().any(|c| c.connected)
    }

    fn last_active(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.last_active).max()
    }
}

#[derive(Default)]
struct UserEntry {
    /// At most [`Limits::sessions_per_user_max`].
    sessions: Vec<(SessionId, SessionEntry)>,
    /// The user's listens kept in the store (user scope, and each session's), as last read:
    /// each tab of the user listens to those of its scope too.
    stored: Box<[StoredListen]>,
    /// Reads of `stored` asked for, and the last one applied: reads finish out of order, and
    /// one applies only if no read asked for after it was applied first.
    listens_asked: u64,
    listens_applied: u64,
}

/// A client's connection to the hub, as [`Hub::attach`] returns it.
pub(crate) struct Attachment {
    /// The connection's state, who the client is (`shared.info`) included.
    pub(crate) shared: Arc<ClientShared>,
    pub(crate) attachment: u64,
    /// The topics the tab listens to.
    pub(crate) topics: Box<[Topic]>,
}

#[cfg(test)]
impl Attachment {
    /// Who the client is (the tests' shorthand; the subscription reads `shared.info`).
    pub(crate) fn info(&self) -> &ClientInfo {
        &self.shared.info
    }
}

/// One shard of the index of clients: where each client lives.
type ClientIndex = HashMap<ClientId, (UserId, SessionId)>;

/// Why a listen was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// The tab (or the user or session, at their scope) would listen to `count` topics, over
    /// its bound `max` ([`Limits::topics_per_client_max`] and the others).
    #[error("at most {max} topics can be listened to there; this would make {count}")]
    TooManyTopics { count: usize, max: usize },
    /// The tab is not known here (never connected, or forgotten after
    /// [`Limits::client_linger`]).
    #[error("client {0} is not connected to this server")]
    ClientNotFound(ClientId),
}

/// This node's users → sessions → clients. Cheap to clone: clones share the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    users: Box<[Mutex<HashMap<UserId, UserEntry>>]>,
    /// client → (user, session), for `{"client": C}` targets.
    clients: Box<[Mutex<ClientIndex>]>,
    /// topic → the tabs listening to it. Lock order: user shard, then topic shard.
    topics: Box<[Mutex<TopicIndex>]>,
    hasher: RandomState,
    limits: Limits,
    minter: ClientIdMinter,
    next_attachment: AtomicU64,
    /// The `keepalive_ticks` of the last [`Hub::tick`] (0 before the first), to give each new
    /// connection a phase within the keep-alive period.
    keepalive_ticks: AtomicU32,
    /// Set once by a multi-node bus ([`Hub::set_interest`]).
    interest: OnceLock<Arc<dyn Interest>>,
    /// Set once by the app ([`Hub::set_prepare`]).
    prepare: OnceLock<Arc<dyn Prepare>>,
    /// The node's counters, bumped by the hub, its subscriptions and the notifier.
    metrics: Metrics,
    /// Set once by the presence tracker ([`Hub::set_presence_hook`]).
    presence: OnceLock<Arc<dyn PresenceHook>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("limits", &self.inner.limits).finish_non_exhaustive()
    }
}

impl Hub {
    pub fn new(limits: Limits, minter: ClientIdMinter) -> Self {
        let shards = |_| Mutex::new(HashMap::new());
        Self {
            inner: Arc::new(HubInner {
                users: (0..SHARDS).map(shards).collect(),
                clients: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                topics: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: RandomState::new(),
                limits,
                minter,
                next_attachment: AtomicU64::new(1),
                keepalive_ticks: AtomicU32::new(0),
                interest: OnceLock::new(),
                prepare: OnceLock::new(),
                metrics: Metrics::default(),
                presence: OnceLock::new(),
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The node's counters (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Who is online on this node now, counted shard by shard (each shard's lock held while its
    /// users are counted, never two at once): for `/metrics`, once per scrape, so that the hot
    /// paths keep no gauge. A user or session is online with one connected tab; a parked
    /// poller is connected.
    pub fn census(&self) -> Census {
        let mut census = Census::default();
        for shard in self.inner.users.iter() {
            let users = shard.lock();
            for entry in users.values() {
                let mut user_online = false;
                for (_, session) in &entry.sessions {
                    let mut session_online = false;
                    for client in session.clients.iter().filter(|c| c.connected) {
                        session_online = true;
                        census.tabs[crate::metrics::TRANSPORTS
                            .iter()
                            .position(|&t| t == client.transport())
                            .unwrap_or(0)] += 1;
                    }
                    census.sessions += u64::from(session_online);
                    user_online |= session_online;
                }
                census.users += u64::from(user_online);
            }
        }
        census
    }

    /// Makes this hub report the users it has clients for to `interest` (a multi-node bus),
    /// starting with those it has now. Once per hub: a second call is refused (`false`).
    pub fn set_interest(&self, interest: Arc<dyn Interest>) -> bool {
        if self.inner.interest.set(interest.clone()).is_err() {
            return false;
        }
        for shard in self.inner.users.iter() {
            for user in shard.lock().keys() {
                interest.gained(user);
            }
        }
        for shard in self.inner.topics.iter() {
            for topic in shard.lock().keys() {
                interest.topic_gained(topic);
            }
        }
        true
    }

    /// Resolves once what other nodes publish for `user` reaches this node (at once on a single
    /// node). See [`Interest::ready`].
    pub(crate) async fn interest_ready(&self, user: &UserId) {
        if let Some(interest) = self.inner.interest.get() {
            interest.ready(user).await;
        }
    }

    /// Makes every topic event pass through `prepare` for each user of this node's tabs that
    /// listen to it (see [`Prepare`]). Once per hub: a second call is refused (`false`).
    pub fn set_prepare(&self, prepare: Arc<dyn Prepare>) -> bool {
        self.inner.prepare.set(prepare).is_ok()
    }

    /// Resolves once what other nodes publish to each of `topics` reaches this node (at once on
    /// a single node). See [`Interest::topic_ready`].
    pub async fn topics_ready(&self, topics: &[Topic]) {
        if let Some(interest) = self.inner.interest.get() {
            for topic in topics {
                interest.topic_ready(topic).await;
            }
        }
    }

    /// Makes this hub tell `hook` each time a tab becomes connected or stops being so,
    /// starting with the tabs connected now. Once per hub: a second call is refused (`false`).
    pub fn set_presence_hook(&self, hook: Arc<dyn PresenceHook>) -> bool {
        if self.inner.presence.set(hook.clone()).is_err() {
            return false;
        }
        for shard in self.inner.users.iter() {
            for (user, entry) in shard.lock().iter() {
                for (session, s) in &entry.sessions {
                    for c in s.clients.iter().filter(|c| c.connected) {
                        hook.tab_changed(user, session, c.id(), true);
                    }
                }
            }
        }
        true
    }

    /// Tells the presence hook, if any, that a tab became connected or stopped being so.
    fn tab_changed(&self, user: &UserId, session: &SessionId, client: &ClientId, connected: bool) {
        if let Some(hook) = self.inner.presence.get() {
            hook.tab_changed(user, session, client, connected);
        }
    }

    fn gained(&self, user: &UserId) {
        if let Some(interest) = self.inner.interest.get() {
            interest.gained(user);
        }
    }

    fn lost(&self, user: &UserId) {
        if let Some(interest) = self.inner.interest.get() {
            interest.lost(user);
        }
    }

    /// The users this hub has an entry for (connected or lingering clients): what a multi-node
    /// bus checks against the store after it may have missed publishes.
    pub fn users(&self) -> Vec<UserId> {
        let mut users = Vec::new();
        for shard in self.inner.users.iter() {
            users.extend(shard.lock().keys().cloned());
        }
        users
    }

    /// The lowest seq up to which every connected client of `user` here has handled the log:
    /// `None` when none is connected. A bus that may have missed publishes compares it with the
    /// store's last seq.
    pub fn lowest_position(&self, user: &UserId) -> Option<Seq> {
        let users = self.users_shard(user).lock();
        users
            .get(user)?
            .sessions
            .iter()
            .flat_map(|(_, s)| s.clients.iter())
            .filter(|c| c.connected)
            .map(|c| c.shared.last_seq.load(Ordering::Relaxed))
            .min()
    }

    /// Ends this node's connection for `client` of `user` in `session` with `replaced`, when
    /// another node took the client over at `at_ms` (see [`Interest::claimed`]); a connection
    /// that attached here after that is the newer one and stays. Returns whether one ended.
    pub fn replace_client(&self, user: &UserId, session: &SessionId, client: &ClientId, at_ms: i64) -> bool {
        let mut users = self.users_shard(user).lock();
        let Some(entry) = users.get_mut(user) else { return false };
        let Some((_, s)) = entry.sessions.iter_mut().find(|(id, _)| id == session) else { return false };
        let Some(c) = s.clients.iter_mut().find(|c| c.id() == client) else { return false };
        if !c.connected || c.connected_at_ms > at_ms {
            return false;
        }
        c.parked = false;
        c.end_connection(CloseReason::Replaced);
        self.tab_changed(user, session, client, false);
        true
    }

    /// Ends the connections of `user`'s `session` (every session with `None`) that connected
    /// before `before_ms`, with `reason` (a sign-out another node made while this one could not
    /// hear of it). Those that connected later stay. Returns how many ended.
    pub fn close_connected_before(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        before_ms: i64,
        reason: CloseReason,
    ) -> u64 {
        let mut users = self.users_shard(user).lock();
        let Some(entry) = users.get_mut(user) else { return 0 };
        let mut closed = 0;
        for (id, s) in &mut entry.sessions {
            if session.is_some_and(|wanted| wanted != id) {
                continue;
            }
            for c in &mut s.clients {
                if c.connected && c.connected_at_ms < before_ms {
                    closed += 1;
                    c.parked = false;
                    c.end_connection(reason);
                    self.tab_changed(user, id, c.id(), false);
                }
            }
        }
        closed
    }

    /// Ends this node's connection for `client` of `user` in `session` with `evicted` and
    /// forgets the client: the session is over its client limit counting every node. Returns
    /// whether one ended.
    pub fn evict_client(&self, user: &UserId, session: &SessionId, client: &ClientId) -> bool {
        let mut users = self.users_shard(user).lock();
        let Some(entry) = users.get_mut(user) else { return false };
        let Some((_, s)) = entry.sessions.iter_mut().find(|(id, _)| id == session) else { return false };
        let Some(index) = s.clients.iter().position(|c| c.id() == client) else { return false };
        let mut evicted = s.clients.swap_remove(index);
        let was_connected = evicted.end_connection(CloseReason::Evicted);
        if was_connected {
            self.tab_changed(user, session, client, false);
        }
        self.forget_listens(&evicted, &effective_topics(&entry.stored, session, &evicted.topics));
        entry.sessions.retain(|(_, s)| !s.clients.is_empty());
        if entry.sessions.is_empty() {
            users.remove(user);
            self.lost(user);
        }
        drop(users);
        self.clients_shard(client).lock().remove(client);
        was_connected
    }

    fn shard_of<K: Hash>(&self, key: &K) -> usize {
        (self.inner.hasher.hash_one(key) as usize) % SHARDS
    }

    fn users_shard(&self, user: &UserId) -> &Mutex<HashMap<UserId, UserEntry>> {
        &self.inner.users[self.shard_of(user)]
    }

    fn clients_shard(&self, client: &ClientId) -> &Mutex<ClientIndex> {
        &self.inner.clients[self.shard_of(client)]
    }

    /// Attaches a connection for a client of `user` in `session`. `requested` is the id the
    /// client gives back: kept if it was minted for this user and session (a connection that
    /// holds it already is closed with `replaced`), else a new id is minted. Enforces the
    /// session and client limits by evicting the least recently active.
    ///
    /// The tab listens to `topics` from then on, besides those it listened to already (a
    /// reconnect keeps its listens while its entry lingers); refused, with nothing changed, if
    /// that would be more than [`Limits::topics_per_client_max`].
    pub(crate) fn attach(
        &self,
        user: &UserId,
        session: &SessionId,
        requested: Option<&str>,
        transport: Transport,
        topics: &[Topic],
    ) -> Result<Attachment, ListenError> {
        let limits = &self.inner.limits;
        let reclaimed = requested.and_then(|r| self.inner.minter.verify(r, user, session));
        let is_reclaimed = reclaimed.is_some();
        let client = reclaimed.unwrap_or_else(|| self.inner.minter.mint(user, session));
        let attachment = self.inner.next_attachment.fetch_add(1, Ordering::Relaxed);
        // Each connection starts somewhere in the first half of the keep-alive period, so that
        // clients that connected together (a server restart, a benchmark) do not all fall due
        // on the same tick: 15,000 keep-alives written at once stall deliveries for tens of ms.
        // A connection's first keep-alive thus comes after half to all of the period of
        // silence, the next ones after all of it.
        let phases = u64::from(self.inner.keepalive_ticks.load(Ordering::Relaxed) / 2).max(1);
        let info =
            ClientInfo { user: user.clone(), session: session.clone(), client: client.clone(), transport };
        let shared =
            Arc::new(ClientShared::new(info, EventQueue::with_quiet_ticks((attachment % phases) as u32)));
        // The topics as the index names them, so that the tab's entry and subscription share
        // the index's one copy of each name instead of keeping the request's.
        let topics = &self.interned(topics);
        let now = Instant::now();
        let mut forgotten: Vec<ClientId> = Vec::new();
        let mut is_new_client = false;
        let listening;
        let effective;
        {
            let mut users = self.users_shard(user).lock();
            // The tab's listens: those its entry kept (a reconnect) and the new ones, checked
            // before anything changes.
            let kept: TabTopics = users
                .get(user)
                .and_then(|e| e.sessions.iter().find(|(s, _)| s == session))
                .and_then(|(_, s)| s.clients.iter().find(|c| *c.id() == client))
                .map(|c| c.topics.clone())
                .unwrap_or_default();
            listening = union_of_topics(&kept, topics, limits.topics_per_client_max)?;
            let entry = users.entry(user.clone()).or_insert_with(|| {
                self.gained(user);
                UserEntry::default()
            });
            let session_index = match entry.sessions.iter().position(|(s, _)| s == session) {
                Some(i) => i,
                None => {
                    if entry.sessions.len() >= limits.sessions_per_user_max {
                        let victim = least_recently_active_session(&entry.sessions);
                        let (evicted_session, mut evicted) = entry.sessions.swap_remove(victim);
                        for c in &mut evicted.clients {
                            if c.end_connection(CloseReason::Evicted) {
                                self.tab_changed(user, &evicted_session, c.id(), false);
                            }
                            self.forget_listens(
                                c,
                                &effective_topics(&entry.stored, &evicted_session, &c.topics),
                            );
                            forgotten.push(c.id().clone());
                        }
                    }
                    entry.sessions.reserve_exact(1);
                    entry.sessions.push((session.clone(), SessionEntry::default()));
                    entry.sessions.len() - 1
                }
            };
            let clients = &mut entry.sessions[session_index].1.clients;
            // The queue the index holds for the tab's listens, if it has an entry (a reconnect).
            let mut previous: Option<Arc<ClientShared>> = None;
            let last_seq = match clients.iter_mut().find(|c| *c.id() == client) {
                Some(existing) => {
                    if existing.end_connection(CloseReason::Replaced) {
                        self.tab_changed(user, session, &client, false);
                    }
                    previous = Some(existing.shared.clone());
                    existing.shared.last_seq.load(Ordering::Relaxed)
                }
                None => {
                    if clients.len() >= limits.clients_per_session_max {
                        let victim = least_recently_active_client(clients);
                        let mut evicted = clients.swap_remove(victim);
                        if evicted.end_connection(CloseReason::Evicted) {
                            self.tab_changed(user, session, evicted.id(), false);
                        }
                        self.forget_listens(
                            &evicted,
                            &effective_topics(&entry.stored, session, &evicted.topics),
                        );
                        forgotten.push(evicted.id().clone());
                    }
                    is_new_client = true;
                    0
                }
            };
            shared.last_seq.store(last_seq, Ordering::Relaxed);
            let connected_at_ms = now_ms();
            if let Some(interest) = self.inner.interest.get() {
                if is_reclaimed {
                    interest.claimed(user, session, &client, connected_at_ms);
                } else {
                    interest.joined(user, session, &client);
                }
            }
            let fresh = ClientEntry {
                connected_at_ms,
                last_active: now,
                shared: shared.clone(),
                connected: true,
                follows_inbox: false,
                attachment,
                parked: false,
                topics: listening,
            };
            self.tab_changed(user, session, &client, true);
            effective = effective_topics(&entry.stored, session, &fresh.topics);
            match &previous {
                // A reconnect: the listens its entry kept move to the new queue; those it asks
                // for now are added.
                Some(previous) => {
                    let kept = effective_topics(&entry.stored, session, &kept);
                    let (moved, added): (Vec<Topic>, Vec<Topic>) =
                        effective.iter().cloned().partition(|t| kept.contains(t));
                    self.repoint_listens(previous, &shared, &moved);
                    self.add_listens(&shared, &added);
                }
                // A new tab: its id is in no entry of this session, and an id is minted for
                // one session, so the index has none of it.
                None => self.add_listens(&shared, &effective),
            }
            match clients.iter_mut().find(|c| *c.id() == client) {
                Some(existing) => *existing = fresh,
                None => {
                    // Most sessions have one or two tabs: grow one slot at a time (at most 50)
                    // rather than doubling, which would leave idle slots in most sessions.
                    clients.reserve_exact(1);
                    clients.push(fresh);
                }
            }
            // The linear scans of sessions and clients (and eviction) rely on these bounds.
            debug_assert!(clients.len() <= limits.clients_per_session_max.max(1));
            debug_assert!(entry.sessions.len() <= limits.sessions_per_user_max.max(1));
            for id in &forgotten {
                self.clients_shard(id).lock().remove(id);
            }
            if is_new_client {
                self.clients_shard(&client).lock().insert(client.clone(), (user.clone(), session.clone()));
            }
        }
        self.inner.metrics.connection_opened(transport);
        Ok(Attachment { shared, attachment, topics: effective.into_boxed_slice() })
    }

    /// Ends `attachment`'s hold on its client entry (its connection ended). The entry stays
    /// known for [`Limits::client_linger`]; with `park`, a poller's stays connected, parked, for
    /// its next poll (see the module docs). A connection that was replaced meanwhile changes
    /// nothing.
    pub(crate) fn detach(&self, info: &ClientInfo, attachment: u64, park: bool) {
        let mut went_away = false;
        self.with_attached(info, attachment, |c| {
            c.last_active = Instant::now();
            if park && c.transport() == Transport::Poll && c.connected {
                c.parked = true;
            } else {
                went_away = std::mem::take(&mut c.connected);
                // Its queue takes nothing more: the topic index, which reaches queues without
                // this entry's `connected`, must not fill it while the tab is away.
                c.shared.queue.close();
            }
            if went_away {
                // Under the shard lock still, so that the hook hears of a tab in order.
                self.tab_changed(&info.user, &info.session, &info.client, false);
            }
        });
    }

    /// Hands the queue of the parked poller `client` (of `user` in `session`) to its next poll,
    /// if its last poll ended at `after` (the client got everything up to it, and the queue has
    /// held all that was fanned out to it since). `None`: not parked here (never, swept, taken,
    /// replaced), or the client resumes from elsewhere; the poll then starts afresh. A parked
    /// client that was closed meanwhile (session closed, evicted, lagging) is handed back too,
    /// so that the poll reports why.
    pub(crate) fn resume_parked(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &str,
        after: Seq,
    ) -> Option<Attachment> {
        let mut users = self.users_shard(user).lock();
        let (_, entry) = users.get_mut(user)?.sessions.iter_mut().find(|(s, _)| s == session)?;
        let c = entry.clients.iter_mut().find(|c| c.id().as_str() == client)?;
        if !c.parked || c.transport() != Transport::Poll || c.shared.last_seq.load(Ordering::Relaxed) != after
        {
            return None;
        }
        let attachment = self.inner.next_attachment.fetch_add(1, Ordering::Relaxed);
        c.parked = false;
        c.attachment = attachment;
        c.last_active = Instant::now();
        Some(Attachment { shared: c.shared.clone(), attachment, topics: Box::default() })
    }

    /// Runs `change` on the entry of `info`'s client if `attachment` is still the one attached
    /// to it (a connection that was replaced meanwhile changes nothing).
    fn with_attached(&self, info: &ClientInfo, attachment: u64, change: impl FnOnce(&mut ClientEntry)) {
        let mut users = self.users_shard(&info.user).lock();
        let Some(entry) = users.get_mut(&info.user) else { return };
        let Some((_, session)) = entry.sessions.iter_mut().find(|(s, _)| *s == info.session) else {
            return;
        };
        if let Some(c) =
            session.clients.iter_mut().find(|c| *c.id() == info.client && c.attachment == attachment)
        {
            change(c);
        }
    }

    /// Makes the client of `attachment` follow its user's inbox counts (see
    /// [`crate::Subscription::follow_inbox`]). A connection that was replaced meanwhile changes
    /// nothing.
    pub(crate) fn follow_inbox(&self, info: &ClientInfo, attachment: u64) {
        self.with_attached(info, attachment, |c| c.follows_inbox = true);
    }

    /// Hands `notification` to the queues of its user's connected clients on this node and
    /// returns how many clients it is for. Durable notifications go to every client of the user,
    /// targeted or not, so that each can tell a gap (a seq it has not seen) from a seq that was
    /// not for it; the client's subscription filters. A client whose queue is full is closed
    /// with reason `lagging`.
    pub fn fanout(&self, notification: &Arc<Notification>) -> u64 {
        let mut users = self.users_shard(&notification.user).lock();
        let Some(entry) = users.get_mut(&notification.user) else { return 0 };
        let durable = notification.is_durable();
        let queue_len_max = self.inner.limits.client_queue_len_max;
        let mut delivered = 0;
        for (session_id, session) in &mut entry.sessions {
            for c in &mut session.clients {
                if !c.connected {
                    continue;
                }
                let included = notification.audience.includes(session_id, c.id());
                if !included && !durable {
                    continue;
                }
                match c.shared.queue.push(Queued::Notification(notification.clone()), queue_len_max) {
                    Ok(()) => delivered += u64::from(included),
                    Err(PushError::Full) => {
                        c.end_connection(CloseReason::Lagging);
                        self.tab_changed(&notification.user, session_id, c.id(), false);
                    }
                    Err(PushError::Closed) => {
                        c.connected = false;
                        self.tab_changed(&notification.user, session_id, c.id(), false);
                    }
                }
            }
        }
        delivered
    }

    /// Hands an `inbox` event to the queues of its user's connected clients on this node that it
    /// is for (all but its `except_client`; only those that follow the counts for an `append`
    /// event), and returns how many it was handed to. Like an ephemeral notification, it is not
    /// kept for clients that are not connected; a full queue closes its client with `lagging`.
    pub fn fanout_inbox(&self, event: &Arc<InboxEvent>) -> u64 {
        let mut users = self.users_shard(&event.user).lock();
        let Some(entry) = users.get_mut(&event.user) else { return 0 };
        let queue_len_max = self.inner.limits.client_queue_len_max;
        let mut delivered = 0;
        for (session_id, session) in &mut entry.sessions {
            for c in &mut session.clients {
                if !c.connected || !event.is_for(c.id(), c.follows_inbox) {
                    continue;
                }
                match c.shared.queue.push(Queued::Inbox(event.clone()), queue_len_max) {
                    Ok(()) => delivered += 1,
                    Err(PushError::Full) => {
                        c.end_connection(CloseReason::Lagging);
                        self.tab_changed(&event.user, session_id, c.id(), false);
                    }
                    Err(PushError::Closed) => {
                        c.connected = false;
                        self.tab_changed(&event.user, session_id, c.id(), false);
                    }
                }
            }
        }
        delivered
    }

    /// One tick of the hub's clock, to be called periodically (herald-server: every second, or
    /// four times per keep-alive interval if that is shorter): closes connections
    /// whose credentials expired (`now_secs`, Unix seconds) with `token_expired`, and makes a
    /// keep-alive due on connections that had no event for `keepalive_ticks` ticks.
    pub fn tick(&self, now_secs: u64, keepalive_ticks: u32) {
        self.inner.keepalive_ticks.store(keepalive_ticks, Ordering::Relaxed);
        for shard in self.inner.users.iter() {
            let mut users = shard.lock();
            for (user, entry) in users.iter_mut() {
                for (session_id, session) in &mut entry.sessions {
                    for c in &mut session.clients {
                        if !c.connected {
                            continue;
                        }
                        let expires_at = c.shared.expires_at_secs();
                        if expires_at != 0 && expires_at <= now_secs {
                            c.end_connection(CloseReason::TokenExpired);
                            self.tab_changed(user, session_id, c.id(), false);
                        } else {
                            c.shared.queue.tick(keepalive_ticks);
                        }
                    }
                }
            }
        }
    }

    /// The user and session of `client`, if this node knows it.
    pub fn locate(&self, client: &ClientId) -> Option<(UserId, SessionId)> {
        self.clients_shard(client).lock().get(client).cloned()
    }

    /// Closes the clients of `session` of `user` (or of all the user's sessions when `None`)
    /// with `reason`, and forgets those sessions. Returns how many connections it closed.
    pub fn close_sessions(&self, user: &UserId, session: Option<&SessionId>, reason: CloseReason) -> u64 {
        let mut users = self.users_shard(user).lock();
        let Some(entry) = users.get_mut(user) else { return 0 };
        let mut closed = 0;
        let mut forgotten = Vec::new();
        let stored = &entry.stored;
        entry.sessions.retain_mut(|(id, s)| {
            if session.is_some_and(|wanted| wanted != id) {
                return true;
            }
            for c in &mut s.clients {
                if c.end_connection(reason) {
                    closed += 1;
                    self.tab_changed(user, id, c.id(), false);
                }
                self.forget_listens(c, &effective_topics(stored, id, &c.topics));
                forgotten.push(c.id().clone());
            }
            false
        });
        if entry.sessions.is_empty() {
            users.remove(user);
            self.lost(user);
        }
        for id in &forgotten {
            self.clients_shard(id).lock().remove(id);
        }
        closed
    }

    /// Ends this node's connection for the one tab `client` of `user` in `session` with
    /// `reason` (an operator closed it from the admin page: `evicted`). Its entry stays until
    /// the sweep forgets it, so that a poller parked between two polls is handed its queue
    /// back by its next poll and told why. Returns whether a connection ended (`false`: the
    /// tab is not connected here).
    pub fn close_client(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &ClientId,
        reason: CloseReason,
    ) -> bool {
        let mut users = self.users_shard(user).lock();
        let Some(entry) = users.get_mut(user) else { return false };
        let Some((_, s)) = entry.sessions.iter_mut().find(|(id, _)| id == session) else { return false };
        let Some(c) = s.clients.iter_mut().find(|c| c.id() == client) else { return false };
        let was_connected = c.connected;
        c.end_connection(reason);
        was_connected
    }

    /// Up to `max` users of this node whose id starts with `prefix`, sorted (the admin page's
    /// search). Scans every user of the node: meant for an operator's occasional request, not
    /// for a hot path.
    pub fn users_with_prefix(&self, prefix: &str, max: usize) -> Vec<UserId> {
        let mut found = Vec::new();
        for shard in self.inner.users.iter() {
            found.extend(shard.lock().keys().filter(|u| u.as_str().starts_with(prefix)).cloned());
        }
        found.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        found.truncate(max);
        found
    }

    /// Closes every connection on this node with `reason` (shutdown).
    pub fn close_all(&self, reason: CloseReason) -> u64 {
        let mut closed = 0;
        for shard in self.inner.users.iter() {
            for (user, entry) in shard.lock().iter_mut() {
                for (session, s) in &mut entry.sessions {
                    for c in &mut s.clients {
                        if c.end_connection(reason) {
                            closed += 1;
                            self.tab_changed(user, session, c.id(), false);
                        }
                    }
                }
            }
        }
        closed
    }

    /// Who of `user` is here: connected clients, and pollers whose last poll ended less than
    /// [`Limits::client_linger`] ago. Sessions are listed in the order they arrived.
    pub fn presence(&self, user: &UserId) -> Presence {
        let linger = self.inner.limits.client_linger;
        let users = self.users_shard(user).lock();
        let sessions = users
            .get(user)
            .map(|entry| {
                entry
                    .sessions
                    .iter()
                    .filter_map(|(id, s)| {
                        let clients: Vec<_> = s
                            .clients
                            .iter()
                            .filter(|c| {
                                c.connected
                                    || (c.transport() == Transport::Poll && c.last_active.elapsed() < linger)
                            })
                            .map(|c| ClientPresence {
                                client: c.id().clone(),
                                transport: c.transport(),
                                connected_at_ms: c.connected_at_ms,
                                last_seq: c.shared.last_seq.load(Ordering::Relaxed),
                                node: None,
                                topics: effective_topics(&entry.stored, id, &c.topics),
                            })
                            .collect();
                        (!clients.is_empty()).then(|| SessionPresence { session: id.clone(), clients })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Presence { user: user.clone(), sessions }
    }

    /// Forgets clients whose connection ended more than [`Limits::client_linger`] ago, and the
    /// sessions and users left empty. Returns how many clients it forgot. Call it periodically.
    pub fn sweep(&self) -> usize {
        let linger = self.inner.limits.client_linger;
        let mut forgotten = Vec::new();
        let mut lost = Vec::new();
        let mut count = 0;
        for shard in self.inner.users.iter() {
            let mut users = shard.lock();
            users.retain(|user, entry| {
                let stored = &entry.stored;
                entry.sessions.retain_mut(|(id, s)| {
                    s.clients.retain_mut(|c| {
                        if c.parked && c.last_active.elapsed() >= linger {
                            // Its next poll did not come: end it (freeing what its queue holds).
                            c.parked = false;
                            if c.end_connection(CloseReason::Shutdown) {
                                self.tab_changed(user, id, c.id(), false);
                            }
                        }
                        let keep = c.connected || c.last_active.elapsed() < linger;
                        if !keep {
                            self.forget_listens(c, &effective_topics(stored, id, &c.topics));
                            forgotten.push(c.id().clone());
                        }
                        keep
                    });
                    !s.clients.is_empty()
                });
                let keep = !entry.sessions.is_empty();
                if !keep {
                    lost.push(user.clone());
                }
                keep
            });
            for user in lost.drain(..) {
                self.lost(&user);
            }
            drop(users);
            count += forgotten.len();
            for id in forgotten.drain(..) {
                self.clients_shard(&id).lock().remove(&id);
            }
        }
        count
    }
}

/// Index of the session to evict: one with no connected client if any, else the one whose most
/// recent activity is oldest.
fn least_recently_active_session(sessions: &[(SessionId, SessionEntry)]) -> usize {
    sessions
        .iter()
        .enumerate()
        .min_by_key(|(_, (_, s))| (s.is_connected(), s.last_active()))
        .map(|(i, _)| i)
        .expect("only called on a full, non-empty list")
}

/// Index of the client to evict: a disconnected one if any, else the least recently active.
fn least_recently_active_client(clients: &[ClientEntry]) -> usize {
    clients
        .iter()
        .enumerate()
        .min_by_key(|(_, c)| (c.connected, c.last_active))
        .map(|(i, _)| i)
        .expect("only called on a full, non-empty list")
}

#[cfg(test)]
mod tests;
