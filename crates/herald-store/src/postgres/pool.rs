//! Connecting: the connection settings (every timeout named here), the bounded pool of
//! connections, and [`Pool::run`], the one way an operation uses the database: a connection from
//! the pool, a bounded time for the whole operation, and another try after a deadlock. Nothing
//! here knows the tables.
//!
//! **When PostgreSQL is down or unreachable**, no operation hangs: a connection is made within
//! [`CONNECT_TIMEOUT`], a statement runs at most [`STATEMENT_TIMEOUT`] (the server cancels it),
//! a connection whose peer stopped acknowledging is closed by the kernel after
//! [`TCP_USER_TIMEOUT`], and whatever else may stall, the whole operation is given up after
//! [`OPERATION_TIMEOUT`] with [`StoreError::Unavailable`]. The pool needs no restart: a broken
//! connection is dropped when it is next taken (`is_closed`), and the next one is made afresh,
//! so the store works again as soon as the database answers.
//!
//! **Health.** [`Pool::run_raw`] notes whether each operation reached the database: one that
//! could not (refused, timed out, connection lost) makes the store degraded, with that error as
//! the reason, and the next one that reaches it makes it healthy again. `PostgresStore::probe`
//! (a `SELECT 1`, which the server runs every few seconds) is one such operation, so the state
//! follows the database even without traffic.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, RecyclingMethod, Runtime, Timeouts,
};
use herald_core::{Health, StoreError};
use parking_lot::Mutex;
use percent_encoding::percent_decode_str;
use tokio_postgres::config::SslMode;

use super::schema::read_epoch;
use super::sql::Error;
use super::tls::{RootCerts, TlsMode, TlsSettings};

/// Connections a store keeps open at most (the writer's and the readers'). At the bound, an
/// operation waits for one for at most [`POOL_WAIT_TIMEOUT`], then fails `Unavailable`. Why
/// 16: appends share one connection per batch (group commit), so the rest are for reads and
/// inbox changes, which take a few ms each; 16 per node keeps 6 nodes within PostgreSQL's
/// default `max_connections` (100) with room for the operator's tools. Behind PgBouncer in
/// transaction mode, see `docs/dev/postgres-store-status.md` (not tested yet).
pub const POOL_CONNECTIONS_MAX: usize = 16;

/// Longest wait for a pooled connection when all [`POOL_CONNECTIONS_MAX`] are busy.
pub const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for a new connection (TCP, startup, authentication): a database that is down
/// refuses at once; one that is unreachable (no answer at all) fails after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `statement_timeout` of every connection: the server cancels a statement that runs longer (a
/// row lock held by a stalled transaction, an overloaded server).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// `idle_in_transaction_session_timeout` of every connection: a node that stalls (or is paused)
/// inside a transaction has it rolled back after this, so the row locks it holds (a user's
/// `herald_users` row) stop blocking the other nodes' writes to that user.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// `TCP_USER_TIMEOUT` of every connection: when data sent to the server is not acknowledged for
/// this long (the server's host is gone, a network partition), the kernel closes the connection
/// and the pool drops it, rather than the connection waiting for TCP's retransmissions (15 min).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest an operation of the store takes, whatever happens (the waits above add up to more
/// at worst): then it fails with [`StoreError::Unavailable`]. A write that timed out may still
/// commit (the commit may be on its way): a publisher that retries with its idempotency key
/// stores it once.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Times an operation runs again after PostgreSQL rolled it back for a deadlock or a
/// serialization failure (the store takes its locks in one order, so these are rare: see
/// `writes`). Then the error is the caller's.
pub const RETRIES_MAX: u32 = 3;

