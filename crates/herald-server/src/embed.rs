//! The embedding API: [`Herald::builder`] builds a [`Herald`], the one way to get Herald's
//! routes, for an app's own axum server and for [`crate::start`] (`herald serve`) alike.
//!
//! The routes alone are not Herald: token expiry, keep-alives, retention and the sweep of idle
//! pollers are the upkeep's ([`crate::upkeep`]), and a stop must end every stream with
//! `closed: shutdown` rather than cut it. So a [`Herald`] runs its upkeep from the moment it is
//! built, hands out its router and its notifier, and ends its streams when it is shut down or
//! dropped. There is nothing to remember and nothing to forget.
//!
//! ```rust,ignore
//! let herald = Herald::builder(store, secret, api_key).build();
//! let notifier = herald.notifier(); // publish from any task
//! let app = axum::Router::new().nest("/herald", herald.router());
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move {
//!         shutdown_signal().await;
//!         herald.shutdown().await; // every stream gets `closed: shutdown`, then ends
//!     })
//!     .await?;
//! ```
//!
//! `examples/embed.rs` is this, complete, with a background job that notifies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use herald_core::{Bus, CloseReason, Hub, Limits, LocalBus, Notifier, Store};

use crate::app::{App, ServerSettings};
use crate::health::NodeHealth;
use crate::upkeep::Upkeep;
use crate::webhook::{WebhookConfig, Webhooks};

/// Longest wait for upgraded WebSockets to send their `closed: shutdown` at
/// [`Herald::shutdown`]; then they are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Builds a [`Herald`]: the store, the token secret and the API key are required; the limits,
/// the settings and the bus have defaults ([`Limits::default`], [`ServerSettings::default`],
/// one node's [`LocalBus`]).
///
/// The store is any [`Store`]: `herald_store`'s `SqliteStore` or `MemoryStore` for one node,
/// its `PostgresStore` (opened with `PostgresStore::open(…).await`) for a node of a cluster.
#[must_use = "a builder does nothing until `build`"]
pub struct HeraldBuilder {
    store: Arc<dyn Store>,
    secret: Vec<u8>,
    api_key: Vec<u8>,
    limits: Limits,
    settings: ServerSettings,
    bus: Option<BusFactory>,
    webhook: Option<WebhookConfig>,
}

/// Makes the bus over the node's hub (which the builder makes: its client ids are keyed by the
/// secret).
type BusFactory = Box<dyn FnOnce(&Hub) -> Arc<dyn Bus> + Send>;

impl std::fmt::Debug for HeraldBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeraldBuilder")
            .field("limits", &self.limits)
            .field("settings", &self.settings)
            .field("bus", &self.bus.as_ref().map_or("LocalBus", |_| "custom"))
            .finish_non_exhaustive()
    }
}

