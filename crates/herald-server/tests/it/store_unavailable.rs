//! A node on PostgreSQL whose database goes away and comes back (a private PostgreSQL, stopped
//! and started by its PID, as a restart of the database does): every route that needs the store
//! answers 503 `store_unavailable` within the store's bound, what needs no store still works,
//! open streams stay open, `/healthz` says `degraded` and why; once the database is back the
//! node works again by itself, its seqs going on where they were.
//!
//! Needs `HERALD_TEST_POSTGRES` (the switch of every PostgreSQL test), root and PostgreSQL's
//! binaries; without them it says why it skips, and passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Limits, Retention};
use herald_server::ServerSettings;
use herald_store::PostgresStore;
use herald_store::postgres::testing::private_postgres_or_skip;
use herald_store::postgres::{OPERATION_TIMEOUT, PostgresOptions};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::support::{self, API_KEY, StreamPath, TestServer, assert_error};

/// Longest a refusal may take while the database is down: the store's bound on one operation,
/// and a second for a loaded machine. Fails if a layer above the store waited longer.
const REFUSAL_WAIT_MAX: Duration = Duration::from_secs(OPERATION_TIMEOUT.as_secs() + 1);

/// Longest wait for the node to work again once the database accepts connections.
const RECOVERY_WAIT_MAX: Duration = Duration::from_secs(10);

/// `method path` with `bearer` (and a JSON body): the answer and how long it took.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> ((u16, Value), Duration) {
    let mut request = server.http.request(method, format!("{}{path}", server.url)).bearer_auth(bearer);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let started = Instant::now();
    let answer = support::answer(request.send().await.unwrap()).await;
    (answer, started.elapsed())
}

