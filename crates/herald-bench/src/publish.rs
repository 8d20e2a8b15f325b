//! Publishers: K tasks, each with its own kept-alive HTTP connection, sending targeted
//! publishes to random users (or, in a broadcast, all to one topic) as fast as the server
//! answers, at a fixed total rate, or a fixed number of them. Every payload carries a unique id
//! (the message's sequence number in the run) and its send time; the log says which user each
//! acknowledged publish went to (in a broadcast: the topic's one audience, 0).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, timeout};

use crate::http::{Conn, Endpoint};
use crate::stats;
use crate::sys::now_ns;
use crate::wire::payload;

/// Longest a phase may publish for.
pub const PHASE_SECS_MAX: f64 = 3_600.0;
/// Highest total rate of a steady phase.
pub const RATE_MAX: f64 = 1_000_000.0;
/// Most publishes of a burst phase.
pub const BURST_MAX: u64 = 10_000_000;
/// Longest wait for one publish's answer; past it the publish counts as an error.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed publishes after which a phase stops early: the server is down or refuses us, and
/// hammering it further measures nothing.
const PUBLISH_ERRORS_MAX: u64 = 1_000;

/// What a phase publishes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum PhaseSpec {
    /// Every publisher sends its next publish as soon as the previous one is answered.
    Max { secs: f64 },
    /// `rate` publishes per second in total, spread over the publishers, for `secs`.
    Steady { rate: f64, secs: f64 },
    /// `count` publishes as fast as possible.
    Burst { count: u64 },
}

impl PhaseSpec {
    /// Parses `max:SECS`, `steady:RATE:SECS` or `burst:COUNT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let num = |s: &str| s.parse::<f64>().map_err(|_| format!("{s:?} is not a number"));
        let secs = |s: &str| {
            let secs = num(s)?;
            if secs > 0.0 && secs <= PHASE_SECS_MAX {
                Ok(secs)
            } else {
                Err(format!("a phase lasts more than 0 and at most {PHASE_SECS_MAX} s"))
            }
        };
        match parts.as_slice() {
            ["max", s] => Ok(Self::Max { secs: secs(s)? }),
            ["steady", rate, s] => {
                let rate = num(rate)?;
                if !(rate > 0.0 && rate <= RATE_MAX) {
                    return Err(format!("the rate is more than 0 and at most {RATE_MAX}"));
                }
                Ok(Self::Steady { rate, secs: secs(s)? })
            }
            ["burst", count] => {
                let count: u64 = count.parse().map_err(|_| format!("{count:?} is not a count"))?;
                if count == 0 || count > BURST_MAX {
                    return Err(format!("a burst has 1 to {BURST_MAX} publishes"));
                }
                Ok(Self::Burst { count })
            }
            _ => Err(format!("{text:?}: expected max:SECS, steady:RATE:SECS or burst:COUNT")),
        }
    }

    /// A short name: `max`, `steady`, `burst`.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Max { .. } => "max",
            Self::Steady { .. } => "steady",
            Self::Burst { .. } => "burst",
        }
    }
}

impl fmt::Display for PhaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Max { secs } => write!(f, "max {secs} s"),
            Self::Steady { rate, secs } => write!(f, "steady {rate}/s {secs} s"),
            Self::Burst { count } => write!(f, "burst {count}"),
        }
    }
}

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct Target {
    /// The publish URL; `{user}` in its path is replaced by the user (Nchan, Socket.IO).
    pub endpoint: Endpoint,
    /// Herald: its API key. Herald's body is `{"to":{"user":…},"type":"bench","data":PAYLOAD}`;
    /// the other servers get the bare payload.
    pub herald_api_key: Option<String>,
    pub user_prefix: String,
    /// A broadcast: every publish goes to this topic (Herald: `"to":{"topic":…}`, ephemeral, as
    /// topic events are; Nchan's channel and Socket.IO's room are in the endpoint's path).
    pub topic: Option<String>,
    /// Herald only: publishes per request, through `POST /v1/notify/batch` when more than 1
    /// (the endpoint's path is then the batch route's). Each entry is a publish of its own, to
    /// a user of its own.
    pub batch: u32,
}

/// Most publishes per request with `--batch` (the server's bound).
pub const BATCH_MAX: u32 = 1_000;

/// The running state of a phase, shared by its publishers and read by the progress display.
pub struct PhaseState {
    pub first_id: u64,
    next_slot: Cell<u64>,
    /// User of publish `first_id + i`, or -1 until (unless) it is acknowledged.
    pub log: RefCell<Vec<i64>>,
    pub acked: Cell<u64>,
    pub errors: Cell<u64>,
    pub first_error: RefCell<Option<String>>,
    /// Publish round trips (request written → answer read), in ns.
    pub round_trip: RefCell<Histogram<u64>>,
    stop: Cell<bool>,
}

impl PhaseState {
    pub fn new(first_id: u64) -> Rc<Self> {
        Rc::new(Self {
            first_id,
            next_slot: Cell::new(0),
            log: RefCell::new(Vec::new()),
            acked: Cell::new(0),
            errors: Cell::new(0),
            first_error: RefCell::new(None),
            round_trip: RefCell::new(stats::histogram()),
            stop: Cell::new(false),
        })
    }

