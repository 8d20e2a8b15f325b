//! The inbox over real sockets: every route for subscribers and publishers, the `inbox` event on
//! SSE, WebSocket and long-poll (to the user's other tabs and sessions, not to the client that
//! made the change, not to other users), counts that stay exact while many tasks mark, delete
//! and publish at once, retention and deletion, and bad input that changes nothing.

use crate::support;

use std::time::Duration;

use futures::StreamExt;
use herald_core::notification::now_ms;
use herald_core::{Limits, Retention};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::{API_KEY, EVENT_WAIT, QUIET, Sse, TestServer, answer, assert_error, enc, sqlite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Who calls a route: a subscriber (token) or a publisher (API key), optionally naming the
/// client that makes the change.
#[derive(Clone, Copy)]
struct Caller<'a> {
    bearer: &'a str,
    client: Option<&'a str>,
}

fn subscriber(token: &str) -> Caller<'_> {
    Caller { bearer: token, client: None }
}

const PUBLISHER: Caller<'static> = Caller { bearer: API_KEY, client: None };

impl TestServer {
    async fn call(
        &self,
        caller: Caller<'_>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(caller.bearer);
        if let Some(client) = caller.client {
            request = request.header("x-herald-client", client);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.unwrap()).await
    }

    async fn inbox_get(&self, caller: Caller<'_>, path: &str) -> Value {
        let (status, body) = self.call(caller, reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn inbox_mark(&self, caller: Caller<'_>, base: &str, body: Value) -> Value {
        let (status, answer) =
            self.call(caller, reqwest::Method::POST, &format!("{base}/mark"), Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn inbox_delete(&self, caller: Caller<'_>, path: &str) -> Value {
        let (status, answer) = self.call(caller, reqwest::Method::DELETE, path, None).await;
        assert_eq!(status, 200, "DELETE {path}: {answer}");
        answer
    }

    /// The counts of `user`, as its publisher sees them.
    async fn counts_of(&self, user: &str) -> Value {
        self.inbox_get(PUBLISHER, &format!("/v1/users/{}/inbox/counts", enc(user))).await["counts"].clone()
    }

    /// Every item of `status` of `user`'s inbox, newest first, following `next_before`.
    async fn list_all(&self, user: &str, status: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut before = String::new();
        loop {
            let path = format!("/v1/users/{}/inbox?status={status}&limit=100{before}", enc(user));
            let page = self.inbox_get(PUBLISHER, &path).await;
            items.extend(page["notifications"].as_array().unwrap().iter().cloned());
            match page["next_before"].as_u64() {
                Some(next) => before = format!("&before={next}"),
                None => return items,
            }
        }
    }

    /// `[total, unread, unseen, archived]` of `user` counted from scratch from the listed items.
    async fn recount(&self, user: &str) -> [u64; 4] {
        let inbox = self.list_all(user, "all").await;
        let archived = self.list_all(user, "archived").await;
        let unread = inbox.iter().filter(|i| i["read_at"].is_null()).count() as u64;
        let unseen = inbox.iter().filter(|i| i["seen_at"].is_null()).count() as u64;
        [inbox.len() as u64, unread, unseen, archived.len() as u64]
    }
}

fn numbers(counts: &Value) -> [u64; 4] {
    ["total", "unread", "unseen", "archived"]
        .map(|k| counts[k].as_u64().unwrap_or_else(|| panic!("{counts}")))
}

fn seqs_of(items: &Value) -> Vec<u64> {
    items.as_array().unwrap().iter().map(|i| i["seq"].as_u64().unwrap()).collect()
}

/// The next event, which must be `inbox`; its data.
async fn inbox_event(sse: &mut Sse) -> Value {
    let event = sse.next().await.expect("stream ended");
    assert_eq!((event.event.as_str(), event.id), ("inbox", None), "{event:?}");
    event.data
}

async fn publish_typed(server: &TestServer, user: &str, kind: &str) -> u64 {
    let (status, body) =
        server.publish(json!({ "to": { "user": user }, "type": kind, "data": { "k": kind } })).await;
    assert_eq!(status, 200, "{body}");
    body["notifications"][0]["seq"].as_u64().unwrap()
}

#[tokio::test]
async fn a_subscriber_lists_counts_marks_and_deletes_its_inbox() {
    let server = TestServer::start().await;
    for n in 1..=6 {
        publish_typed(&server, "alice", if n % 2 == 0 { "even" } else { "odd" }).await;
    }
    publish_typed(&server, "bob", "odd").await;
    let token = server.token("alice", None);
    let me = subscriber(&token);

    let page = server.inbox_get(me, "/v1/inbox").await;
    assert_eq!(seqs_of(&page["notifications"]), [6, 5, 4, 3, 2, 1]);
    assert_eq!(page["next_before"], Value::Null);
    let first = &page["notifications"][0];
    assert_eq!(first["type"], "even");
    assert_eq!(first["data"], json!({ "k": "even" }));
    assert!(first["created_at"].is_string());
    for state in ["seen_at", "read_at", "archived_at"] {
        assert_eq!(first[state], Value::Null, "{first}");
    }
    assert_eq!(numbers(&page["counts"]), [6, 6, 6, 0]);
    assert!(page["counts"]["version"].as_u64().unwrap() > 0);
    let counts = server.inbox_get(me, "/v1/inbox/counts").await;
    assert_eq!(counts["counts"], page["counts"]);

    // Pages and filters.
    let first_two = server.inbox_get(me, "/v1/inbox?limit=2").await;
    assert_eq!(
        (seqs_of(&first_two["notifications"]), first_two["next_before"].as_u64()),
        (vec![6, 5], Some(5))
    );
    let next = server.inbox_get(me, "/v1/inbox?limit=2&before=5").await;
    assert_eq!(seqs_of(&next["notifications"]), [4, 3]);
    let odd = server.inbox_get(me, "/v1/inbox?type=odd").await;
    assert_eq!(seqs_of(&odd["notifications"]), [5, 3, 1]);
    let default_limit = {
        for _ in 0..21 {
            publish_typed(&server, "carol", "t").await;
        }
        server.inbox_get(subscriber(&server.token("carol", None)), "/v1/inbox").await
    };
    assert_eq!(default_limit["notifications"].as_array().unwrap().len(), 20, "20 by default");
    assert_eq!(default_limit["next_before"], 2);

    // Marks: the answer is the event, with the changed seqs and the new counts.
    let read = server.inbox_mark(me, "/v1/inbox", json!({ "seqs": [1, 2, 99], "as": "read" })).await;
    assert_eq!((read["op"].as_str(), read["as"].as_str()), (Some("mark"), Some("read")));
    assert_eq!((read["seqs"].clone(), read["changed"].clone()), (json!([1, 2]), json!(2)));
    assert!(read["at"].is_string());
    assert_eq!(numbers(&read["counts"]), [6, 4, 4, 0]);
    let seen = server.inbox_mark(me, "/v1/inbox", json!({ "all_up_to": 4, "as": "seen" })).await;
    assert_eq!((seen["all_up_to"].clone(), seen["changed"].clone()), (json!(4), json!(2)));
    assert_eq!(seen.get("seqs"), None, "all_up_to gives N, not the seqs");
    assert_eq!(numbers(&seen["counts"]), [6, 4, 2, 0]);
    let archived = server.inbox_mark(me, "/v1/inbox", json!({ "seqs": [6], "as": "archived" })).await;
    assert_eq!(numbers(&archived["counts"]), [5, 3, 1, 1]);
    let again = server.inbox_mark(me, "/v1/inbox", json!({ "seqs": [6], "as": "archived" })).await;
    assert_eq!((again["seqs"].clone(), again["changed"].clone()), (json!([]), json!(0)));
    assert_eq!(again["counts"], archived["counts"], "nothing changed: same counts, same version");

    let unread = server.inbox_get(me, "/v1/inbox?status=unread").await;
    assert_eq!(seqs_of(&unread["notifications"]), [5, 4, 3]);
    let read_page = server.inbox_get(me, "/v1/inbox?status=read").await;
    assert_eq!(seqs_of(&read_page["notifications"]), [2, 1]);
    assert!(read_page["notifications"][0]["read_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(seqs_of(&server.inbox_get(me, "/v1/inbox?status=unseen").await["notifications"]), [5]);
    let archive = server.inbox_get(me, "/v1/inbox?status=archived").await;
    assert_eq!(seqs_of(&archive["notifications"]), [6]);
    assert!(archive["notifications"][0]["archived_at"].is_string());
    assert!(!seqs_of(&server.inbox_get(me, "/v1/inbox?status=all").await["notifications"]).contains(&6));

    // Deletes.
    let deleted = server.inbox_delete(me, "/v1/inbox/3").await;
    assert_eq!((deleted["op"].as_str(), deleted["seqs"].clone()), (Some("delete"), json!([3])));
    assert_eq!(numbers(&deleted["counts"]), [4, 2, 1, 1]);
    let gone = server.inbox_delete(me, "/v1/inbox/3").await;
    assert_eq!(
        (gone["seqs"].clone(), gone["changed"].clone()),
        (json!([]), json!(0)),
        "deleting twice is fine"
    );
    let all = server.inbox_delete(me, "/v1/inbox?all_up_to=2").await;
    assert_eq!((all["all_up_to"].clone(), all["changed"].clone()), (json!(2), json!(2)));
    assert_eq!(numbers(&all["counts"]), [2, 2, 1, 1]);
    assert_eq!(seqs_of(&server.inbox_get(me, "/v1/inbox").await["notifications"]), [5, 4]);
    assert_eq!(server.recount("alice").await, [2, 2, 1, 1]);
    assert_eq!(numbers(&server.counts_of("bob").await), [1, 1, 1, 0], "bob's inbox is his own");
}

#[tokio::test]
async fn a_publisher_does_the_same_for_any_user_and_the_keys_are_not_mixed_up() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        server.notify_user("dora@example.com", json!({})).await;
    }
    let base = format!("/v1/users/{}/inbox", enc("dora@example.com"));
    let page = server.inbox_get(PUBLISHER, &format!("{base}?status=unread&limit=2")).await;
    assert_eq!((seqs_of(&page["notifications"]), page["next_before"].as_u64()), (vec![3, 2], Some(2)));
    let marked = server.inbox_mark(PUBLISHER, &base, json!({ "all_up_to": 3, "as": "read" })).await;
    assert_eq!(numbers(&marked["counts"]), [3, 0, 0, 0]);
    let unmarked = server.inbox_mark(PUBLISHER, &base, json!({ "seqs": [2], "as": "unread" })).await;
    assert_eq!(numbers(&unmarked["counts"]), [3, 1, 0, 0]);
    let deleted = server.inbox_delete(PUBLISHER, &format!("{base}/1")).await;
    assert_eq!(deleted["seqs"], json!([1]));
    let all = server.inbox_delete(PUBLISHER, &format!("{base}?all_up_to=3")).await;
    assert_eq!(all["changed"], 2);
    assert_eq!(
        numbers(&server.inbox_get(PUBLISHER, &format!("{base}/counts")).await["counts"]),
        [0, 0, 0, 0]
    );

    // A subscriber token is no API key, and the API key is no subscriber token.
    let token = server.token("dora@example.com", None);
    let get = reqwest::Method::GET;
    assert_error(&server.call(subscriber(&token), get.clone(), &base, None).await, 401, "invalid_api_key");
    assert_error(&server.call(PUBLISHER, get.clone(), "/v1/inbox", None).await, 401, "invalid_token");
    let anonymous = server.http.get(format!("{}/v1/inbox/counts", server.url)).send().await.unwrap();
    assert_error(&answer(anonymous).await, 401, "missing_token");
    // The token may also come as `?token=`, as for streams.
    let (status, body) = answer(
        server.http.get(format!("{}/v1/inbox/counts?token={token}", server.url)).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, numbers(&body["counts"])), (200, [0, 0, 0, 0]));
}

/// Alice has two tabs in session s1 and one in s2, Bob one tab. A change made by one tab (named
/// in `X-Herald-Client`) reaches the other two of Alice's tabs as an `inbox` event equal to the
/// answer, not the tab that made it, and nothing reaches Bob.
#[tokio::test]
async fn inbox_events_reach_the_other_tabs_and_sessions_only() {
    let server = TestServer::start().await;
    let (s1, s2) = (server.token("alice", Some("s1")), server.token("alice", Some("s2")));
    let (mut tab1, hello1) = server.connect(&s1, "").await;
    let (mut tab2, _) = server.connect(&s1, "").await;
    let (mut other_session, _) = server.connect(&s2, "").await;
    let (mut bob, _) = server.connect(&server.token("bob", None), "").await;
    let tab1_id = hello1["client"].as_str().unwrap().to_owned();
    for seq in 1..=3 {
        assert_eq!(server.notify_user("alice", json!({})).await, seq);
    }
    for tab in [&mut tab1, &mut tab2, &mut other_session] {
        assert_eq!(tab.seqs(3).await, [1, 2, 3]);
    }

    let by_tab1 = Caller { bearer: &s1, client: Some(&tab1_id) };
    let answer = server.inbox_mark(by_tab1, "/v1/inbox", json!({ "seqs": [1, 3], "as": "read" })).await;
    assert_eq!(inbox_event(&mut tab2).await, answer);
    assert_eq!(inbox_event(&mut other_session).await, answer);
    let deleted = server.inbox_delete(by_tab1, "/v1/inbox/2").await;
    assert_eq!(inbox_event(&mut tab2).await, deleted, "a delete is told too");
    assert_eq!(inbox_event(&mut other_session).await, deleted);
    assert_eq!(numbers(&deleted["counts"]), [2, 0, 0, 0]);
    tab1.expect_silence(QUIET).await;

    // Without X-Herald-Client, every tab is told; a change that changes nothing tells no one.
    let all =
        server.inbox_mark(subscriber(&s2), "/v1/inbox", json!({ "all_up_to": 3, "as": "archived" })).await;
    for tab in [&mut tab1, &mut tab2, &mut other_session] {
        assert_eq!(inbox_event(tab).await, all);
    }
    server.inbox_mark(subscriber(&s2), "/v1/inbox", json!({ "all_up_to": 3, "as": "archived" })).await;
    // A publisher's change is told to every tab as well.
    let unarchived = server
        .inbox_mark(PUBLISHER, "/v1/users/alice/inbox", json!({ "seqs": [1], "as": "unarchived" }))
        .await;
    for tab in [&mut tab1, &mut tab2, &mut other_session] {
        assert_eq!(inbox_event(tab).await, unarchived, "the no-op mark before sent nothing");
    }
    bob.expect_silence(QUIET).await;
    // Inbox events have no `id:`: a reconnect resumes from the last notification, no reset.
    drop(tab2);
    let (mut again, hello) = server.connect_with(&s1, "", Some("3")).await;
    assert_eq!(hello.id, Some(3));
    again.expect_silence(QUIET).await;
}

/// A tab that follows the counts (`?inbox=1`) gets an `append` inbox event with the new counts
/// after every notification of its user, also one meant for another session, so that its badge
/// is exact; tabs that do not follow get none.
#[tokio::test]
async fn followers_get_the_counts_after_every_new_notification() {
    let server = TestServer::start().await;
    let (s1, s2) = (server.token("alice", Some("s1")), server.token("alice", Some("s2")));
    let (mut follower, _) = server.connect(&s1, "inbox=1").await;
    let (mut plain, _) = server.connect(&s1, "").await;
    let (mut other_session_follower, _) = server.connect(&s2, "inbox=true").await;

    let seq = server.notify_user("alice", json!({ "n": 1 })).await;
    assert_eq!(follower.durable(seq).await["data"], json!({ "n": 1 }));
    let event = inbox_event(&mut follower).await;
    assert_eq!(
        (event["op"].as_str(), event["seqs"].clone(), event["changed"].clone()),
        (Some("append"), json!([1]), json!(1))
    );
    assert_eq!(numbers(&event["counts"]), [1, 1, 1, 0]);
    assert_eq!(event["counts"], server.counts_of("alice").await);
    assert_eq!(plain.seqs(1).await, [1]);
    other_session_follower.durable(seq).await;
    assert_eq!(inbox_event(&mut other_session_follower).await, event);

    // A notification for session s1 only: the s2 follower does not get it, but its badge moves.
    let (status, body) =
        server.publish(json!({ "to": { "user": "alice", "session": "s1" }, "data": null })).await;
    assert_eq!(status, 200, "{body}");
    let appended = inbox_event(&mut other_session_follower).await;
    assert_eq!((appended["seqs"].clone(), numbers(&appended["counts"])), (json!([2]), [2, 2, 2, 0]));
    follower.durable(2).await;
    assert_eq!(inbox_event(&mut follower).await, appended);
    assert_eq!(plain.seqs(1).await, [2]);
    plain.expect_silence(QUIET).await;
    // The version orders them: later counts have a higher one.
    assert!(appended["counts"]["version"].as_u64() > event["counts"]["version"].as_u64());

    // Publishing to several users tells each user's followers their own counts.
    let (mut bob, _) = server.connect(&server.token("bob", None), "inbox=1").await;
    let (status, _) = server.publish(json!({ "to": { "users": ["alice", "bob"] }, "data": null })).await;
    assert_eq!(status, 200);
    bob.durable(1).await;
    assert_eq!(numbers(&inbox_event(&mut bob).await["counts"]), [1, 1, 1, 0]);
    follower.durable(3).await;
    assert_eq!(numbers(&inbox_event(&mut follower).await["counts"]), [3, 3, 3, 0]);
    assert_eq!(server.stream_refused(Some(&s1), "inbox=yes", None).await.0, 400, "`inbox` is 1 or 0");
}

#[tokio::test]
async fn inbox_events_on_websocket_and_long_poll() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    server.notify_user("alice", json!({})).await;

    let mut request = format!("{}/v1/ws?inbox=1", server.url.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut next_frame = async move || -> Value {
        loop {
            match tokio::time::timeout(EVENT_WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(next_frame().await["event"], "hello");

    // A long-poll waiting when the change comes answers with it.
    let waiting = {
        let (http, url, token) = (server.http.clone(), server.url.clone(), token.clone());
        tokio::spawn(async move {
            answer(
                http.get(format!("{url}/v1/poll?after=1&timeout=10&inbox=1"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        })
    };
    server.wait_for_presence("alice", 2).await;
    let marked =
        server.inbox_mark(subscriber(&token), "/v1/inbox", json!({ "seqs": [1], "as": "seen" })).await;

    let mut frame = next_frame().await;
    assert_eq!(frame.as_object_mut().unwrap().remove("event"), Some(json!("inbox")));
    assert_eq!(frame, marked, "a WebSocket frame is the event's object with \"event\":\"inbox\" first");

    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["notifications"], json!([]));
    assert_eq!(body["inbox"], json!([marked]));
    assert_eq!(body["counts"], marked["counts"], "`inbox=1` adds the counts");
    assert_eq!(body["last_seq"], 1);

    // An append, on the WebSocket of a follower: the notification, then its counts.
    server.notify_user("alice", json!({})).await;
    assert_eq!(next_frame().await["event"], "notification");
    let appended = next_frame().await;
    assert_eq!((appended["event"].as_str(), appended["op"].as_str()), (Some("inbox"), Some("append")));
    // A poll without `inbox=1` has no counts, and no `inbox` when none came.
    let (_, quiet) = server.poll(&token, "after=2&timeout=0").await;
    assert_eq!((quiet.get("counts"), quiet.get("inbox")), (None, None));
    let (_, with_counts) = server.poll(&token, "after=2&timeout=0&inbox=1").await;
    assert_eq!(numbers(&with_counts["counts"]), [2, 2, 1, 0]);
    assert_error(&server.poll(&token, "inbox=2").await, 400, "invalid_query");
}

/// A change made while a poller was between two polls: its event is not kept for it, so a poll
/// that says which counts it holds (`inbox_version`) answers at once with the newer ones
/// instead of waiting for its timeout; a poll that holds the newest waits as usual.
#[tokio::test]
async fn a_poll_behind_the_counts_answers_at_once() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    server.notify_user("alice", json!({})).await;
    let (_, first) = server.poll(&token, "after=1&timeout=0&inbox=1").await;
    let held = first["counts"]["version"].as_u64().unwrap();

    // Between polls, another tab marks it read.
    let marked =
        server.inbox_mark(subscriber(&token), "/v1/inbox", json!({ "seqs": [1], "as": "read" })).await;
    let newest = marked["counts"]["version"].as_u64().unwrap();
    assert!(newest > held);

    let started = std::time::Instant::now();
    let (status, body) =
        server.poll(&token, &format!("after=1&timeout=10&inbox=1&inbox_version={held}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at once, not after the timeout");
    assert_eq!(body["counts"], marked["counts"]);
    assert_eq!((body["notifications"].clone(), body.get("inbox")), (json!([]), None));

    // Holding the newest: it waits (here for its 1 s timeout).
    let started = std::time::Instant::now();
    let (status, body) =
        server.poll(&token, &format!("after=1&timeout=1&inbox=1&inbox_version={newest}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(900), "waited for the timeout");
    assert_eq!(body["counts"], marked["counts"]);

    assert_error(&server.poll(&token, "inbox=1&inbox_version=x").await, 400, "invalid_inbox_version");
    assert_error(&server.poll(&token, "inbox_version=3").await, 400, "invalid_inbox_version");
}

/// Bad input to each inbox route: a clear 4xx JSON error, and nothing changes (same counts,
/// same version, no event).
#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        server.notify_user("alice", json!({})).await;
    }
    let token = server.token("alice", None);
    let (mut tab, _) = server.connect(&token, "last_event_id=0").await;
    let before = server.counts_of("alice").await;
    let me = subscriber(&token);
    let post = |body: Value| server.call(me, reqwest::Method::POST, "/v1/inbox/mark", Some(body));
    let raw = |content_type: Option<&'static str>, body: &'static str| {
        let mut request =
            server.http.post(format!("{}/v1/inbox/mark", server.url)).bearer_auth(&token).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        async move { answer(request.send().await.unwrap()).await }
    };
    assert_error(&raw(Some("application/json"), "{").await, 400, "invalid_json");
    assert_error(&raw(None, r#"{"seqs":[1],"as":"read"}"#).await, 415, "unsupported_media_type");
    assert_error(
        &raw(Some("text/plain"), r#"{"seqs":[1],"as":"read"}"#).await,
        415,
        "unsupported_media_type",
    );
    assert_error(&post(json!({ "seqs": [1], "as": "read", "extra": 1 })).await, 400, "invalid_json");
    assert_error(&post(json!({ "seqs": [1], "as": "loved" })).await, 400, "invalid_json");
    assert_error(&post(json!({ "seqs": [1] })).await, 400, "invalid_json");
    assert_error(&post(json!({ "seqs": [-1], "as": "read" })).await, 400, "invalid_json");
    assert_error(&post(json!({ "seqs": "1", "as": "read" })).await, 400, "invalid_json");
    assert_error(&post(json!({ "as": "read" })).await, 400, "invalid_request");
    assert_error(&post(json!({ "seqs": [1], "all_up_to": 3, "as": "read" })).await, 400, "invalid_request");
    assert_error(&post(json!({ "seqs": [], "as": "read" })).await, 400, "invalid_request");
    assert_error(&post(json!({ "all_up_to": 3, "as": "unread" })).await, 400, "invalid_request");
    assert_error(&post(json!({ "all_up_to": 3, "as": "unarchived" })).await, 400, "invalid_request");
    let too_many: Vec<u64> = (1..=1001).collect();
    assert_error(&post(json!({ "seqs": too_many, "as": "read" })).await, 400, "too_many_seqs");
    let long_client = "c".repeat(200);
    let named = Caller { bearer: &token, client: Some(&long_client) };
    let body = Some(json!({ "seqs": [1], "as": "read" }));
    assert_error(&server.call(named, reqwest::Method::POST, "/v1/inbox/mark", body).await, 400, "invalid_id");

    let get = |path: &'static str| server.call(me, reqwest::Method::GET, path, None);
    assert_error(&get("/v1/inbox?status=new").await, 400, "invalid_status");
    assert_error(&get("/v1/inbox?limit=0").await, 400, "invalid_limit");
    assert_error(&get("/v1/inbox?limit=101").await, 400, "invalid_limit");
    assert_error(&get("/v1/inbox?limit=ten").await, 400, "invalid_limit");
    assert_error(&get("/v1/inbox?before=-3").await, 400, "invalid_before");
    assert_error(&get("/v1/inbox?type=").await, 400, "invalid_type");
    assert_error(
        &server.call(me, reqwest::Method::GET, &format!("/v1/inbox?type={}", "t".repeat(129)), None).await,
        400,
        "invalid_type",
    );
    assert_error(&get("/v1/inbox?sort=asc").await, 400, "invalid_query");
    assert_error(&get("/v1/inbox/counts?x=1").await, 400, "invalid_query");

    let delete = |path: &'static str| server.call(me, reqwest::Method::DELETE, path, None);
    assert_error(&delete("/v1/inbox/first").await, 400, "invalid_seq");
    assert_error(&delete("/v1/inbox/-1").await, 400, "invalid_seq");
    assert_error(&delete("/v1/inbox").await, 400, "invalid_all_up_to");
    assert_error(&delete("/v1/inbox?all_up_to=all").await, 400, "invalid_all_up_to");
    assert_error(&delete("/v1/inbox?all_up_to=3&also=4").await, 400, "invalid_query");
    assert_error(
        &server.call(me, reqwest::Method::PUT, "/v1/inbox/mark", None).await,
        405,
        "method_not_allowed",
    );
    let long_user = format!("/v1/users/{}/inbox", "u".repeat(129));
    assert_error(&server.call(PUBLISHER, reqwest::Method::GET, &long_user, None).await, 400, "invalid_id");

    assert_eq!(server.counts_of("alice").await, before, "nothing changed, not even the version");
    assert_eq!(server.recount("alice").await, [3, 3, 3, 0]);
    assert_eq!(tab.seqs(3).await, [1, 2, 3]);
    tab.expect_silence(QUIET).await;
}

/// Many tabs mark, unmark, archive and delete at random while a publisher publishes, for many
/// random interleavings: the counts equal a recount from scratch at the end, each change's
/// answer is plausible, and a tab that follows the counts and keeps those with the highest
/// version ends with exactly the right ones.
async fn counts_stay_exact_under_racing_changes(server: TestServer, rounds: u64) {
    let seed: u64 = rand::rng().random();
    eprintln!("counts_stay_exact_under_racing_changes: seed {seed}");
    for round in 0..rounds {
        let user = format!("racer-{round}");
        let token = server.token(&user, None);
        let (mut badge, _) = server.connect(&token, "inbox=1").await;
        for _ in 0..10 {
            server.notify_user(&user, json!({})).await;
        }
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let (http, url, token, user) =
                (server.http.clone(), server.url.clone(), token.clone(), user.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (round << 32) ^ t);
                let mut last_seq = 10;
                for _ in 0..25 {
                    let call = |method, path: String| {
                        http.request(method, format!("{url}{path}")).bearer_auth(&token)
                    };
                    let request = match rng.random_range(0..10) {
                        0..=2 => {
                            let response = http
                                .post(format!("{url}/v1/notify"))
                                .bearer_auth(API_KEY)
                                .json(&json!({ "to": { "user": user }, "data": null }))
                                .send()
                                .await
                                .unwrap();
                            let (status, body) = answer(response).await;
                            assert_eq!(status, 200, "{body}");
                            last_seq = last_seq.max(body["notifications"][0]["seq"].as_u64().unwrap());
                            continue;
                        }
                        3..=6 => {
                            let mark =
                                ["read", "unread", "seen", "archived", "unarchived"][rng.random_range(0..5)];
                            let seqs: Vec<u64> =
                                (0..rng.random_range(1..4)).map(|_| rng.random_range(1..=last_seq)).collect();
                            call(reqwest::Method::POST, "/v1/inbox/mark".into())
                                .json(&json!({ "seqs": seqs, "as": mark }))
                        }
                        7 => {
                            let mark = ["read", "seen", "archived"][rng.random_range(0..3)];
                            let n = rng.random_range(1..=last_seq);
                            call(reqwest::Method::POST, "/v1/inbox/mark".into())
                                .json(&json!({ "all_up_to": n, "as": mark }))
                        }
                        8 => call(
                            reqwest::Method::DELETE,
                            format!("/v1/inbox/{}", rng.random_range(1..=last_seq)),
                        ),
                        _ => call(
                            reqwest::Method::DELETE,
                            format!("/v1/inbox?all_up_to={}", rng.random_range(0..=last_seq / 4)),
                        ),
                    };
                    let (status, body) = answer(request.send().await.unwrap()).await;
                    assert_eq!(status, 200, "{body}");
                    let [total, unread, unseen, _] = numbers(&body["counts"]);
                    assert!(unseen <= unread && unread <= total, "seed {seed}: {body}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let counts = server.counts_of(&user).await;
        assert_eq!(
            numbers(&counts),
            server.recount(&user).await,
            "seed {seed}, round {round}: counts vs a recount"
        );

        // The badge: keep the counts with the highest version among the events received.
        let mut best: Option<Value> = None;
        while best.as_ref().map(|c| &c["version"]) != Some(&counts["version"]) {
            let event = match badge.next_within(EVENT_WAIT).await {
                Ok(Some(event)) => event,
                other => panic!("seed {seed}: the badge never reached {counts}: {other:?}, best {best:?}"),
            };
            if event.event != "inbox" {
                continue;
            }
            let version = event.data["counts"]["version"].as_u64().unwrap();
            if best.as_ref().is_none_or(|b| b["version"].as_u64().unwrap() < version) {
                best = Some(event.data["counts"].clone());
            }
        }
        assert_eq!(best.unwrap(), counts, "seed {seed}: the badge is right");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_stay_exact_under_racing_changes_in_memory() {
    let server = TestServer::start().await;
    counts_stay_exact_under_racing_changes(server, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_stay_exact_under_racing_changes_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir.path().join("herald.db"), Retention::default());
    let server = TestServer::with(Limits::default(), support::settings(), store).await;
    counts_stay_exact_under_racing_changes(server, 4).await;
}

/// `max_per_user` and age retention take what they remove off the counts, and the age pass
/// tells each user's tabs (a `prune` event with the new counts); deleted notifications are not
/// replayed to a resuming tab, which gets no `reset` for them.
#[tokio::test]
async fn retention_and_deletion_keep_the_counts_right() {
    let retention = Retention { max_age: Duration::from_secs(3600), max_per_user: 5, ..Retention::default() };
    let server = TestServer::with_retention(retention).await;
    let token = server.token("alice", None);
    let me = subscriber(&token);
    for _ in 0..4 {
        server.notify_user("alice", json!({})).await;
    }
    server.inbox_mark(me, "/v1/inbox", json!({ "seqs": [1], "as": "read" })).await;
    server.inbox_mark(me, "/v1/inbox", json!({ "seqs": [2], "as": "archived" })).await;
    assert_eq!(numbers(&server.counts_of("alice").await), [3, 2, 2, 1]);
    for _ in 0..3 {
        server.notify_user("alice", json!({})).await;
    }
    // 1 (read) and 2 (archived) went to max_per_user: 3..=7 are left, all new.
    assert_eq!(numbers(&server.counts_of("alice").await), [5, 5, 5, 0]);
    assert_eq!(server.recount("alice").await, [5, 5, 5, 0]);

    server.inbox_delete(me, "/v1/inbox/4").await;
    let (mut tab, hello) = server.connect_with(&token, "", Some("3")).await;
    assert_eq!(hello.id, Some(3));
    assert_eq!(tab.seqs(3).await, [5, 6, 7], "4 was deleted: skipped, no reset");
    assert_eq!(numbers(&server.counts_of("alice").await), [4, 4, 4, 0]);

    // An age pass, as the server's maintenance runs it (here as if three hours had passed).
    let report = server.app.notifier.inbox().prune(now_ms() + 3 * 3_600_000).await.unwrap();
    assert_eq!(report.notifications, 4);
    let event = inbox_event(&mut tab).await;
    assert_eq!((event["op"].as_str(), event["through"].as_u64()), (Some("prune"), Some(7)));
    assert_eq!(numbers(&event["counts"]), [0, 0, 0, 0]);
    assert_eq!(event["counts"], server.counts_of("alice").await);
    assert_eq!(server.recount("alice").await, [0, 0, 0, 0]);
}
