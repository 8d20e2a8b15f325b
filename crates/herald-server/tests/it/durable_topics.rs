//! Durable topics over real sockets: a durable publish to a topic is stored with its `tseq`
//! before the answer, and a tab resumes every topic it listens to exactly — no gap, no
//! duplicate — from one resume id (SSE `Last-Event-ID`), from `hello`'s positions and the
//! events' `tseq` (WebSocket), and from `positions=` (poll); past a topic's retention, a
//! `topic_reset` for that topic alone.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use herald_core::Retention;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::{QUIET, Sse, SseEvent, TestServer, assert_error, now_unix, settings, sign};

const ROOMS: [&str; 3] = ["room:1", "room:2", "room:3"];

fn token_for_rooms(user: &str, session: &str) -> String {
    let now = now_unix();
    sign(&json!({ "sub": user, "sid": session, "iat": now, "exp": now + 3600, "topics": ["room:*"] }))
}

/// A durable publish to `topic` whose data is `n`; returns the answer.
async fn publish_durable(server: &TestServer, topic: &str, n: u64) -> Value {
    let (status, body) =
        server.publish(json!({"to": {"topic": topic}, "type": "message", "data": {"n": n}})).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// What a tab got: each topic's tseqs and the user's seqs, in the order they came.
#[derive(Debug, Default)]
struct Got {
    tseqs: BTreeMap<String, Vec<u64>>,
    seqs: Vec<u64>,
    ephemeral: usize,
}

impl Got {
    /// Takes one SSE event; returns its resume id if it has one.
    fn take(&mut self, event: &SseEvent) -> Option<String> {
        match event.event.as_str() {
            "topic" => match event.data["tseq"].as_u64() {
                Some(tseq) => {
                    self.tseqs
                        .entry(event.data["topic"].as_str().unwrap().to_owned())
                        .or_default()
                        .push(tseq);
                    assert!(event.resume.is_some(), "a durable topic event has an id: {event:?}");
                }
                None => {
                    assert_eq!(event.resume, None, "an ephemeral topic event has no id: {event:?}");
                    self.ephemeral += 1;
                }
            },
            "notification" => self.seqs.push(event.data["seq"].as_u64().unwrap()),
            "hello" => {}
            other => panic!("unexpected event {other}: {event:?}"),
        }
        event.resume.clone()
    }
}

/// Publishes, reads and reconnects at random (seeded) over SSE, resuming each time with the last
/// id the stream gave (as a browser's `EventSource` does): at the end every topic's tseqs and the
/// user's seqs came exactly once each, in order.
#[tokio::test]
async fn sse_resumes_every_topic_exactly_from_one_last_event_id() {
    let server = TestServer::start().await;
    let token = token_for_rooms("alice", "s1");
    let query = "topics=room:1,room:2,room:3";
    let (mut tab, hello) = server.connect_with(&token, query, None).await;
    assert_eq!(hello.resume.as_deref(), Some("0;room:1=0;room:2=0;room:3=0"), "{hello:?}");
    assert_eq!(hello.data["positions"], json!({"room:1": 0, "room:2": 0, "room:3": 0}));
    let mut last_id = hello.resume.clone().unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    let mut published: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seqs = 0;
    let mut got = Got::default();
    let mut unread = 0;
    for round in 0..30 {
        for _ in 0..rng.random_range(0..6) {
            match rng.random_range(0..10) {
                0 => {
                    seqs += 1;
                    assert_eq!(server.notify_user("alice", json!(round)).await, seqs);
                }
                1 => {
                    server.publish(json!({"to": {"topic": "room:1"}, "durable": false, "data": round})).await;
                }
                _ => {
                    let topic = ROOMS[rng.random_range(0..ROOMS.len())];
                    let tseq = published.entry(topic).or_default();
                    *tseq += 1;
                    let answer = publish_durable(&server, topic, *tseq).await;
                    assert_eq!(answer["topic"], json!({"topic": topic, "tseq": *tseq}));
                }
            }
            unread += 1;
        }
        // Read some of what came (never more than was sent), then maybe drop the connection.
        for _ in 0..rng.random_range(0..=unread) {
            let Ok(Some(event)) = tab.next_within(Duration::from_millis(300)).await else { break };
            unread -= 1;
            if let Some(id) = got.take(&event) {
                last_id = id;
            }
        }
        if rng.random_bool(0.5) {
            let (again, hello) = server.connect_with(&token, query, Some(&last_id)).await;
            tab = again;
            assert_eq!(hello.resume.as_deref(), Some(last_id.as_str()), "hello's id is the resume point");
            unread = usize::MAX / 2; // Unknown now: read until quiet.
        }
    }
    while let Ok(Some(event)) = tab.next_within(QUIET).await {
        if let Some(id) = got.take(&event) {
            last_id = id;
        }
    }
    for topic in ROOMS {
        let expected: Vec<u64> = (1..=published.get(topic).copied().unwrap_or(0)).collect();
        assert_eq!(got.tseqs.get(topic).cloned().unwrap_or_default(), expected, "{topic}: {got:?}");
    }
    assert_eq!(got.seqs, (1..=seqs).collect::<Vec<_>>());
    let expected_id = format!(
        "{seqs};room:1={};room:2={};room:3={}",
        published.get("room:1").unwrap_or(&0),
        published.get("room:2").unwrap_or(&0),
        published.get("room:3").unwrap_or(&0)
    );
    assert_eq!(last_id, expected_id);
}

/// The same over WebSocket (positions from `hello` and each event's `tseq`) and long-poll
/// (`positions=`, answered with the new ones), with publishes while the tab is away.
#[tokio::test]
async fn websocket_and_poll_resume_topics_from_their_positions() {
    let server = TestServer::start().await;
    let token = token_for_rooms("alice", "s1");
    publish_durable(&server, "room:1", 1).await;
    let (ws, hello) = crate::websocket::connect(&server, &token, "topics=room:1,room:2").await;
    assert_eq!(hello["positions"], json!({"room:1": 1, "room:2": 0}), "{hello}");
    drop(ws);
    for n in 2..=4 {
        publish_durable(&server, "room:1", n).await;
    }
    publish_durable(&server, "room:2", 1).await;
    let (mut ws, hello) =
        crate::websocket::connect(&server, &token, "topics=room:1,room:2&last_event_id=0;room:1=1;room:2=0")
            .await;
    assert_eq!(hello["positions"], json!({"room:1": 1, "room:2": 0}), "{hello}");
    let mut came = Vec::new();
    for _ in 0..4 {
        let event = crate::websocket::next_event(&mut ws).await;
        assert_eq!(event["event"], "topic", "{event}");
        came.push((event["topic"].as_str().unwrap().to_owned(), event["tseq"].as_u64().unwrap()));
    }
    came.sort();
    assert_eq!(
        came,
        [("room:1".into(), 2), ("room:1".into(), 3), ("room:1".into(), 4), ("room:2".into(), 1)]
    );

    // Long-poll: the first poll starts at the heads; the next resumes from its positions.
    let (status, first) = server.poll(&token, "timeout=0&topics=room:1,room:2").await;
    assert_eq!((status, &first["positions"]), (200, &json!({"room:1": 4, "room:2": 1})), "{first}");
    publish_durable(&server, "room:2", 2).await;
    publish_durable(&server, "room:2", 3).await;
    // Without the client id: a fresh poll, answered from the topic's log.
    let (status, next) =
        server.poll(&token, "timeout=0&topics=room:1,room:2&after=0&positions=room:1=4,room:2=1").await;
    assert_eq!(status, 200, "{next}");
    let tseqs: Vec<u64> =
        next["topic"].as_array().unwrap().iter().map(|e| e["tseq"].as_u64().unwrap()).collect();
    assert_eq!(tseqs, [2, 3], "{next}");
    assert_eq!(next["positions"], json!({"room:1": 4, "room:2": 3}));
    let bad = server.poll(&token, "timeout=0&positions=room:1").await;
    assert_error(&bad, 400, "invalid_positions");
}

/// A position older than the topic's retention gets a `topic_reset` for that topic alone; the
/// other topic resumes exactly. A malformed id is refused.
#[tokio::test]
async fn a_position_past_retention_resets_that_topic_only() {
    let retention = Retention { topic_max_events: 3, ..Retention::default() };
    let server = TestServer::with(Default::default(), settings(), support::memory(retention)).await;
    let token = token_for_rooms("alice", "s1");
    for n in 1..=6 {
        publish_durable(&server, "room:1", n).await;
    }
    publish_durable(&server, "room:2", 1).await;
    publish_durable(&server, "room:2", 2).await;
    let (mut tab, hello) =
        server.connect_with(&token, "topics=room:1,room:2", Some("0;room:1=1;room:2=1")).await;
    assert_eq!(hello.data["positions"], json!({"room:1": 1, "room:2": 1}));
    let reset = tab.next().await.unwrap();
    assert_eq!(
        (reset.event.as_str(), &reset.data),
        ("topic_reset", &json!({"topic": "room:1", "last_tseq": 6}))
    );
    assert_eq!(reset.resume.as_deref(), Some("0;room:1=6;room:2=1"));
    let event = tab.next().await.unwrap();
    assert_eq!((event.data["topic"].as_str(), event.data["tseq"].as_u64()), (Some("room:2"), Some(2)));
    assert_eq!(event.resume.as_deref(), Some("0;room:1=6;room:2=2"));
    tab.expect_silence(QUIET).await;
    // Position 3 is still resumable (4, 5, 6 are retained).
    let (mut tab, _) = server.connect_with(&token, "topics=room:1", Some("0;room:1=3")).await;
    for tseq in 4..=6 {
        assert_eq!(tab.next().await.unwrap().data["tseq"], tseq);
    }

    for bad in ["0;room:1", "0;room 1=2", "x;room:1=2", "0;room:1=1;room:1=2"] {
        let refused = server.stream_refused(Some(&token), "topics=room:1", Some(bad)).await;
        assert_error(&refused, 400, "invalid_last_event_id");
    }
}

/// What a durable topic publish answers and keeps: its tseq, an idempotent repeat, `except_user`
/// kept in the log (a resuming tab of that user does not get it), `last_tseq` for the topic.
#[tokio::test]
async fn durable_topic_publishes_are_stored_idempotent_and_keep_except_user() {
    let server = TestServer::start().await;
    let body = json!({"to": {"topic": "room:1"}, "data": 1, "idempotency_key": "k1", "except_user": "bob"});
    let (status, first) = server.publish(body.clone()).await;
    assert_eq!((status, &first["topic"]), (200, &json!({"topic": "room:1", "tseq": 1})), "{first}");
    let (_, again) = server.publish(body).await;
    assert_eq!(again["topic"], first["topic"]);
    publish_durable(&server, "room:1", 2).await;
    let (_, listeners) = server.get("/v1/topics/room:1").await;
    assert_eq!(listeners["last_tseq"], 2, "{listeners}");

    // Bob resumes from 0: the event that excepted him is skipped, the next one comes.
    let (mut bob, _) =
        server.connect_with(&token_for_rooms("bob", "s1"), "topics=room:1", Some("0;room:1=0")).await;
    let event = bob.next().await.unwrap();
    assert_eq!((event.data["tseq"].as_u64(), event.data["data"].clone()), (Some(2), json!({"n": 2})));
    assert_eq!(event.resume.as_deref(), Some("0;room:1=2"));
    let (mut alice, _) =
        server.connect_with(&token_for_rooms("alice", "s1"), "topics=room:1", Some("0;room:1=0")).await;
    assert_eq!(alice.next().await.unwrap().data["tseq"], 1);
    assert_eq!(alice.next().await.unwrap().data["tseq"], 2);
    check_sse_quiet(&mut alice).await;
}

async fn check_sse_quiet(tab: &mut Sse) {
    tab.expect_silence(QUIET).await;
}

/// `?types=` filters a tab's topic events by type prefix, live and replayed; the positions
/// still move past the events left out (no gap fill, no re-read on resume).
#[tokio::test]
async fn a_type_filter_keeps_only_the_prefixes_asked_for() {
    let server = TestServer::start().await;
    let token = token_for_rooms("alice", "s1");
    let publish = |kind: &'static str, durable: bool| {
        let server = &server;
        async move {
            let (status, body) = server
                .publish(json!({"to": {"topic": "room:1"}, "type": kind, "data": kind, "durable": durable}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    publish("chat.message", true).await; // tseq 1, before the tab: replayed
    publish("presence.typing", true).await; // 2: left out
    let (mut tab, _) =
        server.connect_with(&token, "topics=room:1&types=chat.,system", Some("0;room:1=0")).await;
    let event = tab.next().await.unwrap();
    assert_eq!(
        (event.data["type"].as_str(), event.resume.as_deref()),
        (Some("chat.message"), Some("0;room:1=1"))
    );
    publish("presence.typing", false).await; // ephemeral, left out
    publish("presence.typing", true).await; // 3: left out
    publish("system.notice", true).await; // 4
    let event = tab.next().await.unwrap();
    assert_eq!(
        (event.data["type"].as_str(), event.resume.as_deref()),
        (Some("system.notice"), Some("0;room:1=4"))
    );
    tab.expect_silence(QUIET).await;
    let many =
        (0..=herald_core::subscription::TYPE_PREFIXES_MAX).map(|i| format!("t{i}")).collect::<Vec<_>>();
    let refused = server.stream_refused(Some(&token), &format!("types={}", many.join(",")), None).await;
    assert_error(&refused, 400, "invalid_types");
}

/// Across a restart on the same SQLite file: a tab resumes its topics and its user's log from
/// the id it had, exactly; the tseqs go on after the restart, never reused.
#[tokio::test]
async fn topics_resume_exactly_across_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let token = token_for_rooms("alice", "s1");
    let last_id = {
        let server = TestServer::with_store(support::sqlite(&path, Retention::default())).await;
        let (mut tab, _) = server.connect_with(&token, "topics=room:1,room:2", None).await;
        publish_durable(&server, "room:1", 1).await;
        let event = tab.next().await.unwrap();
        publish_durable(&server, "room:1", 2).await;
        publish_durable(&server, "room:2", 1).await;
        server.notify_user("alice", json!("while away")).await;
        server.shutdown().await;
        event.resume.unwrap()
    };
    assert_eq!(last_id, "0;room:1=1;room:2=0");
    let server = TestServer::with_store(support::sqlite(&path, Retention::default())).await;
    let answer = publish_durable(&server, "room:2", 2).await;
    assert_eq!(answer["topic"]["tseq"], 2, "tseqs go on after the restart");
    let (mut tab, hello) = server.connect_with(&token, "topics=room:1,room:2", Some(&last_id)).await;
    assert_eq!(hello.data["positions"], json!({"room:1": 1, "room:2": 0}));
    let mut got = Got::default();
    while let Ok(Some(event)) = tab.next_within(QUIET).await {
        got.take(&event);
    }
    assert_eq!(got.seqs, [1]);
    assert_eq!(got.tseqs.get("room:1"), Some(&vec![2]));
    assert_eq!(got.tseqs.get("room:2"), Some(&vec![1, 2]));
}

/// Where a client stands, kept on its side as herald.js and herald-client do: the user's seq and
/// each topic's position, from `hello`, the events and `topic_reset`.
#[derive(Debug, Default)]
struct Position {
    seq: u64,
    topics: BTreeMap<String, u64>,
    epoch: String,
}

impl Position {
    fn resume_id(&self) -> String {
        let mut id = self.seq.to_string();
        for (topic, tseq) in &self.topics {
            id.push_str(&format!(";{topic}={tseq}"));
        }
        id
    }

    fn positions_param(&self) -> String {
        self.topics.iter().map(|(t, s)| format!("{t}={s}")).collect::<Vec<_>>().join(",")
    }

    /// Takes one event (a WebSocket frame or a poll answer's item, with its `event` name).
    fn take(&mut self, got: &mut Got, event: &Value) {
        match event["event"].as_str().unwrap() {
            "hello" => {
                self.epoch = event["epoch"].as_str().unwrap().to_owned();
                for (topic, tseq) in event["positions"].as_object().into_iter().flatten() {
                    self.topics.insert(topic.clone(), tseq.as_u64().unwrap());
                }
            }
            "topic" => match event["tseq"].as_u64() {
                Some(tseq) => {
                    let topic = event["topic"].as_str().unwrap().to_owned();
                    got.tseqs.entry(topic.clone()).or_default().push(tseq);
                    self.topics.insert(topic, tseq);
                }
                None => got.ephemeral += 1,
            },
            "notification" => {
                let seq = event["seq"].as_u64().unwrap();
                got.seqs.push(seq);
                self.seq = seq;
            }
            "keepalive" => {}
            other => panic!("unexpected event {other}: {event}"),
        }
    }
}

/// Query-string encoding of a resume id (`;`, `=` and `:` escaped).
fn query_value(text: &str) -> String {
    support::enc(text)
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    WebSocket,
    Poll,
}

/// Random (seeded) publishes to three durable topics and the user, reads, reconnects and server
/// restarts on one SQLite file, over WebSocket and long-poll, the client keeping its own resume
/// point: every topic's tseqs and the user's seqs come exactly once, in order.
#[tokio::test]
async fn websocket_and_poll_resume_every_topic_exactly_across_reconnects_and_restarts() {
    for transport in [Transport::WebSocket, Transport::Poll] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let mut server = TestServer::with_store(support::sqlite(&path, Retention::default())).await;
        let token = token_for_rooms("alice", "s1");
        let topics = "topics=room:1,room:2,room:3";
        let mut rng = StdRng::seed_from_u64(42);
        let mut published: BTreeMap<&str, u64> = BTreeMap::new();
        let (mut seqs, mut got, mut position) = (0, Got::default(), Position::default());
        let mut ws: Option<crate::websocket::Ws> = None;
        if let Transport::WebSocket = transport {
            let (socket, hello) = connect_ws(&server, &token, topics, &position).await;
            position.take(&mut got, &hello);
            ws = Some(socket);
        }
        for round in 0..25 {
            for _ in 0..rng.random_range(0..5) {
                if rng.random_range(0..6) == 0 {
                    seqs += 1;
                    server.notify_user("alice", json!(round)).await;
                } else {
                    let topic = ROOMS[rng.random_range(0..ROOMS.len())];
                    *published.entry(topic).or_default() += 1;
                    publish_durable(&server, topic, published[topic]).await;
                }
            }
            match transport {
                Transport::WebSocket => {
                    let socket = ws.as_mut().unwrap();
                    for _ in 0..rng.random_range(0..4) {
                        let Ok(Some(Ok(frame))) =
                            tokio::time::timeout(Duration::from_millis(200), socket.next()).await
                        else {
                            break;
                        };
                        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
                            position.take(&mut got, &serde_json::from_str(&text).unwrap());
                        }
                    }
                }
                Transport::Poll => {
                    let query = if position.epoch.is_empty() {
                        format!("timeout=0&{topics}")
                    } else {
                        format!(
                            "timeout=0&{topics}&after={}&epoch={}&positions={}",
                            position.seq,
                            position.epoch,
                            query_value(&position.positions_param())
                        )
                    };
                    let (status, answer) = server.poll(&token, &query).await;
                    assert_eq!(status, 200, "{answer}");
                    take_poll_answer(&mut position, &mut got, &answer);
                }
            }
            let restart = rng.random_bool(0.15);
            if restart {
                ws = None;
                server.shutdown().await;
                server = TestServer::with_store(support::sqlite(&path, Retention::default())).await;
            }
            if let Transport::WebSocket = transport
                && (restart || rng.random_bool(0.3))
            {
                let (socket, hello) = connect_ws(&server, &token, topics, &position).await;
                position.take(&mut got, &hello);
                ws = Some(socket);
            }
        }
        // Drain: once more from the resume point, until quiet.
        match transport {
            Transport::WebSocket => {
                let socket = ws.as_mut().unwrap();
                while let Ok(Some(Ok(frame))) = tokio::time::timeout(QUIET, socket.next()).await {
                    if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
                        position.take(&mut got, &serde_json::from_str(&text).unwrap());
                    }
                }
            }
            Transport::Poll => loop {
                let query = format!(
                    "timeout=0&{topics}&after={}&epoch={}&positions={}",
                    position.seq,
                    position.epoch,
                    query_value(&position.positions_param())
                );
                let (_, answer) = server.poll(&token, &query).await;
                let before = (got.seqs.len(), got.tseqs.values().map(Vec::len).sum::<usize>());
                take_poll_answer(&mut position, &mut got, &answer);
                if before == (got.seqs.len(), got.tseqs.values().map(Vec::len).sum::<usize>()) {
                    break;
                }
            },
        }
        for topic in ROOMS {
            let expected: Vec<u64> = (1..=published.get(topic).copied().unwrap_or(0)).collect();
            assert_eq!(got.tseqs.get(topic).cloned().unwrap_or_default(), expected, "{transport:?} {topic}");
        }
        assert_eq!(got.seqs, (1..=seqs).collect::<Vec<_>>(), "{transport:?}");
    }
}

