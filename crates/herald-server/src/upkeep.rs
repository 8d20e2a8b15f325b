//! The upkeep: what keeps a running Herald true to its protocol when no request comes. The
//! hub's clock (token expiry and keep-alives for every connection, so that no connection needs
//! a timer of its own), retention, the sweep of clients gone for longer than their linger time
//! (idle pollers) and of idle per-address and per-user limiter entries, and the store's probe
//! (so that `/healthz` follows a networked store without traffic).
//!
//! Three loops in one task, each waiting only for its own work: the clock never waits for the
//! store, so a retention pass or a probe against a database that stalls (each bounded by the
//! store, 5 s for PostgreSQL) delays no keep-alive and no token expiry.
//!
//! It runs from the moment a [`crate::Herald`] is built until it is dropped: the routes rely on
//! it, so there is no way to get them without it.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{CloseReason, PruneReport};
use tokio::task::JoinHandle;

use crate::app::App;

/// How often retention runs (removes notifications past `max_age`, old idempotency keys, and
/// tells the users' clients their new inbox counts).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Longest period of the hub's clock ([`herald_core::Hub::tick`]): a token is closed at most this
/// late after it expires.
const HUB_TICK_PERIOD_MAX: Duration = Duration::from_secs(1);
/// Fewest ticks of the hub's clock per keep-alive interval (see [`run`]).
const KEEPALIVE_TICKS_MIN: u32 = 4;
/// How often the hub forgets clients gone for longer than their linger time.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often the store is probed ([`herald_core::Store::probe`]: for PostgreSQL a `SELECT 1`,
/// for the others nothing). Without traffic, `/healthz` turns `degraded` at most this long
/// (plus the probe's own bound) after the database becomes unreachable, and `ok` again this
/// long after it is back; a publish or a read sees either at once. One round trip per node
/// every 2 s costs the database nothing worth counting.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The running upkeep of one app; dropping it stops it.
#[derive(Debug)]
pub(crate) struct Upkeep {
    /// `None` once stopped.
    task: Option<JoinHandle<()>>,
}

impl Upkeep {
    /// Starts the upkeep of `app` on the current Tokio runtime.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub(crate) fn start(app: Arc<App>) -> Self {
        Self { task: Some(tokio::spawn(run(app))) }
    }

    /// Stops the upkeep and waits until its task is gone, with its reference to the app: a store
    /// the app holds is closed once the rest of the app is dropped (a SQLite store keeps its
    /// file locked until then).
    pub(crate) async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        // Cancelled at an await: a retention pass it cuts short is the store's request, committed
        // or not; the next pass (at the next start) does what is left. The task is dropped by
        // the runtime soon after, not here: `stop` waits for that.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Runs the hub's clock and the sweeps, retention, and the store's probe, forever.
async fn run(app: Arc<App>) {
    tokio::join!(clock(&app), retention(&app), probe(&app), jobs(&app), crate::push::sender::run(&app));
}

/// How often unfinished fan-out jobs are looked for (the first time at once): those a crash of
/// this process or of another node left, and those whose runner gave up after failing chunks.
/// A job already running here is not started twice.
pub const JOBS_RESUME_INTERVAL: Duration = Duration::from_secs(60);

/// Resumes unfinished fan-out jobs, at start and every [`JOBS_RESUME_INTERVAL`].
async fn jobs(app: &App) {
    let mut interval = tokio::time::interval(JOBS_RESUME_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = app.notifier.resume_jobs().await {
            tracing::warn!(%error, "cannot look for unfinished fan-out jobs");
        }
    }
}

/// The hub's clock and the sweeps.
async fn clock(app: &App) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    // The hub's clock ticks at least every second (token expiry is checked that often) and at
    // least four times per keep-alive interval, so a keep-alive goes out after between 3/4 of
    // the interval and the whole interval of silence, never later.
    let keepalive = app.settings.keepalive_interval.max(Duration::from_millis(40));
    let tick_period = (keepalive / KEEPALIVE_TICKS_MIN).min(HUB_TICK_PERIOD_MAX);
    let keepalive_ticks = keepalive.as_millis().div_ceil(tick_period.as_millis()).max(1) as u32;
    let mut tick = tokio::time::interval(tick_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now_secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                app.hub.tick(now_secs, keepalive_ticks);
            }
            _ = sweep.tick() => {
                app.hub.sweep();
                app.limiter.sweep();
            }
        }
    }
}

/// Retention, every [`PRUNE_INTERVAL`] (the first pass at once).
async fn retention(app: &App) {
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        prune.tick().await;
        match app.notifier.inbox().prune(herald_core::notification::now_ms()).await {
            Ok(report) if report != PruneReport::default() => {
                tracing::info!(
                    notifications = report.notifications,
                    idempotency_keys = report.idempotency_keys,
                    revocations = report.revocations,
                    users = report.inboxes.len(),
                    "retention removed old records"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "retention failed; will retry"),
        }
    }
}

/// The store's probe, every [`STORE_PROBE_INTERVAL`]. Its outcome is the store's health, which
/// the store keeps and logs when it changes: nothing to do with it here.
///
/// Then the store's epoch: when it changed (a PostgreSQL failover to a replica, seen by the
/// connections made since), the seqs of the open streams belong to a history the log may have
/// lost, and live notifications carry no epoch: every stream is ended with `closed: error`, and
/// each client's resume, with its old epoch, gets a `reset`. Seen within a probe interval of the
/// store's own noticing.
async fn probe(app: &App) {
    let mut probe = tokio::time::interval(STORE_PROBE_INTERVAL);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut epoch = app.store.epoch();
    loop {
        probe.tick().await;
        let _ = app.store.probe().await;
        let now = app.store.epoch();
        if now != epoch {
            let closed = app.hub.close_all(CloseReason::Error);
            tracing::warn!(
                old = %epoch,
                new = %now,
                closed,
                "the store's epoch changed: every stream ends, and resumes with a reset"
            );
            epoch = now;
        }
    }
}
