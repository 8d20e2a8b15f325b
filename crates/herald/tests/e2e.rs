//! Process-level end-to-end tests: the real `herald` binary runs as a child process on a free
//! 127.0.0.1 port with a temp data dir, and the tests talk to it over real sockets with
//! `herald-client` (and, for the CLI, with more `herald` processes). They cover what only a
//! process can show: a graceful restart (SIGTERM) and a crash (SIGKILL) on the same data dir,
//! dev credentials kept across restarts, `herald listen` resuming by itself, `--memory`,
//! startup errors, the inbox through `herald-client` across a restart, and topics through
//! `herald-client` and the CLI (a `Listener` keeps its topics across a restart and a crash).
//!
//! Every child is stopped by its PID when its guard is dropped, and every wait is bounded.

mod common;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, collect, free_port, herald};
use herald_client::{
    ClientError, Event, EventStream, Listener, ListenerOptions, Notification, PollOptions, PublishRequest,
    Publisher, StreamOptions, Subscriber, To, TopicEvent, mint_token, mint_token_with_topics,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Prefixes of each server's own credentials (see [`Spec::secret`]); as they are, the
/// credentials of the startup-error cases.
// At least 32 bytes: `herald serve` refuses shorter secrets.
const SECRET: &str = "e2e-secret-0123456789abcdef0123456789";
const API_KEY: &str = "e2e-api-key";
/// Longest wait for a server to answer `/healthz`, for a process to exit, for an event.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
const HOUR: Duration = Duration::from_secs(3600);
/// Longest graceful stop after SIGTERM. Clients end at once on `closed`; only a connection the
/// server fails to end would make it wait for its 10 s grace period.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A port nothing listens on (bound, read, dropped).
/// Sends SIGTERM to `pid`.
fn sigterm(pid: u32) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions; `pid` is
    // a child of this process that has not been reaped (its guard still holds it).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill(SIGTERM)");
}

/// Waits (polling, at most `within`) for `child` to exit.
async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How to start a server; kept to start it again the same way.
#[derive(Clone)]
struct Spec {
    /// The working dir of every process.
    cwd: PathBuf,
    data_dir: PathBuf,
    port: u16,
    /// Without `HERALD_SECRET` / `HERALD_API_KEY`; else with [`Spec::secret`] and
    /// [`Spec::api_key`].
    dev: bool,
    memory: bool,
    extra: Vec<String>,
}

