//! herald-server's integration tests, in one test binary (as ripgrep's `tests/integration`):
//! one link of the server and its dependencies instead of one per file, and `support` compiled
//! once, so that an unused helper is a warning again.
//!
//! The modules share one process and run in parallel. Nothing in them may change the process
//! for the others: no test sets an environment variable, and `fuzz` counts only the panics of
//! its own servers' threads (see `fuzz::count_panics`).

#[macro_use]
mod support;

mod admin_ui;
mod authorization;
mod bad_input;
mod basics;
mod batch;
mod caps;
mod connection;
mod durable_topics;
mod embed;
mod epoch;
mod fuzz;
mod inbox;
mod limits;
mod metrics;
mod openapi;
mod origins;
mod poll;
mod publish_size;
mod publisher_api;
mod push;
mod queries;
mod raw_http;
mod receiver;
mod resume;
mod revocation;
mod stalled;
mod store_unavailable;
mod targeting;
mod tls;
mod topics;
mod web;
mod webhooks;
mod websocket;
