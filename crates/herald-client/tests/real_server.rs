//! The client against the real server: the `Herald` that `herald serve` builds, started with
//! `herald_server::start` on 127.0.0.1:0 over a SQLite store in a temp dir, in the test process,
//! spoken to over real sockets. What the fake server cannot show lives here: that the requests
//! the client sends are the ones the server understands, and that the client reads the server's
//! own answers and error codes. Topics at session and user scope, from a subscriber and from the
//! publisher, who listens to a topic, and a publish into a topic's followers' inboxes.
//!
//! Every wait is bounded ([`WAIT`]); "nothing arrives" is watched for [`QUIET`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_client::{
    ClientError, Event, EventStream, ListenTransport, Listener, ListenerOptions, ListeningClient,
    ListeningSession, Listens, Notification, PublishRequest, Published, Publisher, ResumePoint, Scope,
    StoredScope, StreamOptions, Subscriber, To, TopicListeners, mint_token_with_topics,
};
use herald_core::{NodeId, Retention};
use herald_server::{Herald, RunningServer, ServerSettings};
use herald_store::SqliteStore;
use serde_json::{Value, json};

const SECRET: &str = "client-test-secret-0123456789abcdef";
const API_KEY: &str = "client-test-api-key";
/// The server's `--node-id`, as `herald serve` makes it (`<hostname>:<port>`).
const NODE: &str = "client-test:7300";
/// Longest wait for an event that should come.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing (more) arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

struct Server {
    url: String,
    running: RunningServer,
    /// Holds the database until the server is stopped.
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("herald.db"), Retention::default()).unwrap();
        let settings = ServerSettings { node_id: NodeId::new(NODE).unwrap(), ..ServerSettings::default() };
        let herald = Herald::builder(Arc::new(store), SECRET, API_KEY).settings(settings).build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = herald_server::start(herald, listener).unwrap();
        Self { url: format!("http://{}", running.addr), running, _dir: dir }
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
    }

    fn publisher(&self) -> Publisher {
        Publisher::new(&self.url, API_KEY).unwrap()
    }

    /// A subscriber of `user`'s `session` whose token's `topics` claim is `topics` (none: no
    /// claim, so the tab may listen to nothing by itself).
    fn subscriber(&self, user: &str, session: &str, topics: &[&str]) -> Subscriber {
        let ttl = Duration::from_secs(3600);
        let token = mint_token_with_topics(SECRET.as_bytes(), user, Some(session), ttl, topics).unwrap();
        Subscriber::new(&self.url, token).unwrap()
    }
}

/// A tab: its stream, past its `hello`, with the hello's client id and topics (sorted).
struct Tab {
    stream: EventStream,
    client: String,
    topics: Vec<String>,
}

async fn open(subscriber: &Subscriber, topics: &[&str]) -> Tab {
    let options =
        StreamOptions { topics: topics.iter().map(|t| t.to_string()).collect(), ..Default::default() };
    let mut stream = subscriber.stream(options).await.unwrap();
    match next(&mut stream).await {
        Event::Hello { client, mut topics, .. } => {
            topics.sort();
            Tab { stream, client, topics }
        }
        other => panic!("expected hello, got {other:?}"),
    }
}

/// The next event that is not a keep-alive, within [`WAIT`].
async fn next(stream: &mut EventStream) -> Event {
    loop {
        let event = tokio::time::timeout(WAIT, stream.next_event())
            .await
            .expect("an event within the wait")
            .unwrap()
            .expect("the stream goes on");
        if event != Event::KeepAlive {
            return event;
        }
    }
}

/// Asserts that no event but keep-alives arrives for [`QUIET`].
async fn assert_quiet(tab: &mut Tab, why: &str) {
    let deadline = tokio::time::Instant::now() + QUIET;
    while let Ok(event) = tokio::time::timeout_at(deadline, tab.stream.next_event()).await {
        match event.unwrap() {
            Some(Event::KeepAlive) => {}
            other => panic!("{why}: got {other:?}"),
        }
    }
}

/// The next event of `tab`, which must be a topic event of `topic` with `data`.
async fn assert_topic_event(tab: &mut Tab, topic: &str, data: Value) {
    match next(&mut tab.stream).await {
        Event::Topic(event) => assert_eq!((event.topic.as_str(), event.data), (topic, data)),
        other => panic!("expected a topic event of {topic}, got {other:?}"),
    }
}