impl Spec {
    fn new(cwd: &Path) -> Self {
        Spec {
            cwd: cwd.to_owned(),
            data_dir: cwd.join("data"),
            port: free_port(),
            dev: false,
            memory: false,
            extra: Vec::new(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Credentials of this server alone: if a port mix-up ever had a test talk to another
    /// test's server, it would get a 401 rather than a quietly wrong answer.
    fn secret(&self) -> String {
        format!("{SECRET}-{}-{}", std::process::id(), self.port)
    }

    fn api_key(&self) -> String {
        format!("{API_KEY}-{}-{}", std::process::id(), self.port)
    }

    fn command(&self) -> Command {
        let mut command = herald(&self.cwd);
        command.args(["serve", "--listen", &format!("127.0.0.1:{}", self.port), "--data-dir"]);
        command.arg(&self.data_dir).args(&self.extra);
        if self.memory {
            command.arg("--memory");
        }
        if !self.dev {
            command.env("HERALD_SECRET", self.secret()).env("HERALD_API_KEY", self.api_key());
        }
        command
    }

    /// Starts the server and waits (at most [`WAIT`]) until it is up (see [`Server::wait_up`]).
    async fn start(&self) -> Server {
        common::start_until_up(Instant::now() + WAIT, || Server::spawn(self.command(), self.url())).await
    }
}

impl Server {
    fn publisher(&self, api_key: &str) -> Publisher {
        Publisher::new(&self.url, api_key).unwrap()
    }

    fn subscriber(&self, token: &str) -> Subscriber {
        Subscriber::new(&self.url, token).unwrap()
    }

    /// Waits (at most [`WAIT`]) until stderr holds `needle`: the server prints its banner
    /// after it starts answering.
    async fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stderr().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} on stderr within {WAIT:?}:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM, then waits for the exit: a graceful stop must succeed.
    async fn terminate(self) {
        sigterm(self.child.id());
        self.wait_stopped().await;
    }

    /// Waits for the exit after a SIGTERM already sent: a graceful stop must succeed.
    async fn wait_stopped(mut self) {
        let Some(status) = wait_exit(&mut self.child, STOP_WAIT).await else {
            panic!("the server did not stop within {STOP_WAIT:?} of SIGTERM; stderr:\n{}", self.stderr());
        };
        assert!(status.success(), "graceful stop exited {status}; stderr:\n{}", self.stderr());
    }
}

/// Runs a short-lived `herald` command to its end (killed after [`WAIT`]).
async fn run(command: &mut Command) -> Output {
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if wait_exit(&mut child, WAIT).await.is_none() {
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        panic!("`herald` did not exit within {WAIT:?}; stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Exit status 1 and exactly one line on stderr, `herald: …`, with no panic or backtrace.
#[track_caller]
fn assert_one_line_error(output: &Output) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("herald: "), "{stderr:?}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr:?}");
    assert!(stderr.matches("(os error").count() <= 1, "a cause said twice: {stderr:?}");
    stderr
}

/// The next event that is not a keep-alive; fails after [`WAIT`], or if the stream ends.
async fn next(stream: &mut EventStream) -> Event {
    common::next_event_within(stream, WAIT).await
}

/// The client id and `last_seq` of the `hello` that must come next.
async fn hello(stream: &mut EventStream) -> (String, u64) {
    match next(stream).await {
        Event::Hello { client, last_seq, .. } => (client, last_seq),
        other => panic!("expected hello, got {other:?}"),
    }
}

async fn notification(stream: &mut EventStream) -> Notification {
    match next(stream).await {
        Event::Notification(n) => n,
        other => panic!("expected a notification, got {other:?}"),
    }
}

/// Checks that nothing but keep-alives arrives for [`QUIET`].
async fn assert_quiet(stream: &mut EventStream) {
    let deadline = tokio::time::Instant::now() + QUIET;
    loop {
        match tokio::time::timeout_at(deadline, stream.next_event()).await {
            Err(_) => return,
            Ok(Ok(Some(Event::KeepAlive))) => {}
            Ok(other) => panic!("expected nothing more, got {other:?}"),
        }
    }
}

async fn stream_from(subscriber: &Subscriber, after: Option<u64>, client: Option<&str>) -> EventStream {
    let options =
        StreamOptions { resume_after: after, client: client.map(str::to_owned), ..StreamOptions::default() };
    subscriber.stream(options).await.unwrap()
}

async fn publish(publisher: &Publisher, user: &str, data: Value) -> u64 {
    let answer = publisher.publish(&PublishRequest::new(To::user(user), data)).await.unwrap();
    assert_eq!(answer.notifications.len(), 1, "{answer:?}");
    answer.notifications[0].seq
}

/// Every stored notification of `user`, oldest first, page by page.
async fn stored(publisher: &Publisher, user: &str) -> Vec<Notification> {
    let mut all: Vec<Notification> = Vec::new();
    loop {
        let after = all.last().map_or(0, |n| n.seq.unwrap());
        let page = publisher.notifications(user, Some(after), Some(100)).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// herald-client's `publish_batch` against the binary: results in order, a refused entry is
/// its own `ClientError::Http`, the others are stored, a user's in the order given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_from_the_rust_client_stores_each_entry_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let server = spec.start().await;
    let publisher = server.publisher(&spec.api_key());
    let requests = [
        PublishRequest::new(To::user("alice"), json!(1)),
        PublishRequest::new(To::client("nobody-has-it"), json!(2)),
        PublishRequest::new(To::user("alice"), json!(3)),
        PublishRequest::new(To::user("bob"), json!(4)),
    ];
    let results = publisher.publish_batch(&requests).await.unwrap();
    let seqs: Vec<Option<u64>> =
        results.iter().map(|r| r.as_ref().ok().map(|answer| answer.notifications[0].seq)).collect();
    assert_eq!(seqs, [Some(1), None, Some(2), Some(1)]);
    match &results[1] {
        Err(ClientError::Http { status: 404, code, .. }) => assert_eq!(code, "client_not_found"),
        other => panic!("expected the entry's 404, got {other:?}"),
    }
    let data: Vec<Value> = stored(&publisher, "alice").await.into_iter().map(|n| n.data).collect();
    assert_eq!(data, [json!(1), json!(3)]);
    match publisher.publish_batch(&[]).await {
        Err(ClientError::Http { status: 400, code, .. }) => assert_eq!(code, "invalid_batch"),
        other => panic!("expected 400 invalid_batch for an empty batch, got {other:?}"),
    }
}

/// 1. SIGTERM closes streams with `shutdown`; after a restart on the same data dir, seqs go on
///    and a resume gets exactly what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_the_log_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let server = spec.start().await;
    let token = mint_token(spec.secret().as_bytes(), "alice", Some("laptop"), HOUR).unwrap();
    let mut stream = stream_from(&server.subscriber(&token), None, None).await;
    assert_eq!(hello(&mut stream).await.1, 0);
    let publisher = server.publisher(&spec.api_key());
    for i in 1..=3 {
        assert_eq!(publish(&publisher, "alice", json!({"n": i})).await, i);
    }
    for i in 1..=3 {
        let n = notification(&mut stream).await;
        assert_eq!((n.seq, &n.data), (Some(i), &json!({"n": i})));
    }

    // A connection that never sends its request (a browser's preconnect, an HTTP client's
    // spare connection) must not hold the shutdown up.
    let addr = format!("127.0.0.1:{}", spec.port);
    let _idle = tokio::net::TcpStream::connect(&addr).await.unwrap();

    // SIGTERM: the stream gets `closed` with reason `shutdown`, then ends.
    sigterm(server.child.id());
    assert_eq!(next(&mut stream).await, Event::Closed { reason: "shutdown".into() });
    match tokio::time::timeout(WAIT, stream.next_event()).await {
        Ok(Ok(None)) => {}
        other => panic!("expected the end of the stream after `closed`, got {other:?}"),
    }
    server.wait_stopped().await;

    let server = spec.start().await;
    let publisher = server.publisher(&spec.api_key());
    assert_eq!(publish(&publisher, "alice", json!({"n": 4})).await, 4, "seqs go on after a restart");
    assert_eq!(publish(&publisher, "alice", json!({"n": 5})).await, 5);

    let subscriber = server.subscriber(&token);
    let mut stream = stream_from(&subscriber, Some(3), None).await;
    assert_eq!(hello(&mut stream).await.1, 5);
    for i in 4..=5 {
        let n = notification(&mut stream).await;
        assert_eq!((n.seq, &n.data), (Some(i), &json!({"n": i})));
    }
    assert_quiet(&mut stream).await;

    let mut stream = stream_from(&subscriber, Some(0), None).await;
    hello(&mut stream).await;
    for i in 1..=5 {
        let n = notification(&mut stream).await;
        assert_eq!((n.seq, &n.data), (Some(i), &json!({"n": i})));
    }
    assert_quiet(&mut stream).await;
}

/// 2. `kill -9` while publishers publish as fast as they can: every acknowledged seq is stored,
///    each user's log has no gap, and a resume from 0 replays it all exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_publishing_loses_nothing_acknowledged() {
    const USERS: [&str; 3] = ["u0", "u1", "u2"];
    const PUBLISHERS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::new(dir.path());
    // Keep every notification, however many get published.
    spec.extra = vec!["--retention-max-per-user".into(), "100000000".into()];
    let server = spec.start().await;

    // (user, seq) -> the data acknowledged with it.
    let acked: Arc<Mutex<HashMap<(&str, u64), Value>>> = Arc::default();
    let mut tasks = Vec::new();
    for task in 0..PUBLISHERS {
        let publisher = server.publisher(&spec.api_key());
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let user = USERS[(task + i as usize) % USERS.len()];
                let data = json!({"task": task, "i": i});
                match publisher.publish(&PublishRequest::new(To::user(user), data.clone())).await {
                    Ok(answer) => {
                        assert_eq!(answer.notifications.len(), 1, "{answer:?}");
                        let seq = answer.notifications[0].seq;
                        assert!(
                            acked.lock().unwrap().insert((user, seq), data).is_none(),
                            "{user} {seq} twice"
                        );
                    }
                    // The server is gone: that is the end of this publisher.
                    Err(_) => return i,
                }
            }
            unreachable!()
        }));
    }
    // Kill about 300 ms in, once some publishes were acknowledged (a loaded machine is slower).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = Instant::now() + WAIT;
    while acked.lock().unwrap().len() < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked_before_kill = acked.lock().unwrap().len();
    server.kill9();
    for task in tasks {
        tokio::time::timeout(WAIT, task).await.expect("publishers stop once the server is gone").unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked_before_kill > 0, "nothing was acknowledged before the kill");

    let server = spec.start().await;
    let publisher = server.publisher(&spec.api_key());
    let mut checks = Vec::new();
    for user in USERS {
        let log = stored(&publisher, user).await;
        let last = log.len() as u64;
        // 1..=last, no gap, no duplicate.
        let seqs: Vec<u64> = log.iter().map(|n| n.seq.unwrap()).collect();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{user}'s log has a gap");
        // Every acknowledged seq is there, with the data it was acknowledged for.
        let mut acked_for_user = 0;
        for ((_, seq), data) in acked.iter().filter(|((u, _), _)| *u == user) {
            acked_for_user += 1;
            let Some(n) = log.get((*seq as usize).wrapping_sub(1)) else {
                panic!("{user}: acknowledged seq {seq} lost (the log ends at {last})");
            };
            assert_eq!(&n.data, data, "{user}: seq {seq} holds other data than was acknowledged");
        }
        assert!(acked_for_user > 0, "{user}: nothing acknowledged");
        eprintln!("{user}: {acked_for_user} acknowledged, {last} stored");

        // An SSE client resuming from 0 gets all of them exactly once, in order.
        let token = mint_token(spec.secret().as_bytes(), user, Some("s"), HOUR).unwrap();
        let subscriber = server.subscriber(&token);
        checks.push(tokio::spawn(async move {
            let mut stream = stream_from(&subscriber, Some(0), None).await;
            assert_eq!(hello(&mut stream).await.1, last);
            for (expected, stored) in (1..=last).zip(&log) {
                let n = notification(&mut stream).await;
                assert_eq!(n.seq, Some(expected));
                assert_eq!(n.data, stored.data);
            }
            assert_quiet(&mut stream).await;
        }));
    }
    for check in checks {
        check.await.unwrap();
    }
}

