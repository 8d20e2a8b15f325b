//! Several `herald serve` processes as one cluster: one PostgreSQL database (a fresh one per
//! test, dropped after it), and NATS or Redis between them. Each test runs against the machine's
//! services (`HERALD_TEST_POSTGRES`, `HERALD_TEST_NATS`, `HERALD_TEST_REDIS`; CI sets them), or
//! against a private broker it starts on a free port when it stops the broker; without the
//! variables it prints why it skips.
//!
//! What every test checks, whatever it breaks: each tab gets every acknowledged notification of
//! its user once, in seq order, and seqs are exactly 1..N (the log assigns them, whichever node
//! published).

mod common;
// The webhook receiver of the server's tests (a real HTTP server on 127.0.0.1).
#[path = "../../herald-server/tests/it/receiver.rs"]
mod receiver;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Server, free_port, herald};
use herald_client::{
    Event, EventStream, PublishRequest, Publisher, StreamOptions, Subscriber, To, mint_token,
};
use serde_json::{Value, json};

const SECRET: &str = "cluster-test-secret-of-at-least-32-bytes";
const API_KEY: &str = "cluster-test-api-key";
const HOUR: Duration = Duration::from_secs(3600);
/// Longest wait for one event or one server start.
const WAIT: Duration = Duration::from_secs(20);

fn env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            eprintln!("skipped: {name} is not set");
            None
        }
    }
}

/// A database of its own for one test, dropped (with its connections) when this is dropped.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

impl TestDatabase {
    async fn create(admin_url: &str) -> Self {
        let name = format!(
            "herald_cluster_{}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                % 1_000_000,
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let url = with_database(admin_url, &name);
        TestDatabase { admin_url: admin_url.to_owned(), name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Its own runtime: a test's runtime may be shutting down.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}: {dropped:?}", self.name);
        }
    }
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A broker of this test alone, on a free port, killed by PID when dropped.
struct PrivateBroker {
    kind: &'static str,
    port: u16,
    child: Option<Child>,
}

impl PrivateBroker {
    fn start(kind: &'static str) -> Self {
        let mut broker = PrivateBroker { kind, port: free_port(), child: None };
        broker.restart();
        broker
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.kind, self.port)
    }

    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let mut command = match self.kind {
            "nats" => {
                let mut command = Command::new("nats-server");
                command.args(["-a", "127.0.0.1", "-p", &port]);
                command
            }
            _ => {
                let mut command = Command::new("redis-server");
                command.args(["--bind", "127.0.0.1", "--port", &port, "--save", "", "--appendonly", "no"]);
                command
            }
        };
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the broker starts");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the {} broker did not listen in time", self.kind);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// How to start the nodes of one cluster; kept to start one again.
struct Cluster {
    cwd: tempfile::TempDir,
    database: TestDatabase,
    bus: String,
    /// Unique per test: tests share the machine's broker.
    name: String,
    ports: Vec<u16>,
    nodes: Vec<Option<Server>>,
    /// The log's epoch, from the first `hello`.
    epoch: std::sync::Mutex<Option<String>>,
    /// More options for every node (`--webhook-url …`).
    extra: Vec<String>,
}

impl Cluster {
    async fn start(admin_url: &str, bus: &str, nodes: usize) -> Self {
        Self::start_with(admin_url, bus, nodes, Vec::new()).await
    }

