//! The admin listener's `GET /metrics` over real sockets: the exposition parses (a strict
//! parser of the text format, below, which refuses malformed text), every counter moves by
//! exactly what a scripted scenario does (SSE, WebSocket and long-poll tabs, publishes of every
//! outcome, a long-poll answered with a notification, an eviction, a lagging poller, resumes
//! exact and with a reset), and the admin and public routes stay apart.

use crate::support;

use std::collections::BTreeMap;

use herald_core::{Limits, Retention};
use herald_server::AdminServer;
use serde_json::{Value, json};
use support::{TestServer, memory, settings};

use crate::websocket::{connect as ws_connect, next_event};

/// A test server and an admin listener over the same app.
async fn start(limits: Limits, retention: Retention) -> (TestServer, AdminServer) {
    let server = TestServer::with(limits, settings(), memory(retention)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = herald_server::start_admin(server.app.clone(), listener).unwrap();
    (server, admin)
}

/// `GET /metrics` on the admin port, parsed: series (`name{labels}`, labels sorted) → value.
/// (The webhook tests read theirs with it too.)
pub(crate) async fn scrape(admin: &AdminServer) -> BTreeMap<String, f64> {
    let response = reqwest::get(format!("http://{}/metrics", admin.addr)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap();
    exposition::parse(&text).unwrap_or_else(|error| panic!("{error}\n{text}"))
}

/// Asserts that from `before` to `after` exactly the series of `expected` moved, each by its
/// delta (gauges: their new value's difference), and nothing else did, but the timing-dependent
/// series (histogram buckets and sums, the process's own figures).
#[track_caller]
fn assert_moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, expected: &[(&str, f64)]) {
    let expected: BTreeMap<&str, f64> = expected.iter().copied().collect();
    for series in expected.keys() {
        assert!(after.contains_key(*series), "no series {series} in the exposition");
    }
    let mut wrong = Vec::new();
    for (series, value) in after {
        let name = series.split('{').next().unwrap();
        if name.starts_with("herald_process_") || name.ends_with("_bucket") || name.ends_with("_sum") {
            continue;
        }
        let delta = value - before.get(series).copied().unwrap_or(0.0);
        let want = expected.get(series.as_str()).copied().unwrap_or(0.0);
        if delta != want {
            wrong.push(format!("{series}: moved by {delta}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Scrapes until `series` reaches `value` (what a server task does after the test's reading
/// returned, such as a stream's end), then returns the scrape.
async fn scrape_until(admin: &AdminServer, series: &str, value: f64) -> BTreeMap<String, f64> {
    let deadline = tokio::time::Instant::now() + support::EVENT_WAIT;
    loop {
        let scraped = scrape(admin).await;
        if scraped.get(series) == Some(&value) {
            return scraped;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} never reached {value}: {scraped:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

const SSE: &str = "herald_connections{transport=\"sse\"}";
const WS: &str = "herald_connections{transport=\"ws\"}";
const POLL: &str = "herald_connections{transport=\"poll\"}";
const OPENED_SSE: &str = "herald_connections_opened_total{transport=\"sse\"}";
const OPENED_WS: &str = "herald_connections_opened_total{transport=\"ws\"}";
const OPENED_POLL: &str = "herald_connections_opened_total{transport=\"poll\"}";
const USERS: &str = "herald_users_online";
const SESSIONS: &str = "herald_sessions_online";
const TABS: &str = "herald_tabs_online";
const STORED: &str = "herald_publishes_total{outcome=\"stored\"}";
const EPHEMERAL: &str = "herald_publishes_total{outcome=\"ephemeral\"}";
const REPEAT: &str = "herald_publishes_total{outcome=\"repeat\"}";
const DELIVERED_SSE: &str = "herald_deliveries_total{transport=\"sse\"}";
const DELIVERED_WS: &str = "herald_deliveries_total{transport=\"ws\"}";
const DELIVERED_POLL: &str = "herald_deliveries_total{transport=\"poll\"}";
const PUBLISH_DURATION: &str = "herald_publish_duration_seconds_count";
const PUBLISH_TO_WRITE: &str = "herald_publish_to_write_seconds_count";
const APPEND_DURATION: &str = "herald_store_append_duration_seconds_count";

/// The scenario of issue 15: each step's counters, exactly. Fails if any counter is not bumped
/// where it should be, is bumped twice, or moves where nothing of its kind happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_the_scenario_does() {
    let limits = Limits {
        clients_per_session_max: 2,
        client_queue_len_max: 4,
        data_bytes_max: 1024,
        ..Limits::default()
    };
    let (server, admin) = start(limits, Retention { max_per_user: 5, ..Retention::default() }).await;
    let mut before = scrape(&admin).await;
    let moved: Vec<_> = before
        .iter()
        .filter(|(series, value)| {
            **value != 0.0
                && !series.starts_with("herald_process_")
                && !series.starts_with("herald_node_info")
        })
        .collect();
    assert!(moved.is_empty(), "a fresh node: {moved:?}");

    // Connect: an SSE tab and a WebSocket tab of alice (two sessions), a poller of bob.
    let (mut sse, _) = server.connect(&server.token("alice", Some("a1")), "").await;
    let (mut ws, _) = ws_connect(&server, &server.token("alice", Some("a2")), "").await;
    let bob = server.token("bob", Some("b1"));
    let (status, first_poll) = server.poll(&bob, "timeout=0").await;
    assert_eq!(status, 200, "{first_poll}");
    let bob_client = first_poll["client"].as_str().unwrap().to_owned();
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[
            (SSE, 1.0),
            (WS, 1.0),
            (POLL, 1.0), // parked between its polls, still connected
            (OPENED_SSE, 1.0),
            (OPENED_WS, 1.0),
            (OPENED_POLL, 1.0),
            (USERS, 2.0),
            (SESSIONS, 3.0),
            (TABS, 3.0),
        ],
    );
    before = after;

    // A durable publish to alice: stored, appended, delivered live to both tabs.
    server.notify_user("alice", json!("durable")).await;
    assert_eq!(sse.notification().await.data["data"], "durable");
    assert_eq!(next_event(&mut ws).await["data"], "durable");
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[
            (STORED, 1.0),
            (PUBLISH_DURATION, 1.0),
            (APPEND_DURATION, 1.0),
            (DELIVERED_SSE, 1.0),
            (DELIVERED_WS, 1.0),
            (PUBLISH_TO_WRITE, 2.0),
        ],
    );
    before = after;

    // An ephemeral one: nothing appended.
    let (status, body) =
        server.publish(json!({"to": {"user": "alice"}, "data": "ephemeral", "durable": false})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sse.notification().await.data["data"], "ephemeral");
    assert_eq!(next_event(&mut ws).await["data"], "ephemeral");
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[
            (EPHEMERAL, 1.0),
            (PUBLISH_DURATION, 1.0),
            (DELIVERED_SSE, 1.0),
            (DELIVERED_WS, 1.0),
            (PUBLISH_TO_WRITE, 2.0),
        ],
    );
    before = after;

    // An idempotent publish, then its repeat: one stored and delivered, one repeat (whose
    // append finds the key), nothing delivered twice.
    let keyed = json!({"to": {"user": "alice"}, "data": "keyed", "idempotency_key": "k1"});
    assert_eq!(server.publish(keyed.clone()).await.0, 200);
    assert_eq!(sse.notification().await.data["data"], "keyed");
    assert_eq!(next_event(&mut ws).await["data"], "keyed");
    let (status, repeat) = server.publish(keyed).await;
    assert_eq!((status, &repeat["notifications"][0]["seq"]), (200, &json!(2)), "{repeat}");
    sse.expect_silence(support::QUIET).await;
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[
            (STORED, 1.0),
            (REPEAT, 1.0),
            (PUBLISH_DURATION, 2.0),
            (APPEND_DURATION, 2.0),
            (DELIVERED_SSE, 1.0),
            (DELIVERED_WS, 1.0),
            (PUBLISH_TO_WRITE, 2.0),
        ],
    );
    before = after;

    // Refused publishes: an empty type (invalid) and data over the limit (too large).
    let (status, body) = server.publish(json!({"to": {"user": "alice"}, "type": "", "data": 1})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.publish(json!({"to": {"user": "alice"}, "data": "x".repeat(2000)})).await;
    assert_eq!(status, 413, "{body}");
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[
            ("herald_publishes_refused_total{reason=\"invalid\"}", 1.0),
            ("herald_publishes_refused_total{reason=\"too_large\"}", 1.0),
            (PUBLISH_DURATION, 2.0),
        ],
    );
    before = after;

    // A long-poll that waits and is answered with a notification: bob's parked poller polls
    // again, and a publish to bob comes while it waits (or just before: counted the same).
    let query = format!("after=0&timeout=10&client={bob_client}");
    let waiting = server.poll(&bob, &query);
    let publishing = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        server.notify_user("bob", json!("polled")).await;
    };
    let ((status, polled), ()) = tokio::join!(waiting, publishing);
    assert_eq!(status, 200, "{polled}");
    assert_eq!(
        (polled["notifications"][0]["data"].as_str(), &polled["last_seq"]),
        (Some("polled"), &json!(1))
    );
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[
            (STORED, 1.0),
            (PUBLISH_DURATION, 1.0),
            (APPEND_DURATION, 1.0),
            (DELIVERED_POLL, 1.0),
            (PUBLISH_TO_WRITE, 1.0),
        ],
    );
    before = after;

    // An eviction: a third tab in eve's session of at most two evicts the first.
    let eve = server.token("eve", Some("e1"));
    let (mut evicted, _) = server.connect(&eve, "").await;
    let (_eve2, _) = server.connect(&eve, "").await;
    let (_eve3, _) = server.connect(&eve, "").await;
    evicted.expect_closed("evicted").await;
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[
            (OPENED_SSE, 3.0),
            (SSE, 2.0),
            (TABS, 2.0),
            (USERS, 1.0),
            (SESSIONS, 1.0),
            ("herald_closes_total{reason=\"evicted\"}", 1.0),
        ],
    );
    before = after;

    // A lagging client: bob's parked poller gets 5 notifications in a queue of 4; its next poll
    // is told `lagging`.
    for n in 0..5 {
        server.notify_user("bob", json!(n)).await;
    }
    let (status, lagging) = server.poll(&bob, &format!("after=1&timeout=5&client={bob_client}")).await;
    assert_eq!((status, &lagging["closed"]), (200, &json!("lagging")), "{lagging}");
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[
            (STORED, 5.0),
            (PUBLISH_DURATION, 5.0),
            (APPEND_DURATION, 5.0),
            (POLL, -1.0),
            (TABS, -1.0),
            (USERS, -1.0),
            (SESSIONS, -1.0),
            ("herald_closes_total{reason=\"lagging\"}", 1.0),
        ],
    );
    before = after;

    // A resume from alice's last seq: exact, nothing to replay.
    let (_resumed, hello) = server.connect(&server.token("alice", Some("a1")), "last_event_id=2").await;
    assert_eq!(hello["last_seq"], 2, "{hello}");
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[(OPENED_SSE, 1.0), (SSE, 1.0), (TABS, 1.0), ("herald_resumes_total{outcome=\"exact\"}", 1.0)],
    );
    before = after;

    // A resume from a seq no longer retained (5 kept per user): reset.
    for n in 0..7 {
        server.notify_user("carol", json!(n)).await;
    }
    let (mut carol, _) = server.connect(&server.token("carol", Some("c1")), "last_event_id=1").await;
    assert_eq!(carol.next().await.unwrap().event, "reset");
    let after = scrape(&admin).await;
    assert_moved(
        &before,
        &after,
        &[
            (STORED, 7.0),
            (PUBLISH_DURATION, 7.0),
            (APPEND_DURATION, 7.0),
            (OPENED_SSE, 1.0),
            (SSE, 1.0),
            (TABS, 1.0),
            (USERS, 1.0),
            (SESSIONS, 1.0),
            ("herald_resumes_total{outcome=\"reset\"}", 1.0),
        ],
    );
    before = after;

    // A session closed by the publisher: its tab's stream ends with `session_closed`.
    let (status, body) = server.delete("/v1/users/carol/sessions/c1").await;
    assert_eq!(status, 200, "{body}");
    carol.expect_closed("session_closed").await;
    let after = scrape_until(&admin, "herald_closes_total{reason=\"session_closed\"}", 1.0).await;
    assert_moved(
        &before,
        &after,
        &[
            (SSE, -1.0),
            (TABS, -1.0),
            (USERS, -1.0),
            (SESSIONS, -1.0),
            ("herald_closes_total{reason=\"session_closed\"}", 1.0),
        ],
    );
    server.shutdown().await;
    admin.shutdown().await;
}