/// 3. Dev mode: generated credentials are kept in the data dir, `herald token` reads them, and
///    after a restart they (and client ids issued before it) are still good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_credentials_and_client_ids_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::new(dir.path());
    spec.dev = true;
    let server = spec.start().await;
    let credentials_path = spec.data_dir.join("dev-credentials.json");
    let credentials = std::fs::read(&credentials_path).expect("dev-credentials.json is written");
    let api_key =
        serde_json::from_slice::<Value>(&credentials).unwrap()["api_key"].as_str().unwrap().to_owned();
    server.wait_stderr("dev mode").await;
    server.wait_stderr(&format!("credentials generated and kept in {}", credentials_path.display())).await;

    let mint = |session: &'static str| {
        let mut command = herald(&spec.cwd);
        command.arg("token").arg("--data-dir").arg(&spec.data_dir).args([
            "--user",
            "alice",
            "--session",
            session,
        ]);
        command
    };
    let output = run(&mut mint("s1")).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = text(&output.stdout).trim_end().to_owned();
    let output = run(&mut mint("s2")).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let other_session_token = text(&output.stdout).trim_end().to_owned();

    let mut stream = stream_from(&server.subscriber(&token), None, None).await;
    let client = match next(&mut stream).await {
        Event::Hello { user, session, client, .. } => {
            assert_eq!((user.as_str(), session.as_str()), ("alice", "s1"));
            client
        }
        other => panic!("expected hello, got {other:?}"),
    };
    assert_eq!(publish(&server.publisher(&api_key), "alice", json!("before")).await, 1);
    assert_eq!(notification(&mut stream).await.seq, Some(1));
    drop(stream);
    server.terminate().await;

    let server = spec.start().await;
    assert_eq!(std::fs::read(&credentials_path).unwrap(), credentials, "the same credentials are reused");
    // And the server says so, rather than "generated".
    server.wait_stderr(&format!("credentials loaded from {}", credentials_path.display())).await;
    assert!(!server.stderr().contains("generated"), "{}", server.stderr());
    // The old token still works, and the client id is honoured for the same user and session…
    let mut stream = stream_from(&server.subscriber(&token), Some(1), Some(&client)).await;
    assert_eq!(hello(&mut stream).await.0, client, "the client id issued before the restart is kept");
    assert_eq!(publish(&server.publisher(&api_key), "alice", json!("after")).await, 2);
    assert_eq!(notification(&mut stream).await.seq, Some(2));
    // …but not for another session of the same user.
    let mut other = stream_from(&server.subscriber(&other_session_token), None, Some(&client)).await;
    let (other_client, _) = hello(&mut other).await;
    assert_ne!(other_client, client, "a client id is not honoured for another session");
    // Giving it to the other session did not take it from its owner.
    assert_quiet(&mut stream).await;
}

/// A running `herald listen`, its stdout read line by line; killed when dropped.
struct Listen {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Listen {
    fn start(cwd: &Path, url: &str, token: &str) -> Self {
        Self::start_with(cwd, url, token, &[])
    }

    fn start_with(cwd: &Path, url: &str, token: &str, extra: &[&str]) -> Self {
        let mut child = herald(cwd)
            .args(["listen", "--token", token, "--url", url])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (stderr, _) = collect(child.stderr.take().unwrap());
        let (send, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Listen { child, lines, stderr }
    }

    /// The next line, as JSON; fails after [`WAIT`].
    async fn next(&mut self) -> Value {
        match tokio::time::timeout(WAIT, self.lines.recv()).await {
            Ok(Some(line)) => {
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            }
            Ok(None) => panic!("`herald listen` ended; stderr:\n{}", self.stderr.lock().unwrap()),
            Err(_) => panic!(
                "no line from `herald listen` within {WAIT:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 4. The CLI end to end: `herald listen` prints what `herald publish` sends, and resumes by
///    itself across a server restart without repeating anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_listen_and_publish_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let server = spec.start().await;
    let token = mint_token(spec.secret().as_bytes(), "alice", Some("cli"), HOUR).unwrap();
    let url = spec.url();
    let cli_publish = |text: &str| {
        let mut command = herald(&spec.cwd);
        command
            .args(["publish", "--user", "alice", "--type", "message.new", "--url", &url, "--data"])
            .arg(json!({"text": text}).to_string())
            .env("HERALD_API_KEY", spec.api_key());
        command
    };

    let mut listen = Listen::start(&spec.cwd, &url, &token);
    let hello = listen.next().await;
    assert_eq!((hello["event"].as_str(), hello["user"].as_str()), (Some("hello"), Some("alice")), "{hello}");

    let output = run(&mut cli_publish("one")).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer, json!({"notifications": [{"user": "alice", "seq": 1}], "delivered": 1}));
    let line = listen.next().await;
    assert_eq!(
        (&line["event"], &line["seq"], &line["type"], &line["data"]),
        (&json!("notification"), &json!(1), &json!("message.new"), &json!({"text": "one"})),
        "{line}"
    );

    server.terminate().await;
    let line = listen.next().await;
    assert_eq!(line, json!({"event": "closed", "reason": "shutdown"}));
    let server = spec.start().await;
    let output = run(&mut cli_publish("two")).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["notifications"], json!([{"user": "alice", "seq": 2}]));

    // `listen` reconnects by itself (a new hello) and prints seq 2, never seq 1 again.
    let mut after_restart = Vec::new();
    loop {
        let line = listen.next().await;
        after_restart.push(line.clone());
        if line["event"] == "notification" {
            assert_eq!(
                (&line["seq"], &line["data"]),
                (&json!(2), &json!({"text": "two"})),
                "{after_restart:?}"
            );
            break;
        }
        assert_eq!(line["event"], "hello", "{after_restart:?}");
    }
    assert!(after_restart.iter().any(|line| line["event"] == "hello"), "{after_restart:?}");
    if let Ok(Some(line)) = tokio::time::timeout(QUIET, listen.lines.recv()).await {
        panic!("nothing more expected, got {line}");
    }

    // A wrong API key: exit status 1 and one clear line.
    let output = run(herald(&spec.cwd).args([
        "publish",
        "--user",
        "alice",
        "--data",
        "{}",
        "--url",
        &url,
        "--api-key",
        "wrong",
    ]))
    .await;
    let stderr = assert_one_line_error(&output);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(output.stdout.is_empty());
    drop(server);
}

/// Regression (poison messages): a database written before publish checked `data` holds
/// notifications serde_json cannot decode (nested 10,000 deep, `1e999999`, a lone surrogate).
/// `herald listen` exited on the first of them, and again on every resume. Now it prints each
/// as an `undecodable` line with its seq and goes on, over SSE and long-polling alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_listen_goes_on_past_undecodable_notifications_of_an_old_database() {
    use herald_core::notification::now_ms;
    use herald_core::{Audience, NewNotification, Retention, Store as _, UserId};
    use serde_json::value::RawValue;

    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    std::fs::create_dir_all(&spec.data_dir).unwrap();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let poison = [deep.as_str(), "1e999999", r#"{"text": "\ud800"}"#, r#"{"text": "fine"}"#];
    {
        let path = spec.data_dir.join(herald_server::DATABASE_FILE);
        let store = herald_store::SqliteStore::open(&path, Retention::default()).unwrap();
        let entries = poison
            .iter()
            .map(|data| NewNotification {
                user: UserId::new("alice").unwrap(),
                kind: "t".into(),
                data: RawValue::from_string((*data).to_owned()).unwrap().into(),
                created_at_ms: now_ms(),
                audience: Audience::user(),
                push: None,
            })
            .collect();
        store.append(entries, None).await.unwrap();
    } // Dropped: its writer has committed and stopped.
    let server = spec.start().await;
    let token = mint_token(spec.secret().as_bytes(), "alice", Some("cli"), HOUR).unwrap();
    let publisher = server.publisher(&spec.api_key());
    for (round, transport) in ["sse", "poll"].into_iter().enumerate() {
        let mut listen =
            Listen::start_with(&spec.cwd, &spec.url(), &token, &["--after", "0", "--transport", transport]);
        let mut lines = Vec::new();
        while lines.len() < 4 {
            let line = listen.next().await;
            if line["event"] != "hello" {
                lines.push(line);
            }
        }
        for (i, line) in lines[..3].iter().enumerate() {
            assert_eq!(
                (&line["event"], &line["seq"], &line["type"]),
                (&json!("undecodable"), &json!(i + 1), &json!("t")),
                "{transport}: {line}"
            );
            assert!(line["raw"].as_str().unwrap().contains(&poison[i][..8]), "{line}");
        }
        assert_eq!(
            (&lines[3]["event"], &lines[3]["seq"]),
            (&json!("notification"), &json!(4)),
            "{transport}"
        );
        // Still listening: a new notification arrives (after the one of the round before).
        let seq = publish(&publisher, "alice", json!({"round": round})).await;
        for expected in 5..=seq {
            let line = listen.next().await;
            assert_eq!((&line["event"], &line["seq"]), (&json!("notification"), &json!(expected)), "{line}");
        }
    }
    drop(server);
}

/// 5. `--memory` writes nothing in the data dir (not even dev credentials) and still delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_mode_writes_nothing_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::new(dir.path());
    spec.memory = true;
    spec.dev = true;
    let server = spec.start().await;
    // The dev credentials are only printed (before the "listening" line): find them on stderr.
    server.wait_stderr("herald: listening").await;
    let stderr = server.stderr();
    let credential = |name: &str| {
        let prefix = format!("  {name}=");
        let value = stderr.lines().find_map(|line| line.strip_prefix(&prefix));
        value.unwrap_or_else(|| panic!("no {name} printed; stderr:\n{stderr}")).to_owned()
    };
    let (secret, api_key) = (credential("HERALD_SECRET"), credential("HERALD_API_KEY"));

    let token = mint_token(secret.as_bytes(), "alice", None, HOUR).unwrap();
    let mut stream = stream_from(&server.subscriber(&token), None, None).await;
    hello(&mut stream).await;
    let publisher = server.publisher(&api_key);
    assert_eq!(publish(&publisher, "alice", json!({"in": "memory"})).await, 1);
    let n = notification(&mut stream).await;
    assert_eq!((n.seq, n.data), (Some(1), json!({"in": "memory"})));
    assert_eq!(stored(&publisher, "alice").await.len(), 1);
    drop(stream);
    server.terminate().await;

    assert!(!spec.data_dir.join("herald.db").exists());
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(written.is_empty(), "--memory wrote {written:?}");
}

/// 6. Bad startup configuration: a non-zero exit with one clear line, no panic, no backtrace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_config_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |port: u16| {
        let mut command = herald(dir.path());
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path().join("data"));
        command
    };

    // Only one of the two credentials.
    for (set, unset) in [("HERALD_SECRET", "HERALD_API_KEY"), ("HERALD_API_KEY", "HERALD_SECRET")] {
        let output = run(serve(free_port()).env(set, "x")).await;
        let stderr = assert_one_line_error(&output);
        assert!(stderr.contains(set) && stderr.contains(unset), "{stderr}");
    }

    // A secret too short to be an HS256 key (fails if a short secret starts the server).
    let output = run(serve(free_port()).env("HERALD_SECRET", "a").env("HERALD_API_KEY", API_KEY)).await;
    let stderr = assert_one_line_error(&output);
    assert!(stderr.contains("HERALD_SECRET") && stderr.contains("32"), "{stderr}");

    // A port already in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = run(serve(port).env("HERALD_SECRET", SECRET).env("HERALD_API_KEY", API_KEY)).await;
    let stderr = assert_one_line_error(&output);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("in use"), "{stderr}");
    drop(taken);

    // A data dir that is a file.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let output = run(herald(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
        .arg(&file)
        .env("HERALD_SECRET", SECRET)
        .env("HERALD_API_KEY", API_KEY))
    .await;
    let stderr = assert_one_line_error(&output);
    assert!(
        stderr.contains("data dir") && stderr.contains("not-a-dir"),
        "the message names the path: {stderr}"
    );
}