async fn healthz(server: &TestServer) -> Value {
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, 200, "/healthz answers 200 whatever the store's state: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_route_answers_503_while_postgres_is_down_and_the_node_recovers_by_itself() {
    let Some(mut postgres) = tokio::task::block_in_place(private_postgres_or_skip) else {
        return;
    };
    let store =
        PostgresStore::open(PostgresOptions::new(postgres.url()), Retention::default()).await.unwrap();
    // Keep-alives every second: an open stream shows it is alive while the database is down.
    let settings = ServerSettings { keepalive_interval: Duration::from_secs(1), ..support::settings() };
    let server = TestServer::with(Limits::default(), settings, Arc::new(store)).await;

    // Up: streams on both paths, a publish, the inbox.
    let alice = server.token("alice", Some("laptop"));
    let (mut lean, _) = server.connect(&alice, "").await;
    let mut hyper = server.sse_via(StreamPath::Hyper, &alice, "", None).await;
    assert_eq!(hyper.next().await.unwrap().event, "hello");
    assert_eq!(server.notify_user("alice", json!({"n": 1})).await, 1);
    lean.durable(1).await;
    hyper.durable(1).await;
    let health = healthz(&server).await;
    assert_eq!(
        (&health["status"], &health["store"], &health["bus"]),
        (&json!("ok"), &json!("postgres"), &json!("local")),
        "{health}"
    );
    assert!(health.get("reason").is_none(), "{health}");

    // Down.
    tokio::task::block_in_place(|| postgres.stop());
    let publish = json!({"to": {"user": "alice"}, "data": {"n": 2}});
    let ((status, body), took) =
        call(&server, Method::POST, "/v1/notify", API_KEY, Some(publish.clone())).await;
    assert_error(&(status, body), 503, "store_unavailable");
    eprintln!("a publish with PostgreSQL down answered 503 in {took:?}");
    assert!(took <= REFUSAL_WAIT_MAX, "a publish took {took:?} to be refused");
    let health = healthz(&server).await;
    assert_eq!(health["status"], "degraded", "{health}");
    let reason = health["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("store: PostgreSQL"), "the reason says what is down: {health}");

    // Every route that needs the store: 503 `store_unavailable`, within the bound. `bob` has
    // never been seen (his sign-outs are read from the store first); `alice`'s were read when
    // her stream opened, so her requests fail further on, at the store's own operation.
    let bob = server.token("bob", Some("phone"));
    let requests: Vec<(Method, &str, &str, Option<Value>)> = vec![
        (Method::POST, "/v1/notify", API_KEY, Some(json!({"to": {"users": ["alice", "bob"]}, "data": {}}))),
        (
            Method::POST,
            "/v1/notify",
            API_KEY,
            Some(json!({"to": {"user": "alice"}, "data": {}, "durable": false, "idempotency_key": "k1"})),
        ),
        (Method::GET, "/v1/users/alice/notifications", API_KEY, None),
        (Method::GET, "/v1/users/alice/inbox", API_KEY, None),
        (Method::GET, "/v1/users/alice/inbox/counts", API_KEY, None),
        (Method::POST, "/v1/users/alice/inbox/mark", API_KEY, Some(json!({"seqs": [1], "as": "read"}))),
        (Method::DELETE, "/v1/users/alice/inbox/1", API_KEY, None),
        (Method::DELETE, "/v1/users/alice/inbox?all_up_to=1", API_KEY, None),
        (Method::DELETE, "/v1/users/alice/sessions/laptop", API_KEY, None),
        (Method::DELETE, "/v1/users/alice/sessions", API_KEY, None),
        (Method::GET, "/v1/inbox", &alice, None),
        (Method::GET, "/v1/inbox/counts", &alice, None),
        (Method::POST, "/v1/inbox/mark", &alice, Some(json!({"all_up_to": 1, "as": "seen"}))),
        (Method::DELETE, "/v1/inbox/1", &alice, None),
        (Method::DELETE, "/v1/inbox?all_up_to=1", &alice, None),
        (Method::GET, "/v1/inbox", &bob, None),
        (Method::GET, "/v1/poll", &alice, None),
        (Method::GET, "/v1/poll?timeout=0", &bob, None),
    ];
    let mut slowest = Duration::ZERO;
    for (method, path, bearer, body) in requests {
        let (answer, took) = call(&server, method.clone(), path, bearer, body).await;
        assert_eq!(
            (answer.0, support::code(&answer.1)),
            (503, "store_unavailable"),
            "{method} {path}: {}",
            answer.1
        );
        assert!(took <= REFUSAL_WAIT_MAX, "{method} {path} took {took:?}");
        slowest = slowest.max(took);
    }
    // New streams, on both paths and over WebSocket, and a resume (which replays from the store).
    for path in [StreamPath::Lean, StreamPath::Hyper] {
        for (token, query) in [(&alice, ""), (&alice, "last_event_id=0"), (&bob, "")] {
            let started = Instant::now();
            let refused = server.stream_refused_via(path, Some(token), query, None).await;
            assert_error(&refused, 503, "store_unavailable");
            slowest = slowest.max(started.elapsed());
        }
    }
    let ws_url = format!("{}/v1/ws?token={alice}", server.url.replacen("http://", "ws://", 1));
    match tokio_tungstenite::connect_async(ws_url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a WebSocket opened with the store down: {other:?}"),
    }
    eprintln!("the slowest of the other refusals took {slowest:?}");
    assert!(slowest <= REFUSAL_WAIT_MAX, "{slowest:?}");

    // What needs no store still works: an ephemeral publish reaches the open streams, which
    // stayed open (keep-alives, no `closed`).
    let (status, body) =
        server.publish(json!({"to": {"user": "alice"}, "data": {"live": true}, "durable": false})).await;
    assert_eq!(status, 200, "{body}");
    for stream in [&mut lean, &mut hyper] {
        let event = stream.notification().await;
        assert_eq!((event.id, &event.data["data"]), (None, &json!({"live": true})), "{event:?}");
        let comments = stream.comments;
        stream.expect_silence(Duration::from_millis(1_500)).await;
        assert!(stream.comments > comments, "the open stream gets its keep-alives");
    }

    // Back: without a restart of the node, publishes work again and the seqs go on.
    tokio::task::block_in_place(|| postgres.start());
    let back = Instant::now();
    let seq = loop {
        let ((status, body), _) =
            call(&server, Method::POST, "/v1/notify", API_KEY, Some(publish.clone())).await;
        if status == 200 {
            break body["notifications"][0]["seq"].as_u64().unwrap();
        }
        assert_error(&(status, body), 503, "store_unavailable");
        assert!(back.elapsed() < RECOVERY_WAIT_MAX, "the node did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("publishes succeeded again {:?} after PostgreSQL accepted connections", back.elapsed());
    assert_eq!(seq, 2, "the seqs go on: no gap, none given twice");
    for stream in [&mut lean, &mut hyper] {
        assert_eq!(stream.durable(2).await["data"], json!({"n": 2}));
    }
    let health = healthz(&server).await;
    assert_eq!((&health["status"], health.get("reason")), (&json!("ok"), None), "{health}");
    assert_eq!(server.stored("alice").await.len(), 2);
    let (status, counts) = server.get("/v1/users/alice/inbox/counts").await;
    assert_eq!((status, &counts["counts"]["total"]), (200, &json!(2)), "{counts}");
}

/// Without traffic, `/healthz` follows the database through the upkeep's probe: `degraded`
/// within a probe's period after the database stops, `ok` again within one after it starts.
/// Fails if only failed requests made the node degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_follows_the_database_without_traffic() {
    let Some(mut postgres) = tokio::task::block_in_place(private_postgres_or_skip) else {
        return;
    };
    let store =
        PostgresStore::open(PostgresOptions::new(postgres.url()), Retention::default()).await.unwrap();
    let server = TestServer::with_store(Arc::new(store)).await;
    assert_eq!(healthz(&server).await["status"], "ok");
    let wait_for = async |status: &str| {
        let started = Instant::now();
        loop {
            let health = healthz(&server).await;
            if health["status"] == status {
                return (started.elapsed(), health);
            }
            assert!(started.elapsed() < Duration::from_secs(10), "still {health} after 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::task::block_in_place(|| postgres.stop());
    let (took, health) = wait_for("degraded").await;
    eprintln!("degraded {took:?} after PostgreSQL stopped: {health}");
    assert!(health["reason"].as_str().is_some_and(|r| r.contains("PostgreSQL")), "{health}");
    tokio::task::block_in_place(|| postgres.start());
    let (took, _) = wait_for("ok").await;
    eprintln!("ok again {took:?} after PostgreSQL started");
}

/// A database that hangs (every PostgreSQL process stopped with SIGSTOP: connections stay open
/// and nothing answers, as on a host that froze or behind a partition): a publish, an inbox
/// read and a new stream are each refused with 503 within the store's bound, not held for as
/// long as the database hangs; open streams stay open; once it goes on, so does the node.
/// Fails if a layer above the store waited longer than the store's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_is_refused_within_the_stores_bound() {
    let Some(postgres) = tokio::task::block_in_place(private_postgres_or_skip) else {
        return;
    };
    let store =
        PostgresStore::open(PostgresOptions::new(postgres.url()), Retention::default()).await.unwrap();
    let server = TestServer::with_store(Arc::new(store)).await;
    let alice = server.token("alice", Some("laptop"));
    let (mut stream, _) = server.connect(&alice, "").await;
    assert_eq!(server.notify_user("alice", json!({"n": 1})).await, 1);
    stream.durable(1).await;

    postgres.pause();
    let publish = json!({"to": {"user": "alice"}, "data": {"n": 2}});
    let carol = server.token("carol", None);
    let ((status, body), publish_took) =
        call(&server, Method::POST, "/v1/notify", API_KEY, Some(publish.clone())).await;
    assert_error(&(status, body), 503, "store_unavailable");
    let ((status, body), read_took) = call(&server, Method::GET, "/v1/inbox", &alice, None).await;
    assert_error(&(status, body), 503, "store_unavailable");
    let started = Instant::now();
    let refused = server.stream_refused_via(StreamPath::Lean, Some(&carol), "", None).await;
    let stream_took = started.elapsed();
    assert_error(&refused, 503, "store_unavailable");
    eprintln!(
        "with PostgreSQL hung: a publish answered 503 in {publish_took:?}, an inbox read in {read_took:?}, a \
         new stream in {stream_took:?}"
    );
    for took in [publish_took, read_took, stream_took] {
        assert!(took <= REFUSAL_WAIT_MAX, "{took:?}");
    }
    let health = healthz(&server).await;
    assert_eq!(health["status"], "degraded", "{health}");

    postgres.resume();
    let back = Instant::now();
    loop {
        let ((status, _), _) =
            call(&server, Method::POST, "/v1/notify", API_KEY, Some(publish.clone())).await;
        if status == 200 {
            break;
        }
        assert!(back.elapsed() < RECOVERY_WAIT_MAX, "the node did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("publishes succeeded again {:?} after PostgreSQL went on", back.elapsed());
    // The refused publish may have committed once the database went on (its outcome was
    // unknown: a publisher retries with an idempotency key); either way the stream gets every
    // stored seq, once, in order.
    let stored: Vec<u64> = server.stored("alice").await.iter().map(|n| n["seq"].as_u64().unwrap()).collect();
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>(), "no gap");
    assert_eq!(stream.seqs(stored.len() - 1).await, stored[1..].to_vec());
}
