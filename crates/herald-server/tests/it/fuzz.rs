//! Fuzzing on stable Rust: property-based targets (proptest) for every parser of outside input.
//! Each runs for a time budget with a fresh seed, and checks that the parser never panics, never
//! hangs (every wait is bounded), refuses bad input with the documented JSON 4xx, and gives back
//! what it was given when the input is valid.
//!
//! - `data_check`: herald-core's `check_data` agrees with serde_json (the stricter client).
//! - `jwt`: subscriber token verification (`Auth::verify_token`).
//! - `resume_point`: `?last_event_id=` and the `Last-Event-ID` header; `?inbox=`.
//! - `query_strings`: the query strings of the subscriber and publisher routes, over HTTP.
//! - `publish_bodies`, `inbox_bodies`: `POST /v1/notify` and `POST /v1/inbox/mark`, over HTTP.
//! - `request_heads`: raw request heads on fresh connections (the lean path's `read_head`).
//! - `ws_frames`: raw WebSocket frames from a client after a real handshake.
//! - `sse_parser`: herald-client's `SseParser`, whole or split anywhere.
//!
//! Budget and seed: `HERALD_FUZZ_SECS` per target (default 2) and `HERALD_FUZZ_SEED` (default
//! new each run; printed, with the case count, on stderr). `scripts/fuzz.sh SECS` runs them
//! longer, in release. A failure prints the seed and the smallest input found; each one fixed
//! becomes a named regression test (in the test file of its route).

use crate::support;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_client::{ClientError, SseItem, SseParser};
use herald_core::data::{DATA_DEPTH_MAX, check_data};
use herald_server::auth::Auth;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::Value;
use support::{API_KEY, SECRET, TestServer, now_unix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

/// Default time budget of one target, in seconds (`HERALD_FUZZ_SECS`).
const FUZZ_SECS_DEFAULT: f64 = 2.0;
/// Cases per runner call; the budget is checked between calls.
const CASES_PER_ROUND: u32 = 16;
/// Longest wait for one answer of the server: past it, the case fails as a hang.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Panics of the server (its tasks and threads, not the test threads): a fuzz case that makes
/// the server panic fails even if the server survives it.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The name of every thread of the fuzz targets' servers (their runtime's workers and blocking
/// threads). Only their panics are counted: the targets share their process with the other
/// integration tests, whose own failures (and the runner's, on the test threads) are not the
/// server's.
const SERVER_THREAD: &str = "fuzz-server";

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(SERVER_THREAD) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

fn no_panic() -> Result<(), TestCaseError> {
    prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    Ok(())
}

/// Runs `property` on values of `strategy` until the time budget is spent; returns the number
/// of cases. Fails with the seed and the (shrunk) failing input.
fn fuzz<S: Strategy>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: Debug,
{
    count_panics();
    let secs =
        std::env::var("HERALD_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(FUZZ_SECS_DEFAULT);
    let budget = Duration::from_secs_f64(secs);
    let seed: u64 =
        std::env::var("HERALD_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&fnv(name).to_le_bytes());
    let config = Config {
        cases: CASES_PER_ROUND,
        failure_persistence: None,
        max_shrink_iters: 1_000,
        max_shrink_time: 30_000,
        ..Config::default()
    };
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
    let started = Instant::now();
    let mut cases = 0u64;
    while cases == 0 || started.elapsed() < budget {
        // A runner runs `cases` once; the next round's runner continues from this one's RNG.
        let mut runner = TestRunner::new_with_rng(config.clone(), rng);
        if let Err(failure) = runner.run(&strategy, &property) {
            panic!("fuzz target {name} failed (HERALD_FUZZ_SEED={seed}): {failure}");
        }
        rng = runner.new_rng();
        cases += u64::from(CASES_PER_ROUND);
    }
    eprintln!("fuzz {name}: {cases} cases in {:.1?} (HERALD_FUZZ_SEED={seed})", started.elapsed());
}

/// A stable hash of a target's name, so that each target draws its own values from one seed.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .unwrap()
}

/// An answer of the API: a success, or a 4xx with the documented JSON error. Never a 5xx.
fn check_answer(status: u16, body: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(status < 500, "status {status}: {}", String::from_utf8_lossy(body));
    if status >= 400 {
        let json: Value = serde_json::from_slice(body)
            .map_err(|e| TestCaseError::fail(format!("{status} without a JSON body ({e})")))?;
        let code = json["error"]["code"].as_str().unwrap_or("");
        let message = json["error"]["message"].as_str().unwrap_or("");
        prop_assert!(!code.is_empty() && !message.is_empty(), "{status}: {json}");
    }
    Ok(())
}

async fn send(request: reqwest::RequestBuilder) -> Result<(u16, bytes::Bytes), TestCaseError> {
    let answer = tokio::time::timeout(ANSWER_WAIT, async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok::<_, reqwest::Error>((status, response.bytes().await?))
    })
    .await
    .map_err(|_| TestCaseError::fail("no answer in time"))?;
    answer.map_err(|e| TestCaseError::fail(format!("the request failed: {e}")))
}

// ---- strategies ----

/// JSON text with its nesting depth: strings with every kind of escape (lone surrogates among
/// them), numbers inside and beyond f64, arrays and objects, nested up to 80 deep.
fn json_text() -> impl Strategy<Value = (String, usize)> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        (1u32..10, -400i32..400).prop_map(|(m, e)| format!("{m}.5e{e}")),
        "-?[1-9][0-9]{0,400}".prop_map(|s| s),
        json_string(),
    ]
    .prop_map(|text| (text, 0));
    let nested = leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|items| {
                let depth = 1 + items.iter().map(|(_, d)| *d).max().unwrap_or(0);
                let texts: Vec<String> = items.into_iter().map(|(t, _)| t).collect();
                (format!("[{}]", texts.join(",")), depth)
            }),
            vec((json_string(), inner), 0..4).prop_map(|members| {
                let depth = 1 + members.iter().map(|(_, (_, d))| *d).max().unwrap_or(0);
                let texts: Vec<String> = members.into_iter().map(|(k, (t, _))| format!("{k}: {t}")).collect();
                (format!("{{{}}}", texts.join(", ")), depth)
            }),
        ]
    });
    (nested, 0usize..80).prop_map(|((text, depth), wrap)| {
        (format!("{}{text}{}", "[".repeat(wrap), "]".repeat(wrap)), depth + wrap)
    })
}

