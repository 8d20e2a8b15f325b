//! Topics over real sockets (ephemeral events): listening with `?topics=`, with
//! `POST /v1/listen` (the token's `topics` claim decides) and with `POST /v1/topics/listen`
//! (the API key decides), at client, session and user scope; `topic` events on SSE, WebSocket
//! and long-poll; `except_user`, `except_client`; unlisten; the `Prepare` hook; bounds and bad
//! input, each refused with nothing changed.

use crate::support;

use std::time::Duration;

use herald_core::Limits;
use serde_json::{Value, json};
use support::{API_KEY, QUIET, Sse, TestServer, answer, assert_error, now_unix, settings, sign};

/// A token for `user` in `session` whose `topics` claim is `topics`.
fn token_listening(user: &str, session: &str, topics: &[&str]) -> String {
    let now = now_unix();
    sign(&json!({ "sub": user, "sid": session, "iat": now, "exp": now + 3600, "topics": topics }))
}

/// A topic event published ephemerally: `(status, body)`.
async fn publish_topic(server: &TestServer, topic: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({ "to": { "topic": topic }, "type": "comment", "data": {"n": 1}, "durable": false });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    server.publish(body).await
}

/// `POST path` with a subscriber token, the tab in `X-Herald-Client`, and a JSON body.
async fn post_as_tab(
    server: &TestServer,
    path: &str,
    token: &str,
    client: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = server.http.post(format!("{}{path}", server.url)).bearer_auth(token).json(&body);
    if let Some(client) = client {
        request = request.header("x-herald-client", client);
    }
    answer(request.send().await.unwrap()).await
}

/// The next event, which must be a `topic` event; returns its data.
async fn topic_event(tab: &mut Sse) -> Value {
    let event = tab.next().await.expect("stream ended");
    assert_eq!((event.event.as_str(), event.id), ("topic", None), "{event:?}");
    event.data
}

