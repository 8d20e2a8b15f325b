//! The client against the real server: the `Herald` that `herald serve` builds, started with
//! `herald_server::start` on 127.0.0.1:0 over a SQLite store in a temp dir, in the test process,
//! spoken to over real sockets. What the fake server cannot show lives here: that the requests
//! the client sends are the ones the server understands, and that the client reads the server's
//! own answers and error codes. Topics at session and user scope, from a subscriber and from the
//! publisher, who listens to a topic, and a publish into a topic's followers' inboxes.
//!
//! Every wait is bounded ([`WAIT`]); "nothing arrives" is watched for [`QUIET`].

use std::sync::Arc;
use std::time::Duration;

use herald_client::{
    ClientError, Event, EventStream, Listener, ListenerOptions, ListeningClient, ListeningSession, Listens,
    Notification, PublishRequest, Published, Publisher, Scope, StoredScope, StreamOptions, Subscriber, To,
    TopicListeners, mint_token_with_topics,
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

fn listens(scope: Scope, topics: &[&str]) -> Listens {
    Listens { scope, topics: topics.iter().map(|t| t.to_string()).collect() }
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
    assert_eq!(answer, listens(Scope::user("alice"), &["post:42"]));

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
    assert_eq!(answer, listens(Scope::session("alice", "laptop"), &["room:1"]));

    let mut tab = open(&laptop, &[]).await;
    assert_eq!(tab.topics, ["room:1"]);
    let mut phone = open(&server.subscriber("alice", "phone", &["room:*"]), &[]).await;
    assert!(phone.topics.is_empty(), "{:?}", phone.topics);
    // A Listener posts a scope's listen at once, before it has connected.
    let mut listener = Listener::new(laptop.clone(), ListenerOptions::default());
    let answer = listener.listen_at(StoredScope::Session, &["room:2"]).await.unwrap();
    assert_eq!(answer, listens(Scope::session("alice", "laptop"), &["room:1", "room:2"]));
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
    assert_eq!(answer, listens(Scope::user("bob"), &["order:9"]));
    let answer = publisher.listen_at(&Scope::session("bob", "s1"), &["room:5"]).await.unwrap();
    assert_eq!(answer, listens(Scope::session("bob", "s1"), &["room:5"]));

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
