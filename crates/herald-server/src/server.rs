//! Herald's own server: [`start`] serves a [`Herald`] on a listener, through the front door of
//! [`crate::connection`] (the lean stream path, the caps at accept, sockets whose writes must
//! make progress), until [`RunningServer::shutdown`]. `herald serve` is this plus its options.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::embed::{Herald, SHUTDOWN_GRACE};
use crate::{connection, tls};

/// A running server, as [`start`] returns it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, closes every client with reason `shutdown` and waits (at most
    /// [`SHUTDOWN_GRACE`]) for the connections to end, then stops the upkeep.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Serves `herald` on `listener` until [`RunningServer::shutdown`].
pub fn start(herald: Herald, listener: TcpListener) -> std::io::Result<RunningServer> {
    start_with_tls(herald, listener, None)
}

/// [`start`], over TLS when `tls` is given: HTTP/2 for clients that offer it (ALPN `h2`),
/// HTTP/1.1 for the others. The certificate is the reloader's current one at each handshake.
pub fn start_with_tls(
    herald: Herald,
    listener: TcpListener,
    tls: Option<Arc<tls::CertificateReloader>>,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let tls = tls.map(|reloader| tokio_rustls::TlsAcceptor::from(Arc::new(reloader.server_config())));
    let (shutdown, stop) = watch::channel(false);
    let app = herald.app().clone();
    let router = herald.router();
    let task = tokio::spawn(async move {
        let connections = TaskTracker::new();
        connection::accept_loop(listener, herald.app().clone(), router, stop, connections.clone(), tls).await;
        herald.end_streams();
        connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await.is_err() {
            tracing::warn!(
                open = connections.len(),
                "connections still open after the shutdown grace period"
            );
        }
        // Gone from the cluster once the requests in flight are done (a publish among them that
        // could not reach the bus asks the others to resync on the way out): the others then
        // neither wait for its presence answers nor poll the store for it.
        herald.leave_cluster().await;
        // Upgraded WebSockets run in tasks of their own: wait for their `closed` too, then stop
        // the upkeep.
        herald.finish().await;
        Ok(())
    });
    Ok(RunningServer { addr, app, shutdown, task })
}
