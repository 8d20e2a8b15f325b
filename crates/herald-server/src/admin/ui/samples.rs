//! The overview's numbers over the last 15 minutes: a sample every [`SAMPLE_INTERVAL`], kept in
//! a ring of [`SAMPLES_MAX`], and handed to the open event streams as it is taken.
//!
//! A sample is what the node counts now (users, sessions and tabs connected: the hub's
//! [`herald_core::Census`]) and what its counters (`herald_core::metrics`, those of `/metrics`)
//! say happened since the last sample: publishes (every outcome) and deliveries per second, the
//! p99 of the publish-to-write latency, closes by reason. Taking one locks each
//! hub shard once, briefly: one pass over the node's clients every 5 s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use herald_core::metrics::{CLOSE_REASONS, DURATION_BUCKETS_SECONDS};
use herald_core::notification::now_ms;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::app::App;

/// How often a sample is taken.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: 15 minutes' worth. The oldest goes when a new one comes.
pub const SAMPLES_MAX: usize = 180;
/// Samples waiting for a slow event stream: one that falls further behind skips to the newest
/// (the page then asks for the whole ring again).
const SAMPLES_QUEUED_MAX: usize = 4;

/// One point of the overview's charts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// When it was taken, Unix milliseconds.
    pub at_ms: i64,
    pub users: u64,
    pub sessions: u64,
    pub tabs: u64,
    /// Since the previous sample; `None` for the first one (nothing to compare with).
    pub publishes_per_sec: Option<f64>,
    pub deliveries_per_sec: Option<f64>,
    /// The 99th percentile, since the previous sample, of the time from a notification's
    /// publish (after its append, if durable) to a transport taking it to write, milliseconds:
    /// the upper bound of its histogram bucket.
    pub p99_ms: Option<f64>,
    /// Connections closed by the server since the previous sample, by reason.
    pub closes: Vec<(&'static str, u64)>,
}

/// What the node's counters say since it started (all monotonic).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Totals {
    pub(crate) publishes: u64,
    pub(crate) deliveries: u64,
    /// Publish-to-write latencies: counts of each bucket, with their upper bounds in seconds.
    pub(crate) publish_seconds: Vec<(f64, u64)>,
    pub(crate) closes: Vec<(&'static str, u64)>,
}

/// The node's counters as they are now ([`herald_core::metrics`], those of `/metrics`).
pub(crate) fn totals(app: &App) -> Totals {
    let snapshot = app.hub.metrics().snapshot();
    let bounds = DURATION_BUCKETS_SECONDS.iter().copied().chain([f64::INFINITY]);
    Totals {
        publishes: snapshot.publishes.iter().sum(),
        deliveries: snapshot.deliveries.iter().sum(),
        publish_seconds: bounds.zip(snapshot.publish_to_write.counts).collect(),
        closes: CLOSE_REASONS.iter().map(|r| r.as_str()).zip(snapshot.closes).collect(),
    }
}

/// The ring of samples and the streams' channel.
pub(crate) struct Samples {
    ring: Mutex<Ring>,
    news: broadcast::Sender<Arc<Sample>>,
}

struct Ring {
    samples: VecDeque<Arc<Sample>>,
    /// The totals of the last sample, for the next one's rates.
    last_totals: Option<(i64, Totals)>,
}

impl Samples {
    pub(crate) fn new() -> Self {
        Self {
            ring: Mutex::new(Ring { samples: VecDeque::with_capacity(SAMPLES_MAX), last_totals: None }),
            news: broadcast::channel(SAMPLES_QUEUED_MAX).0,
        }
    }

    /// Every sample kept, oldest first.
    pub(crate) fn all(&self) -> Vec<Arc<Sample>> {
        self.ring.lock().samples.iter().cloned().collect()
    }

    /// Samples taken from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Sample>> {
        self.news.subscribe()
    }

    /// Takes a sample of `app` now, keeps it and hands it to the streams.
    pub(crate) fn take(&self, app: &App) -> Arc<Sample> {
        let census = app.hub.census();
        let at_ms = now_ms();
        let totals = totals(app);
        let mut ring = self.ring.lock();
        let since = ring.last_totals.take();
        let sample = Arc::new(sample_from(at_ms, census, since.as_ref(), &totals));
        ring.last_totals = Some((at_ms, totals));
        drop(ring);
        self.keep(sample.clone());
        sample
    }

    /// Keeps `sample` (the oldest goes at the bound) and hands it to the streams.
    fn keep(&self, sample: Arc<Sample>) {
        let mut ring = self.ring.lock();
        if ring.samples.len() == SAMPLES_MAX {
            ring.samples.pop_front();
        }
        ring.samples.push_back(sample.clone());
        drop(ring);
        // No stream open: nobody to tell.
        let _ = self.news.send(sample);
    }
}