/// An ephemeral publish to `topic`; returns how many tabs it was handed to.
async fn publish_to_topic(publisher: &Publisher, topic: &str, data: Value) -> u64 {
    let request = PublishRequest::new(To::topic(topic), data).kind("message").ephemeral();
    publisher.publish(&request).await.unwrap().delivered
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, status: u16, code: &str) {
    let error = result.expect_err("refused");
    assert_eq!((error.status(), error.code()), (Some(status), Some(code)), "{error:?}");
}

/// An unlisten's answer: the scope's topics.
fn listens(scope: Scope, topics: &[&str]) -> Listens {
    Listens { scope, topics: topics.iter().map(|t| t.to_string()).collect(), positions: BTreeMap::new() }
}

/// A listen's answer: the scope's topics, and those `listened` (which have no durable event
/// yet) at position 0.
fn listened(scope: Scope, topics: &[&str], listened: &[&str]) -> Listens {
    let positions = listened.iter().map(|t| (t.to_string(), 0)).collect();
    Listens { positions, ..listens(scope, topics) }
}

/// A subscriber's user-scope listen reaches a tab of another session of the user, opened
/// later, whose token allows no topic; an unlisten stops it. Fails if `listen_at` sends no
/// `scope` (the server would want a tab: 400 `missing_client`), if the answer is not read as
/// the user's scope, or if the unlisten does not reach the server.
#[tokio::test]
async fn a_user_scope_listen_from_a_subscriber_reaches_a_tab_opened_later() {
    let server = Server::start().await;
    let publisher = server.publisher();
    let laptop = server.subscriber("alice", "laptop", &["post:*"]);
    let answer = laptop.listen_at(StoredScope::User, &["post:42"]).await.unwrap();
    assert_eq!(answer, listened(Scope::user("alice"), &["post:42"], &["post:42"]));

    let mut phone = open(&server.subscriber("alice", "phone", &[]), &[]).await;
    assert_eq!(phone.topics, ["post:42"], "the user's listen, in a tab opened after it");
    let mut bob = open(&server.subscriber("bob", "b1", &[]), &[]).await;
    assert_eq!(publish_to_topic(&publisher, "post:42", json!({"n": 1})).await, 1);
    assert_topic_event(&mut phone, "post:42", json!({"n": 1})).await;
    assert_quiet(&mut bob, "bob listens to nothing").await;

    // Not in the claim: the server's code, nothing changed.
    assert_refused(laptop.listen_at(StoredScope::User, &["room:1"]).await, 403, "topic_forbidden");
    let answer = laptop.unlisten_at(StoredScope::User, &["post:42"]).await.unwrap();
    assert_eq!(answer, listens(Scope::user("alice"), &[]));
    assert_eq!(publish_to_topic(&publisher, "post:42", json!({"n": 2})).await, 0);
    assert_quiet(&mut phone, "alice unlistened at user scope").await;
    server.stop().await;
}

