//! Exponential backoff: the one retry schedule every crate uses.
//!
//! A [`Backoff`] grows a delay geometrically from `initial` by `multiplier`
//! per attempt and never exceeds `max`. The arithmetic is checked: a huge
//! multiplier or attempt number saturates at `max` instead of panicking or
//! overflowing, so a validated configuration can never stall a retry loop
//! for ever.

use std::time::Duration;

use crate::Error;

/// The longest delay any backoff may be configured with (one hour).
pub const MAX_BACKOFF_DELAY: Duration = Duration::from_secs(3600);

/// The largest growth factor accepted.
pub const MAX_BACKOFF_MULTIPLIER: f64 = 100.0;

/// An exponential retry schedule: `initial * multiplier^attempt`, capped
/// at `max`.
///
/// ```
/// use std::time::Duration;
/// use smalltalk_types::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(1));
/// assert_eq!(backoff.delay(0), Duration::from_millis(100));
/// assert_eq!(backoff.delay(2), Duration::from_millis(400));
/// assert_eq!(backoff.delay(1_000_000), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay (attempt 0).
    pub initial: Duration,
    /// Growth per attempt; at least 1 (constant delays) and at most
    /// [`MAX_BACKOFF_MULTIPLIER`].
    pub multiplier: f64,
    /// The longest delay; at least `initial` and at most
    /// [`MAX_BACKOFF_DELAY`].
    pub max: Duration,
}

impl Backoff {
    /// A schedule from its three parts (checked by [`validate`](Self::validate)).
    pub const fn new(initial: Duration, multiplier: f64, max: Duration) -> Self {
        Self {
            initial,
            multiplier,
            max,
        }
    }

    /// The same delay every time.
    pub const fn constant(delay: Duration) -> Self {
        Self::new(delay, 1.0, delay)
    }

    /// Checks the ranges; the error names `field`.
    pub fn validate(&self, field: &'static str) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidConfig { field, reason };
        if !self.multiplier.is_finite()
            || !(1.0..=MAX_BACKOFF_MULTIPLIER).contains(&self.multiplier)
        {
            return Err(invalid(format!(
                "multiplier must be between 1 and {MAX_BACKOFF_MULTIPLIER}, got {}",
                self.multiplier
            )));
        }
        if self.max > MAX_BACKOFF_DELAY {
            return Err(invalid(format!(
                "max must be at most {MAX_BACKOFF_DELAY:?}, got {:?}",
                self.max
            )));
        }
        if self.initial > self.max {
            return Err(invalid(format!(
                "initial ({:?}) must not exceed max ({:?})",
                self.initial, self.max
            )));
        }
        Ok(())
    }

    /// The delay before retry number `attempt` (from 0). Never above
    /// `max`, never panics, whatever the fields hold.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1.0)
            .powi(attempt.min(i32::MAX as u32) as i32);
        let seconds = self.initial.as_secs_f64() * factor;
        match Duration::try_from_secs_f64(seconds) {
            Ok(delay) if factor.is_finite() => delay.min(self.max),
            _ => self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_saturates_without_panicking() {
        let backoff = Backoff::new(Duration::from_secs(1), 3.0, Duration::from_secs(30));
        let delays: Vec<u64> = (0..5).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 3, 9, 27, 30]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(30));
        let wild = Backoff::new(Duration::MAX, 1e300, Duration::MAX);
        assert_eq!(wild.delay(10), Duration::MAX);
        let nan = Backoff::new(Duration::from_secs(1), f64::NAN, Duration::from_secs(5));
        assert!(nan.delay(3) <= Duration::from_secs(5));
    }

    #[test]
    fn out_of_range_schedules_are_refused() {
        let ok = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(1));
        assert!(ok.validate("b").is_ok());
        for bad in [
            Backoff {
                multiplier: 0.5,
                ..ok
            },
            Backoff {
                multiplier: 1e300,
                ..ok
            },
            Backoff {
                multiplier: f64::NAN,
                ..ok
            },
            Backoff {
                max: Duration::MAX,
                ..ok
            },
            Backoff {
                initial: Duration::from_secs(2),
                ..ok
            },
        ] {
            assert!(
                matches!(
                    bad.validate("b"),
                    Err(Error::InvalidConfig { field: "b", .. })
                ),
                "{bad:?}"
            );
        }
    }
}
