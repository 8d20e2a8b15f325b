//! The smoke run that CI can afford: a Herald server (in this process, `--memory`, on a free
//! port) and the real `herald-bench` binary with a few hundred clients for a couple of seconds.
//! Every acknowledged publish must reach every client of its user exactly once.
//!
//! And the other way round: against a fake server that loses and duplicates on purpose, the
//! same run must report both, so a clean result above means something.
//!
//! Broadcast (`--topic`): every tab listens to one topic (Herald) or channel (a plain SSE server),
//! and every message must reach every tab once.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_bench::report::RunResult;
use herald_core::{Limits, Retention};
use herald_server::{Herald, ServerSettings};
use herald_store::MemoryStore;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

// At least 32 bytes: `herald serve` refuses shorter secrets.
const SECRET: &str = "smoke-secret-0123456789abcdef012345";
const API_KEY: &str = "smoke-key";
/// Longest a smoke run may take before the test fails (it takes a few seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Runs `herald-bench run` with `args` and returns its result (the JSON line).
fn bench(args: &[&str], dir: &Path) -> RunResult {
    let json = dir.join("result.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("run")
        .args(args)
        .args(["--no-progress", "--server-pid", &std::process::id().to_string()])
        .arg("--json-out")
        .arg(&json)
        .env("HERALD_SECRET", SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            panic!("herald-bench ran for more than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "herald-bench failed: {status}");
    let text = std::fs::read_to_string(&json).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// Starts Herald with the memory store on a free port; returns its base URL.
fn start_herald(rt: &tokio::runtime::Runtime) -> (String, herald_server::RunningServer) {
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let store = Arc::new(MemoryStore::new(Retention::default()));
        let herald = Herald::builder(store, SECRET, API_KEY)
            .limits(Limits::default())
            // The bench's clients come from a few loopback addresses: no per-address caps.
            .settings(ServerSettings {
                caps: herald_server::caps::Caps {
                    ip_connections_max: 0,
                    ip_requests_per_sec: 0,
                    ..Default::default()
                },
                ..ServerSettings::default()
            })
            .build();
        let server = herald_server::start(herald, listener).unwrap();
        (format!("http://{}", server.addr), server)
    })
}

fn assert_exactly_once(result: &RunResult, clients: u64) {
    assert_eq!(result.connect.connected, clients, "{:?}", result.connect.first_error);
    assert_eq!(result.connect.failed, 0);
    for phase in &result.phases {
        let d = &phase.deliveries;
        assert!(phase.acked > 0, "{}: nothing was published: {:?}", phase.name, phase.first_error);
        assert_eq!(phase.errors, 0, "{}: {:?}", phase.name, phase.first_error);
        assert_eq!(d.lost, 0, "{}: lost deliveries: {d:?}", phase.name);
        assert_eq!(d.duplicated, 0, "{}: duplicated deliveries: {d:?}", phase.name);
        assert_eq!(d.misrouted, 0, "{}: misrouted deliveries: {d:?}", phase.name);
        assert_eq!(d.expected, phase.acked * u64::from(result.clients_per_user), "{}", phase.name);
        assert_eq!(d.delivered, d.expected, "{}", phase.name);
        assert!(phase.latency.count >= d.delivered);
    }
    assert!(result.idle.rss_bytes_per_client.is_some(), "the server process was measured");
    assert!(result.clean());
}

#[test]
fn herald_sse_delivers_every_publish_exactly_once() {
    let rt = runtime();
    let (url, server) = start_herald(&rt);
    let dir = tempfile::tempdir().unwrap();
    let result = bench(
        &[
            "--kind",
            "herald-sse",
            "--url",
            &url,
            "--users",
            "100",
            "--clients-per-user",
            "2",
            "--publishers",
            "4",
            "--idle-secs",
            "0.5",
            "--phase",
            "steady:200:1",
            "--phase",
            "max:2",
        ],
        dir.path(),
    );
    assert_exactly_once(&result, 200);
    rt.block_on(server.shutdown()).unwrap();
}

/// `--churn-per-sec`: tabs drop their connections at random during the phase and resume on new
/// ones; every publish still reaches each tab exactly once.
#[test]
fn herald_sse_resumes_exactly_once_under_reconnect_churn() {
    let rt = runtime();
    let (url, server) = start_herald(&rt);
    let dir = tempfile::tempdir().unwrap();
    let result = bench(
        &[
            "--kind",
            "herald-sse",
            "--url",
            &url,
            "--users",
            "50",
            "--clients-per-user",
            "2",
            "--publishers",
            "4",
            "--idle-secs",
            "0.2",
            "--phase",
            "steady:200:2",
            "--churn-per-sec",
            "100",
        ],
        dir.path(),
    );
    assert_exactly_once(&result, 100);
    let reconnects = result.phases[0].reconnects;
    assert!(reconnects >= 50, "about 200 drops and resumes in 2 s, got {reconnects}");
    rt.block_on(server.shutdown()).unwrap();
}

#[test]
fn herald_poll_and_ws_deliver_every_publish_exactly_once() {
    let rt = runtime();
    let (url, server) = start_herald(&rt);
    let dir = tempfile::tempdir().unwrap();
    for kind in ["herald-poll", "herald-ws"] {
        let result = bench(
            &[
                "--kind",
                kind,
                "--url",
                &url,
                "--users",
                "20",
                "--clients-per-user",
                "3",
                "--publishers",
                "2",
                "--idle-secs",
                "0",
                "--phase",
                "max:1",
                "--phase",
                "burst:50",
                "--user-prefix",
                kind.split('-').nth(1).unwrap(),
            ],
            dir.path(),
        );
        assert_exactly_once(&result, 60);
    }
    rt.block_on(server.shutdown()).unwrap();
}

/// Every message of a broadcast run reached every tab once, and each has its time to the first
/// and the last tab.
fn assert_broadcast_exactly_once(result: &RunResult, clients: u64) {
    assert_eq!(result.connect.connected, clients, "{:?}", result.connect.first_error);
    assert_eq!(result.connect.failed, 0);
    for phase in &result.phases {
        let d = &phase.deliveries;
        assert!(phase.acked > 0, "{}: nothing was published: {:?}", phase.name, phase.first_error);
        assert_eq!(phase.errors, 0, "{}: {:?}", phase.name, phase.first_error);
        assert_eq!(d.expected, phase.acked * clients, "{}: every tab expects every message", phase.name);
        assert_eq!(d.delivered, d.expected, "{}: {d:?}", phase.name);
        assert_eq!((d.lost, d.duplicated, d.misrouted), (0, 0, 0), "{}: {d:?}", phase.name);
        assert_eq!((d.clients_short, d.clients_duplicated), (0, 0), "{}: {d:?}", phase.name);
        let b = phase.broadcast.as_ref().expect("a broadcast phase has its per-message figures");
        assert_eq!(b.messages, phase.acked, "{}: every message reached some tab", phase.name);
        assert!(b.to_first.p50_ms > 0.0 && b.to_last.max_ms >= b.to_first.max_ms, "{}: {b:?}", phase.name);
    }
    assert!(result.clean());
}

/// `--topic`: every tab (SSE, WebSocket) listens to one topic with `?topics=` and a token whose
/// claim allows it; one message, then a steady rate, go to the topic. Fails if a tab misses a
/// topic event, gets one twice, or the events are not counted as deliveries.
#[test]
fn herald_broadcast_to_one_topic_reaches_every_tab_once() {
    let rt = runtime();
    let (url, server) = start_herald(&rt);
    let dir = tempfile::tempdir().unwrap();
    for kind in ["herald-sse", "herald-ws"] {
        let result = bench(
            &[
                "--kind",
                kind,
                "--url",
                &url,
                "--topic",
                "bench:room.1",
                "--users",
                "40",
                "--clients-per-user",
                "2",
                "--publishers",
                "2",
                "--idle-secs",
                "0.2",
                "--phase",
                "burst:1",
                "--phase",
                "steady:50:1",
                "--user-prefix",
                kind.split('-').nth(1).unwrap(),
            ],
            dir.path(),
        );
        assert_eq!(result.topic.as_deref(), Some("bench:room.1"));
        assert_eq!(result.phases[0].acked, 1, "the single publish");
        assert_broadcast_exactly_once(&result, 80);
    }
    rt.block_on(server.shutdown()).unwrap();
}

/// What the nodes of a [`fake_server`] share: the subscribers of every node by user, the count
/// of publishes, and whether every 5th publish is sent twice and every 7th dropped.
#[derive(Default)]
struct FakeCluster {
    subscribers: std::sync::Mutex<HashMap<String, Vec<mpsc::UnboundedSender<String>>>>,
    published: AtomicU64,
    faulty: bool,
}

/// Subscriptions and publishes one node of a [`FakeCluster`] served.
#[derive(Default)]
struct NodeCounts {
    subscriptions: AtomicU64,
    publishes: AtomicU64,
}

/// One node of a plain SSE server on `/sub/{user}` with `POST /pub/{user}`; a publish on any
/// node of `cluster` reaches the subscribers of every node.
async fn fake_server(listener: TcpListener, cluster: Arc<FakeCluster>, counts: Arc<NodeCounts>) {
    loop {
        let (socket, _) = listener.accept().await.unwrap();
        let cluster = cluster.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut reader = BufReader::new(read);
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
                if let Some(user) = path.strip_prefix("/sub/") {
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    cluster.subscribers.lock().unwrap().entry(user.to_owned()).or_default().push(tx);
                    counts.subscriptions.fetch_add(1, Ordering::Relaxed);
                    write
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
                        .await
                        .unwrap();
                    while let Some(data) = rx.recv().await {
                        if write.write_all(format!("data: {data}\n\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.unwrap();
                let user = path.strip_prefix("/pub/").unwrap_or("");
                counts.publishes.fetch_add(1, Ordering::Relaxed);
                let n = cluster.published.fetch_add(1, Ordering::Relaxed) + 1;
                let copies = if !cluster.faulty {
                    1
                } else if n.is_multiple_of(7) {
                    0
                } else if n.is_multiple_of(5) {
                    2
                } else {
                    1
                };
                let data = String::from_utf8(body).unwrap();
                for tx in cluster.subscribers.lock().unwrap().get(user).into_iter().flatten() {
                    for _ in 0..copies {
                        let _ = tx.send(data.clone());
                    }
                }
                write.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            }
        });
    }
}

/// `--topic` with a plain SSE server (Nchan's way): every client subscribes to the one channel
/// `/sub/<topic>` and every publish goes to `/pub/<topic>`. Fails if the clients are spread over
/// per-user channels.
#[test]
fn plain_sse_broadcast_uses_one_channel() {
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cluster = Arc::new(FakeCluster::default());
    rt.spawn(fake_server(listener, cluster.clone(), Arc::default()));
    let dir = tempfile::tempdir().unwrap();
    let result = bench(
        &[
            "--kind",
            "sse-url",
            "--url",
            &url,
            "--topic",
            "room_1",
            "--users",
            "10",
            "--clients-per-user",
            "3",
            "--publishers",
            "1",
            "--idle-secs",
            "0",
            "--phase",
            "burst:20",
        ],
        dir.path(),
    );
    assert_broadcast_exactly_once(&result, 30);
    let channels: Vec<String> = cluster.subscribers.lock().unwrap().keys().cloned().collect();
    assert_eq!(channels, ["room_1"]);
}

#[test]
fn losses_and_duplicates_are_reported() {
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cluster = Arc::new(FakeCluster { faulty: true, ..Default::default() });
    rt.spawn(fake_server(listener, cluster, Arc::default()));
    let dir = tempfile::tempdir().unwrap();
    let result = bench(
        &[
            "--kind",
            "sse-url",
            "--url",
            &url,
            "--users",
            "10",
            "--clients-per-user",
            "2",
            "--publishers",
            "1",
            "--idle-secs",
            "0",
            "--phase",
            "burst:70",
        ],
        dir.path(),
    );
    let d = &result.phases[0].deliveries;
    // 70 publishes × 2 clients: 10 publishes dropped (every 7th), 12 sent twice (every 5th
    // but the 35th and the 70th, which are dropped).
    assert_eq!(d.expected, 140);
    assert_eq!(d.lost, 20, "{d:?}");
    assert_eq!(d.duplicated, 24, "{d:?}");
    assert_eq!(d.delivered, 120);
    assert!(!result.clean());
}

/// Several `--url`s (the nodes of a cluster): client `i` and publisher `i` go to node `i mod n`,
/// every publish still reaches each client of its user exactly once across nodes, and a
/// `--counters-cmd`'s counters come back as their change over each phase. Fails if the clients
/// or the publishers all go to one node.
#[test]
fn clients_and_publishers_are_spread_over_several_urls() {
    let rt = runtime();
    let cluster = Arc::new(FakeCluster::default());
    let mut urls = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        let counts = Arc::new(NodeCounts::default());
        nodes.push(counts.clone());
        rt.spawn(fake_server(listener, cluster.clone(), counts));
    }
    let dir = tempfile::tempdir().unwrap();
    // Each reading of the counters is 5 more than the one before.
    let state = dir.path().join("counter");
    let counters = format!(
        "n=$(cat {0} 2>/dev/null || echo 0); echo $((n + 5)) > {0}; echo bus_in_msgs $n",
        state.display()
    );
    let result = bench(
        &[
            "--kind",
            "sse-url",
            "--url",
            &urls[..2].join(","),
            "--url",
            &urls[2],
            "--users",
            "10",
            "--clients-per-user",
            "3",
            "--publishers",
            "3",
            "--idle-secs",
            "0",
            "--phase",
            "burst:90",
            "--counters-cmd",
            &counters,
        ],
        dir.path(),
    );
    assert_exactly_once(&result, 30);
    assert_eq!(result.sub_urls.len(), 3);
    let mut all_publishes = 0;
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.subscriptions.load(Ordering::Relaxed), 10, "node {i}");
        // Each of the three publishers sends on its own node. The burst is one shared count that
        // the publishers take from as fast as each goes, so how it splits depends on the
        // scheduling (16 / 90 seen on a loaded machine): every node gets some, not a third each.
        let publishes = node.publishes.load(Ordering::Relaxed);
        assert!(publishes >= 1, "node {i}: {publishes} publishes");
        all_publishes += publishes;
    }
    assert_eq!(all_publishes, 90);
    assert_eq!(result.phases[0].counters.get("bus_in_msgs"), Some(&5.0));
}
