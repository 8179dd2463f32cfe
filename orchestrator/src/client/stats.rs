//! Percentiles of timed samples: the one `Stats` type every `swe-env bench` program prints.

use std::time::Duration;

/// Percentiles of a set of durations, in milliseconds (NaN when there are no samples).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// The percentiles of `samples`.
pub fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| {
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(idx).copied().map(ms).unwrap_or(f64::NAN)
    };
    let mean = if samples.is_empty() {
        f64::NAN
    } else {
        samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64
    };
    Stats {
        n: samples.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        mean_ms: mean,
    }
}
