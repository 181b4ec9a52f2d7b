//! The event service: what the handlers call. Knows the store trait, the
//! clock and the settings; knows nothing of HTTP. Consumer leases are in
//! [`leases`], the registry of waiting lease calls in [`waiters`].

pub mod idempotency;
pub mod leases;
pub mod waiters;

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::domain::{trunc_ms, AccountId, Event, EventId, EventType, JsonObject, Source};
use crate::state::AppState;
use crate::store::{
    AckOutcome, Dedup, Fingerprint, InboxPage, InboxQuery, Insert, Inserted, NewEvent, StoreError,
};

/// A parsed, valid ingest request.
#[derive(Debug, Clone)]
pub struct CreateEvent {
    pub event_type: EventType,
    /// Exactly as sent; stored and served as this text.
    pub payload: JsonObject,
    pub source: Option<Source>,
    pub metadata: JsonObject,
    /// The dedup fingerprint of (event_type, payload, source).
    pub fingerprint: Fingerprint,
}

#[derive(Debug, Clone)]
pub struct Ingested {
    pub event_id: EventId,
    pub timestamp: DateTime<Utc>,
    pub duplicate: bool,
}

impl AppState {
    pub(crate) fn delivered_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::from_std(self.settings.delivered_retention)
            .unwrap_or(chrono::Duration::MAX)
    }

    pub async fn ingest(
        &self,
        account: &AccountId,
        req: CreateEvent,
    ) -> Result<Ingested, StoreError> {
        let now = self.clock.now();
        let event = NewEvent {
            event_id: self.event_ids.next_id(now),
            account: account.clone(),
            event_type: req.event_type,
            payload: req.payload,
            source: req.source,
            metadata: req.metadata,
            timestamp: trunc_ms(now),
        };
        let (event_id, timestamp) = (event.event_id, event.timestamp);
        let dedup = Dedup {
            fingerprint: req.fingerprint,
            window: self.settings.dedup_window,
            margin: self.settings.dedup_margin(),
        };
        match self.store.insert_event(event, dedup).await? {
            Inserted::Created => {
                self.metrics.events_ingested.inc();
                self.waiters.wake(account);
                Ok(Ingested {
                    event_id,
                    timestamp,
                    duplicate: false,
                })
            }
            Inserted::Duplicate {
                event_id,
                timestamp,
            } => {
                self.metrics.duplicates.inc();
                Ok(Ingested {
                    event_id,
                    timestamp,
                    duplicate: true,
                })
            }
        }
    }

    /// Ingests a batch: every event validated already, each deduplicated
    /// as [`AppState::ingest`] would (a repeat within the batch is a
    /// duplicate of its first), all in one store call; the outcomes in
    /// order. All share the batch's receive time; their ids follow the
    /// batch's order. Nothing is reported written unless the whole call
    /// succeeded.
    pub async fn ingest_batch(
        &self,
        account: &AccountId,
        reqs: Vec<CreateEvent>,
    ) -> Result<Vec<Ingested>, StoreError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let timestamp = trunc_ms(now);
        let inserts: Vec<Insert> = reqs
            .into_iter()
            .map(|req| Insert {
                event: NewEvent {
                    event_id: self.event_ids.next_id(now),
                    account: account.clone(),
                    event_type: req.event_type,
                    payload: req.payload,
                    source: req.source,
                    metadata: req.metadata,
                    timestamp,
                },
                dedup: Dedup {
                    fingerprint: req.fingerprint,
                    window: self.settings.dedup_window,
                    margin: self.settings.dedup_margin(),
                },
            })
            .collect();
        let ids: Vec<EventId> = inserts.iter().map(|i| i.event.event_id).collect();
        let outcomes = self.store.insert_events(inserts).await?;
        if outcomes.len() != ids.len() {
            return Err(StoreError::internal(format!(
                "the store answered {} outcomes for {} events",
                outcomes.len(),
                ids.len()
            )));
        }
        let mut created = false;
        let out = ids
            .into_iter()
            .zip(outcomes)
            .map(|(event_id, outcome)| match outcome {
                Inserted::Created => {
                    self.metrics.events_ingested.inc();
                    created = true;
                    Ingested {
                        event_id,
                        timestamp,
                        duplicate: false,
                    }
                }
                Inserted::Duplicate {
                    event_id,
                    timestamp,
                } => {
                    self.metrics.duplicates.inc();
                    Ingested {
                        event_id,
                        timestamp,
                        duplicate: true,
                    }
                }
            })
            .collect();
        if created {
            self.waiters.wake(account);
        }
        Ok(out)
    }

    pub async fn inbox(
        &self,
        account: &AccountId,
        query: &InboxQuery,
    ) -> Result<InboxPage, StoreError> {
        let now = self.clock.now();
        let mut page = self.store.inbox(account, query).await?;
        page.events = page.events.into_iter().map(|e| e.as_of(now)).collect();
        Ok(page)
    }

    pub async fn get_event(
        &self,
        account: &AccountId,
        id: &EventId,
    ) -> Result<Option<Event>, StoreError> {
        let now = self.clock.now();
        let cutoff = self.delivered_cutoff(now);
        let event = self.store.get_event(account, id, cutoff).await?;
        Ok(event.map(|e| e.as_of(now)))
    }

    pub async fn ack(&self, account: &AccountId, id: &EventId) -> Result<AckOutcome, StoreError> {
        let now = trunc_ms(self.clock.now());
        let outcome = self
            .store
            .ack_event(account, id, now, self.delivered_cutoff(now))
            .await?;
        if outcome == AckOutcome::Acknowledged {
            self.metrics.acks.inc();
        }
        Ok(outcome)
    }

    /// One purge pass: delivered events past retention, dedup records past
    /// the window and its margin (a repeat received inside the window may
    /// still be on its way to the store when the window ends), idempotency
    /// records past their expiry.
    pub async fn purge_once(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let keep = self
            .settings
            .dedup_window
            .saturating_add(self.settings.dedup_margin());
        let dedup_cutoff = now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        self.store
            .purge(self.delivered_cutoff(now), dedup_cutoff, now)
            .await
    }

    /// Runs `purge_once` every `settings.purge_interval` until `shutdown`
    /// resolves.
    pub async fn purge_loop(self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.settings.purge_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = tick.tick() => match self.purge_once().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "purged delivered events past retention"),
                    Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "purge failed"),
                },
            }
        }
    }
}
