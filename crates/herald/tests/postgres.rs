//! `herald serve` on PostgreSQL and its cluster options, as processes: the real binary on a free
//! port, spoken to over real sockets.
//!
//! - On the test database (`HERALD_TEST_POSTGRES`, a schema of its own, dropped at the end):
//!   publishes, SSE, a restart with seqs going on, `/healthz`.
//! - Startup refusals: one line, status 1, in bounded time (most need no database).
//! - A private PostgreSQL stopped and started by its PID under a running herald: publishes
//!   answer 503 `store_unavailable` at once, an open stream stays open, `/healthz` says
//!   `degraded`; once it is back the same herald publishes again, seqs going on, and the open
//!   stream gets them.
//!
//! Without `HERALD_TEST_POSTGRES` the tests that need PostgreSQL say why they skip and pass; so
//! does the private one without root or PostgreSQL's binaries.

// Not every helper of the shared harness is needed here (`kill9`).
#[allow(dead_code)]
mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Server, free_port, herald};
use herald_client::{
    ClientError, Event, EventStream, PublishRequest, Publisher, StreamOptions, Subscriber, To, mint_token,
};
use herald_store::postgres::testing::{TestSchema, private_postgres_or_skip, skip_reason};
use serde_json::{Value, json};

// At least 32 bytes: `herald serve` refuses shorter secrets.
const SECRET: &str = "postgres-test-secret-0123456789abcdef";
const API_KEY: &str = "postgres-test-api-key";
/// Longest wait for a server to answer, a process to exit, an event to arrive.
const WAIT: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

/// `herald serve` on `port` with the credentials and `args`.
fn serve(cwd: &std::path::Path, port: u16, args: &[&str]) -> Command {
    let mut command = herald(cwd);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("HERALD_SECRET", SECRET)
        .env("HERALD_API_KEY", API_KEY);
    command
}

/// Starts `herald serve` on `port` with `args` and waits until it answers.
async fn start(cwd: &std::path::Path, port: u16, args: &[&str]) -> Server {
    let url = format!("http://127.0.0.1:{port}");
    common::start_until_up(Instant::now() + WAIT, || Server::spawn(serve(cwd, port, args), url.clone())).await
}

/// `/healthz`'s body.
async fn healthz(server: &Server) -> Value {
    let response = reqwest::get(format!("{}/healthz", server.url)).await.unwrap();
    assert_eq!(response.status(), 200, "/healthz answers 200 whatever the store's state");
    response.json().await.unwrap()
}

/// The next event that is not a keep-alive; fails after [`WAIT`], or if the stream ends.
async fn next(stream: &mut EventStream) -> Event {
    common::next_event_within(stream, WAIT).await
}

/// The seq and data of the next event, which must be a durable notification.
async fn notification(stream: &mut EventStream) -> (u64, Value) {
    match next(stream).await {
        Event::Notification(n) => (n.seq.expect("durable"), n.data),
        other => panic!("expected a notification, got {other:?}"),
    }
}

async fn publish(publisher: &Publisher, user: &str, data: Value) -> Result<u64, ClientError> {
    let answer = publisher.publish(&PublishRequest::new(To::user(user), data)).await?;
    Ok(answer.notifications[0].seq)
}

