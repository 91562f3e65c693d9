//! A global rate limit per named queue ([`Worker::rate_limit`](crate::Worker::rate_limit)):
//! at most `n` jobs of the queue start per window of its period, counted in the backend, so
//! every worker process sharing the backend shares the limit.

use std::time::Duration;

/// At most [`RateLimit::permits`] job starts per window of [`RateLimit::period`], across every
/// worker that shares the backend (see [`Worker::rate_limit`](crate::Worker::rate_limit) for the
/// exact semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    permits: u32,
    period: Duration,
}

impl RateLimit {
    /// At most `permits` starts per `period` (at least 1 start, and at least 1 ms; the period
    /// is counted in whole milliseconds).
    pub fn per(permits: u32, period: Duration) -> Self {
        Self {
            permits: permits.max(1),
            period: Duration::from_millis(
                u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1),
            ),
        }
    }

    /// The most job starts per window.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// The window's length.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The period in milliseconds, as the backends count it.
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "redis", test))]
    pub(crate) fn period_ms(&self) -> i64 {
        i64::try_from(self.period.as_millis()).unwrap_or(i64::MAX)
    }
}

/// What a backend granted from a rate limit's current window
/// ([`Backend::take_permits`](crate::backend::Backend::take_permits)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permits {
    /// How many job starts were granted (0 when the window's permits are used up).
    pub granted: u32,
    /// The window the permits belong to, by the backend's clock: its start, in milliseconds
    /// since the Unix epoch. Permits given back ([`Backend::return_permits`](crate::backend::Backend::return_permits))
    /// only count for this window.
    pub window: i64,
    /// How long until this window ends, by the backend's clock.
    pub window_ends_in: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_has_at_least_one_permit_and_a_millisecond() {
        let limit = RateLimit::per(0, Duration::from_micros(10));
        assert_eq!(limit.permits(), 1);
        assert_eq!(limit.period(), Duration::from_millis(1));
        assert_eq!(
            RateLimit::per(5, Duration::from_millis(1500)).period_ms(),
            1500
        );
    }
}
