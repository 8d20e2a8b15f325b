//! The [`Bus`] trait carries notifications and session closes to the hub of every node.
//!
//! One node needs no broker: [`LocalBus`] hands everything straight to its own [`Hub`]. A
//! multi-node bus (Redis, NATS) publishes to the broker and feeds what it receives from it into
//! its node's hub; it never assigns seqs (the store does), so nodes stay consistent.

use std::sync::Arc;

use async_trait::async_trait;

use crate::client::CloseReason;
use crate::hub::Hub;
use crate::ids::{SessionId, UserId};
use crate::inbox::InboxEvent;
use crate::notification::Notification;

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

    /// Hands an `inbox` event to the hubs of every node. Returns how many clients of this node
    /// it is for.
    async fn publish_inbox(&self, event: Arc<InboxEvent>) -> Result<u64, BusError>;

    /// Closes the clients of `session` of `user` (all sessions when `None`) on every node.
    /// Returns how many connections of this node it closed.
    async fn close_sessions(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        reason: CloseReason,
    ) -> Result<u64, BusError>;
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

    async fn close_sessions(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        reason: CloseReason,
    ) -> Result<u64, BusError> {
        Ok(self.hub.close_sessions(user, session, reason))
    }
}
