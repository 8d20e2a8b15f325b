//! [`ClusterBus`]: the [`Bus`] of a node in a cluster.
//!
//! # How a publish reaches every node
//! The notifier stores a durable notification (the store assigns its seq, cluster-wide), then
//! hands it to this bus, which fans it out to this node's hub at once and publishes an envelope
//! on the user's shard subject. Every node that has clients of a user of that shard receives it
//! and hands it to its hub; its own echo (Redis sends one; NATS, with `no_echo`, does not) is
//! dropped. The broker is at-most-once; the store is the truth, and every way the broker can
//! lose a message has a repair:
//!
//! - **Out of order or one missing in the middle** (two nodes publishing for one user, a message
//!   lost between others): a client's subscription that sees seq N+2 after N reads N+1 from the
//!   store before going on (`herald_core::Subscription`). Seqs are committed in order per user,
//!   so the store has N+1 once N+2 exists.
//! - **The last ones missing** (nothing after them shows the gap): a *repair pass* compares, for
//!   every user this node has clients of, the store's last seq with the lowest position of its
//!   connected clients, and fans out the store's latest notification where they differ (clients
//!   then fill the gap from the store, and get fresh inbox counts). A pass runs when this node's
//!   broker connection comes back ([`BrokerEvent::Reconnected`]), when messages were dropped
//!   ([`BrokerEvent::Lagged`]), when a node that could not publish asks for it (`Resync`), and
//!   when a silent node is heard again.
//! - **Store poll**: while this node is cut off from the broker, or while another node is
//!   silent (no heartbeat for [`PEER_SILENT_AFTER`]: it may be storing and acknowledging
//!   publishes it cannot send), a repair pass runs every [`STORE_POLL_INTERVAL`]. So a durable
//!   notification published on a node that cannot reach the broker reaches the tabs on the other
//!   nodes within about 5 s (`PEER_SILENT_AFTER`, noticed within a `HEARTBEAT_INTERVAL`, plus a
//!   `STORE_POLL_INTERVAL`; measured 4.8 s by the bus tests), and at the latest when that node
//!   reconnects and asks for a resync. A node cut off from the broker itself polls from the
//!   moment its adapter reports `Disconnected`.
//!
//! Ephemeral notifications and `inbox` events have no seq and no repair: while the broker is
//! away they reach this node's clients only (counts are re-sent by the next repair pass).
//!
//! # Membership
//! Every node publishes a heartbeat on `{cluster}.nodes` every [`HEARTBEAT_INTERVAL`] and keeps
//! the last time it heard each other node. A node silent for [`PEER_FORGET_AFTER`] is forgotten.
//! A node that shuts down says so (`Leaving`) and is forgotten at once, without a store poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::bus::{BusError, BusStats, RevocationNews, reload_listens};
use herald_core::{
    Bus, ClientId, CloseReason, Health, Hub, InboxEvent, ListenError, Notification, Presence, SessionId,
    Store, Topic, TopicEvent, TopicTab, UserId,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerEvent};
use crate::envelope::{
    self, Body, Envelope, ListenOutcome, VERSION, WireClient, WireSession, WireTab, nodes_subject,
    reply_subject, shard_of, topic_shard_of, topic_subject, user_subject,
};
use crate::interest::InterestTable;

mod limits;
mod queries;
mod repair;

use limits::send_claims;
use queries::merge_presence;
use repair::repair_loop;

/// Most tabs one node lists in an answer to a [`Body::TopicQuery`] (an envelope stays well
/// under the brokers' message bounds: about 100 bytes a tab).
const TOPIC_TABS_ANSWERED_MAX: usize = 1_000;

/// How often a node says it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A node not heard of for this long is *silent*: it may be storing publishes it cannot send,
/// so the others poll the store until it is heard again or forgotten.
pub const PEER_SILENT_AFTER: Duration = Duration::from_secs(3);

/// A silent node is forgotten after this long (it died, or was cut off for good): the store
/// poll for it stops. Long enough to cover a node cut off from the broker (not from the
/// database) that keeps storing publishes for a while: until then its publishes reach the other
/// nodes' tabs within seconds; after it, only when the node reconnects (it then asks for a
/// resync) or a later seq shows the gap. The poll costs one query per 1,000 users per second.
pub const PEER_FORGET_AFTER: Duration = Duration::from_secs(300);

/// How often a repair pass runs while the store must be polled (see the module docs).
pub const STORE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Events from the broker waiting for the bus's receiving task. At the bound the broker adapter
/// drops messages and reports [`BrokerEvent::Lagged`]: a repair pass follows.
pub const BROKER_EVENTS_CAPACITY: usize = 8192;