/// Sends SIGTERM and waits for a graceful exit.
fn terminate(mut server: Server) {
    let pid = libc::pid_t::try_from(server.child.id()).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is this test's unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "graceful stop exited {status}");
            return;
        }
        assert!(Instant::now() < deadline, "no exit within {WAIT:?} of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// On the test database, in a schema of its own: publishes and a stream, a restart whose seqs
/// go on and whose resume replays exactly what was missed, `/healthz` naming PostgreSQL and the
/// node. Fails if the store URL's schema were ignored (the second start would not see the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_postgres_and_goes_on_after_a_restart() {
    let Some(schema) = TestSchema::new() else {
        eprintln!("skipped: {}", skip_reason().unwrap());
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let store = schema.url();
    let server = start(dir.path(), port, &["--store", &store, "--store-connections", "4"]).await;
    let health = healthz(&server).await;
    let node = format!("{}:{port}", herald_server::host_name().unwrap());
    assert_eq!(health, json!({"status": "ok", "node": node, "store": "postgres", "bus": "local"}));
    assert!(server.stderr().contains(&format!("schema {}", schema.name)), "{}", server.stderr());

    let token = mint_token(SECRET.as_bytes(), "alice", Some("laptop"), HOUR).unwrap();
    let subscriber = Subscriber::new(&server.url, &token).unwrap();
    let mut stream = subscriber.stream(StreamOptions::default()).await.unwrap();
    assert!(matches!(next(&mut stream).await, Event::Hello { last_seq: 0, .. }));
    let publisher = Publisher::new(&server.url, API_KEY).unwrap();
    for n in 1..=3 {
        assert_eq!(publish(&publisher, "alice", json!({ "n": n })).await.unwrap(), n);
        assert_eq!(notification(&mut stream).await, (n, json!({ "n": n })));
    }
    terminate(server);
    assert_eq!(next(&mut stream).await, Event::Closed { reason: "shutdown".into() });

    // Again, on the same schema, with a node id of its own.
    let server = start(dir.path(), port, &["--store", &store, "--node-id", "web-1"]).await;
    assert_eq!(healthz(&server).await["node"], "web-1");
    let publisher = Publisher::new(&server.url, API_KEY).unwrap();
    assert_eq!(publish(&publisher, "alice", json!({"n": 4})).await.unwrap(), 4, "seqs go on");
    let subscriber = Subscriber::new(&server.url, &token).unwrap();
    let options = StreamOptions { resume_after: Some(2), ..StreamOptions::default() };
    let mut stream = subscriber.stream(options).await.unwrap();
    assert!(matches!(next(&mut stream).await, Event::Hello { last_seq: 4, .. }));
    assert_eq!(notification(&mut stream).await, (3, json!({"n": 3})));
    assert_eq!(notification(&mut stream).await, (4, json!({"n": 4})));
    terminate(server);
    // Nothing was written beside the working dir: no data dir with --store.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "--store wrote files");
}

/// Runs a `herald serve` that must be refused; returns its output and how long it took.
fn refused(command: &mut Command) -> (Output, Duration) {
    let started = Instant::now();
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = started + WAIT + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`herald serve` was not refused within {:?}", deadline - started);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    (output, started.elapsed())
}

/// Exit status 1 and exactly one line on stderr, `herald: …` (no log line, no panic), holding
/// every one of `says`.
#[track_caller]
fn assert_one_line(output: &Output, says: &[&str]) -> String {
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("herald: "), "{stderr:?}");
    for said in says {
        assert!(stderr.contains(said), "{said:?} not in {stderr:?}");
    }
    stderr
}

/// Store and cluster options that cannot work are refused before anything is served, each with
/// one line that says what to do, status 1, in bounded time; passwords are never printed.
#[test]
fn store_and_cluster_options_that_cannot_work_are_one_line_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let serve = |args: &[&str]| serve(dir.path(), port, args);
    let postgres_url = "postgres://herald:hunter2@127.0.0.1:5432/herald";

    // A shared bus needs a shared log.
    for local in [&[][..], &["--memory"][..], &["--data-dir", "data"][..]] {
        let (output, _) = refused(serve(local).args(["--bus", "nats://127.0.0.1:4222"]));
        assert_one_line(&output, &["a cluster needs a shared log: use --store postgres://"]);
    }
    // Dev mode is single-node only.
    for unset in ["HERALD_SECRET", "HERALD_API_KEY"] {
        let (output, _) =
            refused(serve(&["--store", postgres_url, "--bus", "redis://127.0.0.1:6379"]).env_remove(unset));
        assert_one_line(&output, &["--bus", "HERALD_SECRET and HERALD_API_KEY"]);
    }
    // Bad URLs, said without the password.
    for (args, says) in [
        (&["--store", "mysql://herald:hunter2@db/herald"][..], "give a PostgreSQL URL"),
        (&["--store", "postgres://herald:hunter2@db:port/herald"][..], "invalid PostgreSQL URL"),
        (&["--store", "postgres://herald:hunter2@db/herald?schema=a.b"][..], "schema name"),
        (
            &["--store", postgres_url, "--bus", "amqp://herald:hunter2@mq:5672"][..],
            "use nats://host:port or redis://host:port",
        ),
        (&["--store", postgres_url, "--bus", "nats://herald:hunter2@"][..], "no host"),
    ] {
        let (output, _) = refused(&mut serve(args));
        let stderr = assert_one_line(&output, &[says, "herald:***@"]);
        assert!(!stderr.contains("hunter2"), "the password printed: {stderr}");
    }
    // Bad names.
    for (args, says) in [
        (&["--node-id", "web 1"][..], "--node-id: node id \"web 1\" has ' '"),
        (&["--node-id", &"n".repeat(65)][..], "at most 64"),
        (&["--cluster", "eu.prod"][..], "--cluster: cluster name \"eu.prod\" has '.'"),
        (&["--cluster", &"c".repeat(33)][..], "at most 32"),
    ] {
        let (output, _) = refused(&mut serve(args));
        assert_one_line(&output, &[says]);
    }
    // Two stores named at once, or a bound on none.
    let (output, _) = refused(&mut serve(&["--store", postgres_url, "--memory"]));
    assert_one_line(&output, &["--store and --memory"]);
    let (output, _) = refused(&mut serve(&["--store", postgres_url, "--data-dir", "data"]));
    assert_one_line(&output, &["--store and --data-dir"]);
    let (output, _) = refused(serve(&[]).env("HERALD_STORE", postgres_url).env("HERALD_DATA_DIR", "data"));
    assert_one_line(&output, &["--store and --data-dir"]);
    let (output, _) = refused(&mut serve(&["--store-connections", "4"]));
    assert_one_line(&output, &["--store-connections is for --store postgres://"]);
    let (output, _) = refused(&mut serve(&["--store", postgres_url, "--store-connections", "0"]));
    assert_one_line(&output, &["--store-connections 0: give 1 to 1000"]);

    // No database where the URL points: refused at once, and within the store's bound anyway.
    let closed = format!("postgres://herald:hunter2@127.0.0.1:{}/herald", free_port());
    let (output, took) = refused(&mut serve(&["--store", &closed]));
    let stderr = assert_one_line(&output, &["store unavailable", "Connection refused"]);
    assert!(!stderr.contains("hunter2"), "{stderr}");
    eprintln!("no database: refused in {took:?}");
    assert!(took < WAIT, "{took:?}");
    // A server that accepts and never answers: refused within the store's bound (5 s).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("postgres://herald@{}/herald", silent.local_addr().unwrap());
    let (output, took) = refused(&mut serve(&["--store", &silent_url]));
    assert_one_line(&output, &["store unavailable"]);
    eprintln!("a silent server: refused in {took:?}");
    assert!(took < WAIT, "{took:?}");
    drop(silent);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a refused start wrote files");
}