/// A subscriber's session-scope listen reaches the session's tabs, a later one and a
/// `Listener`'s included, and no tab of another session; the session's bound is the server's
/// 409. Fails if the scope sent is not `session` (a user-scope listen would reach the phone),
/// or if the answer is not read as the token's session.
#[tokio::test]
async fn a_session_scope_listen_reaches_the_sessions_tabs_only() {
    let server = Server::start().await;
    let publisher = server.publisher();
    let laptop = server.subscriber("alice", "laptop", &["room:*"]);
    let answer = laptop.listen_at(StoredScope::Session, &["room:1"]).await.unwrap();
    assert_eq!(answer, listened(Scope::session("alice", "laptop"), &["room:1"], &["room:1"]));

    let mut tab = open(&laptop, &[]).await;
    assert_eq!(tab.topics, ["room:1"]);
    let mut phone = open(&server.subscriber("alice", "phone", &["room:*"]), &[]).await;
    assert!(phone.topics.is_empty(), "{:?}", phone.topics);
    // A Listener posts a scope's listen at once, before it has connected.
    let mut listener = Listener::new(laptop.clone(), ListenerOptions::default());
    let answer = listener.listen_at(StoredScope::Session, &["room:2"]).await.unwrap();
    assert_eq!(answer, listened(Scope::session("alice", "laptop"), &["room:1", "room:2"], &["room:2"]));
    let hello = tokio::time::timeout(WAIT, listener.next_event()).await.unwrap().unwrap();
    let Some(Event::Hello { mut topics, .. }) = hello else { panic!("{hello:?}") };
    topics.sort();
    assert_eq!(topics, ["room:1", "room:2"]);

    assert_eq!(publish_to_topic(&publisher, "room:1", json!("hi")).await, 2);
    assert_topic_event(&mut tab, "room:1", json!("hi")).await;
    let event = tokio::time::timeout(WAIT, listener.next_event()).await.unwrap().unwrap();
    assert!(
        matches!(&event, Some(Event::Topic(t)) if t.topic == "room:1" && t.data == json!("hi")),
        "{event:?}"
    );
    assert_quiet(&mut phone, "another session of the user").await;

    // The session's bound (100 topics): 98 more fill it, one more is refused whole.
    let more: Vec<String> = (3..=100).map(|n| format!("room:{n}")).collect();
    assert_eq!(laptop.listen_at(StoredScope::Session, &more).await.unwrap().topics.len(), 100);
    assert_refused(laptop.listen_at(StoredScope::Session, &["room:101"]).await, 409, "too_many_topics");
    let answer = listener.unlisten_at(StoredScope::Session, &["room:1"]).await.unwrap();
    assert_eq!(answer.scope, Scope::session("alice", "laptop"));
    assert_eq!(answer.topics.len(), 99);
    assert!(!answer.topics.contains(&"room:1".to_owned()), "{:?}", answer.topics);
    assert_eq!(publish_to_topic(&publisher, "room:1", json!("again")).await, 0);
    assert_quiet(&mut tab, "the session unlistened").await;
    server.stop().await;
}

/// The publisher makes a user, a session and a tab listen, whatever their tokens say, and
/// stops them. Fails if a scope is sent in another shape than the server's (400
/// `invalid_target`), if an answer is read as another scope, or if an unlisten is lost.
#[tokio::test]
async fn the_publisher_listens_and_unlistens_at_every_scope() {
    let server = Server::start().await;
    let publisher = server.publisher();
    // No tab of bob's is connected: user and session listens are kept all the same.
    let answer = publisher.listen_at(&Scope::user("bob"), &["order:9"]).await.unwrap();
    assert_eq!(answer, listened(Scope::user("bob"), &["order:9"], &["order:9"]));
    let answer = publisher.listen_at(&Scope::session("bob", "s1"), &["room:5"]).await.unwrap();
    assert_eq!(answer, listened(Scope::session("bob", "s1"), &["room:5"], &["room:5"]));

    let mut tab = open(&server.subscriber("bob", "s1", &[]), &[]).await;
    assert_eq!(tab.topics, ["order:9", "room:5"]);
    let answer = publisher.listen_at(&Scope::client(&tab.client), &["room:6"]).await.unwrap();
    assert_eq!(answer.scope, Scope::client(&tab.client));
    assert!(answer.topics.contains(&"room:6".to_owned()), "{answer:?}");
    for (n, topic) in ["order:9", "room:5", "room:6"].into_iter().enumerate() {
        assert_eq!(publish_to_topic(&publisher, topic, json!(n)).await, 1, "{topic}");
        assert_topic_event(&mut tab, topic, json!(n)).await;
    }

    let answer = publisher.unlisten_at(&Scope::user("bob"), &["order:9"]).await.unwrap();
    assert_eq!(answer, listens(Scope::user("bob"), &[]));
    let answer = publisher.unlisten_at(&Scope::session("bob", "s1"), &["room:5"]).await.unwrap();
    assert_eq!(answer, listens(Scope::session("bob", "s1"), &[]));
    let answer = publisher.unlisten_at(&Scope::client(&tab.client), &["room:6"]).await.unwrap();
    assert_eq!(answer, listens(Scope::client(&tab.client), &[]));
    for topic in ["order:9", "room:5", "room:6"] {
        assert_eq!(publish_to_topic(&publisher, topic, json!(topic)).await, 0, "{topic}");
    }
    assert_quiet(&mut tab, "every scope unlistened").await;

    // The server's codes; a bad id or topic refused before any request.
    assert_refused(publisher.listen_at(&Scope::client("nobody"), &["room:1"]).await, 404, "client_not_found");
    for result in [
        publisher.listen_at(&Scope::user(""), &["room:1"]).await,
        publisher.listen_at(&Scope::session("bob", ""), &["room:1"]).await,
        publisher.unlisten_at(&Scope::user("bob"), &["room 1"]).await,
    ] {
        assert!(matches!(result, Err(ClientError::InvalidArgument { .. })), "{result:?}");
    }
    server.stop().await;
}