/// Where the store's tables are: a PostgreSQL URL, and optionally a schema.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user[:password]@host[:port]/database[?…]` (libpq's URL or key=value form).
    pub url: String,
    /// The schema of Herald's tables (created if missing); `None`: the connection's
    /// `search_path` (usually `public`). Letters, digits and `_` only.
    pub schema: Option<String>,
    /// Connections kept open at most; [`POOL_CONNECTIONS_MAX`] by default.
    pub connections_max: usize,
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), schema: None, connections_max: POOL_CONNECTIONS_MAX }
    }

    /// The options of a store URL as `herald serve --store` takes it:
    /// `postgres://user[:password]@host[:port]/database` (or `postgresql://`) with libpq's query
    /// parameters, plus Herald's own `schema=NAME`, the schema of Herald's tables (created if
    /// missing; letters, digits and `_`), which is taken out of the URL before the driver sees
    /// it. Checked here, without connecting: a URL the driver would refuse fails now, with a
    /// message that does not repeat the URL (it may hold a password).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::Unavailable(format!("invalid PostgreSQL URL: {reason}"));
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid("it must start with postgres:// or postgresql://".into()));
        }
        let mut schema = None;
        let url = without_params(url, |key, value| {
            if key != "schema" {
                return Ok(false);
            }
            if schema.replace(value.to_owned()).is_some() {
                return Err(invalid("`schema` is given twice".into()));
            }
            Ok(true)
        })?;
        let options = Self { url, schema, connections_max: POOL_CONNECTIONS_MAX };
        options.config()?.1.connector()?;
        Ok(options)
    }

    /// The database (and schema) as errors and logs name it: no password.
    pub fn place(&self) -> String {
        let config = self.driver_url().ok().and_then(|(url, _)| tokio_postgres::Config::from_str(&url).ok());
        let database = config.as_ref().and_then(|c| c.get_dbname()).unwrap_or("?").to_owned();
        let host = config
            .as_ref()
            .and_then(|c| c.get_hosts().first())
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(host) => host.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_default();
        match &self.schema {
            Some(schema) => format!("PostgreSQL database {database} on {host}, schema {schema}"),
            None => format!("PostgreSQL database {database} on {host}"),
        }
    }

    /// The URL without the TLS settings the driver does not know (`sslmode`, `sslrootcert`,
    /// taken out of a `postgres://` URL's query), and those settings.
    fn driver_url(&self) -> Result<(String, TlsSettings), StoreError> {
        let invalid = |reason: String| StoreError::Unavailable(format!("invalid PostgreSQL URL: {reason}"));
        let mut tls = TlsSettings::default();
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Ok((self.url.clone(), tls));
        }
        let url = without_params(&self.url, |key, value| {
            let decoded = || {
                percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| invalid(format!("{key} is not UTF-8 once decoded")))
            };
            match key {
                "sslmode" => tls.mode = TlsMode::parse(&decoded()?).map_err(invalid)?,
                "sslrootcert" => {
                    let value = decoded()?;
                    tls.roots = if value == "system" {
                        RootCerts::System
                    } else {
                        RootCerts::File(PathBuf::from(value.as_ref()))
                    };
                }
                "sslcert" | "sslkey" | "sslpassword" => {
                    return Err(invalid(format!(
                        "{key}: client certificates are not supported (yet); authenticate with a password"
                    )));
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok((url, tls))
    }

    /// The driver's settings: the URL's, plus every timeout of this module (a URL that sets
    /// `connect_timeout` keeps its own); and the URL's TLS settings (`sslmode`, `sslrootcert`:
    /// see `tls`), which are taken out of a `postgres://` URL's query first, since the driver
    /// knows neither `verify-*` nor `sslrootcert`.
    fn config(&self) -> Result<(tokio_postgres::Config, TlsSettings), StoreError> {
        let invalid = |reason: String| StoreError::Unavailable(format!("invalid PostgreSQL URL: {reason}"));
        let (url, mut tls) = self.driver_url()?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| invalid(e.to_string()))?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            // libpq's key=value form: the driver read `sslmode` (`disable`, `prefer`, `require`
            // only); its `prefer` is also what it assumes when none is given, which is not TLS
            // here.
            tls.mode = match config.get_ssl_mode() {
                SslMode::Require => TlsMode::Require,
                SslMode::Prefer if url.contains("sslmode") => TlsMode::Prefer,
                _ => TlsMode::Disable,
            };
        }
        config.ssl_mode(tls.mode.ssl_mode());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        config.keepalives(true).keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("herald");
        }
        let mut options = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
        options.push_str(&format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            STATEMENT_TIMEOUT.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        ));
        if let Some(schema) = &self.schema {
            if schema.is_empty() || !schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(StoreError::Unavailable(format!(
                    "invalid PostgreSQL schema name {schema:?}: letters, digits and _ only"
                )));
            }
            options.push_str(&format!(" -c search_path={schema}"));
        }
        config.options(&options);
        Ok((config, tls))
    }
}

/// `url` without the query parameters `take` takes (it returns `true` for them, given each
/// parameter's name and its value as written): the parameters Herald reads itself, which the
/// driver does not know.
fn without_params(
    url: &str,
    mut take: impl FnMut(&str, &str) -> Result<bool, StoreError>,
) -> Result<String, StoreError> {
    let Some((base, query)) = url.split_once('?') else { return Ok(url.to_owned()) };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !take(key, value)? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) })
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PostgresOptions")
            .field("place", &self.place())
            .field("connections_max", &self.connections_max)
            .finish()
    }
}

/// The store's connections, and the epoch as of the newest one.
pub(super) struct Pool {
    inner: deadpool_postgres::Pool,
    /// Read by every new connection (the pool's `post_create` hook): a failover makes every
    /// connection new, and the epoch of the promoted replica is seen at once.
    epoch: Arc<Mutex<Arc<str>>>,
    /// Whether the last operation reached the database (see the module docs, "Health").
    reachability: Reachability,
}

/// Whether the database answered the store's last operation, and if not, why.
#[derive(Default)]
struct Reachability {
    /// Read by every operation; `reason` is locked only when the state changes.
    down: AtomicBool,
    /// Why the last operation could not reach the database (while `down`).
    reason: Mutex<String>,
}