/// A bus that cannot be reached (nothing listens on its port) is refused in one line that says
/// which option and why, after the store opened, within the broker's connect bound.
#[test]
fn an_unreachable_bus_is_refused_in_one_line() {
    let Some(schema) = TestSchema::new() else {
        eprintln!("skipped: {}", skip_reason().unwrap());
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for scheme in ["nats", "redis"] {
        let bus = format!("{scheme}://127.0.0.1:{}", free_port());
        let started = std::time::Instant::now();
        let (output, _) =
            refused(&mut serve(dir.path(), free_port(), &["--store", &schema.url(), "--bus", &bus]));
        let stderr = String::from_utf8(output.stderr.clone()).unwrap();
        let refusal = stderr.lines().last().unwrap_or_default();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(refusal.starts_with("herald: cannot join the cluster through the bus (--bus): "), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{scheme}: {:?}", started.elapsed());
    }
}

/// A private PostgreSQL stopped and started by its PID under a running herald: while it is down
/// publishes answer 503 `store_unavailable` at once, `/healthz` says `degraded` and why, and an
/// open stream stays open (keep-alives, no `closed`); once it is back, the same herald publishes
/// again, seqs going on with no gap and none given twice, `/healthz` is `ok`, and the open
/// stream gets the new notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_a_running_herald() {
    let Some(mut postgres) = tokio::task::block_in_place(private_postgres_or_skip) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start(dir.path(), port, &["--store", &postgres.url(), "--keepalive-secs", "1"]).await;
    let token = mint_token(SECRET.as_bytes(), "alice", Some("laptop"), HOUR).unwrap();
    let mut stream =
        Subscriber::new(&server.url, &token).unwrap().stream(StreamOptions::default()).await.unwrap();
    assert!(matches!(next(&mut stream).await, Event::Hello { .. }));
    let publisher = Publisher::new(&server.url, API_KEY).unwrap();
    assert_eq!(publish(&publisher, "alice", json!({"n": 1})).await.unwrap(), 1);
    assert_eq!(notification(&mut stream).await, (1, json!({"n": 1})));

    tokio::task::block_in_place(|| postgres.stop());
    let started = Instant::now();
    match publish(&publisher, "alice", json!({"n": 2})).await {
        Err(ClientError::Http { status: 503, code, .. }) => assert_eq!(code, "store_unavailable"),
        other => panic!("expected 503 store_unavailable, got {other:?}"),
    }
    let refused_in = started.elapsed();
    eprintln!("with PostgreSQL down, a publish answered 503 in {refused_in:?}");
    assert!(refused_in < Duration::from_secs(6), "{refused_in:?}");
    let health = healthz(&server).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["reason"].as_str().is_some_and(|r| r.contains("PostgreSQL")), "{health}");
    // The open stream stays open: keep-alives only, for a few of their periods.
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(2_500);
    let mut keep_alives = 0;
    while let Ok(event) = tokio::time::timeout_at(quiet_until, stream.next_event()).await {
        match event {
            Ok(Some(Event::KeepAlive)) => keep_alives += 1,
            other => panic!("the open stream got {other:?} while the database was down"),
        }
    }
    assert!(keep_alives >= 1, "the open stream is alive");

    tokio::task::block_in_place(|| postgres.start());
    let back = Instant::now();
    let seq = publish_once_back(&publisher, json!({"n": 2})).await;
    eprintln!("publishes succeeded again {:?} after PostgreSQL took connections", back.elapsed());
    assert_eq!(seq, 2, "seqs go on: no gap, none given twice");
    assert_eq!(notification(&mut stream).await, (2, json!({"n": 2})));
    assert_eq!(publish(&publisher, "alice", json!({"n": 3})).await.unwrap(), 3);
    assert_eq!(notification(&mut stream).await, (3, json!({"n": 3})));
    let health = healthz(&server).await;
    assert_eq!((&health["status"], health.get("reason")), (&json!("ok"), None), "{health}");
    terminate(server);
}