/// 7. The inbox through `herald-client`: a subscriber's own and a publisher's view of the same
/// user agree, marks and deletions answer their change, pages filter and page, bad input is a
/// typed 400, and the state (counts and version) survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_through_herald_client_survives_a_restart() {
    use herald_client::{ClientError, InboxOp, InboxQuery, InboxSelection, InboxStatus, Mark};

    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let server = spec.start().await;
    let token = mint_token(spec.secret().as_bytes(), "alice", Some("laptop"), HOUR).unwrap();
    let publisher = server.publisher(&spec.api_key());
    for kind in ["a", "b", "a"] {
        let request = PublishRequest::new(To::user("alice"), json!({"kind": kind})).kind(kind);
        publisher.publish(&request).await.unwrap();
    }
    let mine = server.subscriber(&token).inbox();
    let theirs = publisher.inbox("alice").unwrap();
    let counts = theirs.counts().await.unwrap();
    assert_eq!((counts.unread, counts.unseen, counts.total, counts.archived), (3, 3, 3, 0));
    assert_eq!(mine.counts().await.unwrap(), counts, "the same user seen from both sides");

    let change = mine.mark(&InboxSelection::Seqs(vec![1, 99]), Mark::Read).await.unwrap();
    assert_eq!(
        (change.op, change.mark, change.seqs.as_deref(), change.changed),
        (InboxOp::Mark, Some(Mark::Read), Some(&[1][..]), Some(1))
    );
    assert_eq!((change.counts.unread, change.counts.unseen), (2, 2));
    assert!(change.counts.version > counts.version);

    let seqs = |page: &herald_client::InboxPage| {
        page.notifications.iter().map(|n| n.notification.seq.unwrap()).collect::<Vec<_>>()
    };
    let unread =
        theirs.list(&InboxQuery { status: InboxStatus::Unread, ..InboxQuery::default() }).await.unwrap();
    assert_eq!(seqs(&unread), [3, 2]);
    let of_a = mine.list(&InboxQuery { kind: Some("a".into()), ..InboxQuery::default() }).await.unwrap();
    assert_eq!(seqs(&of_a), [3, 1]);
    assert!(of_a.notifications[1].read_at.is_some() && of_a.notifications[1].seen_at.is_some());
    assert_eq!(of_a.notifications[0].notification.data, json!({"kind": "a"}));
    let first = mine.list(&InboxQuery { limit: Some(1), ..InboxQuery::default() }).await.unwrap();
    assert_eq!((seqs(&first), first.next_before), (vec![3], Some(3)));
    let next = mine
        .list(&InboxQuery { before: first.next_before, limit: Some(5), ..InboxQuery::default() })
        .await
        .unwrap();
    assert_eq!((seqs(&next), next.next_before), (vec![2, 1], None));

    let archived = theirs.mark(&InboxSelection::AllUpTo(2), Mark::Archived).await.unwrap();
    assert_eq!((archived.all_up_to, archived.changed), (Some(2), Some(2)));
    assert_eq!((archived.counts.total, archived.counts.archived, archived.counts.unread), (1, 2, 1));

    // Refused, with the server's code, and nothing changed.
    match mine.mark(&InboxSelection::Seqs(vec![]), Mark::Read).await {
        Err(ClientError::Http { status: 400, code, .. }) => assert_eq!(code, "invalid_request"),
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!(mine.counts().await.unwrap(), archived.counts);

    // After a restart: the same counts and version.
    sigterm(server.child.id());
    server.wait_stopped().await;
    let server = spec.start().await;
    let theirs = server.publisher(&spec.api_key()).inbox("alice").unwrap();
    assert_eq!(theirs.counts().await.unwrap(), archived.counts);

    let deleted = theirs.delete(3).await.unwrap();
    assert_eq!(
        (deleted.op, deleted.seqs.as_deref(), deleted.changed),
        (InboxOp::Delete, Some(&[3][..]), Some(1))
    );
    let rest = server.subscriber(&token).inbox().delete_all_up_to(3).await.unwrap();
    assert_eq!(rest.changed, Some(2));
    let counts = rest.counts;
    assert_eq!((counts.unread, counts.unseen, counts.total, counts.archived), (0, 0, 0, 0));
    assert!(counts.version > archived.counts.version);
}

