//! `herald-bench run`: the parent. Starts the workers (this same binary, `herald-bench
//! worker`), has them connect, measures the server idle, runs the publish phases, waits for the
//! deliveries, has the workers account for them, and reports.
//!
//! One job, the parent's run from start to report, phase after phase, hence one file; the
//! pieces it drives (publishers, counters, CPU sampling, the report) live in their own modules.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use futures::future::join_all;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use crate::counters;
use crate::http::Endpoint;
use crate::procstat::{self, PostgresShare, ProcSample, ServerSet};
use crate::proto::{Command, Kind, Progress, Reach, Report, WorkerConfig, audience_of};
use crate::publish::{self, PhaseSpec, PhaseState};
use crate::report::{BroadcastResult, ConnectResult, IdleResult, Machine, PhaseResult, RunResult};
use crate::stats::{self, Percentiles};
use crate::sys::{now_ns, raise_fd_limit, worker_source_ip};
use crate::verify::DeliveryStats;
use crate::worker::FD_LIMIT_WANT;

/// Most subscriber connections in one run (users × clients per user).
pub const CLIENTS_MAX: u64 = 200_000;
/// Most publishers.
pub const PUBLISHERS_MAX: u32 = 1_024;
/// Most worker processes.
pub const WORKERS_MAX: u32 = 64;
/// Most servers (`--url`s) one run spreads its clients and publishers over.
pub const URLS_MAX: usize = 64;
/// Clients per worker when the count is chosen automatically: well under the ~19,500 open
/// files a process may have here, and few enough that one worker thread keeps up with its
/// share of the deliveries.
const CLIENTS_PER_WORKER_AUTO: u64 = 8_000;
/// Workers when chosen automatically, at least: the tabs of one user then live in different
/// processes, as in a browser.
const WORKERS_AUTO_MIN: u32 = 2;
/// Longest a worker may take to start and say it is ready.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the connect stage may take in all (each client gives up after its own attempts).
const CONNECT_STAGE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the warm-up clients sit connected before the idle memory's "before" sample.
const WARMUP_SETTLE: Duration = Duration::from_millis(500);
/// Longest a worker may take to account for a phase.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
/// After publishing, the wait for the last deliveries ends when nothing new arrived for this
/// long (something was lost), or after `--drain-max-secs` in all.
const DRAIN_STALL: Duration = Duration::from_secs(3);
/// Largest `--drain-max-secs`.
const DRAIN_MAX_SECS_MAX: f64 = 600.0;
/// Longest topic name (Herald's bound).
const TOPIC_BYTES_MAX: usize = 128;
/// Quiet time between phases, so one phase's tail does not weigh on the next one's figures.
const PHASE_GAP: Duration = Duration::from_secs(1);
/// Longest wait for a worker to exit after `Stop`; then it is killed.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(10);
/// How often the progress bar is redrawn from the counts.
const BAR_TICK: Duration = Duration::from_millis(200);
/// A subscriber token's lifetime, to outlast any run.
const TOKEN_TTL_SECS: u64 = 24 * 3600;
/// How long the machine's CPU is watched before the run, to tell whether it was quiet.
const BUSY_SAMPLE: Duration = Duration::from_secs(1);
/// Largest `--idle-secs`.
const IDLE_SECS_MAX: f64 = 600.0;
/// Long-poll wait bounds, as Herald accepts them.
const POLL_TIMEOUT_SECS_MAX: u64 = 60;
/// Largest `--churn-per-sec`: beyond it the run measures reconnects, not delivery.
const CHURN_PER_SEC_MAX: f64 = 10_000.0;

