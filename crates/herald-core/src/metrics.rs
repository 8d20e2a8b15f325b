//! The node's counters, for `/metrics` (herald-server renders them; this crate knows no
//! exposition format): plain atomics that the hub, the notifier and the subscriptions bump, and
//! [`MetricsSnapshot`], what they hold at one moment.
//!
//! **Cost.** A delivery costs about 10 µs of CPU in all; what it adds here must stay far below
//! 2 % of that. So nothing here takes a lock or allocates. What moves once per delivery (the
//! deliveries by transport, the publish-to-write latency) lives in [`STRIPES`] cache-line-aligned
//! stripes, each thread bumping its own (a thread-local index), so that cores do not fight over
//! one cache line; a scrape sums the stripes. What moves once per publish, connection or close
//! is one relaxed atomic add. Gauges (users, sessions and tabs online) are not kept at all: a
//! scrape counts them in the hub ([`crate::Hub::census`]).
//!
//! **Histograms** have fixed buckets, [`DURATION_BUCKETS_SECONDS`], from 100 µs to 2.5 s; an
//! observation above the last one counts in `+Inf` only. Each keeps the count per bucket (not
//! cumulative: one add per observation) and the sum in nanoseconds.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::client::{CloseReason, Transport};

/// Upper bounds of the duration histograms' buckets, in seconds (Prometheus' `le`).
pub const DURATION_BUCKETS_SECONDS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// [`DURATION_BUCKETS_SECONDS`] in nanoseconds, what an observation is compared with.
const DURATION_BUCKETS_NANOS: [u64; 14] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Stripes of the per-delivery counters: at least as many as the threads that deliver at once
/// (the runtime's workers) keeps each thread on its own; more only costs memory (about 1 KiB a
/// stripe).
pub const STRIPES: usize = 16;

/// Every transport, in the order of the per-transport arrays.
pub const TRANSPORTS: [Transport; 3] = [Transport::Sse, Transport::Poll, Transport::Ws];

/// Every close reason, in the order of [`MetricsSnapshot::closes`].
pub const CLOSE_REASONS: [CloseReason; 7] = CloseReason::ALL;

/// What a publish did, in the order of [`MetricsSnapshot::publishes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Durable: appended to the users' logs (or a topic's log).
    Stored,
    /// Not durable: handed to the tabs, kept nowhere.
    Ephemeral,
    /// An idempotency key seen before: the first publish's receipt, nothing done again.
    Repeat,
    /// Into followers' inboxes as a background job.
    Job,
}

impl PublishOutcome {
    pub const ALL: [PublishOutcome; 4] =
        [PublishOutcome::Stored, PublishOutcome::Ephemeral, PublishOutcome::Repeat, PublishOutcome::Job];

    pub fn as_str(self) -> &'static str {
        match self {
            PublishOutcome::Stored => "stored",
            PublishOutcome::Ephemeral => "ephemeral",
            PublishOutcome::Repeat => "repeat",
            PublishOutcome::Job => "job",
        }
    }
}

/// Why a publish was refused, as `/metrics` labels it (the [`crate::NotifyError`] variants,
/// grouped), in the order of [`MetricsSnapshot::refusals`].
pub const REFUSAL_REASONS: [&str; 9] = [
    "invalid",           // data, type, idempotency key, target shape
    "too_large",         // data or the whole publish over its limit
    "too_many_users",    // users per publish
    "too_many_jobs",     // fan-out jobs running
    "listen",            // a listen refused by a tab's bounds
    "client_not_found",  // a client target not here
    "store_unavailable", // the store failed
    "bus_unavailable",   // the bus failed
    "other",             // any other
];

/// A duration histogram over [`DURATION_BUCKETS_SECONDS`]: its buckets and sum (see the module
/// docs). Also for the stores' writers (their commit durations).
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations per bucket, the last one above every bound (`+Inf` only).
    counts: [AtomicU64; DURATION_BUCKETS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// Counts one observation: two relaxed atomic adds.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BUCKETS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(DURATION_BUCKETS_NANOS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// What it holds now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut snapshot = HistogramSnapshot::default();
        self.add_to(&mut snapshot);
        snapshot
    }

    fn add_to(&self, into: &mut HistogramSnapshot) {
        for (total, count) in into.counts.iter_mut().zip(&self.counts) {
            *total += count.load(Ordering::Relaxed);
        }
        into.sum_nanos += self.sum_nanos.load(Ordering::Relaxed);
    }
}

/// One stripe of the per-delivery counters, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    deliveries: [AtomicU64; TRANSPORTS.len()],
    publish_to_write: DurationHistogram,
}

/// The node's counters. One per hub ([`crate::Hub::metrics`]), shared by its notifier and
/// subscriptions.
#[derive(Debug)]
pub struct Metrics {
    stripes: Box<[Stripe]>,
    connections_opened: [AtomicU64; TRANSPORTS.len()],
    publishes: [AtomicU64; PublishOutcome::ALL.len()],
    refusals: [AtomicU64; REFUSAL_REASONS.len()],
    publish_duration: DurationHistogram,
    store_append_duration: DurationHistogram,
    store_errors: AtomicU64,
    closes: [AtomicU64; CLOSE_REASONS.len()],
    resumes_exact: AtomicU64,
    resumes_reset: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            connections_opened: Default::default(),
            publishes: Default::default(),
            refusals: Default::default(),
            publish_duration: DurationHistogram::default(),
            store_append_duration: DurationHistogram::default(),
            store_errors: AtomicU64::new(0),
            closes: Default::default(),
            resumes_exact: AtomicU64::new(0),
            resumes_reset: AtomicU64::new(0),
        }
    }
}

