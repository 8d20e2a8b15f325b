//! [`App`]: the state every handler shares, and [`ServerSettings`], the server's settings that
//! are not limits of the core. The routes are in [`crate::routes`].

use std::sync::Arc;
use std::time::Duration;

use herald_core::{Bus, ClientIdMinter, Hub, Limits, NodeId, Notifier, Store};
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, TokenRules};
use crate::caps::{Caps, Limiter};
use crate::origin::AllowedOrigins;

/// Server settings that are not limits of the core.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// This node's id, in `/healthz` and the logs (and, in a cluster, what the other nodes know
    /// it by). Default: [`default_node_id`]; `herald serve`: `<hostname>:<port>` or
    /// `--node-id`.
    pub node_id: NodeId,
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
    /// The access log: one line per request (target `herald::access`) and its id echoed in
    /// `X-Request-Id` (see [`crate::access`]). On by default; off, neither costs anything.
    pub access_log: bool,
    /// Web Push: the VAPID key (none: push is off), the endpoint allow-list, the bounds.
    pub push: crate::push::PushSettings,
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
            node_id: default_node_id(),
            keepalive_interval: Duration::from_secs(15),
            dev_mode: false,
            demo: false,
            allowed_origins: AllowedOrigins::default(),
            send_timeout: SEND_TIMEOUT_DEFAULT,
            close_grace: CLOSE_GRACE_DEFAULT,
            caps: Caps::default(),
            token_rules: TokenRules::default(),
            access_log: true,
            push: crate::push::PushSettings::default(),
        }
    }
}

/// The node id of an embedded Herald that was given none: this host's name ([`host_name`]), or
/// `herald` if it has none that makes a node id.
pub fn default_node_id() -> NodeId {
    host_name()
        .and_then(|host| NodeId::new(host).ok())
        .unwrap_or_else(|| NodeId::new("herald").expect("a valid node id"))
}

/// This host's name (`gethostname`; elsewhere than on Unix, the `HOSTNAME` or `COMPUTERNAME`
/// variable), if it has one that is text.
pub fn host_name() -> Option<String> {
    #[cfg(unix)]
    {
        // The longest host name POSIX allows is 255 bytes, plus the NUL.
        let mut buffer = [0u8; 256];
        // SAFETY: gethostname writes at most `buffer.len()` bytes into the buffer it is given,
        // which lives until the call returns.
        #[allow(unsafe_code)]
        let done = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
        if done != 0 {
            return None;
        }
        // Cut at the NUL (a name that filled the buffer has none: then it is all of it).
        let len = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        String::from_utf8(buffer[..len].to_vec()).ok().filter(|name| !name.is_empty())
    }
    #[cfg(not(unix))]
    {
        std::env::var("HOSTNAME").or_else(|_| std::env::var("COMPUTERNAME")).ok().filter(|n| !n.is_empty())
    }
}

/// Everything the handlers share. Built by [`crate::Herald::builder`] only (hence
/// `non_exhaustive`): an app without its upkeep would serve streams that never expire.
#[non_exhaustive]
pub struct App {
    pub notifier: Notifier,
    pub hub: Hub,
    pub store: Arc<dyn Store>,
    /// The bus the notifier publishes through (also for `/healthz`: its kind and health).
    pub bus: Arc<dyn Bus>,
    pub auth: Auth,
    pub settings: ServerSettings,
    /// Upgraded WebSocket connections (each runs in a task of its own, see [`crate::transport::ws`]):
    /// shutting down waits for them to send `closed: shutdown`.
    pub ws_connections: TaskTracker,
    /// Enforces [`ServerSettings::caps`].
    pub limiter: Limiter,
    /// Cancelled when the node starts shutting down (every stream is closed with `shutdown`):
    /// what else streams (the admin page's events) end on.
    pub(crate) stopping: tokio_util::sync::CancellationToken,
    /// What the presence webhooks did (all zero without `--webhook-url`), for `/metrics`.
    pub webhook_counters: Arc<crate::webhook::WebhookCounters>,
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
    /// The hub of an app with `limits`, whose client ids are keyed by `secret`. Made before the
    /// app because the bus is made over it (see [`crate::HeraldBuilder`]).
    pub(crate) fn hub(limits: Limits, secret: &[u8]) -> Hub {
        // Client ids are MACed with a key derived from the token secret, so that they stay
        // valid across restarts and on every node that shares the secret.
        let client_id_key = Sha256::new_with_prefix(b"herald client ids\0").chain_update(secret).finalize();
        Hub::new(limits, ClientIdMinter::new(&client_id_key))
    }

    /// An app over `store`, `hub` (from [`App::hub`]) and `bus`. Only [`crate::HeraldBuilder`]
    /// makes one, and starts its upkeep with it.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        hub: Hub,
        bus: Arc<dyn Bus>,
        secret: &[u8],
        api_key: &[u8],
        settings: ServerSettings,
    ) -> Arc<Self> {
        let notifier = Notifier::new(store.clone(), bus.clone(), hub.clone());
        Arc::new(Self {
            notifier,
            hub,
            store,
            bus,
            auth: Auth::new(secret, api_key, settings.token_rules.clone()),
            limiter: Limiter::new(&settings.caps),
            settings,
            ws_connections: TaskTracker::new(),
            stopping: tokio_util::sync::CancellationToken::new(),
            webhook_counters: Arc::default(),
        })
    }
}