/// A JSON string literal, quotes included.
fn json_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9 ]{0,6}",
        any::<char>()
            .prop_filter("plain", |c| *c != '"' && *c != '\\' && !c.is_control())
            .prop_map(String::from),
        prop_oneof![Just("\\n"), Just("\\\""), Just("\\\\"), Just("\\/"), Just("\\t")].prop_map(String::from),
        any::<u16>().prop_map(|u| format!("\\u{u:04x}")),
        (0xD800u16..0xDC00, 0xDC00u16..0xE000).prop_map(|(h, l)| format!("\\u{h:04X}\\u{l:04x}")),
        (0xD800u16..0xE000).prop_map(|u| format!("\\u{u:04x}")),
    ];
    vec(piece, 0..6).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}

/// Bytes from a small alphabet of `token` fragments, mostly printable.
fn text_from(alphabet: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            proptest::sample::select(alphabet).prop_map(String::from),
            "[ -~]{0,3}",
            any::<char>().prop_map(String::from)
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

// ---- targets ----

/// `check_data` refuses exactly what a strict client (serde_json) cannot read, plus nesting
/// past the documented depth; and never panics on any text.
#[test]
fn data_check() {
    fuzz("data_check", (json_text(), vec(any::<u8>(), 0..64)), |((text, depth), noise)| {
        prop_assert!(serde_json::value::RawValue::from_string(text.clone()).is_ok(), "not JSON: {text}");
        let strict = serde_json::from_str::<Value>(&text);
        let expected = depth <= DATA_DEPTH_MAX && strict.is_ok();
        prop_assert_eq!(
            check_data(&text).is_ok(),
            expected,
            "depth {}, serde_json: {:?}",
            depth,
            strict.err()
        );
        if let Ok(value) = strict
            && expected
        {
            // Valid data round-trips: what serde_json writes back passes too.
            prop_assert!(check_data(&value.to_string()).is_ok());
        }
        let _ = check_data(&String::from_utf8_lossy(&noise));
        Ok(())
    });
}

#[derive(Debug, Clone)]
enum TokenCase {
    /// Any text.
    Text(String),
    /// A JWT with this header and claims, signed with the right secret or not, or unsigned.
    Jwt { header: Value, claims: Value, signer: Signer },
    /// A valid token for a valid user and session.
    Valid { user: String, session: Option<String>, ttl_secs: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Signer {
    Secret,
    OtherSecret,
    Garbage,
}

fn claim_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z]{0,10}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..7200).prop_map(|d| Value::from(now_unix() + d)),
        (0u64..7200).prop_map(|d| Value::from(now_unix().saturating_sub(d))),
        Just(Value::Null),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[\\x00-\\x7f]{0,300}".prop_map(Value::from),
    ]
}

