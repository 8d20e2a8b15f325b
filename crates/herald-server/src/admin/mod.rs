//! The admin listener: what operators reach on `--admin-listen` (default `127.0.0.1:7301`),
//! kept off the public port so that a firewall, a proxy or the loopback address alone keeps it
//! private. [`router`] is its route table (an embedding app mounts it wherever it serves its own
//! operator endpoints, or gets it from [`crate::Herald::admin_router`]); [`start_admin`] serves it
//! on a listener of its own, as `herald serve` does.
//!
//! # Layout
//! - [`metrics`]: `GET /metrics`, the Prometheus text exposition of the node's counters.
//! - `ui` (to come): `GET /admin`, the operators' web page, and its JSON and SSE endpoints.
//!
//! The admin server is plain hyper, not the public front door: few clients (a Prometheus
//! scraper, an operator's browser), so no lean path; it has its own bounds
//! ([`ADMIN_CONNECTIONS_MAX`], [`ADMIN_REQUEST_HEAD_TIMEOUT`]) and is not counted against the
//! public caps, so a flood of subscribers cannot lock operators out.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::error::ApiError;

/// Connections the admin listener serves at once. One more is closed at once, unanswered: the
/// admin port has a handful of clients (scrapers, an operator's pages), and this bounds what a
/// misbehaving one can make the node hold.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;

/// A new admin connection must send a request head within this time (and every later one on a
/// kept-alive connection), or it is closed.
pub const ADMIN_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin routes: `GET /metrics` (and the admin page, once merged). Anything else is 404
/// JSON, as on the public port; none of the public routes is here, and none of these is there.
pub fn router(app: Arc<App>) -> Router {
    let router = Router::new().route("/metrics", get(metrics::metrics));
    // ── The admin page (helper `adminui`): merge `ui::routes()` here, e.g.
    //    `let router = router.merge(ui::routes());` — `GET /admin`, its JSON and SSE endpoints.
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .with_state(app)
}

/// The admin server [`start_admin`] runs.
pub struct AdminServer {
    /// The address it listens on (the bound port when it was given port 0).
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Stops accepting and ends every admin connection (requests in flight are cut: a scrape
    /// is retried by its scraper, an admin page reconnects).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Serves [`router`]`(app)` on `listener` until [`AdminServer::shutdown`].
pub fn start_admin(app: Arc<App>, listener: TcpListener) -> std::io::Result<AdminServer> {
    let addr = listener.local_addr()?;
    let (shutdown, stop) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, router(app), stop));
    Ok(AdminServer { addr, shutdown, task })
}

async fn accept_loop(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let socket = match accepted {
            Ok((socket, _peer)) => socket,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed; pausing before the next accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the bound: dropped (closed) without an answer.
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_REQUEST_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "admin connection ended with an error");
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}
