//! [`RedisBroker`]: the [`Broker`] over Redis pub/sub, with the `redis` crate on tokio.
//!
//! **One connection, RESP3.** Publishes, `SUBSCRIBE`s and the messages share one multiplexed
//! connection speaking RESP3 (Redis 6 or later), where a subscribed connection may still run
//! commands and messages arrive as push frames. The push frames go to a callback that runs in
//! the connection's own task and hands each message to the bus without waiting (`Events`):
//! no queue at all stands between the socket and the bus's channel. (The RESP2 `PubSub`
//! connection would put an unbounded channel there, and need a second connection for
//! publishes.) A `SUBSCRIBE` returns once Redis's confirmation is read, which Redis sends after
//! the subscription is in force.
//!
//! **Reconnecting is ours.** The connection does not reconnect; the supervising task notices a
//! drop (the callback's disconnection frame, or a [`PING_INTERVAL`] heartbeat that fails), sends
//! [`BrokerEvent::Disconnected`], makes a new connection after [`reconnect_delay`], subscribes
//! the whole subject set again on it (confirmed) and only then sends
//! [`BrokerEvent::Reconnected`]. While there is no connection, `publish` and `subscribe` fail
//! with `Unavailable` at once.
//!
//! Redis pub/sub ignores the database number: channels are server-wide. Redis drops the
//! connection of a subscriber that reads too slowly (`client-output-buffer-limit pubsub`),
//! which reaches the bus as `Disconnected`, then `Reconnected`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisConnectionInfo, Value,
};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout};

use super::events::Events;
use super::{
    Broker, BrokerAddress, BrokerError, BrokerEvent, CONNECT_TIMEOUT, OPERATION_TIMEOUT, PING_INTERVAL,
    reconnect_delay,
};

/// Requests (publishes, `SUBSCRIBE`s, `PING`s) sent on the connection and not answered yet, at
/// most; also the capacity of the queue in front of the connection's task. A request beyond
/// them waits for a slot, for at most [`OPERATION_TIMEOUT`] in all, then fails `Unavailable`.
/// (The crate has no limit by default: its in-flight queue grows while the server is slow; and
/// its queue of 50 fills in an instant under a burst of publishes from many tasks.)
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Subjects per `SUBSCRIBE` when the set is subscribed again after a reconnect: one command
/// stays a few tens of KiB, and each is confirmed within [`OPERATION_TIMEOUT`].
pub const RESUBSCRIBE_BATCH_MAX: usize = 1000;

