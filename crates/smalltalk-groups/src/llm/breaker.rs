//! A circuit breaker around the LLM endpoint (FR-027-031): after
//! `failure_threshold` consecutive failed calls it opens and refuses calls
//! at once for `open_for`, then lets one probe through (half-open); the
//! probe's success closes it, its failure opens it again.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed calls (after their retries) that open it; at
    /// least 1.
    pub failure_threshold: u32,
    /// How long it stays open before a probe; at least 1 ms.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// The breaker's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the time given.
    Open,
    /// One probe is under way; other calls are refused.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
}

/// The breaker; shared by every call of one client.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Admits a call, or says how long until the breaker lets one through.
    /// `Ok(true)`: this call is the half-open probe.
    pub(crate) fn admit(&self) -> Result<bool, Duration> {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Ok(false),
            BreakerState::HalfOpen => Err(self.config.open_for),
            BreakerState::Open => {
                let opened = inner.opened_at.unwrap_or_else(Instant::now);
                let elapsed = opened.elapsed();
                if elapsed >= self.config.open_for {
                    inner.state = BreakerState::HalfOpen;
                    Ok(true)
                } else {
                    Err(self.config.open_for - elapsed)
                }
            }
        }
    }

    /// Records a call that succeeded (closes the breaker).
    pub(crate) fn succeeded(&self) {
        let mut inner = self.lock();
        inner.state = BreakerState::Closed;
        inner.failures = 0;
        inner.opened_at = None;
    }

    /// Records a call that failed; returns whether the breaker opened.
    pub(crate) fn failed(&self) -> bool {
        let mut inner = self.lock();
        inner.failures = inner.failures.saturating_add(1);
        let open = inner.state == BreakerState::HalfOpen
            || inner.failures >= self.config.failure_threshold;
        if open && inner.state != BreakerState::Open {
            inner.state = BreakerState::Open;
            inner.opened_at = Some(Instant::now());
            return true;
        }
        false
    }

    /// Gives back a half-open probe that ended without a verdict (it was
    /// cancelled), so the next call may probe.
    pub(crate) fn abandoned(&self) {
        let mut inner = self.lock();
        if inner.state == BreakerState::HalfOpen {
            inner.state = BreakerState::Open;
            inner.opened_at = Instant::now().checked_sub(self.config.open_for);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_and_probes_after_the_pause() {
        let breaker = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_secs(10),
        });
        assert_eq!(breaker.admit(), Ok(false), "closed: not a probe");
        assert!(!breaker.failed());
        assert!(breaker.failed(), "the second failure opens it");
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.admit().is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.admit(), Ok(true), "one probe goes through");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.admit().is_err(), "only one probe at a time");
        assert!(breaker.failed(), "a failed probe opens it again");
        assert!(breaker.admit().is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.admit(), Ok(true));
        breaker.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.admit(), Ok(false));
    }
}
