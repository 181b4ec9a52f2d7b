//! Lease calls waiting for events (long polls): one [`Notify`] per account
//! with a waiting call, woken on this instance by whatever makes an event
//! available (an ingest, a release, a requeue). A waiting call holds no
//! store connection and no thread: it holds a [`Waiter`], which counts
//! against two budgets, in total and per account.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::domain::AccountId;

pub struct LeaseWaiters {
    max_total: usize,
    max_per_account: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    total: usize,
    accounts: HashMap<AccountId, Slot>,
}

struct Slot {
    notify: Arc<Notify>,
    waiting: usize,
}

/// One waiting call's place; gives it back when dropped.
pub struct Waiter {
    registry: Arc<LeaseWaiters>,
    account: AccountId,
    notify: Arc<Notify>,
}

impl LeaseWaiters {
    pub fn new(max_total: usize, max_per_account: usize) -> Self {
        Self {
            max_total,
            max_per_account,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing here can leave the map half-updated: a poisoned lock is
        // still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place to wait for `account`'s events, or `None` when the total or
    /// the account's budget is spent (the caller then answers at once).
    pub fn join(self: &Arc<Self>, account: &AccountId) -> Option<Waiter> {
        let mut inner = self.lock();
        if inner.total >= self.max_total {
            return None;
        }
        let per_account = self.max_per_account;
        let slot = inner
            .accounts
            .entry(account.clone())
            .or_insert_with(|| Slot {
                notify: Arc::new(Notify::new()),
                waiting: 0,
            });
        if slot.waiting >= per_account {
            if slot.waiting == 0 {
                inner.accounts.remove(account);
            }
            return None;
        }
        slot.waiting += 1;
        let notify = slot.notify.clone();
        inner.total += 1;
        Some(Waiter {
            registry: self.clone(),
            account: account.clone(),
            notify,
        })
    }

    /// Wakes every call waiting for `account` (they look at the store
    /// again). Cheap when none waits.
    pub fn wake(&self, account: &AccountId) {
        if let Some(slot) = self.lock().accounts.get(account) {
            slot.notify.notify_waiters();
        }
    }

    /// Calls waiting now: (in total, for `account`).
    pub fn waiting(&self, account: &AccountId) -> (usize, usize) {
        let inner = self.lock();
        let mine = inner.accounts.get(account).map_or(0, |s| s.waiting);
        (inner.total, mine)
    }
}

impl Waiter {
    /// A wake-up to wait for. Enable it (`Notified::enable`) before looking
    /// at the store, so a wake-up between the look and the wait is kept.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.total = inner.total.saturating_sub(1);
        if let Some(slot) = inner.accounts.get_mut(&self.account) {
            slot.waiting = slot.waiting.saturating_sub(1);
            if slot.waiting == 0 {
                inner.accounts.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(s: &str) -> AccountId {
        AccountId::parse(s).expect("valid")
    }

    #[test]
    fn waiters_are_bounded_per_account_and_in_total_and_give_their_place_back() {
        let w = Arc::new(LeaseWaiters::new(3, 2));
        let (a, b) = (acct("a"), acct("b"));
        let a1 = w.join(&a).expect("room");
        let a2 = w.join(&a).expect("room");
        assert!(w.join(&a).is_none(), "the account's budget is spent");
        let b1 = w.join(&b).expect("room");
        assert!(w.join(&b).is_none(), "the total is spent");
        assert_eq!(w.waiting(&a), (3, 2));
        drop(a1);
        assert_eq!(w.waiting(&a), (2, 1));
        let b2 = w.join(&b).expect("a place came back");
        drop((a2, b1, b2));
        assert_eq!(w.waiting(&a), (0, 0));
        assert!(
            w.lock().accounts.is_empty(),
            "no entry outlives its waiters"
        );
    }

    #[test]
    fn a_zero_budget_refuses_every_waiter() {
        let w = Arc::new(LeaseWaiters::new(10, 0));
        assert!(w.join(&acct("a")).is_none());
        assert!(w.lock().accounts.is_empty());
    }

    #[tokio::test]
    async fn a_wake_up_between_looking_and_waiting_is_not_lost() {
        let w = Arc::new(LeaseWaiters::new(10, 10));
        let a = acct("a");
        let waiter = w.join(&a).expect("room");
        let notified = waiter.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // ... the caller looks at the store here and finds nothing ...
        w.wake(&a);
        tokio::time::timeout(std::time::Duration::from_secs(1), notified)
            .await
            .expect("woken");
        // Another account's wake-up does not reach it.
        let notified = waiter.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        w.wake(&acct("b"));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), notified)
                .await
                .is_err()
        );
    }
}