/// Options of `herald-bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Subscriber kind.
    #[arg(long, value_enum, default_value = "herald-sse")]
    pub kind: Kind,
    /// The server's base URL; the subscriber and publish URLs derive from it unless given.
    /// Several (repeated, or separated by commas): the nodes of a cluster, round-robin: client
    /// `i` (of all users' clients, user by user) and publisher `i` go to URL `i mod n`.
    #[arg(long = "url", value_delimiter = ',', default_value = "http://127.0.0.1:7300")]
    pub urls: Vec<String>,
    /// Subscriber URL, `{user}` replaced by the user, `{topic}` by `--topic` (default:
    /// `/v1/stream`, `/v1/ws`, `/v1/poll` for Herald, `/sub/{user}` for sse-url, Socket.IO's
    /// handshake with `user={user}`; with `--topic`: Herald's with `?topics={topic}`,
    /// `/sub/{topic}`, Socket.IO's handshake with `room={topic}`). Only with one `--url`.
    #[arg(long)]
    pub sub_url: Option<String>,
    /// Publish URL, `{user}` replaced by the user, `{topic}` by `--topic` (default: `/v1/notify`
    /// for Herald, `/pub/{user}` for sse-url, `/emit/{user}` for socketio; with `--topic`:
    /// `/pub/{topic}`, `/emit/{topic}`). Only with one `--url`.
    #[arg(long)]
    pub pub_url: Option<String>,
    /// Broadcast: every client listens to this one topic (Herald: `?topics=` and a token whose
    /// `topics` claim allows it; Nchan: this channel; Socket.IO: this room) and every publish
    /// goes to it (Herald: an ephemeral topic event). Each client must get every acknowledged
    /// publish once; the report adds each message's time to its first and to its last client.
    /// 1–128 bytes of `[A-Za-z0-9_]` (Herald also takes `.:@/-`).
    #[arg(long)]
    pub topic: Option<String>,
    /// Herald's subscriber-token secret.
    #[arg(long, env = "HERALD_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Herald's publisher API key.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub users: u32,
    /// Clients (tabs) per user, all in one session.
    #[arg(long, default_value_t = 3)]
    pub clients_per_user: u32,
    /// Worker processes holding the subscribers; 0 picks one per 8,000 clients, at least 2.
    #[arg(long, default_value_t = 0)]
    pub workers: u32,
    /// Concurrent publishers, each on its own kept-alive connection.
    #[arg(long, default_value_t = 8)]
    pub publishers: u32,
    /// Herald only: publishes per request (1 to 1,000). Over 1, each publisher sends them as
    /// one `POST /v1/notify/batch`, every entry to a random user of its own; a phase's rate and
    /// count are still in publishes (a steady phase sends a batch when its last is due).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(publish::BATCH_MAX)))]
    pub batch: u32,
    /// A publish phase, in order: `max:SECS`, `steady:RATE:SECS` or `burst:COUNT`. Repeatable.
    #[arg(long = "phase", value_parser = PhaseSpec::parse)]
    pub phases: Vec<PhaseSpec>,
    /// Seconds to wait after connecting before measuring the idle server.
    #[arg(long, default_value_t = 2.0)]
    pub idle_secs: f64,
    /// Take the idle memory's "before" sample with no client connected. By default each worker
    /// first connects one client and the sample is taken after those: what a server sets up once,
    /// on its first connection (code paged in, caches, threads), is then not divided among the
    /// clients as if each cost it.
    #[arg(long)]
    pub no_warmup: bool,
    /// A server process to measure (its descendants too). Repeatable: the nodes of a cluster,
    /// its broker; their memory and CPU are added up.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Also measure the part of a PostgreSQL cluster that serves `--postgres-db`: this
    /// postmaster, its background processes, and the client backends of that database (not
    /// those of other databases).
    #[arg(long, requires = "postgres_db")]
    pub postgres_pid: Option<u32>,
    /// The database of `--postgres-pid`.
    #[arg(long, requires = "postgres_pid")]
    pub postgres_db: Option<String>,
    /// A command (run with `sh -c`) printing `NAME VALUE` lines, read before and after each
    /// phase; each counter's change is reported (bench/cluster.sh: the broker's traffic).
    #[arg(long)]
    pub counters_cmd: Option<String>,
    /// A name for this run in the reports.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Which round of a comparison this run is (`bench/compare.sh` with `ROUNDS`): `herald-bench
    /// compare` reports, per label, the median of its rounds (of each round's last run).
    #[arg(long)]
    pub round: Option<u32>,
    /// Also append the JSON line to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Connections being opened at once, per worker.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Users are named PREFIX0, PREFIX1, … (Nchan channel ids are matched by `\w+`).
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// Long-poll `timeout` (seconds).
    #[arg(long, default_value_t = 20)]
    pub poll_timeout_secs: u64,
    /// After a phase's last publish, the longest wait for its last deliveries (the wait also
    /// ends once nothing arrived for 3 s). A broadcast that falls behind needs more than the
    /// default.
    #[arg(long, default_value_t = 30.0)]
    pub drain_max_secs: f64,
    /// Reconnect churn during the phases (Herald SSE only): this many times per second in
    /// all, a random client drops its connection and opens a new one that resumes where it
    /// was, as a tab does on a network change. Such drops do not count towards a client's
    /// bound on reconnects.
    #[arg(long, default_value_t = 0.0)]
    pub churn_per_sec: f64,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Exit with status 1 if anything was lost, duplicated or misrouted, or a client failed to
    /// connect.
    #[arg(long)]
    pub strict: bool,
    /// Exit with status 3 if, in some phase, programs other than the server and this generator
    /// used more than this much CPU (seconds): the figures were disturbed, run again.
    #[arg(long)]
    pub disturbed_cpu_secs: Option<f64>,
    /// Exit with status 3 if, in some phase, the hypervisor stole more than this much CPU
    /// (seconds, `steal` in /proc/stat) from the machine: the figures were disturbed.
    #[arg(long)]
    pub disturbed_steal_secs: Option<f64>,
}