/// How long a presence query waits for the other live nodes' answers. Past it, the answer
/// holds the nodes that answered (a node that does not answer in time is left out).
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Presence queries of this node waiting for answers. Past it, a query fails `Unavailable`
/// (HTTP 503) at once.
pub const PRESENCE_QUERIES_MAX: usize = 256;

/// Users whose last seqs a repair pass reads in one store call.
pub const REPAIR_BATCH_USERS: usize = 1000;

/// News of revocations made on other nodes waiting for the notifier (see
/// [`Bus::revocation_news`]). At the bound, news is folded into one [`RevocationNews::All`].
pub const REVOCATION_NEWS_CAPACITY: usize = 1024;

/// Who this node is in its cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Prefixes every subject: clusters with different names can share one broker.
    pub cluster: String,
    /// This node's id, unique in the cluster (`--node-id`).
    pub node: String,
}

/// Counters of what crossed the broker, for `/metrics` and the benchmark's bus traffic figures.
#[derive(Debug, Default)]
pub struct BusTraffic {
    pub envelopes_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub envelopes_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// This node's own envelopes, received back on a shard it follows and dropped.
    pub echoes: AtomicU64,
    /// Envelopes that did not decode (another version, garbage on the subject).
    pub rejected: AtomicU64,
    pub publish_failures: AtomicU64,
    pub repair_passes: AtomicU64,
    /// Notifications a repair pass fanned out because clients here were behind the store.
    pub repaired: AtomicU64,
    /// Times the broker connection came back after it was lost.
    pub reconnects: AtomicU64,
}

/// The [`Bus`] of a node in a cluster: see the module docs.
#[derive(Clone)]
pub struct ClusterBus {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    interest: Arc<InterestTable>,
    cluster: String,
    node: Arc<str>,
    started_ms: i64,
    traffic: BusTraffic,
    peers: Mutex<HashMap<Arc<str>, Peer>>,
    /// Why the broker is away, while it is.
    outage: Mutex<Option<String>>,
    /// A publish failed: the other nodes must resync once the broker is back.
    resync_owed: AtomicBool,
    repair_now: Notify,
    /// The nodes' or the replies' subject is not subscribed yet: the reconciling task retries.
    cluster_subjects_pending: AtomicBool,
    /// A node not known yet was heard: answer with a heartbeat at once, so that a node that
    /// just started knows every other node within a round trip (not a heartbeat interval).
    heartbeat_now: Notify,
    stop: CancellationToken,
    /// Where this node takes presence answers.
    reply: String,
    /// How every envelope this node sends begins (see [`envelope::echo_prefix`]).
    echo_prefix: Vec<u8>,
    next_query: AtomicU64,
    queries: Mutex<HashMap<u64, PendingQuery>>,
    revocation_news: mpsc::Sender<RevocationNews>,
    revocation_news_rx: Mutex<Option<mpsc::Receiver<RevocationNews>>>,
    /// News that did not fit: an `All` is owed.
    revocation_news_lost: AtomicBool,
}

/// A query (presence, locate) waiting for the other nodes' answers.
struct PendingQuery {
    waiting: Vec<Arc<str>>,
    answers: Vec<(Arc<str>, Body)>,
    /// Done at the first answer that found something (a locate), not only when all answered.
    first_hit: bool,
    done: Option<oneshot::Sender<()>>,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    last_heard: Instant,
    started_ms: i64,
}

impl std::fmt::Debug for ClusterBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBus")
            .field("cluster", &self.inner.cluster)
            .field("node", &self.inner.node)
            .field("broker", &self.inner.broker.kind())
            .finish_non_exhaustive()
    }
}

impl ClusterBus {
    /// Connects to the broker at `url` (`nats://…`, `redis://…`) and starts the bus's tasks:
    /// receiving, subscriptions, heartbeats, repair. Makes `hub` report its users to it.
    pub async fn connect(
        url: &str,
        options: ClusterOptions,
        hub: Hub,
        store: Arc<dyn Store>,
    ) -> Result<Self, crate::BrokerError> {
        let (events_tx, events_rx) = mpsc::channel(BROKER_EVENTS_CAPACITY);
        let broker = crate::broker::connect(url, events_tx).await?;
        Ok(Self::start(broker, events_rx, options, hub, store).await)
    }

