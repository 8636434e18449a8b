//! Latency percentiles over a sorted vector (nearest-rank), and the summary of one workload.

use serde::Serialize;

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest op.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The nearest-rank `p`-th percentile (0 < p <= 100) of ascending `sorted`; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Latency {
    /// Summarises latencies given in microseconds (sorts them).
    pub fn from_micros(lat: &mut [u64]) -> Latency {
        if lat.is_empty() {
            return Latency::default();
        }
        lat.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let sum: u128 = lat.iter().map(|&x| u128::from(x)).sum();
        Latency {
            p50: ms(percentile(lat, 50.0)),
            p90: ms(percentile(lat, 90.0)),
            p99: ms(percentile(lat, 99.0)),
            max: ms(lat[lat.len() - 1]),
            mean: sum as f64 / lat.len() as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 90.0), 90);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.1), 1);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        // 10 values: p50 is the 5th, p90 the 9th, p99 the 10th.
        let v: Vec<u64> = (1..=10).map(|x| x * 10).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 90.0), 90);
        assert_eq!(percentile(&v, 99.0), 100);
    }

    #[test]
    fn summary_sorts_and_converts_to_ms() {
        let mut v = vec![3000, 1000, 2000, 4000];
        let l = Latency::from_micros(&mut v);
        assert_eq!(v, vec![1000, 2000, 3000, 4000]);
        assert_eq!(l.p50, 2.0);
        assert_eq!(l.p90, 4.0);
        assert_eq!(l.max, 4.0);
        assert_eq!(l.mean, 2.5);
        assert_eq!(Latency::from_micros(&mut []), Latency::default());
    }
}
