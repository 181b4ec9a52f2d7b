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
