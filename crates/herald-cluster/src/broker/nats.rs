//! [`NatsBroker`]: the [`Broker`] over core NATS (no JetStream), with async-nats.
//!
//! **What async-nats does and what we add.** The client reconnects by itself (we give it
//! [`reconnect_delay`] and no attempt limit) and sends its `SUB`s again on the new connection,
//! but it says `Connected` *before* those `SUB`s are written, and its `flush` only empties the
//! socket buffer: neither proves the server has a subscription. So every confirmation here is a
//! round trip (`round_trip`): a request on a subject nobody serves, which the
//! server answers with "no responders" after it has processed everything this connection sent
//! before. `subscribe` returns after one; after a reconnect the supervising task sends
//! [`BrokerEvent::Reconnected`] after one, so the re-sent `SUB`s are in force by then.
//!
//! **Publishes while disconnected.** async-nats queues commands while it reconnects (its
//! command channel, [`COMMAND_QUEUE_CAPACITY`] here) and a publish into a full queue waits.
//! We refuse instead: while the client's state is not `Connected`, `publish` and `subscribe`
//! fail with `Unavailable` at once. What was queued in the instant the connection dropped (at
//! most [`COMMAND_QUEUE_CAPACITY`] commands) goes out after the reconnect, before
//! `Reconnected`: late duplicates of what the bus repairs anyway.
//!
//! **Own publishes** are not received (`no_echo`): see [`BrokerEvent::Message`].
//!
//! **Messages.** Each subject has an async-nats subscription (its channel holds
//! [`SUBSCRIPTION_QUEUE_CAPACITY`] messages) and a task that moves its messages into the bus's
//! channel without ever waiting (`Events`). When a subscription's channel is full, async-nats
//! drops the message and reports a slow consumer; so does the server, when this connection
//! reads too slowly: both become [`BrokerEvent::Lagged`]. One subject's messages reach the bus
//! in the order the server sent them; two subjects' messages may cross (their tasks run
//! independently), which the trait allows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use async_nats::{ConnectOptions, Event, ServerError};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use super::events::Events;
use super::{
    Broker, BrokerAddress, BrokerError, BrokerEvent, CONNECT_TIMEOUT, OPERATION_TIMEOUT, PING_INTERVAL,
    reconnect_delay,
};

/// Commands (publishes, subscriptions, round trips) waiting for async-nats's connection task.
/// A publish that finds it full waits for at most [`OPERATION_TIMEOUT`], then fails
/// `Unavailable`. It only fills when the connection cannot write as fast as the bus publishes
/// (async-nats's default is 2,048; 1,024 small envelopes are well under a second of writing).
pub const COMMAND_QUEUE_CAPACITY: usize = 1024;

/// Messages of one subject waiting for the task that hands them to the bus. That task never
/// waits, so this fills only when it gets no CPU; then async-nats drops the message and reports
/// a slow consumer, which becomes [`BrokerEvent::Lagged`]. (async-nats's default, 65,536 per
/// subscription, would let a node with many subjects hold a great deal of memory.)
pub const SUBSCRIPTION_QUEUE_CAPACITY: usize = 1024;

