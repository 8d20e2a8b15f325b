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
//! Leaves first, then what uses them:
//! - [`sys`]: the clock, the open-files limit, sockets bound to a loopback source address.
//! - [`stats`]: latency histograms.
//! - [`verify`]: exactly-once accounting per (publish id, client).
//! - [`wire`], [`http`]: payloads, SSE splitting and chunked decoding; a minimal HTTP/1.1 client.
//! - [`procstat`]: server RSS, PSS and CPU from `/proc`, of a set of processes (the nodes of a
//!   cluster, its broker, the share of a PostgreSQL cluster that serves one database).
//! - [`counters`]: outside counters read around each phase (a cluster broker's traffic).
//! - [`proto`] and [`worker`]: the parent ↔ worker messages, and a worker process with its
//!   subscriber kinds.
//! - [`publish`]: publishers and phase specs.
//! - [`report`]: the result and its tables.
//! - [`run`]: the parent process: workers, phases, drain, accounting, the result.
//! - [`compare`]: several results in one table, with ratios, the medians of rounds, multiples
//!   of the floor; and [`charts`], the same drawn as SVG.
//! - [`fsync`]: what one `fdatasync` costs on a disk (`herald-bench fsync-probe`).

// Unsafe only in `sys`, the generator's few system calls, each with its `SAFETY:`.
#![deny(unsafe_code)]

pub mod charts;
pub mod compare;
pub mod counters;
pub mod fsync;
pub mod http;
pub mod procstat;
pub mod proto;
pub mod publish;
pub mod report;
pub mod run;
pub mod stats;
#[allow(unsafe_code)] // clock_gettime, getrlimit, setrlimit, sysconf, setsockopt: no safe wrappers in libc.
pub mod sys;
pub mod verify;
pub mod wire;
pub mod worker;