/// `GET /v1/topics/{topic}`: who listens, at each scope. Fails if a list is not read (a
/// follower, a session or a tab missing), or a tab's node is not the server's.
#[tokio::test]
async fn topic_listeners_names_users_sessions_and_tabs() {
    let server = Server::start().await;
    let publisher = server.publisher();
    let nobody = publisher.topic_listeners("post:1").await.unwrap();
    let empty = TopicListeners {
        topic: "post:1".into(),
        users: vec![],
        sessions: vec![],
        clients: vec![],
        truncated: false,
        last_tseq: 0,
    };
    assert_eq!(nobody, empty);

    // alice follows (user scope, by the publisher) and has a tab open; bob's session s1 listens
    // (by the subscriber) with no tab; carol's tab listens by itself (client scope).
    publisher.listen_at(&Scope::user("alice"), &["post:1"]).await.unwrap();
    let alice = open(&server.subscriber("alice", "laptop", &[]), &[]).await;
    let bob = server.subscriber("bob", "s1", &["post:*"]);
    bob.listen_at(StoredScope::Session, &["post:1"]).await.unwrap();
    let carol = open(&server.subscriber("carol", "c1", &["post:1"]), &["post:1"]).await;
    // dave listens to another topic.
    let _dave = open(&server.subscriber("dave", "d1", &["post:2"]), &["post:2"]).await;

    let mut listeners = publisher.topic_listeners("post:1").await.unwrap();
    listeners.clients.sort();
    let tab = |client: &str, user: &str, session: &str| ListeningClient {
        client: client.into(),
        user: user.into(),
        session: session.into(),
        node: NODE.into(),
    };
    let mut clients = vec![tab(&alice.client, "alice", "laptop"), tab(&carol.client, "carol", "c1")];
    clients.sort();
    assert_eq!(
        listeners,
        TopicListeners {
            topic: "post:1".into(),
            users: vec!["alice".into()],
            sessions: vec![ListeningSession { user: "bob".into(), session: "s1".into() }],
            clients,
            truncated: false,
            last_tseq: 0,
        }
    );
    // A topic that cannot be a path segment, or is no topic: refused before any request.
    for topic in [".", "..", "post 1", ""] {
        let result = publisher.topic_listeners(topic).await;
        assert!(matches!(result, Err(ClientError::InvalidArgument { .. })), "{topic:?}: {result:?}");
    }
    server.stop().await;
}