/// The log's epoch changes under a running herald (as after a failover to a replica, which
/// remakes every connection: here the id is renewed and PostgreSQL restarted): the open stream
/// ends with `closed: error` (its seqs belong to the old history, and live notifications carry
/// no epoch), and the client's resume with its old epoch gets `hello` and `reset`, then the new
/// log's notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_ends_the_open_streams_with_a_reset_to_come() {
    let Some(mut postgres) = tokio::task::block_in_place(private_postgres_or_skip) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), free_port(), &["--store", &postgres.url()]).await;
    let token = mint_token(SECRET.as_bytes(), "alice", Some("laptop"), HOUR).unwrap();
    let subscriber = Subscriber::new(&server.url, &token).unwrap();
    let mut stream = subscriber.stream(StreamOptions::default()).await.unwrap();
    let Event::Hello { epoch: Some(old_epoch), .. } = next(&mut stream).await else {
        panic!("hello with an epoch")
    };
    let publisher = Publisher::new(&server.url, API_KEY).unwrap();
    assert_eq!(publish(&publisher, "alice", json!({"n": 1})).await.unwrap(), 1);
    assert_eq!(notification(&mut stream).await, (1, json!({"n": 1})));

    let (client, connection) = tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("UPDATE herald_meta SET epoch = gen_random_uuid()::text").await.unwrap();
    drop(client);
    tokio::task::block_in_place(|| postgres.stop());
    tokio::task::block_in_place(|| postgres.start());
    // The next publish remakes the node's connections, which read the new epoch.
    publish_once_back(&publisher, json!({"n": 2})).await;
    // The open stream: maybe the notification, then the end (within a probe interval).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.next_event()).await.expect("ended in time") {
            Ok(Some(Event::Closed { reason })) => {
                assert_eq!(reason, "error");
                break;
            }
            Ok(Some(Event::KeepAlive | Event::Notification(_))) => {}
            other => panic!("expected closed: error, got {other:?}"),
        }
    }
    let options =
        StreamOptions { resume_after: Some(1), epoch: Some(old_epoch.clone()), ..StreamOptions::default() };
    let mut resumed = subscriber.stream(options).await.unwrap();
    let Event::Hello { epoch: Some(new_epoch), last_seq, .. } = next(&mut resumed).await else {
        panic!("hello")
    };
    assert_ne!(new_epoch, old_epoch);
    match next(&mut resumed).await {
        Event::Reset { last_seq: reset_to } => assert_eq!(reset_to, last_seq),
        other => panic!("expected reset, got {other:?}"),
    }
    let seq = publish(&publisher, "alice", json!({"n": 3})).await.unwrap();
    assert_eq!(notification(&mut resumed).await, (seq, json!({"n": 3})));
    terminate(server);
}

/// Publishes `data` to alice once PostgreSQL is back: retried while the node answers 503, at
/// most [`WAIT`]; fails on any other answer. The seq it got.
async fn publish_once_back(publisher: &Publisher, data: Value) -> u64 {
    let back = Instant::now();
    loop {
        match publish(publisher, "alice", data.clone()).await {
            Ok(seq) => return seq,
            Err(ClientError::Http { status: 503, .. }) if back.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the node did not recover within {WAIT:?}: {other:?}"),
        }
    }
}
