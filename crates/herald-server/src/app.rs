//! [`App`]: the state every handler shares, and [`ServerSettings`], the server's settings that
//! are not limits of the core. The routes are in [`crate::routes`].

use std::sync::Arc;
use std::time::Duration;

use herald_core::{Bus, ClientIdMinter, Hub, Limits, LocalBus, Notifier, Store};
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, TokenRules};
use crate::caps::{Caps, Limiter};
use crate::embed::BusFactory;
use crate::origin::AllowedOrigins;

/// Server settings that are not limits of the core.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Longest silence on a stream: a keep-alive comment is sent after it (15 s); also the
    /// interval of WebSocket pings.
    pub keepalive_interval: Duration,
    /// Dev mode: generated credentials.
    pub dev_mode: bool,
    /// Serve the demo at `/demo`, with its dev-only endpoints (minting tokens, publishing,
    /// presence, all without credentials). Honoured only together with `dev_mode`;
    /// `herald serve` sets it when in dev mode and listening on a loopback address.
    pub demo: bool,
    /// Origins besides Herald's own whose pages may use the `herald_token` cookie and get CORS
    /// headers (see [`crate::origin`]).
    pub allowed_origins: AllowedOrigins,
    /// Longest time a write to a client may make no progress (the peer stopped reading and its
    /// TCP window is full) before the connection is dropped: streams (both SSE paths), long-poll
    /// answers and every other HTTP answer. [`SEND_TIMEOUT_DEFAULT`] in production.
    pub send_timeout: Duration,
    /// Once the hub ended a stream (evicted, replaced, lagging, session closed, token expired,
    /// shutdown), how long its connection has to take the rest of a write and the `closed`
    /// event; then it is dropped. [`CLOSE_GRACE_DEFAULT`] in production.
    pub close_grace: Duration,
    /// The connection cap and the per-address and per-user rate limits.
    pub caps: Caps,
    /// What subscriber tokens must satisfy beyond their signature (longest lifetime,
    /// audience).
    pub token_rules: TokenRules,
}

/// [`ServerSettings::send_timeout`] by default: WebSocket's dead-peer timeout. A browser that
/// reads at all (even a background tab, which still drains its socket) never comes near it;
/// a peer that stalls keeps its socket's buffers (megabytes in the kernel) and a task at most
/// this long.
pub const SEND_TIMEOUT_DEFAULT: Duration = crate::transport::ws::DEAD_PEER_TIMEOUT;

/// [`ServerSettings::close_grace`] by default: like WebSocket's close handshake timeout.
pub const CLOSE_GRACE_DEFAULT: Duration = Duration::from_secs(5);

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(15),
            dev_mode: false,
            demo: false,
            allowed_origins: AllowedOrigins::default(),
            send_timeout: SEND_TIMEOUT_DEFAULT,
            close_grace: CLOSE_GRACE_DEFAULT,
            caps: Caps::default(),
            token_rules: TokenRules::default(),
        }
    }
}

/// Everything the handlers share. Built by [`crate::Herald::builder`] only (hence
/// `non_exhaustive`): an app without its upkeep would serve streams that never expire.
#[non_exhaustive]
pub struct App {
    pub notifier: Notifier,
    pub hub: Hub,
    pub store: Arc<dyn Store>,
    pub auth: Auth,
    pub settings: ServerSettings,
    /// Upgraded WebSocket connections (axum runs each in its own task): shutting down waits for
    /// them to send `closed: shutdown`.
    pub ws_connections: TaskTracker,
    /// Enforces [`ServerSettings::caps`].
    pub limiter: Limiter,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("hub", &self.hub)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl App {
    /// An app over `store`, with `bus` made over its hub (one node's [`LocalBus`] when `None`).
    /// Only [`crate::HeraldBuilder::build`] makes one, and starts its upkeep with it.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        bus: Option<BusFactory>,
        limits: Limits,
        secret: &[u8],
        api_key: &[u8],
        settings: ServerSettings,
    ) -> Arc<Self> {
        // Client ids are MACed with a key derived from the token secret, so that they stay
        // valid across restarts and on every node that shares the secret.
        let client_id_key = Sha256::new_with_prefix(b"herald client ids\0").chain_update(secret).finalize();
        let hub = Hub::new(limits, ClientIdMinter::new(&client_id_key));
        let bus: Arc<dyn Bus> = match bus {
            Some(make) => make(&hub),
            None => Arc::new(LocalBus::new(hub.clone())),
        };
        let notifier = Notifier::new(store.clone(), bus, hub.clone());
        Arc::new(Self {
            notifier,
            hub,
            store,
            auth: Auth::new(secret, api_key, settings.token_rules.clone()),
            limiter: Limiter::new(&settings.caps),
            settings,
            ws_connections: TaskTracker::new(),
        })
    }
}
