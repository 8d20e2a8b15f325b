//! A worker process: holds its share of the subscriber connections on one thread, records what
//! arrives, and answers the parent's commands (see [`crate::proto`]).
//!
//! Each client is one task. The first time it is ready (Herald's `hello`, Nchan's 200, the
//! Socket.IO namespace joined) it tells the connect coordinator; if its connection ends later it
//! opens a new one, resuming where it was for Herald (`last_event_id`, `client`), with
//! `Last-Event-ID` for plain SSE, from scratch for Socket.IO (which cannot resume).
//!
//! In a broadcast (`--topic`) every client listens to the one topic (Herald: `?topics=` in its
//! URL and the topic in its token's `topics` claim; Nchan's channel and Socket.IO's room are in
//! the URLs), its `topic` events count as deliveries, and the worker also keeps, per publish, the
//! latency to its first and its last client ([`Reach`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use futures::stream::FuturesUnordered;
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::http::{BodyReader, Conn, Endpoint};
use crate::proto::{Command, Kind, Progress, Reach, Report, WorkerConfig};
use crate::stats;
use crate::sys::{connect_from, now_ns, raise_fd_limit};
use crate::verify::{ClientInfo, verify};
use crate::wire::{drain_events, json_str, scan};

/// How often a worker reports its counts to the parent. The parent's drain wait and progress
/// bar see arrivals this late at most.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Open files a worker asks for: what one process may hold here (the hard limit is 20,000),
/// less a margin for the runtime's own descriptors.
pub const FD_LIMIT_WANT: u64 = 19_500;
/// Longest wait for a connection to open and become ready (head, `hello`, namespace joined).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to open a client's first connection before it counts as failed.
const CONNECT_ATTEMPTS_MAX: u32 = 3;
/// Pause between those attempts.
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(250);
/// New connections a client opens after its stream ended, in the whole run. Bounds a server
/// that drops every connection at once from turning the run into a reconnect storm.
const RECONNECTS_MAX: u32 = 20;
/// Pause before such a reconnect (a browser's EventSource waits about 3 s; we resume sooner so
/// that the run measures delivery, not the pause).
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Largest undelivered event text a client buffers; a bigger one is a protocol error.
const EVENT_BYTES_MAX: usize = 1024 * 1024;
/// How much longer than its `timeout` a long-poll may take before the client gives up on it.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// WebSocket read buffer of a client. tungstenite allocates it up front (128 KiB by default);
/// the frames here are small.
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;

/// Runs a worker: reads its config and commands on stdin, reports on stdout.
pub fn main() -> anyhow::Result<()> {
    let fd_limit = raise_fd_limit(FD_LIMIT_WANT);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(fd_limit))
}

