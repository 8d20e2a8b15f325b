//! The broker killed and started again under a connected adapter: a private server of this
//! case's own (`nats-server` or `redis-server` on a free port), stopped by its PID.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_cluster::broker::{CONNECT_TIMEOUT, OPERATION_TIMEOUT, RECONNECT_DELAY_MAX};
use herald_cluster::{BrokerError, BrokerEvent};

use crate::cases::assert_within_operation_timeout;
use crate::support::{Kind, Node, free_port, fresh_subject};

/// Longest wait for a private server to accept connections after it was started.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Subjects the adapter must subscribe again after the restart (besides the two the case
/// publishes on).
const RESUBSCRIBED_SUBJECTS: usize = 2000;

/// How long the server stays down: long enough for several failed reconnection attempts.
const DOWN_FOR: Duration = Duration::from_millis(1500);

/// A broker server of the test's own, killed by its PID when dropped (whatever the test did).
pub struct PrivateServer {
    kind: Kind,
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateServer {
    /// Starts one on a free port. Panics if the binary is missing: CI installs it (`.ci/run`).
    pub fn start(kind: Kind) -> Self {
        let name = match kind {
            Kind::Nats => "nats-server",
            Kind::Redis => "redis-server",
        };
        let found = Command::new("which").arg(name).output().expect("run which");
        let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
        assert!(found.status.success() && !path.is_empty(), "{name} is not installed (.ci/run installs it)");
        let mut server = Self { kind, binary: PathBuf::from(path), port: free_port(), child: None };
        server.run();
        server
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.kind.scheme(), self.port)
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let mut command = Command::new(&self.binary);
        match self.kind {
            Kind::Nats => command.args(["-a", "127.0.0.1", "-p", &port]),
            Kind::Redis => {
                command.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            }
        };
        command
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(command.spawn().unwrap_or_else(|e| panic!("start {:?}: {e}", self.binary)));
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{:?} did not listen on {port}", self.binary);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the server's PID (the child this test started, nothing else), and waits for
    /// it to be gone: its connections close as when a broker's host fails.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connected and subscribed; the server is killed: one `Disconnected`, publishes fail with
/// `Unavailable` at once, a subscribe fails but is kept; the server is started again on its
/// port: `Reconnected` (and no second `Disconnected` before it), after which both
/// subscriptions are in force. Fails if the adapter gives up, reports `Reconnected` before
/// its subscriptions are back (the publish right after it would be lost), or queues
/// publishes while down.
pub async fn broker_restart(kind: Kind) {
    if kind.url_or_skip("broker_restart").is_none() {
        return;
    }
    let mut server = PrivateServer::start(kind);
    let url = server.url();
    let mut a = Node::connect(&url).await;
    let (subject, subscribed_while_down) = (fresh_subject("restart"), fresh_subject("restart-down"));
    a.broker.subscribe(&subject).await.unwrap();
    // Many subjects, so that subscribing them again takes the server a while: a `Reconnected`
    // sent before that is done loses some of the publishes that follow it.
    let many: Vec<String> = (0..RESUBSCRIBED_SUBJECTS).map(|_| fresh_subject("restart-many")).collect();
    for subject in &many {
        a.broker.subscribe(subject).await.unwrap();
    }
    let witness = Node::connect(&url).await;
    witness.broker.publish(&subject, Bytes::from_static(b"up")).await.unwrap();
    a.expect_message(&subject, b"up").await;
    drop(witness);

    let killed = Instant::now();
    server.kill();
    let event = a.next_event("Disconnected").await;
    let disconnected_after = killed.elapsed();
    assert!(matches!(event, BrokerEvent::Disconnected { .. }), "{event:?}");
    assert!(!a.broker.is_connected());
    let started = Instant::now();
    let published = a.broker.publish(&subject, Bytes::from_static(b"lost")).await;
    assert!(matches!(published, Err(BrokerError::Unavailable(_))), "{published:?}");
    assert_within_operation_timeout(started.elapsed(), "a publish while down");
    let started = Instant::now();
    let subscribed = a.broker.subscribe(&subscribed_while_down).await;
    assert!(matches!(subscribed, Err(BrokerError::Unavailable(_))), "{subscribed:?}");
    assert_within_operation_timeout(started.elapsed(), "a subscribe while down");

    tokio::time::sleep(DOWN_FOR).await;
    a.expect_nothing(); // one Disconnected per outage, whatever the failed attempts
    let restarted = Instant::now();
    server.run();
    // Connected before `a` is back, so that its publish can follow `Reconnected` closely.
    let b = Node::connect(&url).await;
    let event =
        a.next_event_within(RECONNECT_DELAY_MAX + CONNECT_TIMEOUT + OPERATION_TIMEOUT, "Reconnected").await;
    let reconnected_after = restarted.elapsed();
    assert_eq!(event, BrokerEvent::Reconnected);
    assert!(a.broker.is_connected());

    // Published from another connection right after `Reconnected`: both subscriptions must be
    // in force already.
    b.broker.publish(&subject, Bytes::from_static(b"back")).await.unwrap();
    b.broker.publish(&subscribed_while_down, Bytes::from_static(b"kept")).await.unwrap();
    a.expect_messages_in_any_order(&[(&subject, b"back"), (&subscribed_while_down, b"kept")]).await;
    for subject in &many {
        b.broker.publish(subject, Bytes::from_static(b"many")).await.unwrap();
    }
    let mut missing: HashSet<&String> = many.iter().collect();
    while !missing.is_empty() {
        let awaited = format!("{} of the re-subscribed subjects", missing.len());
        match a.next_event(&awaited).await {
            BrokerEvent::Message { subject, payload } if payload == "many" => {
                assert!(missing.remove(&subject))
            }
            other => panic!("unexpected {other:?} while awaiting {awaited}"),
        }
    }
    // And `a` publishes again.
    let own = fresh_subject("restart-own");
    let mut b = b;
    b.broker.subscribe(&own).await.unwrap();
    a.broker.publish(&own, Bytes::from_static(b"own")).await.unwrap();
    b.expect_message(&own, b"own").await;
    eprintln!(
        "{}: Disconnected {disconnected_after:?} after the kill; Reconnected {reconnected_after:?} after the \
         restart (down {:?})",
        kind.scheme(),
        DOWN_FOR
    );
}
