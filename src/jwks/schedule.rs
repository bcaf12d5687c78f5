//! When one JWKS source is fetched next: a pure state machine over [`Instant`]s, so the
//! timing rules (refresh, backoff, rate-limited early refresh) are tested without a clock.

use std::time::{Duration, Instant};

/// The intervals a [`Schedule`] follows (copied from [`super::FetchConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Intervals {
    pub refresh: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub early_refresh_min: Duration,
}

/// The fetch schedule of one source.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    intervals: Intervals,
    /// Failed fetches since the last success (0 after a success).
    failures: u32,
    /// When the last fetch ended, whatever its result.
    last_fetch: Option<Instant>,
    /// The next regular fetch (first, refresh or retry).
    next: Instant,
    /// An early refresh was asked for and is waiting for the rate limit.
    early: bool,
}

impl Schedule {
    /// A schedule whose first fetch is due at `now`.
    pub(crate) fn new(intervals: Intervals, now: Instant) -> Schedule {
        Schedule {
            intervals,
            failures: 0,
            last_fetch: None,
            next: now,
            early: false,
        }
    }

    /// When the next fetch is due: the regular one, or an asked-for early refresh once the
    /// rate limit allows it, whichever comes first.
    pub(crate) fn due(&self) -> Instant {
        match (self.early, self.last_fetch) {
            (true, Some(last)) => self.next.min(last + self.intervals.early_refresh_min),
            _ => self.next,
        }
    }

    /// The data path saw an unknown `kid`. Honoured only while the source is healthy (its
    /// last fetch succeeded): after a failure the backoff decides, so a broken endpoint is
    /// not asked more often because tokens keep arriving.
    pub(crate) fn request_early(&mut self) {
        if self.failures == 0 && self.last_fetch.is_some() {
            self.early = true;
        }
    }

    /// A fetch ended well at `now`: the next one is a regular refresh.
    pub(crate) fn succeeded(&mut self, now: Instant) {
        self.failures = 0;
        self.finish(now, self.intervals.refresh);
    }

    /// A fetch failed at `now`: retry after the backoff (`retry_min`, doubling per
    /// consecutive failure, at most `retry_max`), which is returned.
    pub(crate) fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let backoff = self.backoff();
        self.finish(now, backoff);
        backoff
    }

    fn finish(&mut self, now: Instant, wait: Duration) {
        self.last_fetch = Some(now);
        self.next = now + wait;
        self.early = false;
    }

    fn backoff(&self) -> Duration {
        let Intervals {
            retry_min,
            retry_max,
            ..
        } = self.intervals;
        let doublings = self.failures.saturating_sub(1);
        1u32.checked_shl(doublings)
            .and_then(|factor| retry_min.checked_mul(factor))
            .map_or(retry_max, |d| d.min(retry_max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn istio() -> Intervals {
        Intervals {
            refresh: 20 * 60 * S,
            retry_min: 60 * S,
            retry_max: 60 * 60 * S,
            early_refresh_min: 60 * S,
        }
    }

    #[test]
    fn first_fetch_is_due_at_once_then_every_refresh() {
        let t0 = Instant::now();
        let mut s = Schedule::new(istio(), t0);
        assert_eq!(s.due(), t0);
        s.succeeded(t0 + S);
        assert_eq!(s.due(), t0 + S + 20 * 60 * S);
    }

    #[test]
    fn failures_back_off_from_one_minute_doubling_to_sixty() {
        let t0 = Instant::now();
        let mut s = Schedule::new(istio(), t0);
        let waits: Vec<u64> = (0..9).map(|_| s.failed(t0).as_secs() / 60).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(s.due(), t0 + 60 * 60 * S);
        // Far more failures than bits in a u32 never overflow.
        for _ in 0..100 {
            s.failed(t0);
        }
        assert_eq!(s.failed(t0), 60 * 60 * S);
    }

    #[test]
    fn a_success_resets_the_backoff() {
        let t0 = Instant::now();
        let mut s = Schedule::new(istio(), t0);
        s.failed(t0);
        s.failed(t0);
        s.succeeded(t0);
        assert_eq!(s.failed(t0), 60 * S);
    }

    #[test]
    fn early_refresh_waits_for_the_rate_limit_after_the_last_fetch() {
        let t0 = Instant::now();
        let mut s = Schedule::new(istio(), t0);
        s.succeeded(t0);
        s.request_early();
        assert_eq!(s.due(), t0 + 60 * S, "not before early_refresh_min");
        s.succeeded(t0 + 60 * S);
        assert_eq!(
            s.due(),
            t0 + 60 * S + 20 * 60 * S,
            "the request was used up"
        );
        // Asked again long after the last fetch: due at once (in the past).
        s.request_early();
        assert_eq!(s.due(), t0 + 120 * S);
    }

    #[test]
    fn early_refresh_never_comes_after_the_regular_one() {
        let t0 = Instant::now();
        let intervals = Intervals {
            refresh: 10 * S,
            ..istio()
        };
        let mut s = Schedule::new(intervals, t0);
        s.succeeded(t0);
        s.request_early();
        assert_eq!(s.due(), t0 + 10 * S);
    }

    #[test]
    fn early_refresh_is_ignored_before_the_first_success_and_while_failing() {
        let t0 = Instant::now();
        let mut s = Schedule::new(istio(), t0);
        s.request_early();
        assert_eq!(s.due(), t0);
        s.failed(t0);
        s.request_early();
        assert_eq!(s.due(), t0 + 60 * S, "the backoff decides");
        s.succeeded(t0 + 60 * S);
        s.failed(t0 + 120 * S);
        s.request_early();
        assert_eq!(s.due(), t0 + 180 * S);
    }
}