async fn serve(fd_limit: u64) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let config: WorkerConfig =
        serde_json::from_str(&lines.next_line().await?.context("no config on stdin")?)?;
    let (out, mut out_rx) = mpsc::unbounded_channel::<Report>();
    let writer = tokio::task::spawn_local(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(report) = out_rx.recv().await {
            let mut line = serde_json::to_vec(&report).expect("reports serialize");
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let _ = out.send(Report::Ready { pid: std::process::id(), fd_limit });

    let shared = Rc::new(Shared { track_reach: config.topic.is_some(), ..Shared::default() });
    let clients = build_clients(&config)?;
    let kicks: Vec<Rc<Notify>> = clients.iter().map(|c| c.kick.clone()).collect();
    let mut churn = None;
    let mut infos: Vec<ClientInfo> =
        clients.iter().map(|c| ClientInfo { user: config.audience_of(c.global), connected: false }).collect();
    let mut to_connect = Some(clients);

    let ticker = {
        let shared = shared.clone();
        let out = out.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            loop {
                tick.tick().await;
                if out.send(Report::Progress(shared.progress.get())).is_err() {
                    break;
                }
            }
        })
    };

    let result = async {
        while let Some(line) = lines.next_line().await? {
            match serde_json::from_str::<Command>(&line).context("bad command")? {
                Command::ConnectFirst => {
                    let clients = to_connect.as_mut().context("ConnectFirst after Connect")?;
                    let first = if clients.is_empty() { Vec::new() } else { vec![clients.remove(0)] };
                    let report = connect_all(&config, &shared, first, &mut infos).await;
                    let _ = out.send(report);
                }
                Command::Connect => {
                    let clients = to_connect.take().context("Connect sent twice")?;
                    let report = connect_all(&config, &shared, clients, &mut infos).await;
                    let _ = out.send(report);
                }
                Command::Phase { index } => {
                    if churn.is_none() && config.churn_per_sec > 0.0 && !kicks.is_empty() {
                        churn = Some(tokio::task::spawn_local(churn_clients(
                            config.churn_per_sec,
                            kicks.clone(),
                        )));
                    }
                    shared.start_phase();
                    let _ = out.send(Report::PhaseStarted { index });
                }
                Command::Verify { phase, first_id, log } => {
                    let mut receptions = std::mem::take(&mut *shared.receptions.borrow_mut());
                    let stats = verify(&mut receptions, &infos, first_id, &log);
                    let latency = shared.latency.borrow().as_ref().map(stats::to_pairs).unwrap_or_default();
                    let closes = std::mem::take(&mut *shared.closes.borrow_mut());
                    let last_arrival_ns = shared.last_arrival_ns.get();
                    let reach = std::mem::take(&mut *shared.reach.borrow_mut()).into_values().collect();
                    let _ =
                        out.send(Report::Verified { phase, stats, latency, closes, last_arrival_ns, reach });
                }
                Command::Stop => break,
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = &result {
        let _ = out.send(Report::Fatal { error: format!("{error:#}") });
    }
    ticker.abort();
    if let Some(churn) = churn {
        churn.abort();
    }
    drop(out);
    let _ = writer.await;
    result
}

/// Drops a random client's connection `per_sec` times a second (`--churn-per-sec`), until
/// aborted. A kick that finds its client between connections drops the next one at once.
async fn churn_clients(per_sec: f64, kicks: Vec<Rc<Notify>>) {
    use rand::Rng as _;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = rand::rng();
    loop {
        tick.tick().await;
        kicks[rng.random_range(0..kicks.len())].notify_one();
    }
}

/// What every client task of a worker shares (one thread: no locks).
#[derive(Default)]
struct Shared {
    /// `(client slot, publish id)` of every arrival in the current phase.
    receptions: RefCell<Vec<(u32, u64)>>,
    latency: RefCell<Option<Histogram<u64>>>,
    progress: Cell<Progress>,
    closes: RefCell<BTreeMap<String, u64>>,
    last_arrival_ns: Cell<u64>,
    /// Whether to keep [`Self::reach`] (a broadcast): per publish id, a map entry, which a
    /// run that publishes to random users has no use for.
    track_reach: bool,
    /// Per publish id of the current phase: its latency to the first and last client here.
    reach: RefCell<HashMap<u64, Reach>>,
}

impl Shared {
    fn start_phase(&self) {
        self.receptions.borrow_mut().clear();
        *self.latency.borrow_mut() = Some(stats::histogram());
        self.closes.borrow_mut().clear();
        self.reach.borrow_mut().clear();
        self.last_arrival_ns.set(0);
        self.bump(|p| p.phase_received = 0);
    }

    /// Records every payload found in `data` as arrived at client `slot` now.
    fn deliver(&self, slot: u32, data: &[u8]) {
        let now = now_ns();
        let mut receptions = self.receptions.borrow_mut();
        let mut latency = self.latency.borrow_mut();
        let latency = latency.get_or_insert_with(stats::histogram);
        let mut reach = self.track_reach.then(|| self.reach.borrow_mut());
        let mut n = 0;
        for (id, sent_ns) in scan(data) {
            receptions.push((slot, id));
            let ns = now.saturating_sub(sent_ns);
            stats::record(latency, ns);
            if let Some(reach) = &mut reach {
                let here = Reach { id, first_ns: ns, last_ns: ns };
                reach.entry(id).and_modify(|r| r.merge(&here)).or_insert(here);
            }
            n += 1;
        }
        if n > 0 {
            self.last_arrival_ns.set(now);
            self.bump(|p| p.phase_received += n);
        }
    }

    fn closed(&self, reason: &str) {
        *self.closes.borrow_mut().entry(reason.to_owned()).or_default() += 1;
    }

    fn bump(&self, f: impl FnOnce(&mut Progress)) {
        let mut progress = self.progress.get();
        f(&mut progress);
        self.progress.set(progress);
    }
}

/// One subscriber of this worker.
struct Client {
    /// Index in this worker's clients (the accounting's slot).
    slot: u32,
    /// Index among all clients of the run.
    global: u32,
    kind: Kind,
    endpoint: Endpoint,
    token: Option<String>,
    source: Option<Ipv4Addr>,
    poll_timeout_secs: u64,
    /// Told to drop the connection and resume on a new one (`--churn-per-sec`).
    kick: Rc<Notify>,
}

fn build_clients(config: &WorkerConfig) -> anyhow::Result<Vec<Client>> {
    let endpoints =
        config.sub_urls.iter().map(|url| Endpoint::parse(url)).collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(!endpoints.is_empty(), "no subscriber URL");
    let key = config.secret.as_deref().map(|s| jsonwebtoken::EncodingKey::from_secret(s.as_bytes()));
    ensure!(!config.kind.is_herald() || key.is_some(), "Herald subscribers need the token secret");
    let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let exp = iat + config.token_ttl_secs;
    config
        .client_indices()
        .enumerate()
        .map(|(slot, global)| {
            let user = global / config.clients_per_user;
            let user_id = format!("{}{user}", config.user_prefix);
            let token = key
                .as_ref()
                .map(|key| {
                    // One session per user: the tabs of one browser profile.
                    let mut claims =
                        serde_json::json!({ "sub": user_id, "sid": "bench", "iat": iat, "exp": exp });
                    if let Some(topic) = &config.topic {
                        // Lets the tab listen to the topic by itself (`?topics=` in its URL).
                        claims["topics"] = serde_json::json!([topic]);
                    }
                    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key)
                })
                .transpose()?;
            Ok(Client {
                slot: slot as u32,
                global,
                kind: config.kind,
                endpoint: endpoints[global as usize % endpoints.len()].for_user(&user_id),
                token,
                source: config.source_ip,
                poll_timeout_secs: config.poll_timeout_secs,
                kick: Rc::default(),
            })
        })
        .collect()
}

/// Starts every client, at most `connect_concurrency` connecting at once, and waits until each
/// is ready or has given up.
async fn connect_all(
    config: &WorkerConfig,
    shared: &Rc<Shared>,
    clients: Vec<Client>,
    infos: &mut [ClientInfo],
) -> Report {
    let gate = Arc::new(Semaphore::new(config.connect_concurrency.max(1)));
    let mut pending = FuturesUnordered::new();
    for client in clients {
        let permit = gate.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (tx, rx) = oneshot::channel();
        let (slot, global) = (client.slot, client.global);
        let ready = Ready { tx: Some(tx), started_ns: now_ns(), permit: Some(permit) };
        tokio::task::spawn_local(run_client(client, shared.clone(), ready));
        pending.push(async move { (slot, global, rx.await) });
    }
    let mut latency = stats::histogram();
    let (mut ok, mut failed, mut first_error, mut connected) = (0, 0, None, Vec::new());
    while let Some((slot, global, result)) = pending.next().await {
        match result {
            Ok(Ok(ns)) => {
                ok += 1;
                stats::record(&mut latency, ns);
                infos[slot as usize].connected = true;
                connected.push(global);
            }
            Ok(Err(error)) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
            Err(_) => {
                failed += 1;
                first_error.get_or_insert_with(|| "client task ended".to_owned());
            }
        }
    }
    Report::Connected { ok, failed, latency: stats::to_pairs(&latency), clients: connected, first_error }
}

/// How a client tells the coordinator that its first connection is ready, or failed.
struct Ready {
    tx: Option<oneshot::Sender<Result<u64, String>>>,
    started_ns: u64,
    /// Held while connecting: frees a connect slot once this client is ready or gave up.
    permit: Option<OwnedSemaphorePermit>,
}

/// One connection's state as its session function sees it.
struct Link<'a> {
    ready: &'a mut Ready,
    shared: &'a Shared,
    up: bool,
}

