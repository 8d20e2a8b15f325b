//! What `herald serve`'s store and cluster options choose, checked before anything is opened:
//! the store (`--store postgres://…`, else SQLite in the data dir, or `--memory`), the bus
//! (`--bus nats://…` or `redis://…`, else the single node's), the node's id and its cluster's
//! name ([`Plan::from_args`], which refuses a combination that cannot work, in one line); then
//! [`open_store`] and [`connect_bus`], the one place each is made.
//!
//! The rules, and why:
//! - A bus joins nodes into a cluster, and a cluster needs one log that every node appends to
//!   (seqs are assigned by the store): `--bus` with a node-local store (SQLite, memory) is
//!   refused; each node would hand out the same seqs to different notifications.
//! - Dev mode (credentials generated at start) is single-node only: nodes must share the token
//!   secret and the API key, so `--bus` needs `HERALD_SECRET` and `HERALD_API_KEY`.
//! - With `--store`, no data dir is used (the SQLite store is its only occupant, with the dev
//!   credentials and its lock): `--store` with `--memory` or a `--data-dir` (or
//!   `HERALD_DATA_DIR`) names two stores, and is refused rather than one being ignored.
//!   `--store-connections` without `--store` is refused too: it would bound nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_core::{Bus, ClusterName, Hub, LocalBus, NodeId, Retention, Store, StoreError};
use herald_server::DATABASE_FILE;
use herald_store::{MemoryStore, PostgresOptions, PostgresStore, SqliteStore};

use crate::serve::{ServeArgs, ServeError};

/// The data dir when neither `--data-dir` nor `HERALD_DATA_DIR` gives one.
pub const DEFAULT_DATA_DIR: &str = "./herald-data";

/// Most connections `--store-connections` may give one node. A bound on a typo more than a
/// limit: PostgreSQL's own `max_connections` (100 by default) is shared by every node, and the
/// store needs few (appends share one connection per batch).
pub const STORE_CONNECTIONS_MAX: usize = 1_000;

/// The store a node runs on.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// `herald.db` in this data dir (the default).
    Sqlite { data_dir: PathBuf },
    /// `--memory`: nothing kept.
    Memory,
    /// `--store postgres://…`: the log shared by a cluster's nodes.
    Postgres(PostgresOptions),
}

impl StoreChoice {
    /// The data dir, if this store uses one.
    pub fn data_dir(&self) -> Option<&Path> {
        match self {
            StoreChoice::Sqlite { data_dir } => Some(data_dir),
            StoreChoice::Memory | StoreChoice::Postgres(_) => None,
        }
    }

    /// Where notifications are kept, for the banner (no password).
    pub fn describe(&self) -> String {
        match self {
            StoreChoice::Sqlite { data_dir } => data_dir.join(DATABASE_FILE).display().to_string(),
            StoreChoice::Memory => "memory (nothing kept on disk)".to_owned(),
            StoreChoice::Postgres(options) => options.place(),
        }
    }
}

/// The brokers `--bus` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Nats,
    Redis,
}

impl BrokerKind {
    /// As `/healthz` and the messages name it.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Nats => "nats",
            BrokerKind::Redis => "redis",
        }
    }
}

/// The bus a node runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusChoice {
    /// One node: straight into its own hub.
    Local,
    /// `--bus`: a cluster's bus over this broker.
    Broker { kind: BrokerKind, url: String },
}

/// What the options choose. Made by [`Plan::from_args`] before anything is opened or bound.
#[derive(Debug, Clone)]
pub struct Plan {
    pub store: StoreChoice,
    pub bus: BusChoice,
    /// `--node-id`; `None`: `<hostname>:<port>`, known once the port is bound ([`Plan::node_id`]).
    pub node_id: Option<NodeId>,
    pub cluster: ClusterName,
}