impl RunArgs {
    /// The subscriber and publish URL of each server (node), in `--url` order.
    fn urls(&self) -> (Vec<String>, Vec<String>) {
        let broadcast = self.topic.is_some();
        let sub = |base: &str| {
            self.sub_url.clone().unwrap_or_else(|| match self.kind {
                Kind::HeraldSse if broadcast => format!("{base}/v1/stream?topics={{topic}}"),
                Kind::HeraldWs if broadcast => format!("{base}/v1/ws?topics={{topic}}"),
                Kind::HeraldPoll if broadcast => format!("{base}/v1/poll?topics={{topic}}"),
                Kind::HeraldSse => format!("{base}/v1/stream"),
                Kind::HeraldWs => format!("{base}/v1/ws"),
                Kind::HeraldPoll => format!("{base}/v1/poll"),
                Kind::SseUrl if broadcast => format!("{base}/sub/{{topic}}"),
                Kind::SseUrl => format!("{base}/sub/{{user}}"),
                Kind::Socketio if broadcast => {
                    format!("{base}/socket.io/?EIO=4&transport=websocket&room={{topic}}")
                }
                Kind::Socketio => format!("{base}/socket.io/?EIO=4&transport=websocket&user={{user}}"),
            })
        };
        let publish = |base: &str| {
            self.pub_url.clone().unwrap_or_else(|| match self.kind {
                Kind::HeraldSse | Kind::HeraldWs | Kind::HeraldPoll if self.batch > 1 => {
                    format!("{base}/v1/notify/batch")
                }
                Kind::HeraldSse | Kind::HeraldWs | Kind::HeraldPoll => format!("{base}/v1/notify"),
                Kind::SseUrl if broadcast => format!("{base}/pub/{{topic}}"),
                Kind::SseUrl => format!("{base}/pub/{{user}}"),
                Kind::Socketio if broadcast => format!("{base}/emit/{{topic}}"),
                Kind::Socketio => format!("{base}/emit/{{user}}"),
            })
        };
        let with_topic = |url: String| match &self.topic {
            Some(topic) => url.replace("{topic}", topic),
            None => url,
        };
        let bases: Vec<&str> = self.urls.iter().map(|u| u.trim_end_matches('/')).collect();
        (
            bases.iter().map(|b| with_topic(sub(b))).collect(),
            bases.iter().map(|b| with_topic(publish(b))).collect(),
        )
    }

    /// How many audiences the accounting counts (see [`audience_of`]): the users, or one topic.
    fn audiences(&self) -> u32 {
        if self.topic.is_some() { 1 } else { self.users }
    }

