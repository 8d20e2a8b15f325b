//! What the process-level tests (e2e.rs, crash.rs, postgres.rs, cluster.rs) share: the `herald`
//! command with a clean environment, a `herald serve` child with its stderr collected, the
//! bounded wait until it answers, a private PostgreSQL's "skip or start" and the next event of a
//! stream. Each test file adds the methods only it needs in an `impl Server` of its own.

use std::io::{BufRead as _, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use herald_client::{Event, EventStream, Publisher};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The binary, in `cwd` (so that no `./herald-data` is found by accident), with none of
/// Herald's variables inherited (every `HERALD_…`: options added later included) and backtraces
/// on (so that a panic would show).
pub fn herald(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.current_dir(cwd);
    for (variable, _) in std::env::vars_os() {
        if variable.to_str().is_some_and(|name| name.starts_with("HERALD_")) {
            command.env_remove(variable);
        }
    }
    command.env_remove("RUST_LOG");
    command.env("RUST_BACKTRACE", "1");
    // Tests run side by side: each `herald serve`'s admin port on a free port, not the default
    // 7301 (taken by the first, it would fail every other's start).
    command.env("HERALD_ADMIN_LISTEN", "127.0.0.1:0");
    command
}

/// Collects a child's pipe, line by line, in a thread that ends when the pipe closes.
pub fn collect(pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let thread = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    (text, thread)
}

/// Spawns servers with `spawn` until one is up (see [`Server::wait_up`]), at most until
/// `deadline`. Between picking a free port (or the previous run) and the bind, the port can be
/// taken as the ephemeral port of some outgoing connection: then it tries again, on the same
/// port (a `herald listen` may be reconnecting to it).
pub async fn start_until_up(deadline: Instant, mut spawn: impl FnMut() -> Server) -> Server {
    loop {
        let mut server = spawn();
        match server.wait_up(deadline).await {
            Ok(()) => return server,
            Err(stderr) if stderr.contains("Address already in use") && Instant::now() < deadline => {
                eprintln!("the port of {} is taken; starting again: {stderr}", server.url);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(stderr) => panic!("the server exited before it answered; stderr:\n{stderr}"),
        }
    }
}

/// A running `herald serve`; killed (SIGKILL) and reaped when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Spawns `command` (a `herald serve` listening at `url`) with its stderr collected.
    pub fn spawn(mut command: Command, url: String) -> Self {
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let (stderr, stderr_thread) = collect(child.stderr.take().unwrap());
        Server { child, url, stderr, stderr_thread: Some(stderr_thread) }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The admin port's URL (`http://ADDR`), from the banner `herald: admin on http://ADDR (…)`
    /// (a server started with `--admin-listen 127.0.0.1:0`); fails if it is not printed within
    /// `wait`.
    #[allow(dead_code)] // for the tests of the admin port (e2e, operations, cluster)
    pub async fn admin_url(&self, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let stderr = self.stderr();
            if let Some(url) =
                stderr.split("herald: admin on ").nth(1).and_then(|rest| rest.split_whitespace().next())
            {
                return url.to_owned();
            }
            assert!(Instant::now() < deadline, "no admin banner within {wait:?}:\n{stderr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until this server says it listens and `/healthz` answers; `Err(stderr)` if it
    /// exits first. (`/healthz` alone could be answered by another process that took the port.)
    pub async fn wait_up(&mut self, deadline: Instant) -> Result<(), String> {
        let health = Publisher::new(&self.url, "unused").unwrap();
        let listening = format!("herald: listening on {}", self.url);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its stderr is closed: take all of it.
                self.join_stderr();
                return Err(format!("(exit: {status}) {}", self.stderr()));
            }
            if self.stderr().contains(&listening) && health.health().await.is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer in time; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL (`kill -9`), and reaps it; returns all it printed.
    pub fn kill9(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.join_stderr();
        self.stderr()
    }

    fn join_stderr(&mut self) {
        if let Some(thread) = self.stderr_thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The next event of `stream` that is not a keep-alive; fails after `wait`, or if the stream
/// ends.
pub async fn next_event_within(stream: &mut EventStream, wait: Duration) -> Event {
    loop {
        match tokio::time::timeout(wait, stream.next_event()).await {
            Err(_) => panic!("no event within {wait:?}"),
            Ok(Err(e)) => panic!("the stream failed: {e}"),
            Ok(Ok(None)) => panic!("the stream ended"),
            Ok(Ok(Some(Event::KeepAlive))) => {}
            Ok(Ok(Some(event))) => return event,
        }
    }
}
