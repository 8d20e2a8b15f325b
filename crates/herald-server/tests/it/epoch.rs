//! Epochs over real sockets: `hello` names the store's epoch and a poll answer carries it; a
//! resume (`last_event_id`, `Last-Event-ID`, `after`) that gives it back with `epoch=` replays
//! exactly; one of another epoch gets `hello` from the log's last seq, `reset` and live ones
//! (also when it is ahead of the log, which is a 400 without an epoch or with the store's); a
//! resume without an epoch works as before epochs. And the stores' epochs across restarts: a
//! memory store's is new at every start, a SQLite database keeps its own until an operator
//! renews it.

use crate::support;

use herald_core::Retention;
use herald_store::SqliteStore;
use serde_json::{Value, json};
use support::{QUIET, Sse, TestServer, assert_error};

async fn publish_n(server: &TestServer, user: &str, first: u64, n: u64) {
    for seq in first..first + n {
        assert_eq!(server.notify_user(user, json!({ "n": seq })).await, seq);
    }
}

async fn expect_range(sse: &mut Sse, first: u64, count: u64) {
    for seq in first..first + count {
        assert_eq!(sse.durable(seq).await["data"], json!({ "n": seq }));
    }
}

/// The server's epoch, as its store has it.
fn epoch(server: &TestServer) -> String {
    server.app.store.epoch().to_string()
}

/// Reads the next event and checks it is `reset` with `last_seq` (also its `id:`).
async fn expect_reset(sse: &mut Sse, last_seq: u64) {
    let reset = sse.next().await.expect("reset");
    assert_eq!(
        (reset.event.as_str(), reset.id, &reset.data),
        ("reset", Some(last_seq), &json!({ "last_seq": last_seq }))
    );
}

on_both_stream_paths! {
    async fn a_resume_with_the_hellos_epoch_replays_exactly_then_live_ones(path: StreamPath) {
        let server = TestServer::start().await.via(path);
        let token = server.token("alice", None);
        let (tab, hello) = server.connect(&token, "").await;
        assert_eq!(hello["epoch"], json!(epoch(&server)), "hello names the store's epoch");
        drop(tab);

        publish_n(&server, "alice", 1, 5).await;
        let query = format!("last_event_id=2&epoch={}", hello["epoch"].as_str().unwrap());
        let (mut tab, hello) = server.connect_with(&token, &query, None).await;
        assert_eq!((hello.id, &hello.data["last_seq"]), (Some(2), &json!(5)));
        expect_range(&mut tab, 3, 3).await;
        tab.expect_silence(QUIET).await;
        publish_n(&server, "alice", 6, 1).await;
        expect_range(&mut tab, 6, 1).await;
    }
}

on_both_stream_paths! {
    async fn a_resume_with_another_epoch_gets_hello_reset_then_live_ones(path: StreamPath) {
        let server = TestServer::start().await.via(path);
        let token = server.token("alice", None);
        publish_n(&server, "alice", 1, 5).await;
        // The resume point in the query, then in the header as EventSource sends it.
        for (query, header) in [("last_event_id=2&epoch=another", None), ("epoch=another", Some("2"))] {
            let (mut tab, hello) = server.connect_with(&token, query, header).await;
            assert_eq!(
                (hello.id, &hello.data["last_seq"], &hello.data["epoch"]),
                (Some(5), &json!(5), &json!(epoch(&server))),
                "hello starts at the log's last seq, under the store's epoch"
            );
            expect_reset(&mut tab, 5).await;
            tab.expect_silence(QUIET).await;
        }
        let (mut tab, _) = server.connect(&token, "last_event_id=2&epoch=another").await;
        expect_reset(&mut tab, 5).await;
        publish_n(&server, "alice", 6, 2).await;
        expect_range(&mut tab, 6, 2).await;
        tab.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn a_resume_ahead_of_the_log_is_a_reset_with_another_epoch_and_a_400_without() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    publish_n(&server, "alice", 1, 2).await;
    let (mut tab, hello) = server.connect(&token, "last_event_id=9&epoch=another").await;
    assert_eq!((&hello["last_seq"], &hello["epoch"]), (&json!(2), &json!(epoch(&server))));
    expect_reset(&mut tab, 2).await;

    let same = format!("last_event_id=9&epoch={}", epoch(&server));
    for query in ["last_event_id=9", "last_event_id=9&epoch=", same.as_str()] {
        assert_error(&server.stream_refused(Some(&token), query, None).await, 400, "invalid_last_event_id");
    }
    // An epoch without a resume point is a new stream: nothing to reset.
    let (mut tab, hello) = server.connect(&token, "epoch=another").await;
    assert_eq!(hello["last_seq"], 2);
    tab.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_poll_carries_the_epoch_and_one_of_another_epoch_gets_a_reset() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    publish_n(&server, "alice", 1, 3).await;
    let (status, body) = server.poll(&token, "after=1&timeout=0").await;
    assert_eq!(
        (status, &body["last_seq"], &body["epoch"]),
        (200, &json!(3), &json!(epoch(&server))),
        "{body}"
    );

    let query = format!("after=1&epoch={}&timeout=0", epoch(&server));
    let (_, body) = server.poll(&token, &query).await;
    let seqs: Vec<&Value> = body["notifications"].as_array().unwrap().iter().map(|n| &n["seq"]).collect();
    assert_eq!(seqs, [&json!(2), &json!(3)], "the store's epoch: replayed after 1");
    assert_eq!(body.get("reset"), None);

    for after in [1, 50] {
        let (status, body) = server.poll(&token, &format!("after={after}&epoch=another&timeout=60")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["reset"], &body["last_seq"], &body["epoch"], &body["notifications"]),
            (&json!(true), &json!(3), &json!(epoch(&server)), &json!([])),
            "another epoch: reset at once, nothing replayed (after={after})"
        );
    }
    assert_error(&server.poll(&token, "after=50&timeout=0").await, 400, "invalid_after");
}

