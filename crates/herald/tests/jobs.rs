//! A fan-out job of the real `herald` binary killed with `kill -9` in the middle: after a restart
//! on the same data dir the job goes on by itself, and each of 25,000 followers of the topic has
//! the notification exactly once.
//!
//! Every child is stopped by its PID when its guard is dropped, and every wait is bounded.

#[allow(dead_code)] // the stream helpers are for the other process tests
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Server, free_port};
use futures::StreamExt as _;
use serde_json::{Value, json};

const FOLLOWERS: usize = 25_000;
/// Requests in flight at once while the followers are set up and checked.
const CONCURRENCY: usize = 32;
const WAIT: Duration = Duration::from_secs(120);

struct Spec {
    data_dir: PathBuf,
    port: u16,
}

impl Spec {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn api_key(&self) -> String {
        format!("jobs-api-key-{}-{}", std::process::id(), self.port)
    }

    async fn start(&self) -> Server {
        common::start_until_up(Instant::now() + Duration::from_secs(20), || {
            let mut command = common::herald(self.data_dir.parent().unwrap());
            command
                .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port), "--data-dir"])
                .arg(&self.data_dir)
                .env("HERALD_SECRET", format!("jobs-secret-of-at-least-32-bytes-{}", self.port))
                .env("HERALD_API_KEY", self.api_key())
                .env("HERALD_IP_REQUESTS_PER_SEC", "0")
                .env("HERALD_IP_CONNECTIONS_MAX", "0");
            Server::spawn(command, self.url())
        })
        .await
    }

    async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = http.request(method, format!("{}{path}", self.url())).bearer_auth(self.api_key());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

fn follower(n: usize) -> String {
    format!("f{n:05}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_mid_way_resumes_and_stores_each_followers_notification_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec { data_dir: dir.path().join("data"), port: free_port() };
    std::fs::create_dir_all(&spec.data_dir).unwrap();
    let http = reqwest::Client::new();
    let server = spec.start().await;

    // 25,000 users follow the topic (user scope), and one listens in a session only.
    let spec_ref = &spec;
    let http_ref = &http;
    futures::stream::iter(0..FOLLOWERS)
        .map(|n| async move {
            let body = json!({"topics": ["news:1"], "user": follower(n)});
            let (status, answer) =
                spec_ref.call(http_ref, reqwest::Method::POST, "/v1/topics/listen", Some(body)).await;
            assert_eq!(status, 200, "{answer}");
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let body = json!({"topics": ["news:1"], "user": "session-only", "session": "s1"});
    assert_eq!(spec.call(&http, reqwest::Method::POST, "/v1/topics/listen", Some(body)).await.0, 200);

    let publish = json!({"to": {"topic": "news:1"}, "inbox": true, "type": "news", "data": {"title": "x".repeat(900)},
        "idempotency_key": "news-1"});
    let (status, answer) = spec.call(&http, reqwest::Method::POST, "/v1/notify", Some(publish.clone())).await;
    assert_eq!(status, 202, "{answer}");
    let job = answer["job"].as_str().unwrap().to_owned();

    // Killed once some chunks are stored and before the last.
    let deadline = Instant::now() + WAIT;
    let stored_at_kill = loop {
        let (status, progress) =
            spec.call(&http, reqwest::Method::GET, &format!("/v1/jobs/{job}"), None).await;
        assert_eq!(status, 200, "{progress}");
        let stored = progress["stored"].as_u64().unwrap();
        assert_eq!(progress["done"], false, "the job finished before the kill: {progress}");
        if stored > 0 {
            break stored;
        }
        assert!(Instant::now() < deadline, "the job stored nothing: {progress}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    server.kill9();
    eprintln!("killed with {stored_at_kill} stored");

    // The restarted server goes on by itself; the same key answers the same job.
    let _server = spec.start().await;
    let (status, again) = spec.call(&http, reqwest::Method::POST, "/v1/notify", Some(publish)).await;
    assert_eq!((status, again["job"].as_str()), (202, Some(job.as_str())), "{again}");
    let progress = loop {
        let (_, progress) = spec.call(&http, reqwest::Method::GET, &format!("/v1/jobs/{job}"), None).await;
        if progress["done"] == true {
            break progress;
        }
        assert!(Instant::now() < deadline, "the job did not finish after the restart: {progress}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(progress["stored"], FOLLOWERS as u64, "{progress}");

    // Each follower has it exactly once; the session listener has nothing.
    let counts: Vec<(usize, usize)> = futures::stream::iter(0..FOLLOWERS)
        .map(|n| async move {
            let path = format!("/v1/users/{}/notifications", follower(n));
            let (status, page) = spec_ref.call(http_ref, reqwest::Method::GET, &path, None).await;
            assert_eq!(status, 200, "{page}");
            (n, page["notifications"].as_array().unwrap().len())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let wrong: Vec<&(usize, usize)> = counts.iter().filter(|(_, count)| *count != 1).collect();
    assert!(
        wrong.is_empty(),
        "{} followers without exactly one: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    let (_, page) =
        spec.call(&http, reqwest::Method::GET, "/v1/users/session-only/notifications", None).await;
    assert_eq!(page["notifications"], json!([]));
}
