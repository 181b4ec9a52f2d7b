//! Consumer leases: what the lease, ack, release and requeue handlers call.
//! A lease call with `wait` looks at the store, and while it finds nothing
//! waits, holding only a [`Waiter`](super::waiters::Waiter), until an event
//! of the account is written on this instance, the recheck interval passes
//! (events written by other instances, leases that ended), the wait ends or
//! the server begins to shut down.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::domain::{trunc_ms, AccountId, Event, EventId, EventType, LeaseId};
use crate::state::AppState;
use crate::store::{LeaseRequest, RequeueOutcome, Settled, StoreError};

/// A parsed, valid lease request.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseParams {
    /// 1..=[`LeaseParams::MAX_LIMIT`].
    pub limit: u32,
    /// How long the lease holds its events.
    pub lease_for: Duration,
    /// How long to wait for events when none is available.
    pub wait: Duration,
    pub event_type: Option<EventType>,
}

impl LeaseParams {
    pub const DEFAULT_LIMIT: u32 = 10;
    pub const MAX_LIMIT: u32 = 100;
    pub const DEFAULT_LEASE_SECS: u64 = 300;
    pub const MAX_LEASE_SECS: u64 = 3600;
    pub const MAX_WAIT_SECS: u64 = 20;
}

impl Default for LeaseParams {
    fn default() -> Self {
        Self {
            limit: Self::DEFAULT_LIMIT,
            lease_for: Duration::from_secs(Self::DEFAULT_LEASE_SECS),
            wait: Duration::ZERO,
            event_type: None,
        }
    }
}

/// What a lease call got: no lease at all when no event was available.
#[derive(Debug, Clone, Default)]
pub struct Leased {
    pub lease_id: Option<LeaseId>,
    pub leased_until: Option<DateTime<Utc>>,
    pub events: Vec<Event>,
}

enum Woke {
    Notified,
    Tick,
    Stopping,
}

impl AppState {
    /// Leases the account's oldest available events; with `wait`, waits for
    /// some (never past `wait`, nor within 2 s of the request timeout, and
    /// never once the server is stopping).
    pub async fn lease(
        &self,
        account: &AccountId,
        params: &LeaseParams,
    ) -> Result<Leased, StoreError> {
        // The whole request must end within its own timeout.
        let wait = params.wait.min(
            self.settings
                .request_timeout
                .saturating_sub(Duration::from_secs(2)),
        );
        let deadline = Instant::now() + wait;
        // Over the waiters' budget: answer at once with what is available.
        let waiter = if wait.is_zero() {
            None
        } else {
            self.waiters.join(account)
        };
        let mut stopping = self.stopping.clone();
        loop {
            let notified = waiter.as_ref().map(|w| w.notified());
            tokio::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let leased = self.lease_once(account, params).await?;
            if waiter.is_none() || !leased.events.is_empty() || *stopping.borrow() {
                return Ok(leased);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(leased);
            }
            let tick = (deadline - now).min(self.settings.lease_recheck);
            let woke = tokio::select! {
                _ = async {
                    if let Some(n) = notified.as_mut().as_pin_mut() {
                        n.await;
                    }
                } => Woke::Notified,
                _ = tokio::time::sleep(tick) => Woke::Tick,
                _ = stopping.wait_for(|s| *s) => Woke::Stopping,
            };
            match woke {
                Woke::Notified => {}
                Woke::Tick if Instant::now() < deadline => {}
                // The wait is over (no store call starts after it), or the
                // server is stopping.
                Woke::Tick | Woke::Stopping => return Ok(leased),
            }
        }
    }

    async fn lease_once(
        &self,
        account: &AccountId,
        params: &LeaseParams,
    ) -> Result<Leased, StoreError> {
        let now = trunc_ms(self.clock.now());
        let lease_for =
            chrono::Duration::from_std(params.lease_for).unwrap_or(chrono::Duration::zero());
        let req = LeaseRequest {
            lease_id: LeaseId::new_random(),
            event_type: params.event_type.clone(),
            limit: params.limit.clamp(1, LeaseParams::MAX_LIMIT),
            now,
            leased_until: now + lease_for,
            forget_after: chrono::Duration::from_std(self.settings.delivered_retention)
                .ok()
                .and_then(|keep| (now + lease_for).checked_add_signed(keep))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            max_leases: self.settings.max_leases.max(1),
            max_bytes: self.settings.max_page_bytes,
        };
        let events = self.store.lease(account, &req).await?;
        if events.is_empty() {
            return Ok(Leased::default());
        }
        self.metrics.leased.inc_by(events.len() as u64);
        Ok(Leased {
            lease_id: Some(req.lease_id),
            leased_until: Some(req.leased_until),
            events: events.into_iter().map(|e| e.as_of(now)).collect(),
        })
    }

    /// Acknowledges events of a lease (all of them when `event_ids` is
    /// `None`); `None` for an unknown lease.
    pub async fn ack_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
    ) -> Result<Option<Settled>, StoreError> {
        let now = trunc_ms(self.clock.now());
        let out = self
            .store
            .ack_leased(
                account,
                lease_id,
                event_ids,
                now,
                self.delivered_cutoff(now),
            )
            .await?;
        if let Some(s) = &out {
            self.metrics.acks.inc_by(s.done.len() as u64);
        }
        Ok(out)
    }

    /// Releases events of a lease: available again at once.
    pub async fn release_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
    ) -> Result<Option<Settled>, StoreError> {
        let now = trunc_ms(self.clock.now());
        let out = self
            .store
            .release_leased(account, lease_id, event_ids, self.delivered_cutoff(now))
            .await?;
        if let Some(s) = out.as_ref().filter(|s| !s.done.is_empty()) {
            self.metrics.released.inc_by(s.done.len() as u64);
            self.waiters.wake(account);
        }
        Ok(out)
    }

    /// Takes a quarantined event out of quarantine.
    pub async fn requeue(
        &self,
        account: &AccountId,
        event_id: &EventId,
    ) -> Result<RequeueOutcome, StoreError> {
        let now = trunc_ms(self.clock.now());
        let out = self
            .store
            .requeue(account, event_id, self.delivered_cutoff(now))
            .await?;
        Ok(match out {
            RequeueOutcome::Requeued(e) => {
                self.metrics.requeued.inc();
                self.waiters.wake(account);
                RequeueOutcome::Requeued(e.as_of(now))
            }
            other => other,
        })
    }
}