impl Link<'_> {
    /// The connection is ready: it receives what is published from now on.
    fn up(&mut self) {
        if self.up {
            return;
        }
        self.up = true;
        if let Some(tx) = self.ready.tx.take() {
            let _ = tx.send(Ok(now_ns() - self.ready.started_ns));
            self.ready.permit = None;
        }
        self.shared.bump(|p| p.connected += 1);
    }
}

/// Where a client resumes after a dropped connection.
#[derive(Default)]
struct Resume {
    /// Herald: the last seq seen (or the `hello` position); plain SSE: the last `id:`.
    last_event_id: String,
    /// Herald: the client id from `hello`, so a reconnect keeps it.
    client_id: Option<String>,
}

/// How a session ended.
enum End {
    /// The server ended the stream in a way that a real client would resume from.
    Resume,
    /// The server ended this client for good (`evicted`, `replaced`, `session_closed`).
    Final,
    /// The client dropped the connection itself (`--churn-per-sec`) and resumes on a new one.
    Kicked,
}

/// Reasons after which a Herald client is not meant to reconnect (see docs/PROTOCOL.md).
fn is_final(reason: &str) -> bool {
    matches!(reason, "evicted" | "replaced" | "session_closed")
}

async fn run_client(client: Client, shared: Rc<Shared>, mut ready: Ready) {
    let mut resume = Resume::default();
    let (mut failures, mut reconnects) = (0, 0);
    loop {
        let mut link = Link { ready: &mut ready, shared: &shared, up: false };
        let result = match client.kind {
            Kind::HeraldSse | Kind::SseUrl => sse_session(&client, &mut link, &mut resume).await,
            Kind::HeraldPoll => poll_session(&client, &mut link, &mut resume).await,
            Kind::HeraldWs => herald_ws_session(&client, &mut link, &mut resume).await,
            Kind::Socketio => socketio_session(&client, &mut link).await,
        };
        let was_up = link.up;
        if was_up {
            shared.bump(|p| {
                p.connected -= 1;
                p.disconnects += 1;
            });
        }
        if let Some(tx) = ready.tx.take() {
            failures += 1;
            if failures >= CONNECT_ATTEMPTS_MAX {
                let error = match result {
                    Err(e) => format!("{e:#}"),
                    Ok(_) => "the server ended the connection before it was ready".to_owned(),
                };
                let _ = tx.send(Err(error));
                return;
            }
            ready.tx = Some(tx);
            tokio::time::sleep(CONNECT_RETRY_DELAY).await;
            continue;
        }
        if matches!(result, Ok(End::Kicked)) {
            shared.bump(|p| p.reconnects += 1);
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        if matches!(result, Ok(End::Final)) || reconnects >= RECONNECTS_MAX {
            return;
        }
        if let Err(error) = &result
            && !was_up
        {
            shared.closed(&format!("reconnect failed: {}", first_line(error)));
        }
        reconnects += 1;
        shared.bump(|p| p.reconnects += 1);
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

fn first_line(error: &anyhow::Error) -> String {
    error.to_string().lines().next().unwrap_or("").chars().take(80).collect()
}

/// Appends `?name=value` or `&name=value` to `path`.
fn push_query(path: &mut String, name: &str, value: &str) {
    path.push(if path.contains('?') { '&' } else { '?' });
    path.push_str(name);
    path.push('=');
    path.push_str(value);
}

/// An SSE stream: Herald's `/v1/stream` or a plain one (Nchan).
async fn sse_session(c: &Client, link: &mut Link<'_>, resume: &mut Resume) -> anyhow::Result<End> {
    let herald = c.kind == Kind::HeraldSse;
    let mut conn =
        timeout(CONNECT_TIMEOUT, Conn::open(c.source, c.endpoint.addr)).await.context("connect")??;
    let mut path = c.endpoint.path.clone();
    if herald {
        if let Some(id) = &resume.client_id {
            push_query(&mut path, "client", id);
        }
        if !resume.last_event_id.is_empty() {
            push_query(&mut path, "last_event_id", &resume.last_event_id);
        }
    }
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n", c.endpoint.host);
    if let Some(token) = &c.token {
        let _ = write!(request, "Authorization: Bearer {token}\r\n");
    }
    if !herald && !resume.last_event_id.is_empty() {
        let _ = write!(request, "Last-Event-ID: {}\r\n", resume.last_event_id);
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).await?;
    let head = timeout(CONNECT_TIMEOUT, conn.read_head()).await.context("no response head")??;
    if head.status != 200 {
        let body = timeout(CONNECT_TIMEOUT, conn.read_body(&head)).await.ok().and_then(Result::ok);
        bail!("status {}: {}", head.status, String::from_utf8_lossy(&body.unwrap_or_default()).trim());
    }
    if !herald {
        link.up();
    }
    let mut body = BodyReader::new(head.body);
    let mut text = Vec::new();
    let mut end = None;
    loop {
        let finished = body.take(&mut conn.buf, &mut text)?;
        drain_events(&mut text, |event| {
            if let Some(id) = event.id {
                resume.last_event_id.clear();
                resume.last_event_id.push_str(&String::from_utf8_lossy(id));
            }
            if !herald {
                link.shared.deliver(c.slot, event.data);
                return;
            }
            match event.event {
                b"notification" | b"topic" => link.shared.deliver(c.slot, event.data),
                b"hello" => {
                    resume.client_id = json_str(event.data, "client").map(str::to_owned);
                    link.up();
                }
                b"reset" => link.shared.closed("reset"),
                b"closed" => {
                    let reason = json_str(event.data, "reason").unwrap_or("?");
                    link.shared.closed(reason);
                    end = Some(if is_final(reason) { End::Final } else { End::Resume });
                }
                _ => {}
            }
        });
        ensure!(text.len() <= EVENT_BYTES_MAX, "an event over {EVENT_BYTES_MAX} bytes");
        if let Some(end) = end {
            return Ok(end);
        }
        if finished {
            return Ok(End::Resume);
        }
        let n = if link.up {
            tokio::select! {
                n = conn.fill() => n?,
                () = c.kick.notified() => return Ok(End::Kicked),
            }
        } else {
            timeout(CONNECT_TIMEOUT, conn.fill()).await.context("no hello")??
        };
        if n == 0 {
            return Ok(End::Resume);
        }
    }
}

/// The parts of a long-poll answer the client needs.
#[derive(Deserialize)]
struct PollAnswer {
    client: String,
    last_seq: u64,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    closed: Option<String>,
}

/// Herald's `/v1/poll`, on one kept-alive connection. The first poll has `timeout=0`: it
/// answers at once with the client id and the position, and the client is ready.
async fn poll_session(c: &Client, link: &mut Link<'_>, resume: &mut Resume) -> anyhow::Result<End> {
    let mut conn =
        timeout(CONNECT_TIMEOUT, Conn::open(c.source, c.endpoint.addr)).await.context("connect")??;
    let token = c.token.as_deref().context("long-polling needs a token")?;
    loop {
        let wait = if link.up { c.poll_timeout_secs } else { 0 };
        let mut path = c.endpoint.path.clone();
        push_query(&mut path, "timeout", &wait.to_string());
        if !resume.last_event_id.is_empty() {
            push_query(&mut path, "after", &resume.last_event_id);
        }
        if let Some(id) = &resume.client_id {
            push_query(&mut path, "client", id);
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
            c.endpoint.host
        );
        let limit = Duration::from_secs(wait) + POLL_SLACK;
        let (head, body) = timeout(limit, async {
            conn.write_all(request.as_bytes()).await?;
            let head = conn.read_head().await?;
            let body = conn.read_body(&head).await?;
            anyhow::Ok((head, body))
        })
        .await
        .context("poll timed out")??;
        ensure!(head.status == 200, "status {}: {}", head.status, String::from_utf8_lossy(&body).trim());
        let answer: PollAnswer = serde_json::from_slice(&body).context("bad poll answer")?;
        link.shared.deliver(c.slot, &body);
        resume.last_event_id = answer.last_seq.to_string();
        resume.client_id = Some(answer.client);
        link.up();
        if answer.reset {
            link.shared.closed("reset");
        }
        if let Some(reason) = answer.closed {
            link.shared.closed(&reason);
            return Ok(if is_final(&reason) { End::Final } else { End::Resume });
        }
        if head.close {
            return Ok(End::Resume);
        }
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER_BYTES)
}

type WebSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects from the client's source address and completes a WebSocket handshake on `path`,
/// each step within [`CONNECT_TIMEOUT`].
async fn ws_connect(c: &Client, path: &str) -> anyhow::Result<WebSocket> {
    let stream =
        timeout(CONNECT_TIMEOUT, connect_from(c.source, c.endpoint.addr)).await.context("connect")??;
    let url = format!("ws://{}{path}", c.endpoint.host);
    let (ws, _) =
        timeout(CONNECT_TIMEOUT, tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())))
            .await
            .context("WebSocket handshake")??;
    Ok(ws)
}

/// The next text frame, skipping pings and pongs; `None` once the server closed. Until the
/// session is `up`, waits at most [`CONNECT_TIMEOUT`] (`awaited` names what it waits for).
async fn next_text(ws: &mut WebSocket, up: bool, awaited: &'static str) -> anyhow::Result<Option<Utf8Bytes>> {
    loop {
        let next =
            if up { ws.next().await } else { timeout(CONNECT_TIMEOUT, ws.next()).await.context(awaited)? };
        match next {
            None => return Ok(None),
            Some(message) => match message? {
                Message::Text(text) => return Ok(Some(text)),
                Message::Close(_) => return Ok(None),
                _ => {}
            },
        }
    }
}

/// Herald's `/v1/ws`: one JSON text frame per event, `"event"` naming it.
async fn herald_ws_session(c: &Client, link: &mut Link<'_>, resume: &mut Resume) -> anyhow::Result<End> {
    let mut path = c.endpoint.path.clone();
    push_query(&mut path, "token", c.token.as_deref().context("Herald needs a token")?);
    if let Some(id) = &resume.client_id {
        push_query(&mut path, "client", id);
    }
    if !resume.last_event_id.is_empty() {
        push_query(&mut path, "last_event_id", &resume.last_event_id);
    }
    let mut ws = ws_connect(c, &path).await?;
    loop {
        let Some(text) = next_text(&mut ws, link.up, "no hello").await? else { return Ok(End::Resume) };
        let data = text.as_bytes();
        match json_str(data, "event") {
            Some("notification") => {
                link.shared.deliver(c.slot, data);
                if let Some(seq) = json_u64(data, "seq") {
                    resume.last_event_id = seq.to_string();
                }
            }
            Some("topic") => link.shared.deliver(c.slot, data),
            Some("hello") => {
                resume.client_id = json_str(data, "client").map(str::to_owned);
                if resume.last_event_id.is_empty()
                    && let Some(seq) = json_u64(data, "last_seq")
                {
                    resume.last_event_id = seq.to_string();
                }
                link.up();
            }
            Some("reset") => {
                link.shared.closed("reset");
                if let Some(seq) = json_u64(data, "last_seq") {
                    resume.last_event_id = seq.to_string();
                }
            }
            Some("closed") => {
                let reason = json_str(data, "reason").unwrap_or("?");
                link.shared.closed(reason);
                return Ok(if is_final(reason) { End::Final } else { End::Resume });
            }
            _ => {}
        }
    }
}

/// The number value of `"key":N` in a small JSON object.
fn json_u64(data: &[u8], key: &str) -> Option<u64> {
    let needle = format!("\"{key}\":");
    let at = memchr::memmem::find(data, needle.as_bytes())? + needle.len();
    let digits = data[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&data[at..at + digits]).ok()?.parse().ok()
}

/// Socket.IO v4: Engine.IO open (`0{…}`), namespace connect (`40` → `40{…}`), pings (`2` →
/// `3`), events (`42["n",payload]`). The room is joined by the server from the handshake's
/// `user` query parameter before it answers `40`.
async fn socketio_session(c: &Client, link: &mut Link<'_>) -> anyhow::Result<End> {
    let mut ws = ws_connect(c, &c.endpoint.path).await?;
    loop {
        let Some(text) = next_text(&mut ws, link.up, "no namespace connect").await? else {
            return Ok(End::Resume);
        };
        let data = text.as_bytes();
        match data {
            [b'0', ..] => ws.send(Message::text("40")).await?,
            [b'2', ..] => ws.send(Message::text("3")).await?,
            [b'1', ..] => {
                link.shared.closed("engine.io close");
                return Ok(End::Resume);
            }
            [b'4', b'2', ..] => link.shared.deliver(c.slot, data),
            [b'4', b'0', ..] => link.up(),
            [b'4', b'1', ..] => {
                link.shared.closed("socket.io disconnect");
                return Ok(End::Resume);
            }
            [b'4', b'4', ..] => bail!("socket.io connect error: {}", text.as_str()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_queries() {
        assert_eq!(json_u64(br#"{"event":"notification","seq":17,"x":1}"#, "seq"), Some(17));
        assert_eq!(json_u64(br#"{"seq":"x"}"#, "seq"), None);
        let mut path = "/v1/stream".to_owned();
        push_query(&mut path, "client", "abc");
        push_query(&mut path, "last_event_id", "4");
        assert_eq!(path, "/v1/stream?client=abc&last_event_id=4");
    }
}
