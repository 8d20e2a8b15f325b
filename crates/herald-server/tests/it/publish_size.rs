//! What one publish may make the server store: the size of `data` times the number of users it
//! goes to is bounded (`Limits::publish_bytes_max`), so that one small request cannot store and
//! serialize tens of megabytes.

use crate::support;

use herald_core::Limits;
use serde_json::json;
use support::{TestServer, assert_error};

fn users(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("u{i}")).collect()
}

#[tokio::test]
async fn a_publish_of_64_kib_to_1000_users_is_413_publish_too_large_and_stores_nothing() {
    let server = TestServer::start().await;
    // 64 KiB of JSON: a string of 65,534 characters and its quotes.
    let data = json!("x".repeat(64 * 1024 - 2));
    let answer = server.publish(json!({"to": {"users": users(1000)}, "data": data})).await;
    assert_error(&answer, 413, "publish_too_large");
    for user in ["u0", "u999"] {
        assert!(server.stored(user).await.is_empty(), "{user} got a notification");
    }
    // An ephemeral publish is held in memory the same way: refused too.
    let answer = server.publish(json!({"to": {"users": users(1000)}, "data": data, "durable": false})).await;
    assert_error(&answer, 413, "publish_too_large");
}

#[tokio::test]
async fn the_bound_counts_data_times_distinct_users() {
    let limits = Limits { publish_bytes_max: 10_000, ..Limits::default() };
    let server = TestServer::with_limits(limits).await;
    // 1,000 bytes of JSON each.
    let data = json!("y".repeat(998));
    let (status, body) = server.publish(json!({"to": {"users": users(10)}, "data": data})).await;
    assert_eq!(status, 200, "{body}");
    // Duplicates are one user: still 10.
    let mut repeated = users(10);
    repeated.extend(users(10));
    let (status, body) = server.publish(json!({"to": {"users": repeated}, "data": data})).await;
    assert_eq!(status, 200, "{body}");
    assert_error(
        &server.publish(json!({"to": {"users": users(11)}, "data": data})).await,
        413,
        "publish_too_large",
    );
    assert!(server.stored("u10").await.is_empty());
    assert_eq!(server.stored("u0").await.len(), 2);
}