/// A server restarted on a memory store has forgotten everything and counts seqs from 1 again:
/// a client resuming with the epoch of the previous process gets a `reset`, whether its seq is
/// ahead of the new log (before epochs: 400) or behind it (before epochs, and still without an
/// epoch: the new log's later seqs, and never the earlier ones, under seqs the client saw).
#[tokio::test]
async fn a_restarted_memory_server_resets_clients_of_its_previous_epoch() {
    let first = TestServer::start().await;
    let token = first.token("alice", None);
    publish_n(&first, "alice", 1, 5).await;
    let old = epoch(&first);
    first.shutdown().await;

    let server = TestServer::start().await;
    assert_ne!(epoch(&server), old, "a new memory store, a new epoch");
    let (mut tab, hello) = server.connect(&token, &format!("last_event_id=5&epoch={old}")).await;
    assert_eq!((&hello["last_seq"], &hello["epoch"]), (&json!(0), &json!(epoch(&server))));
    expect_reset(&mut tab, 0).await;
    drop(tab);
    assert_error(
        &server.stream_refused(Some(&token), "last_event_id=5", None).await,
        400,
        "invalid_last_event_id",
    );

    publish_n(&server, "alice", 1, 7).await;
    let (mut tab, _) = server.connect(&token, &format!("last_event_id=5&epoch={old}")).await;
    expect_reset(&mut tab, 7).await;
    tab.expect_silence(QUIET).await;
    // Without the epoch, what a client without epochs got: 6 and 7 of the new log, as if they
    // followed its 5 of the old one.
    let (mut tab, _) = server.connect(&token, "last_event_id=5").await;
    expect_range(&mut tab, 6, 2).await;
}

/// A SQLite database keeps its epoch across restarts, so clients resume with it and lose
/// nothing; once an operator renews it (`SqliteStore::renew_epoch`, `herald reset-epoch`, after
/// putting back an older copy of the file), the same resume gets a `reset`.
#[tokio::test]
async fn a_sqlite_database_keeps_its_epoch_until_it_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let server = TestServer::with_store(support::sqlite(&path, Retention::default())).await;
    let token = server.token("alice", None);
    publish_n(&server, "alice", 1, 3).await;
    let kept = epoch(&server);
    server.shutdown().await;

    let server = TestServer::with_store(support::sqlite(&path, Retention::default())).await;
    assert_eq!(epoch(&server), kept);
    publish_n(&server, "alice", 4, 1).await;
    let (mut tab, hello) = server.connect(&token, &format!("last_event_id=2&epoch={kept}")).await;
    assert_eq!(hello["epoch"], json!(kept));
    expect_range(&mut tab, 3, 2).await;
    tab.expect_silence(QUIET).await;
    drop(tab);
    server.shutdown().await;

    let renewed = SqliteStore::renew_epoch(&path).unwrap();
    let server = TestServer::with_store(support::sqlite(&path, Retention::default())).await;
    assert_eq!(epoch(&server), *renewed);
    let (mut tab, hello) = server.connect(&token, &format!("last_event_id=2&epoch={kept}")).await;
    assert_eq!((&hello["last_seq"], &hello["epoch"]), (&json!(4), &json!(*renewed)));
    expect_reset(&mut tab, 4).await;
    tab.expect_silence(QUIET).await;
}