    pub fn attempted(&self) -> u64 {
        self.log.borrow().len() as u64
    }

    fn fail(&self, error: String) {
        self.errors.set(self.errors.get() + 1);
        self.first_error.borrow_mut().get_or_insert(error);
        if self.errors.get() >= PUBLISH_ERRORS_MAX {
            self.stop.set(true);
        }
    }
}

/// One publisher of a phase: runs until the phase's end (time, count, or too many errors).
pub async fn publisher(state: Rc<PhaseState>, target: Rc<Target>, spec: PhaseSpec, users: u32, seed: u64) {
    let start = Instant::now();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut conn: Option<Conn> = None;
    let mut request = Vec::with_capacity(512);
    // This request's entries: (index in the log, user).
    let mut entries: Vec<(usize, u32)> = Vec::with_capacity(target.batch as usize);
    'phase: while !state.stop.get() {
        entries.clear();
        // Every slot of the request is taken before any wait, so the other publishers take the
        // slots after them (a publisher that took one slot, slept, then took the rest would
        // interleave with them and send bursts of batches).
        let mut last_slot = 0;
        while entries.len() < target.batch.max(1) as usize {
            let slot = state.next_slot.get();
            let over = match spec {
                PhaseSpec::Max { secs } => start.elapsed().as_secs_f64() >= secs,
                PhaseSpec::Steady { rate, secs } => slot as f64 >= rate * secs,
                PhaseSpec::Burst { count } => slot >= count,
            };
            if over {
                break;
            }
            state.next_slot.set(slot + 1);
            last_slot = slot;
            let user = rng.random_range(0..users);
            let mut log = state.log.borrow_mut();
            log.push(-1);
            entries.push((log.len() - 1, user));
        }
        if entries.is_empty() {
            break 'phase;
        }
        if let PhaseSpec::Steady { rate, .. } = spec {
            // Slot `k` is due at k / rate: a shared schedule, so the total rate holds whatever
            // each publisher's round trip. A request goes when its last slot is due: none of
            // its publishes is sent early.
            tokio::time::sleep_until(start + Duration::from_secs_f64(last_slot as f64 / rate)).await;
        }
        let sent = now_ns();
        encode(&mut request, &target, &entries, state.first_id, sent);
        let answered = timeout(PUBLISH_TIMEOUT, send(&mut conn, &target.endpoint, &request)).await;
        let failed = match answered {
            Ok(Ok(body)) if target.batch > 1 => batch_failures(&body),
            Ok(Ok(_)) => None,
            Ok(Err(error)) => {
                conn = None;
                Some(format!("{error:#}"))
            }
            Err(_) => {
                conn = None;
                Some(format!("no answer within {PUBLISH_TIMEOUT:?}"))
            }
        };
        match failed {
            None => {
                let mut log = state.log.borrow_mut();
                for &(index, user) in &entries {
                    log[index] = i64::from(user);
                }
                drop(log);
                state.acked.set(state.acked.get() + entries.len() as u64);
                let round_trip = now_ns() - sent;
                for _ in &entries {
                    stats::record(&mut state.round_trip.borrow_mut(), round_trip);
                }
            }
            Some(error) => {
                for _ in &entries {
                    state.fail(error.clone());
                }
            }
        }
    }
}

/// A batch answer with a failed entry: which (the bench's publishes are all valid, so any is
/// the server's failure, and the whole request counts as failed: nothing of it is checked for
/// delivery).
fn batch_failures(body: &[u8]) -> Option<String> {
    let answer: serde_json::Value = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(e) => return Some(format!("the batch answer is not JSON: {e}")),
    };
    match answer["failed"].as_u64() {
        Some(0) => None,
        Some(n) => Some(format!("{n} entries of a batch failed: {}", answer["results"])),
        None => Some(format!("the batch answer has no `failed`: {answer}")),
    }
}