/// 8. Two servers on one data dir would hand out the same seqs with different contents, and a
///    second start that failed (port in use) used to settle and empty the live server's staged
///    appends first, after which its marks answered 503 and settling failed forever (issue 10,
///    defect 1). A second `serve` on the same data dir is refused with one line naming the
///    holder's pid, whatever its port; the live server goes on unharmed; the lock goes with the
///    server, also after `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    use herald_client::{InboxSelection, Mark};
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let server = spec.start().await;
    let pid = server.child.id();
    let publisher = server.publisher(&spec.api_key());
    // Staged, not yet settled (the server settles after 2 s): what a second opening would take.
    for i in 1..=5 {
        assert_eq!(publish(&publisher, "alice", json!({"n": i})).await, i);
    }

    let mut elsewhere = spec.clone();
    elsewhere.port = free_port();
    let stderr = assert_one_line_error(&run(&mut elsewhere.command()).await);
    assert_eq!(
        stderr.trim_end(),
        format!("herald: the data dir {} is in use by another herald (pid {pid})", spec.data_dir.display())
    );
    // The same port, in use: refused before anything touches the data dir.
    assert_one_line_error(&run(&mut spec.command()).await);

    // The live server's marks (which settle the user) and publishes work, and so does settling.
    let token = mint_token(spec.secret().as_bytes(), "alice", Some("s"), HOUR).unwrap();
    let inbox = server.subscriber(&token).inbox();
    let change = inbox.mark(&InboxSelection::AllUpTo(5), Mark::Read).await.expect("the mark works");
    assert_eq!(change.changed, Some(5));
    for i in 6..=10 {
        assert_eq!(publish(&publisher, "alice", json!({"n": i})).await, i);
    }
    // Past the settling delay (2 s) and a checkpoint.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!server.stderr().contains("failed"), "the live server logged failures:\n{}", server.stderr());

    // `kill -9` releases the lock: a restart works and finds everything acknowledged.
    server.kill9();
    let server = spec.start().await;
    let publisher = server.publisher(&spec.api_key());
    let log = stored(&publisher, "alice").await;
    let got: Vec<(u64, Value)> = log.iter().map(|n| (n.seq.unwrap(), n.data.clone())).collect();
    assert_eq!(got, (1..=10).map(|i| (i, json!({"n": i}))).collect::<Vec<_>>());
    let counts = server.subscriber(&token).inbox().counts().await.unwrap();
    assert_eq!((counts.total, counts.unread), (10, 5));
    // And so does a graceful stop.
    server.terminate().await;
    spec.start().await.terminate().await;
}

/// 9. A start that cannot listen (the port is taken) exits before it touches the data dir: it
///    opens no store (whose opening settles what is staged) and writes no credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_listen_touches_no_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut spec = Spec::new(dir.path());
    spec.port = taken.local_addr().unwrap().port();
    for dev in [false, true] {
        spec.dev = dev;
        let stderr = assert_one_line_error(&run(&mut spec.command()).await);
        assert!(stderr.contains("in use"), "{stderr}");
        assert!(!spec.data_dir.exists(), "the data dir was created (dev: {dev})");
    }
}
/// `--listen` takes a host name (the server says what it resolved to and which address it
/// uses); a value that is not host:port is a one-line error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_takes_a_host_name_and_refuses_a_bad_value_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let mut command = herald(dir.path());
    command
        .args(["serve", "--memory", "--listen", &format!("localhost:{}", spec.port)])
        .env("HERALD_SECRET", spec.secret())
        .env("HERALD_API_KEY", spec.api_key());
    let mut server = Server::spawn(command, String::new());
    server.wait_stderr("herald: listening on http://").await;
    let banner = server.stderr();
    assert!(banner.contains(&format!("localhost:{} resolves to", spec.port)), "{banner}");
    let url =
        banner.split("herald: listening on ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    assert!(url.ends_with(&format!(":{}", spec.port)), "{url}");
    server.url = url;
    server.publisher(&spec.api_key()).health().await.expect("the server answers on the address it names");
    server.terminate().await;

    for bad in ["localhost", "localhost:http", ":7300", "no-such-host.invalid:7300", "127.0.0.1:99999"] {
        let output = run(herald(dir.path())
            .args(["serve", "--memory", "--listen", bad])
            .env("HERALD_SECRET", spec.secret())
            .env("HERALD_API_KEY", spec.api_key()))
        .await;
        let stderr = assert_one_line_error(&output);
        assert!(stderr.contains("--listen"), "{bad}: {stderr}");
    }
}

/// The CLI says where a key it did not get from the command line came from, and a key refused
/// by the server gets a hint at the way to give the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_dev_credentials_says_so_and_a_refused_key_gets_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Spec::new(dir.path()).start().await;
    // The dev credentials of some other (local dev) server.
    let data_dir = dir.path().join("herald-data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("dev-credentials.json"), r#"{"secret": "dev-secret", "api_key": "hk_dev"}"#)
        .unwrap();
    let output = run(herald(dir.path()).args(["publish", "--user", "alice", "--url", &server.url])).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("herald: using the dev API key from ./herald-data/dev-credentials.json"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("invalid_api_key")
            && lines[1].contains("--api-key")
            && lines[1].contains("HERALD_API_KEY"),
        "{stderr}"
    );

    // Given on the command line: no note, and the hint names the key given.
    let output = run(herald(dir.path()).args([
        "publish",
        "--user",
        "alice",
        "--api-key",
        "wrong",
        "--url",
        &server.url,
    ]))
    .await;
    let stderr = assert_one_line_error(&output);
    assert!(stderr.contains("the API key given") && stderr.contains("HERALD_API_KEY"), "{stderr}");
}

