//! Reconnect delays: exponential growth with jitter, capped, reset after a connection
//! that worked. Pure arithmetic over an injected random source, so it is tested without
//! clocks.

use std::time::Duration;

/// Exponential backoff with "equal jitter": each delay is uniformly drawn from
/// `[d/2, d]` where `d = min(max, base * 2^attempt)`. The jitter keeps a fleet that
/// lost its control plane at once from reconnecting in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delays double, stay within their jitter band, cap at max, and reset.
    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let lows: Vec<_> = (0..8).map(|_| b.next_delay(0.0).as_millis()).collect();
        assert_eq!(lows, vec![250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(0.999_999).as_millis(), 499);
        assert_eq!(b.next_delay(1.0).as_millis(), 1000);
        for _ in 0..100 {
            let d = b.next_delay(0.5);
            assert!(d <= Duration::from_secs(10));
        }
    }
}