/// `"inbox": true` stores one durable notification for each follower (user scope) and none for
/// a session's or a tab's listen; `except_user` leaves the author out. Fails if `inbox` is not
/// sent (the publish is then a topic event, refused or not, and stores no follower's
/// notification), if a session-scope listener got one, or if a follower's seq or notification
/// is missing.
#[tokio::test]
async fn a_followers_publish_stores_one_notification_per_follower() {
    let server = Server::start().await;
    let publisher = server.publisher();
    // alice follows from her tab's token, bob by the publisher; carol listens for a session and
    // dave in one tab: neither follows.
    let alice = server.subscriber("alice", "laptop", &["post:*"]);
    alice.listen_at(StoredScope::User, &["post:42"]).await.unwrap();
    publisher.listen_at(&Scope::user("bob"), &["post:42"]).await.unwrap();
    publisher.listen_at(&Scope::session("carol", "c1"), &["post:42"]).await.unwrap();
    let mut alice_tab = open(&alice, &[]).await;
    let mut carol_tab = open(&server.subscriber("carol", "c1", &[]), &[]).await;
    let mut dave_tab = open(&server.subscriber("dave", "d1", &["post:42"]), &["post:42"]).await;

    let data = json!({"text": "a new comment", "post": 42});
    let request = PublishRequest::new(To::topic("post:42"), data.clone()).kind("comment.new").inbox();
    let mut answer = publisher.publish(&request).await.unwrap();
    answer.notifications.sort_by(|a, b| a.user.cmp(&b.user));
    let published = |user: &str, seq| Published { user: user.into(), seq };
    assert_eq!(answer.notifications, [published("alice", 1), published("bob", 1)]);
    match next(&mut alice_tab.stream).await {
        Event::Notification(n) => {
            assert_eq!((n.seq, n.kind.as_str(), &n.data), (Some(1), "comment.new", &data));
        }
        other => panic!("expected alice's notification, got {other:?}"),
    }
    assert_quiet(&mut carol_tab, "a session-scope listener is no follower").await;
    assert_quiet(&mut dave_tab, "a tab's listener is no follower").await;
    let stored = |notifications: Vec<Notification>| -> Vec<(Option<u64>, String, Value)> {
        notifications.into_iter().map(|n| (n.seq, n.kind, n.data)).collect()
    };
    let bobs = stored(publisher.notifications("bob", None, None).await.unwrap());
    assert_eq!(bobs, [(Some(1), "comment.new".to_owned(), data.clone())]);
    for user in ["carol", "dave"] {
        assert!(publisher.notifications(user, None, None).await.unwrap().is_empty(), "{user}");
    }

    // The author (bob) left out; a topic nobody follows stores nothing.
    let reply = json!({"text": "a reply"});
    let request = PublishRequest::new(To::topic("post:42"), reply.clone()).inbox().except_user("bob");
    assert_eq!(publisher.publish(&request).await.unwrap().notifications, [published("alice", 2)]);
    assert_eq!(publisher.notifications("bob", Some(1), None).await.unwrap(), []);
    let nobody = publisher.publish(&PublishRequest::new(To::topic("post:7"), reply).inbox()).await.unwrap();
    assert!(nobody.notifications.is_empty(), "{nobody:?}");
    // The server's refusals, with their codes.
    let ephemeral = PublishRequest::new(To::topic("post:42"), json!(1)).inbox().ephemeral();
    assert_refused(publisher.publish(&ephemeral).await, 400, "invalid_request");
    let not_a_topic = PublishRequest::new(To::user("alice"), json!(1)).inbox();
    assert_refused(publisher.publish(&not_a_topic).await, 400, "invalid_target");
    server.stop().await;
}

/// A server that can be stopped and started again on the same address and the same store (its
/// in-memory state — tabs, their listens, their queues — is lost; the store's logs are kept),
/// with the topic retention given.
struct Restartable {
    store: Arc<SqliteStore>,
    addr: std::net::SocketAddr,
    running: Option<RunningServer>,
    _dir: tempfile::TempDir,
}

impl Restartable {
    async fn start(retention: Retention) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("herald.db"), retention).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Self { store, addr, running: None, _dir: dir };
        server.run(listener);
        server
    }

    fn run(&mut self, listener: tokio::net::TcpListener) {
        let settings = ServerSettings { node_id: NodeId::new(NODE).unwrap(), ..ServerSettings::default() };
        let herald = Herald::builder(self.store.clone(), SECRET, API_KEY).settings(settings).build();
        self.running = Some(herald_server::start(herald, listener).unwrap());
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
    }

    async fn restart(&mut self) {
        self.stop().await;
        self.run(tokio::net::TcpListener::bind(self.addr).await.unwrap());
    }

    fn publisher(&self) -> Publisher {
        Publisher::new(&self.url(), API_KEY).unwrap()
    }

    fn subscriber(&self, user: &str, session: &str) -> Subscriber {
        let ttl = Duration::from_secs(3600);
        let token = mint_token_with_topics(SECRET.as_bytes(), user, Some(session), ttl, &["room:*"]).unwrap();
        Subscriber::new(&self.url(), token).unwrap()
    }
}

/// What a listener yielded: each topic's tseqs and the user's seqs, in order.
#[derive(Debug, Default, PartialEq)]
struct Got {
    tseqs: BTreeMap<String, Vec<u64>>,
    seqs: Vec<u64>,
    topic_resets: Vec<(String, u64)>,
}