/// 12. `herald reset-epoch`, what an operator runs after putting back an older copy of the
///     database: refused in one line while the server runs (it holds the database), then a new
///     epoch, printed; after a restart, a client resuming with the old epoch gets `hello` (with
///     the new one) and `reset`, nothing replayed, while a restart without it keeps the epoch
///     and resumes exactly. Fails if the epoch were renewable under a running server, not kept
///     in the database, or not renewed by the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_epoch_makes_clients_of_the_old_epoch_reset() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let server = spec.start().await;
    let token = mint_token(spec.secret().as_bytes(), "alice", Some("s"), HOUR).unwrap();
    let publisher = server.publisher(&spec.api_key());
    for i in 1..=3 {
        assert_eq!(publish(&publisher, "alice", json!({"n": i})).await, i);
    }
    let hello_epoch = |event: Event| match event {
        Event::Hello { epoch: Some(epoch), last_seq, .. } => (epoch, last_seq),
        other => panic!("expected a hello with an epoch, got {other:?}"),
    };
    let mut stream = stream_from(&server.subscriber(&token), None, None).await;
    let (old, _) = hello_epoch(next(&mut stream).await);
    drop(stream);

    let reset_epoch = || {
        let mut command = herald(dir.path());
        command.arg("reset-epoch").arg("--data-dir").arg(&spec.data_dir);
        command
    };
    let stderr = assert_one_line_error(&run(&mut reset_epoch()).await);
    assert!(stderr.contains("stop the server first"), "{stderr}");
    server.terminate().await;

    let server = spec.start().await;
    let resume = |subscriber: Subscriber, epoch: String| async move {
        let options = StreamOptions { resume_after: Some(1), epoch: Some(epoch), ..StreamOptions::default() };
        subscriber.stream(options).await.unwrap()
    };
    let mut stream = resume(server.subscriber(&token), old.clone()).await;
    assert_eq!(hello_epoch(next(&mut stream).await), (old.clone(), 3), "a restart keeps the epoch");
    for i in 2..=3 {
        assert_eq!(notification(&mut stream).await.seq, Some(i));
    }
    drop(stream);
    server.terminate().await;

    let output = run(&mut reset_epoch()).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let new = text(&output.stdout).trim().to_owned();
    assert!(new.len() == 32 && new != old, "{new:?}");

    let server = spec.start().await;
    let mut stream = resume(server.subscriber(&token), old).await;
    assert_eq!(hello_epoch(next(&mut stream).await), (new, 3));
    assert_eq!(next(&mut stream).await, Event::Reset { last_seq: 3 });
    assert_quiet(&mut stream).await;
    server.terminate().await;
}

/// The next event of a [`Listener`] that is not a keep-alive; fails after [`WAIT`], on an error,
/// or if it ends.
async fn next_of(listener: &mut Listener) -> Event {
    loop {
        match tokio::time::timeout(WAIT, listener.next_event()).await {
            Err(_) => panic!("no event within {WAIT:?}"),
            Ok(Err(e)) => panic!("the listener failed: {e}"),
            Ok(Ok(None)) => panic!("the listener ended"),
            Ok(Ok(Some(Event::KeepAlive))) => {}
            Ok(Ok(Some(event))) => return event,
        }
    }
}

/// The topic event that must come next on `stream`.
async fn topic_event(stream: &mut EventStream) -> TopicEvent {
    match next(stream).await {
        Event::Topic(event) => event,
        other => panic!("expected a topic event, got {other:?}"),
    }
}

/// The topics of the `hello` that must come next on `stream`, with its client id.
async fn hello_topics(stream: &mut EventStream) -> (String, Vec<String>) {
    match next(stream).await {
        Event::Hello { client, topics, .. } => (client, topics),
        other => panic!("expected hello, got {other:?}"),
    }
}

/// A code the server refused with.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, status: u16, code: &str) {
    match result {
        Err(error) => assert_eq!((error.status(), error.code()), (Some(status), Some(code)), "{error:?}"),
        Ok(answer) => panic!("expected {status} {code}, got {answer:?}"),
    }
}

/// 10. Topics through herald-client against the binary. Three tabs listen to `room:1`, each its
///     own way: `topics` when it connects, `Subscriber::listen` after its hello (the token's
///     claim allows it), `Publisher::listen` (a token without the claim: the backend decides);
///     a poller names it on its polls. One publish reaches each of them exactly once with its
///     exact data, and no tab of another topic nor a plain tab of a listener's user;
///     `except_user` leaves that user out; unlisten stops a tab; a listen outside the claim is
///     refused `topic_forbidden`, at connect and after, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_through_herald_client_reach_each_listening_tab_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let server = spec.start().await;
    let secret = spec.secret();
    let claim =
        |user: &str| mint_token_with_topics(secret.as_bytes(), user, Some("s1"), HOUR, &["room:*"]).unwrap();
    let listening_to =
        |topic: &str| StreamOptions { topics: vec![topic.to_owned()], ..StreamOptions::default() };
    let publisher = server.publisher(&spec.api_key());

    let alice = server.subscriber(&claim("alice"));
    let mut alice_tab = alice.stream(listening_to("room:1")).await.unwrap();
    let (alice_client, topics) = hello_topics(&mut alice_tab).await;
    assert_eq!(topics, ["room:1"]);
    let bob = server.subscriber(&claim("bob"));
    let mut bob_tab = stream_from(&bob, None, None).await;
    let (bob_client, topics) = hello_topics(&mut bob_tab).await;
    assert!(topics.is_empty(), "{topics:?}");
    assert_eq!(bob.listen(&bob_client, &["room:1"]).await.unwrap(), ["room:1"]);
    let carol = server.subscriber(&mint_token(secret.as_bytes(), "carol", Some("s1"), HOUR).unwrap());
    let mut carol_tab = stream_from(&carol, None, None).await;
    let (carol_client, _) = hello_topics(&mut carol_tab).await;
    assert_eq!(publisher.listen(&carol_client, &["room:1"]).await.unwrap(), ["room:1"]);
    // Listening to another room; a plain tab of alice's (a topic event is nobody's notification).
    let mut dave_tab = server.subscriber(&claim("dave")).stream(listening_to("room:2")).await.unwrap();
    hello(&mut dave_tab).await;
    let alice_plain = mint_token(secret.as_bytes(), "alice", Some("s2"), HOUR).unwrap();
    let mut alice_plain_tab = stream_from(&server.subscriber(&alice_plain), None, None).await;
    hello(&mut alice_plain_tab).await;
    let erin = server.subscriber(&claim("erin"));
    let room_1 = vec!["room:1".to_owned()];
    let first_poll = PollOptions { timeout_s: Some(0), topics: room_1.clone(), ..PollOptions::default() };
    let first_poll = erin.poll_with(&first_poll).await.unwrap();
    assert_eq!((first_poll.topics.as_slice(), first_poll.topic.len()), (&room_1[..], 0));

    let data = json!({"text": "hi", "n": [1, 2.5, null], "nested": {"é": true}});
    let request = PublishRequest::new(To::topic("room:1"), data.clone()).kind("message").ephemeral();
    let answer = publisher.publish(&request).await.unwrap();
    assert_eq!((answer.notifications.len(), answer.delivered), (0, 4), "{answer:?}");
    for tab in [&mut alice_tab, &mut bob_tab, &mut carol_tab] {
        let event = topic_event(tab).await;
        assert_eq!((event.topic.as_str(), event.kind.as_str(), &event.data), ("room:1", "message", &data));
        assert!(event.created_at.ends_with('Z'), "{event:?}");
    }
    for tab in [&mut alice_tab, &mut bob_tab, &mut carol_tab, &mut dave_tab, &mut alice_plain_tab] {
        assert_quiet(tab).await;
    }

    let request = PublishRequest::new(To::topic("room:1"), json!(2)).ephemeral().except_user("bob");
    assert_eq!(publisher.publish(&request).await.unwrap().delivered, 3);
    assert_eq!(topic_event(&mut alice_tab).await.data, json!(2));
    assert_eq!(topic_event(&mut carol_tab).await.data, json!(2));
    assert_quiet(&mut bob_tab).await;

    // The poller gets both from its queue, in order, with its topics.
    let next_poll = PollOptions {
        after: Some(first_poll.last_seq),
        epoch: first_poll.epoch.clone(),
        timeout_s: Some(5),
        client: Some(first_poll.client.clone()),
        topics: room_1.clone(),
        positions: first_poll.positions.clone(),
    };
    let polled = erin.poll_with(&next_poll).await.unwrap();
    let polled_data: Vec<Value> = polled.topic.iter().map(|t| t.as_ref().unwrap().data.clone()).collect();
    assert_eq!((polled_data, polled.topics, polled.notifications.len()), (vec![data, json!(2)], room_1, 0));

    // Outside the claim, or without one: refused, at connect and after; nothing changed.
    assert_refused(alice.listen(&alice_client, &["room:3", "post:1"]).await, 403, "topic_forbidden");
    assert_refused(carol.listen(&carol_client, &["room:1"]).await, 403, "topic_forbidden");
    assert_refused(alice.stream(listening_to("post:1")).await, 403, "topic_forbidden");
    let request = PublishRequest::new(To::topic("room:3"), json!(3)).ephemeral();
    assert_eq!(publisher.publish(&request).await.unwrap().delivered, 0, "room:3 was not listened to");
    // A listener whose topic is refused ends with that error rather than retrying forever.
    let options = ListenerOptions { topics: vec!["post:1".into()], ..ListenerOptions::default() };
    let mut listener = Listener::new(server.subscriber(&claim("alice")), options);
    assert_refused(listener.next_event().await, 403, "topic_forbidden");
    assert!(listener.next_event().await.unwrap().is_none(), "it has ended");

    // Unlisten, with the token and with the API key.
    assert!(bob.unlisten(&bob_client, &["room:1"]).await.unwrap().is_empty());
    assert!(publisher.unlisten(&carol_client, &["room:1"]).await.unwrap().is_empty());
    let request = PublishRequest::new(To::topic("room:1"), json!(4)).ephemeral();
    assert_eq!(publisher.publish(&request).await.unwrap().delivered, 2, "alice and the poller");
    assert_eq!(topic_event(&mut alice_tab).await.data, json!(4));
    assert_quiet(&mut bob_tab).await;
    assert_quiet(&mut carol_tab).await;
    // A durable topic event is stored in the topic's log (SQLite here) and delivered live.
    let durable = PublishRequest::new(To::topic("room:1"), json!(5));
    assert_eq!(publisher.publish(&durable).await.unwrap().delivered, 2, "alice and the poller");
    assert_eq!(topic_event(&mut alice_tab).await.data, json!(5));
}

