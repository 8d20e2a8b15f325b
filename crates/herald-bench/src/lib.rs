//! Herald's load generator and the comparison with Nchan and Socket.IO.
//!
//! `herald-bench run` opens many subscriber connections of one kind (Herald SSE, WebSocket or
//! long-poll; plain SSE such as Nchan; Socket.IO) spread over worker processes, publishes to
//! random users with several publishers, and reports connections, publishes and deliveries per
//! second, lost and duplicated deliveries, end-to-end latency percentiles, and the server's
//! memory per idle connection and CPU per delivery. `herald-bench compare` puts several runs in
//! one table with ratios. `bench/compare.sh` runs the whole comparison; docs/BENCHMARKS.md has
//! the figures.
//!
//! # Layout
//! - [`run`]: the parent process: workers, phases, drain, accounting, the result.
//! - [`worker`]: a worker process and the subscriber kinds.
//! - [`publish`]: publishers and phase specs.
//! - [`verify`]: exactly-once accounting per (publish id, client).
//! - [`proto`]: the parent ↔ worker messages.
//! - [`http`], [`wire`]: a minimal HTTP/1.1 client, chunked decoding, SSE splitting, payloads.
//! - [`procstat`]: server RSS, PSS and CPU from `/proc`.
//! - [`stats`], [`report`], [`compare`]: histograms, the result and its tables.
//! - [`sys`]: the clock, the open-files limit, sockets bound to a loopback source address.

pub mod compare;
pub mod http;
pub mod procstat;
pub mod proto;
pub mod publish;
pub mod report;
pub mod run;
pub mod stats;
pub mod sys;
pub mod verify;
pub mod wire;
pub mod worker;