/// This thread's stripe: threads take the next one as they first deliver.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
    }
    STRIPE.with(|stripe| match stripe.get() {
        Some(index) => index,
        None => {
            let index = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(Some(index));
            index
        }
    })
}

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Sse => 0,
        Transport::Poll => 1,
        Transport::Ws => 2,
    }
}

impl Metrics {
    fn stripe(&self) -> &Stripe {
        &self.stripes[stripe_index()]
    }

    /// A connection of `transport` attached.
    pub(crate) fn connection_opened(&self, transport: Transport) {
        self.connections_opened[transport_index(transport)].fetch_add(1, Ordering::Relaxed);
    }

    /// A notification or topic event handed to a transport to write.
    pub(crate) fn delivered(&self, transport: Transport) {
        self.stripe().deliveries[transport_index(transport)].fetch_add(1, Ordering::Relaxed);
    }

    /// A live notification handed to a transport `elapsed` after its node made it.
    pub(crate) fn publish_to_write(&self, elapsed: Duration) {
        self.stripe().publish_to_write.observe(elapsed);
    }

    /// A publish done, `elapsed` after it was asked for.
    pub(crate) fn published(&self, outcome: PublishOutcome, elapsed: Duration) {
        self.publishes[PublishOutcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0)]
            .fetch_add(1, Ordering::Relaxed);
        self.publish_duration.observe(elapsed);
    }

    /// A publish refused (or failed), for the reason of index `reason` in [`REFUSAL_REASONS`].
    pub(crate) fn refused(&self, reason: usize, elapsed: Duration) {
        self.refusals[reason.min(REFUSAL_REASONS.len() - 1)].fetch_add(1, Ordering::Relaxed);
        self.publish_duration.observe(elapsed);
    }

    /// A publish's append to the store took `elapsed`; `failed` if it returned an error.
    pub(crate) fn store_append(&self, elapsed: Duration, failed: bool) {
        self.store_append_duration.observe(elapsed);
        if failed {
            self.store_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A stream ended with `closed: reason`.
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closes[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A client resumed from a seq it gave: exactly, or with a `reset`.
    pub(crate) fn resumed(&self, reset: bool) {
        let counter = if reset { &self.resumes_reset } else { &self.resumes_exact };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// What the counters hold now (each read on its own, relaxed: a scrape during traffic may
    /// see one counter a little ahead of another).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut deliveries = [0; TRANSPORTS.len()];
        let mut publish_to_write = HistogramSnapshot::default();
        for stripe in self.stripes.iter() {
            for (total, count) in deliveries.iter_mut().zip(&stripe.deliveries) {
                *total += load(count);
            }
            stripe.publish_to_write.add_to(&mut publish_to_write);
        }
        MetricsSnapshot {
            connections_opened: self.connections_opened.each_ref().map(load),
            deliveries,
            publishes: self.publishes.each_ref().map(load),
            refusals: self.refusals.each_ref().map(load),
            publish_duration: self.publish_duration.snapshot(),
            publish_to_write,
            store_append_duration: self.store_append_duration.snapshot(),
            store_errors: load(&self.store_errors),
            closes: self.closes.each_ref().map(load),
            resumes_exact: load(&self.resumes_exact),
            resumes_reset: load(&self.resumes_reset),
        }
    }
}

/// A histogram's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`DURATION_BUCKETS_SECONDS`] (not cumulative), the last one
    /// above every bound.
    pub counts: [u64; DURATION_BUCKETS_SECONDS.len() + 1],
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// [`Metrics`] at one moment: counters since the node started, by the orders of
/// [`TRANSPORTS`], [`PublishOutcome::ALL`], [`REFUSAL_REASONS`] and [`CLOSE_REASONS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub connections_opened: [u64; TRANSPORTS.len()],
    /// Notifications and topic events handed to each transport to write (replayed ones too).
    pub deliveries: [u64; TRANSPORTS.len()],
    pub publishes: [u64; PublishOutcome::ALL.len()],
    pub refusals: [u64; REFUSAL_REASONS.len()],
    /// From a publish asked of the notifier to its receipt (or refusal).
    pub publish_duration: HistogramSnapshot,
    /// From a live notification made on this node (after its append, for a durable one; on
    /// arrival, for another node's) to its transport taking it to write.
    pub publish_to_write: HistogramSnapshot,
    /// A publish's append to the store, as the notifier waits for it.
    pub store_append_duration: HistogramSnapshot,
    /// Appends that failed.
    pub store_errors: u64,
    pub closes: [u64; CLOSE_REASONS.len()],
    pub resumes_exact: u64,
    pub resumes_reset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_each_observation_in_its_first_bucket_at_or_above_it() {
        let metrics = Metrics::default();
        for micros in [50, 100, 101, 2_000, 3_000_000] {
            metrics.published(PublishOutcome::Stored, Duration::from_micros(micros));
        }
        let snapshot = metrics.snapshot().publish_duration;
        assert_eq!(snapshot.counts[0], 2, "50 µs and 100 µs: le 0.0001");
        assert_eq!(snapshot.counts[1], 1, "101 µs: le 0.00025");
        assert_eq!(snapshot.counts[4], 1, "2 ms: le 0.0025");
        assert_eq!(snapshot.counts[DURATION_BUCKETS_SECONDS.len()], 1, "3 s: +Inf only");
        assert_eq!(snapshot.count(), 5);
        assert_eq!(snapshot.sum_nanos, (50 + 100 + 101 + 2_000 + 3_000_000) * 1_000);
    }

    #[test]
    fn bucket_bounds_agree() {
        for (seconds, nanos) in DURATION_BUCKETS_SECONDS.iter().zip(DURATION_BUCKETS_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
    }

    #[test]
    fn deliveries_from_many_threads_add_up() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        metrics.delivered(Transport::Ws);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(metrics.snapshot().deliveries, [0, 0, 20_000]);
    }
}
