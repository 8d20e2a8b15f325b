//! The admin listener: what operators reach on `--admin-listen` (default `127.0.0.1:7301`),
//! kept off the public port so that a firewall, a proxy or the loopback address alone keeps it
//! private. [`router`] is its route table (an embedding app mounts it wherever it serves its own
//! operator endpoints, or gets it from [`crate::Herald::admin_router`]); [`start_admin`] serves it
//! on a listener of its own, as `herald serve` does.
//!
//! # Layout
//! - [`metrics`]: `GET /metrics`, the Prometheus text exposition of the node's counters.
//! - [`ui`]: `GET /admin`, the operators' web page, and its JSON and SSE endpoints.
//!
//! The admin server is plain hyper, not the public front door: few clients (a Prometheus
//! scraper, an operator's browser), so no lean path; it has its own bounds
//! ([`ADMIN_CONNECTIONS_MAX`], [`ADMIN_REQUEST_HEAD_TIMEOUT`]) and is not counted against the
//! public caps, so a flood of subscribers cannot lock operators out.

pub mod metrics;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
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

/// The address an admin request came from, as the admin listener saw it ([`start_admin`] puts
/// it in each request's extensions). Absent when an embedding app serves [`router`] itself: its
/// audit lines then say `peer=-`.
#[derive(Debug, Clone, Copy)]
pub struct AdminPeer(pub SocketAddr);

/// The admin routes: `GET /metrics` and the admin page (`/admin…`, see [`ui`]; each router has
/// its own page state: sessions, samples, and the sampler, which runs as long as the router).
/// Anything else is 404 JSON, as on the public port; none of the public routes is here, and
/// none of these is there.
pub fn router(app: Arc<App>) -> Router {
    let page = ui::AdminUi::start(app.clone(), false).routes();
    let router = Router::new().route("/metrics", get(metrics::metrics));
    router
        .with_state(app)
        .merge(page)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
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
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed; pausing before the next accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the bound: dropped (closed) without an answer.
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        // Each request carries the operator's address, for the admin page's audit lines.
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(AdminPeer(peer));
                // A Router is always ready (its poll_ready is Ready): call it without waiting.
                tower_service::Service::call(&mut router.clone(), request)
            });
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
