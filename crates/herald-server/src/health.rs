//! `GET /healthz`: what this node says about itself — its id, which store and bus it runs on,
//! and whether each can be reached ([`NodeHealth`]).
//!
//! The answer is built from what each part already knows ([`herald_core::Store::health`],
//! [`herald_core::Bus::health`]): no I/O, so a load balancer may ask as often as it likes. The
//! store learns of its own state from its operations and from the upkeep's probe (every
//! `STORE_PROBE_INTERVAL`, see the `upkeep` module); a cluster's bus from its broker connection.
//! A part that cannot be reached makes the node `degraded`, still with HTTP 200: the node is up
//! and its open streams stay open, but what needs that part fails (`503 store_unavailable`)
//! until it is back, which the node sees by itself. A new source of health (another part that
//! reaches outside the process) is one more entry in [`NodeHealth::of`].

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use herald_core::Health;
use serde::Serialize;

use crate::app::App;
use crate::response::json_response;

/// The body of `/healthz`: `{"status": "ok", "node": …, "store": …, "bus": …}`, plus a
/// `reason` when `degraded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeHealth {
    /// `"ok"`, or `"degraded"` while the store or the bus cannot be reached.
    pub status: &'static str,
    /// [`crate::ServerSettings::node_id`].
    pub node: String,
    /// The store's kind: `"sqlite"`, `"memory"`, `"postgres"` ([`herald_core::Store::kind`]).
    pub store: &'static str,
    /// The bus's kind: `"local"`, `"nats"`, `"redis"` ([`herald_core::Bus::kind`]).
    pub bus: &'static str,
    /// Why it is degraded: each part's reason, `store: …; bus: …`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl NodeHealth {
    /// The node's health now.
    pub fn of(app: &App) -> Self {
        let parts = [("store", app.store.health()), ("bus", app.bus.health())];
        let reasons: Vec<String> = parts
            .iter()
            .filter_map(|(part, health)| match health {
                Health::Ok => None,
                Health::Degraded { reason } => Some(format!("{part}: {reason}")),
            })
            .collect();
        Self {
            status: if reasons.is_empty() { "ok" } else { "degraded" },
            node: app.settings.node_id.to_string(),
            store: app.store.kind(),
            bus: app.bus.kind(),
            reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        }
    }
}

/// `GET /healthz` (no auth): [`NodeHealth`], always 200 while the node answers.
pub(crate) async fn healthz(State(app): State<Arc<App>>) -> Response {
    json_response(&NodeHealth::of(&app))
}

/// The body of `GET /v1/cluster`: this node, its bus, and what the bus carried.
#[derive(Serialize)]
struct ClusterBody<'a> {
    node: &'a str,
    bus: &'static str,
    #[serde(flatten)]
    stats: herald_core::BusStats,
}

/// `GET /v1/cluster` (API key): this node's view of its cluster — the other nodes it hears, the
/// shards it subscribes to, and the envelopes and bytes its bus sent and received (the bus
/// traffic per node). On a single node: no peers, all zero.
pub async fn cluster(State(app): State<Arc<App>>, _publisher: crate::auth::Publisher) -> Response {
    let body =
        ClusterBody { node: app.settings.node_id.as_str(), bus: app.bus.kind(), stats: app.bus.stats() };
    json_response(&body)
}