fn client_of(hello: &Value) -> String {
    hello["client"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn three_users_listening_with_topics_get_one_event_each_and_others_none() {
    let server = TestServer::start().await;
    let mut listeners = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let token = token_listening(user, "s1", &["post:42"]);
        let (tab, hello) = server.connect(&token, "topics=post:42").await;
        assert_eq!(hello["topics"], json!(["post:42"]), "hello lists the tab's topics");
        listeners.push(tab);
    }
    // Same claim, no `?topics=`: not listening. Another topic: not this one's.
    let (mut idle, hello) = server.connect(&token_listening("dave", "s1", &["post:*"]), "").await;
    assert!(hello.get("topics").is_none(), "{hello}");
    let (mut other, _) = server.connect(&token_listening("erin", "s1", &["post:*"]), "topics=post:43").await;
    // A user stream of a listener's user gets nothing of the topic either.
    let (mut alice_plain, _) = server.connect(&server.token("alice", Some("s2")), "").await;

    let (status, body) = publish_topic(&server, "post:42", json!({})).await;
    assert_eq!((status, body), (200, json!({"notifications": [], "delivered": 3})));
    for tab in &mut listeners {
        let data = topic_event(tab).await;
        assert_eq!(data["topic"], "post:42");
        assert_eq!(data["type"], "comment");
        assert_eq!(data["data"], json!({"n": 1}));
        assert!(data["created_at"].as_str().unwrap().ends_with('Z'), "{data}");
        assert!(data.get("seq").is_none() && data.get("tseq").is_none(), "ephemeral: {data}");
        tab.expect_silence(QUIET).await;
    }
    for tab in [&mut idle, &mut other, &mut alice_plain] {
        tab.expect_silence(QUIET).await;
    }
    assert!(server.stored("alice").await.is_empty(), "a topic event is in no user's log");
}

#[tokio::test]
async fn except_user_and_except_client_leave_out_whom_they_name() {
    let server = TestServer::start().await;
    let claim = ["room:*"];
    let (mut alice1, _) = server.connect(&token_listening("alice", "s1", &claim), "topics=room:1").await;
    let (mut alice2, _) = server.connect(&token_listening("alice", "s2", &claim), "topics=room:1").await;
    let (mut bob1, bob1_hello) = server.connect(&token_listening("bob", "s1", &claim), "topics=room:1").await;
    let (mut bob2, _) = server.connect(&token_listening("bob", "s1", &claim), "topics=room:1").await;

    let (status, body) = publish_topic(&server, "room:1", json!({"except_user": "alice"})).await;
    assert_eq!((status, body["delivered"].clone()), (200, json!(2)));
    topic_event(&mut bob1).await;
    topic_event(&mut bob2).await;
    alice1.expect_silence(QUIET).await;
    alice2.expect_silence(QUIET).await;

    let (status, body) =
        publish_topic(&server, "room:1", json!({"except_client": client_of(&bob1_hello)})).await;
    assert_eq!((status, body["delivered"].clone()), (200, json!(3)));
    for tab in [&mut alice1, &mut alice2, &mut bob2] {
        topic_event(tab).await;
    }
    bob1.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_tab_listens_and_unlistens_with_its_token_and_the_claim_decides() {
    let server = TestServer::start().await;
    let token = token_listening("alice", "s1", &["post:42", "room:*"]);
    let (mut tab, hello) = server.connect(&token, "").await;
    let client = client_of(&hello);

    let (status, body) =
        post_as_tab(&server, "/v1/listen", &token, Some(&client), json!({"topics": ["room:7", "post:42"]}))
            .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"client": client, "topics": ["room:7", "post:42"], "positions": {"room:7": 0, "post:42": 0}})
        )
    );
    publish_topic(&server, "room:7", json!({})).await;
    assert_eq!(topic_event(&mut tab).await["topic"], "room:7");

    // Outside the claim: refused whole, the allowed topic named with it is not listened to.
    let forbidden =
        post_as_tab(&server, "/v1/listen", &token, Some(&client), json!({"topics": ["room:8", "post:43"]}))
            .await;
    assert_error(&forbidden, 403, "topic_forbidden");
    let (_, body) = publish_topic(&server, "room:8", json!({})).await;
    assert_eq!(body["delivered"], 0, "nothing changed");

    // Another session's tab id is not this token's tab.
    let (_, other_hello) = server.connect(&token_listening("alice", "s2", &["room:*"]), "").await;
    let not_mine = post_as_tab(
        &server,
        "/v1/listen",
        &token,
        Some(&client_of(&other_hello)),
        json!({"topics": ["room:7"]}),
    )
    .await;
    assert_error(&not_mine, 404, "client_not_found");

    let (status, body) =
        post_as_tab(&server, "/v1/unlisten", &token, Some(&client), json!({"topics": ["room:7"]})).await;
    assert_eq!((status, body), (200, json!({"client": client, "topics": ["post:42"]})));
    let (_, body) = publish_topic(&server, "room:7", json!({})).await;
    assert_eq!(body["delivered"], 0);
    tab.expect_silence(QUIET).await;
    publish_topic(&server, "post:42", json!({})).await;
    assert_eq!(topic_event(&mut tab).await["topic"], "post:42");
}

#[tokio::test]
async fn a_stream_asking_for_a_topic_outside_its_claim_is_refused_before_it_opens() {
    let server = TestServer::start().await;
    for (token, query, status, code) in [
        (server.token("alice", Some("s1")), "topics=post:1", 403, "topic_forbidden"),
        (token_listening("alice", "s1", &["room:*"]), "topics=room:1,post:1", 403, "topic_forbidden"),
        (token_listening("alice", "s1", &["room:*"]), "topics=room%201", 400, "invalid_topic"),
    ] {
        let refused = server.stream_refused(Some(&token), query, None).await;
        assert_eq!(
            (refused.0, refused.1["error"]["code"].as_str().unwrap()),
            (status, code),
            "{query}: {refused:?}"
        );
        let poll = server.poll(&token, &format!("timeout=0&{query}")).await;
        assert_error(&poll, status, code);
    }
    assert_eq!(server.presence("alice").await["sessions"], json!([]), "no tab was attached");
    // A token whose claim is not a list of patterns is not a valid token.
    let now = now_unix();
    for claim in [json!(["a b"]), json!(["a*b"]), json!("room:*")] {
        let token = sign(&json!({ "sub": "alice", "iat": now, "exp": now + 60, "topics": claim }));
        assert_error(&server.poll(&token, "timeout=0").await, 401, "invalid_token");
    }
}