    async fn start_with(admin_url: &str, bus: &str, nodes: usize, extra: Vec<String>) -> Self {
        let database = TestDatabase::create(admin_url).await;
        let name = format!("t{}x{}", std::process::id(), CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let mut cluster = Cluster {
            cwd: tempfile::tempdir().unwrap(),
            database,
            bus: bus.to_owned(),
            name,
            ports: (0..nodes).map(|_| free_port()).collect(),
            nodes: (0..nodes).map(|_| None).collect(),
            epoch: std::sync::Mutex::new(None),
            extra,
        };
        for node in 0..nodes {
            cluster.start_node(node).await;
        }
        cluster
    }

    fn command(&self, node: usize) -> Command {
        let dir = self.cwd.path().join(format!("n{node}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = herald(&dir);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.ports[node])])
            .args(["--store", &self.database.url, "--bus", &self.bus])
            .args(["--node-id", &format!("n{node}"), "--cluster", &self.name])
            .args(&self.extra)
            .env("HERALD_SECRET", SECRET)
            .env("HERALD_API_KEY", API_KEY);
        command
    }

    async fn start_node(&mut self, node: usize) {
        let url = format!("http://127.0.0.1:{}", self.ports[node]);
        let server =
            common::start_until_up(Instant::now() + WAIT, || Server::spawn(self.command(node), url.clone()))
                .await;
        self.nodes[node] = Some(server);
    }

    fn url(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[node])
    }

    fn publisher(&self, node: usize) -> Publisher {
        Publisher::new(&self.url(node), API_KEY).unwrap()
    }

    fn subscriber(&self, node: usize, user: &str, session: &str) -> Subscriber {
        let token = mint_token(SECRET.as_bytes(), user, Some(session), HOUR).unwrap();
        Subscriber::new(&self.url(node), token).unwrap()
    }

    /// A tab of `user` in `session` on `node`, past its `hello`: (stream, client id).
    async fn tab(&self, node: usize, user: &str, session: &str, after: Option<u64>) -> (EventStream, String) {
        self.tab_as(node, user, session, after, None).await
    }

    async fn tab_as(
        &self,
        node: usize,
        user: &str,
        session: &str,
        after: Option<u64>,
        client: Option<&str>,
    ) -> (EventStream, String) {
        // Resumes name the epoch every node shares (one PostgreSQL log): the first hello's.
        let epoch = self.epoch.lock().unwrap().clone();
        let options = StreamOptions {
            resume_after: after,
            client: client.map(str::to_owned),
            epoch: after.and(epoch.clone()),
            ..StreamOptions::default()
        };
        let mut stream = self.subscriber(node, user, session).stream(options).await.unwrap();
        match next(&mut stream).await {
            Event::Hello { client, epoch: hello_epoch, .. } => {
                let hello_epoch = hello_epoch.expect("hello names the epoch");
                match epoch {
                    Some(epoch) => assert_eq!(hello_epoch, epoch, "every node gives the same epoch"),
                    None => *self.epoch.lock().unwrap() = Some(hello_epoch),
                }
                (stream, client)
            }
            other => panic!("expected hello, got {other:?}"),
        }
    }

    fn kill9(&mut self, node: usize) {
        self.nodes[node].take().expect("running").kill9();
    }

    /// `GET /v1/cluster` of `node`: its peers, shards and bus traffic.
    async fn cluster_view(&self, node: usize) -> Value {
        let client = reqwest::Client::new();
        let answer =
            client.get(format!("{}/v1/cluster", self.url(node))).bearer_auth(API_KEY).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        answer.json().await.unwrap()
    }

    /// A sample of `node`'s `GET /metrics`, on its admin port (`--admin-listen 127.0.0.1:0`,
    /// named by its banner): the value of the line that starts with `series` and a space.
    async fn metric(&self, node: usize, series: &str) -> f64 {
        let admin = self.nodes[node].as_ref().expect("running").admin_url(WAIT).await;
        let text = reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap();
        let value = text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' '));
        value.unwrap_or_else(|| panic!("no {series} on node {node}:\n{text}")).parse().unwrap()
    }

    async fn health(&self, node: usize) -> Value {
        reqwest::get(format!("{}/healthz", self.url(node))).await.unwrap().json().await.unwrap()
    }
}

/// The next event that is not a keep-alive; fails after [`WAIT`] or if the stream ends.
async fn next(stream: &mut EventStream) -> Event {
    common::next_event_within(stream, WAIT).await
}

/// Reads notifications until the one with seq `through`; returns every seq read, in order.
async fn seqs_through(stream: &mut EventStream, through: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.last().is_none_or(|last| *last < through) {
        match next(stream).await {
            Event::Notification(n) => seqs.push(n.seq.expect("durable")),
            other => panic!("expected a notification, got {other:?} after {seqs:?}"),
        }
    }
    seqs
}

/// Nothing but keep-alives for a while.
async fn assert_quiet(stream: &mut EventStream, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, stream.next_event()).await {
            Err(_) => return,
            Ok(Ok(Some(Event::KeepAlive))) => {}
            Ok(other) => panic!("expected nothing, got {other:?}"),
        }
    }
}

