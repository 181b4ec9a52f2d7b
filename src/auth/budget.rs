//! How much bcrypt a key id may cost: a fixed one-minute window of bcrypt
//! runs per (key id, client network) and a larger one per key id whatever
//! the addresses. A run is counted *before* bcrypt starts (so concurrent
//! attempts cannot all slip past the check) and given back only when bcrypt
//! did not run after all (the key id is unknown, or no verifier was free).
//!
//! Memory is bounded: at most `max_tracked` windows are kept; expired ones
//! are swept when the map is full, and a source that cannot be tracked is
//! refused (its key id's own cap still applies to everyone else).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::domain::KeyId;

const WINDOW_MS: i64 = 60_000;

/// Where attempts come from: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so counting single IPv6 addresses would give
/// an attacker 2^64 budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientNet(u128);

impl ClientNet {
    /// Attempts whose address is unknown share one budget.
    pub const UNKNOWN: ClientNet = ClientNet(u128::MAX);

    fn v4(v4: std::net::Ipv4Addr) -> Self {
        // As in the IPv4-mapped form (::ffff:a.b.c.d): never equal to a /64.
        Self(0xffff_0000_0000 | u128::from(u32::from(v4)))
    }

    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::v4(v4),
                // Keep the /64 and mark it as IPv6 so it never equals a v4.
                None => Self((u128::from(v6) & !0u128 << 64) | 1),
            },
        }
    }
}

/// A counted bcrypt run, to give back with [`BcryptBudget::refund`] when
/// bcrypt did not run after all.
#[derive(Debug)]
pub struct Reservation {
    key: KeyId,
    net: ClientNet,
    key_window: i64,
    source_window: i64,
}

/// The attempt is over budget; retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: i64,
    used: u32,
}

impl Window {
    fn new(now_ms: i64) -> Self {
        Self {
            start_ms: now_ms,
            used: 0,
        }
    }

    fn is_current(&self, now_ms: i64) -> bool {
        now_ms >= self.start_ms && now_ms - self.start_ms < WINDOW_MS
    }

    fn roll(&mut self, now_ms: i64) {
        if !self.is_current(now_ms) {
            *self = Self::new(now_ms);
        }
    }

    fn retry_after(&self, now_ms: i64) -> OverBudget {
        let left = (self.start_ms + WINDOW_MS - now_ms).max(0);
        OverBudget {
            retry_after_secs: u64::try_from((left + 999) / 1000).unwrap_or(1).max(1),
        }
    }
}

#[derive(Default)]
struct Windows {
    by_source: HashMap<(KeyId, ClientNet), Window>,
    by_key: HashMap<KeyId, Window>,
}

impl Windows {
    fn len(&self) -> usize {
        self.by_source.len() + self.by_key.len()
    }

    fn sweep(&mut self, now_ms: i64) {
        self.by_source.retain(|_, w| w.is_current(now_ms));
        self.by_key.retain(|_, w| w.is_current(now_ms));
    }
}

pub struct BcryptBudget {
    per_source: u32,
    per_key: u32,
    max_tracked: usize,
    windows: Mutex<Windows>,
}

impl BcryptBudget {
    /// `per_source` runs per (key id, client network) and `per_key` runs per
    /// key id per minute; at most `max_tracked` windows in memory.
    pub fn new(per_source: u32, per_key: u32, max_tracked: usize) -> Self {
        Self {
            per_source,
            per_key,
            max_tracked: max_tracked.max(2),
            windows: Mutex::new(Windows::default()),
        }
    }

    /// Counts one bcrypt run for `key` from `net` at `now_ms`, or refuses it.
    pub fn try_reserve(
        &self,
        key: &KeyId,
        net: ClientNet,
        now_ms: i64,
    ) -> Result<Reservation, OverBudget> {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let source_id = (key.clone(), net);
        let untracked = !w.by_source.contains_key(&source_id) || !w.by_key.contains_key(key);
        if untracked && w.len() + 2 > self.max_tracked {
            w.sweep(now_ms);
            if w.len() + 2 > self.max_tracked {
                return Err(Window::new(now_ms).retry_after(now_ms));
            }
        }
        let key_window = {
            let kw = w
                .by_key
                .entry(key.clone())
                .or_insert_with(|| Window::new(now_ms));
            kw.roll(now_ms);
            if kw.used >= self.per_key {
                return Err(kw.retry_after(now_ms));
            }
            *kw
        };
        let sw = w
            .by_source
            .entry(source_id)
            .or_insert_with(|| Window::new(now_ms));
        sw.roll(now_ms);
        if sw.used >= self.per_source {
            return Err(sw.retry_after(now_ms));
        }
        sw.used += 1;
        let source_window = sw.start_ms;
        if let Some(kw) = w.by_key.get_mut(key) {
            kw.used += 1;
        }
        Ok(Reservation {
            key: key.clone(),
            net,
            key_window: key_window.start_ms,
            source_window,
        })
    }

