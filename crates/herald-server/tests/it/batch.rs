//! `POST /v1/notify/batch`: every entry published as `POST /v1/notify` would, each failing
//! alone, results in order, seqs in the order of the batch, idempotency keys per entry, and the
//! batch's own bounds.

use crate::support;

use herald_core::Retention;
use serde_json::{Value, json};
use support::{QUIET, TestServer, assert_error};

async fn batch(server: &TestServer, body: Value) -> (u16, Value) {
    server.post_api("/v1/notify/batch", body).await
}

fn seqs(results: &Value) -> Vec<Option<u64>> {
    results["results"].as_array().unwrap().iter().map(|r| r["notifications"][0]["seq"].as_u64()).collect()
}

/// Seven entries, three of them bad in three ways (an invalid id, a field no notification has,
/// a client nobody has): the four good ones are stored and delivered, in order; each bad one
/// gets the error `POST /v1/notify` would have answered, and nothing else changes.
#[tokio::test]
async fn every_entry_is_published_in_order_and_a_bad_one_fails_alone() {
    let server = TestServer::start().await;
    let (mut alice, _) = server.connect(&server.token("alice", None), "").await;
    let (status, answer) = batch(
        &server,
        json!({"notifications": [
            {"to": {"user": "alice"}, "data": "a1"},
            {"to": {"user": "bob"}, "data": "b1"},
            {"to": {"user": ""}, "data": "bad id"},
            {"to": {"user": "alice"}, "data": "a2"},
            {"to": {"user": "alice"}, "data": "a?", "colour": "red"},
            {"to": {"client": "nobody-has-it"}, "data": "c"},
            {"to": {"user": "alice"}, "type": "message.new", "data": "a3"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(seqs(&answer), [Some(1), Some(1), None, Some(2), None, None, Some(3)]);
    assert_eq!(answer["failed"], 3);
    let results = &answer["results"];
    assert_eq!(results[0], json!({"notifications": [{"user": "alice", "seq": 1}], "delivered": 1}));
    for (i, status, code) in [(2, 400, "invalid_id"), (4, 400, "invalid_json"), (5, 404, "client_not_found")]
    {
        let error = &results[i]["error"];
        assert_eq!((error["status"].as_u64(), error["code"].as_str()), (Some(status), Some(code)), "{error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    assert!(results[4]["error"]["message"].as_str().unwrap().contains("colour"));

    for (seq, data) in [(1, "a1"), (2, "a2"), (3, "a3")] {
        assert_eq!(alice.durable(seq).await["data"], data);
    }
    alice.expect_silence(QUIET).await;
    let stored: Vec<Value> = server.stored("alice").await.iter().map(|n| n["data"].clone()).collect();
    assert_eq!(stored, ["a1", "a2", "a3"]);
    assert_eq!(server.stored("bob").await.len(), 1);
}

/// 300 entries to one user, to the memory store and to SQLite (whose writer thread commits
/// them in groups, while later entries are still being queued): seqs 1..=300 in the order of
/// the batch, and the log holds them in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_entries_get_their_seqs_in_the_order_of_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    for store in [
        support::memory(Retention::default()),
        support::sqlite(&dir.path().join("h.db"), Retention::default()),
    ] {
        one_users_entries_in_order(TestServer::with_store(store).await).await;
    }
}

async fn one_users_entries_in_order(server: TestServer) {
    let entries: Vec<Value> = (0..300).map(|i| json!({"to": {"user": "alice"}, "data": i})).collect();
    let (status, answer) = batch(&server, json!({ "notifications": entries })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["failed"], 0);
    let expected: Vec<Option<u64>> = (1..=300).map(Some).collect();
    assert_eq!(seqs(&answer), expected);
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) =
            server.get(&format!("/v1/users/alice/notifications?after={after}&limit=100")).await;
        assert_eq!(status, 200, "{page}");
        let page = page["notifications"].as_array().unwrap().clone();
        let Some(last) = page.last() else { break };
        after = last["seq"].as_u64().unwrap();
        stored.extend(page.iter().map(|n| (n["seq"].as_u64().unwrap(), n["data"].as_u64().unwrap())));
    }
    let expected: Vec<(u64, u64)> = (0..300).map(|i| (i + 1, i)).collect();
    assert_eq!(stored, expected);
}

/// Idempotency keys hold per entry: a key used twice in one batch stores once (the second
/// entry gets the first's notifications), and the same batch sent again stores nothing more.
#[tokio::test]
async fn idempotency_keys_hold_per_entry_within_and_across_batches() {
    let server = TestServer::start().await;
    let body = json!({"notifications": [
        {"to": {"user": "alice"}, "data": "x", "idempotency_key": "k1"},
        {"to": {"user": "alice"}, "data": "y", "idempotency_key": "k2"},
        {"to": {"user": "alice"}, "data": "z", "idempotency_key": "k1"},
    ]});
    let (status, first) = batch(&server, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(seqs(&first), [Some(1), Some(2), Some(1)]);
    let (status, again) = batch(&server, body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(seqs(&again), [Some(1), Some(2), Some(1)]);
    let stored: Vec<Value> = server.stored("alice").await.iter().map(|n| n["data"].clone()).collect();
    assert_eq!(stored, ["x", "y"]);
}

/// A batch with no entry, with more than 1,000, or not of the batch's shape is refused whole
/// (400) and stores nothing.
#[tokio::test]
async fn batches_out_of_bounds_or_shape_are_refused_whole() {
    let server = TestServer::start().await;
    let one = json!({"to": {"user": "alice"}, "data": 1});
    assert_error(&batch(&server, json!({"notifications": []})).await, 400, "invalid_batch");
    let too_many: Vec<Value> = (0..1001).map(|_| one.clone()).collect();
    assert_error(&batch(&server, json!({ "notifications": too_many })).await, 400, "invalid_batch");
    assert_error(&batch(&server, json!({"notifications": one})).await, 400, "invalid_json");
    assert_error(&batch(&server, json!({"notifications": [one], "extra": 1})).await, 400, "invalid_json");
    assert_error(&batch(&server, json!([one])).await, 400, "invalid_json");
    assert!(server.stored("alice").await.is_empty());
    // And a batch needs the API key like a single publish.
    let response = server
        .http
        .post(format!("{}/v1/notify/batch", server.url))
        .json(&json!({"notifications": [one]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(server.stored("alice").await.is_empty());
}