#[tokio::test]
async fn the_app_backend_makes_any_tab_listen_with_the_api_key() {
    let server = TestServer::start().await;
    // No claim at all: the backend decides.
    let token = server.token("alice", Some("s1"));
    let (mut tab, hello) = server.connect(&token, "").await;
    let client = client_of(&hello);
    let (status, body) =
        server.post_api("/v1/topics/listen", json!({"topics": ["order:9"], "client": client})).await;
    assert_eq!(
        (status, body),
        (200, json!({"client": client, "topics": ["order:9"], "positions": {"order:9": 0}}))
    );
    let (_, body) = publish_topic(&server, "order:9", json!({"type": "status", "data": "shipped"})).await;
    assert_eq!(body["delivered"], 1);
    let data = topic_event(&mut tab).await;
    assert_eq!((data["type"].clone(), data["data"].clone()), (json!("status"), json!("shipped")));
    // Presence lists the tab's topics.
    let presence = server.presence("alice").await;
    assert_eq!(presence["sessions"][0]["clients"][0]["topics"], json!(["order:9"]), "{presence}");

    let (status, body) =
        server.post_api("/v1/topics/unlisten", json!({"topics": ["order:9"], "client": client})).await;
    assert_eq!((status, body), (200, json!({"client": client, "topics": []})));
    let (_, body) = publish_topic(&server, "order:9", json!({})).await;
    assert_eq!(body["delivered"], 0);

    assert_error(
        &server.post_api("/v1/topics/listen", json!({"topics": ["a"], "client": "nobody"})).await,
        404,
        "client_not_found",
    );
    assert_error(
        &server.post_api("/v1/topics/listen", json!({"topics": ["a"], "session": "s1"})).await,
        400,
        "invalid_target",
    );
    // The subscriber route with the API key, and the publisher route with a token: refused.
    assert_error(
        &post_as_tab(&server, "/v1/topics/listen", &token, None, json!({"topics": ["a"], "client": client}))
            .await,
        401,
        "invalid_api_key",
    );
    assert_error(
        &post_as_tab(&server, "/v1/listen", API_KEY, Some(&client), json!({"topics": ["a"]})).await,
        401,
        "invalid_token",
    );
}

