//! Per-key rate limiting: a fixed one-minute window per key, each key with
//! its own limit. In memory, per instance (documented in the README).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::domain::KeyId;

const WINDOW_MS: i64 = 60_000;
const SWEEP_ABOVE: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds until the window resets (at least 1).
    pub reset_secs: u64,
}

#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<KeyId, (i64, u32)>>,
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one request by `key` at `now` against `limit` per minute.
    pub fn check(&self, key: &KeyId, limit: u32, now: DateTime<Utc>) -> RateDecision {
        let now_ms = now.timestamp_millis();
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, (start, _)| now_ms - *start < WINDOW_MS);
        }
        let entry = map.entry(key.clone()).or_insert((now_ms, 0));
        if now_ms - entry.0 >= WINDOW_MS || now_ms < entry.0 {
            *entry = (now_ms, 0);
        }
        let allowed = entry.1 < limit;
        if allowed {
            entry.1 += 1;
        }
        let reset_ms = (entry.0 + WINDOW_MS - now_ms).max(0);
        RateDecision {
            allowed,
            limit,
            remaining: limit.saturating_sub(entry.1),
            reset_secs: ((reset_ms + 999) / 1000).max(1) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn key(i: usize) -> KeyId {
        KeyId::parse(&format!("{i:016}")).unwrap()
    }

    fn tracked(rl: &RateLimiter) -> usize {
        rl.windows.lock().unwrap().len()
    }

    #[test]
    fn above_the_sweep_threshold_expired_windows_are_dropped_and_current_ones_kept() {
        let rl = RateLimiter::new();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        // Half the windows start at t0, the other half 30 s later; one more
        // key takes the map past the threshold.
        let half = SWEEP_ABOVE / 2;
        for i in 0..=half {
            rl.check(&key(i), 10, t0);
        }
        for i in half + 1..=SWEEP_ABOVE {
            rl.check(&key(i), 10, t0 + Duration::seconds(30));
        }
        assert_eq!(tracked(&rl), SWEEP_ABOVE + 1);
        // A minute after t0 the first half has ended (a window is current
        // for exactly 60 s); the second half is still current and counted.
        let d = rl.check(&key(SWEEP_ABOVE + 1), 10, t0 + Duration::seconds(60));
        assert!(d.allowed);
        assert_eq!(tracked(&rl), SWEEP_ABOVE - half + 1);
        let d = rl.check(&key(SWEEP_ABOVE), 10, t0 + Duration::seconds(60));
        assert_eq!(d.remaining, 8, "a current window keeps its count");
    }

    #[test]
    fn at_the_sweep_threshold_nothing_is_swept_yet() {
        let rl = RateLimiter::new();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        for i in 0..SWEEP_ABOVE {
            rl.check(&key(i), 10, t0);
        }
        // Every window has ended, but the map is not above the threshold.
        rl.check(&key(SWEEP_ABOVE), 10, t0 + Duration::seconds(120));
        assert_eq!(tracked(&rl), SWEEP_ABOVE + 1);
    }

    #[test]
    fn a_clock_that_goes_back_starts_a_new_window() {
        let rl = RateLimiter::new();
        let k = key(1);
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        assert!(rl.check(&k, 1, t0).allowed);
        assert!(!rl.check(&k, 1, t0).allowed);
        let d = rl.check(&k, 1, t0 - Duration::seconds(1));
        assert!(
            d.allowed,
            "a window that starts in the future is not current"
        );
        assert_eq!(d.reset_secs, 60);
    }

    #[test]
    fn reset_is_rounded_up_to_whole_seconds_and_never_zero() {
        let rl = RateLimiter::new();
        let k = key(2);
        let t0 = DateTime::from_timestamp_millis(1_000_000_000).unwrap();
        assert_eq!(rl.check(&k, 5, t0).reset_secs, 60);
        let d = rl.check(&k, 5, t0 + Duration::milliseconds(58_001));
        assert_eq!((d.reset_secs, d.remaining), (2, 3));
        let d = rl.check(&k, 5, t0 + Duration::milliseconds(59_999));
        assert_eq!((d.reset_secs, d.remaining), (1, 2));
    }

    #[test]
    fn a_key_gets_its_limit_per_window_then_is_refused_until_reset() {
        let rl = RateLimiter::new();
        let k = KeyId::parse("abcdefgh12345678").unwrap();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        for i in 0..3 {
            let d = rl.check(&k, 3, t0);
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i);
        }
        let d = rl.check(&k, 3, t0 + Duration::seconds(20));
        assert!(!d.allowed);
        assert_eq!(d.reset_secs, 40);
        assert!(rl.check(&k, 3, t0 + Duration::seconds(60)).allowed);
    }
}
