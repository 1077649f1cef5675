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

/// Shortest and longest wait the agent accepts from a control plane's `retry_after_s`.
const RETRY_AFTER_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

/// The wait before the next attempt after a refusal that asked for `after` (clamped to
/// between 1 s and 1 h, so a wrong value neither spins nor strands the agent): drawn
/// from `[0.8 after, after]`, so copies refused together do not return in lockstep.
/// `unit` is a random number in `[0, 1)`.
pub fn retry_after(after: Duration, unit: f64) -> Duration {
    let after = after.clamp(RETRY_AFTER_BOUNDS.0, RETRY_AFTER_BOUNDS.1);
    after.mul_f64(0.8 + 0.2 * unit.clamp(0.0, 1.0))
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

    /// A control plane's requested wait is kept (with up to 20 % taken off for
    /// jitter) and clamped to between 1 s and 1 h.
    #[test]
    fn retry_after_is_jittered_and_bounded() {
        let five_minutes = Duration::from_secs(300);
        assert_eq!(retry_after(five_minutes, 0.0), Duration::from_secs(240));
        assert_eq!(retry_after(five_minutes, 1.0), five_minutes);
        let mid = retry_after(five_minutes, 0.5);
        assert!(mid > Duration::from_secs(240) && mid < five_minutes);
        assert_eq!(retry_after(Duration::ZERO, 1.0), Duration::from_secs(1));
        assert_eq!(
            retry_after(Duration::from_secs(86_400), 1.0),
            Duration::from_secs(3600)
        );
    }
}
