//! The [`Bus`] trait carries notifications and session closes to the hub of every node.
//!
//! One node needs no broker: [`LocalBus`] hands everything straight to its own [`Hub`]. A
//! multi-node bus (Redis, NATS) publishes to the broker and feeds what it receives from it into
//! its node's hub; it never assigns seqs (the store does), so nodes stay consistent.

use std::sync::Arc;

use async_trait::async_trait;

use crate::client::CloseReason;
use crate::health::Health;
use crate::hub::{Hub, ListenError, Presence, TopicTab};
use crate::ids::{ClientId, SessionId, Topic, UserId};
use crate::inbox::InboxEvent;
use crate::notification::Notification;
use crate::store::{Store, StoreError};
use crate::topic::TopicEvent;

/// What a multi-node bus tells its node's revocation cache ([`crate::Revocations`]): a session
/// close made on another node revoked tokens this node may have cached as valid. The
/// [`crate::Notifier`] applies it (see [`Bus::revocation_news`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationNews {
    /// Revocations of this user changed.
    User(UserId),
    /// Closes may have been missed (the bus was away, messages were dropped): forget them all,
    /// and cache again.
    All,
    /// Closes made elsewhere may not reach this node for now (the bus is away, a node is
    /// silent): forget them all and cache none until [`RevocationNews::All`].
    Unreliable,
}

/// What a bus has carried since the node started and whom it hears, for `GET /v1/cluster` and
/// the benchmark's bus traffic figures. All zero (no peers) on a single node.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusStats {
    /// The other nodes heard of lately, sorted.
    pub peers: Vec<String>,
    /// Shards (of users) this node subscribes to: those of the users it has clients of.
    pub subscribed_shards: usize,
    /// Shards of topics this node subscribes to: those of the topics its tabs listen to.
    pub subscribed_topic_shards: usize,
    pub envelopes_out: u64,
    pub bytes_out: u64,
    pub envelopes_in: u64,
    pub bytes_in: u64,
    /// This node's own envelopes received back and dropped.
    pub echoes: u64,
    /// Envelopes that did not decode.
    pub rejected: u64,
    pub publish_failures: u64,
    /// Passes that compared the store's last seqs with the clients' positions.
    pub repair_passes: u64,
    /// Notifications those passes fanned out because clients were behind the store.
    pub repaired: u64,
    /// Times the broker connection came back after it was lost.
    pub reconnects: u64,
}

