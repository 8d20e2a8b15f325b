//! Herald inside an app's own axum server: the app mounts Herald under `/herald`, a background
//! job notifies a user every few seconds, and SIGINT or SIGTERM stops it all, every stream ending
//! with `closed: shutdown`.
//!
//! ```sh
//! HERALD_SECRET=$(openssl rand -base64 32) HERALD_API_KEY=key cargo run -p herald-server --example embed
//! ```
//!
//! Then a token for `alice` (`herald token --user alice`, with the same `HERALD_SECRET`) opens
//! `http://127.0.0.1:3000/herald/v1/stream`, which gets the job's notifications; the rest of the
//! app answers beside it (`GET /`).
//!
//! Settings, from the environment: `HERALD_SECRET` and `HERALD_API_KEY` (required),
//! `EMBED_LISTEN` (`127.0.0.1:3000`; port 0 picks a free one), `EMBED_KEEPALIVE_SECS` (15),
//! `EMBED_JOB_USER` (`alice`), `EMBED_JOB_INTERVAL_MS` (5000). It prints
//! `listening on http://ADDR` once it serves.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use herald_core::{Notifier, Retention, UserId};
use herald_server::{Herald, ServerSettings};
use herald_store::MemoryStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let secret = std::env::var("HERALD_SECRET").map_err(|_| "set HERALD_SECRET (32 bytes or more)")?;
    let api_key = std::env::var("HERALD_API_KEY").map_err(|_| "set HERALD_API_KEY")?;
    let listen: String = setting("EMBED_LISTEN", "127.0.0.1:3000".to_owned())?;
    let keepalive = Duration::from_secs(setting("EMBED_KEEPALIVE_SECS", 15)?);
    let job_user = UserId::new(setting("EMBED_JOB_USER", "alice".to_owned())?)?;
    let job_interval = Duration::from_millis(setting("EMBED_JOB_INTERVAL_MS", 5_000)?);

    // The upkeep (token expiry, keep-alives, retention) runs from here until `herald` is shut
    // down or dropped.
    let store = Arc::new(MemoryStore::new(Retention::default()));
    let herald = Herald::builder(store, secret, api_key)
        .settings(ServerSettings { keepalive_interval: keepalive, ..ServerSettings::default() })
        .build();
    tokio::spawn(remind(herald.notifier(), job_user, job_interval));

    let app = Router::new()
        .route("/", get(|| async { "the app; Herald is under /herald\n" }))
        .nest("/herald", herald.router());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // With the peer's address, Herald's per-address caps apply to its subscriber routes.
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            stop_signal().await;
            // Before the server waits for its connections: the streams end, so the wait is short.
            herald.shutdown().await;
        })
        .await?;
    Ok(())
}

/// The background job: a durable notification to `user` at every `interval`.
async fn remind(notifier: Notifier, user: UserId, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    for n in 1u64.. {
        ticks.tick().await;
        let data = serde_json::json!({ "text": "a reminder from the background job", "n": n });
        if let Err(error) = notifier.notify(&user, "reminder", &data).await {
            eprintln!("embed: cannot notify {user}: {error}");
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// The environment variable `name`, parsed, or `default` when it is not set.
fn setting<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value.parse().map_err(|_| format!("{name}={value:?} is not valid")),
        Err(_) => Ok(default),
    }
}