impl Plan {
    /// Checks every store and cluster option and their combination (see the module docs).
    pub fn from_args(args: &ServeArgs) -> Result<Self, ServeError> {
        let refuse = |message: String| Err(ServeError::Options(message));
        let node_id = match &args.node_id {
            Some(id) => Some(NodeId::new(id).map_err(|e| ServeError::Options(format!("--node-id: {e}")))?),
            None => None,
        };
        let cluster =
            ClusterName::new(&args.cluster).map_err(|e| ServeError::Options(format!("--cluster: {e}")))?;
        let bus = match &args.bus {
            Some(url) => parse_bus_url(url)?,
            None => BusChoice::Local,
        };
        let store = match &args.store {
            Some(url) => {
                if args.memory {
                    return refuse(
                        "--store and --memory both choose the store: give one (--memory keeps nothing)"
                            .into(),
                    );
                }
                if let Some(dir) = &args.data_dir {
                    return refuse(format!(
                        "--store and --data-dir {} both choose the store: give one (the data dir only holds \
                         the SQLite store; check HERALD_DATA_DIR)",
                        dir.display()
                    ));
                }
                let mut options = parse_store_url(url)?;
                if let Some(connections) = args.store_connections {
                    if !(1..=STORE_CONNECTIONS_MAX).contains(&connections) {
                        return refuse(format!(
                            "--store-connections {connections}: give 1 to {STORE_CONNECTIONS_MAX}"
                        ));
                    }
                    options.connections_max = connections;
                }
                StoreChoice::Postgres(options)
            }
            None => {
                if args.store_connections.is_some() {
                    return refuse("--store-connections is for --store postgres://…: leave it out".into());
                }
                if args.memory {
                    StoreChoice::Memory
                } else {
                    let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
                    StoreChoice::Sqlite { data_dir }
                }
            }
        };
        if let BusChoice::Broker { .. } = bus {
            let local = match store {
                StoreChoice::Sqlite { .. } => Some("the SQLite store of the data dir"),
                StoreChoice::Memory => Some("--memory"),
                StoreChoice::Postgres(_) => None,
            };
            if let Some(local) = local {
                return refuse(format!(
                    "--bus: a cluster needs a shared log: use --store postgres://… (with {local}, every node \
                     would give out the same seqs)"
                ));
            }
            if args.secret.is_none() || args.api_key.is_none() {
                return refuse(
                    "--bus: a cluster needs HERALD_SECRET and HERALD_API_KEY, the same on every node (dev \
                     mode, with generated credentials, is single-node only)"
                        .into(),
                );
            }
        }
        Ok(Self { store, bus, node_id, cluster })
    }

    /// The node id: `--node-id`, or `<hostname>:<port>` with the port bound.
    pub fn node_id(&self, port: u16) -> Result<NodeId, ServeError> {
        if let Some(id) = &self.node_id {
            return Ok(id.clone());
        }
        let Some(host) = herald_server::host_name() else {
            return Err(ServeError::Options(
                "cannot read this host's name for the default node id: set --node-id".into(),
            ));
        };
        NodeId::new(format!("{host}:{port}")).map_err(|e| {
            ServeError::Options(format!("the default node id (host name and port): {e}: set --node-id"))
        })
    }
}

/// `--store`'s URL: PostgreSQL only (see [`PostgresOptions::from_url`]). Errors name the URL
/// without its password.
fn parse_store_url(url: &str) -> Result<PostgresOptions, ServeError> {
    let refuse = |reason: &str| ServeError::Options(format!("--store {}: {reason}", redact(url)));
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(refuse(
            "give a PostgreSQL URL, postgres://user@host:port/database (without --store: SQLite in --data-dir)",
        ));
    }
    PostgresOptions::from_url(url).map_err(|error| match error {
        StoreError::Unavailable(reason) => refuse(&reason),
        other => refuse(&other.to_string()),
    })
}

/// `--bus`'s URL: `nats://host[:port]` or `redis://host[:port]` (user info and a path are the
/// broker's business). Errors name the URL without its password.
fn parse_bus_url(url: &str) -> Result<BusChoice, ServeError> {
    let refuse = |reason: &str| ServeError::Options(format!("--bus {}: {reason}", redact(url)));
    let usage = "use nats://host:port or redis://host:port";
    let (kind, rest) = match url.split_once("://") {
        Some(("nats", rest)) => (BrokerKind::Nats, rest),
        Some(("redis", rest)) => (BrokerKind::Redis, rest),
        _ => return Err(refuse(usage)),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port);
    let (host, port) = match host_port.strip_prefix('[') {
        // An IPv6 address: `[::1]:4222`.
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, rest)) => (host, rest.strip_prefix(':')),
            None => return Err(refuse(usage)),
        },
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(refuse(&format!("no host: {usage}")));
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|port| port > 0)
    {
        return Err(refuse(&format!("{port:?} is not a port: {usage}")));
    }
    Ok(BusChoice::Broker { kind, url: url.to_owned() })
}