fn sample_from(
    at_ms: i64,
    census: herald_core::Census,
    since: Option<&(i64, Totals)>,
    now: &Totals,
) -> Sample {
    let mut sample = Sample {
        at_ms,
        users: census.users,
        sessions: census.sessions,
        tabs: census.tabs.iter().sum(),
        publishes_per_sec: None,
        deliveries_per_sec: None,
        p99_ms: None,
        closes: Vec::new(),
    };
    let Some((then_ms, then)) = since else { return sample };
    let secs = ((at_ms - then_ms) as f64 / 1000.0).max(0.001);
    sample.publishes_per_sec = Some(now.publishes.saturating_sub(then.publishes) as f64 / secs);
    sample.deliveries_per_sec = Some(now.deliveries.saturating_sub(then.deliveries) as f64 / secs);
    sample.p99_ms = p99_seconds(&then.publish_seconds, &now.publish_seconds).map(|s| s * 1000.0);
    sample.closes = now
        .closes
        .iter()
        .map(|(reason, count)| {
            let before = then.closes.iter().find(|(r, _)| r == reason).map_or(0, |(_, c)| *c);
            (*reason, count.saturating_sub(before))
        })
        .filter(|(_, count)| *count > 0)
        .collect();
    sample
}

/// The upper bound of the bucket that holds the 99th percentile of what was counted between two
/// readings of one histogram (non-cumulative bucket counts); `None` if nothing was.
fn p99_seconds(then: &[(f64, u64)], now: &[(f64, u64)]) -> Option<f64> {
    let deltas: Vec<(f64, u64)> = now
        .iter()
        .enumerate()
        .map(|(i, (bound, count))| (*bound, count.saturating_sub(then.get(i).map_or(0, |(_, c)| *c))))
        .collect();
    let total: u64 = deltas.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = total - total / 100;
    let mut seen = 0;
    for (bound, count) in deltas {
        seen += count;
        if seen >= rank {
            // Above the last bound: the chart shows the last bound (the histogram knows no more).
            let last_finite = now.iter().rev().map(|(b, _)| *b).find(|b| b.is_finite());
            return if bound.is_finite() { Some(bound) } else { last_finite };
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_p99_come_from_the_difference_of_two_readings() {
        let then = Totals {
            publishes: 100,
            deliveries: 1_000,
            publish_seconds: vec![(0.001, 50), (0.01, 50), (f64::INFINITY, 0)],
            closes: vec![("evicted", 1), ("lagging", 0)],
        };
        let now = Totals {
            publishes: 600,
            deliveries: 11_000,
            publish_seconds: vec![(0.001, 50), (0.01, 545), (f64::INFINITY, 5)],
            closes: vec![("evicted", 1), ("lagging", 3)],
        };
        let census = herald_core::Census { users: 2, sessions: 3, tabs: [3, 0, 1] };
        let sample = sample_from(5_000, census, Some(&(0, then)), &now);
        assert_eq!(sample.publishes_per_sec, Some(100.0));
        assert_eq!(sample.deliveries_per_sec, Some(2_000.0));
        // 500 publishes: 495 took at most 10 ms, 5 more: the 99th percentile is 495th.
        assert_eq!(sample.p99_ms, Some(10.0));
        assert_eq!(sample.closes, [("lagging", 3)]);
        assert_eq!((sample.users, sample.sessions, sample.tabs), (2, 3, 4));

        let first = sample_from(5_000, census, None, &now);
        assert_eq!((first.publishes_per_sec, first.p99_ms), (None, None), "nothing to compare with");
    }

    #[test]
    fn a_p99_above_the_last_bound_is_the_last_bound() {
        let then = [(0.001, 0), (2.5, 0), (f64::INFINITY, 0)];
        assert_eq!(p99_seconds(&then, &[(0.001, 1), (2.5, 0), (f64::INFINITY, 99)]), Some(2.5));
        assert_eq!(p99_seconds(&then, &then), None, "nothing counted");
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes() {
        let hub =
            herald_core::Hub::new(herald_core::Limits::default(), herald_core::ClientIdMinter::new(b"k"));
        let samples = Samples::new();
        let mut news = samples.subscribe();
        let census = hub.census();
        for i in 0..SAMPLES_MAX + 3 {
            samples.keep(Arc::new(sample_from(i as i64, census, None, &Totals::default())));
        }
        let all = samples.all();
        assert_eq!(all.len(), SAMPLES_MAX);
        assert_eq!((all[0].at_ms, all[SAMPLES_MAX - 1].at_ms), (3, SAMPLES_MAX as i64 + 2));
        assert!(matches!(news.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))), "bounded");
    }
}
