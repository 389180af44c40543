//! `RetryPolicy`: how often and how far apart a failed call to a lock server
//! is retried, and how a waiter backs off while a key is held elsewhere.

use std::time::Duration;

/// Exponential backoff with an optional jitter (ncps's `--cache-lock-retry-*`).
///
/// The `n`-th delay (from 0) is `initial_delay * 2^n`, capped at `max_delay`;
/// with `jitter`, a random duration in its upper half instead, so instances
/// that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a failing call is tried in all (at least once).
    pub max_attempts: u32,
    /// The first delay.
    pub initial_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Whether delays are randomised.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// ncps's defaults: 3 attempts, 100ms doubling up to 2s, with jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `n` (0 for the first retry).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.min(31));
        let delay = self
            .initial_delay
            .saturating_mul(factor)
            .min(self.max_delay.max(self.initial_delay));
        if self.jitter && !delay.is_zero() {
            let half = delay / 2;
            half + half.mul_f64(rand::random::<f64>())
        } else {
            delay
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        let delays: Vec<u128> = (0..7).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let policy = RetryPolicy::default();
        for n in 0..10 {
            let plain = RetryPolicy {
                jitter: false,
                ..policy
            }
            .delay(n);
            let jittered = policy.delay(n);
            assert!(
                jittered >= plain / 2 && jittered <= plain,
                "{jittered:?} vs {plain:?}"
            );
        }
    }
}