/// 11. A `Listener` keeps its topics, those of its options and those listened to through it
///     (less those it unlistened), across a graceful restart (`closed: shutdown`) and a crash
///     (`kill -9`: the connection drops). The restarted server knows nothing of the tab (it
///     keeps clients in memory), so the topics are there again only because the listener
///     names them on every reconnect: fails if it does not, or names an unlistened one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_keeps_its_topics_across_a_restart_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let server = spec.start().await;
    let token =
        mint_token_with_topics(spec.secret().as_bytes(), "alice", Some("s1"), HOUR, &["room:*"]).unwrap();
    let options = ListenerOptions { topics: vec!["room:1".into()], ..ListenerOptions::default() };
    let mut listener = Listener::new(server.subscriber(&token), options);
    let hello_topics = |event: Event| match event {
        Event::Hello { mut topics, .. } => {
            topics.sort();
            topics
        }
        other => panic!("expected hello, got {other:?}"),
    };
    assert_eq!(hello_topics(next_of(&mut listener).await), ["room:1"]);
    assert_eq!(listener.listen(&["room:2", "room:3"]).await.unwrap(), ["room:1", "room:2", "room:3"]);
    assert_eq!(listener.unlisten(&["room:3"]).await.unwrap(), ["room:1", "room:2"]);
    assert_eq!(listener.topics(), ["room:1", "room:2"]);

    // Publishes `n` to each room; returns how many tabs each reached.
    let publish_rooms = |url: String, n: u64| {
        let publisher = Publisher::new(&url, spec.api_key()).unwrap();
        async move {
            let mut delivered = Vec::new();
            for room in ["room:1", "room:2", "room:3"] {
                let request = PublishRequest::new(To::topic(room), json!({"room": room, "n": n})).ephemeral();
                delivered.push(publisher.publish(&request).await.unwrap().delivered);
            }
            delivered
        }
    };
    let expect_rooms = async |listener: &mut Listener, n: u64| {
        for room in ["room:1", "room:2"] {
            match next_of(listener).await {
                Event::Topic(event) => {
                    assert_eq!((event.topic.as_str(), event.data), (room, json!({"room": room, "n": n})));
                }
                other => panic!("expected the event of {room}, got {other:?}"),
            }
        }
        if let Ok(event) = tokio::time::timeout(QUIET, listener.next_event()).await {
            panic!("nothing more expected, got {event:?}");
        }
    };
    assert_eq!(publish_rooms(server.url.clone(), 1).await, [1, 1, 0]);
    expect_rooms(&mut listener, 1).await;

    sigterm(server.child.id());
    assert_eq!(next_of(&mut listener).await, Event::Closed { reason: "shutdown".into() });
    server.wait_stopped().await;
    let server = spec.start().await;
    assert_eq!(hello_topics(next_of(&mut listener).await), ["room:1", "room:2"]);
    assert_eq!(publish_rooms(server.url.clone(), 2).await, [1, 1, 0]);
    expect_rooms(&mut listener, 2).await;

    server.kill9();
    let server = spec.start().await;
    assert_eq!(hello_topics(next_of(&mut listener).await), ["room:1", "room:2"]);
    assert_eq!(publish_rooms(server.url.clone(), 3).await, [1, 1, 0]);
    expect_rooms(&mut listener, 3).await;
    assert!(listener.reconnects() >= 2, "{}", listener.reconnects());
}

/// 12. Topics from the shell: `herald token --topics` mints the claim, `herald listen
///     --topics` listens and prints the `topic` event as the WebSocket sends it (with its
///     `tseq`), `herald publish --topic --except-user` publishes one (durable without being
///     told: the answer has its tseq; `--ephemeral` for one without), and `herald listen
///     --after` takes the resume point a hello printed, topic positions included, and replays
///     the topic's events after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_token_listen_and_publish_with_topics() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let server = spec.start().await;
    let url = spec.url();
    let mint = |user: &str| {
        let mut command = herald(&spec.cwd);
        command
            .args(["token", "--user", user, "--topics", "room:*,post:42"])
            .env("HERALD_SECRET", spec.secret());
        command
    };
    let output = run(&mut mint("alice")).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = text(&output.stdout).trim().to_owned();
    let mut listen = Listen::start_with(&spec.cwd, &url, &token, &["--topics", "room:1,post:42"]);
    let hello = listen.next().await;
    assert_eq!(
        (&hello["event"], &hello["topics"], &hello["positions"]),
        (&json!("hello"), &json!(["room:1", "post:42"]), &json!({"post:42": 0, "room:1": 0})),
        "{hello}"
    );

    let publish = |topic: &str, except_user: Option<&str>, ephemeral: bool| {
        let mut command = herald(&spec.cwd);
        command.args([
            "publish",
            "--topic",
            topic,
            "--type",
            "message",
            "--data",
            r#"{"text":"hi"}"#,
            "--url",
            &url,
        ]);
        command.env("HERALD_API_KEY", spec.api_key());
        if let Some(user) = except_user {
            command.args(["--except-user", user]);
        }
        if ephemeral {
            command.arg("--ephemeral");
        }
        command
    };
    let output = run(&mut publish("post:42", Some("bob"), false)).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer,
        json!({"notifications": [], "topic": {"topic": "post:42", "tseq": 1}, "delivered": 1})
    );
    let line = listen.next().await;
    assert_eq!(line["created_at"].as_str().map(|at| at.ends_with('Z')), Some(true), "{line}");
    let mut expected =
        json!({"event": "topic", "topic": "post:42", "tseq": 1, "type": "message", "data": {"text": "hi"}});
    expected["created_at"] = line["created_at"].clone();
    assert_eq!(line, expected);

    let output = run(&mut publish("room:1", Some("alice"), false)).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((&answer["delivered"], &answer["topic"]["tseq"]), (&json!(0), &json!(1)), "alice is left out");
    let output = run(&mut publish("room:1", None, true)).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer, json!({"notifications": [], "delivered": 1}), "ephemeral: no tseq");
    let line = listen.next().await;
    assert_eq!((&line["topic"], line.get("tseq")), (&json!("room:1"), None), "{line}");
    if let Ok(Some(line)) = tokio::time::timeout(QUIET, listen.lines.recv()).await {
        panic!("nothing more expected, got {line}");
    }
    drop(listen);

    // From the hello's resume point: post:42's event comes again (room:1's excepted alice).
    let after = format!("{};post:42=0;room:1=0", hello["id"]);
    let mut listen =
        Listen::start_with(&spec.cwd, &url, &token, &["--topics", "room:1,post:42", "--after", &after]);
    let hello = listen.next().await;
    assert_eq!(hello["positions"], json!({"post:42": 0, "room:1": 0}), "{hello}");
    let line = listen.next().await;
    assert_eq!((&line["topic"], &line["tseq"]), (&json!("post:42"), &json!(1)), "{line}");
    if let Ok(Some(line)) = tokio::time::timeout(QUIET, listen.lines.recv()).await {
        panic!("nothing more expected, got {line}");
    }
    drop(listen);
    let bad =
        run(herald(&spec.cwd).args(["listen", "--token", &token, "--url", &url, "--after", "0;room:1"]))
            .await;
    assert_eq!(bad.status.code(), Some(2), "a usage error: {}", text(&bad.stderr));
    drop(server);
}