async fn publish(publisher: &Publisher, user: &str, data: Value) -> Result<u64, String> {
    let answer =
        publisher.publish(&PublishRequest::new(To::user(user), data)).await.map_err(|e| e.to_string())?;
    Ok(answer.notifications[0].seq)
}

fn one_to(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

/// A user's tabs spread over 3 nodes each get every notification once, whichever node it was
/// published on, while 3 publishers (one per node) publish for that user at once: seqs are
/// exactly 1..N. Another user's tab gets none. Each node's `/metrics` counts its bus messages
/// in and out (`herald_bus_messages_total`). Fails if a notification is lost, repeated or
/// misnumbered, or if the bus's counters do not move.
async fn every_tab_gets_every_notification_once(bus: &str) {
    let Some(admin) = env("HERALD_TEST_POSTGRES") else { return };
    let cluster = Cluster::start(&admin, bus, 3).await;
    let mut tabs = Vec::new();
    for node in 0..3 {
        for session in ["laptop", "phone"] {
            tabs.push(cluster.tab(node, "alice", session, None).await.0);
        }
    }
    let (mut bob, _) = cluster.tab(1, "bob", "laptop", None).await;
    const PER_NODE: u64 = 20;
    let mut publishers = Vec::new();
    for node in 0..3 {
        let publisher = cluster.publisher(node);
        publishers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_NODE {
                seqs.push(publish(&publisher, "alice", json!({"node": node, "i": i})).await.unwrap());
            }
            seqs
        }));
    }
    let mut acknowledged = BTreeSet::new();
    for publisher in publishers {
        acknowledged.extend(publisher.await.unwrap());
    }
    let total = 3 * PER_NODE;
    assert_eq!(
        acknowledged.into_iter().collect::<Vec<_>>(),
        one_to(total),
        "seqs are 1..N, whoever published"
    );
    for (i, tab) in tabs.iter_mut().enumerate() {
        assert_eq!(seqs_through(tab, total).await, one_to(total), "tab {i}");
    }
    for tab in &mut tabs {
        assert_quiet(tab, Duration::from_millis(300)).await;
    }
    assert_quiet(&mut bob, Duration::from_millis(100)).await;
    // Each node hears the two others, and its bus carried the envelopes: every node received
    // at least the 40 notifications published on the other two (plus their inbox events).
    for node in 0..3 {
        let view = cluster.cluster_view(node).await;
        let others: Vec<Value> = (0..3).filter(|n| *n != node).map(|n| json!(format!("n{n}"))).collect();
        assert_eq!(view["peers"], json!(others), "{view}");
        assert!(view["envelopes_in"].as_u64().unwrap() >= 2 * PER_NODE, "{view}");
        assert!(view["subscribed_shards"].as_u64().unwrap() >= 1, "{view}");
        eprintln!("node {node}: {view}");
        // The same traffic in `/metrics`: in, the other nodes' notifications; out, at least
        // this node's own 20.
        let bus_in = cluster.metric(node, r#"herald_bus_messages_total{direction="in"}"#).await;
        let bus_out = cluster.metric(node, r#"herald_bus_messages_total{direction="out"}"#).await;
        assert!(bus_in >= (2 * PER_NODE) as f64, "node {node}: {bus_in} bus messages in");
        assert!(bus_out >= PER_NODE as f64, "node {node}: {bus_out} bus messages out");
    }
    let health = cluster.health(2).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["store"], "postgres", "{health}");
    assert_eq!(health["node"], "n2", "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_every_tab_gets_every_notification_once() {
    let Some(bus) = env("HERALD_TEST_NATS") else { return };
    every_tab_gets_every_notification_once(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_every_tab_gets_every_notification_once() {
    let Some(bus) = env("HERALD_TEST_REDIS") else { return };
    every_tab_gets_every_notification_once(&bus).await;
}

/// kill -9 of a node while every node publishes: its tabs resume on another node with every
/// acknowledged notification once; tabs on the other nodes miss nothing.
async fn a_killed_node_loses_nothing(bus: &str) {
    let Some(admin) = env("HERALD_TEST_POSTGRES") else { return };
    let mut cluster = Cluster::start(&admin, bus, 3).await;
    let mut tabs = Vec::new();
    for node in 0..3 {
        tabs.push(cluster.tab(node, "alice", &format!("s{node}"), None).await);
    }
    let mut acknowledged = BTreeSet::new();
    let mut attempts = 0u64;
    for i in 0..60u64 {
        if i == 30 {
            cluster.kill9(2);
        }
        let node = (i % 3) as usize;
        attempts += 1;
        // Publishes to the killed node fail; one in flight when it died may be stored anyway.
        if let Ok(seq) = publish(&cluster.publisher(node), "alice", json!({"i": i})).await {
            acknowledged.insert(seq);
        }
    }
    assert!(acknowledged.len() >= 50, "{} of {attempts} acknowledged", acknowledged.len());
    let last = *acknowledged.last().unwrap();
    // The killed node's tab: its stream ends; it resumes on node 0 where it stopped.
    let (mut killed_tab, client) = tabs.pop().unwrap();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, killed_tab.next_event()).await.expect("the stream ends") {
            Ok(Some(Event::Notification(n))) => seen.push(n.seq.unwrap()),
            Ok(Some(Event::KeepAlive)) => {}
            Ok(None) | Err(_) => break,
            Ok(Some(other)) => panic!("unexpected {other:?}"),
        }
    }
    let resume_after = Some(seen.last().copied().unwrap_or(0));
    let (mut resumed, _) = cluster.tab_as(0, "alice", "s2", resume_after, Some(&client)).await;
    seen.extend(seqs_through(&mut resumed, last).await);
    assert_eq!(seen, one_to(last), "the killed node's tab, resumed on another node");
    for (node, (tab, _)) in tabs.iter_mut().enumerate() {
        assert_eq!(seqs_through(tab, last).await, one_to(last), "the tab on node {node}");
    }
    // A dead node's clients leave presence: the survivors stop waiting for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let presence = cluster.publisher(0).presence("alice").await.unwrap();
        let nodes: BTreeSet<String> =
            presence.sessions.iter().flat_map(|s| s.clients.iter().filter_map(|c| c.node.clone())).collect();
        if !nodes.contains("n2") {
            assert!(nodes.contains("n0") && nodes.contains("n1"), "{presence:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the dead node is still present: {presence:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_killed_node_loses_nothing() {
    let Some(bus) = env("HERALD_TEST_NATS") else { return };
    a_killed_node_loses_nothing(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_killed_node_loses_nothing() {
    let Some(bus) = env("HERALD_TEST_REDIS") else { return };
    a_killed_node_loses_nothing(&bus).await;
}

/// The broker stopped during publishing and started again: publishes are still acknowledged;
/// every tab gets them through the store poll while the broker is away, and once the broker is
/// back everything goes on, each notification once.
async fn the_bus_stops_and_comes_back(kind: &'static str) {
    let Some(admin) = env("HERALD_TEST_POSTGRES") else { return };
    let mut broker = PrivateBroker::start(kind);
    let cluster = Cluster::start(&admin, &broker.url(), 3).await;
    let mut tabs = Vec::new();
    for node in 0..3 {
        tabs.push(cluster.tab(node, "alice", &format!("s{node}"), None).await.0);
    }
    let mut seq = 0;
    for i in 0..10u64 {
        seq = publish(&cluster.publisher((i % 3) as usize), "alice", json!({"i": i})).await.unwrap();
    }
    assert_eq!(seq, 10);
    for tab in &mut tabs {
        assert_eq!(seqs_through(tab, 10).await, one_to(10));
    }
    // Carol's token is checked (and her revocations cached) on node 1 before the outage, and
    // her tab there stays open.
    let carol = cluster.subscriber(1, "carol", "x");
    let mut carol_tab = carol.stream(StreamOptions::default()).await.unwrap();
    assert!(matches!(next(&mut carol_tab).await, Event::Hello { .. }));
    broker.kill();
    let outage = Instant::now();
    for i in 10..20u64 {
        seq = publish(&cluster.publisher((i % 3) as usize), "alice", json!({"i": i})).await.unwrap();
    }
    assert_eq!(seq, 20, "publishes are stored and acknowledged while the bus is away");
    for (node, tab) in tabs.iter_mut().enumerate() {
        assert_eq!(seqs_through(tab, 20).await, (11..=20).collect::<Vec<_>>(), "node {node}, bus away");
    }
    eprintln!(
        "{kind}: every tab had the outage's notifications {:?} after the broker died",
        outage.elapsed()
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let health = cluster.health(0).await;
        if health["status"] == "degraded" {
            assert!(health["reason"].as_str().unwrap_or_default().contains(kind), "{health}");
            break;
        }
        assert!(Instant::now() < deadline, "never degraded: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A sign-out made on node 0 while the bus is away holds on node 1 too: with the bus away,
    // node 1 reads revocations from the store rather than from what it cached before.
    cluster.publisher(0).close_session("carol", "x").await.unwrap();
    assert!(carol.stream(StreamOptions::default()).await.is_err(), "a revoked token streams on node 1");
    broker.restart();
    let deadline = Instant::now() + WAIT;
    while cluster.health(1).await["status"] != "ok" || cluster.health(0).await["status"] != "ok" {
        assert!(Instant::now() < deadline, "the nodes did not reconnect to the bus");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The close node 0 could not send: node 1 ends carol's open tab once the bus is back.
    match next(&mut carol_tab).await {
        Event::Closed { reason } => assert_eq!(reason, "session_closed"),
        other => panic!("expected closed: session_closed, got {other:?}"),
    }
    for i in 20..30u64 {
        seq = publish(&cluster.publisher((i % 3) as usize), "alice", json!({"i": i})).await.unwrap();
    }
    assert_eq!(seq, 30);
    for (node, tab) in tabs.iter_mut().enumerate() {
        assert_eq!(seqs_through(tab, 30).await, (21..=30).collect::<Vec<_>>(), "node {node}, bus back");
        assert_quiet(tab, Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_the_bus_stops_and_comes_back() {
    if env("HERALD_TEST_NATS").is_none() {
        return;
    }
    the_bus_stops_and_comes_back("nats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_bus_stops_and_comes_back() {
    if env("HERALD_TEST_REDIS").is_none() {
        return;
    }
    the_bus_stops_and_comes_back("redis").await;
}

/// Presence, session close and `replaced` work across nodes.
async fn sessions_and_presence_span_the_cluster(bus: &str) {
    let Some(admin) = env("HERALD_TEST_POSTGRES") else { return };
    let cluster = Cluster::start(&admin, bus, 3).await;
    let (mut laptop0, laptop_client) = cluster.tab(0, "alice", "laptop", None).await;
    let (mut laptop2, _) = cluster.tab(2, "alice", "laptop", None).await;
    let (mut phone1, phone_client) = cluster.tab(1, "alice", "phone", None).await;

    // Presence from any node lists all three, each with its node.
    for node in 0..3 {
        let presence = cluster.publisher(node).presence("alice").await.unwrap();
        let mut seen: Vec<(String, String)> = presence
            .sessions
            .iter()
            .flat_map(|s| s.clients.iter().map(|c| (s.session.clone(), c.node.clone().unwrap_or_default())))
            .collect();
        seen.sort();
        let expected = [("laptop", "n0"), ("laptop", "n2"), ("phone", "n1")]
            .map(|(s, n)| (s.to_owned(), n.to_owned()))
            .to_vec();
        assert_eq!(seen, expected, "presence asked on node {node}: {presence:?}");
    }

    // A publish to one client, made on a node it is not connected to, reaches it (and only it).
    let request = PublishRequest::new(To::client(phone_client.as_str()), json!({"to": "phone"}));
    let seq = cluster.publisher(2).publish(&request).await.unwrap().notifications[0].seq;
    assert_eq!(seqs_through(&mut phone1, seq).await, vec![seq]);
    let request = PublishRequest::new(To::client("no-such-client"), json!({}));
    let refused = cluster.publisher(2).publish(&request).await.unwrap_err().to_string();
    assert!(refused.contains("client_not_found"), "{refused}");
    // The laptop tabs skip that seq (it was not for them) without a gap.

    // The laptop tab of node 0 reconnects to node 1 with its client id: node 0's stream ends.
    let (mut moved, moved_client) =
        cluster.tab_as(1, "alice", "laptop", Some(seq), Some(&laptop_client)).await;
    assert_eq!(moved_client, laptop_client);
    match next(&mut laptop0).await {
        Event::Closed { reason } => assert_eq!(reason, "replaced"),
        other => panic!("expected closed: replaced, got {other:?}"),
    }

    // Closing the laptop session through node 1 closes its tabs on nodes 1 and 2.
    cluster.publisher(1).close_session("alice", "laptop").await.unwrap();
    for (name, tab) in [("moved", &mut moved), ("laptop2", &mut laptop2)] {
        match next(tab).await {
            Event::Closed { reason } => assert_eq!(reason, "session_closed", "{name}"),
            other => panic!("{name}: expected closed: session_closed, got {other:?}"),
        }
    }
    // The close is a revocation on every node: the laptop's tokens are refused on node 2 too.
    let laptop_token = cluster.subscriber(2, "alice", "laptop");
    let refused = laptop_token.stream(StreamOptions::default()).await;
    assert!(refused.is_err(), "a closed session's token still streams on another node");
    // The phone stays, and still gets notifications published elsewhere.
    let seq = publish(&cluster.publisher(2), "alice", json!({"after": "close"})).await.unwrap();
    assert_eq!(seqs_through(&mut phone1, seq).await, vec![seq]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sessions_and_presence_span_the_cluster() {
    let Some(bus) = env("HERALD_TEST_NATS") else { return };
    sessions_and_presence_span_the_cluster(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_and_presence_span_the_cluster() {
    let Some(bus) = env("HERALD_TEST_REDIS") else { return };
    sessions_and_presence_span_the_cluster(&bus).await;
}

/// Presence webhooks in a cluster: a user with tabs on two nodes is online once (the store
/// decides, across nodes); a node killed with `kill -9` cannot report its session offline, so
/// the other node does once the killed node's heartbeat is 30 s old (`PRESENCE_NODE_DEAD_AFTER`),
/// and the user, still on the live node, stays online until their last tab goes. Fails if the
/// dead node's session is never released, or if the user goes online or offline twice.
async fn presence_webhooks_span_the_cluster_and_outlive_a_killed_node(bus: &str) {
    let Some(admin) = env("HERALD_TEST_POSTGRES") else { return };
    let receiver = receiver::Receiver::start().await;
    let extra =
        ["--webhook-url", &receiver.url(), "--webhook-secret", "whsec", "--webhook-offline-grace", "1s"];
    let mut cluster = Cluster::start_with(&admin, bus, 2, extra.map(str::to_owned).to_vec()).await;
    let summary = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let session = e["session"].as_str().map(|s| format!(" {s}")).unwrap_or_default();
                format!(
                    "{}{session} #{} by {}",
                    e["type"].as_str().unwrap(),
                    e["user_seq"],
                    e["node"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (on_n0, _) = cluster.tab(0, "alice", "s0", None).await;
    receiver.wait_for(2, WAIT).await;
    let (on_n1, _) = cluster.tab(1, "alice", "s1", None).await;
    let events = receiver.wait_for(3, WAIT).await;
    assert_eq!(
        summary(&events),
        ["user.online #1 by n0", "session.online s0 #2 by n0", "session.online s1 #3 by n1"]
    );
    let killed_at = Instant::now();
    cluster.kill9(1);
    drop(on_n1);
    let events = receiver.wait_for(4, Duration::from_secs(50)).await;
    let released_after = killed_at.elapsed();
    assert_eq!(summary(&events[3..]), ["session.offline s1 #4 by n1"], "released by n0 for the dead n1");
    assert!(released_after >= Duration::from_secs(25), "{released_after:?}: too early for a dead node");
    eprintln!("the killed node's session was reported offline {released_after:?} after the kill");
    drop(on_n0);
    let events = receiver.wait_for(6, WAIT).await;
    assert_eq!(summary(&events[4..]), ["session.offline s0 #5 by n0", "user.offline #6 by n0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_presence_webhooks_span_the_cluster_and_outlive_a_killed_node() {
    let Some(bus) = env("HERALD_TEST_NATS") else { return };
    presence_webhooks_span_the_cluster_and_outlive_a_killed_node(&bus).await;
}

#[test]
fn test_database_urls_keep_their_parameters() {
    assert_eq!(with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
    assert_eq!(with_database("postgres://u@h/test?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}
