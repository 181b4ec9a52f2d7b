//! The event service: what the handlers call. Knows the store trait, the
//! clock and the settings; knows nothing of HTTP.

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::domain::{trunc_ms, AccountId, Event, EventId, EventType, JsonObject, Source};
use crate::state::AppState;
use crate::store::{
    AckOutcome, Dedup, Fingerprint, InboxPage, InboxQuery, Inserted, NewEvent, StoreError,
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
    fn delivered_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
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
        };
        match self.store.insert_event(event, dedup).await? {
            Inserted::Created => {
                self.metrics.events_ingested.inc();
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

    pub async fn inbox(
        &self,
        account: &AccountId,
        query: &InboxQuery,
    ) -> Result<InboxPage, StoreError> {
        self.store.inbox(account, query).await
    }

    pub async fn get_event(
        &self,
        account: &AccountId,
        id: &EventId,
    ) -> Result<Option<Event>, StoreError> {
        let cutoff = self.delivered_cutoff(self.clock.now());
        self.store.get_event(account, id, cutoff).await
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
    /// the window.
    pub async fn purge_once(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let dedup_cutoff = now
            - chrono::Duration::from_std(self.settings.dedup_window)
                .unwrap_or(chrono::Duration::MAX);
        self.store
            .purge(self.delivered_cutoff(now), dedup_cutoff)
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
