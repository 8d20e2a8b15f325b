//! What every case uses: which broker ([`Kind`]) and where, subjects no other run sees, and
//! waiting for events with a bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_cluster::broker::{self, Broker, BrokerEvent};
use tokio::sync::mpsc;

/// Longest wait for an event that should come (a message, a change of the connection) when
/// nothing slows it down on purpose.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The events channel's capacity in the cases that do not test a full channel: far more than
/// any case has in flight.
pub const EVENTS_CAPACITY: usize = 4096;

/// The broker a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nats,
    Redis,
}

impl Kind {
    /// The variable with the address of the machine's broker of this kind.
    pub fn variable(self) -> &'static str {
        match self {
            Kind::Nats => "HERALD_TEST_NATS",
            Kind::Redis => "HERALD_TEST_REDIS",
        }
    }

    pub fn scheme(self) -> &'static str {
        match self {
            Kind::Nats => "nats",
            Kind::Redis => "redis",
        }
    }

    /// The machine's broker of this kind, or `None` after saying why the case `name` skips.
    pub fn url_or_skip(self, name: &str) -> Option<String> {
        let url = std::env::var(self.variable()).ok().filter(|url| !url.is_empty());
        if url.is_none() {
            eprintln!(
                "skipped {}::{name}: {} is not set (e.g. {}://127.0.0.1:{})",
                self.scheme(),
                self.variable(),
                self.scheme(),
                if self == Kind::Nats { 4222 } else { 6379 }
            );
        }
        url
    }
}

/// A subject no other case, run or process uses (pid, time, counter).
pub fn fresh_subject(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("herald-test.{case}.{}.{nanos}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One node's side of a case: its adapter and the bus's end of its events channel.
pub struct Node {
    pub broker: Arc<dyn Broker>,
    pub events: mpsc::Receiver<BrokerEvent>,
}

impl Node {
    pub async fn connect(url: &str) -> Self {
        Self::connect_with_capacity(url, EVENTS_CAPACITY).await
    }

    pub async fn connect_with_capacity(url: &str, capacity: usize) -> Self {
        let (tx, events) = mpsc::channel(capacity);
        let broker =
            broker::connect(url, tx).await.unwrap_or_else(|error| panic!("connect to {url}: {error}"));
        assert!(broker.is_connected(), "connected once connect returned");
        Self { broker, events }
    }

    /// The next event, within `within`; panics (saying what was awaited) if none comes.
    pub async fn next_event_within(&mut self, within: Duration, awaited: &str) -> BrokerEvent {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the adapter closed the events channel while awaiting {awaited}"),
            Err(_) => panic!("no event within {within:?} while awaiting {awaited}"),
        }
    }

    pub async fn next_event(&mut self, awaited: &str) -> BrokerEvent {
        self.next_event_within(EVENT_TIMEOUT, awaited).await
    }

    /// The next event must be this message.
    pub async fn expect_message(&mut self, subject: &str, payload: &[u8]) {
        let awaited = format!("{:?} on {subject}", String::from_utf8_lossy(payload));
        let event = self.next_event(&awaited).await;
        assert_eq!(event, message(subject, payload), "awaiting {awaited}");
    }

    /// The next events must be these messages, in any order: the order across subjects is not
    /// kept (NATS has a queue per subject).
    pub async fn expect_messages_in_any_order(&mut self, expected: &[(&str, &[u8])]) {
        let mut expected: Vec<BrokerEvent> =
            expected.iter().map(|(subject, payload)| message(subject, payload)).collect();
        let mut arrived = Vec::new();
        for _ in 0..expected.len() {
            arrived.push(self.next_event(&format!("{expected:?}")).await);
        }
        for events in [&mut arrived, &mut expected] {
            events.sort_by_key(|event| format!("{event:?}"));
        }
        assert_eq!(arrived, expected);
    }

    /// Nothing is waiting in the events channel.
    pub fn expect_nothing(&mut self) {
        if let Ok(event) = self.events.try_recv() {
            panic!("unexpected event: {event:?}");
        }
    }
}

pub fn message(subject: &str, payload: &[u8]) -> BrokerEvent {
    BrokerEvent::Message { subject: subject.to_owned(), payload: Bytes::copy_from_slice(payload) }
}

/// A port nothing listens on (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
