//! When to try a request again, and after how long.

use std::time::Duration;

/// Retries of answers that say "not now" (429 `RATE_LIMITED`, 503
/// `SERVICE_UNAVAILABLE`, 409 `CONFLICT` with `Retry-After`: the same
/// idempotent request still being processed) and of requests that got no
/// answer. Why retrying
/// is safe for every call: see the crate documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry). Default 4.
    pub max_attempts: u32,
    /// Backoff before the first retry when the answer names no delay;
    /// doubled for each further retry, with jitter. Default 200 ms.
    pub initial_backoff: Duration,
    /// Cap of that backoff. Default 5 s.
    pub max_backoff: Duration,
    /// The longest `Retry-After` waited for; a longer one ends the retries
    /// and the error carries it ([`crate::Problem::retry_after`]). Default 60 s
    /// (the rate-limit window is one minute).
    pub max_retry_after: Duration,
    /// Retry requests that got no answer (refused or reset connections,
    /// timeouts). Default true.
    pub retry_transport_errors: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
            retry_transport_errors: true,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    pub fn with_retry_transport_errors(mut self, on: bool) -> Self {
        self.retry_transport_errors = on;
        self
    }

    /// The wait before attempt `attempt + 1` after an error answer, or
    /// `None` to give up.
    pub(crate) fn delay_after_status(
        &self,
        attempt: u32,
        status: u16,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        // A 409 with Retry-After: the same request (same Idempotency-Key)
        // is still being processed; a 409 without one is final.
        let retryable = matches!(status, 429 | 503) || (status == 409 && retry_after.is_some());
        if attempt >= self.max_attempts || !retryable {
            return None;
        }
        match retry_after {
            Some(d) if d > self.max_retry_after => None,
            // What the server asked for, plus up to 10% so that clients told
            // the same second do not all come back at once.
            Some(d) => Some(d + d.mul_f64(0.1 * random_fraction())),
            None => Some(self.backoff(attempt)),
        }
    }

    /// The wait before attempt `attempt + 1` after a request that got no
    /// (complete) answer, or `None` to give up.
    pub(crate) fn delay_after_transport_error(
        &self,
        attempt: u32,
        e: &reqwest::Error,
    ) -> Option<Duration> {
        let retryable = self.retry_transport_errors
            && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body());
        (retryable && attempt < self.max_attempts).then(|| self.backoff(attempt))
    }

    /// Exponential backoff with jitter: `initial * 2^(attempt-1)`, capped,
    /// then a random point in its upper half.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        full / 2 + (full / 2).mul_f64(random_fraction())
    }
}

/// A number in [0, 1), different on each call (no RNG dependency: the
/// standard library's randomly keyed hasher).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_429_503_and_a_409_with_retry_after_are_retried() {
        let p = RetryPolicy::default();
        for status in [400, 401, 403, 404, 409, 413, 415, 500, 502, 504] {
            assert_eq!(p.delay_after_status(1, status, None), None, "{status}");
        }
        assert!(p.delay_after_status(1, 429, None).is_some());
        assert!(p.delay_after_status(1, 503, None).is_some());
        assert!(p
            .delay_after_status(1, 409, Some(Duration::from_secs(1)))
            .is_some());
    }

    #[test]
    fn attempts_are_bounded() {
        let p = RetryPolicy::default().with_max_attempts(3);
        assert!(p.delay_after_status(2, 503, None).is_some());
        assert_eq!(p.delay_after_status(3, 503, None), None);
        assert_eq!(RetryPolicy::none().delay_after_status(1, 503, None), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = RetryPolicy::default()
            .with_max_attempts(50)
            .with_backoff(100 * MS, 1000 * MS);
        for _ in 0..100 {
            let d1 = p.delay_after_status(1, 503, None).expect("retry");
            assert!((50 * MS..=100 * MS).contains(&d1), "{d1:?}");
            let d3 = p.delay_after_status(3, 503, None).expect("retry");
            assert!((200 * MS..=400 * MS).contains(&d3), "{d3:?}");
            let d30 = p.delay_after_status(30, 503, None).expect("retry");
            assert!((500 * MS..=1000 * MS).contains(&d30), "{d30:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_limit() {
        let p = RetryPolicy::default().with_max_retry_after(Duration::from_secs(10));
        for _ in 0..100 {
            let d = p
                .delay_after_status(1, 429, Some(Duration::from_secs(2)))
                .expect("retry");
            assert!(
                (Duration::from_secs(2)..=Duration::from_millis(2200)).contains(&d),
                "{d:?}"
            );
        }
        assert_eq!(
            p.delay_after_status(1, 429, Some(Duration::from_secs(0))),
            Some(Duration::ZERO)
        );
        assert_eq!(
            p.delay_after_status(1, 429, Some(Duration::from_secs(11))),
            None
        );
    }

    #[test]
    fn the_jitter_source_varies() {
        let draws: std::collections::HashSet<u64> =
            (0..20).map(|_| random_fraction().to_bits()).collect();
        assert!(draws.len() > 10, "{draws:?}");
        assert!(draws
            .iter()
            .all(|b| (0.0..1.0).contains(&f64::from_bits(*b))));
    }
}