    /// The processes measured as the server.
    fn server_set(&self) -> ServerSet {
        ServerSet {
            pids: self.server_pids.clone(),
            postgres: self
                .postgres_pid
                .zip(self.postgres_db.clone())
                .map(|(postmaster, database)| PostgresShare { postmaster, database }),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        let clients = u64::from(self.users) * u64::from(self.clients_per_user);
        ensure!(clients > 0, "no clients: give --users and --clients-per-user above 0");
        ensure!(clients <= CLIENTS_MAX, "{clients} clients: at most {CLIENTS_MAX}");
        ensure!((1..=URLS_MAX).contains(&self.urls.len()), "1 to {URLS_MAX} --url");
        ensure!(
            self.urls.len() == 1 || (self.sub_url.is_none() && self.pub_url.is_none()),
            "--sub-url and --pub-url go with one --url only"
        );
        ensure!((1..=PUBLISHERS_MAX).contains(&self.publishers), "1 to {PUBLISHERS_MAX} publishers");
        ensure!(self.batch == 1 || self.kind.is_herald(), "--batch is Herald's (POST /v1/notify/batch) only");
        ensure!(self.workers <= WORKERS_MAX, "at most {WORKERS_MAX} workers");
        ensure!((0.0..=IDLE_SECS_MAX).contains(&self.idle_secs), "--idle-secs is 0 to {IDLE_SECS_MAX}");
        ensure!(self.poll_timeout_secs <= POLL_TIMEOUT_SECS_MAX, "--poll-timeout-secs is at most 60");
        ensure!(
            (0.0..=CHURN_PER_SEC_MAX).contains(&self.churn_per_sec),
            "--churn-per-sec is 0 to {CHURN_PER_SEC_MAX}"
        );
        ensure!(
            self.churn_per_sec == 0.0 || self.kind == Kind::HeraldSse,
            "--churn-per-sec is for --kind herald-sse"
        );
        ensure!(
            !self.user_prefix.is_empty()
                && self.user_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "--user-prefix must be letters, digits or _"
        );
        ensure!(
            self.drain_max_secs > 0.0 && self.drain_max_secs <= DRAIN_MAX_SECS_MAX,
            "--drain-max-secs is more than 0 and at most {DRAIN_MAX_SECS_MAX}"
        );
        if let Some(topic) = &self.topic {
            // Nchan's channel ids are matched by `\w+` and Socket.IO's rooms by the emit route's
            // `[A-Za-z0-9_-]`; Herald's topics allow a few more characters.
            let allowed = |b: u8| {
                b.is_ascii_alphanumeric() || b == b'_' || (self.kind.is_herald() && b".:@/-".contains(&b))
            };
            ensure!(
                (1..=TOPIC_BYTES_MAX).contains(&topic.len()) && topic.bytes().all(allowed),
                "--topic: 1 to {TOPIC_BYTES_MAX} bytes of [A-Za-z0-9_] (for Herald also .:@/-)"
            );
            ensure!(self.batch == 1, "--topic publishes one message per request (no --batch)");
            ensure!(
                self.churn_per_sec == 0.0,
                "--topic and --churn-per-sec do not go together: topic events are ephemeral, so a tab \
                 away for a moment misses them"
            );
        }
        if self.kind.is_herald() {
            ensure!(self.secret.is_some(), "Herald needs --secret (or HERALD_SECRET)");
            ensure!(self.api_key.is_some(), "Herald needs --api-key (or HERALD_API_KEY)");
        }
        Ok(())
    }
}

/// Runs the benchmark and prints the table and the JSON line. Returns the result.
pub fn run(mut args: RunArgs) -> anyhow::Result<RunResult> {
    args.validate()?;
    if args.phases.is_empty() {
        args.phases.push(PhaseSpec::Max { secs: 5.0 });
    }
    raise_fd_limit(FD_LIMIT_WANT);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, run_async(&args))?;
    let line = serde_json::to_string(&result)?;
    print!("{}", result.human());
    println!("{line}");
    if let Some(path) = &args.json_out {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        writeln!(file, "{line}")?;
    }
    Ok(result)
}