/// Writes the whole request for `entries` (log index, user; ids from `first_id`) into `out`:
/// one publish, or with [`Target::batch`] over 1, one batch of them.
fn encode(out: &mut Vec<u8>, target: &Target, entries: &[(usize, u32)], first_id: u64, sent_ns: u64) {
    use std::io::Write as _;
    out.clear();
    let one = |&(index, user): &(usize, u32)| {
        let user_id = format!("{}{user}", target.user_prefix);
        let payload = payload(first_id + index as u64, sent_ns);
        match (&target.herald_api_key, &target.topic) {
            (Some(_), Some(topic)) => {
                format!(r#"{{"to":{{"topic":"{topic}"}},"type":"bench","data":{payload},"durable":false}}"#)
            }
            (Some(_), None) => format!(r#"{{"to":{{"user":"{user_id}"}},"type":"bench","data":{payload}}}"#),
            (None, _) => payload,
        }
    };
    let body = if target.batch > 1 {
        let all: Vec<String> = entries.iter().map(one).collect();
        format!(r#"{{"notifications":[{}]}}"#, all.join(","))
    } else {
        one(&entries[0])
    };
    let user_id = format!("{}{}", target.user_prefix, entries[0].1);
    let path = target.endpoint.path.replace("{user}", &user_id);
    let _ = write!(out, "POST {path} HTTP/1.1\r\nHost: {}\r\n", target.endpoint.host);
    if let Some(key) = &target.herald_api_key {
        let _ = write!(out, "Authorization: Bearer {key}\r\n");
    }
    let _ = write!(out, "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
}

/// Sends one request on the kept-alive connection (opening one if needed); the body of a 2xx
/// answer.
async fn send(conn: &mut Option<Conn>, endpoint: &Endpoint, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    if conn.is_none() {
        *conn = Some(Conn::open(None, endpoint.addr).await?);
    }
    let c = conn.as_mut().expect("opened above");
    c.write_all(request).await?;
    let head = c.read_head().await?;
    let body = c.read_body(&head).await.context("reading the answer")?;
    if head.close {
        *conn = None;
    }
    ensure!(head.status != 0, "no status");
    if !(200..300).contains(&head.status) {
        bail!("status {}: {}", head.status, String::from_utf8_lossy(&body).trim());
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_specs() {
        assert_eq!(PhaseSpec::parse("max:20"), Ok(PhaseSpec::Max { secs: 20.0 }));
        assert_eq!(PhaseSpec::parse("steady:1000:10"), Ok(PhaseSpec::Steady { rate: 1000.0, secs: 10.0 }));
        assert_eq!(PhaseSpec::parse("burst:500"), Ok(PhaseSpec::Burst { count: 500 }));
        for bad in ["max", "max:0", "max:99999", "steady:0:1", "burst:0", "fast:1", "max:x"] {
            assert!(PhaseSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests() {
        let herald = Target {
            endpoint: Endpoint::parse("http://127.0.0.1:7300/v1/notify").unwrap(),
            herald_api_key: Some("k".into()),
            user_prefix: "u".into(),
            topic: None,
            batch: 1,
        };
        let mut out = Vec::new();
        encode(&mut out, &herald, &[(9, 3)], 0, 77);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with(
                "POST /v1/notify HTTP/1.1\r\nHost: 127.0.0.1:7300\r\nAuthorization: Bearer k\r\n"
            )
        );
        assert!(text.ends_with(r#"{"to":{"user":"u3"},"type":"bench","data":{"bench_id":9,"bench_ts":77}}"#));
        let nchan = Target {
            endpoint: Endpoint::parse("http://127.0.0.1:7301/pub/{user}").unwrap(),
            herald_api_key: None,
            user_prefix: "u".into(),
            topic: None,
            batch: 1,
        };
        encode(&mut out, &nchan, &[(9, 3)], 0, 77);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("POST /pub/u3 HTTP/1.1\r\n"));
        assert!(text.ends_with("Content-Length: 28\r\n\r\n{\"bench_id\":9,\"bench_ts\":77}"));
        let batch = Target {
            endpoint: Endpoint::parse("http://127.0.0.1:7300/v1/notify/batch").unwrap(),
            herald_api_key: Some("k".into()),
            user_prefix: "u".into(),
            topic: None,
            batch: 2,
        };
        encode(&mut out, &batch, &[(0, 3), (1, 5)], 100, 77);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /v1/notify/batch HTTP/1.1\r\n"), "{text}");
        assert!(text.ends_with(concat!(
            r#"{"notifications":[{"to":{"user":"u3"},"type":"bench","data":{"bench_id":100,"bench_ts":77}},"#,
            r#"{"to":{"user":"u5"},"type":"bench","data":{"bench_id":101,"bench_ts":77}}]}"#
        )));
    }

    #[test]
    fn broadcast_requests() {
        let herald = Target {
            endpoint: Endpoint::parse("http://127.0.0.1:7300/v1/notify").unwrap(),
            herald_api_key: Some("k".into()),
            user_prefix: "u".into(),
            topic: Some("room_1".into()),
            batch: 1,
        };
        let mut out = Vec::new();
        encode(&mut out, &herald, &[(4, 0)], 10, 77);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.ends_with(
            r#"{"to":{"topic":"room_1"},"type":"bench","data":{"bench_id":14,"bench_ts":77},"durable":false}"#
        ));
        let socketio = Target {
            endpoint: Endpoint::parse("http://127.0.0.1:7312/emit/room_1").unwrap(),
            herald_api_key: None,
            user_prefix: "u".into(),
            topic: Some("room_1".into()),
            batch: 1,
        };
        encode(&mut out, &socketio, &[(4, 0)], 10, 77);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /emit/room_1 HTTP/1.1\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"bench_id\":14,\"bench_ts\":77}"), "{text}");
    }

    #[test]
    fn batch_answers() {
        assert_eq!(batch_failures(br#"{"results":[],"failed":0}"#), None);
        assert!(batch_failures(br#"{"results":[{"error":{}}],"failed":1}"#).unwrap().contains("1 entries"));
        assert!(batch_failures(b"nope").is_some());
        assert!(batch_failures(br#"{"results":[]}"#).is_some());
    }
}