fn take_poll_answer(position: &mut Position, got: &mut Got, answer: &Value) {
    position.epoch = answer["epoch"].as_str().unwrap().to_owned();
    for notification in answer["notifications"].as_array().unwrap() {
        let mut event = notification.clone();
        event["event"] = json!("notification");
        position.take(got, &event);
    }
    for topic_event in answer["topic"].as_array().into_iter().flatten() {
        let mut event = topic_event.clone();
        event["event"] = json!("topic");
        position.take(got, &event);
    }
    assert!(answer.get("topic_resets").is_none(), "{answer}");
    position.seq = answer["last_seq"].as_u64().unwrap();
    for (topic, tseq) in answer["positions"].as_object().into_iter().flatten() {
        position.topics.insert(topic.clone(), tseq.as_u64().unwrap());
    }
}

/// Opens a WebSocket that listens to `topics`, resuming from `position` once it has an epoch.
async fn connect_ws(
    server: &TestServer,
    token: &str,
    topics: &str,
    position: &Position,
) -> (crate::websocket::Ws, Value) {
    let query = if position.epoch.is_empty() {
        topics.to_owned()
    } else {
        format!("{topics}&last_event_id={}&epoch={}", query_value(&position.resume_id()), position.epoch)
    };
    crate::websocket::connect(server, token, &query).await
}
