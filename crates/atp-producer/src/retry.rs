//! [`Retry`]: how often and how patiently a publisher tries again.

use std::time::Duration;

/// Exponential backoff with full jitter: before attempt `k` (from 1) a publisher waits a random
/// time up to `min(max, initial × 2^(k-1))`, so that many producers that failed together do
/// not come back together. Retrying is always safe: a [`crate::SignedEvent`]'s bytes never
/// change, and ATP records one event per id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Retry {
    /// 8 attempts, from 100 ms up to 5 s apart: about 15 s at worst.
    fn default() -> Self {
        Retry {
            attempts: 8,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Retry {
    /// Tries once.
    pub fn never() -> Retry {
        Retry {
            attempts: 1,
            ..Retry::default()
        }
    }

    /// The wait before retry `k` (1 for the first retry): random, at most the cap.
    pub fn backoff(&self, k: u32) -> Duration {
        let cap = self
            .initial
            .saturating_mul(2u32.saturating_pow(k.saturating_sub(1)))
            .min(self.max);
        cap.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_is_never_above_it() {
        let r = Retry {
            attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for k in 1..40 {
            let cap = Duration::from_millis(100 * 2u64.saturating_pow(k - 1)).min(r.max);
            for _ in 0..50 {
                assert!(r.backoff(k) <= cap, "retry {k}");
            }
        }
        // Jittered: not every wait is the same.
        let waits: std::collections::BTreeSet<Duration> = (0..20).map(|_| r.backoff(5)).collect();
        assert!(waits.len() > 1);
    }
}
