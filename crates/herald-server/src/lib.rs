//! Herald's HTTP server: the transports (SSE, long-poll, WebSocket), the publish and inbox API,
//! auth and caps, around `herald-core`'s hub and a `herald-store` store.
//!
//! A Rust app embeds Herald in its own axum server with [`Herald::builder`]: the [`Herald`] it
//! builds gives the routes to mount ([`Herald::router`]) and the notifier to publish with from
//! anywhere ([`Herald::notifier`]), and runs the upkeep the routes need (token expiry,
//! keep-alives, retention) until it is shut down, which ends every stream with
//! `closed: shutdown`. [`start`] serves a [`Herald`] on Herald's own front door; `herald serve`
//! (the `herald` binary) is that with options, signals and a data dir.
//!
//! ```rust,ignore
//! let herald = Herald::builder(store, secret, api_key).build();
//! let app = axum::Router::new().nest("/herald", herald.router());
//! tokio::spawn(job(herald.notifier()));
//! axum::serve(listener, app).with_graceful_shutdown(async move { stop().await; herald.shutdown().await }).await?;
//! ```
//!
//! # Layout
//! Leaves first, then what uses them:
//! - [`error`]: [`ApiError`], the JSON errors, and extractors that answer with them.
//! - [`query`]: reading query parameters (one number rule for every route); `response`: JSON
//!   answers. With `error`, what every handler uses, and nothing above them.
//! - [`config`]: the data dir's files and [`config::Credentials`] (dev mode).
//! - [`auth`]: subscriber tokens (HS256 JWT) and the publishers' API key.
//! - [`origin`]: which web pages may use the cookie (the origin check), CORS for the allowed
//!   origins, and the security headers of every answer.
//! - [`caps`]: the node's connection cap and the per-address and per-user rate limits.
//! - [`access`]: the access log (target `herald::access`) and request ids (`X-Request-Id`).
//! - [`push`]: Web Push's VAPID key, the push-endpoint allow-list and key checks,
//!   [`push::PushSettings`].
//! - [`app`]: [`App`], the state every handler shares, and [`ServerSettings`].
//! - [`transport`]: `GET /v1/stream` (SSE), `GET /v1/poll` and `GET /v1/ws` (WebSocket); the
//!   only code that encodes events for the wire.
//! - [`api`]: `POST /v1/notify`, `/v1/inbox…` and `/v1/users/{user}/…`.
//! - `assets`: `GET /herald.js` and `/herald.d.ts`, the browser client, and `/herald-sw.js`, its
//!   Web Push service worker (`clients/js/`).
//! - `demo`: `/demo`, the dev-mode demo and its dev-only endpoints (`clients/demo/`).
//! - [`health`]: `GET /healthz`, [`NodeHealth`]: the node's id, its store and bus, and whether
//!   each can be reached.
//! - `routes`: the route table.
//! - `upkeep`: the hub's clock (token expiry, keep-alives), retention, the sweeps, and the
//!   store's probe.
//! - `embed`: [`Herald`] and [`HeraldBuilder`], the routes with their upkeep: the API boundary.
//! - `guarded`: `GuardedSocket`, every connection's socket, whose writes must make progress (a
//!   peer that stops reading is dropped), and `StreamEnd`, how a connection learns that the hub
//!   ended its stream.
//! - [`tls`]: the certificate, reloaded on demand, for HTTPS and HTTP/2.
//! - `connection`: the accept loop and each connection's front door (the lean stream path).
//! - `server`: [`start`], Herald's own server on a listener, and [`RunningServer`].
//! - [`admin`]: the admin listener's routes (`GET /metrics`, the admin page [`admin::ui`]) and
//!   [`start_admin`], which serves them on a listener of their own, off the public port.
//! - [`webhook`]: presence webhooks: the events herald-core's tracker makes, sent to the app's
//!   receiver, batched, signed and retried.

// Unsafe only to read and raise the open-files limit (`caps`), to read the host name (`app`) and
// the page size and clock tick (`admin::metrics`), each call with its `SAFETY:`.
#![deny(unsafe_code)]

pub mod access;
pub mod admin;
pub mod api;
pub mod app;
mod assets;
pub mod auth;
pub mod caps;
pub mod config;
mod connection;
mod demo;
mod embed;
pub mod error;
mod guarded;
pub mod health;
pub mod origin;
pub mod push;
pub mod query;
mod response;
mod routes;
mod server;
pub mod tls;
pub mod transport;
mod upkeep;
pub mod webhook;

pub use admin::{AdminServer, start_admin};
pub use app::{App, ServerSettings, default_node_id, host_name};
pub use config::{DATA_DIR_LOCK_FILE, DATABASE_FILE};
pub use embed::{Herald, HeraldBuilder, SHUTDOWN_GRACE};
pub use error::ApiError;
pub use health::NodeHealth;
pub use server::{RunningServer, start, start_with_tls};
