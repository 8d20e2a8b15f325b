//! Latency histograms (they cross the worker pipes as `(value, count)` pairs) and their
//! percentiles; the median and range of a figure over the rounds of a comparison.

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

/// A figure over the rounds of a comparison (`bench/compare.sh` with `ROUNDS`): its median,
/// which the tables and charts report, and its range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Rounds that had the figure.
    pub rounds: usize,
}

impl Spread {
    /// The spread of `values` (NaNs left out); `None` without any.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            // An even count: the mean of the two middle values.
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Self { median, min: sorted[0], max: sorted[n - 1], rounds: n })
    }

    /// One value, as a single round gives it.
    pub fn one(value: f64) -> Self {
        Self { median: value, min: value, max: value, rounds: 1 }
    }

    /// Whether the rounds disagreed (a range worth showing).
    pub fn varies(&self) -> bool {
        self.max > self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails if the median is taken from unsorted values, an even count does not average its
    /// middle pair, or a NaN counts.
    #[test]
    fn medians_of_rounds() {
        let odd = Spread::of([46_833.0, 45_100.0, 47_900.0]).unwrap();
        assert_eq!(odd, Spread { median: 46_833.0, min: 45_100.0, max: 47_900.0, rounds: 3 });
        assert!(odd.varies());
        assert_eq!(Spread::of([4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([7.0, f64::NAN]).unwrap(), Spread::one(7.0));
        assert!(!Spread::one(7.0).varies());
        assert_eq!(Spread::of([]), None);
        assert_eq!(Spread::of([3.0, 1.0, 2.0, 100.0, 0.5]).unwrap().median, 2.0);
    }

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