/// 13. Durable topics across crashes: a `Listener` with two durable topics (`room:1` named when
///     it connects, `room:2` listened to through it) and its user's notifications, while a
///     publisher publishes to all three and the server is killed (`kill -9`) and started again
///     on the same data dir, twice. Every topic's tseqs arrive exactly 1..N, in order, and the
///     user's seqs too. Each publish is retried with its idempotency key until acknowledged, so
///     none is lost or stored twice. Fails if the listener resumes a topic from anywhere but
///     its exact position (a gap when it starts at the head, duplicates when it starts before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_resumes_durable_topics_exactly_across_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path());
    let mut server = spec.start().await;
    let token =
        mint_token_with_topics(spec.secret().as_bytes(), "alice", Some("s1"), HOUR, &["room:*"]).unwrap();
    let options = ListenerOptions {
        topics: vec!["room:1".into()],
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..ListenerOptions::default()
    };
    let mut listener = Listener::new(server.subscriber(&token), options);
    assert!(matches!(next_of(&mut listener).await, Event::Hello { .. }));
    assert_eq!(listener.listen(&["room:2"]).await.unwrap(), ["room:1", "room:2"]);

    // The reader can be paused (`next_event` is cancel-safe): while the server is down and
    // until events were published after its restart, so that the listener resumes after them
    // every time, whatever the timing.
    let (events, mut received) = mpsc::unbounded_channel();
    let (pause, mut paused) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(async move {
        loop {
            if *paused.borrow_and_update() {
                if paused.changed().await.is_err() {
                    break;
                }
                continue;
            }
            tokio::select! {
                event = listener.next_event() => {
                    let Ok(Some(event)) = event else { break };
                    if events.send(event).is_err() {
                        break;
                    }
                }
                _ = paused.changed() => {}
            }
        }
    });
    let acknowledged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (url, api_key, acked) = (spec.url(), spec.api_key(), acknowledged.clone());
    let publishing = tokio::spawn(async move {
        let publisher = Publisher::new(&url, api_key).unwrap();
        let mut published = (0, 0, 0);
        for i in 0..240u64 {
            let (request, count) = match i % 3 {
                0 => (PublishRequest::new(To::user("alice"), json!(i)), &mut published.0),
                1 => (PublishRequest::new(To::topic("room:1"), json!(i)), &mut published.1),
                _ => (PublishRequest::new(To::topic("room:2"), json!(i)), &mut published.2),
            };
            *count += 1;
            let request = request.idempotency_key(format!("p-{i}"));
            let deadline = Instant::now() + WAIT;
            let answer = loop {
                match publisher.publish(&request).await {
                    Ok(answer) => break answer,
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => panic!("publish {i}: {e}"),
                }
            };
            let stored =
                answer.topic.as_ref().map_or_else(|| answer.notifications[0].seq, |topic| topic.tseq);
            assert_eq!(stored, *count, "{i}: {answer:?}");
            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        published
    });
    let acked = || acknowledged.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        pause.send(true).unwrap();
        server.kill9();
        server = spec.start().await;
        let (before, deadline) = (acked(), Instant::now() + WAIT);
        while acked() < before + 6 {
            assert!(Instant::now() < deadline, "the publisher is stuck at {before}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pause.send(false).unwrap();
    }
    let (seqs, room_1, room_2) = publishing.await.unwrap();
    let (mut got_seqs, mut got_tseqs) = (Vec::new(), HashMap::<String, Vec<u64>>::new());
    while got_seqs.len() as u64 + got_tseqs.values().map(|t| t.len() as u64).sum::<u64>()
        < seqs + room_1 + room_2
    {
        let Ok(event) = tokio::time::timeout(WAIT, received.recv()).await else {
            panic!(
                "missing events: seqs {got_seqs:?}, topics {got_tseqs:?}; published {seqs}, {room_1}, {room_2}"
            )
        };
        match event.expect("the listener goes on") {
            Event::Notification(n) => got_seqs.push(n.seq.unwrap()),
            Event::Topic(t) => got_tseqs.entry(t.topic).or_default().push(t.tseq.unwrap()),
            Event::Hello { .. } | Event::Closed { .. } | Event::KeepAlive => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Anything more would be a duplicate.
    if let Ok(Some(event)) = tokio::time::timeout(QUIET, received.recv()).await {
        assert!(matches!(event, Event::KeepAlive), "nothing more expected, got {event:?}");
    }
    assert_eq!(got_seqs, (1..=seqs).collect::<Vec<_>>());
    assert_eq!(got_tseqs["room:1"], (1..=room_1).collect::<Vec<_>>());
    assert_eq!(got_tseqs["room:2"], (1..=room_2).collect::<Vec<_>>());
    reader.abort();
    drop(server);
}

/// `--admin-listen`: the admin port serves `GET /metrics` (Prometheus text) and names itself in
/// a banner; the public port does not serve it, nor the admin port the public routes; `off`
/// binds nothing. Fails if the admin routes leaked onto the public port or the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_serves_metrics_and_only_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        memory: true,
        extra: vec!["--admin-listen".into(), "127.0.0.1:0".into()],
        ..Spec::new(dir.path())
    };
    let server = spec.start().await;
    let admin = server.admin_url(WAIT).await;
    let http = reqwest::Client::new();
    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(metrics.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = metrics.text().await.unwrap();
    assert!(text.contains("# TYPE herald_process_cpu_seconds_total counter"), "{text}");
    let public_metrics = http.get(format!("{}/metrics", server.url)).send().await.unwrap();
    assert_eq!(public_metrics.status(), 404, "no /metrics on the public port");
    let admin_health = http.get(format!("{admin}/healthz")).send().await.unwrap();
    assert_eq!(admin_health.status(), 404, "no public route on the admin port");
    server.terminate().await;

    let spec =
        Spec { memory: true, extra: vec!["--admin-listen".into(), "off".into()], ..Spec::new(dir.path()) };
    let server = spec.start().await;
    server.wait_stderr("herald: no admin port").await;
    assert!(!server.stderr().contains("herald: admin on"), "{}", server.stderr());
    server.terminate().await;
}
