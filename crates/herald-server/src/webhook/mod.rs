//! Presence webhooks: herald-core's [`PresenceTracker`] decides who came online and went
//! offline (across the cluster, through the store); this module sends those events to the app
//! over HTTP, batched, signed, retried, in order per user.
//!
//! # Layout
//! - [`signature`]: the `Herald-Signature` header (HMAC-SHA256 over the time and the body),
//!   and [`verify`], what a receiver does.
//! - `sender`: the bounded queue, the batches, the retries, and what is dropped.
//!
//! Why here and not in herald-core: the core knows no HTTP (it makes the events and hands them
//! to a [`herald_core::PresenceSink`]); and not a crate of its own: it is one HTTP client and a
//! queue, used only by the server (an app that embeds Herald gets it through
//! [`crate::HeraldBuilder::webhook`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use herald_core::{Hub, PresenceTracker, PresenceTrackerOptions, Store};
use tokio::task::JoinHandle;

pub mod sender;
pub mod signature;

pub use herald_core::presence_tracker::{PRESENCE_NODE_DEAD_AFTER, PRESENCE_OFFLINE_GRACE_DEFAULT};
pub use sender::{
    WEBHOOK_BACKOFF_FIRST, WEBHOOK_BACKOFF_MAX, WEBHOOK_BATCH_EVENTS_MAX, WEBHOOK_BATCH_WAIT,
    WEBHOOK_DROPPED_USERS_MAX, WEBHOOK_POST_TIMEOUT, WEBHOOK_QUEUE_EVENTS_MAX, WEBHOOK_RETRY_FOR_DEFAULT,
    WEBHOOK_SHUTDOWN_DRAIN,
};
pub use signature::{SIGNATURE_HEADER, SignatureError, sign, verify};

/// Where and how presence events are sent (`herald serve --webhook-url …`).
#[derive(Clone)]
pub struct WebhookConfig {
    /// The receiver: an `http://` or `https://` URL, POSTed to.
    pub url: reqwest::Url,
    /// Signs every request ([`signature`]). Never logged (`Debug` hides it).
    pub secret: String,
    /// How long a tab that went still counts as online: a reload within it sends nothing.
    pub offline_grace: Duration,
    /// Whether to send `client.online` / `client.offline` (one per tab).
    pub client_events: bool,
    /// How long an event is tried before it is dropped ([`WEBHOOK_RETRY_FOR_DEFAULT`]).
    pub retry_for: Duration,
    /// The longest wait between two tries ([`WEBHOOK_BACKOFF_MAX`]).
    pub backoff_max: Duration,
    /// Events waiting at most ([`WEBHOOK_QUEUE_EVENTS_MAX`]).
    pub queue_events_max: usize,
    /// When another node counts as dead and its sessions are reported offline
    /// ([`PRESENCE_NODE_DEAD_AFTER`]; shorter in tests).
    pub node_dead_after: Duration,
    /// This node's id, in `dropped` events (set by the builder from the server's settings).
    pub node: String,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url.as_str())
            .field("secret", &"<hidden>")
            .field("offline_grace", &self.offline_grace)
            .field("client_events", &self.client_events)
            .field("retry_for", &self.retry_for)
            .finish_non_exhaustive()
    }
}

/// Why a webhook configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("the webhook URL {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("a webhook URL needs a webhook secret to sign its requests with")]
    NoSecret,
}

impl WebhookConfig {
    /// The configuration for `url` signed with `secret`, every other setting at its default.
    pub fn new(url: &str, secret: &str) -> Result<Self, WebhookConfigError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| WebhookConfigError::BadUrl(url.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(WebhookConfigError::BadUrl(url.to_owned()));
        }
        if secret.is_empty() {
            return Err(WebhookConfigError::NoSecret);
        }
        Ok(Self {
            url: parsed,
            secret: secret.to_owned(),
            offline_grace: PRESENCE_OFFLINE_GRACE_DEFAULT,
            client_events: false,
            retry_for: WEBHOOK_RETRY_FOR_DEFAULT,
            backoff_max: WEBHOOK_BACKOFF_MAX,
            queue_events_max: WEBHOOK_QUEUE_EVENTS_MAX,
            node_dead_after: PRESENCE_NODE_DEAD_AFTER,
            node: String::new(),
        })
    }
}

/// What the webhooks did, for `/metrics` (`herald_webhook_…`): plain counters.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Events answered 2xx (a batch sent twice counts twice).
    pub delivered_events: AtomicU64,
    /// POSTs answered 2xx.
    pub delivered_batches: AtomicU64,
    /// POSTs that failed (no answer in time, or not 2xx) and will be tried again.
    pub retries: AtomicU64,
    /// Events dropped: the queue was full, or they were not delivered within the retry bound.
    pub dropped_events: AtomicU64,
    /// Events waiting now (a gauge).
    pub queued_events: AtomicU64,
}

/// The running webhooks of one node: the tracker's task and the sender's. Dropping it stops
/// both (what is queued is lost, and its users' offline events come from the next start or
/// another node: see docs/OPERATIONS.md).
pub(crate) struct Webhooks {
    sender: Arc<sender::Sender>,
    tasks: [JoinHandle<()>; 2],
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Starts tracking `hub`'s tabs and sending their events as `config` says.
    pub(crate) fn start(
        config: WebhookConfig,
        hub: &Hub,
        store: Arc<dyn Store>,
        counters: Arc<WebhookCounters>,
    ) -> Self {
        let tracker = PresenceTracker::new(PresenceTrackerOptions {
            node: Arc::from(config.node.as_str()),
            offline_grace: config.offline_grace,
            client_events: config.client_events,
            node_dead_after: config.node_dead_after,
        });
        let set = hub.set_presence_hook(Arc::new(tracker.clone()));
        debug_assert!(set, "one tracker per hub");
        let client = http_client();
        let sender = Arc::new(sender::Sender::new(config, counters, client));
        let sending = {
            let sender = sender.clone();
            tokio::spawn(async move { sender.run().await })
        };
        let tracking = {
            let sender = sender.clone();
            tokio::spawn(async move { tracker.run(store, sender, std::future::pending()).await })
        };
        Self { sender, tasks: [tracking, sending] }
    }

    /// At a graceful shutdown: sends what is queued, for at most [`WEBHOOK_SHUTDOWN_DRAIN`].
    pub(crate) async fn drain(&self) {
        if !self.sender.drain(WEBHOOK_SHUTDOWN_DRAIN).await {
            tracing::warn!(
                "webhook: events still queued at shutdown are lost (the receiver did not take them)"
            );
        }
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The HTTP client of the sender: the system's root certificates for `https://` receivers, no
/// redirects (a redirect is an answer other than 2xx: tried again, and logged).
fn http_client() -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(WEBHOOK_POST_TIMEOUT)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
    let roots = rustls_native_certs::load_native_certs();
    for cert in roots.certs {
        if let Ok(cert) = reqwest::Certificate::from_der(&cert) {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().expect("a client without custom TLS settings builds")
}