fn token_case() -> impl Strategy<Value = TokenCase> {
    let alg = prop_oneof![
        Just("HS256"),
        Just("HS384"),
        Just("HS512"),
        Just("none"),
        Just("RS256"),
        Just("ES256"),
        Just("hs256")
    ];
    let header = (alg, proptest::option::of(Just("JWT"))).prop_map(|(alg, typ)| {
        let mut header = serde_json::json!({ "alg": alg });
        if let Some(typ) = typ {
            header["typ"] = typ.into();
        }
        header
    });
    let names = vec!["sub", "sid", "exp", "iat", "nbf", "aud", "iss", "x"];
    let claims = vec((proptest::sample::select(names), claim_value()), 0..6)
        .prop_map(|pairs| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    let signer = prop_oneof![Just(Signer::Secret), Just(Signer::OtherSecret), Just(Signer::Garbage)];
    prop_oneof![
        text_from(&["eyJ", ".", "=", "-", "_", "+", "/", "%"], 40).prop_map(TokenCase::Text),
        (header, claims, signer).prop_map(|(header, claims, signer)| TokenCase::Jwt {
            header,
            claims,
            signer
        }),
        ("[a-zA-Z0-9_.@-]{1,40}", proptest::option::of("[a-zA-Z0-9_-]{1,20}"), 1u64..100_000)
            .prop_map(|(user, session, ttl_secs)| TokenCase::Valid { user, session, ttl_secs }),
    ]
}

fn sign_jwt(header: &Value, claims: &Value, signer: Signer) -> String {
    let head = URL_SAFE_NO_PAD.encode(header.to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{head}.{body}");
    let signature = match signer {
        Signer::Garbage => URL_SAFE_NO_PAD.encode(b"not a signature"),
        Signer::Secret | Signer::OtherSecret => {
            use hmac::Mac as _;
            let key: &[u8] =
                if matches!(signer, Signer::Secret) { SECRET.as_bytes() } else { b"another secret" };
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
            mac.update(signing_input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
    };
    format!("{signing_input}.{signature}")
}

/// Token verification never panics; it accepts only an HS256 token signed with the secret,
/// unexpired, with a valid user; refusals are 401 `invalid_token` or `token_expired`; and a
/// valid token gives back its user and session.
#[test]
fn jwt() {
    let auth = Auth::new(SECRET.as_bytes(), API_KEY.as_bytes(), herald_server::auth::TokenRules::default());
    fuzz("jwt", token_case(), |case| {
        let token = match &case {
            TokenCase::Text(text) => text.clone(),
            TokenCase::Jwt { header, claims, signer } => sign_jwt(header, claims, *signer),
            TokenCase::Valid { user, session, ttl_secs } => {
                let user_id = herald_core::UserId::new(user.as_str()).unwrap();
                let session_id = session.as_deref().map(|s| herald_core::SessionId::new(s).unwrap());
                auth.mint_token(&user_id, session_id.as_ref(), now_unix() + ttl_secs)
            }
        };
        match (auth.verify_token(&token), &case) {
            (Ok(subscriber), TokenCase::Valid { user, session, .. }) => {
                prop_assert_eq!(subscriber.user.as_str(), user.as_str());
                if let Some(session) = session {
                    prop_assert_eq!(subscriber.session.as_str(), session.as_str());
                }
            }
            (Ok(subscriber), TokenCase::Jwt { header, claims, signer }) => {
                prop_assert!(matches!(signer, Signer::Secret), "accepted a forged token: {}", token);
                prop_assert_eq!(&header["alg"], "HS256");
                prop_assert!(claims["exp"].as_u64().is_some_and(|exp| exp > now_unix().saturating_sub(1)));
                prop_assert_eq!(Some(subscriber.user.as_str()), claims["sub"].as_str());
            }
            (Ok(_), TokenCase::Text(_)) => prop_assert!(false, "accepted {}", token),
            (Err(error), TokenCase::Valid { .. }) => {
                prop_assert!(false, "refused a valid token: {:?}", error)
            }
            (Err(error), _) => {
                prop_assert_eq!(error.status.as_u16(), 401);
                prop_assert!(matches!(error.code, "invalid_token" | "token_expired"), "{:?}", error);
                prop_assert!(!error.message.is_empty());
            }
        }
        Ok(())
    });
}

/// Regression (found by `resume_point` with HERALD_FUZZ_SEED=3810436111512312236): a
/// `Last-Event-ID` of a non-ASCII space (NBSP, `C2 A0`) is not blank: it is refused.
#[test]
fn last_event_id_header_of_a_non_ascii_space_is_refused() {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("last-event-id", axum::http::HeaderValue::from_bytes(&[0xc2, 0xa0]).unwrap());
    let got = herald_server::transport::resume_point(None, &headers);
    assert_eq!(got.map_err(|e| e.code), Err("invalid_last_event_id"));
    headers.insert("last-event-id", axum::http::HeaderValue::from_static(" \t "));
    assert_eq!(herald_server::transport::resume_point(None, &headers).map_err(|e| e.code), Ok(None));
}

/// `?last_event_id=` (or the `Last-Event-ID` header): a whole number is that seq, blank is
/// none, anything else 400 `invalid_last_event_id`; `?inbox=` likewise with `invalid_query`.
#[test]
fn resume_point() {
    let raw = text_from(
        &["0", "1", "9", "18446744073709551615", "18446744073709551616", " ", "+", "-", "\t", "é"],
        8,
    );
    fuzz(
        "resume_point",
        (proptest::option::of(raw), vec(any::<u8>(), 0..24), any::<bool>(), any::<u64>()),
        |(query, header, use_header, seq)| {
            let mut headers = axum::http::HeaderMap::new();
            let header_value = axum::http::HeaderValue::from_bytes(&header).ok();
            if use_header && let Some(value) = header_value.clone() {
                headers.insert("last-event-id", value);
            }
            let got = herald_server::transport::resume_point(query.as_deref(), &headers);
            // A header value is text only if it is visible ASCII (HTTP's rule, and the server's):
            // `Last-Event-ID: <NBSP>` is refused, not read as blank (the fuzzer found this
            // oracle reading it, as UTF-8, as blank).
            let given: Option<Vec<u8>> = match &query {
                Some(q) => Some(q.as_bytes().to_vec()),
                None if use_header => header_value.map(|v| v.as_bytes().to_vec()),
                None => None,
            };
            let header_text = query.is_none();
            match given {
                None => prop_assert!(matches!(got, Ok(None))),
                Some(bytes) if header_text && !bytes.is_ascii() => {
                    prop_assert_eq!(got.map_err(|e| e.code), Err("invalid_last_event_id"))
                }
                Some(bytes) => match std::str::from_utf8(&bytes).map(str::trim) {
                    Ok("") => prop_assert!(matches!(got, Ok(None))),
                    // Topic positions after `;`: whatever is read writes back to an id that reads the
                    // same, and its seq is the text before the first `;`.
                    Ok(text) if text.contains(';') => match got {
                        Ok(Some(point)) => {
                            let mut id = String::new();
                            herald_core::resume::write_resume_id(
                                &mut id,
                                point.seq,
                                point.topics.iter().map(|(t, s)| (t, *s)),
                            );
                            prop_assert_eq!(herald_core::ResumePoint::parse(&id).ok(), Some(point.clone()));
                            let seq_text = text.split(';').next().unwrap().trim();
                            prop_assert_eq!(seq_text.parse::<u64>().ok(), Some(point.seq));
                        }
                        other => prop_assert_eq!(other.map_err(|e| e.code), Err("invalid_last_event_id")),
                    },
                    Ok(text) => match text.parse::<u64>() {
                        Ok(n) => prop_assert_eq!(got.ok(), Some(Some(seq_point(n)))),
                        Err(_) => prop_assert_eq!(got.map_err(|e| e.code), Err("invalid_last_event_id")),
                    },
                    Err(_) => prop_assert_eq!(got.map_err(|e| e.code), Err("invalid_last_event_id")),
                },
            }
            // Valid input round-trips, in the query and in the header.
            prop_assert_eq!(
                herald_server::transport::resume_point(Some(&seq.to_string()), &axum::http::HeaderMap::new())
                    .ok(),
                Some(Some(seq_point(seq)))
            );
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("last-event-id", seq.to_string().parse().unwrap());
            prop_assert_eq!(
                herald_server::transport::resume_point(None, &headers).ok(),
                Some(Some(seq_point(seq)))
            );
            if let Some(query) = &query {
                match herald_server::transport::follows_inbox(Some(query)) {
                    Ok(follows) => prop_assert_eq!(follows, matches!(query.trim(), "1" | "true")),
                    Err(error) => prop_assert_eq!(error.code, "invalid_query"),
                }
            }
            Ok(())
        },
    );
}

/// A query string: `key=value` pairs from the routes' parameters and others, percent-encoded
/// or raw.
fn query_string() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        proptest::sample::select(
            &[
                "after",
                "client",
                "inbox",
                "epoch",
                "last_event_id",
                "limit",
                "before",
                "status",
                "type",
                "token",
                "all_up_to",
                "x"
            ][..]
        )
        .prop_map(String::from),
        "[a-z_%=&+]{0,6}",
    ];
    let value = prop_oneof![
        "[0-9]{0,22}",
        "-?[0-9]{1,3}",
        proptest::sample::select(
            &["", "1", "0", "true", "unread", "read", "archived", "all", "%00", "%FF", "%", "+", "%2B1"][..]
        )
        .prop_map(String::from),
        "[ -~]{0,12}".prop_map(|s| s.replace(['#', ' '], "%20")),
    ];
    vec((key, proptest::option::of(value)), 0..5).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// Every route with a query string answers a 2xx or a JSON 4xx, promptly, whatever the query.
#[test]
fn query_strings() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let token = server.token("alice", Some("s1"));
    rt.block_on(server.notify_user("alice", serde_json::json!(1)));
    // `timeout` is left out: a poll that may wait is not a parsing question; it is always 0.
    let routes = [
        "/v1/poll?timeout=0&",
        "/v1/inbox?",
        "/v1/inbox/counts?",
        "/v1/users/alice/notifications?",
        "/v1/users/alice/inbox?",
        "/v1/users/alice/presence?",
    ];
    fuzz("query_strings", (proptest::sample::select(routes.to_vec()), query_string()), |(route, query)| {
        rt.block_on(async {
            let url = format!("{}{route}{query}", server.url);
            let Ok(url) = reqwest::Url::parse(&url) else { return Ok(()) };
            let bearer = if route.starts_with("/v1/users") { API_KEY } else { token.as_str() };
            let (status, body) = send(server.http.get(url).bearer_auth(bearer)).await?;
            check_answer(status, &body)?;
            no_panic()
        })
    });
}

/// A publish body: a valid one (with its data), then maybe broken in one place.
fn publish_body() -> impl Strategy<Value = (String, Option<String>)> {
    let to = prop_oneof![
        Just(r#"{"user": "alice"}"#.to_owned()),
        Just(r#"{"users": ["alice", "bob", "alice"]}"#.to_owned()),
        Just(r#"{"user": "alice", "session": "s1"}"#.to_owned()),
        Just(r#"{"client": "c-unknown"}"#.to_owned()),
        "[a-z]{0,8}".prop_map(|u| format!(r#"{{"user": "{u}"}}"#)),
    ];
    let extra = prop_oneof![
        Just(String::new()),
        Just(r#", "durable": false"#.to_owned()),
        Just(r#", "type": "t.x""#.to_owned()),
        "[a-z]{0,4}".prop_map(|k| format!(r#", "idempotency_key": "{k}""#)),
        Just(r#", "except_client": "c""#.to_owned()),
    ];
    let mutation = prop_oneof![
        4 => Just(None),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Some((i, Some(b)))),
        1 => any::<prop::sample::Index>().prop_map(|i| Some((i, None))),
    ];
    (to, json_text(), extra, mutation).prop_map(|(to, (data, _), extra, mutation)| {
        let body = format!(r#"{{"to": {to}, "data": {data}{extra}}}"#);
        match mutation {
            None => (body, Some(data)),
            Some((at, byte)) => {
                let mut bytes = body.into_bytes();
                let at = at.index(bytes.len());
                match byte {
                    Some(byte) => bytes[at] = byte,
                    None => bytes.truncate(at),
                }
                (String::from_utf8_lossy(&bytes).into_owned(), None)
            }
        }
    })
}

/// `POST /v1/notify` answers 200 or a JSON 4xx whatever the body; a valid publish of data that
/// passes `check_data` is stored as sent.
#[test]
fn publish_bodies() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    fuzz("publish_bodies", publish_body(), |(body, data)| {
        rt.block_on(async {
            let request = server.http.post(format!("{}/v1/notify", server.url)).bearer_auth(API_KEY);
            let (status, answer) =
                send(request.header("content-type", "application/json").body(body.clone())).await?;
            check_answer(status, &answer)?;
            // With an idempotency key, a repeat gets the first receipt, not this data.
            if let Some(data) = data
                && status == 200
                && !body.contains("idempotency_key")
            {
                prop_assert!(check_data(&data).is_ok(), "stored data a client cannot read: {}", data);
                let receipt: Value = serde_json::from_slice(&answer).unwrap();
                if let Some(first) = receipt["notifications"].as_array().and_then(|n| n.first()) {
                    let (user, seq) = (first["user"].as_str().unwrap(), first["seq"].as_u64().unwrap());
                    let url = format!(
                        "{}/v1/users/{}/notifications?after={}&limit=1",
                        server.url,
                        support::enc(user),
                        seq - 1
                    );
                    let (_, page) = send(server.http.get(url).bearer_auth(API_KEY)).await?;
                    let page: Value = serde_json::from_slice(&page).unwrap();
                    let sent: Value = serde_json::from_str(&data).unwrap();
                    prop_assert_eq!(&page["notifications"][0]["data"], &sent);
                }
            }
            no_panic()
        })
    });
}

/// `POST /v1/inbox/mark` answers 200 or a JSON 4xx whatever the body.
#[test]
fn inbox_bodies() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let token = server.token("alice", Some("s1"));
    for n in 0..3 {
        rt.block_on(server.notify_user("alice", serde_json::json!(n)));
    }
    let mark =
        proptest::sample::select(&["read", "unread", "seen", "archived", "unarchived", "READ", "", "x"][..]);
    let seqs = prop_oneof![
        vec(any::<u64>(), 0..4).prop_map(|s| serde_json::to_string(&s).unwrap()),
        vec(0u64..5, 0..4).prop_map(|s| serde_json::to_string(&s).unwrap()),
        json_text().prop_map(|(t, _)| t),
    ];
    let body = (
        mark,
        proptest::option::of(seqs),
        proptest::option::of(any::<i64>()),
        proptest::option::of(vec(any::<u8>(), 0..16)),
    )
        .prop_map(|(mark, seqs, up_to, garbage)| {
            let mut fields = vec![format!(r#""as": "{mark}""#)];
            if let Some(seqs) = seqs {
                fields.push(format!(r#""seqs": {seqs}"#));
            }
            if let Some(up_to) = up_to {
                fields.push(format!(r#""all_up_to": {up_to}"#));
            }
            let body = format!("{{{}}}", fields.join(", "));
            match garbage {
                Some(bytes) => format!("{body}{}", String::from_utf8_lossy(&bytes)),
                None => body,
            }
        });
    fuzz("inbox_bodies", body, |body| {
        rt.block_on(async {
            let request = server.http.post(format!("{}/v1/inbox/mark", server.url)).bearer_auth(&token);
            let (status, answer) =
                send(request.header("content-type", "application/json").body(body)).await?;
            check_answer(status, &answer)?;
            no_panic()
        })
    });
}

/// A request head: a request line and headers from the pieces a server sees, with CRLF or LF
/// line ends, or bytes.
fn request_head() -> impl Strategy<Value = Vec<u8>> {
    let method = proptest::sample::select(&["GET", "POST", "HEAD", "OPTIONS", "get", "G\0T", ""][..]);
    let target = prop_oneof![
        proptest::sample::select(
            &[
                "/v1/stream",
                "/v1/stream?last_event_id=1",
                "/v1/ws",
                "/v1/poll?timeout=0",
                "/healthz",
                "*",
                "http://x/v1/stream",
                "/%ZZ",
                "/v1/stream?token=a&token=b",
                ""
            ][..]
        )
        .prop_map(String::from),
        "/[ -~]{0,30}",
    ];
    let version = proptest::sample::select(&["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x", ""][..]);
    let header = prop_oneof![
        proptest::sample::select(
            &[
                "host: x",
                "accept: text/event-stream",
                "last-event-id: 5",
                "last-event-id: x",
                "authorization: Bearer x",
                "authorization: Basic",
                "connection: upgrade",
                "upgrade: websocket",
                "content-length: 5",
                "content-length: -1",
                "transfer-encoding: chunked",
                "cookie: herald_token=x",
                ": x",
                "x",
                "x-\u{e9}: 1"
            ][..]
        )
        .prop_map(String::from),
        "[!-~]{1,10}: [ -~]{0,20}",
    ];
    let line_end = proptest::sample::select(&["\r\n", "\n"][..]);
    prop_oneof![
        4 => (method, target, version, vec(header, 0..8), line_end, any::<bool>()).prop_map(|(m, t, v, headers, end, finished)| {
            let mut head = format!("{m} {t} {v}{end}");
            for h in headers {
                head.push_str(&h);
                head.push_str(end);
            }
            if finished {
                head.push_str(end);
            }
            head.into_bytes()
        }),
        1 => vec(any::<u8>(), 0..300),
    ]
}

/// Raw request heads on fresh connections (the lean path reads them itself): the server answers
/// with an HTTP status (never a 5xx) or closes, in bounded time, and keeps serving.
#[test]
fn request_heads() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let addr = server.url.trim_start_matches("http://").to_owned();
    fuzz("request_heads", request_head(), |head| {
        rt.block_on(async {
            let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
            // A head cut short and the end of input: the server must not wait for more.
            let _ = socket.write_all(&head).await;
            let _ = socket.shutdown().await;
            let mut answer = Vec::new();
            let read = tokio::time::timeout(ANSWER_WAIT, async {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = socket.read(&mut chunk).await {
                    if n == 0 || answer.len() > 64 * 1024 {
                        break;
                    }
                    answer.extend_from_slice(&chunk[..n]);
                }
            })
            .await;
            prop_assert!(
                read.is_ok(),
                "no end within {:?}; got {:?}",
                ANSWER_WAIT,
                String::from_utf8_lossy(&answer)
            );
            if !answer.is_empty() {
                let text = String::from_utf8_lossy(&answer);
                prop_assert!(text.starts_with("HTTP/1.1 ") || text.starts_with("HTTP/1.0 "), "{}", text);
                let status: u16 = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                prop_assert!((100..500).contains(&status), "{}", text);
            }
            let (status, _) = send(server.http.get(format!("{}/healthz", server.url))).await?;
            prop_assert_eq!(status, 200);
            no_panic()
        })
    });
}

/// One WebSocket frame as a client could send it, or bytes.
fn ws_frame() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        vec(any::<u8>(), 0..64),
        proptest::sample::select(&[r#"{"type":"ping"}"#, "{}", "null", "hello", ""][..])
            .prop_map(|s| s.as_bytes().to_vec()),
    ];
    let opcode = prop_oneof![proptest::sample::select(&[0u8, 1, 2, 8, 9, 10][..]), 0u8..16];
    let length = prop_oneof![8 => Just(None), 1 => any::<u64>().prop_map(Some)];
    prop_oneof![
        6 => (any::<bool>(), 0u8..8, opcode, prop::bool::weighted(0.9), any::<[u8; 4]>(), payload, length).prop_map(
            |(fin, rsv, opcode, masked, key, payload, claimed)| {
                let mut frame = vec![(u8::from(fin) << 7) | (if rsv == 0 { 0 } else { rsv << 4 }) | opcode];
                let mask_bit = if masked { 0x80 } else { 0 };
                let len = claimed.unwrap_or(payload.len() as u64);
                if len < 126 {
                    frame.push(mask_bit | len as u8);
                } else if len <= u64::from(u16::MAX) {
                    frame.push(mask_bit | 126);
                    frame.extend_from_slice(&(len as u16).to_be_bytes());
                } else {
                    frame.push(mask_bit | 127);
                    frame.extend_from_slice(&len.to_be_bytes());
                }
                if masked {
                    frame.extend_from_slice(&key);
                    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
                } else {
                    frame.extend_from_slice(&payload);
                }
                frame
            }
        ),
        1 => vec(any::<u8>(), 0..32),
    ]
}

/// Raw frames after a real WebSocket handshake: the server closes or goes on, never panics, and
/// keeps serving other clients.
#[test]
fn ws_frames() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let addr = server.url.trim_start_matches("http://").to_owned();
    let token = server.token("alice", Some("s1"));
    fuzz("ws_frames", vec(ws_frame(), 1..6), |frames| {
        rt.block_on(async {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
            let socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut request = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            let handshake =
                tokio::time::timeout(ANSWER_WAIT, tokio_tungstenite::client_async(request, socket)).await;
            let Ok(Ok((mut ws, _))) = handshake else { return Err(TestCaseError::fail("no handshake")) };
            for frame in &frames {
                if ws.get_mut().write_all(frame).await.is_err() {
                    break;
                }
            }
            let _ = ws.get_mut().shutdown().await;
            // The server ends the connection after a bad frame or the end of input; a frame cut
            // short must not keep it waiting.
            let mut chunk = [0u8; 4096];
            let ended = tokio::time::timeout(ANSWER_WAIT, async {
                while let Ok(n) = ws.get_mut().read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            prop_assert!(ended.is_ok(), "the connection stayed open for {:?}", ANSWER_WAIT);
            let (status, _) = send(server.http.get(format!("{}/healthz", server.url))).await?;
            prop_assert_eq!(status, 200);
            no_panic()
        })
    });
}

fn parse_all(chunks: &[&[u8]], max_event_bytes: usize) -> Result<Vec<SseItem>, String> {
    let mut parser = SseParser::with_max_event_bytes(max_event_bytes);
    let mut out = VecDeque::new();
    for chunk in chunks {
        parser.feed(chunk, &mut out).map_err(|e| match e {
            ClientError::TooLarge { .. } => "too large".to_owned(),
            other => format!("unexpected error: {other}"),
        })?;
    }
    Ok(out.into())
}

/// herald-client's SSE parser: the same items however the stream is split, only `TooLarge`
/// as an error, and events written out are read back as they were.
#[test]
fn sse_parser() {
    let stream = vec(
        prop_oneof![
            proptest::sample::select(
                &[
                    "data: ",
                    "data:",
                    "id: ",
                    "id: 7",
                    "event: ",
                    "event: notification",
                    "retry: 1",
                    ":",
                    ": keep-alive",
                    "\n",
                    "\r",
                    "\r\n",
                    "\u{feff}",
                    "\0",
                    "é"
                ][..]
            )
            .prop_map(|s| s.as_bytes().to_vec()),
            "[ -~]{0,10}".prop_map(String::into_bytes),
            vec(any::<u8>(), 0..4),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat());
    let cuts = vec(any::<prop::sample::Index>(), 0..6);
    let event = ("[a-z]{0,8}", vec("[^\r\n]{0,12}", 1..4), proptest::option::of("[0-9a-z]{0,6}"));
    let max = prop_oneof![Just(herald_client::sse::MAX_EVENT_BYTES), 8usize..64];
    fuzz("sse_parser", (stream, cuts, vec(event, 0..4), max), |(stream, cuts, events, max)| {
        let whole = parse_all(&[&stream], max);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in at {
            chunks.push(&stream[start..cut]);
            start = cut;
        }
        chunks.push(&stream[start..]);
        let split = parse_all(&chunks, max);
        if let Err(e) = &whole {
            prop_assert_eq!(e.as_str(), "too large");
        }
        if whole.is_ok() {
            prop_assert_eq!(&whole, &split);
        }
        // Round trip: events written as a server would are read back.
        let mut text = String::new();
        let mut expected = Vec::new();
        for (name, lines, id) in &events {
            if !name.is_empty() {
                text.push_str(&format!("event: {name}\n"));
            }
            if let Some(id) = id {
                text.push_str(&format!("id: {id}\n"));
            }
            for line in lines {
                text.push_str(&format!("data: {line}\n"));
            }
            text.push('\n');
            expected.push(SseItem::Event(herald_client::SseEvent {
                event: if name.is_empty() { "message".into() } else { name.clone() },
                data: lines.join("\n"),
                id: id.clone(),
            }));
        }
        prop_assert_eq!(parse_all(&[text.as_bytes()], herald_client::sse::MAX_EVENT_BYTES), Ok(expected));
        Ok(())
    });
}

/// A resume point of a seq alone.
fn seq_point(seq: u64) -> herald_core::ResumePoint {
    herald_core::ResumePoint { seq, topics: Vec::new() }
}