/// The Redis adapter. Dropping it ends its supervising task and closes the connection.
pub struct RedisBroker {
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

/// What the adapter and its supervising task share.
struct Shared {
    client: Client,
    /// The live connection and its generation; `None` while there is none.
    live: RwLock<Option<(u64, MultiplexedConnection)>>,
    inbound: Arc<Inbound>,
}

/// What the connection's push callback needs (apart from [`Shared`], so that the callback, which
/// the connection owns, does not keep the connection alive).
struct Inbound {
    events: Events,
    /// The subject set: subscribed again after each reconnect; a message on a subject that is
    /// not in it (one just unsubscribed) is not handed on.
    subjects: Mutex<HashSet<String>>,
    /// The newest generation whose connection was lost.
    lost: AtomicU64,
    /// Wakes the supervising task when a connection is lost.
    changed: Notify,
}

impl RedisBroker {
    /// Connects (one attempt within [`CONNECT_TIMEOUT`]) and starts the supervising task.
    pub(crate) async fn connect(
        address: &BrokerAddress,
        events: mpsc::Sender<BrokerEvent>,
    ) -> Result<Self, BrokerError> {
        let BrokerAddress::Redis { host, port, db } = address else {
            unreachable!("connect() gives this adapter redis:// addresses only")
        };
        let info = ConnectionAddr::Tcp(host.name().to_owned(), *port)
            .into_connection_info()
            .map_err(|error| BrokerError::Unavailable(format!("Redis at {host}:{port}: {error}")))?
            .set_redis_settings(
                RedisConnectionInfo::default().set_db(i64::from(*db)).set_protocol(ProtocolVersion::RESP3),
            );
        let client = Client::open(info)
            .map_err(|error| BrokerError::Unavailable(format!("Redis at {host}:{port}: {error}")))?;
        let inbound = Arc::new(Inbound {
            events: Events::new(events),
            subjects: Mutex::new(HashSet::new()),
            lost: AtomicU64::new(0),
            changed: Notify::new(),
        });
        let shared = Arc::new(Shared { client, live: RwLock::new(None), inbound });
        shared
            .establish(1)
            .await
            .map_err(|reason| BrokerError::Unavailable(format!("Redis at {host}:{port}: {reason}")))?;
        let supervisor = tokio::spawn(supervise(shared.clone(), 1));
        Ok(Self { shared, supervisor })
    }
}

impl Shared {
    /// Makes connection `generation`, makes it the live one, and subscribes the subject set on it
    /// (confirmed). It is live before the set is subscribed, so that a `subscribe` meanwhile
    /// either finds its subject in the set taken here or finds the connection and subscribes
    /// itself.
    async fn establish(&self, generation: u64) -> Result<(), String> {
        let inbound = self.inbound.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OPERATION_TIMEOUT))
            .set_pipeline_buffer_size(REQUESTS_IN_FLIGHT_MAX)
            .set_concurrency_limit(REQUESTS_IN_FLIGHT_MAX)
            .set_push_sender(move |push: PushInfo| -> Result<(), Infallible> {
                inbound.on_push(generation, push);
                Ok(())
            });
        let connection =
            match timeout(CONNECT_TIMEOUT, self.client.get_multiplexed_async_connection_with_config(&config))
                .await
            {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => return Err(error.to_string()),
                Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
            };
        *self.live.write() = Some((generation, connection.clone()));
        let subjects: Vec<String> = self.inbound.subjects.lock().iter().cloned().collect();
        for batch in subjects.chunks(RESUBSCRIBE_BATCH_MAX) {
            let mut connection = connection.clone();
            let confirmed = match timeout(OPERATION_TIMEOUT, connection.subscribe(batch)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(format!("SUBSCRIBE again: {error}")),
                Err(_) => Err(format!("SUBSCRIBE again: no confirmation within {OPERATION_TIMEOUT:?}")),
            };
            if let Err(reason) = confirmed {
                self.drop_connection(generation);
                return Err(reason);
            }
        }
        Ok(())
    }

    /// The live connection, unless it was lost.
    fn connection(&self) -> Option<MultiplexedConnection> {
        let live = self.live.read();
        let (generation, connection) = live.as_ref()?;
        (*generation > self.inbound.lost.load(Ordering::Acquire)).then(|| connection.clone())
    }

    /// Forgets connection `generation` (not a newer one). The connection closes once the
    /// requests that hold it are done.
    fn drop_connection(&self, generation: u64) {
        let mut live = self.live.write();
        if live.as_ref().is_some_and(|(live_generation, _)| *live_generation == generation) {
            *live = None;
        }
    }

    /// Waits until connection `generation` is lost: its disconnection frame, or a heartbeat
    /// `PING` that fails. Returns why.
    async fn lost(&self, generation: u64) -> String {
        let mut heartbeat = interval(PING_INTERVAL);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.tick().await; // the first tick is now
        loop {
            if self.inbound.lost.load(Ordering::Acquire) >= generation {
                return "the connection to the Redis server was closed".to_owned();
            }
            tokio::select! {
                _ = self.inbound.changed.notified() => {}
                _ = heartbeat.tick() => {
                    let Some(mut connection) = self.connection() else { continue };
                    let ping = ::redis::cmd("PING");
                    match timeout(OPERATION_TIMEOUT, ping.query_async::<Value>(&mut connection)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return format!("PING failed: {error}"),
                        Err(_) => return format!("no answer to PING within {OPERATION_TIMEOUT:?}"),
                    }
                }
            }
        }
    }
}

