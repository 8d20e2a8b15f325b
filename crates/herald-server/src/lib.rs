//! Herald's HTTP server: the transports (SSE, long-poll, WebSocket), the publish API, auth and config,
//! around `herald-core`'s hub and a `herald-store` store.
//!
//! A Rust app can embed Herald in its own axum server: build an [`App`] over a store, mount
//! [`router`], and publish with [`App::notifier`] from anywhere. `herald serve` is [`serve`].
//!
//! # Layout
//! - [`app`]: [`App`], the shared state, and [`ServerSettings`].
//! - `routes`: [`router`], the route table.
//! - [`config`]: [`ServeArgs`] (options and env vars) and [`config::Credentials`] (dev mode).
//! - [`auth`]: subscriber tokens (HS256 JWT) and the publishers' API key.
//! - [`origin`]: which web pages may use the cookie (the origin check), CORS for the allowed
//!   origins, and the security headers of every answer.
//! - [`caps`]: the node's connection cap and the per-address and per-user rate limits.
//! - [`transport`]: `GET /v1/stream` (SSE), `GET /v1/poll` and `GET /v1/ws` (WebSocket); the
//!   only code that knows the wire format of events.
//! - [`api`]: `POST /v1/notify`, `/v1/inbox…` and `/v1/users/{user}/…`.
//! - [`error`]: [`ApiError`], the JSON errors, and extractors that answer with them.
//! - [`query`]: reading query parameters, one rule for every route (a leaf).
//! - `response`: JSON answers, for the API, the long-poll transport and the demo (a leaf).
//! - `assets`: `GET /herald.js` and `/herald.d.ts`, the browser client (`clients/js/`).
//! - `guarded`: `GuardedSocket`, every connection's socket, whose writes must make progress (a
//!   peer that stops reading is dropped), and `StreamEnd`, how a connection learns that the hub
//!   ended its stream.
//! - `demo`: `/demo`, the dev-mode demo and its dev-only endpoints (`clients/demo/`).

