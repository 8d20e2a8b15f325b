//! `herald serve`: [`ServeArgs`] (the options, each also an environment variable) and
//! [`serve`], which checks the options ([`crate::cluster::Plan`]), binds the port, locks the data
//! dir, opens the store, connects the bus, builds a [`herald_server::Herald`] and serves it until
//! SIGINT or SIGTERM, with the banners on stderr and the TLS certificate reloaded on SIGHUP.
//! Everything it serves is `herald-server`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{Limits, Retention};
use herald_server::auth::TokenRules;
use herald_server::caps::{self, Caps, IpNet};
use herald_server::config::{self, Credentials, CredentialsSource};
use herald_server::origin::{AllowedOrigins, InvalidOrigin, Origin};
use herald_server::webhook::WebhookConfig;
use herald_server::{DATA_DIR_LOCK_FILE, Herald, ServerSettings, tls};
use tokio::net::TcpListener;

use crate::cluster::{self, BusConfig, Plan};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Credentials(#[from] config::CredentialsError),
    /// The store's own message says what failed, and where.
    #[error(transparent)]
    Store(#[from] herald_core::StoreError),
    #[error("the data dir {} is in use by another herald ({})", path.display(), pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}")))]
    DataDirInUse { path: std::path::PathBuf, pid: Option<u32> },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen on {addr} for the admin port (--admin-listen; `off` to disable it): {source}")]
    AdminListen { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    ListenAddress(String),
    #[error("cannot use the data dir {}: {source}", path.display())]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// A store or cluster option, or a combination of them, that cannot work: one line that
    /// names the options (see [`crate::cluster`]).
    #[error("{0}")]
    Options(String),
    /// The broker could not be reached or refused the URL: its message, without a password.
    #[error("cannot join the cluster through the bus (--bus): {0}")]
    Bus(String),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    /// `--vapid-private-key` / `--vapid-subject` refused, or the dev key could not be kept.
    #[error("Web Push: {0}")]
    Push(String),
}

/// `herald serve`: opens the store, sets up credentials (dev mode if none), serves until
/// SIGINT or SIGTERM, then closes every client with reason `shutdown`.
///
/// The order matters. The store and cluster options are checked first, as a whole (a
/// contradiction is refused before anything is bound or opened). The port is bound (and the
/// TLS files read) next: a start that fails on a port in use (a second instance, a typo) or a
/// bad certificate exits before it touches anything. Then the data dir (SQLite only) is locked
/// ([`DATA_DIR_LOCK_FILE`], held until the server exits, released by the kernel on `kill -9`)
/// before its credentials or database are read: two servers on one data dir would hand out the
/// same seqs with different contents, and the second one's store would settle the first one's
/// staged appends behind its back. A second instance is refused with one line naming the
/// holder's pid. (The store locks its database file too, for any other program embedding it.)
/// A PostgreSQL store is opened (and migrated) before the bus is connected, which needs it.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let plan = Plan::from_args(&args)?;
    // Checked with the other options, before anything is bound or opened.
    let vapid_given = args.vapid_given()?;
    let webhook = args.webhook()?;
    // Before the connection cap is derived from it (when `--connections-max` is not given).
    let raised_open_files = caps::raise_open_files_limit();
    let data_dir = plan.store.data_dir();
    let listen_addrs = listen_addresses("--listen", &args.listen).await.map_err(ServeError::ListenAddress)?;
    // A name may resolve to several addresses (`localhost`: 127.0.0.1 and ::1): the first, in
    // the resolver's order of preference, is used, and the banner says which.
    let listen_addr = listen_addrs[0];
    let listener = TcpListener::bind(listen_addr)
        .await
        .map_err(|source| ServeError::Listen { addr: listen_addr, source })?;
    let node_id = plan.node_id(listener.local_addr()?.port())?;
    // The admin port next, for the same reason: a port in use fails the start before anything
    // is touched (tests and nodes sharing a host give each its own port, or `off`).
    let admin_listener = match admin_address(&args.admin_listen).await.map_err(ServeError::ListenAddress)? {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.map_err(|source| ServeError::AdminListen { addr, source })?)
        }
        None => None,
    };
    let tls = match args.tls_files() {
        Some(files) => Some(tls::CertificateReloader::load(files)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Held to the end of `serve`, after the store is closed (`server.shutdown` ends the app).
    let _data_dir_lock = data_dir.map(lock_data_dir).transpose()?;
    let (credentials, source) =
        Credentials::resolve(args.secret.as_deref(), args.api_key.as_deref(), data_dir)?;
    let store = cluster::open_store(&plan.store, args.retention()).await?;
    let bus = BusConfig { bus: plan.bus.clone(), node_id: node_id.clone(), cluster: plan.cluster.clone() };
    let settings = ServerSettings {
        node_id: node_id.clone(),
        keepalive_interval: Duration::from_secs(args.keepalive_secs.max(1)),
        dev_mode: source.is_dev(),
        // The demo mints tokens and publishes for anyone who can reach it: only on loopback.
        demo: source.is_dev() && listen_addr.ip().is_loopback(),
        allowed_origins: args.allowed_origins(),
        caps: args.caps(),
        token_rules: TokenRules {
            ttl_max: args.token_ttl_max,
            audience: args.token_audience.clone().filter(|a| !a.is_empty()),
        },
        access_log: args.access_log == Switch::On,
        push: args.push_settings(vapid_given, source.is_dev(), data_dir)?,
        ..ServerSettings::default()
    };
    let mut builder = Herald::builder(store, &credentials.secret, &credentials.api_key)
        .limits(args.limits())
        .settings(settings);
    if let Some(config) = webhook {
        // The host only: a URL may carry credentials (user:password@, a token in the query).
        let host = config.url.host_str().unwrap_or_default();
        tracing::info!(host, grace = ?config.offline_grace, "presence webhooks on");
        builder = builder.webhook(config);
    }
    let herald = builder.build_with_bus(|hub, store| cluster::connect_bus(&bus, hub, store)).await?;
    if let Some(reloader) = &tls {
        tokio::spawn(reload_on_sighup(reloader.clone()));
    }
    let admin = match admin_listener {
        Some(listener) => Some(herald_server::start_admin(herald.app().clone(), listener)?),
        None => None,
    };
    let server = herald_server::start_with_tls(herald, listener, tls)?;
    if source.is_dev() {
        let file = data_dir.map(|dir| dir.join(config::DEV_CREDENTIALS_FILE).display().to_string());
        let origin = match (source, file) {
            (CredentialsSource::DevLoaded, Some(file)) => format!("credentials loaded from {file}"),
            (_, Some(file)) => format!("credentials generated and kept in {file}"),
            (_, None) => {
                "credentials generated and kept nowhere, without a data dir (--memory, --store): new ones \
                 at every start"
                    .to_owned()
            }
        };
        tracing::warn!("DEV MODE: no HERALD_SECRET / HERALD_API_KEY given; {origin}");
        eprintln!("herald: dev mode ({origin}). Do not use in production.");
        eprintln!("  HERALD_SECRET={}", credentials.secret);
        eprintln!("  HERALD_API_KEY={}", credentials.api_key);
    }
    let storage = plan.store.describe();
    tracing::info!(addr = %server.addr, %storage, node = %node_id, "herald listening");
    if listen_addrs.len() > 1 || args.listen.parse::<SocketAddr>().is_err() {
        let all: Vec<String> = listen_addrs.iter().map(ToString::to_string).collect();
        eprintln!("herald: {} resolves to {}; listening on the first", args.listen, all.join(", "));
    }
    eprintln!("herald: listening on {scheme}://{} (store: {storage})", server.addr);
    match &admin {
        Some(admin) => {
            tracing::info!(addr = %admin.addr, "admin listening");
            eprintln!("herald: admin on http://{} (GET /metrics, the admin page /admin)", admin.addr);
        }
        None => eprintln!("herald: no admin port (--admin-listen off)"),
    }
    if let Some((before, after)) = raised_open_files {
        eprintln!("herald: raised the open-files limit from {before} to {after}");
    }
    match server.app.limiter.connections_max() {
        usize::MAX => eprintln!("herald: no connection cap (--connections-max 0)"),
        max => eprintln!("herald: at most {max} connections at once (--connections-max)"),
    }
    shutdown_signal().await;
    // The admin port last: its metrics stay readable while the clients are closed.
    let stopped = server.shutdown().await;
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    stopped?;
    Ok(())
}

/// Reloads the TLS certificate and key on every SIGHUP, for the connections that come next. A
/// reload that fails keeps the certificate in use.
async fn reload_on_sighup(reloader: Arc<tls::CertificateReloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate will not be reloaded");
            return;
        };
        while hangups.recv().await.is_some() {
            match reloader.reload() {
                Ok(()) => {
                    tracing::info!(cert = %reloader.files().cert.display(), "SIGHUP: reloaded the TLS certificate");
                    eprintln!(
                        "herald: reloaded the TLS certificate from {}",
                        reloader.files().cert.display()
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "SIGHUP: could not reload the TLS certificate; keeping the one in use");
                    eprintln!(
                        "herald: could not reload the TLS certificate ({error}); keeping the one in use"
                    );
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Creates `dir` if missing and takes its lock (see [`serve`]).
fn lock_data_dir(dir: &std::path::Path) -> Result<herald_store::LockFile, ServeError> {
    std::fs::create_dir_all(dir).map_err(|source| ServeError::DataDir { path: dir.to_owned(), source })?;
    herald_store::LockFile::acquire(&dir.join(DATA_DIR_LOCK_FILE)).map_err(|error| match error {
        herald_store::LockError::Held { pid, .. } => ServeError::DataDirInUse { path: dir.to_owned(), pid },
        herald_store::LockError::Io { source, .. } => ServeError::DataDir { path: dir.to_owned(), source },
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

impl ServeArgs {
    /// The VAPID key given with `--vapid-private-key` and `--vapid-subject`, checked; a key
    /// without a subject is refused.
    fn vapid_given(&self) -> Result<Option<herald_server::push::VapidKey>, ServeError> {
        match (&self.vapid_private_key, &self.vapid_subject) {
            (Some(key), Some(subject)) => herald_server::push::VapidKey::from_private_key(key, subject)
                .map(Some)
                .map_err(|e| ServeError::Push(e.to_string())),
            (Some(_), None) => Err(ServeError::Push(
                "--vapid-private-key needs --vapid-subject (HERALD_VAPID_SUBJECT): a mailto: address or https:// URL push services can reach you at".into(),
            )),
            (None, _) => Ok(None),
        }
    }

    /// Web Push: the VAPID key given, or in dev mode the data dir's (made if missing), or none
    /// (push off); the endpoint allow-list; loopback endpoints in dev mode or with
    /// `--push-allow-loopback`.
    fn push_settings(
        &self,
        given: Option<herald_server::push::VapidKey>,
        dev_mode: bool,
        data_dir: Option<&std::path::Path>,
    ) -> Result<herald_server::push::PushSettings, ServeError> {
        use herald_server::push::{EndpointRules, PushSettings, VAPID_SUBJECT_DEV, VapidKey};
        let vapid = match (given, &self.vapid_subject) {
            (Some(key), _) => Some(key),
            (None, subject) if dev_mode => Some(
                VapidKey::dev(data_dir, subject.as_deref().unwrap_or(VAPID_SUBJECT_DEV))
                    .map_err(|e| ServeError::Push(e.to_string()))?,
            ),
            (None, Some(_)) => {
                return Err(ServeError::Push("--vapid-subject without --vapid-private-key".into()));
            }
            (None, None) => None,
        };
        let mut endpoints = EndpointRules {
            allow_loopback: dev_mode || self.push_allow_loopback,
            ..EndpointRules::default()
        };
        if let Some(hosts) = &self.push_hosts {
            endpoints.hosts =
                hosts.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        }
        Ok(PushSettings { vapid: vapid.map(Arc::new), endpoints, ..PushSettings::default() })
    }
}

/// Options of `herald serve`. Every option is also an environment variable (`[env: …]` in
/// `--help`; a test checks that none lacks one) and a key of the `--config` file (its long
/// name: see [`crate::config_file`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// A TOML file of options, each key an option's long name (`listen = "0.0.0.0:7300"`,
    /// `retention-days = 7`, `memory = true`, `trusted-proxies = ["10.0.0.0/8"]`). Flags and
    /// environment variables win over it; an unknown key is refused.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, `host:port`: an IP (`127.0.0.1:7300`, `[::1]:7300`,
    /// `0.0.0.0:7300`) or a host name (`localhost:7300`), whose first address is used.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:7300")]
    pub listen: String,
    /// Address of the admin port, for operators only (`GET /metrics`, and the admin page
    /// `/admin`, signed in with the API key): `host:port` as --listen, or `off`. Keep it
    /// private: `/metrics` is not behind the API key.
    #[arg(long, env = "HERALD_ADMIN_LISTEN", value_name = "ADDR|off", default_value = "127.0.0.1:7301")]
    pub admin_listen: String,
    /// Directory of the embedded SQLite database (and of the dev credentials). Default:
    /// ./herald-data. Not with --store.
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep nothing on disk: notifications live in memory and are lost on restart.
    #[arg(long, env = "HERALD_MEMORY")]
    pub memory: bool,
    /// Keep notifications in PostgreSQL, the log every node of a cluster shares:
    /// `postgres://user[:password]@host[:port]/database` (or `postgresql://`), with libpq's
    /// parameters and `?schema=NAME` for Herald's tables (created if missing). Herald creates
    /// and upgrades its tables at start; an unreachable database fails the start within 5 s.
    /// Default: SQLite in --data-dir.
    #[arg(long, env = "HERALD_STORE", value_name = "URL", hide_env_values = true)]
    pub store: Option<String>,
    /// Connections to PostgreSQL this node keeps open at most (1 to 1000). At the bound an
    /// operation waits up to 2 s for one, then fails with 503 `store_unavailable`. Default: 16
    /// (appends share one per batch). All nodes together must stay under PostgreSQL's
    /// `max_connections`.
    #[arg(long, env = "HERALD_STORE_CONNECTIONS", value_name = "N")]
    pub store_connections: Option<usize>,
    /// The broker a cluster's nodes share: `nats://host:port` or `redis://host:port`. Needs
    /// --store postgres://… and HERALD_SECRET / HERALD_API_KEY (the same on every node).
    /// Default: none, a single node.
    #[arg(long, env = "HERALD_BUS", value_name = "URL", hide_env_values = true)]
    pub bus: Option<String>,
    /// This node's id, unique in its cluster: printable ASCII without spaces, at most 64
    /// bytes. Default: `<hostname>:<port>`.
    #[arg(long, env = "HERALD_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// The cluster's name, which starts every broker subject (letters, digits, - and _, at most
    /// 32 bytes): clusters sharing a broker need different names.
    #[arg(long, env = "HERALD_CLUSTER", value_name = "NAME", default_value = "herald")]
    pub cluster: String,
    /// HS256 key of subscriber tokens. Without it and the API key: dev mode.
    #[arg(long, env = "HERALD_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The publishers' API key. Without it and the secret: dev mode.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Days a notification is kept.
    #[arg(long, env = "HERALD_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u64,
    /// Notifications kept per user; the oldest go first.
    #[arg(long, env = "HERALD_RETENTION_MAX_PER_USER", default_value_t = 10_000)]
    pub retention_max_per_user: u64,
    /// Hours a durable topic event is kept in its topic's log.
    #[arg(long, env = "HERALD_TOPIC_RETENTION_HOURS", default_value_t = 24)]
    pub topic_retention_hours: u64,
    /// Durable events kept per topic; the oldest go first.
    #[arg(long, env = "HERALD_TOPIC_RETENTION_MAX_EVENTS", default_value_t = 1_000)]
    pub topic_retention_max_events: u64,
    /// Sessions per user; one more evicts the least recently active.
    #[arg(long, env = "HERALD_SESSIONS_PER_USER_MAX", default_value_t = 50)]
    pub sessions_per_user_max: usize,
    /// Clients per session; one more evicts the least recently active.
    #[arg(long, env = "HERALD_CLIENTS_PER_SESSION_MAX", default_value_t = 50)]
    pub clients_per_session_max: usize,
    /// Topics one tab listens to; a listen over it is refused (409 `too_many_topics`).
    #[arg(long, env = "HERALD_TOPICS_PER_CLIENT_MAX", default_value_t = 100)]
    pub topics_per_client_max: usize,
    /// Topics one session listens to (session scope, kept in the store); over it: 409.
    #[arg(long, env = "HERALD_TOPICS_PER_SESSION_MAX", default_value_t = 100)]
    pub topics_per_session_max: usize,
    /// Topics one user listens to (user scope, kept in the store); over it: 409.
    #[arg(long, env = "HERALD_TOPICS_PER_USER_MAX", default_value_t = 1_000)]
    pub topics_per_user_max: usize,
    /// Events queued per client; a client whose queue is full is closed with reason `lagging`.
    #[arg(long, env = "HERALD_CLIENT_QUEUE_LEN_MAX", default_value_t = 1_000)]
    pub client_queue_len_max: usize,
    /// Largest notification `data`, in bytes of JSON.
    #[arg(long, env = "HERALD_DATA_BYTES_MAX", default_value_t = 64 * 1024)]
    pub data_bytes_max: usize,
    /// Largest publish, in bytes: the size of `data` times the number of users it goes to.
    #[arg(long, env = "HERALD_PUBLISH_BYTES_MAX", default_value_t = 4 * 1024 * 1024)]
    pub publish_bytes_max: usize,
    /// Seconds between keep-alive comments on idle streams.
    #[arg(long, env = "HERALD_KEEPALIVE_SECS", default_value_t = 15)]
    pub keepalive_secs: u64,
    /// Serve HTTPS (and HTTP/2) with this PEM certificate chain; needs `--tls-key`. Reloaded
    /// with the key on SIGHUP.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Web Push's VAPID private key: a P-256 scalar, 32 bytes in URL-safe base64 (what
    /// `npx web-push generate-vapid-keys` prints as the private key). Needs --vapid-subject.
    /// Without it push is off, except in dev mode (a key generated and kept in the data dir).
    #[arg(long, env = "HERALD_VAPID_PRIVATE_KEY", hide_env_values = true, value_name = "KEY")]
    pub vapid_private_key: Option<String>,
    /// Who push services can contact about this server's pushes: `mailto:ops@example.com` or an
    /// `https://` URL.
    #[arg(long, env = "HERALD_VAPID_SUBJECT", value_name = "URI")]
    pub vapid_subject: Option<String>,
    /// Push-service hosts that subscriptions' endpoints may name (comma-separated; `*.` allows
    /// any subdomain). Default: FCM, Mozilla, Windows (WNS) and Apple's.
    #[arg(long, env = "HERALD_PUSH_HOSTS", value_name = "HOSTS")]
    pub push_hosts: Option<String>,
    /// Accept push endpoints on loopback addresses (also over http://): for a local push
    /// service in tests. Always on in dev mode.
    #[arg(long, env = "HERALD_PUSH_ALLOW_LOOPBACK")]
    pub push_allow_loopback: bool,
    /// Origins besides Herald's own (comma-separated, e.g. `https://app.example`) whose pages
    /// may use the `herald_token` cookie and read Herald's answers (CORS).
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub allowed_origins: Vec<Origin>,
    /// Connections open at once; one more is answered 503 `overloaded`. Default: the open-files
    /// limit (raised to its hard limit at start) minus 256. 0: no cap.
    #[arg(long, env = "HERALD_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Streams, WebSockets and polls open at once per client address; one more is answered 429
    /// `too_many_connections`. 0: no limit.
    #[arg(long, env = "HERALD_IP_CONNECTIONS_MAX", default_value_t = Caps::default().ip_connections_max)]
    pub ip_connections_max: u32,
    /// Subscriber requests (streams, polls, WebSockets, /v1/inbox…) per second per client
    /// address; over it, 429 `rate_limited`. 0: no limit.
    #[arg(long, env = "HERALD_IP_REQUESTS_PER_SEC", default_value_t = Caps::default().ip_requests_per_sec)]
    pub ip_requests_per_sec: u32,
    /// Subscriber requests per client address at once after a quiet period.
    #[arg(long, env = "HERALD_IP_REQUESTS_BURST", default_value_t = Caps::default().ip_requests_burst)]
    pub ip_requests_burst: u32,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose `X-Forwarded-For` names the
    /// client address. Without them the header is ignored.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// Inbox changes (marks, deletes) per second per user with a subscriber token; over it, 429
    /// `rate_limited`. The publisher API is not limited. 0: no limit.
    #[arg(long, env = "HERALD_INBOX_WRITES_PER_SEC", default_value_t = Caps::default().inbox_writes_per_sec)]
    pub inbox_writes_per_sec: u32,
    /// Inbox changes per user at once after a quiet period.
    #[arg(long, env = "HERALD_INBOX_WRITES_BURST", default_value_t = Caps::default().inbox_writes_burst)]
    pub inbox_writes_burst: u32,
    /// Longest subscriber-token lifetime accepted (`exp - iat`, and `exp - now`), such as `30d`,
    /// `12h` or seconds; also how long sign-outs are remembered.
    #[arg(long, env = "HERALD_TOKEN_TTL_MAX", default_value = "30d", value_parser = parse_duration)]
    pub token_ttl_max: Duration,
    /// The `aud` subscriber tokens must carry. Unset: tokens with an `aud` are refused.
    #[arg(long, env = "HERALD_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// Log lines on stderr: `text` for people, `json` (one object a line) for log collectors.
    /// `RUST_LOG` chooses what is logged (default `info`).
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The access log: a line per HTTP request (target `herald::access`) with a request id,
    /// echoed in `X-Request-Id`. `off`: no line, no id, no cost.
    #[arg(long, env = "HERALD_ACCESS_LOG", value_enum, default_value_t = Switch::On)]
    pub access_log: Switch,
    /// Send presence events (`user.online`, `user.offline`, `session.online`,
    /// `session.offline`) to this URL: POSTs of JSON batches signed with --webhook-secret.
    /// Default: none.
    #[arg(long, env = "HERALD_WEBHOOK_URL", value_name = "URL", hide_env_values = true)]
    pub webhook_url: Option<String>,
    /// The key that signs every webhook request (`Herald-Signature`); required with
    /// --webhook-url. Never logged.
    #[arg(long, env = "HERALD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// How long a tab that went still counts as online: a user (a session, a tab) is reported
    /// offline only after it, and a reload within it sends nothing. `10s`, `1500ms`, or seconds.
    #[arg(long, env = "HERALD_WEBHOOK_OFFLINE_GRACE", default_value = "10s", value_parser = parse_short_duration)]
    pub webhook_offline_grace: Duration,
    /// Also send `client.online` / `client.offline`, one per tab.
    #[arg(long, env = "HERALD_WEBHOOK_CLIENT_EVENTS")]
    pub webhook_client_events: bool,
    /// How long an undelivered webhook event is retried (with exponential back-off) before it
    /// is dropped and counted in a `dropped` event.
    #[arg(long, env = "HERALD_WEBHOOK_RETRY_FOR", default_value = "10m", value_parser = parse_duration)]
    pub webhook_retry_for: Duration,
}

/// A duration as `10s`, `1500ms` (humantime) or a plain number of seconds; 0 allowed.
pub fn parse_short_duration(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => {
            humantime::parse_duration(text.trim()).map_err(|e| format!("{e} (use e.g. 10, 10s, 1500ms)"))
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// An option that is `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// One member of `--allowed-origins`; blanks around it are ignored.
fn parse_origin(text: &str) -> Result<Origin, InvalidOrigin> {
    text.trim().parse()
}

/// A duration as `30d`, `12h`, `90s` (humantime), or a plain number of seconds; at least 1 s.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = match text.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text.trim())
            .map_err(|e| format!("{e} (use e.g. 3600, 90s, 12h, 30d)"))?,
    };
    if duration < Duration::from_secs(1) {
        return Err("must be at least 1 second".into());
    }
    Ok(duration)
}

impl ServeArgs {
    /// The hub and publish limits these options set.
    pub fn limits(&self) -> Limits {
        Limits {
            sessions_per_user_max: self.sessions_per_user_max.max(1),
            clients_per_session_max: self.clients_per_session_max.max(1),
            client_queue_len_max: self.client_queue_len_max.max(1),
            data_bytes_max: self.data_bytes_max,
            publish_bytes_max: self.publish_bytes_max,
            topics_per_client_max: self.topics_per_client_max.max(1),
            topics_per_session_max: self.topics_per_session_max.max(1),
            topics_per_user_max: self.topics_per_user_max.max(1),
            ..Limits::default()
        }
    }

    /// The certificate and key files, when TLS is on.
    pub fn tls_files(&self) -> Option<tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(tls::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        }
    }

    /// The origins `--allowed-origins` lists.
    pub fn allowed_origins(&self) -> AllowedOrigins {
        AllowedOrigins::new(self.allowed_origins.iter().cloned())
    }

    /// The presence webhooks these options set (`None`: no --webhook-url), or why they are
    /// refused: a URL that is not http(s), or no secret.
    pub fn webhook(&self) -> Result<Option<WebhookConfig>, ServeError> {
        let Some(url) = self.webhook_url.as_deref().filter(|u| !u.is_empty()) else {
            if self.webhook_secret.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(ServeError::Options("--webhook-secret needs --webhook-url".into()));
            }
            return Ok(None);
        };
        let mut config = WebhookConfig::new(url, self.webhook_secret.as_deref().unwrap_or(""))
            .map_err(|e| ServeError::Options(format!("--webhook-url: {e}")))?;
        config.offline_grace = self.webhook_offline_grace;
        config.client_events = self.webhook_client_events;
        config.retry_for = self.webhook_retry_for;
        Ok(Some(config))
    }

    /// The caps these options set.
    pub fn caps(&self) -> Caps {
        Caps {
            connections_max: self.connections_max,
            ip_connections_max: self.ip_connections_max,
            ip_requests_per_sec: self.ip_requests_per_sec,
            ip_requests_burst: self.ip_requests_burst,
            trusted_proxies: self.trusted_proxies.clone(),
            inbox_writes_per_sec: self.inbox_writes_per_sec,
            inbox_writes_burst: self.inbox_writes_burst,
        }
    }

    /// The retention these options set.
    pub fn retention(&self) -> Retention {
        Retention {
            max_age: Duration::from_secs(self.retention_days.saturating_mul(24 * 3600)),
            max_per_user: self.retention_max_per_user.max(1),
            // Past the longest token lifetime, every token a sign-out refuses has expired.
            revocation_window: self.token_ttl_max,
            topic_max_age: Duration::from_secs(self.topic_retention_hours.saturating_mul(3600)),
            topic_max_events: self.topic_retention_max_events.max(1),
            ..Retention::default()
        }
    }
}

/// The addresses the option `option` (`--listen`, `--admin-listen`) names: `value` is
/// `host:port`, the host an IP or a name to resolve. Errors are one sentence for the command
/// line.
pub async fn listen_addresses(option: &str, value: &str) -> Result<Vec<SocketAddr>, String> {
    let usage = "give host:port, e.g. 127.0.0.1:7300, [::1]:7300 or localhost:7300";
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("{option} {value:?} has no port: {usage}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{option} {value:?} is not host:port: {usage}"));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(value)
        .await
        .map_err(|e| format!("{option} {value:?}: cannot resolve {host:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{option} {value:?}: {host:?} resolves to no address"));
    }
    Ok(addrs)
}

/// The address `--admin-listen` names (its first, like `--listen`), or `None` for `off`.
pub async fn admin_address(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    Ok(Some(listen_addresses("--admin-listen", value).await?[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ttl_max_takes_humantime_or_seconds() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