impl HeraldBuilder {
    /// The hub and publish limits (default: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The server's settings: keep-alive interval, caps, origins, token rules…
    /// (default: [`ServerSettings::default`]).
    pub fn settings(mut self, settings: ServerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Sends presence events (`user.online`, `user.offline`, …) to `config.url` (default:
    /// none): see [`crate::webhook`] and docs/OPERATIONS.md, "Presence webhooks".
    pub fn webhook(mut self, config: WebhookConfig) -> Self {
        self.webhook = Some(config);
        self
    }

    /// The bus, made over this node's hub (default: a [`LocalBus`], one node). For a bus that
    /// must connect first, see [`HeraldBuilder::build_with_bus`].
    pub fn bus(mut self, bus: impl FnOnce(&Hub) -> Arc<dyn Bus> + Send + 'static) -> Self {
        self.bus = Some(Box::new(bus));
        self
    }

    /// Builds Herald and starts its upkeep.
    ///
    /// # Panics
    /// Outside a Tokio runtime (the upkeep is a task of the current one).
    pub fn build(mut self) -> Herald {
        let hub = App::hub(self.core_limits(), &self.secret);
        let bus: Arc<dyn Bus> = match self.bus.take() {
            Some(make) => make(&hub),
            None => Arc::new(LocalBus::new(hub.clone())),
        };
        self.finish(hub, bus)
    }

    /// Builds Herald with a bus that takes time to make, or may fail to: a cluster's bus, which
    /// connects to its broker and needs this node's hub (to hand it what other nodes publish)
    /// and store (to repair what the broker lost). `connect` gets both and returns the bus, or
    /// why there is none (then nothing was started). Any [`HeraldBuilder::bus`] is ignored.
    ///
    /// # Panics
    /// Outside a Tokio runtime (the upkeep is a task of the current one).
    pub async fn build_with_bus<E, F, Fut>(self, connect: F) -> Result<Herald, E>
    where
        F: FnOnce(Hub, Arc<dyn Store>) -> Fut,
        Fut: Future<Output = Result<Arc<dyn Bus>, E>>,
    {
        let hub = App::hub(self.core_limits(), &self.secret);
        let bus = connect(hub.clone(), self.store.clone()).await?;
        Ok(self.finish(hub, bus))
    }

    /// The limits given, with push on exactly when there is a VAPID key (and so a sender):
    /// without one a publish touches no push table.
    fn core_limits(&self) -> Limits {
        Limits { push_enabled: self.settings.push.vapid.is_some(), ..self.limits.clone() }
    }

    fn finish(self, hub: Hub, bus: Arc<dyn Bus>) -> Herald {
        let app = App::new(self.store, hub, bus, &self.secret, &self.api_key, self.settings);
        let upkeep = Upkeep::start(app.clone());
        let webhooks = self.webhook.map(|mut config| {
            config.node = app.settings.node_id.as_str().to_owned();
            Webhooks::start(config, &app.hub, app.store.clone(), app.webhook_counters.clone())
        });
        Herald { app, upkeep, webhooks }
    }
}

/// A running Herald: its routes, its notifier, and its upkeep, which runs until this is shut
/// down or dropped. Either ends every stream with `closed: shutdown`.
#[derive(Debug)]
pub struct Herald {
    app: Arc<App>,
    /// Stopped by [`Herald::shutdown`], or when the `Herald` is dropped.
    upkeep: Upkeep,
    /// Presence webhooks, when configured; stopped when the Herald is dropped.
    webhooks: Option<Webhooks>,
}

impl Herald {
    /// A builder over `store`, with the subscriber tokens' HS256 `secret` and the publishers'
    /// `api_key`.
    pub fn builder(
        store: Arc<dyn Store>,
        secret: impl AsRef<[u8]>,
        api_key: impl AsRef<[u8]>,
    ) -> HeraldBuilder {
        HeraldBuilder {
            store,
            secret: secret.as_ref().to_vec(),
            api_key: api_key.as_ref().to_vec(),
            limits: Limits::default(),
            settings: ServerSettings::default(),
            bus: None,
            webhook: None,
        }
    }

    /// Herald's HTTP routes, to serve or to mount (`Router::nest("/herald", herald.router())`).
    /// Call it as often as needed: every router serves this Herald.
    pub fn router(&self) -> Router {
        crate::routes::router(self.app.clone())
    }

    /// The admin routes (`GET /metrics`, see [`crate::admin`]), for operators only: serve them
    /// apart from [`Herald::router`] (another port, or behind the app's own operator auth), as
    /// `herald serve` does on `--admin-listen`.
    pub fn admin_router(&self) -> Router {
        crate::admin::router(self.app.clone())
    }

    /// The publish handle: cheap to clone, usable from any task.
    pub fn notifier(&self) -> Notifier {
        self.app.notifier.clone()
    }

    /// The state the handlers share: the hub, the store, the notifier, the settings.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// What `GET /healthz` answers now: this node's id, its store's and bus's kinds, and
    /// whether each can be reached (for an app's own health endpoint).
    pub fn health(&self) -> NodeHealth {
        NodeHealth::of(&self.app)
    }

    /// Ends every stream with `closed: shutdown`, waits (at most [`SHUTDOWN_GRACE`] each) for
    /// the WebSockets to send it, and stops the upkeep. An app serving the router should call
    /// it before it stops serving (in axum's `with_graceful_shutdown`), so that the streams end
    /// and the server's wait for its connections is short.
    pub async fn shutdown(self) {
        self.end_streams();
        self.leave_cluster().await;
        self.finish().await;
    }

    /// Tells the other nodes of a cluster that this one is leaving (see
    /// [`herald_core::Bus::shutdown`]); nothing on a single node.
    pub(crate) async fn leave_cluster(&self) {
        self.app.notifier.bus().shutdown().await;
    }

    /// Closes every client with reason `shutdown`.
    pub(crate) fn end_streams(&self) {
        self.app.stopping.cancel();
        let closed = self.app.hub.close_all(CloseReason::Shutdown);
        tracing::info!(closed, "shutting down: closed every client with reason `shutdown`");
    }

    /// After [`Herald::end_streams`]: waits, at most [`SHUTDOWN_GRACE`], for the upgraded
    /// WebSockets (each runs in a task of its own) to end, then stops the upkeep and waits
    /// until it let go of the app.
    pub(crate) async fn finish(mut self) {
        let websockets = &self.app.ws_connections;
        websockets.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, websockets.wait()).await.is_err() {
            tracing::warn!(open = websockets.len(), "WebSockets still open after the shutdown grace period");
        }
        if let Some(webhooks) = &self.webhooks {
            webhooks.drain().await;
        }
        self.upkeep.stop().await;
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        // Without the upkeep a stream would never see its token expire nor get a keep-alive:
        // none outlives it. (After `shutdown` there is no client left: this closes none.)
        self.app.hub.close_all(CloseReason::Shutdown);
    }
}