/// A bus failure: the notification was stored (if durable) but may not have reached every node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Carries notifications and session closes to every node.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hands `notification` to the hubs of every node. Returns how many clients of this node it
    /// is for (other nodes' counts are not awaited).
    async fn publish(&self, notification: Arc<Notification>) -> Result<u64, BusError>;

    /// Hands a publish's `notifications`, then its users' new counts (`append` events), to the
    /// hubs of every node, in that order. Returns how many clients of this node the
    /// notifications are for. Fails only if the notifications could not be handed over (the
    /// counts are a badge's: one that misses them is right again at the next change). A
    /// multi-node bus sends them together; by default one after the other.
    async fn publish_all(
        &self,
        notifications: Vec<Arc<Notification>>,
        appended: Vec<Arc<InboxEvent>>,
    ) -> Result<u64, BusError> {
        let mut delivered = 0;
        for notification in notifications {
            delivered += self.publish(notification).await?;
        }
        for event in appended {
            if let Err(error) = self.publish_inbox(event).await {
                tracing::warn!(%error, "cannot send the inbox counts after a publish");
            }
        }
        Ok(delivered)
    }

    /// Hands an `inbox` event to the hubs of every node. Returns how many clients of this node
    /// it is for.
    async fn publish_inbox(&self, event: Arc<InboxEvent>) -> Result<u64, BusError>;

    /// Hands a `topic` event to the hubs of every node. Returns how many tabs of this node it is
    /// for.
    async fn publish_topic(&self, event: Arc<TopicEvent>) -> Result<u64, BusError>;

    /// Makes the tab `client` of `user` in `session` listen (`listen`) or stop listening to
    /// `topics`, on the node it is connected to (see [`Hub::listen`]). The inner result is the
    /// hub's answer: the topics the tab listens to now, or why it refused.
    async fn change_listens(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &ClientId,
        topics: &[Topic],
        listen: bool,
    ) -> Result<Result<Vec<Topic>, ListenError>, BusError>;

    /// Tells the other nodes that `user`'s listens kept in the store changed: each one with
    /// tabs of the user reads them again ([`reload_listens`]). Nothing to do on a single node
    /// (the notifier reloads this node's itself).
    async fn listens_changed(&self, user: &UserId) -> Result<(), BusError> {
        let _ = user;
        Ok(())
    }

    /// At most `max` tabs listening to `topic`, on every node (each with its node, `None` for
    /// this one), and how many there are in all (those of nodes that answered).
    async fn topic_tabs(&self, topic: &Topic, max: usize) -> Result<(Vec<TopicTab>, usize), BusError>;

    /// Closes the clients of `session` of `user` (all sessions when `None`) on every node.
    /// Returns how many connections of this node it closed.
    async fn close_sessions(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        reason: CloseReason,
    ) -> Result<u64, BusError>;

    /// Who of `user` is connected, on every node (each client with its node, `None` for this
    /// one). Sessions in the order they arrived.
    async fn presence(&self, user: &UserId) -> Result<Presence, BusError>;

    /// The user and session of `client`, if any node knows it (a `{"client": C}` target).
    async fn locate(&self, client: &ClientId) -> Result<Option<(UserId, SessionId)>, BusError>;
    /// What kind of bus this is, for `/healthz` and logs: `"local"`, `"nats"`, `"redis"`;
    /// `"custom"` unless an implementation names itself.
    fn kind(&self) -> &'static str {
        "custom"
    }

    /// Whether the bus reaches the other nodes, as far as it knows (its broker connection);
    /// answers at once, without I/O (see [`crate::health`]). By default always [`Health::Ok`].
    fn health(&self) -> Health {
        Health::Ok
    }

    /// News of revocations made on other nodes, for the [`crate::Notifier`] to apply to its
    /// cache; taken once (the notifier takes it when it is made). `None` on a single node.
    fn revocation_news(&self) -> Option<tokio::sync::mpsc::Receiver<RevocationNews>> {
        None
    }

    /// What it has carried and whom it hears.
    fn stats(&self) -> BusStats {
        BusStats::default()
    }

    /// The node is shutting down: tell the other nodes (so they do not take it for dead) and
    /// stop. Nothing to do on a single node.
    async fn shutdown(&self) {}
}

/// Reads `user`'s listens kept in the store and applies them to this node's tabs of the user
/// (see [`Hub::apply_stored_listens`]). `None` when no tab of the user is here (nothing read);
/// else the topics some tab here listens to now that none did.
pub async fn reload_listens(
    hub: &Hub,
    store: &dyn Store,
    user: &UserId,
) -> Result<Option<Vec<Topic>>, StoreError> {
    let Some(asked) = hub.ask_stored_listens(user) else { return Ok(None) };
    let stored = store.listens(user).await?;
    Ok(Some(hub.apply_stored_listens(user, asked, stored)))
}

/// The bus of a single node: straight into its hub.
#[derive(Debug, Clone)]
pub struct LocalBus {
    hub: Hub,
}

impl LocalBus {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, notification: Arc<Notification>) -> Result<u64, BusError> {
        Ok(self.hub.fanout(&notification))
    }

    async fn publish_inbox(&self, event: Arc<InboxEvent>) -> Result<u64, BusError> {
        Ok(self.hub.fanout_inbox(&event))
    }

    async fn publish_topic(&self, event: Arc<TopicEvent>) -> Result<u64, BusError> {
        Ok(self.hub.fanout_topic(&event))
    }

    async fn change_listens(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &ClientId,
        topics: &[Topic],
        listen: bool,
    ) -> Result<Result<Vec<Topic>, ListenError>, BusError> {
        Ok(if listen {
            self.hub.listen(user, session, client, topics)
        } else {
            self.hub.unlisten(user, session, client, topics)
        })
    }

    async fn close_sessions(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        reason: CloseReason,
    ) -> Result<u64, BusError> {
        Ok(self.hub.close_sessions(user, session, reason))
    }

    async fn topic_tabs(&self, topic: &Topic, max: usize) -> Result<(Vec<TopicTab>, usize), BusError> {
        Ok(self.hub.topic_tabs(topic, max))
    }

    async fn presence(&self, user: &UserId) -> Result<Presence, BusError> {
        Ok(self.hub.presence(user))
    }

    async fn locate(&self, client: &ClientId) -> Result<Option<(UserId, SessionId)>, BusError> {
        Ok(self.hub.locate(client))
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}