/// The admin routes are on the admin listener only, the public ones on the public port only.
/// Fails if `/metrics` were served on the public port or a public route on the admin port.
#[tokio::test]
async fn admin_and_public_routes_stay_apart() {
    let (server, admin) = start(Limits::default(), Retention::default()).await;
    let (status, body) = server.get("/metrics").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let http = reqwest::Client::new();
    for path in ["/healthz", "/v1/notify", "/herald.js", "/v1/stream"] {
        let response = http.get(format!("http://{}{path}", admin.addr)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path} on the admin port");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
    let post = http.post(format!("http://{}/metrics", admin.addr)).send().await.unwrap();
    assert_eq!(post.status(), 405);
    server.shutdown().await;
    admin.shutdown().await;
}

/// Every family of the exposition, parsed, has HELP and TYPE, counters end in `_total`, and
/// the families the issue lists are all there.
#[tokio::test]
async fn the_exposition_names_every_family_with_help_type_and_units() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::with_store(support::sqlite(&dir.path().join("herald.db"), Retention::default())).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = herald_server::start_admin(server.app.clone(), listener).unwrap();
    server.notify_user("alice", json!(1)).await;
    let scraped = scrape(&admin).await;
    for family in [
        "herald_node_info",
        "herald_connections",
        "herald_users_online",
        "herald_sessions_online",
        "herald_tabs_online",
        "herald_publishes_total",
        "herald_publishes_refused_total",
        "herald_deliveries_total",
        "herald_publish_duration_seconds_count",
        "herald_publish_to_write_seconds_count",
        "herald_closes_total",
        "herald_resumes_total",
        "herald_store_append_duration_seconds_count",
        "herald_store_commit_duration_seconds_count",
        "herald_store_queue_length",
        "herald_store_errors_total",
        "herald_bus_messages_total",
        "herald_bus_reconnects_total",
        "herald_bus_repair_passes_total",
        "herald_process_resident_memory_bytes",
        "herald_process_open_fds",
        "herald_process_cpu_seconds_total",
        "herald_webhook_events_delivered_total",
        "herald_webhook_deliveries_total",
        "herald_webhook_retries_total",
        "herald_webhook_dropped_total",
        "herald_webhook_queue_events",
        "herald_push_sent_total",
        "herald_push_failed_total",
        "herald_push_dropped_total",
        "herald_push_subscriptions_removed_total",
        "herald_push_outbox_deliveries",
    ] {
        assert!(
            scraped.keys().any(|series| series == family || series.starts_with(&format!("{family}{{"))),
            "{family} missing"
        );
    }
    assert!(scraped["herald_store_commit_duration_seconds_count"] >= 1.0, "SQLite's writer committed");
    assert!(scraped["herald_process_resident_memory_bytes"] > 1e6);
    server.shutdown().await;
    admin.shutdown().await;
}