impl Inbound {
    /// The connection's push callback: runs in the connection's task, so it never waits.
    fn on_push(&self, generation: u64, push: PushInfo) {
        match push.kind {
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    tracing::warn!("Redis: a message push frame without channel and payload");
                    return;
                };
                let Ok(subject) = String::from_utf8(channel) else { return };
                if self.subjects.lock().contains(&subject) {
                    self.events.message(&subject, Bytes::from(payload));
                }
            }
            PushKind::Disconnection => {
                self.lost.fetch_max(generation, Ordering::AcqRel);
                self.changed.notify_one();
            }
            _ => {} // (un)subscribe confirmations: their callers get them
        }
    }
}

/// The supervising task: one `Disconnected` per outage, then attempts until a connection with
/// every subscription is made, then `Reconnected`. Never ends by itself.
async fn supervise(shared: Arc<Shared>, mut generation: u64) {
    loop {
        let reason = shared.lost(generation).await;
        tracing::warn!(%reason, "Redis: connection lost");
        shared.drop_connection(generation);
        shared.inbound.events.connection_changed(BrokerEvent::Disconnected { reason }).await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            sleep(reconnect_delay(attempt)).await;
            generation += 1;
            match shared.establish(generation).await {
                Ok(()) => break,
                Err(reason) => tracing::debug!(%reason, attempt, "Redis: reconnection attempt failed"),
            }
        }
        tracing::info!(attempts = attempt, "Redis: reconnected");
        shared.inbound.events.connection_changed(BrokerEvent::Reconnected).await;
    }
}

impl RedisBroker {
    fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        self.shared
            .connection()
            .ok_or_else(|| BrokerError::Unavailable("not connected to the Redis server".to_owned()))
    }
}

/// Runs a request on `connection` within [`OPERATION_TIMEOUT`].
async fn run<T: ::redis::FromRedisValue>(
    what: &str,
    request: impl Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, BrokerError> {
    match timeout(OPERATION_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(BrokerError::Unavailable(format!("Redis {what}: {error}"))),
        Err(_) => {
            Err(BrokerError::Unavailable(format!("Redis {what}: no answer within {OPERATION_TIMEOUT:?}")))
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// `PUBLISH`, returning once Redis answered (it has handed the message to the subscribers'
    /// connections by then).
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BrokerError> {
        let mut connection = self.connection()?;
        let mut publish = ::redis::cmd("PUBLISH");
        publish.arg(subject).arg(payload.as_ref());
        run("PUBLISH", publish.query_async::<i64>(&mut connection)).await.map(drop)
    }

    /// Adds the subject to the set, then `SUBSCRIBE`s on the live connection; while there is
    /// none it fails `Unavailable`, the subject staying in the set.
    async fn subscribe(&self, subject: &str) -> Result<(), BrokerError> {
        self.shared.inbound.subjects.lock().insert(subject.to_owned());
        let mut connection = self.connection()?;
        run("SUBSCRIBE", async move { connection.subscribe(subject).await }).await
    }

    /// Takes the subject out of the set, so nothing more of it is handed to the bus (what is in
    /// the bus's channel already stays there), then `UNSUBSCRIBE`s if connected.
    async fn unsubscribe(&self, subject: &str) -> Result<(), BrokerError> {
        if !self.shared.inbound.subjects.lock().remove(subject) {
            return Ok(());
        }
        let Ok(mut connection) = self.connection() else {
            return Ok(()); // a closed connection has no subscriptions
        };
        run("UNSUBSCRIBE", async move { connection.unsubscribe(subject).await }).await
    }

    fn is_connected(&self) -> bool {
        self.shared.connection().is_some()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.supervisor.abort();
        self.shared.live.write().take();
    }
}