    /// Starts the bus on a connected `broker` whose events arrive on `events`.
    pub async fn start(
        broker: Arc<dyn Broker>,
        events: mpsc::Receiver<BrokerEvent>,
        options: ClusterOptions,
        hub: Hub,
        store: Arc<dyn Store>,
    ) -> Self {
        let (interest, claims) = InterestTable::new();
        let started_ms = herald_core::notification::now_ms();
        let (revocation_news, revocation_news_rx) = mpsc::channel(REVOCATION_NEWS_CAPACITY);
        let inner = Arc::new(Inner {
            hub: hub.clone(),
            store,
            broker,
            interest: interest.clone(),
            cluster: options.cluster.clone(),
            node: Arc::from(options.node.as_str()),
            started_ms,
            reply: reply_subject(&options.cluster, &options.node, started_ms),
            echo_prefix: envelope::echo_prefix(&options.node),
            next_query: AtomicU64::new(1),
            queries: Mutex::new(HashMap::new()),
            revocation_news,
            revocation_news_rx: Mutex::new(Some(revocation_news_rx)),
            revocation_news_lost: AtomicBool::new(false),
            traffic: BusTraffic::default(),
            peers: Mutex::new(HashMap::new()),
            outage: Mutex::new(None),
            resync_owed: AtomicBool::new(false),
            repair_now: Notify::new(),
            cluster_subjects_pending: AtomicBool::new(false),
            heartbeat_now: Notify::new(),
            stop: CancellationToken::new(),
        });
        if !inner.subscribe_cluster_subjects().await {
            // The reconciling task tries again until it works.
            inner.cluster_subjects_pending.store(true, Ordering::Relaxed);
        }
        hub.set_interest(interest);
        tokio::spawn(receive(inner.clone(), events));
        tokio::spawn(reconcile(inner.clone()));
        tokio::spawn(heartbeat(inner.clone()));
        tokio::spawn(repair_loop(inner.clone()));
        let bus = Self { inner };
        tokio::spawn(send_claims(bus.clone(), claims));
        bus
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn traffic(&self) -> &BusTraffic {
        &self.inner.traffic
    }

    /// The other nodes heard of within [`PEER_SILENT_AFTER`].
    pub fn live_peers(&self) -> Vec<String> {
        let peers = self.inner.peers.lock();
        let mut live: Vec<String> = peers
            .iter()
            .filter(|(_, p)| p.last_heard.elapsed() < PEER_SILENT_AFTER)
            .map(|(id, _)| id.to_string())
            .collect();
        live.sort();
        live
    }

    /// How many shard subscriptions this node holds.
    pub fn subscribed_shards(&self) -> usize {
        self.inner.interest.subscribed_shards()
    }

    /// How many topic shard subscriptions this node holds.
    pub fn subscribed_topic_shards(&self) -> usize {
        self.inner.interest.subscribed_topic_shards()
    }
}

impl Inner {
    /// Subscribes to the subjects every node follows: the nodes' and its own replies'. Whether
    /// both are in force.
    async fn subscribe_cluster_subjects(&self) -> bool {
        let mut all = true;
        for subject in [nodes_subject(&self.cluster), self.reply.clone()] {
            if let Err(error) = self.broker.subscribe(&subject).await {
                tracing::warn!(%error, %subject, "cannot subscribe to a cluster subject yet");
                all = false;
            }
        }
        all
    }

    /// Publishes `body` on `subject`; counts it. Whether it was handed to the broker.
    async fn publish_envelope(&self, subject: &str, body: Body) -> bool {
        let bytes = Envelope { v: VERSION, from: self.node.clone(), body }.encode();
        let len = bytes.len() as u64;
        match self.broker.publish(subject, bytes).await {
            Ok(()) => {
                self.traffic.envelopes_out.fetch_add(1, Ordering::Relaxed);
                self.traffic.bytes_out.fetch_add(len, Ordering::Relaxed);
                true
            }
            Err(error) => {
                if self.traffic.publish_failures.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                    tracing::warn!(%error, "cannot publish to the bus (logged every 1,000 failures)");
                }
                false
            }
        }
    }

    /// Publishes what other nodes must not miss. A failure is owed a resync, never returned: a
    /// durable publish was stored already, and the other nodes' repair delivers it.
    async fn send(&self, subject: &str, body: Body) -> bool {
        let sent = self.publish_envelope(subject, body).await;
        if !sent {
            self.resync_owed.store(true, Ordering::Relaxed);
        }
        sent
    }

    async fn send_about(&self, user: &UserId, body: Body) {
        self.send(&user_subject(&self.cluster, shard_of(user)), body).await;
    }