/// How often the supervising task looks at the client's state without being woken by one of
/// its events: a safety net, should an event of async-nats's own bounded queue be dropped.
pub const STATE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The NATS adapter. Dropping it ends its tasks, and the connection with the last of them.
pub struct NatsBroker {
    client: async_nats::Client,
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

/// What the adapter, its supervising task and async-nats's event callback share.
struct Shared {
    events: Events,
    /// The subject set: each subject's task, which holds its async-nats subscription (dropping
    /// that sends the `UNSUB`).
    subscriptions: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Connections lost so far (async-nats's `Disconnected` events): tells the supervising task
    /// that a drop happened even if the client is connected again by the time it looks.
    outages: AtomicU64,
    /// Wakes the supervising task on every change of the connection.
    changed: Notify,
    /// The subject of the round trips: unique to this adapter, so nobody serves it.
    ping_subject: String,
}

impl NatsBroker {
    /// Connects (one attempt within [`CONNECT_TIMEOUT`]) and starts the supervising task.
    pub(crate) async fn connect(
        address: &BrokerAddress,
        events: mpsc::Sender<BrokerEvent>,
    ) -> Result<Self, BrokerError> {
        let BrokerAddress::Nats { host, port } = address else {
            unreachable!("connect() gives this adapter nats:// addresses only")
        };
        let shared = Arc::new(Shared {
            events: Events::new(events),
            subscriptions: Mutex::new(HashMap::new()),
            outages: AtomicU64::new(0),
            changed: Notify::new(),
            ping_subject: format!("_HERALD.ping.{:032x}", rand::random::<u128>()),
        });
        let on_event = shared.clone();
        let options = ConnectOptions::new()
            .name("herald")
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(PING_INTERVAL)
            .request_timeout(Some(OPERATION_TIMEOUT))
            .client_capacity(COMMAND_QUEUE_CAPACITY)
            .subscription_capacity(SUBSCRIPTION_QUEUE_CAPACITY)
            .max_reconnects(None)
            // The server does not send this connection's own publishes back: the bus drops its
            // own envelopes anyway, and in a cluster of three they are a third of what every
            // node would receive (and of what the server sends).
            .no_echo()
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let shared = on_event.clone();
                async move { shared.on_client_event(event) }
            });
        let url = format!("nats://{host}:{port}");
        let client = match timeout(CONNECT_TIMEOUT, options.connect(url.as_str())).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(BrokerError::Unavailable(format!("NATS at {url}: {error}"))),
            Err(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "NATS at {url}: no connection within {CONNECT_TIMEOUT:?}"
                )));
            }
        };
        let supervisor = tokio::spawn(supervise(client.clone(), shared.clone()));
        Ok(Self { client, shared, supervisor })
    }
}

impl Shared {
    /// async-nats's event callback: only records and wakes (its event queue is bounded and
    /// drops what does not fit, so the callback must not wait).
    fn on_client_event(&self, event: Event) {
        match event {
            Event::Disconnected => {
                self.outages.fetch_add(1, Ordering::AcqRel);
                self.changed.notify_one();
            }
            Event::Connected => self.changed.notify_one(),
            Event::SlowConsumer(sid) => {
                tracing::warn!(sid, "NATS: messages dropped, a subscription's queue was full");
                self.events.lagged();
            }
            Event::ServerError(ServerError::SlowConsumer(sid)) => {
                tracing::warn!(sid, "NATS: the server dropped messages for this node (slow consumer)");
                self.events.lagged();
            }
            Event::ServerError(error) => tracing::warn!(%error, "NATS: the server reported an error"),
            Event::ClientError(error) => tracing::debug!(%error, "NATS: reconnection attempt failed"),
            Event::LameDuckMode => tracing::info!("NATS: the server is shutting down (lame duck mode)"),
            Event::Draining | Event::Closed => {}
        }
    }
}

/// The supervising task: turns async-nats's view of the connection into exactly one
/// `Disconnected` per outage and one `Reconnected` once the subscriptions are in force again.
async fn supervise(client: async_nats::Client, shared: Arc<Shared>) {
    let mut seen_outages = 0;
    let mut down = false;
    loop {
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = sleep(STATE_CHECK_INTERVAL) => {}
        }
        let outages = shared.outages.load(Ordering::Acquire);
        let connected = client.connection_state() == State::Connected;
        if !down && (outages != seen_outages || !connected) {
            down = true;
            let reason = "the connection to the NATS server was lost".to_owned();
            shared.events.connection_changed(BrokerEvent::Disconnected { reason }).await;
        }
        seen_outages = outages;
        if down && connected {
            // The re-sent `SUB`s were queued before this round trip: once it is answered, the
            // server has them. Another drop meanwhile: the next turn starts over.
            match round_trip(&client, &shared.ping_subject).await {
                Ok(()) if shared.outages.load(Ordering::Acquire) == outages => {
                    down = false;
                    shared.events.connection_changed(BrokerEvent::Reconnected).await;
                }
                Ok(()) => {}
                Err(error) => tracing::debug!(%error, "NATS: the round trip after a reconnect failed"),
            }
        }
    }
}

