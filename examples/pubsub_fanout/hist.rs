//! Latency histogram.

/// Microseconds in log-linear buckets: exact below 128 µs, then 64 buckets
/// per power of two (under 1.6% error), up to 2^40 µs.
pub struct Histogram {
    pub counts: Vec<u64>,
    pub n: u64,
    pub max: u64,
}

impl Histogram {
    const SUB: u32 = 6;
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; 128 + 33 * 64],
            n: 0,
            max: 0,
        }
    }
    pub fn index(us: u64) -> usize {
        let us = us.min((1 << 40) - 1);
        if us < 128 {
            return us as usize;
        }
        let e = 63 - us.leading_zeros(); // >= 7
        let shift = e - Self::SUB;
        128 + (e as usize - 7) * 64 + ((us >> shift) as usize - 64)
    }
    /// The smallest value of a bucket.
    pub fn low(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let e = (i - 128) / 64 + 7;
        let m = (i - 128) % 64 + 64;
        (m as u64) << (e as u32 - Self::SUB)
    }
    pub fn record(&mut self, us: u64) {
        self.counts[Self::index(us)] += 1;
        self.n += 1;
        self.max = self.max.max(us);
    }
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.max = self.max.max(other.max);
    }
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::low(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub fn histogram_quantiles_within_two_percent() {
        let mut h = Histogram::new();
        for us in 1..=100_000u64 {
            h.record(us);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got}");
        }
        assert_eq!(h.max, 100_000);
        for i in 0..h.counts.len() {
            assert_eq!(Histogram::index(Histogram::low(i)), i);
        }
    }
}