impl Reachability {
    /// Notes the outcome of an operation: reached the database, or not (`Some(error)`).
    fn note(&self, unreachable: Option<&Error>) {
        match unreachable {
            // A load first: while healthy (nearly always), no write to the shared line.
            None if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) => {
                tracing::info!("PostgreSQL answers the store again");
            }
            None => {}
            Some(error) => {
                // The cause alone: whoever reports it says it is the store's.
                let reason = match error.to_store() {
                    StoreError::Unavailable(cause) => cause,
                    other => other.to_string(),
                };
                // One line, for `/healthz` and the logs (some driver errors end in a newline).
                let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
                let mut known = self.reason.lock();
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%reason, "the store cannot reach PostgreSQL");
                }
                *known = reason;
            }
        }
    }

    fn health(&self) -> Health {
        if self.down.load(Ordering::Relaxed) {
            Health::Degraded { reason: self.reason.lock().clone() }
        } else {
            Health::Ok
        }
    }
}

impl Pool {
    /// The pool of `options` (no connection is made yet), and a connection outside it for
    /// opening the store (creating the schema, migrating): the pool's hook reads the epoch,
    /// which exists only once migrated.
    pub(super) async fn connect(
        options: &PostgresOptions,
    ) -> Result<(Self, tokio_postgres::Client), StoreError> {
        let (config, tls) = options.config()?;
        let tls = tls.connector()?;
        let (client, connection) = tokio::time::timeout(OPERATION_TIMEOUT, config.connect(tls.clone()))
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "{}: no connection within {OPERATION_TIMEOUT:?}",
                    options.place()
                ))
            })?
            .map_err(|e| {
                // The cause alone: the message is already a `StoreError::Unavailable`'s.
                let cause = match Error::from(e).into_store() {
                    StoreError::Unavailable(cause) => cause,
                    other => other.to_string(),
                };
                StoreError::Unavailable(format!("{}: {cause}", options.place()))
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a PostgreSQL connection closed");
            }
        });
        let epoch: Arc<Mutex<Arc<str>>> = Arc::new(Mutex::new(Arc::from("")));
        let hook_epoch = Arc::clone(&epoch);
        let manager =
            Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let inner = deadpool_postgres::Pool::builder(manager)
            .max_size(options.connections_max.max(1))
            .timeouts(Timeouts {
                wait: Some(POOL_WAIT_TIMEOUT),
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(CONNECT_TIMEOUT),
            })
            .runtime(Runtime::Tokio1)
            .post_create(Hook::async_fn(move |client, _| {
                let epoch = Arc::clone(&hook_epoch);
                Box::pin(async move {
                    let now = read_epoch(client).await.map_err(|e| match e {
                        Error::Db(e) => HookError::Backend(e),
                        other => HookError::message(other.into_store().to_string()),
                    })?;
                    let mut known = epoch.lock();
                    if !known.is_empty() && **known != *now {
                        tracing::warn!(
                            was = %known,
                            now = %now,
                            "the store's epoch changed (a failover, a restore, or a new schema): seqs may restart"
                        );
                    }
                    *known = Arc::from(now);
                    Ok(())
                })
            }))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot build the PostgreSQL pool: {e}")))?;
        Ok((Self { inner, epoch, reachability: Reachability::default() }, client))
    }

    pub(super) fn set_epoch(&self, epoch: String) {
        *self.epoch.lock() = Arc::from(epoch);
    }

    pub(super) fn epoch(&self) -> Arc<str> {
        Arc::clone(&self.epoch.lock())
    }

    /// Whether the last operation reached the database.
    pub(super) fn health(&self) -> Health {
        self.reachability.health()
    }

    /// A connection from the pool (waiting at most [`POOL_WAIT_TIMEOUT`], connecting within
    /// [`CONNECT_TIMEOUT`]).
    pub(super) async fn client(&self) -> Result<Object, Error> {
        Ok(self.inner.get().await?)
    }

    /// Runs `operation` (which takes its own connection with [`Pool::client`]), again after a
    /// deadlock or serialization failure (at most [`RETRIES_MAX`] times), all within
    /// [`OPERATION_TIMEOUT`].
    pub(super) async fn run<T, F, Fut>(&self, operation: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.run_raw(operation).await.map_err(Error::into_store)
    }

    /// [`Pool::run`], keeping the error's SQLSTATE (see [`Error::is_connection`]).
    pub(super) async fn run_raw<T, F, Fut>(&self, operation: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let attempts = async {
            let mut retries = 0;
            loop {
                match operation().await {
                    Err(e) if e.is_retryable() && retries < RETRIES_MAX => {
                        retries += 1;
                        tracing::debug!(error = ?e, retries, "a store transaction was rolled back; again");
                    }
                    done => return done,
                }
            }
        };
        let done = match tokio::time::timeout(OPERATION_TIMEOUT, attempts).await {
            Ok(done) => done,
            Err(_) => Err(Error::Store(timed_out())),
        };
        // An error on a working connection (a statement refused) still reached the database.
        self.reachability.note(done.as_ref().err().filter(|e| e.is_connection()));
        done
    }
}

/// The error of an operation given up after [`OPERATION_TIMEOUT`].
pub(super) fn timed_out() -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL did not answer within {OPERATION_TIMEOUT:?}"))
}