    /// Whether the store must be polled now: the broker is away, or a node is silent.
    fn must_poll(&self) -> bool {
        if self.outage.lock().is_some() {
            return true;
        }
        let mut peers = self.peers.lock();
        peers.retain(|_, p| p.last_heard.elapsed() < PEER_FORGET_AFTER);
        peers.values().any(|p| p.last_heard.elapsed() >= PEER_SILENT_AFTER)
    }

    fn revocations_changed(&self, news: RevocationNews) {
        let news =
            if self.revocation_news_lost.swap(false, Ordering::Relaxed) { RevocationNews::All } else { news };
        if self.revocation_news.try_send(news).is_err() {
            self.revocation_news_lost.store(true, Ordering::Relaxed);
        }
    }

    fn heard(&self, node: &Arc<str>, started_ms: i64) {
        let mut peers = self.peers.lock();
        let was_silent = peers.get(node).is_some_and(|p| p.last_heard.elapsed() >= PEER_SILENT_AFTER);
        if !peers.contains_key(node) {
            self.heartbeat_now.notify_one();
        }
        let restarted = peers.get(node).is_some_and(|p| p.started_ms != started_ms);
        peers.insert(node.clone(), Peer { last_heard: Instant::now(), started_ms });
        if was_silent || restarted {
            // What it stored, or revoked, while silent may not have reached us.
            self.repair_now.notify_one();
            self.revocations_changed(RevocationNews::All);
        }
    }

