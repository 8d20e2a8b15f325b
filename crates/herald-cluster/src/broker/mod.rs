//! The [`Broker`] trait: a message broker's plain pub/sub, as the cluster bus needs it, and its
//! adapters: [`nats`] (core NATS, no JetStream) and [`redis`] (Redis pub/sub).
//!
//! A broker here is at-most-once and keeps nothing: the durable log is the store's. What the
//! cluster bus needs from it is (1) publishes that reach every node subscribed to the subject
//! while the connection is up, in the order one publisher sent them on that subject (not across
//! subjects: NATS's adapter has a queue per subject), (2) subscriptions that are
//! in force once [`Broker::subscribe`] returns, and (3) honest news of the connection — every
//! moment when messages may have been missed is reported ([`BrokerEvent::Disconnected`],
//! [`BrokerEvent::Lagged`]), so that the bus repairs from the store.
//!
//! [`connect`] picks the adapter by the URL's scheme. Both adapters share [`address`] (the URL
//! check), `events` (the hand-over to the bus and what happens when its channel is full) and
//! the bounds below, so that a NATS node and a Redis node wait, retry and give up alike.
//!
//! **Connection lifetime.** The first connection is made within [`CONNECT_TIMEOUT`] or
//! [`connect`] fails with [`BrokerError::Unavailable`] (one attempt: a node that cannot reach
//! its broker at startup says so at once, and whoever starts it retries). After that the
//! adapter never gives up: when the connection drops it sends
//! [`BrokerEvent::Disconnected`] once, tries again after [`reconnect_delay`] (from
//! [`RECONNECT_DELAY_MIN`] doubling to [`RECONNECT_DELAY_MAX`]), subscribes every subject of
//! its set again, confirms that the broker has them, and only then sends
//! [`BrokerEvent::Reconnected`]. While it is down, `publish` and `subscribe` fail with
//! `Unavailable` at once rather than queue.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub mod address;
pub(crate) mod events;
pub mod nats;
pub mod redis;

pub use address::BrokerAddress;

/// Longest wait for a connection to the broker: TCP, the handshake (NATS's `INFO`/`CONNECT`,
/// Redis's `HELLO 3`). A broker that is down refuses at once; one that does not answer at all
/// fails after this. The first connection that fails is [`connect`]'s `Unavailable`; a
/// reconnection attempt that fails is followed by another after [`reconnect_delay`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait of one `publish`, `subscribe` or `unsubscribe` on a live connection (a full
/// queue to the connection, the broker's confirmation); then it fails with `Unavailable`. A
/// publish that timed out may still go out.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// Wait before the first reconnection attempt after a connection dropped (with jitter, see
/// [`reconnect_delay`]). Short: a broker restarted by its supervisor is back within a second.
pub const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);

/// Longest wait between two reconnection attempts: the delay doubles from
/// [`RECONNECT_DELAY_MIN`] up to this and stays there, forever. 2 s: an attempt against a broker
/// that is down costs one refused TCP connection, and each second of waiting after the broker
/// is back is a second in which this node's clients get nothing from other nodes.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

/// How often a quiet connection is checked. NATS: the client sends a `PING` each interval and
/// drops the connection when 2 are unanswered (async-nats's fixed limit), so a broker that
/// vanished without closing the socket is noticed within 3 intervals. Redis: a `PING` each
/// interval that fails or takes longer than [`OPERATION_TIMEOUT`] drops the connection. A
/// broker that stops or closes the connection is noticed at once, not by this.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// The wait before reconnection attempt `attempt` (1 for the first after a drop):
/// [`RECONNECT_DELAY_MIN`] doubled each attempt, at most [`RECONNECT_DELAY_MAX`], then a random
/// part of up to half of it taken off, so that the nodes of a cluster do not all come back to a
/// restarted broker in the same millisecond.
pub fn reconnect_delay(attempt: usize) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16) as u32;
    let delay = RECONNECT_DELAY_MIN.saturating_mul(1 << doublings).min(RECONNECT_DELAY_MAX);
    delay.mul_f64(1.0 - rand::random::<f64>() / 2.0)
}

/// Connects to the broker at `url` (`nats://host[:port]` or `redis://host[:port][/db]`, see
/// [`address`]) and returns its adapter. Everything the broker tells this node goes into
/// `events`, in order (see [`BrokerEvent`]). A message that finds `events` full is dropped and
/// one [`BrokerEvent::Lagged`] follows as soon as there is room; the connection's changes wait
/// for room.
///
/// Fails with [`BrokerError::InvalidUrl`] before any connection is tried, or with
/// [`BrokerError::Unavailable`] when the first connection is not made within
/// [`CONNECT_TIMEOUT`]. Must be called within a tokio runtime: the adapter spawns its tasks.
pub async fn connect(url: &str, events: mpsc::Sender<BrokerEvent>) -> Result<Arc<dyn Broker>, BrokerError> {
    match BrokerAddress::parse(url)? {
        address @ BrokerAddress::Nats { .. } => {
            Ok(Arc::new(nats::NatsBroker::connect(&address, events).await?))
        }
        address @ BrokerAddress::Redis { .. } => {
            Ok(Arc::new(redis::RedisBroker::connect(&address, events).await?))
        }
    }
}

/// A broker operation that failed. Publishes that fail are not retried by the adapter: the bus
/// marks itself degraded and repairs from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The URL is not one this adapter takes (scheme, host, port).
    #[error("invalid broker URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The broker cannot be reached now (not connected, timed out, connection lost).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// What a broker tells its bus, in order, through the bounded channel given at connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    /// A message on a subject this node subscribed to. Its own publishes come back over Redis
    /// (pub/sub has no way to leave them out) and not over NATS (`no_echo`): the bus must not
    /// count on either.
    Message { subject: String, payload: Bytes },
    /// The connection is up again after [`BrokerEvent::Disconnected`], with every subscription
    /// in force again: what was published meanwhile is lost to this node.
    Reconnected,
    /// The connection is down; publishes fail or are lost until [`BrokerEvent::Reconnected`].
    Disconnected { reason: String },
    /// Messages for this node were dropped (the broker's slow-consumer limit, or the event
    /// channel was full): the bus must repair everything it follows from the store.
    Lagged,
}

/// A message broker's pub/sub. Subjects are made by the bus of ASCII letters, digits, `.`, `-`
/// and `_` (valid as NATS subjects and Redis channels alike).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// `"nats"` or `"redis"`: for `/healthz` and logs.
    fn kind(&self) -> &'static str;

    /// Sends `payload` to every subscriber of `subject`. Fire-and-forget: returns once handed to
    /// the connection (bounded wait), not once delivered.
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BrokerError>;

    /// Subscribes to `subject`. Returns once the broker has the subscription: a message
    /// published on it after this returns reaches this node (while connected). Subscribing twice
    /// to one subject is one subscription. Subscriptions survive reconnects. On `Err` the
    /// adapter keeps the subject all the same: it is in force after the next
    /// [`BrokerEvent::Reconnected`], and calling again (once connected) confirms it.
    async fn subscribe(&self, subject: &str) -> Result<(), BrokerError>;

    /// Ends the subscription to `subject` (nothing if there is none).
    async fn unsubscribe(&self, subject: &str) -> Result<(), BrokerError>;

    /// Whether the connection is up now.
    fn is_connected(&self) -> bool;
}