    /// Gives a run back: bcrypt did not run for this reservation. A window
    /// back at zero is forgotten, so attempts that never reach bcrypt (an
    /// unknown key id, say) leave nothing behind in memory.
    pub fn refund(&self, r: Reservation) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kw) = w.by_key.get_mut(&r.key) {
            if kw.start_ms == r.key_window {
                kw.used = kw.used.saturating_sub(1);
                if kw.used == 0 {
                    w.by_key.remove(&r.key);
                }
            }
        }
        let source_id = (r.key, r.net);
        if let Some(sw) = w.by_source.get_mut(&source_id) {
            if sw.start_ms == r.source_window {
                sw.used = sw.used.saturating_sub(1);
                if sw.used == 0 {
                    w.by_source.remove(&source_id);
                }
            }
        }
    }

    /// How many windows are kept (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn key(s: &str) -> KeyId {
        KeyId::parse(s).unwrap()
    }

    fn net(last: u8) -> ClientNet {
        ClientNet::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn a_source_gets_its_runs_per_minute_then_is_told_when_to_retry() {
        let b = BcryptBudget::new(3, 100, 1000);
        let k = key("aaaaaaaaaaaaaaaa");
        for _ in 0..3 {
            assert!(b.try_reserve(&k, net(1), 1_000).is_ok());
        }
        assert_eq!(
            b.try_reserve(&k, net(1), 21_000).unwrap_err(),
            OverBudget {
                retry_after_secs: 40
            }
        );
        // Another address still has its own budget; a new window resets.
        assert!(b.try_reserve(&k, net(2), 21_000).is_ok());
        assert!(b.try_reserve(&k, net(1), 61_000).is_ok());
    }

    #[test]
    fn the_key_id_cap_holds_whatever_the_addresses() {
        let b = BcryptBudget::new(2, 5, 1000);
        let k = key("bbbbbbbbbbbbbbbb");
        let granted = (0..20)
            .filter(|i| b.try_reserve(&k, net(*i), 0).is_ok())
            .count();
        assert_eq!(granted, 5);
        // Other key ids are not affected.
        assert!(b.try_reserve(&key("cccccccccccccccc"), net(1), 0).is_ok());
    }

    #[test]
    fn a_refund_gives_the_run_back_in_the_same_window_only() {
        let b = BcryptBudget::new(1, 10, 1000);
        let k = key("dddddddddddddddd");
        let r = b.try_reserve(&k, net(1), 0).unwrap();
        assert!(b.try_reserve(&k, net(1), 0).is_err());
        b.refund(r);
        let r = b.try_reserve(&k, net(1), 0).unwrap();
        // A refund from an old window does not credit the new one.
        assert!(b.try_reserve(&k, net(1), 60_000).is_ok());
        b.refund(r);
        assert!(b.try_reserve(&k, net(1), 60_000).is_err());
    }

    #[test]
    fn refunded_attempts_leave_nothing_in_memory() {
        let b = BcryptBudget::new(20, 100, 1000);
        for i in 0..10_000u32 {
            let k = key(&format!("{i:016}"));
            let r = b.try_reserve(&k, net(1), 0).unwrap();
            b.refund(r);
        }
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn memory_stays_bounded_and_expired_windows_are_swept() {
        let b = BcryptBudget::new(1, 1000, 101);
        let k = key("eeeeeeeeeeeeeeee");
        let mut refused = 0;
        for i in 0..5000u32 {
            let n = ClientNet::of(IpAddr::V4(Ipv4Addr::from(i)));
            if b.try_reserve(&k, n, 0).is_err() {
                refused += 1;
            }
            assert!(b.tracked() <= 101);
        }
        assert!(refused > 0, "a full map refuses untracked sources");
        // A minute later the old windows are swept and new sources fit.
        assert!(b
            .try_reserve(&k, ClientNet::of(IpAddr::V4(Ipv4Addr::LOCALHOST)), 60_000)
            .is_ok());
        assert!(b.tracked() <= 3);
    }

    /// A realistic clock reading (epoch milliseconds, late 2023).
    const T: i64 = 1_700_000_000_000;

    #[test]
    fn windows_last_exactly_a_minute_on_a_real_clock() {
        let b = BcryptBudget::new(1, 100, 1000);
        let k = key("ffffffffffffffff");
        assert!(b.try_reserve(&k, net(1), T).is_ok());
        assert_eq!(
            b.try_reserve(&k, net(1), T + 59_999).unwrap_err(),
            OverBudget {
                retry_after_secs: 1
            }
        );
        assert!(b.try_reserve(&k, net(1), T + 60_000).is_ok());
    }

    #[test]
    fn a_clock_that_goes_back_starts_a_new_window() {
        let b = BcryptBudget::new(1, 100, 1000);
        let k = key("gggggggggggggggg");
        assert!(b.try_reserve(&k, net(1), T).is_ok());
        assert!(b.try_reserve(&k, net(1), T).is_err());
        // A window that starts in the future is not the current one.
        assert!(b.try_reserve(&k, net(1), T - 1).is_ok());
    }

    #[test]
    fn a_full_map_refuses_new_sources_but_not_the_ones_it_tracks() {
        // 6 windows at most: the key id's and 4 sources' leave room for no
        // new pair (a new source may need 2).
        let b = BcryptBudget::new(10, 100, 6);
        let k = key("hhhhhhhhhhhhhhhh");
        for i in 1..=4 {
            assert!(b.try_reserve(&k, net(i), T).is_ok(), "net {i}");
        }
        assert_eq!(b.tracked(), 5);
        assert_eq!(
            b.try_reserve(&k, net(5), T).unwrap_err(),
            OverBudget {
                retry_after_secs: 60
            }
        );
        assert!(b.try_reserve(&k, net(1), T).is_ok(), "a tracked source");
        assert_eq!(b.tracked(), 5);
    }

    #[test]
    fn a_sweep_that_frees_just_enough_room_admits_the_new_source() {
        let b = BcryptBudget::new(10, 100, 6);
        let (a, bb, c, d) = (
            key("aaaaaaaaaaaaaaaa"),
            key("bbbbbbbbbbbbbbbb"),
            key("cccccccccccccccc"),
            key("dddddddddddddddd"),
        );
        assert!(b.try_reserve(&a, net(1), T).is_ok());
        assert!(b.try_reserve(&bb, net(2), T + 30_000).is_ok());
        assert!(b.try_reserve(&c, net(3), T + 30_000).is_ok());
        assert_eq!(b.tracked(), 6);
        // A minute after T, a's two windows have ended: sweeping them
        // leaves 4, and a new pair fits exactly.
        assert!(b.try_reserve(&d, net(4), T + 60_000).is_ok());
        assert_eq!(b.tracked(), 6);
    }

    #[test]
    fn a_refund_gives_the_key_id_its_run_back_too() {
        let b = BcryptBudget::new(10, 1, 1000);
        let k = key("iiiiiiiiiiiiiiii");
        let r = b.try_reserve(&k, net(1), T).unwrap();
        assert!(b.try_reserve(&k, net(2), T).is_err());
        b.refund(r);
        let r = b.try_reserve(&k, net(2), T).unwrap();
        // Not into a window that started since.
        assert!(b.try_reserve(&k, net(3), T + 60_000).is_ok());
        b.refund(r);
        assert!(b.try_reserve(&k, net(4), T + 60_000).is_err());
    }

    #[test]
    fn refunding_one_run_keeps_the_others_counted() {
        // Per source: two runs from one network, one given back.
        let b = BcryptBudget::new(2, 100, 1000);
        let k = key("jjjjjjjjjjjjjjjj");
        let r1 = b.try_reserve(&k, net(1), T).unwrap();
        let _r2 = b.try_reserve(&k, net(1), T).unwrap();
        b.refund(r1);
        assert!(b.try_reserve(&k, net(1), T).is_ok());
        assert!(b.try_reserve(&k, net(1), T).is_err());
        // Per key id: two runs from two networks, one given back.
        let b = BcryptBudget::new(10, 2, 1000);
        let r1 = b.try_reserve(&k, net(1), T).unwrap();
        let _r2 = b.try_reserve(&k, net(2), T).unwrap();
        b.refund(r1);
        assert!(b.try_reserve(&k, net(3), T).is_ok());
        assert!(b.try_reserve(&k, net(4), T).is_err());
    }

    #[test]
    fn ipv4_addresses_each_have_their_own_budget() {
        let b = BcryptBudget::new(1, 1000, 1000);
        let k = key("kkkkkkkkkkkkkkkk");
        for i in 0..=255 {
            assert!(b.try_reserve(&k, net(i), T).is_ok(), "10.0.0.{i}");
        }
        let other = ClientNet::of(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)));
        assert!(b.try_reserve(&k, other, T).is_ok());
        assert_ne!(net(1), ClientNet::UNKNOWN);
    }

    #[test]
    fn ipv6_addresses_count_per_slash_64_and_mapped_v4_as_v4() {
        let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientNet::of(a.into()), ClientNet::of(b.into()));
        assert_ne!(ClientNet::of(a.into()), ClientNet::of(c.into()));
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ClientNet::of(mapped.into()), net(1));
        assert_ne!(ClientNet::of(a.into()), ClientNet::UNKNOWN);
    }
}
