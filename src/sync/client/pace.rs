//! The node's one bandwidth limit (`bandwidthLimit`), shared by downloads and uploads: the link to
//! the parent is bounded both ways by one budget, so it lives apart from either direction.
//! A [`Limiter`] charges bytes as they pass and sizes the pieces an upload body is read in.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The largest piece of an upload body read and sent at once.
pub(super) const MAX_UPLOAD_PIECE: usize = 256 * 1024;

/// The shared bandwidth limit: one governor cell is `unit` bytes.
pub(super) struct Limiter {
    governor: DefaultDirectRateLimiter,
    unit: u64,
    burst: u32,
    /// Bytes per second.
    rate: u64,
}

impl Limiter {
    pub(super) fn new(bytes_per_second: u64) -> Option<Limiter> {
        let rate = bytes_per_second.max(1);
        // Whole KiB cells keep the replenish period exact for fast links; single bytes keep
        // slow links (a few KiB/s) smooth.
        let unit: u64 = if rate >= 1 << 20 { 1024 } else { 1 };
        let period_ns = (1_000_000_000u128 * u128::from(unit)) / u128::from(rate);
        let period = Duration::from_nanos(u64::try_from(period_ns).ok()?);
        // A quarter of a second worth of bytes may go at once.
        let burst = u32::try_from((rate / unit / 4).max(1)).unwrap_or(u32::MAX);
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?);
        Some(Limiter {
            governor: RateLimiter::direct(quota),
            unit,
            burst,
            rate,
        })
    }

    /// The limit, in bytes per second.
    pub(super) fn rate(&self) -> u64 {
        self.rate
    }

    /// How many bytes to send at a time under this limit: a quarter of a second's worth
    /// (1 KiB – 256 KiB), so progress shows steadily even on a slow link instead of one large
    /// piece being held back for many seconds.
    pub(super) fn piece(&self) -> usize {
        usize::try_from(self.rate / 4)
            .unwrap_or(usize::MAX)
            .clamp(1024, MAX_UPLOAD_PIECE)
    }

    /// Wait until `bytes` more may be transferred; returns the bytes not yet charged (less
    /// than one cell), to be carried into the next call.
    pub(super) async fn take(&self, bytes: u64) -> u64 {
        let mut cells = bytes / self.unit;
        while cells > 0 {
            let n = cells.min(u64::from(self.burst)) as u32;
            if let Some(n) = NonZeroU32::new(n) {
                // `n` never exceeds the burst, so this cannot fail for lack of capacity.
                let _ = self.governor.until_n_ready(n).await;
            }
            cells -= u64::from(n);
        }
        bytes % self.unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn upload_pieces_are_a_quarter_second_of_the_limit() {
        assert_eq!(Limiter::new(8 << 10).unwrap().piece(), 2 << 10);
        assert_eq!(Limiter::new(1 << 10).unwrap().piece(), 1 << 10);
        assert_eq!(Limiter::new(100 << 20).unwrap().piece(), MAX_UPLOAD_PIECE);
    }

    #[tokio::test]
    async fn bandwidth_limit_paces_downloads() {
        // 64 KiB/s with a 16 KiB burst: 48 KiB beyond the burst take about 0.75 s.
        let limiter = Limiter::new(64 << 10).unwrap();
        let start = Instant::now();
        let mut carry = 0;
        for _ in 0..4 {
            carry = limiter.take(carry + (16 << 10)).await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // Faster than one cell per nanosecond is as good as no limit.
        assert!(Limiter::new(u64::MAX).is_none());
        assert!(Limiter::new(0).is_some());
    }
}
