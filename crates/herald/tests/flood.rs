//! A measurement, not a check (ignored by default; latencies on a shared machine are no test):
//! the publish latency of one user while another floods inbox marks over 16 connections, on
//! the real `herald` binary with a SQLite store, with the caps off and with the defaults.
//!
//! ```sh
//! cargo test --release -p herald --test flood -- --ignored --nocapture
//! ```
//!
//! Each phase is bounded: [`PUBLISHES`] publishes to bob one after another (or [`PHASE_MAX`]),
//! while, in a flood phase, mallory's [`FLOOD_CONNECTIONS`] connections mark one of her
//! notifications read and unread as fast as the server answers. The server is stopped by PID.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

const SECRET: &str = "flood-secret-flood-secret-flood-secret";
const API_KEY: &str = "flood-api-key";
/// Publishes measured per phase (a few seconds of them: the flood must run long enough to tell).
const PUBLISHES: usize = 3_000;
/// Longest phase.
const PHASE_MAX: Duration = Duration::from_secs(60);
/// Connections of the flood.
const FLOOD_CONNECTIONS: usize = 16;
/// Notifications mallory has, to mark.
const BAIT: u64 = 1_000;
/// Longest wait for the server to answer `/healthz`.
const START_WAIT: Duration = Duration::from_secs(20);

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: `kill` on the PID of our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(extra)
        .env("HERALD_SECRET", SECRET)
        .env("HERALD_API_KEY", API_KEY)
        // Tests run side by side: the admin port on a free port, not the default 7301.
        .env("HERALD_ADMIN_LISTEN", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + START_WAIT;
    while http.get(format!("{}/healthz", server.url)).send().await.is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

fn token(user: &str) -> String {
    herald_client::mint_token(SECRET.as_bytes(), user, None, Duration::from_secs(3600)).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// One phase: bob's publish latencies (ms, p50 and p99), and the flood's answers (200s, 429s,
/// others) if there is one.
async fn phase(server: &Server, flood: bool) -> (f64, f64, [u64; 3]) {
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut flooders = Vec::new();
    if flood {
        let mallory = token("mallory");
        for connection in 0..FLOOD_CONNECTIONS {
            let (stop, answers, url, mallory) =
                (stop.clone(), answers.clone(), server.url.clone(), mallory.clone());
            flooders.push(tokio::spawn(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
                let mut i = connection as u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 7;
                    let mark = if i.is_multiple_of(2) { "read" } else { "unread" };
                    let sent = client
                        .post(format!("{url}/v1/inbox/mark"))
                        .bearer_auth(&mallory)
                        .json(&json!({"seqs": [1 + i % BAIT], "as": mark}))
                        .send()
                        .await;
                    let slot = match sent.map(|r| r.status().as_u16()) {
                        Ok(200) => 0,
                        Ok(429) => 1,
                        _ => 2,
                    };
                    answers[slot].fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // the flood under way
    }
    let http = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(PUBLISHES);
    let started = Instant::now();
    while latencies.len() < PUBLISHES && started.elapsed() < PHASE_MAX {
        let sent = Instant::now();
        let response = http
            .post(format!("{}/v1/notify", server.url))
            .bearer_auth(API_KEY)
            .json(&json!({"to": {"user": "bob"}, "data": latencies.len()}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        latencies.push(sent.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await.unwrap();
    }
    latencies.sort();
    let answers = [0, 1, 2].map(|i| answers[i].load(Ordering::Relaxed));
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99), answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement on the release binary; run by hand (see the file's doc)"]
async fn publish_latency_of_one_user_while_another_floods_marks() {
    let off = ["--ip-connections-max", "0", "--ip-requests-per-sec", "0", "--inbox-writes-per-sec", "0"];
    for (label, extra) in [("caps off", &off[..]), ("caps at their defaults", &[][..])] {
        let server = start(extra).await;
        let http = reqwest::Client::new();
        for i in 0..BAIT {
            let response = http
                .post(format!("{}/v1/notify", server.url))
                .bearer_auth(API_KEY)
                .json(&json!({"to": {"user": "mallory"}, "data": i}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        let (p50, p99, _) = phase(&server, false).await;
        println!("{label}: no flood: bob's publish p50 {p50:.2} ms, p99 {p99:.2} ms");
        let (p50, p99, [ok, limited, other]) = phase(&server, true).await;
        println!(
            "{label}: flood over {FLOOD_CONNECTIONS} connections ({ok} marks done, {limited} answered 429, \
             {other} other): bob's publish p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
    }
}