pub mod api;
pub mod app;
mod assets;
pub mod auth;
pub mod caps;
pub mod config;
mod connection;
mod demo;
pub mod error;
mod guarded;
pub mod origin;
pub mod query;
mod response;
mod routes;
pub mod tls;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{CloseReason, PruneReport, Store};
use herald_store::{MemoryStore, SqliteStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

pub use app::{App, ServerSettings};
pub use config::ServeArgs;
pub use error::ApiError;
pub use routes::router;

use config::{Credentials, CredentialsSource};

/// File name of the SQLite database in the data dir.
pub const DATABASE_FILE: &str = "herald.db";
/// File name of the data dir's lock (see [`serve`]): held by the running server, with its pid.
pub const DATA_DIR_LOCK_FILE: &str = "herald.lock";
/// How often retention runs (removes notifications past `max_age`, old idempotency keys, and
/// tells the users' clients their new inbox counts).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Longest period of the hub's clock ([`herald_core::Hub::tick`]): a token is closed at most this
/// late after it expires.
const HUB_TICK_PERIOD_MAX: Duration = Duration::from_secs(1);
/// Fewest ticks of the hub's clock per keep-alive interval (see `maintain`).
const KEEPALIVE_TICKS_MIN: u32 = 4;
/// How often the hub forgets clients gone for longer than their linger time.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait for open connections to end after a shutdown signal; then they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Credentials(#[from] config::CredentialsError),
    /// The store's own message says what failed, and where.
    #[error(transparent)]
    Store(#[from] herald_core::StoreError),
    #[error("the data dir {} is in use by another herald ({})", path.display(), pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}")))]
    DataDirInUse { path: std::path::PathBuf, pid: Option<u32> },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    ListenAddress(String),
    #[error("cannot use the data dir {}: {source}", path.display())]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A running server, as [`start`] returns it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Closes every client with reason `shutdown` and waits (at most [`SHUTDOWN_GRACE`]) for
    /// the connections to end.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Serves `app` on `listener`, with retention and sweeping in the background, until
/// [`RunningServer::shutdown`].
pub fn start(app: Arc<App>, listener: TcpListener) -> std::io::Result<RunningServer> {
    start_with_tls(app, listener, None)
}

/// [`start`], over TLS when `tls` is given: HTTP/2 for clients that offer it (ALPN `h2`),
/// HTTP/1.1 for the others. The certificate is the reloader's current one at each handshake.
pub fn start_with_tls(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<tls::CertificateReloader>>,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let tls = tls.map(|reloader| tokio_rustls::TlsAcceptor::from(Arc::new(reloader.server_config())));
    let (shutdown, stop) = watch::channel(false);
    let maintenance = tokio::spawn(maintain(app.clone(), stop.clone()));
    let router = router(app.clone());
    let task = {
        let app = app.clone();
        tokio::spawn(async move {
            let connections = TaskTracker::new();
            connection::accept_loop(listener, app.clone(), router, stop, connections.clone(), tls).await;
            let closed = app.hub.close_all(CloseReason::Shutdown);
            tracing::info!(closed, "shutting down: closed every client with reason `shutdown`");
            connections.close();
            if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await.is_err() {
                tracing::warn!(
                    open = connections.len(),
                    "connections still open after the shutdown grace period"
                );
            }
            // Upgraded WebSockets run in tasks of their own: wait for their `closed` too.
            app.ws_connections.close();
            if tokio::time::timeout(SHUTDOWN_GRACE, app.ws_connections.wait()).await.is_err() {
                tracing::warn!(
                    open = app.ws_connections.len(),
                    "WebSockets still open after the shutdown grace period"
                );
            }
            maintenance.abort();
            Ok(())
        })
    };
    Ok(RunningServer { addr, app, shutdown, task })
}

/// Runs retention and the hub's sweep periodically until `stop`.
async fn maintain(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    // The hub's clock: token expiry and keep-alives for every connection, so that no connection
    // needs a timer of its own. It ticks at least every second (token expiry is checked that
    // often) and at least four times per keep-alive interval, so a keep-alive goes out after
    // between 3/4 of the interval and the whole interval of silence, never later.
    let keepalive = app.settings.keepalive_interval.max(Duration::from_millis(40));
    let tick_period = (keepalive / KEEPALIVE_TICKS_MIN).min(HUB_TICK_PERIOD_MAX);
    let keepalive_ticks = keepalive.as_millis().div_ceil(tick_period.as_millis()).max(1) as u32;
    let mut tick = tokio::time::interval(tick_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now_secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                app.hub.tick(now_secs, keepalive_ticks);
            }
            _ = prune.tick() => match app.notifier.inbox().prune(herald_core::notification::now_ms()).await {
                Ok(report) if report != PruneReport::default() => {
                    tracing::info!(
                        notifications = report.notifications,
                        idempotency_keys = report.idempotency_keys,
                        revocations = report.revocations,
                        users = report.inboxes.len(),
                        "retention removed old records"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "retention failed; will retry"),
            },
            _ = sweep.tick() => {
                app.hub.sweep();
                app.limiter.sweep();
            }
            // The flag only ever goes from false to true: any change means stop.
            _ = stop.changed() => return,
        }
    }
}

/// `herald serve`: opens the store, sets up credentials (dev mode if none), serves until
/// SIGINT or SIGTERM, then closes every client with reason `shutdown`.
///
/// The order matters. The port is bound (and the TLS files read) first: a start that fails on a
/// port in use (a second instance, a typo) or a bad certificate exits before it touches anything. Then the data dir is locked
/// ([`DATA_DIR_LOCK_FILE`], held until the server exits, released by the kernel on `kill -9`)
/// before its credentials or database are read: two servers on one data dir would hand out the
/// same seqs with different contents, and the second one's store would settle the first one's
/// staged appends behind its back. A second instance is refused with one line naming the
/// holder's pid. (The store locks its database file too, for any other program embedding it.)
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    // Before the connection cap is derived from it (when `--connections-max` is not given).
    let raised_open_files = caps::raise_open_files_limit();
    let data_dir = (!args.memory).then_some(args.data_dir.as_path());
    let listen_addrs = config::listen_addresses(&args.listen).await.map_err(ServeError::ListenAddress)?;
    // A name may resolve to several addresses (`localhost`: 127.0.0.1 and ::1): the first, in
    // the resolver's order of preference, is used, and the banner says which.
    let listen_addr = listen_addrs[0];
    let listener = TcpListener::bind(listen_addr)
        .await
        .map_err(|source| ServeError::Listen { addr: listen_addr, source })?;
    let tls = match args.tls_files() {
        Some(files) => Some(tls::CertificateReloader::load(files)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Held to the end of `serve`, after the store is closed (`server.shutdown` ends the app).
    let _data_dir_lock = data_dir.map(lock_data_dir).transpose()?;
    let (credentials, source) =
        Credentials::resolve(args.secret.as_deref(), args.api_key.as_deref(), data_dir)?;
    let store: Arc<dyn Store> = match data_dir {
        Some(dir) => Arc::new(SqliteStore::open(&dir.join(DATABASE_FILE), args.retention())?),
        None => Arc::new(MemoryStore::new(args.retention())),
    };
    let settings = ServerSettings {
        keepalive_interval: Duration::from_secs(args.keepalive_secs.max(1)),
        dev_mode: source.is_dev(),
        // The demo mints tokens and publishes for anyone who can reach it: only on loopback.
        demo: source.is_dev() && listen_addr.ip().is_loopback(),
        allowed_origins: args.allowed_origins(),
        caps: args.caps(),
        token_rules: auth::TokenRules {
            ttl_max: args.token_ttl_max,
            audience: args.token_audience.clone().filter(|a| !a.is_empty()),
        },
        ..ServerSettings::default()
    };
    let app = App::new(
        store,
        args.limits(),
        credentials.secret.as_bytes(),
        credentials.api_key.as_bytes(),
        settings,
    );
    if let Some(reloader) = &tls {
        tokio::spawn(reload_on_sighup(reloader.clone()));
    }
    let server = start_with_tls(app, listener, tls)?;
    if source.is_dev() {
        let file = data_dir.map(|dir| dir.join(config::DEV_CREDENTIALS_FILE).display().to_string());
        let origin = match (source, file) {
            (CredentialsSource::DevLoaded, Some(file)) => format!("credentials loaded from {file}"),
            (_, Some(file)) => format!("credentials generated and kept in {file}"),
            (_, None) => {
                "credentials generated and kept nowhere (--memory): new ones at every start".to_owned()
            }
        };
        tracing::warn!("DEV MODE: no HERALD_SECRET / HERALD_API_KEY given; {origin}");
        eprintln!("herald: dev mode ({origin}). Do not use in production.");
        eprintln!("  HERALD_SECRET={}", credentials.secret);
        eprintln!("  HERALD_API_KEY={}", credentials.api_key);
    }
    let storage = match data_dir {
        Some(dir) => dir.join(DATABASE_FILE).display().to_string(),
        None => "memory (nothing kept on disk)".to_owned(),
    };
    tracing::info!(addr = %server.addr, %storage, "herald listening");
    if listen_addrs.len() > 1 || args.listen.parse::<SocketAddr>().is_err() {
        let all: Vec<String> = listen_addrs.iter().map(ToString::to_string).collect();
        eprintln!("herald: {} resolves to {}; listening on the first", args.listen, all.join(", "));
    }
    eprintln!("herald: listening on {scheme}://{} (store: {storage})", server.addr);
    if let Some((before, after)) = raised_open_files {
        eprintln!("herald: raised the open-files limit from {before} to {after}");
    }
    match server.app.limiter.connections_max() {
        usize::MAX => eprintln!("herald: no connection cap (--connections-max 0)"),
        max => eprintln!("herald: at most {max} connections at once (--connections-max)"),
    }
    shutdown_signal().await;
    server.shutdown().await?;
    Ok(())
}

/// Reloads the TLS certificate and key on every SIGHUP, for the connections that come next. A
/// reload that fails keeps the certificate in use.
async fn reload_on_sighup(reloader: Arc<tls::CertificateReloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate will not be reloaded");
            return;
        };
        while hangups.recv().await.is_some() {
            match reloader.reload() {
                Ok(()) => {
                    tracing::info!(cert = %reloader.files().cert.display(), "SIGHUP: reloaded the TLS certificate");
                    eprintln!(
                        "herald: reloaded the TLS certificate from {}",
                        reloader.files().cert.display()
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "SIGHUP: could not reload the TLS certificate; keeping the one in use");
                    eprintln!(
                        "herald: could not reload the TLS certificate ({error}); keeping the one in use"
                    );
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Creates `dir` if missing and takes its lock (see [`serve`]).
fn lock_data_dir(dir: &std::path::Path) -> Result<herald_store::LockFile, ServeError> {
    std::fs::create_dir_all(dir).map_err(|source| ServeError::DataDir { path: dir.to_owned(), source })?;
    herald_store::LockFile::acquire(&dir.join(DATA_DIR_LOCK_FILE)).map_err(|error| match error {
        herald_store::LockError::Held { pid, .. } => ServeError::DataDirInUse { path: dir.to_owned(), pid },
        herald_store::LockError::Io { source, .. } => ServeError::DataDir { path: dir.to_owned(), source },
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
