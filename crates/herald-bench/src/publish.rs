//! Publishers: K tasks, each with its own kept-alive HTTP connection, sending targeted
//! publishes to random users as fast as the server answers, at a fixed total rate, or a fixed
//! number of them. Every payload carries a unique id and its send time; the log says which user
//! each acknowledged publish went to.

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
}

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
    while !state.stop.get() {
        let slot = state.next_slot.get();
        state.next_slot.set(slot + 1);
        match spec {
            PhaseSpec::Max { secs } => {
                if start.elapsed().as_secs_f64() >= secs {
                    break;
                }
            }
            PhaseSpec::Steady { rate, secs } => {
                if slot as f64 >= rate * secs {
                    break;
                }
                // Slot `k` is due at k / rate: a shared schedule, so the total rate holds
                // whatever each publisher's round trip.
                tokio::time::sleep_until(start + Duration::from_secs_f64(slot as f64 / rate)).await;
            }
            PhaseSpec::Burst { count } => {
                if slot >= count {
                    break;
                }
            }
        }
        let user = rng.random_range(0..users);
        let index = {
            let mut log = state.log.borrow_mut();
            log.push(-1);
            log.len() - 1
        };
        let id = state.first_id + index as u64;
        let sent = now_ns();
        encode(&mut request, &target, user, id, sent);
        match timeout(PUBLISH_TIMEOUT, send(&mut conn, &target.endpoint, &request)).await {
            Ok(Ok(())) => {
                state.log.borrow_mut()[index] = i64::from(user);
                state.acked.set(state.acked.get() + 1);
                stats::record(&mut state.round_trip.borrow_mut(), now_ns() - sent);
            }
            Ok(Err(error)) => {
                conn = None;
                state.fail(format!("{error:#}"));
            }
            Err(_) => {
                conn = None;
                state.fail(format!("no answer within {PUBLISH_TIMEOUT:?}"));
            }
        }
    }
}

/// Writes the whole request for publish `id` to `user` into `out`.
fn encode(out: &mut Vec<u8>, target: &Target, user: u32, id: u64, sent_ns: u64) {
    use std::io::Write as _;
    out.clear();
    let user_id = format!("{}{user}", target.user_prefix);
    let payload = payload(id, sent_ns);
    let body = match &target.herald_api_key {
        Some(_) => format!(r#"{{"to":{{"user":"{user_id}"}},"type":"bench","data":{payload}}}"#),
        None => payload,
    };
    let path = target.endpoint.path.replace("{user}", &user_id);
    let _ = write!(out, "POST {path} HTTP/1.1\r\nHost: {}\r\n", target.endpoint.host);
    if let Some(key) = &target.herald_api_key {
        let _ = write!(out, "Authorization: Bearer {key}\r\n");
    }
    let _ = write!(out, "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
}

/// Sends one request on the kept-alive connection (opening one if needed); Ok on a 2xx answer.
async fn send(conn: &mut Option<Conn>, endpoint: &Endpoint, request: &[u8]) -> anyhow::Result<()> {
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
    Ok(())
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
        };
        let mut out = Vec::new();
        encode(&mut out, &herald, 3, 9, 77);
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
        };
        encode(&mut out, &nchan, 3, 9, 77);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /pub/u3 HTTP/1.1\r\n"));
        assert!(text.ends_with("Content-Length: 28\r\n\r\n{\"bench_id\":9,\"bench_ts\":77}"));
    }
}