    fn deliver(self: &Arc<Self>, envelope: Envelope) {
        match envelope.body {
            body @ Body::Notification { .. } => {
                if let Some(notification) = envelope::notification_from(body) {
                    self.hub.fanout(&Arc::new(notification));
                }
            }
            body @ Body::Inbox { .. } => {
                if let Some(event) = envelope::inbox_event_from(body) {
                    self.hub.fanout_inbox(&Arc::new(event));
                }
            }
            Body::ListensChanged { user } => self.reload_listens_of(vec![user]),
            body @ Body::Topic { .. } => {
                if let Some(event) = envelope::topic_event_from(body) {
                    self.hub.fanout_topic(&Arc::new(event));
                }
            }
            Body::Close { user, session, reason } => {
                let reason = CloseReason::parse(&reason).unwrap_or(CloseReason::SessionClosed);
                if reason == CloseReason::SessionClosed {
                    self.revocations_changed(RevocationNews::User(user.clone()));
                }
                self.hub.close_sessions(&user, session.as_ref(), reason);
            }
            Body::Claim { user, session, client, at } => {
                self.hub.replace_client(&user, &session, &client, at);
            }
            Body::Evict { user, session, client } => {
                self.hub.evict_client(&user, &session, &client);
            }
            Body::Heartbeat { started } => self.heard(&envelope.from, started),
            Body::Leaving => {
                self.peers.lock().remove(&envelope.from);
            }
            Body::Batch(bodies) => {
                for body in bodies {
                    // Only what a batch is made of: no nesting, no queries (answered elsewhere).
                    if matches!(body, Body::Notification { .. } | Body::Inbox { .. }) {
                        self.deliver(Envelope { v: envelope.v, from: envelope.from.clone(), body });
                    } else {
                        self.traffic.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Body::Resync => {
                self.repair_now.notify_one();
                self.revocations_changed(RevocationNews::All);
                self.reload_listens_of(self.hub.users());
            }
            Body::PresenceQuery { .. }
            | Body::PresenceAnswer { .. }
            | Body::LocateQuery { .. }
            | Body::LocateAnswer { .. }
            | Body::ListenQuery { .. }
            | Body::ListenAnswer { .. }
            | Body::TopicQuery { .. }
            | Body::TopicAnswer { .. } => unreachable!("handled by `receive`"),
        }
    }

    /// Reads the listens of `users` kept in the store again, one after the other, in a task
    /// of its own (never on the receiving task).
    fn reload_listens_of(self: &Arc<Self>, users: Vec<UserId>) {
        let inner = self.clone();
        tokio::spawn(async move {
            for user in users {
                if let Err(error) = reload_listens(&inner.hub, inner.store.as_ref(), &user).await {
                    tracing::warn!(%error, %user, "cannot read a user's listens: its tabs follow at their next connection");
                }
            }
        });
    }

    fn answered(&self, from: Arc<str>, id: u64, answer: Body) {
        let mut queries = self.queries.lock();
        let Some(query) = queries.get_mut(&id) else { return }; // Too late.
        let hit = matches!(
            answer,
            Body::LocateAnswer { found: Some(_), .. } | Body::ListenAnswer { outcome: Some(_), .. }
        );
        query.waiting.retain(|node| *node != from);
        query.answers.push((from, answer));
        if (query.waiting.is_empty() || (hit && query.first_hit))
            && let Some(done) = query.done.take()
        {
            let _ = done.send(());
        }
    }

    /// Asks every live node `query(id, reply)` and collects their answers, at most
    /// [`PRESENCE_TIMEOUT`]. A node that died is not waited for once it is no longer live
    /// ([`PEER_SILENT_AFTER`]), nor past the timeout.
    async fn ask(
        &self,
        query: impl FnOnce(u64, String) -> Body,
        first_hit: bool,
    ) -> Result<Vec<(Arc<str>, Body)>, BusError> {
        let waiting: Vec<Arc<str>> = {
            let peers = self.peers.lock();
            peers
                .iter()
                .filter(|(_, p)| p.last_heard.elapsed() < PEER_SILENT_AFTER)
                .map(|(id, _)| id.clone())
                .collect()
        };
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let id = self.next_query.fetch_add(1, Ordering::Relaxed);
        let (done, answered) = oneshot::channel();
        {
            let mut queries = self.queries.lock();
            if queries.len() >= PRESENCE_QUERIES_MAX {
                return Err(BusError::Unavailable("too many queries to other nodes at once".into()));
            }
            queries.insert(id, PendingQuery { waiting, answers: Vec::new(), first_hit, done: Some(done) });
        }
        if self.publish_envelope(&nodes_subject(&self.cluster), query(id, self.reply.clone())).await {
            let _ = tokio::time::timeout(PRESENCE_TIMEOUT, answered).await;
        }
        Ok(self.queries.lock().remove(&id).map(|q| q.answers).unwrap_or_default())
    }

    /// This node's clients of `user`, as an answer.
    fn local_sessions(&self, user: &UserId) -> Vec<WireSession> {
        self.hub
            .presence(user)
            .sessions
            .into_iter()
            .map(|s| WireSession {
                session: s.session,
                clients: s
                    .clients
                    .into_iter()
                    .map(|c| WireClient {
                        client: c.client,
                        transport: c.transport.as_str().to_owned(),
                        connected_at: c.connected_at_ms,
                        last_seq: c.last_seq,
                        topics: c.topics,
                    })
                    .collect(),
            })
            .collect()
    }
}

#[async_trait]
impl Bus for ClusterBus {
    async fn publish(&self, notification: Arc<Notification>) -> Result<u64, BusError> {
        self.publish_all(vec![notification], Vec::new()).await
    }

    /// This node's hub at once, then one envelope per shard with that shard's notifications
    /// and counts, in order (per user: its notifications, then its counts).
    async fn publish_all(
        &self,
        notifications: Vec<Arc<Notification>>,
        appended: Vec<Arc<InboxEvent>>,
    ) -> Result<u64, BusError> {
        let hub = &self.inner.hub;
        let delivered = notifications.iter().map(|n| hub.fanout(n)).sum();
        for event in &appended {
            hub.fanout_inbox(event);
        }
        let mut by_shard: Vec<(u32, Vec<Body>)> = Vec::new();
        let bodies = notifications
            .iter()
            .map(|n| (shard_of(&n.user), Body::notification(n)))
            .chain(appended.iter().map(|e| (shard_of(&e.user), Body::inbox(e))));
        for (shard, body) in bodies {
            match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, batch)) => batch.push(body),
                None => by_shard.push((shard, vec![body])),
            }
        }
        for (shard, mut batch) in by_shard {
            let body = if batch.len() == 1 { batch.pop().expect("one") } else { Body::Batch(batch) };
            self.inner.send(&user_subject(&self.inner.cluster, shard), body).await;
        }
        Ok(delivered)
    }

    async fn publish_inbox(&self, event: Arc<InboxEvent>) -> Result<u64, BusError> {
        let delivered = self.inner.hub.fanout_inbox(&event);
        self.inner.send_about(&event.user, Body::inbox(&event)).await;
        Ok(delivered)
    }

    async fn close_sessions(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        reason: CloseReason,
    ) -> Result<u64, BusError> {
        let closed = self.inner.hub.close_sessions(user, session, reason);
        // Revoked in the store before this is called: a node that misses this message refuses
        // the session's tokens anyway; its open connections are what this closes.
        self.inner.send_about(user, Body::close(user, session, reason)).await;
        Ok(closed)
    }