impl Got {
    fn take(&mut self, event: &Event) {
        match event {
            Event::Topic(event) => {
                let tseq = event.tseq.expect("only durable topic events are published here");
                self.tseqs.entry(event.topic.clone()).or_default().push(tseq);
            }
            Event::Notification(n) => self.seqs.push(n.seq.expect("durable")),
            Event::TopicReset { topic, last_tseq } => self.topic_resets.push((topic.clone(), *last_tseq)),
            Event::Hello { .. } | Event::Closed { .. } | Event::KeepAlive => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    fn count(&self) -> usize {
        self.seqs.len() + self.tseqs.values().map(Vec::len).sum::<usize>()
    }
}

/// One publish, retried until the server acknowledges it (it may be down, or restarting). The
/// idempotency key makes a retry of a publish that was stored but not answered get the first
/// answer, not a second event.
async fn publish_until_acknowledged(url: &str, request: &PublishRequest) -> herald_client::PublishResponse {
    let publisher = Publisher::new(url, API_KEY).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match publisher.publish(request).await {
            Ok(answer) => return answer,
            Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("publish {request:?}: {error}"),
        }
    }
}

fn fast_listener(subscriber: Subscriber, options: ListenerOptions) -> Listener {
    let options = ListenerOptions {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..options
    };
    Listener::new(subscriber, options)
}

/// A `Listener` with two durable topics — `room:1` named in its options, `room:2` listened to
/// through it after its hello (the listen's answer says where it starts) — and its user's
/// notifications, while the server restarts three times and a publisher goes on publishing:
/// every topic's tseqs arrive exactly once each, in order, and the user's seqs too. First, a
/// restart right after the listen, with a `room:2` event published before the listener
/// reconnects: it comes only if the listener resumes `room:2` from the listen's position (the
/// stream never gave one). Fails if the client sends no topic positions on reconnect (the
/// events published while it was away are lost), keeps no position from a listen's answer,
/// or lets a replayed event through twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_resumes_two_durable_topics_exactly_across_restarts() {
    let mut server = Restartable::start(Retention::default()).await;
    let url = server.url();
    let publisher = server.publisher();
    let topic_event = |topic: &str, n: u64| {
        PublishRequest::new(To::topic(topic), json!(n)).idempotency_key(format!("{topic}-{n}"))
    };
    // Before anyone listens: room:2 starts at 2 for the listener.
    for n in 1..=2 {
        assert_eq!(publisher.publish(&topic_event("room:2", n)).await.unwrap().topic.unwrap().tseq, n);
    }
    let options = ListenerOptions { topics: vec!["room:1".into()], ..ListenerOptions::default() };
    let mut listener = fast_listener(server.subscriber("alice", "s1"), options);
    match next_of(&mut listener).await {
        Event::Hello { positions, .. } => assert_eq!(positions, BTreeMap::from([("room:1".into(), 0)])),
        other => panic!("expected hello, got {other:?}"),
    }
    assert_eq!(listener.listen(&["room:2"]).await.unwrap(), ["room:1", "room:2"]);
    let point = listener.resume_point().unwrap();
    assert_eq!(point.positions, BTreeMap::from([("room:1".into(), 0), ("room:2".into(), 2)]), "{point:?}");
    server.restart().await;
    // The publisher's pooled connection died with the old server: a publish may meet it.
    let answer = publish_until_acknowledged(&url, &topic_event("room:2", 3)).await;
    assert_eq!(answer.topic, Some(herald_client::PublishedTopic { topic: "room:2".into(), tseq: 3 }));
    let mut got = Got::default();
    while got.tseqs.get("room:2").is_none_or(Vec::is_empty) {
        got.take(&next_of(&mut listener).await);
    }
    assert_eq!(got.tseqs["room:2"], [3], "{got:?}");