/// `url` with the password of its user info (`user:password@`) replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Opens the store `choice` names. PostgreSQL: connects, creates the schema if named and
/// missing, and migrates (the store bounds each step: an unreachable database fails within
/// 5 s).
pub async fn open_store(choice: &StoreChoice, retention: Retention) -> Result<Arc<dyn Store>, ServeError> {
    Ok(match choice {
        StoreChoice::Sqlite { data_dir } => {
            Arc::new(SqliteStore::open(&data_dir.join(DATABASE_FILE), retention)?)
        }
        StoreChoice::Memory => Arc::new(MemoryStore::new(retention)),
        StoreChoice::Postgres(options) => Arc::new(PostgresStore::open(options.clone(), retention).await?),
    })
}

/// What [`connect_bus`] needs: the bus chosen, and who this node is in its cluster.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub bus: BusChoice,
    pub node_id: NodeId,
    pub cluster: ClusterName,
}

/// Makes this node's bus over its `hub`: the single node's [`LocalBus`], or with `--bus` the
/// cluster's bus over NATS or Redis (herald-cluster's `ClusterBus`), which needs the hub (to
/// follow its users) and the store (to repair what the broker loses). The one place a bus is
/// made; `/healthz` reports its kind and health through the [`Bus`] trait.
pub async fn connect_bus(
    config: &BusConfig,
    hub: Hub,
    store: Arc<dyn Store>,
) -> Result<Arc<dyn Bus>, ServeError> {
    match &config.bus {
        BusChoice::Local => Ok(Arc::new(LocalBus::new(hub))),
        BusChoice::Broker { kind, url } => {
            let options = herald_cluster::ClusterOptions {
                cluster: config.cluster.as_str().to_owned(),
                node: config.node_id.as_str().to_owned(),
            };
            let bus = herald_cluster::ClusterBus::connect(url, options, hub, store)
                .await
                .map_err(|error| ServeError::Bus(error.to_string()))?;
            tracing::info!(
                node = %config.node_id,
                cluster = %config.cluster,
                bus = %redact(url),
                kind = kind.as_str(),
                "joined the cluster"
            );
            Ok(Arc::new(bus))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_urls_are_nats_or_redis_with_a_host() {
        for (good, kind) in [
            ("nats://127.0.0.1:4222", BrokerKind::Nats),
            ("nats://broker", BrokerKind::Nats),
            ("redis://user:pw@cache.internal:6379/0", BrokerKind::Redis),
            ("redis://[::1]:6379", BrokerKind::Redis),
        ] {
            assert_eq!(parse_bus_url(good).unwrap(), BusChoice::Broker { kind, url: good.to_owned() });
        }
        for bad in ["amqp://x:1", "nats:/x", "nats://", "nats://:4222", "redis://h:0", "redis://h:port", "x"]
        {
            assert!(parse_bus_url(bad).is_err(), "{bad}");
        }
        let message = parse_bus_url("kafka://u:secret@h:1").unwrap_err().to_string();
        assert_eq!(message, "--bus kafka://u:***@h:1: use nats://host:port or redis://host:port");
    }

    #[test]
    fn store_urls_are_postgres_and_say_so_without_the_password() {
        assert!(
            matches!(parse_store_url("postgresql://u@h/db?schema=s"), Ok(o) if o.schema.as_deref() == Some("s"))
        );
        for bad in
            ["mysql://u:secret@h/db", "postgres://u:secret@h:x/db", "postgres://u:secret@h/db?schema=a-b"]
        {
            let message = parse_store_url(bad).unwrap_err().to_string();
            assert!(message.starts_with("--store ") && message.contains(":***@"), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("postgres://u:p@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact("postgres://u:p@h/d?a=b@c"), "postgres://u:***@h/d?a=b@c");
    }
}
