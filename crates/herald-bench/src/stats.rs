//! Latency histograms (they cross the worker pipes as `(value, count)` pairs) and their
//! percentiles.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded, in nanoseconds (2 minutes); anything slower is clamped to it.
const LATENCY_NS_MAX: u64 = 120_000_000_000;
/// Significant digits kept: 3 means every value within 0.1 %.
const LATENCY_SIGFIG: u8 = 3;

/// An empty latency histogram, in nanoseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGFIG).expect("constant bounds are valid")
}

/// Records `ns`, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

/// The recorded values of `h`, as `(value, count)` pairs.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// Adds pairs from [`to_pairs`] to `h`.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        // Values came from a histogram with the same bounds, so they fit.
        let _ = h.record_n(value.clamp(1, LATENCY_NS_MAX), count);
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1e6,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let mut a = histogram();
        for ns in [1_000, 2_000, 2_000, 150_000, 5_000_000_000] {
            record(&mut a, ns);
        }
        let mut b = histogram();
        add_pairs(&mut b, &to_pairs(&a));
        assert_eq!(Percentiles::of(&a), Percentiles::of(&b));
        let p = Percentiles::of(&b);
        assert_eq!(p.count, 5);
        assert!((p.p50_ms - 0.002).abs() < 1e-5, "{p:?}");
        assert!((p.max_ms - 5000.0).abs() < 5.0, "{p:?}");
    }
}
