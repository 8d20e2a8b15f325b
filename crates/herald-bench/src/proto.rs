//! What the parent and its worker processes say to each other: one JSON object per line, the
//! parent on the worker's stdin, the worker on its stdout (its stderr is the parent's).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::verify::DeliveryStats;

/// The kind of subscriber connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Herald `GET /v1/stream` (SSE), resuming with `last_event_id` after a drop.
    HeraldSse,
    /// Herald `GET /v1/ws` (WebSocket), resuming with `last_event_id` after a drop.
    HeraldWs,
    /// Herald `GET /v1/poll` (long-polling).
    HeraldPoll,
    /// Plain SSE on a URL template such as `http://127.0.0.1:8080/sub/{user}` (Nchan).
    SseUrl,
    /// Socket.IO v4 (Engine.IO v4 over WebSocket), one room per user.
    Socketio,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::HeraldSse => "herald-sse",
            Kind::HeraldWs => "herald-ws",
            Kind::HeraldPoll => "herald-poll",
            Kind::SseUrl => "sse-url",
            Kind::Socketio => "socketio",
        }
    }

    pub fn is_herald(self) -> bool {
        matches!(self, Kind::HeraldSse | Kind::HeraldWs | Kind::HeraldPoll)
    }
}

/// The first line a worker reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub worker: u32,
    pub workers: u32,
    pub kind: Kind,
    /// Subscriber URL of each server, `{user}` replaced by each user's id: client `i` (global
    /// index) connects to `sub_urls[i % len]`.
    pub sub_urls: Vec<String>,
    pub users: u32,
    pub clients_per_user: u32,
    pub user_prefix: String,
    /// Herald's token secret, to mint one subscriber token per user.
    pub secret: Option<String>,
    pub token_ttl_secs: u64,
    /// Connections being opened at once in this worker.
    pub connect_concurrency: usize,
    pub source_ip: Option<Ipv4Addr>,
    pub poll_timeout_secs: u64,
    /// Drops per second of this worker's clients during phases (see `--churn-per-sec`).
    #[serde(default)]
    pub churn_per_sec: f64,
    /// Broadcast (`--topic`): every client listens to this topic (Herald's tokens then carry it
    /// in their `topics` claim; the URLs already name it), every publish goes to it, and the
    /// worker records each publish's time to its first and last client.
    #[serde(default)]
    pub topic: Option<String>,
}

impl WorkerConfig {
    /// Global indices of the clients this worker runs: every `workers`-th, so that the tabs of
    /// one user are spread over processes. Client `i` belongs to user `i / clients_per_user`.
    pub fn client_indices(&self) -> impl Iterator<Item = u32> + '_ {
        let total = self.users * self.clients_per_user;
        (self.worker..total).step_by(self.workers as usize)
    }

    /// The audience of client `global` in the accounting: see [`audience_of`].
    pub fn audience_of(&self, global: u32) -> u32 {
        audience_of(self.topic.is_some(), global, self.clients_per_user)
    }
}

/// Whom the publishes a client must get are addressed to, as the exactly-once accounting counts
/// them: its user (client `global` belongs to user `global / clients_per_user`), or in a
/// broadcast the topic, the one audience 0 of every client.
pub fn audience_of(broadcast: bool, global: u32, clients_per_user: u32) -> u32 {
    if broadcast { 0 } else { global / clients_per_user }
}

/// Parent → worker, after the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open this worker's first client only (the warm-up, before the idle memory's "before").
    ConnectFirst,
    /// Open every client not open yet.
    Connect,
    /// Deliveries from now on belong to phase `index`.
    Phase { index: usize },
    /// Account for the phase that just ended: `log[i]` is the user of publish `first_id + i`,
    /// -1 when it was not acknowledged.
    Verify { phase: usize, first_id: u64, log: Vec<i64> },
    /// Close everything and exit.
    Stop,
}

/// Worker → parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Report {
    Ready {
        pid: u32,
        fd_limit: u64,
    },
    /// Every client either connected or gave up.
    Connected {
        ok: u64,
        failed: u64,
        /// Time from starting to connect to being ready (`hello` seen, room joined), in ns.
        latency: Vec<(u64, u64)>,
        /// Global indices of the clients that connected.
        clients: Vec<u32>,
        first_error: Option<String>,
    },
    /// The worker counts arrivals towards phase `index` from now on.
    PhaseStarted {
        index: usize,
    },
    /// Sent every [`crate::worker::PROGRESS_INTERVAL`].
    Progress(Progress),
    Verified {
        phase: usize,
        stats: DeliveryStats,
        /// End-to-end latency of this phase's deliveries, in ns.
        latency: Vec<(u64, u64)>,
        /// Streams the server ended, by the reason it gave (`closed` events, Engine.IO close).
        closes: BTreeMap<String, u64>,
        /// When the phase's last payload arrived (`CLOCK_MONOTONIC` ns); 0 if none did.
        last_arrival_ns: u64,
        /// Broadcast only: per publish id, its latency to the first and to the last client of
        /// this worker that got it, in ns.
        #[serde(default)]
        reach: Vec<Reach>,
    },
    Fatal {
        error: String,
    },
}

/// How far one publish got in a broadcast: its latency (send time to arrival) to the first and to
/// the last client that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub id: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl Reach {
    /// Widens `self` (the same publish) with what other clients saw.
    pub fn merge(&mut self, other: &Self) {
        self.first_ns = self.first_ns.min(other.first_ns);
        self.last_ns = self.last_ns.max(other.last_ns);
    }
}

/// Running counts of one worker.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// Clients connected right now.
    pub connected: u64,
    /// Arrivals since the current phase began.
    pub phase_received: u64,
    /// Connections that ended after they were ready.
    pub disconnects: u64,
    /// Connections opened again after such an end.
    pub reconnects: u64,
}