#[tokio::test]
async fn websocket_and_poll_tabs_get_topic_events_too() {
    let server = TestServer::start().await;
    let token = token_listening("alice", "s1", &["room:*"]);
    let (mut ws, hello) = crate::websocket::connect(&server, &token, "topics=room:1").await;
    assert_eq!(hello["topics"], json!(["room:1"]));
    // A poller's first poll is its handshake; its client is parked with its queue between polls.
    let (status, first) = server.poll(&token, "timeout=0&topics=room:1").await;
    assert_eq!((status, first["topics"].clone()), (200, json!(["room:1"])), "{first}");
    let poller = client_of(&first);

    let (_, body) = publish_topic(&server, "room:1", json!({"data": {"text": "hi"}})).await;
    assert_eq!(body["delivered"], 2);
    let event = crate::websocket::next_event(&mut ws).await;
    assert_eq!(event["event"], "topic");
    assert_eq!((event["topic"].clone(), event["data"].clone()), (json!("room:1"), json!({"text": "hi"})));

    // Published between two polls: in the next answer, from the parked queue.
    let last_seq = first["last_seq"].as_u64().unwrap();
    let (status, next) =
        server.poll(&token, &format!("timeout=5&client={poller}&after={last_seq}&topics=room:1")).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["topic"].as_array().map(Vec::len), Some(1), "{next}");
    assert_eq!(next["topic"][0]["data"], json!({"text": "hi"}));
    assert_eq!(next["notifications"], json!([]));

    // A waiting poll is answered by a topic event.
    let waiting = {
        let token = token.clone();
        let url = format!("{}/v1/poll?timeout=20&client={poller}&after={last_seq}&topics=room:1", server.url);
        let http = server.http.clone();
        tokio::spawn(async move { answer(http.get(url).bearer_auth(token).send().await.unwrap()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_topic(&server, "room:1", json!({"data": 2})).await;
    let (status, answered) = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!((status, answered["topic"][0]["data"].clone()), (200, json!(2)), "{answered}");
}

#[tokio::test]
async fn a_reconnecting_tab_keeps_its_listens_and_a_forgotten_one_leaves_the_topic() {
    let limits = Limits { client_linger: Duration::from_millis(300), ..Limits::default() };
    let server = TestServer::with_limits(limits).await;
    let token = token_listening("alice", "s1", &["room:*"]);
    let (tab, hello) = server.connect(&token, "topics=room:1").await;
    let client = client_of(&hello);
    drop(tab);
    // Back with its id and another topic: it listens to both.
    let (mut tab, hello) = server.connect(&token, &format!("client={client}&topics=room:2")).await;
    assert_eq!((client_of(&hello), hello["topics"].clone()), (client.clone(), json!(["room:1", "room:2"])));
    publish_topic(&server, "room:1", json!({})).await;
    assert_eq!(topic_event(&mut tab).await["topic"], "room:1");
    drop(tab);
    server.wait_for_presence("alice", 0).await;

    // Away: no event is queued for it.
    let (_, body) = publish_topic(&server, "room:1", json!({})).await;
    assert_eq!(body["delivered"], 0, "{body}");
    // Forgotten after the linger: its listens go with it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.app.hub.sweep();
    assert!(server.app.hub.topic_listeners(&herald_core::Topic::new("room:1").unwrap()).is_empty());
    let (_, hello) = server.connect(&token, &format!("client={client}")).await;
    assert!(hello.get("topics").is_none(), "a forgotten tab starts with no topics: {hello}");
}

#[tokio::test]
async fn listens_over_the_bound_are_refused_whole_and_change_nothing() {
    let limits = Limits { topics_per_client_max: 2, ..Limits::default() };
    let server = TestServer::with(limits, settings(), support::memory(Default::default())).await;
    let token = token_listening("alice", "s1", &["*"]);
    let refused = server.stream_refused(Some(&token), "topics=a,b,c", None).await;
    assert_eq!((refused.0, refused.1["error"]["code"].clone()), (409, json!("too_many_topics")));

    let (_tab, hello) = server.connect(&token, "topics=a").await;
    let client = client_of(&hello);
    let over = post_as_tab(&server, "/v1/listen", &token, Some(&client), json!({"topics": ["b", "c"]})).await;
    assert_error(&over, 409, "too_many_topics");
    assert_eq!(server.presence("alice").await["sessions"][0]["clients"][0]["topics"], json!(["a"]));
    // Naming what it listens to already does not count twice.
    let (status, body) =
        post_as_tab(&server, "/v1/listen", &token, Some(&client), json!({"topics": ["a", "b"]})).await;
    assert_eq!((status, body["topics"].clone()), (200, json!(["a", "b"])));
}

#[tokio::test]
async fn a_topic_listener_that_stops_reading_is_closed_lagging_alone() {
    let limits = Limits { client_queue_len_max: 5, ..Limits::default() };
    let server = TestServer::with(limits, settings(), support::memory(Default::default())).await;
    let token = token_listening("alice", "s1", &["*"]);
    // The poller's queue is parked between polls and nobody takes from it.
    let (_, first) = server.poll(&token, "timeout=0&topics=busy").await;
    let (mut reader, _) = server.connect(&token_listening("bob", "s1", &["*"]), "topics=busy").await;
    for n in 0..6 {
        publish_topic(&server, "busy", json!({"data": n})).await;
        assert_eq!(topic_event(&mut reader).await["data"], n);
    }
    let last_seq = first["last_seq"].as_u64().unwrap();
    let (_, answer) =
        server.poll(&token, &format!("timeout=0&client={}&after={last_seq}", client_of(&first))).await;
    assert_eq!(answer["closed"], "lagging", "{answer}");
}

#[tokio::test]
async fn bad_topic_publishes_and_listens_are_refused_with_their_codes() {
    let server = TestServer::start().await;
    let token = token_listening("alice", "s1", &["*"]);
    let (_tab, hello) = server.connect(&token, "").await;
    let client = client_of(&hello);
    for (body, status, code) in [
        (json!({"to": {"topic": "a b"}, "data": 1, "durable": false}), 400, "invalid_topic"),
        (json!({"to": {"topic": ""}, "data": 1, "durable": false}), 400, "invalid_topic"),
        (json!({"to": {"topic": "a", "user": "alice"}, "data": 1, "durable": false}), 400, "invalid_target"),
        (json!({"to": {"user": "alice"}, "data": 1, "except_user": "bob"}), 400, "invalid_target"),
        (json!({"to": {"topic": "a"}, "data": 1, "durable": false, "except_user": ""}), 400, "invalid_id"),
    ] {
        assert_error(&server.publish(body.clone()).await, status, code);
    }
    for (path, client, body, status, code) in [
        ("/v1/listen", Some(client.as_str()), json!({"topics": []}), 400, "invalid_request"),
        ("/v1/listen", Some(client.as_str()), json!({"topics": ["a,b"]}), 400, "invalid_topic"),
        (
            "/v1/listen",
            Some(client.as_str()),
            json!({"topics": ["a"], "scope": "tab"}),
            400,
            "invalid_request",
        ),
        ("/v1/listen", None, json!({"topics": ["a"]}), 400, "missing_client"),
        ("/v1/unlisten", Some(""), json!({"topics": ["a"]}), 400, "invalid_id"),
        ("/v1/listen", Some(client.as_str()), json!({"topic": "a"}), 400, "invalid_json"),
    ] {
        assert_error(&post_as_tab(&server, path, &token, client, body.clone()).await, status, code);
    }
    let many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    let too_many = post_as_tab(&server, "/v1/unlisten", &token, Some(&client), json!({"topics": many})).await;
    assert_error(&too_many, 409, "too_many_topics");
    assert_eq!(server.presence("alice").await["sessions"][0]["clients"][0]["topics"], json!([]));
}

/// Hides the text from everyone but its author, named in the event's data.
struct AuthorOnly;

impl herald_core::Prepare for AuthorOnly {
    fn prepare(&self, user: &herald_core::UserId, event: &herald_core::TopicEvent) -> herald_core::Prepared {
        let data: Value = serde_json::from_str(event.data.get()).unwrap();
        if data["author"] == user.as_str() {
            herald_core::Prepared::Keep
        } else if data["secret"] == true {
            herald_core::Prepared::Drop
        } else {
            let redacted = json!({"author": data["author"], "text": "…"}).to_string();
            herald_core::Prepared::Rewrite(std::sync::Arc::from(
                serde_json::value::RawValue::from_string(redacted).unwrap(),
            ))
        }
    }
}

#[tokio::test]
async fn an_embedding_apps_prepare_hook_shapes_each_users_events() {
    let server = TestServer::start().await;
    assert!(server.app.notifier.set_prepare(std::sync::Arc::new(AuthorOnly)));
    let claim = ["room:*"];
    let (mut alice, _) = server.connect(&token_listening("alice", "s1", &claim), "topics=room:1").await;
    let (mut bob1, _) = server.connect(&token_listening("bob", "s1", &claim), "topics=room:1").await;
    let (mut bob2, _) = server.connect(&token_listening("bob", "s2", &claim), "topics=room:1").await;

    let (_, body) =
        publish_topic(&server, "room:1", json!({"data": {"author": "alice", "text": "hi"}})).await;
    assert_eq!(body["delivered"], 3);
    assert_eq!(topic_event(&mut alice).await["data"], json!({"author": "alice", "text": "hi"}));
    for bob in [&mut bob1, &mut bob2] {
        assert_eq!(topic_event(bob).await["data"], json!({"author": "alice", "text": "…"}));
    }
    let (_, body) = publish_topic(
        &server,
        "room:1",
        json!({"data": {"author": "alice", "text": "psst", "secret": true}}),
    )
    .await;
    assert_eq!(body["delivered"], 1, "dropped for bob's two tabs");
    assert_eq!(topic_event(&mut alice).await["data"]["text"], "psst");
    bob1.expect_silence(QUIET).await;
    bob2.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_user_who_follows_a_topic_gets_it_in_every_tab_new_ones_included() {
    let server = TestServer::start().await;
    let (mut laptop, _) = server.connect(&server.token("alice", Some("laptop")), "").await;
    let (mut phone, _) = server.connect(&server.token("alice", Some("phone")), "").await;
    let (mut bob, _) = server.connect(&server.token("bob", Some("s1")), "").await;

    let (status, body) =
        server.post_api("/v1/topics/listen", json!({"topics": ["post:42"], "user": "alice"})).await;
    assert_eq!(
        (status, body),
        (200, json!({"user": "alice", "topics": ["post:42"], "positions": {"post:42": 0}}))
    );
    let (_, body) = publish_topic(&server, "post:42", json!({})).await;
    assert_eq!(body["delivered"], 2, "both of alice's open tabs");
    topic_event(&mut laptop).await;
    topic_event(&mut phone).await;
    bob.expect_silence(QUIET).await;

    // A tab opened later, in a new session, listens too: it says so in its hello.
    let (mut tablet, hello) = server.connect(&server.token("alice", Some("tablet")), "").await;
    assert_eq!(hello["topics"], json!(["post:42"]));
    let presence = server.presence("alice").await;
    for session in presence["sessions"].as_array().unwrap() {
        assert_eq!(session["clients"][0]["topics"], json!(["post:42"]), "{presence}");
    }
    publish_topic(&server, "post:42", json!({"data": 2})).await;
    for tab in [&mut laptop, &mut phone, &mut tablet] {
        assert_eq!(topic_event(tab).await["data"], 2);
    }

    // Who listens: the user (from the store) and its three tabs, each with its node.
    let (status, body) = server.get("/v1/topics/post:42").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["topic"], &body["users"], &body["sessions"]),
        (&json!("post:42"), &json!(["alice"]), &json!([]))
    );
    let mut sessions: Vec<&str> =
        body["clients"].as_array().unwrap().iter().map(|c| c["session"].as_str().unwrap()).collect();
    sessions.sort_unstable();
    assert_eq!(sessions, ["laptop", "phone", "tablet"], "{body}");
    assert_eq!(body["clients"][0]["node"], server.app.settings.node_id.as_str());
    assert_eq!(body["truncated"], false);
    assert_error(&server.get("/v1/topics/a%20b").await, 400, "invalid_topic");

    // Unfollowed: no tab gets it any more.
    let (status, body) =
        server.post_api("/v1/topics/unlisten", json!({"topics": ["post:42"], "user": "alice"})).await;
    assert_eq!((status, body), (200, json!({"user": "alice", "topics": []})));
    let (_, body) = publish_topic(&server, "post:42", json!({})).await;
    assert_eq!(body["delivered"], 0);
    for tab in [&mut laptop, &mut phone, &mut tablet] {
        tab.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn a_session_listens_until_it_is_closed_and_scopes_add_up_without_doubles() {
    let server = TestServer::start().await;
    let token = token_listening("alice", "s1", &["room:*"]);
    let (mut tab1, hello1) = server.connect(&token, "topics=room:1").await;
    let (mut tab2, _) = server.connect(&token, "").await;
    let (mut other_session, _) = server.connect(&token_listening("alice", "s2", &["room:*"]), "").await;

    // The session scope, from the tab's own token: both tabs of s1, not s2.
    let (status, body) =
        post_as_tab(&server, "/v1/listen", &token, None, json!({"topics": ["room:1"], "scope": "session"}))
            .await;
    assert_eq!(
        (status, body),
        (200, json!({"user": "alice", "session": "s1", "topics": ["room:1"], "positions": {"room:1": 0}}))
    );
    let forbidden =
        post_as_tab(&server, "/v1/listen", &token, None, json!({"topics": ["post:1"], "scope": "user"}))
            .await;
    assert_error(&forbidden, 403, "topic_forbidden");
    let (_, body) = publish_topic(&server, "room:1", json!({})).await;
    assert_eq!(body["delivered"], 2, "tab1 listens at two scopes and gets it once");
    topic_event(&mut tab1).await;
    topic_event(&mut tab2).await;
    tab1.expect_silence(QUIET).await;
    other_session.expect_silence(QUIET).await;

    // tab1 stops at client scope: the session scope still covers it.
    let (status, body) = post_as_tab(
        &server,
        "/v1/unlisten",
        &token,
        Some(&client_of(&hello1)),
        json!({"topics": ["room:1"]}),
    )
    .await;
    assert_eq!((status, body["topics"].clone()), (200, json!(["room:1"])), "still listening, by its session");
    let (_, body) = publish_topic(&server, "room:1", json!({})).await;
    assert_eq!(body["delivered"], 2);
    topic_event(&mut tab1).await;
    topic_event(&mut tab2).await;
    let (_, body) = server.get("/v1/topics/room:1").await;
    assert_eq!(
        (&body["users"], &body["sessions"]),
        (&json!([]), &json!([{"user": "alice", "session": "s1"}])),
        "{body}"
    );
    assert_eq!(body["clients"].as_array().map(Vec::len), Some(2), "{body}");

    // The session is closed: its listens go with it (the store's too).
    let (status, _) = server.delete("/v1/users/alice/sessions/s1").await;
    assert_eq!(status, 200);
    tab1.expect_closed("session_closed").await;
    tab2.expect_closed("session_closed").await;
    let listens = server.app.store.listens(&herald_core::UserId::new("alice").unwrap()).await.unwrap();
    assert!(listens.is_empty(), "{listens:?}");
    let (_, body) = publish_topic(&server, "room:1", json!({})).await;
    assert_eq!(body["delivered"], 0);
}

#[tokio::test]
async fn listens_kept_in_the_store_have_their_bounds() {
    let limits = Limits { topics_per_user_max: 2, topics_per_session_max: 1, ..Limits::default() };
    let server = TestServer::with(limits, settings(), support::memory(Default::default())).await;
    let (status, _) =
        server.post_api("/v1/topics/listen", json!({"topics": ["a", "b"], "user": "alice"})).await;
    assert_eq!(status, 200);
    let over = server.post_api("/v1/topics/listen", json!({"topics": ["c"], "user": "alice"})).await;
    assert_error(&over, 409, "too_many_topics");
    let over = server
        .post_api("/v1/topics/listen", json!({"topics": ["a", "b"], "user": "alice", "session": "s1"}))
        .await;
    assert_error(&over, 409, "too_many_topics");
    let (status, body) =
        server.post_api("/v1/topics/listen", json!({"topics": ["b", "a"], "user": "alice"})).await;
    assert_eq!((status, body["topics"].clone()), (200, json!(["a", "b"])), "nothing new: not over");
}

#[tokio::test]
async fn a_publish_to_the_followers_puts_one_notification_in_each_followers_inbox() {
    let server = TestServer::start().await;
    for user in ["alice", "bob", "carol"] {
        let (status, _) =
            server.post_api("/v1/topics/listen", json!({"topics": ["post:42"], "user": user})).await;
        assert_eq!(status, 200);
    }
    // Dave listens in one session only: a session is not a follower.
    let (status, _) = server
        .post_api("/v1/topics/listen", json!({"topics": ["post:42"], "user": "dave", "session": "s1"}))
        .await;
    assert_eq!(status, 200);
    let (mut alice, _) = server.connect(&server.token("alice", Some("laptop")), "").await;

    let body = json!({"to": {"topic": "post:42"}, "inbox": true, "type": "comment", "data": {"n": 1},
        "except_user": "carol", "idempotency_key": "comment-1"});
    let (status, answer) = server.publish(body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["notifications"], json!([{"user": "alice", "seq": 1}, {"user": "bob", "seq": 1}]));
    let event = alice.next().await.expect("stream ended");
    assert_eq!(
        (event.event.as_str(), event.id),
        ("notification", Some(1)),
        "a durable notification, not a topic event"
    );
    for (user, stored) in [("alice", 1), ("bob", 1), ("carol", 0), ("dave", 0)] {
        let (_, page) = server.get(&format!("/v1/users/{user}/notifications")).await;
        assert_eq!(page["notifications"].as_array().unwrap().len(), stored, "{user}: {page}");
    }
    let (_, counts) = server.get("/v1/users/bob/inbox/counts").await;
    assert_eq!(counts["counts"]["unread"], 1, "{counts}");
    // The same key again: the first answer, nothing stored twice.
    let (status, again) = server.publish(body).await;
    assert_eq!((status, &again["notifications"]), (200, &answer["notifications"]));
    let (_, page) = server.get("/v1/users/bob/notifications").await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 1);

    // Refused, nothing stored: ephemeral, inbox without a topic, a topic nobody follows is fine.
    let ephemeral =
        server.publish(json!({"to": {"topic": "post:42"}, "inbox": true, "durable": false})).await;
    assert_error(&ephemeral, 400, "invalid_request");
    let no_topic = server.publish(json!({"to": {"user": "alice"}, "inbox": true})).await;
    assert_error(&no_topic, 400, "invalid_target");
    let (status, nobody) = server.publish(json!({"to": {"topic": "post:7"}, "inbox": true})).await;
    assert_eq!((status, &nobody["notifications"]), (200, &json!([])));
    let (_, page) = server.get("/v1/users/alice/notifications").await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 1);
}

/// More followers than one publish takes: 202 with a job, done in the background chunk by
/// chunk; every follower gets exactly one notification, the excepted author none, a session
/// listener none; the job reports its progress and the same key answers the same job.
#[tokio::test]
async fn a_publish_to_more_followers_than_one_publish_takes_runs_as_a_job() {
    let server = TestServer::start().await;
    let topic = herald_core::Topic::new("post:1").unwrap();
    let bounds = herald_core::ListenBounds { user_topics_max: 10, session_topics_max: 10, sessions_max: 5 };
    let followers = herald_core::notification::FOLLOWERS_PER_PUBLISH_MAX + 2_500;
    for n in 0..followers {
        let user = herald_core::UserId::new(format!("u{n:05}")).unwrap();
        server.app.store.listen(&user, None, std::slice::from_ref(&topic), bounds, 0).await.unwrap();
    }
    let session_only = herald_core::UserId::new("s-only").unwrap();
    let session = herald_core::SessionId::new("s1").unwrap();
    server
        .app
        .store
        .listen(&session_only, Some(&session), std::slice::from_ref(&topic), bounds, 0)
        .await
        .unwrap();

    let body = json!({"to": {"topic": "post:1"}, "inbox": true, "data": {"n": 1}, "except_user": "u00007",
        "idempotency_key": "big-1"});
    let (status, answer) = server.publish(body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let job = answer["job"].as_str().unwrap().to_owned();
    let (status, again) = server.publish(body).await;
    assert_eq!((status, again["job"].as_str()), (202, Some(job.as_str())), "the same key, the same job");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let progress = loop {
        let (status, progress) = server.get(&format!("/v1/jobs/{job}")).await;
        assert_eq!(status, 200, "{progress}");
        if progress["done"] == true {
            break progress;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job did not finish: {progress}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(progress["stored"], followers as u64 - 1, "{progress}");
    assert_eq!(progress["topic"], "post:1");
    for n in 0..followers {
        let user = herald_core::UserId::new(format!("u{n:05}")).unwrap();
        let page = server.app.store.read_after(&user, 0, 10).await.unwrap();
        let expected = if n == 7 { 0 } else { 1 };
        assert_eq!(page.notifications.len(), expected, "{user}");
    }
    assert!(server.app.store.read_after(&session_only, 0, 10).await.unwrap().notifications.is_empty());
    assert_error(&server.get("/v1/jobs/nope").await, 404, "job_not_found");
}