    // Now a publisher and the listener run while the server restarts.
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(Some(event)) = listener.next_event().await {
            if events.send(event).is_err() {
                break;
            }
        }
    });
    let publishing = tokio::spawn(async move {
        let (mut seqs, mut room_1, mut room_2) = (0, 0, 3);
        for i in 0..150u64 {
            match i % 3 {
                0 => {
                    seqs += 1;
                    let request =
                        PublishRequest::new(To::user("alice"), json!(i)).idempotency_key(format!("n-{i}"));
                    let answer = publish_until_acknowledged(&url, &request).await;
                    assert_eq!(answer.notifications[0].seq, seqs);
                }
                1 => {
                    room_1 += 1;
                    let answer = publish_until_acknowledged(&url, &topic_event("room:1", room_1)).await;
                    assert_eq!(answer.topic.unwrap().tseq, room_1);
                }
                _ => {
                    room_2 += 1;
                    let answer = publish_until_acknowledged(&url, &topic_event("room:2", room_2)).await;
                    assert_eq!(answer.topic.unwrap().tseq, room_2);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (seqs, room_1, room_2)
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        server.restart().await;
    }
    let (seqs, room_1, room_2) = publishing.await.unwrap();
    // room:2 from 3 on: 1 and 2 were published before the listener listened.
    let expected = (seqs + room_1 + room_2 - 2) as usize;
    while got.count() < expected {
        let Ok(event) = tokio::time::timeout(WAIT, received.recv()).await else {
            panic!(
                "missing events: expected seqs 1..={seqs}, room:1 1..={room_1}, room:2 3..={room_2}; got {got:?}"
            )
        };
        got.take(&event.expect("the listener goes on"));
    }
    // Anything more would be a duplicate.
    while let Ok(Some(event)) = tokio::time::timeout(QUIET, received.recv()).await {
        got.take(&event);
    }
    assert_eq!(got.seqs, (1..=seqs).collect::<Vec<_>>());
    assert_eq!(got.tseqs["room:1"], (1..=room_1).collect::<Vec<_>>());
    assert_eq!(got.tseqs["room:2"], (3..=room_2).collect::<Vec<_>>());
    assert!(got.topic_resets.is_empty(), "{got:?}");
    reader.abort();
    server.stop().await;
}

/// The next event of a `Listener` that is not a keep-alive, within [`WAIT`].
async fn next_of(listener: &mut Listener) -> Event {
    loop {
        let event =
            tokio::time::timeout(WAIT, listener.next_event()).await.expect("an event within the wait");
        match event.unwrap().expect("the listener goes on") {
            Event::KeepAlive => {}
            event => return event,
        }
    }
}

/// A topic's position past its retention (the server keeps 3 events a topic here): a listener
/// resuming from it gets a `topic_reset` for that topic alone, its position moves to the
/// topic's last tseq, and the other topic resumes exactly; over SSE and over long-polling.
/// Fails if the client does not read `topic_reset` (SSE event or poll answer's
/// `topic_resets`), or keeps the lost position (the next resume would be reset again).
#[tokio::test]
async fn a_position_past_retention_gets_a_topic_reset_for_that_topic_only() {
    let retention = Retention { topic_max_events: 3, ..Retention::default() };
    let mut server = Restartable::start(retention).await;
    let url = server.url();
    // Retried until acknowledged: after a restart the first publish may meet the pooled
    // connection that died with the old server.
    let publish = async |topic: &str, n: u64| {
        let request = PublishRequest::new(To::topic(topic), json!(n)).idempotency_key(format!("{topic}-{n}"));
        assert_eq!(publish_until_acknowledged(&url, &request).await.topic.unwrap().tseq, n);
    };
    for transport in [ListenTransport::Sse, ListenTransport::Poll] {
        let session = format!("{transport:?}");
        let (room_1, room_2) = (format!("room:{session}-1"), format!("room:{session}-2"));
        publish(&room_1, 1).await;
        publish(&room_2, 1).await;
        // A run that handled tseq 1 of both, kept as the app would keep it.
        let kept = ResumePoint {
            seq: 0,
            epoch: None,
            positions: BTreeMap::from([(room_1.clone(), 1), (room_2.clone(), 1)]),
        };
        for n in 2..=6 {
            publish(&room_1, n).await;
        }
        publish(&room_2, 2).await;
        let options = ListenerOptions {
            topics: vec![room_1.clone(), room_2.clone()],
            transport,
            poll_timeout_s: Some(1),
            ..ListenerOptions::resume_from(&kept)
        };
        let mut listener = fast_listener(server.subscriber("alice", &session), options);
        let mut got = Got::default();
        while got.count() < 1 {
            got.take(&next_of(&mut listener).await);
        }
        assert_eq!(got.topic_resets, [(room_1.clone(), 6)], "{transport:?}: {got:?}");
        assert_eq!(got.tseqs, BTreeMap::from([(room_2.clone(), vec![2])]), "{transport:?}");
        let point = listener.resume_point().unwrap();
        assert_eq!(
            point.positions,
            BTreeMap::from([(room_1.clone(), 6), (room_2.clone(), 2)]),
            "{transport:?}"
        );
        // It goes on after the reset: the next events of both, and no reset again after a
        // restart (the position kept is the topic's last tseq, not the lost one).
        server.restart().await;
        publish(&room_1, 7).await;
        publish(&room_2, 3).await;
        while got.count() < 3 {
            got.take(&next_of(&mut listener).await);
        }
        assert_eq!(got.tseqs[&room_1], [7], "{transport:?}");
        assert_eq!(got.tseqs[&room_2], [2, 3], "{transport:?}");
        assert_eq!(got.topic_resets.len(), 1, "{transport:?}: {got:?}");
    }
    server.stop().await;
}