    /// Asks every live node and waits for their answers, at most [`PRESENCE_TIMEOUT`]. A node
    /// that died is left out as soon as it is no longer live ([`PEER_SILENT_AFTER`]), and at
    /// once when its answer does not come (it is not waited for past the timeout).
    async fn presence(&self, user: &UserId) -> Result<Presence, BusError> {
        let local = self.inner.hub.presence(user);
        let query = |id, reply| Body::PresenceQuery { user: user.clone(), id, reply };
        let answers = self.inner.ask(query, false).await?;
        Ok(merge_presence(local, answers))
    }

    fn kind(&self) -> &'static str {
        self.inner.broker.kind()
    }

    /// Degraded while the broker is away (this node still stores and delivers its own
    /// publishes, and polls the store for the others').
    fn health(&self) -> Health {
        match &*self.inner.outage.lock() {
            Some(reason) => {
                Health::Degraded { reason: format!("{} unreachable: {reason}", self.inner.broker.kind()) }
            }
            None => Health::Ok,
        }
    }

    fn stats(&self) -> BusStats {
        let t = &self.inner.traffic;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BusStats {
            peers: self.live_peers(),
            subscribed_shards: self.subscribed_shards(),
            subscribed_topic_shards: self.subscribed_topic_shards(),
            envelopes_out: load(&t.envelopes_out),
            bytes_out: load(&t.bytes_out),
            envelopes_in: load(&t.envelopes_in),
            bytes_in: load(&t.bytes_in),
            echoes: load(&t.echoes),
            rejected: load(&t.rejected),
            publish_failures: load(&t.publish_failures),
            repair_passes: load(&t.repair_passes),
            repaired: load(&t.repaired),
            reconnects: load(&t.reconnects),
        }
    }

    fn revocation_news(&self) -> Option<mpsc::Receiver<RevocationNews>> {
        self.inner.revocation_news_rx.lock().take()
    }

    /// Tells the other nodes this one is leaving (no store poll for it) and stops the tasks.
    async fn shutdown(&self) {
        let nodes = nodes_subject(&self.inner.cluster);
        if self.inner.resync_owed.load(Ordering::Relaxed) {
            // Publishes it could not send: the others must check the store, as they would on
            // its return (a node that leaves is not polled for).
            self.inner.publish_envelope(&nodes, Body::Resync).await;
        }
        if self.inner.publish_envelope(&nodes, Body::Leaving).await {
            // A publish is only handed to the connection; a process that exits right after may
            // never send it. Subscribing to a subject it follows is a round trip to the broker
            // (bounded by the adapter) that the goodbye is queued before.
            let _ = self.inner.broker.subscribe(&nodes).await;
        }
        self.inner.stop.cancel();
    }

    /// One envelope on the user's shard: the nodes with tabs of the user read its listens again.
    async fn listens_changed(&self, user: &UserId) -> Result<(), BusError> {
        self.inner.send_about(user, Body::ListensChanged { user: user.clone() }).await;
        Ok(())
    }

    /// This node's hub at once, then one envelope on the topics' subject for the others. An
    /// event the broker did not take reached this node's tabs only: `Unavailable`.
    async fn publish_topic(&self, event: Arc<TopicEvent>) -> Result<u64, BusError> {
        let delivered = self.inner.hub.fanout_topic(&event);
        let subject = topic_subject(&self.inner.cluster, topic_shard_of(&event.topic));
        if !self.inner.publish_envelope(&subject, Body::topic(&event)).await {
            return Err(BusError::Unavailable("the topic event reached this node's tabs only".into()));
        }
        Ok(delivered)
    }

    /// This node's hub first, else the node the tab is connected to (the first that has it).
    async fn change_listens(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &ClientId,
        topics: &[Topic],
        listen: bool,
    ) -> Result<Result<Vec<Topic>, ListenError>, BusError> {
        let hub = &self.inner.hub;
        let here = if listen {
            hub.listen(user, session, client, topics)
        } else {
            hub.unlisten(user, session, client, topics)
        };
        if !matches!(here, Err(ListenError::ClientNotFound(_))) {
            if listen && here.is_ok() {
                hub.topics_ready(topics).await;
            }
            return Ok(here);
        }
        let query = |id, reply| Body::ListenQuery {
            user: user.clone(),
            session: session.clone(),
            client: client.clone(),
            topics: topics.to_vec(),
            listen,
            id,
            reply,
        };
        let answers = self.inner.ask(query, true).await?;
        Ok(answers
            .into_iter()
            .find_map(|(_, answer)| match answer {
                Body::ListenAnswer { outcome: Some(outcome), .. } => Some(outcome.into_hub()),
                _ => None,
            })
            .unwrap_or(here))
    }

    /// This node's tabs, then every other live node's (at most 1 s), each with its node.
    async fn topic_tabs(&self, topic: &Topic, max: usize) -> Result<(Vec<TopicTab>, usize), BusError> {
        let (mut tabs, mut total) = self.inner.hub.topic_tabs(topic, max);
        let query = |id, reply| Body::TopicQuery { topic: topic.clone(), max, id, reply };
        for (node, answer) in self.inner.ask(query, false).await? {
            let Body::TopicAnswer { tabs: theirs, total: their_total, .. } = answer else { continue };
            total += their_total;
            tabs.extend(theirs.into_iter().map(|t| TopicTab {
                user: t.user,
                session: t.session,
                client: t.client,
                node: Some(node.clone()),
            }));
        }
        tabs.truncate(max);
        Ok((tabs, total))
    }

    /// This node's hub first, else the first node that knows the client.
    async fn locate(&self, client: &ClientId) -> Result<Option<(UserId, SessionId)>, BusError> {
        if let Some(found) = self.inner.hub.locate(client) {
            return Ok(Some(found));
        }
        let query = |id, reply| Body::LocateQuery { client: client.clone(), id, reply };
        let answers = self.inner.ask(query, true).await?;
        Ok(answers.into_iter().find_map(|(_, answer)| match answer {
            Body::LocateAnswer { found, .. } => found,
            _ => None,
        }))
    }
}

