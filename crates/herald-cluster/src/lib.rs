//! Herald on several nodes.
//!
//! Every node keeps its own [`herald_core::Hub`] of the clients connected to it; the durable log
//! is shared (the PostgreSQL store) and assigns every seq. What a node publishes, after the
//! commit, goes out to the other nodes as a small envelope over a message broker, and each node
//! hands what it receives to its own hub.
//!
//! # Layout
//! - [`broker`]: the [`Broker`] trait, a broker's plain pub/sub as the cluster needs it, the
//!   bounds both adapters share (`CONNECT_TIMEOUT`, `OPERATION_TIMEOUT`, the reconnect delays),
//!   and [`broker::connect`], which picks the adapter by the URL's scheme. Inside it, read
//!   bottom-up:
//!   - [`broker::address`]: the broker URL, checked before anything connects.
//!   - `broker::events`: the hand-over to the bus's bounded channel; messages never wait, a
//!     full channel drops them and the bus gets one `Lagged`.
//!   - [`broker::nats`]: core NATS with async-nats (its reconnects, our round-trip
//!     confirmations).
//!   - [`broker::redis`]: Redis pub/sub over one RESP3 connection, reconnected by the adapter.
//! - [`envelope`]: what nodes send each other, on which subjects; users spread over
//!   [`envelope::BUS_SHARDS`] shards.
//! - `interest`: which shards this node subscribes to (the hub's `Interest`).
//! - [`bus`]: [`ClusterBus`], the [`herald_core::Bus`] of a node in a cluster: publishing,
//!   receiving, membership, and the repairs from the store that make an at-most-once broker
//!   lose nothing. Inside it: `repair` (the passes over the store), `limits` (takeovers and the
//!   limits counted on every node), `queries` (presence merged from every node).

#![forbid(unsafe_code)]

pub mod broker;
pub mod bus;
pub mod envelope;
mod interest;

pub use broker::{Broker, BrokerError, BrokerEvent};
pub use bus::{BusTraffic, ClusterBus, ClusterOptions};
