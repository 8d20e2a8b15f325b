//! Query parameters and the `X-Herald-Client` header read the same way on every route: unknown
//! parameters are refused (400 `invalid_query`), a bad number gets the parameter's own code, an
//! empty number is as if absent, and an empty client id is refused.

use crate::support;

use serde_json::{Value, json};
use support::{TestServer, answer, assert_error};

on_both_stream_paths! {
    async fn a_stream_refuses_unknown_query_parameters_and_takes_its_own(path: StreamPath) {
        let server = TestServer::start().await.via(path);
        let token = server.token("alice", None);
        for query in ["foo=1", "last_event_id=0&lastEventId=0", "after=0"] {
            assert_error(&server.stream_refused(Some(&token), query, None).await, 400, "invalid_query");
        }
        // Everything herald.js and herald-client send.
        let (_tab, hello) = server.connect(&token, &format!("token={token}&last_event_id=&epoch=&client=&inbox=1")).await;
        assert_eq!(hello["last_seq"], 0);
        assert_eq!(server.present_clients("alice").await.len(), 1);
    }
}

#[tokio::test]
async fn poll_and_websocket_refuse_unknown_query_parameters() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    for query in ["timeout=0&foo=1", "timeout=0&afer=3", "timeout=0&last_event_id=0"] {
        assert_error(&server.poll(&token, query).await, 400, "invalid_query");
    }
    let ws = |query: &'static str| {
        let request = server.http.get(format!("{}/v1/ws?{query}", server.url)).bearer_auth(&token);
        async move { answer(request.send().await.unwrap()).await }
    };
    assert_error(&ws("foo=1").await, 400, "invalid_query");
    assert_error(&ws("after=1").await, 400, "invalid_query");
    // Known ones only: the request goes on to ask for a WebSocket handshake.
    assert_error(&ws("last_event_id=0&epoch=e&client=&inbox=0").await, 400, "websocket_required");
    // Everything herald.js and herald-client send on a poll.
    let (status, body) = server
        .poll(&token, &format!("token={token}&after=&epoch=&client=&timeout=0&inbox=1&inbox_version=0"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(server.stored("alice").await.is_empty());
}

#[tokio::test]
async fn deleting_one_notification_refuses_unknown_query_parameters() {
    let server = TestServer::start().await;
    assert_eq!(server.notify_user("alice", json!(1)).await, 1);
    let token = server.token("alice", None);
    let delete_own = |query: &'static str| {
        let request = server.http.delete(format!("{}/v1/inbox/1{query}", server.url)).bearer_auth(&token);
        async move { answer(request.send().await.unwrap()).await }
    };
    assert_error(&delete_own("?all_up_to=5").await, 400, "invalid_query");
    assert_error(&server.delete("/v1/users/alice/inbox/1?foo=1").await, 400, "invalid_query");
    assert_eq!(server.stored("alice").await.len(), 1, "nothing was deleted");
    let (status, body) = delete_own("?token=").await;
    assert_eq!(status, 200, "{body}");
    assert!(server.stored("alice").await.is_empty());
}

#[tokio::test]
async fn a_bad_number_gets_its_own_code_and_an_empty_one_is_absent_on_every_route() {
    let server = TestServer::start().await;
    for data in 1..=3 {
        server.notify_user("alice", json!(data)).await;
    }
    let token = server.token("alice", None);
    let own_inbox = |query: String| {
        let request = server.http.get(format!("{}/v1/inbox?{query}", server.url)).bearer_auth(&token);
        async move { answer(request.send().await.unwrap()).await }
    };
    let server = &server;
    let stored = |query: &str| {
        let path = format!("/v1/users/alice/notifications?{query}");
        async move { server.get(&path).await }
    };

    assert_error(&stored("after=x").await, 400, "invalid_after");
    assert_error(&stored("after=-1").await, 400, "invalid_after");
    assert_error(&stored("limit=x").await, 400, "invalid_limit");
    assert_error(&stored("limit=0").await, 400, "invalid_limit");
    assert_error(&server.poll(&token, "after=x&timeout=0").await, 400, "invalid_after");
    assert_error(&own_inbox("before=x".into()).await, 400, "invalid_before");
    assert_error(&own_inbox("limit=x".into()).await, 400, "invalid_limit");

    let seqs = |body: &Value| -> Vec<u64> {
        body["notifications"].as_array().unwrap().iter().map(|n| n["seq"].as_u64().unwrap()).collect()
    };
    // Empty is absent: every stored notification, the default page, a poll from the newest.
    let (status, body) = stored("after=&limit=").await;
    assert_eq!((status, seqs(&body)), (200, vec![1, 2, 3]), "{body}");
    let (status, body) = own_inbox("before=&limit=".into()).await;
    assert_eq!((status, seqs(&body)), (200, vec![3, 2, 1]), "{body}");
    // No `after`: a poll from the newest seq.
    let (status, body) = server.poll(&token, "after=&timeout=0").await;
    assert_eq!((status, seqs(&body), &body["last_seq"]), (200, vec![], &json!(3)), "{body}");
    // No `timeout`: the default wait, over at once since notifications are retained after 1.
    let (status, body) = server.poll(&token, "after=1&timeout=").await;
    assert_eq!((status, seqs(&body)), (200, vec![2, 3]), "{body}");
}

#[tokio::test]
async fn an_empty_x_herald_client_is_400_invalid_id() {
    let server = TestServer::start().await;
    server.notify_user("alice", json!(1)).await;
    let token = server.token("alice", None);
    for value in ["", "  "] {
        let mark = server
            .http
            .post(format!("{}/v1/inbox/mark", server.url))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("x-herald-client", value)
            .body(r#"{"seqs":[1],"as":"read"}"#)
            .send()
            .await
            .unwrap();
        assert_error(&answer(mark).await, 400, "invalid_id");
        let delete = server
            .http
            .delete(format!("{}/v1/inbox/1", server.url))
            .bearer_auth(&token)
            .header("x-herald-client", value)
            .send()
            .await
            .unwrap();
        assert_error(&answer(delete).await, 400, "invalid_id");
    }
    let (status, body) = server.get("/v1/users/alice/inbox").await;
    assert_eq!(status, 200);
    assert_eq!(body["notifications"][0]["read_at"], Value::Null, "nothing was marked");
    assert_eq!(server.stored("alice").await.len(), 1, "nothing was deleted");
}