async fn run_async(args: &RunArgs) -> anyhow::Result<RunResult> {
    let started_at = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
    let clients = u64::from(args.users) * u64::from(args.clients_per_user);
    let workers = match args.workers {
        0 => (clients.div_ceil(CLIENTS_PER_WORKER_AUTO) as u32).max(WORKERS_AUTO_MIN),
        n => n,
    }
    .min(clients as u32);
    let (sub_urls, pub_urls) = args.urls();
    for url in &sub_urls {
        Endpoint::parse(url)?;
    }
    let targets = pub_urls
        .iter()
        .map(|url| {
            Ok(Rc::new(publish::Target {
                endpoint: Endpoint::parse(url)?,
                herald_api_key: if args.kind.is_herald() { args.api_key.clone() } else { None },
                user_prefix: args.user_prefix.clone(),
                topic: args.topic.clone(),
                batch: args.batch,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let machine = Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_1m_at_start: load_1m(),
        busy_pct_before: busy_pct(BUSY_SAMPLE).await,
    };
    let bar = Bar::new(!args.no_progress);

    let configs = (0..workers).map(|worker| WorkerConfig {
        worker,
        workers,
        kind: args.kind,
        sub_urls: sub_urls.clone(),
        users: args.users,
        clients_per_user: args.clients_per_user,
        user_prefix: args.user_prefix.clone(),
        secret: args.secret.clone(),
        token_ttl_secs: TOKEN_TTL_SECS,
        connect_concurrency: args.connect_concurrency,
        source_ip: Some(worker_source_ip(worker)),
        poll_timeout_secs: args.poll_timeout_secs,
        churn_per_sec: args.churn_per_sec / f64::from(workers),
        topic: args.topic.clone(),
    });
    let mut fleet = Fleet::spawn(configs.collect()).await?;
    let result = measure(args, &mut fleet, &bar, &targets, clients, workers).await;
    bar.finish();
    fleet.stop().await;
    let (connect, idle, phases) = result?;
    Ok(RunResult {
        label: args.label.clone(),
        round: args.round,
        started_at,
        kind: args.kind,
        sub_urls,
        pub_urls,
        users: args.users,
        clients_per_user: args.clients_per_user,
        clients,
        workers,
        publishers: args.publishers,
        batch: args.batch,
        topic: args.topic.clone(),
        server_pids: args.server_pids.clone(),
        postgres: args.server_set().postgres,
        machine,
        connect,
        idle,
        phases,
    })
}

async fn measure(
    args: &RunArgs,
    fleet: &mut Fleet,
    bar: &Bar,
    targets: &[Rc<publish::Target>],
    clients: u64,
    workers: u32,
) -> anyhow::Result<(ConnectResult, IdleResult, Vec<PhaseResult>)> {
    let me = [std::process::id()];
    let set = args.server_set();
    let server = |set: &ServerSet| (!set.is_empty()).then(|| procstat::sample(set, &me));

    // Connect: the warm-up clients (one per worker), the "before" sample, then the rest.
    let mut connect_latency = stats::histogram();
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    // Connected clients per audience (user, or the one topic of a broadcast).
    let mut per_user = vec![0u32; args.audiences() as usize];
    let mut add = |reports: Vec<Report>, connected: &mut u64| {
        for report in reports {
            if let Report::Connected { ok, failed: f, latency, clients: indices, first_error: e } = report {
                *connected += ok;
                failed += f;
                stats::add_pairs(&mut connect_latency, &latency);
                for index in indices {
                    per_user[audience_of(args.topic.is_some(), index, args.clients_per_user) as usize] += 1;
                }
                if first_error.is_none() {
                    first_error = e;
                }
            }
        }
    };
    let is_connected = |r: &Report| matches!(r, Report::Connected { .. });
    let mut warmup_clients = 0;
    if !args.no_warmup {
        bar.stage("warm-up: one client per worker", 0);
        fleet.send_all(&Command::ConnectFirst).await?;
        let reports =
            fleet.collect(Instant::now() + CONNECT_STAGE_TIMEOUT, bar, |_, _| {}, is_connected).await?;
        add(reports, &mut warmup_clients);
        // Let the server finish what the first connections started.
        tokio::time::sleep(WARMUP_SETTLE).await;
    }
    let server_before = server(&set);
    bar.stage(&format!("connect {clients} {} over {workers} workers", args.kind.name()), clients);
    let started = Instant::now();
    fleet.send_all(&Command::Connect).await?;
    let deadline = started + CONNECT_STAGE_TIMEOUT;
    let reports = fleet.collect(deadline, bar, |_, p| bar.set(p.connected, ""), is_connected).await?;
    add(reports, &mut connected);
    let connect_secs = started.elapsed().as_secs_f64();
    let connect = ConnectResult {
        connected: warmup_clients + connected,
        failed,
        secs: connect_secs,
        per_sec: connected as f64 / connect_secs.max(1e-9),
        latency: Percentiles::of(&connect_latency),
        first_error,
    };
    ensure!(connected > 0, "no client connected: {}", connect.first_error.as_deref().unwrap_or("?"));

    // Idle.
    let idle_cpu_before = server(&set);
    bar.stage("idle", 0);
    fleet.idle(Duration::from_secs_f64(args.idle_secs), bar).await?;
    let server_after = server(&set);
    let per_client = |f: fn(&ProcSample) -> Option<f64>| match (&server_before, &server_after) {
        (Some(before), Some(after)) => Some((f(after)? - f(before)?) / connected as f64),
        _ => None,
    };
    let idle = IdleResult {
        settle_secs: args.idle_secs,
        warmup_clients,
        rss_bytes_per_client: per_client(|s| Some(s.rss_bytes as f64)),
        pss_bytes_per_client: per_client(|s| s.pss_bytes.map(|b| b as f64)),
        server_cpu_secs: match (&idle_cpu_before, &server_after) {
            (Some(before), Some(after)) => Some(after.cpu_secs - before.cpu_secs),
            _ => None,
        },
        server_before,
        server_after,
    };

    // Phases.
    let mut phases = Vec::new();
    let mut next_id = 0u64;
    for (index, &spec) in args.phases.iter().enumerate() {
        fleet.send_all(&Command::Phase { index }).await?;
        fleet
            .collect(
                Instant::now() + VERIFY_TIMEOUT,
                bar,
                |_, _| {},
                |r| matches!(r, Report::PhaseStarted { .. }),
            )
            .await?;
        let progress_before = fleet.total();
        let server_before = server(&set);
        let by_name_before = procstat::cpu_by_name(&set, &me);
        let generator_before = procstat::sample_tree(&me, &[]);
        let counters_before = match &args.counters_cmd {
            Some(command) => Some(counters::read(command).await?),
            None => None,
        };
        let machine_before = procstat::machine_cpu();
        let state = PhaseState::new(next_id);
        let start_ns = now_ns();
        let started = Instant::now();
        let length = match spec {
            PhaseSpec::Max { secs } | PhaseSpec::Steady { secs, .. } => (secs * 1000.0) as u64,
            PhaseSpec::Burst { count } => count,
        };
        bar.stage(&format!("{spec}, {} publishers", args.publishers), length);
        let publishers = join_all((0..args.publishers).map(|i| {
            let seed = start_ns ^ (u64::from(i) << 32);
            tokio::task::spawn_local(publish::publisher(
                state.clone(),
                targets[i as usize % targets.len()].clone(),
                spec,
                args.audiences(),
                seed,
            ))
        }));
        tokio::pin!(publishers);
        let mut tick = tokio::time::interval(BAR_TICK);
        loop {
            tokio::select! {
                _ = &mut publishers => break,
                report = fleet.next() => { report?; }
                _ = tick.tick() => {
                    let position = match spec {
                        PhaseSpec::Burst { .. } => state.attempted(),
                        _ => started.elapsed().as_millis() as u64,
                    };
                    bar.set(position, &phase_message(&state, &fleet.total(), started));
                }
            }
        }
        let publish_secs = started.elapsed().as_secs_f64();

        // Drain: wait until every expected delivery arrived, or arrivals stop.
        let expected: u64 = state
            .log
            .borrow()
            .iter()
            .filter_map(|&u| usize::try_from(u).ok())
            .map(|u| u64::from(per_user[u]))
            .sum();
        bar.stage("waiting for the last deliveries", expected);
        let drain_started = Instant::now();
        let (mut last_count, mut last_change) = (fleet.total().phase_received, Instant::now());
        while fleet.total().phase_received < expected
            && last_change.elapsed() < DRAIN_STALL
            && drain_started.elapsed().as_secs_f64() < args.drain_max_secs
        {
            timeout(BAR_TICK, fleet.next()).await.unwrap_or(Ok(()))?;
            let now = fleet.total().phase_received;
            if now != last_count {
                (last_count, last_change) = (now, Instant::now());
            }
            bar.set(now, "");
        }
        let server_after = server(&set);
        let by_name_after = procstat::cpu_by_name(&set, &me);
        let generator_after = procstat::sample_tree(&me, &[]);
        let machine_after = procstat::machine_cpu();
        let counters = match (&args.counters_cmd, &counters_before) {
            (Some(command), Some(before)) => counters::change(before, &counters::read(command).await?),
            _ => BTreeMap::new(),
        };
        next_id += state.attempted();

        // Account.
        let log = state.log.borrow().clone();
        let line = serde_json::to_string(&Command::Verify { phase: index, first_id: state.first_id, log })?;
        fleet.send_line_all(&line).await?;
        let mut deliveries = DeliveryStats::default();
        let mut latency = stats::histogram();
        let mut closes: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_arrival = 0;
        let mut reach: HashMap<u64, Reach> = HashMap::new();
        let verified = fleet
            .collect(
                Instant::now() + VERIFY_TIMEOUT,
                bar,
                |_, _| {},
                |r| matches!(r, Report::Verified { .. }),
            )
            .await?;
        for report in verified {
            if let Report::Verified { stats: s, latency: l, closes: c, last_arrival_ns, reach: r, .. } =
                report
            {
                for here in r {
                    reach.entry(here.id).and_modify(|all| all.merge(&here)).or_insert(here);
                }
                deliveries.add(&s);
                stats::add_pairs(&mut latency, &l);
                for (reason, n) in c {
                    *closes.entry(reason).or_default() += n;
                }
                last_arrival = last_arrival.max(last_arrival_ns);
            }
        }
        let broadcast =
            args.topic.is_some().then(|| broadcast_result(&reach, state.first_id, &state.log.borrow()));
        let progress_after = fleet.total();
        let delivery_secs = last_arrival.saturating_sub(start_ns) as f64 / 1e9;
        let server_cpu_secs = match (&server_before, &server_after) {
            (Some(b), Some(a)) => Some(a.cpu_secs - b.cpu_secs),
            _ => None,
        };
        phases.push(PhaseResult {
            name: spec.to_string(),
            spec,
            publish_secs,
            attempted: state.attempted(),
            acked: state.acked.get(),
            errors: state.errors.get(),
            first_error: state.first_error.borrow().clone(),
            publishes_per_sec: state.acked.get() as f64 / publish_secs.max(1e-9),
            deliveries_per_sec: if delivery_secs > 0.0 {
                deliveries.delivered as f64 / delivery_secs
            } else {
                0.0
            },
            delivery_secs,
            latency: Percentiles::of(&latency),
            publish_round_trip: Percentiles::of(&state.round_trip.borrow()),
            server_cpu_us_per_delivery: server_cpu_secs
                .filter(|_| deliveries.delivered > 0)
                .map(|cpu| cpu * 1e6 / deliveries.delivered as f64),
            server_cpu_secs,
            generator_cpu_secs: generator_after.cpu_secs - generator_before.cpu_secs,
            machine_busy_secs: machine_after.busy - machine_before.busy,
            steal_cpu_secs: machine_after.steal - machine_before.steal,
            other_cpu_secs: server_cpu_secs.map(|server| {
                machine_after.busy
                    - machine_before.busy
                    - server
                    - (generator_after.cpu_secs - generator_before.cpu_secs)
            }),
            server_after,
            disconnects: progress_after.disconnects - progress_before.disconnects,
            reconnects: progress_after.reconnects - progress_before.reconnects,
            closes,
            deliveries,
            counters,
            server_cpu_by_name: by_name_after
                .iter()
                .map(|(name, after)| (name.clone(), after - by_name_before.get(name).copied().unwrap_or(0.0)))
                .collect(),
            broadcast,
        });
        if index + 1 < args.phases.len() {
            bar.stage("pause between phases", 0);
            fleet.idle(PHASE_GAP, bar).await?;
        }
    }
    Ok((connect, idle, phases))
}

/// Each acknowledged message's time to its first and last client, from what the workers saw
/// (`reach`, by publish id) and the phase's publish log (`log[i]`: publish `first_id + i`, -1
/// when it was not acknowledged).
fn broadcast_result(reach: &HashMap<u64, Reach>, first_id: u64, log: &[i64]) -> BroadcastResult {
    let (mut to_first, mut to_last) = (stats::histogram(), stats::histogram());
    let mut messages = 0;
    for (i, &audience) in log.iter().enumerate() {
        if audience < 0 {
            continue;
        }
        if let Some(r) = reach.get(&(first_id + i as u64)) {
            messages += 1;
            stats::record(&mut to_first, r.first_ns);
            stats::record(&mut to_last, r.last_ns);
        }
    }
    BroadcastResult { messages, to_first: Percentiles::of(&to_first), to_last: Percentiles::of(&to_last) }
}

fn phase_message(state: &PhaseState, total: &Progress, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    format!(
        "{} acked ({:.0}/s), {} errors, {} received ({:.0}/s), {} connected",
        state.acked.get(),
        state.acked.get() as f64 / secs,
        state.errors.get(),
        total.phase_received,
        total.phase_received as f64 / secs,
        total.connected,
    )
}

/// The share of the machine's CPU that was busy during `over`, in percent.
async fn busy_pct(over: Duration) -> f64 {
    let before = procstat::machine_cpu();
    tokio::time::sleep(over).await;
    let after = procstat::machine_cpu();
    let total = after.total - before.total;
    if total > 0.0 { 100.0 * (after.busy + after.steal - before.busy - before.steal) / total } else { 0.0 }
}

/// The 1-minute load average.
fn load_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The progress bar on stderr (hidden when `--no-progress` or stderr is not a terminal).
struct Bar(ProgressBar);

impl Bar {
    fn new(show: bool) -> Self {
        let target = if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Self(ProgressBar::with_draw_target(None, target))
    }

    fn stage(&self, name: &str, length: u64) {
        let template = if length > 0 {
            "{prefix:.bold} [{elapsed_precise}] {wide_bar} {pos}/{len}\n  {msg}"
        } else {
            "{prefix:.bold} [{elapsed_precise}] {spinner} {msg}"
        };
        self.0.set_style(ProgressStyle::with_template(template).expect("constant template"));
        self.0.set_prefix(name.to_owned());
        self.0.set_length(length);
        self.0.set_position(0);
        self.0.set_message("");
        self.0.reset_elapsed();
    }

    fn set(&self, position: u64, message: &str) {
        self.0.set_position(position);
        if !message.is_empty() {
            self.0.set_message(message.to_owned());
        }
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// The worker processes.
struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    reports: mpsc::UnboundedReceiver<(usize, anyhow::Result<Report>)>,
    progress: Vec<Progress>,
}

impl Fleet {
    /// Starts one worker per config and waits until each is ready.
    async fn spawn(configs: Vec<WorkerConfig>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program to start workers")?;
        let (tx, reports) = mpsc::unbounded_channel();
        let mut fleet = Self {
            children: Vec::new(),
            stdins: Vec::new(),
            reports,
            progress: vec![Progress::default(); configs.len()],
        };
        for (index, config) in configs.iter().enumerate() {
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker")?;
            let stdout = child.stdout.take().expect("piped");
            let mut stdin = child.stdin.take().expect("piped");
            let mut line = serde_json::to_vec(config)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                let mut lines = BufReader::new(stdout).lines();
                loop {
                    let report = match lines.next_line().await {
                        Ok(Some(line)) => serde_json::from_str::<Report>(&line)
                            .with_context(|| format!("bad report {line:?}")),
                        Ok(None) => Err(anyhow::anyhow!("worker {index} exited")),
                        Err(e) => Err(anyhow::Error::from(e).context(format!("reading worker {index}"))),
                    };
                    let end = report.is_err();
                    if tx.send((index, report)).is_err() || end {
                        break;
                    }
                }
            });
            fleet.children.push(child);
            fleet.stdins.push(stdin);
        }
        let deadline = Instant::now() + WORKER_START_TIMEOUT;
        let hidden = Bar::new(false);
        fleet.collect(deadline, &hidden, |_, _| {}, |r| matches!(r, Report::Ready { .. })).await?;
        Ok(fleet)
    }

    async fn send_line_all(&mut self, line: &str) -> anyhow::Result<()> {
        for stdin in &mut self.stdins {
            stdin.write_all(line.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await?;
        }
        Ok(())
    }

    async fn send_all(&mut self, command: &Command) -> anyhow::Result<()> {
        self.send_line_all(&serde_json::to_string(command)?).await
    }

    /// Waits for the next report; progress is recorded, a fatal report or a dead worker is an
    /// error, anything else is returned.
    async fn next_report(&mut self) -> anyhow::Result<(usize, Report)> {
        let (worker, report) = self.reports.recv().await.context("every worker is gone")?;
        match report? {
            Report::Progress(p) => {
                self.progress[worker] = p;
                Ok((worker, Report::Progress(p)))
            }
            Report::PhaseStarted { index } => {
                self.progress[worker].phase_received = 0;
                Ok((worker, Report::PhaseStarted { index }))
            }
            Report::Fatal { error } => bail!("worker {worker} failed: {error}"),
            other => Ok((worker, other)),
        }
    }

    /// Takes in the next report, expecting only progress.
    async fn next(&mut self) -> anyhow::Result<()> {
        match self.next_report().await? {
            (_, Report::Progress(_)) => Ok(()),
            (worker, other) => bail!("unexpected report from worker {worker}: {other:?}"),
        }
    }

    /// Waits until every worker sent one report that `wanted` accepts, and returns them in
    /// worker order; progress goes to `on_progress` with the totals.
    async fn collect(
        &mut self,
        deadline: Instant,
        bar: &Bar,
        on_progress: impl Fn(&Bar, &Progress),
        wanted: impl Fn(&Report) -> bool,
    ) -> anyhow::Result<Vec<Report>> {
        let mut got: Vec<Option<Report>> = vec![None; self.stdins.len()];
        while got.iter().any(Option::is_none) {
            let (worker, report) = tokio::time::timeout_at(deadline, self.next_report())
                .await
                .context("the workers did not answer in time")??;
            match report {
                Report::Progress(_) => on_progress(bar, &self.total()),
                report if wanted(&report) => got[worker] = Some(report),
                other => bail!("unexpected report from worker {worker}: {other:?}"),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Lets `duration` pass while taking in progress.
    async fn idle(&mut self, duration: Duration, bar: &Bar) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        while let Ok(report) = tokio::time::timeout_at(until, self.next()).await {
            report?;
            bar.set(0, &format!("{} connected", self.total().connected));
        }
        Ok(())
    }

    /// The workers' counts added up.
    fn total(&self) -> Progress {
        self.progress.iter().fold(Progress::default(), |mut t, p| {
            t.connected += p.connected;
            t.phase_received += p.phase_received;
            t.disconnects += p.disconnects;
            t.reconnects += p.reconnects;
            t
        })
    }

    /// Tells every worker to stop and waits for them (killing those that do not exit).
    async fn stop(mut self) {
        let _ = self.send_all(&Command::Stop).await;
        for child in &mut self.children {
            if timeout(WORKER_EXIT_GRACE, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}