/// One round trip to the server: a request nobody serves, answered "no responders" once the
/// server has processed everything this connection sent before it (a server that answers at
/// all processes a connection's commands in order).
async fn round_trip(client: &async_nats::Client, ping_subject: &str) -> Result<(), BrokerError> {
    match timeout(OPERATION_TIMEOUT, client.request(ping_subject.to_owned(), Bytes::new())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(error)) => Err(BrokerError::Unavailable(format!("NATS round trip: {error}"))),
        Err(_) => Err(BrokerError::Unavailable(format!("NATS: no answer within {OPERATION_TIMEOUT:?}"))),
    }
}

/// One subject's task: hands its messages to the bus until the subscription is dropped.
async fn forward(subject: String, mut subscriber: async_nats::Subscriber, events: Events) {
    while let Some(message) = subscriber.next().await {
        events.message(&subject, message.payload);
    }
}

impl NatsBroker {
    fn not_connected() -> BrokerError {
        BrokerError::Unavailable("not connected to the NATS server".to_owned())
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BrokerError> {
        if !self.is_connected() {
            return Err(Self::not_connected());
        }
        match timeout(OPERATION_TIMEOUT, self.client.publish(subject.to_owned(), payload)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(BrokerError::Unavailable(format!("NATS publish on {subject}: {error}"))),
            Err(_) => {
                Err(BrokerError::Unavailable(format!("NATS publish: queue full for {OPERATION_TIMEOUT:?}")))
            }
        }
    }

    /// Adds the subject to the set (async-nats queues the `SUB` even while disconnected), then
    /// confirms it with a round trip; while disconnected it fails `Unavailable` without one, the
    /// subject staying in the set.
    async fn subscribe(&self, subject: &str) -> Result<(), BrokerError> {
        let known = self.shared.subscriptions.lock().contains_key(subject);
        if !known {
            let subscriber = match timeout(OPERATION_TIMEOUT, self.client.subscribe(subject.to_owned())).await
            {
                Ok(Ok(subscriber)) => subscriber,
                Ok(Err(error)) => {
                    return Err(BrokerError::Unavailable(format!("NATS subscribe to {subject}: {error}")));
                }
                Err(_) => return Err(BrokerError::Unavailable("NATS subscribe: queue full".to_owned())),
            };
            let mut subscriptions = self.shared.subscriptions.lock();
            // Another call for the same subject may have won the race: its subscription stays,
            // this one is dropped (its `UNSUB` follows its `SUB`).
            if !subscriptions.contains_key(subject) {
                let task = tokio::spawn(forward(subject.to_owned(), subscriber, self.shared.events.clone()));
                subscriptions.insert(subject.to_owned(), task);
            }
        }
        // Either way this subject's `SUB` was queued before the round trip's request.
        if !self.is_connected() {
            return Err(Self::not_connected());
        }
        round_trip(&self.client, &self.shared.ping_subject).await
    }

    /// Ends the subject's task, so nothing more of it is handed to the bus (what is in the bus's
    /// channel already stays there). The `UNSUB` goes out when the connection is up (a closed
    /// connection has no subscriptions). Never fails.
    async fn unsubscribe(&self, subject: &str) -> Result<(), BrokerError> {
        if let Some(task) = self.shared.subscriptions.lock().remove(subject) {
            task.abort();
        }
        Ok(())
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.supervisor.abort();
        for (_, task) in self.shared.subscriptions.lock().drain() {
            task.abort();
        }
    }
}