/// A strict parser of the text exposition format 0.0.4, for these tests: what Prometheus would
/// refuse, it refuses, and a bit more that Herald promises (every family has HELP and TYPE
/// before its samples, counters end in `_total`, histogram buckets are cumulative and end
/// with `+Inf` equal to `_count`).
mod exposition {
    use std::collections::{BTreeMap, HashMap, HashSet};

    fn is_name(name: &str, colon: bool) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }

    fn value(text: &str) -> Result<f64, String> {
        match text {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ if text.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
                text.parse().map_err(|_| format!("bad value {text:?}"))
            }
            _ => Err(format!("bad value {text:?}")),
        }
    }

    /// A sample line: its metric name, its labels (values unescaped) and its value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// `name{a="x",b="y"} value`: the name, the labels as written (values unescaped) and the
    /// value.
    fn sample(line: &str) -> Result<Sample, String> {
        let name_end = line.find(['{', ' ']).ok_or_else(|| format!("no value: {line:?}"))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            loop {
                let start = chars.peek().map(|&(i, _)| i).ok_or("unterminated labels")?;
                if after[start..].starts_with('}') {
                    rest = &after[start + 1..];
                    break;
                }
                let eq = after[start..].find('=').ok_or("label without =")? + start;
                let label = &after[start..eq];
                if !is_name(label, false) {
                    return Err(format!("bad label name {label:?}"));
                }
                if !after[eq + 1..].starts_with('"') {
                    return Err(format!("label {label} without a quoted value"));
                }
                while chars.peek().is_some_and(|&(i, _)| i <= eq + 1) {
                    chars.next();
                }
                let mut text = String::new();
                loop {
                    match chars.next().ok_or("unterminated label value")? {
                        (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                            '\\' => text.push('\\'),
                            '"' => text.push('"'),
                            'n' => text.push('\n'),
                            other => return Err(format!("bad escape \\{other}")),
                        },
                        (_, '"') => break,
                        (_, '\n') => return Err("line feed in a label value".into()),
                        (_, c) => text.push(c),
                    }
                }
                if labels.iter().any(|(l, _): &(String, String)| l == label) {
                    return Err(format!("label {label} twice"));
                }
                labels.push((label.to_owned(), text));
                match chars.next().ok_or("unterminated labels")? {
                    (_, ',') => {}
                    (i, '}') => {
                        rest = &after[i + 1..];
                        break;
                    }
                    (_, c) => return Err(format!("unexpected {c:?} after a label value")),
                }
            }
        }
        let rest = rest.strip_prefix(' ').ok_or_else(|| format!("no space before the value: {line:?}"))?;
        let mut fields = rest.split(' ');
        let v = value(fields.next().ok_or("no value")?)?;
        if let Some(timestamp) = fields.next() {
            timestamp.parse::<i64>().map_err(|_| format!("bad timestamp {timestamp:?}"))?;
        }
        if fields.next().is_some() {
            return Err(format!("trailing text: {line:?}"));
        }
        Ok((name.to_owned(), labels, v))
    }

    /// The series (`name{labels}`, labels sorted, `le` included) and their values.
    pub fn parse(text: &str) -> Result<BTreeMap<String, f64>, String> {
        if !text.ends_with('\n') {
            return Err("the text does not end with a line feed".into());
        }
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut done: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut series = BTreeMap::new();
        // Histogram checks: per family and labels but `le`, the buckets in order.
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("HELP"), Some(name), Some(_)) if !helps.insert(name.to_owned()) => {
                        return Err(format!("HELP of {name} twice"));
                    }
                    (Some("HELP"), Some(_), Some(_)) => {}
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                            return Err(format!("bad type {kind:?}"));
                        }
                        if !is_name(name, true) || types.insert(name.to_owned(), kind.to_owned()).is_some() {
                            return Err(format!("TYPE of {name} twice or bad"));
                        }
                        if !helps.contains(name) {
                            return Err(format!("{name}: TYPE without HELP before it"));
                        }
                        if kind == "counter" && !name.ends_with("_total") {
                            return Err(format!("counter {name} does not end in _total"));
                        }
                        if let Some(previous) = current.replace(name.to_owned()) {
                            done.push(previous);
                        }
                    }
                    (Some("HELP" | "TYPE"), _, _) => return Err(format!("malformed comment {line:?}")),
                    _ => {}
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let (name, mut labels, v) = sample(line)?;
            let family = current.as_deref().ok_or_else(|| format!("{name} before any TYPE"))?;
            let kind = &types[family];
            let suffix =
                name.strip_prefix(family).ok_or_else(|| format!("{name} is not of family {family}"))?;
            let allowed: &[&str] = if kind == "histogram" { &["_bucket", "_sum", "_count"] } else { &[""] };
            if !allowed.contains(&suffix) {
                return Err(format!("{name} in family {family} of type {kind}"));
            }
            if done.contains(&name) {
                return Err(format!("{name}: samples not together"));
            }
            if kind == "counter" && v < 0.0 {
                return Err(format!("{name}: a negative counter"));
            }
            labels.sort();
            if suffix == "_bucket" {
                let le =
                    labels.iter().find(|(l, _)| l == "le").ok_or_else(|| format!("{name} without le"))?;
                let bound = value(&le.1)?;
                let others: Vec<String> =
                    labels.iter().filter(|(l, _)| l != "le").map(|(l, v)| format!("{l}={v:?}")).collect();
                buckets.entry(format!("{family}{{{}}}", others.join(","))).or_default().push((bound, v));
            }
            let key = if labels.is_empty() {
                name.clone()
            } else {
                let labels: Vec<String> = labels.iter().map(|(l, v)| format!("{l}={v:?}")).collect();
                format!("{name}{{{}}}", labels.join(","))
            };
            if series.insert(key.clone(), v).is_some() {
                return Err(format!("{key} twice"));
            }
        }
        for (histogram, bounds) in &buckets {
            if bounds.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1) {
                return Err(format!("{histogram}: buckets not ascending or not cumulative"));
            }
            let (family, labels) = histogram.split_once('{').unwrap();
            let count_key =
                if labels == "}" { format!("{family}_count") } else { format!("{family}_count{{{labels}") };
            match bounds.last() {
                Some(&(bound, count)) if bound == f64::INFINITY && series.get(&count_key) == Some(&count) => {
                }
                _ => return Err(format!("{histogram}: no +Inf bucket equal to {count_key}")),
            }
        }
        Ok(series)
    }

    /// The parser refuses what is not the format: each of these fails if the parser let it pass.
    #[test]
    fn the_parser_refuses_malformed_text() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n";
        assert_eq!(parse(good).unwrap()["a_total{x=\"1\"}"], 3.0);
        for bad in [
            "# HELP a_total A.\n# TYPE a_total counter\na_total 3", // no final line feed
            "a_total 3\n",                                          // no TYPE
            "# TYPE a_total counter\na_total 3\n",                  // no HELP
            "# HELP a A.\n# TYPE a counter\na 3\n",                 // counter without _total
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1} 3\n", // unterminated value
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=1} 3\n", // unquoted value
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"\\q\"} 3\n", // bad escape
            "# HELP a_total A.\n# TYPE a_total counter\na_total three\n", // bad value
            "# HELP a_total A.\n# TYPE a_total counter\na_total 3\na_total 4\n", // a series twice
            "# HELP a_total A.\n# TYPE a_total counter\n9a_total 3\n", // bad name
            "# HELP a_total A.\n# TYPE a_total countr\na_total 3\n", // bad type
            "# HELP g G.\n# TYPE g gauge\ng{1x=\"a\"} 3\n",         // bad label name
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad:?}");
        }
    }
}