/// Takes what the broker receives and hands it to the hub.
async fn receive(inner: Arc<Inner>, mut events: mpsc::Receiver<BrokerEvent>) {
    loop {
        let event = tokio::select! {
            () = inner.stop.cancelled() => return,
            event = events.recv() => match event { Some(event) => event, None => return },
        };
        match event {
            BrokerEvent::Message { payload, .. } => {
                inner.traffic.envelopes_in.fetch_add(1, Ordering::Relaxed);
                inner.traffic.bytes_in.fetch_add(payload.len() as u64, Ordering::Relaxed);
                // This node's own envelopes come back on the shards it follows: told apart by
                // their first bytes, without parsing them (a third of what a node receives in a
                // cluster of three).
                if payload.starts_with(&inner.echo_prefix) {
                    inner.traffic.echoes.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let envelope = match Envelope::decode(&payload) {
                    Ok(envelope) if envelope.v == VERSION => envelope,
                    Ok(_) | Err(_) => {
                        if inner.traffic.rejected.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!("an envelope on the bus does not decode (counted; logged once)");
                        }
                        continue;
                    }
                };
                if envelope.from == inner.node {
                    inner.traffic.echoes.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match envelope.body {
                    Body::PresenceQuery { user, id, reply } => {
                        if reply.starts_with(&format!("{}.reply.", inner.cluster)) {
                            let answer = Body::PresenceAnswer { id, sessions: inner.local_sessions(&user) };
                            // Not awaited here: a slow broker must not hold up what is received.
                            let inner = inner.clone();
                            tokio::spawn(async move { inner.publish_envelope(&reply, answer).await });
                        }
                    }
                    Body::LocateQuery { client, id, reply } => {
                        if reply.starts_with(&format!("{}.reply.", inner.cluster)) {
                            let answer = Body::LocateAnswer { id, found: inner.hub.locate(&client) };
                            let inner = inner.clone();
                            tokio::spawn(async move { inner.publish_envelope(&reply, answer).await });
                        }
                    }
                    Body::ListenQuery { user, session, client, topics, listen, id, reply } => {
                        if reply.starts_with(&format!("{}.reply.", inner.cluster)) {
                            let outcome = if listen {
                                inner.hub.listen(&user, &session, &client, &topics)
                            } else {
                                inner.hub.unlisten(&user, &session, &client, &topics)
                            };
                            let subscribe_first = listen && outcome.is_ok();
                            let answer = Body::ListenAnswer { id, outcome: ListenOutcome::from_hub(outcome) };
                            let inner = inner.clone();
                            tokio::spawn(async move {
                                // Answered once this node hears the topics, as a local listen.
                                if subscribe_first {
                                    inner.hub.topics_ready(&topics).await;
                                }
                                inner.publish_envelope(&reply, answer).await
                            });
                        }
                    }
                    Body::TopicQuery { topic, max, id, reply } => {
                        if reply.starts_with(&format!("{}.reply.", inner.cluster)) {
                            let (tabs, total) =
                                inner.hub.topic_tabs(&topic, max.min(TOPIC_TABS_ANSWERED_MAX));
                            let tabs = tabs
                                .into_iter()
                                .map(|t| WireTab { user: t.user, session: t.session, client: t.client })
                                .collect();
                            let answer = Body::TopicAnswer { id, tabs, total };
                            let inner = inner.clone();
                            tokio::spawn(async move { inner.publish_envelope(&reply, answer).await });
                        }
                    }
                    answer @ (Body::PresenceAnswer { id, .. }
                    | Body::LocateAnswer { id, .. }
                    | Body::ListenAnswer { id, .. }
                    | Body::TopicAnswer { id, .. }) => inner.answered(envelope.from, id, answer),
                    body => inner.deliver(Envelope { body, ..envelope }),
                }
            }
            BrokerEvent::Disconnected { reason } => {
                tracing::warn!(%reason, "lost the bus: polling the store until it is back");
                *inner.outage.lock() = Some(reason);
                inner.interest.connected.store(false, Ordering::Relaxed);
                inner.revocations_changed(RevocationNews::Unreliable);
                inner.interest.wake_waiters();
                inner.repair_now.notify_one();
            }
            BrokerEvent::Reconnected => {
                tracing::info!("the bus is back");
                inner.traffic.reconnects.fetch_add(1, Ordering::Relaxed);
                *inner.outage.lock() = None;
                inner.interest.connected.store(true, Ordering::Relaxed);
                inner.revocations_changed(RevocationNews::All);
                // Changes of listens may have been missed meanwhile, as revocations.
                inner.reload_listens_of(inner.hub.users());
                inner.interest.changed.notify_one();
                if inner.resync_owed.swap(false, Ordering::Relaxed)
                    && !inner.send(&nodes_subject(&inner.cluster), Body::Resync).await
                {
                    inner.resync_owed.store(true, Ordering::Relaxed);
                }
                inner.repair_now.notify_one();
            }
            BrokerEvent::Lagged => {
                tracing::warn!("messages from the bus were dropped: repairing from the store");
                inner.repair_now.notify_one();
                inner.revocations_changed(RevocationNews::All);
                inner.reload_listens_of(inner.hub.users());
            }
        }
    }
}

/// Keeps the broker's shard subscriptions in step with the hub's users.
async fn reconcile(inner: Arc<Inner>) {
    loop {
        let (join, leave) = inner.interest.diff();
        let mut failed = false;
        if inner.cluster_subjects_pending.load(Ordering::Relaxed) {
            if inner.subscribe_cluster_subjects().await {
                inner.cluster_subjects_pending.store(false, Ordering::Relaxed);
            } else {
                failed = true;
            }
        }
        for shard in join {
            match inner.broker.subscribe(&user_subject(&inner.cluster, shard)).await {
                Ok(()) => inner.interest.set_subscribed(shard, true),
                Err(_) => failed = true,
            }
        }
        for shard in leave {
            match inner.broker.unsubscribe(&user_subject(&inner.cluster, shard)).await {
                Ok(()) => inner.interest.set_subscribed(shard, false),
                Err(_) => failed = true,
            }
        }
        let (join, leave) = inner.interest.topic_diff();
        for shard in join {
            match inner.broker.subscribe(&topic_subject(&inner.cluster, shard)).await {
                Ok(()) => inner.interest.set_topic_subscribed(shard, true),
                Err(_) => failed = true,
            }
        }
        for shard in leave {
            match inner.broker.unsubscribe(&topic_subject(&inner.cluster, shard)).await {
                Ok(()) => inner.interest.set_topic_subscribed(shard, false),
                Err(_) => failed = true,
            }
        }
        let retry = async {
            if failed {
                // The broker is away: try again when it is back, or after a while.
                tokio::time::sleep(STORE_POLL_INTERVAL).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = inner.interest.changed.notified() => {}
            () = retry => {}
        }
    }
}

async fn heartbeat(inner: Arc<Inner>) {
    let subject = nodes_subject(&inner.cluster);
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = inner.stop.cancelled() => return,
            _ = ticks.tick() => {}
            () = inner.heartbeat_now.notified() => {}
        }
        // A heartbeat that fails is not a publish that was lost: no resync owed for it.
        inner.publish_envelope(&subject, Body::Heartbeat { started: inner.started_ms }).await;
    }
}
