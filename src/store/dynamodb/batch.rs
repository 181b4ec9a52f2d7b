//! Batch ingest on DynamoDB (design, durability and request counts:
//! docs/dynamodb.md, "Batch ingest").
//!
//! Every event keeps the writes of a single insert — its dedup record
//! (conditional), the event (conditional), its inbox entry and its
//! available marker — as one unit, so each event is written whole with its
//! dedup decision or not at all. Units go into `TransactWriteItems` of at
//! most 100 items (25 events without metadata parts), all sent at once. A
//! transaction cancelled by duplicates is sent again without them (the
//! cancellation carries each original); `BatchWriteItem` is never used,
//! since it has no conditions and so no atomic dedup.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::leases::Unit;
use super::{DynamoStore, Message};
use crate::domain::{AccountId, EventId};
use crate::store::{Fingerprint, Insert, Inserted, StoreError};

/// Rounds of one wave when dedup records change under it (each round
/// sends only the undecided events again).
const ROUNDS: usize = 4;

/// Whose dedup record an event is judged by.
type DedupKey = (AccountId, Fingerprint);

impl DynamoStore {
    /// [`crate::store::Store::insert_events`]: in waves, each holding at
    /// most one event per dedup record (a transaction may not touch one
    /// item twice). The first wave takes the first event of every
    /// fingerprint; a later repeat is then a duplicate of the record as the
    /// events before it left it, decided here without a request — unless
    /// that record is older than its window (possible only with
    /// timestamps further apart than the window), when it goes to the
    /// store in the next wave. A batch of one timestamp is one wave.
    pub(super) async fn insert_events_inner(
        &self,
        events: Vec<Insert>,
    ) -> Result<Vec<Inserted>, StoreError> {
        let mut out: Vec<Option<Inserted>> = vec![None; events.len()];
        let key = |i: usize| -> DedupKey {
            let ins = &events[i];
            (ins.event.account.clone(), ins.dedup.fingerprint)
        };
        let mut remaining: Vec<usize> = (0..events.len()).collect();
        while !remaining.is_empty() {
            let mut seen = HashSet::new();
            let (wave, rest): (Vec<usize>, Vec<usize>) =
                remaining.into_iter().partition(|&i| seen.insert(key(i)));
            for (i, decided) in self.insert_wave(&events, &wave).await? {
                out[i] = Some(decided);
            }
            // In order: what each dedup record holds after the events
            // before `i` (the last one created, or the original repeated).
            let rest: HashSet<usize> = rest.into_iter().collect();
            let mut record: HashMap<DedupKey, (EventId, DateTime<Utc>)> = HashMap::new();
            let mut blocked: HashSet<DedupKey> = HashSet::new();
            remaining = Vec::new();
            for (i, ins) in events.iter().enumerate() {
                let k = key(i);
                if out[i].is_none() && rest.contains(&i) {
                    match record.get(&k) {
                        Some(&(event_id, timestamp))
                            if !blocked.contains(&k)
                                && timestamp.timestamp_millis()
                                    > super::dedup_cutoff(&ins.event, &ins.dedup) =>
                        {
                            out[i] = Some(Inserted::Duplicate {
                                event_id,
                                timestamp,
                            });
                        }
                        _ => {
                            // For the store to judge, after the events of
                            // this record before it.
                            blocked.insert(k.clone());
                            remaining.push(i);
                        }
                    }
                }
                match &out[i] {
                    Some(Inserted::Created) => {
                        record.insert(k, (ins.event.event_id, ins.event.timestamp));
                    }
                    Some(Inserted::Duplicate {
                        event_id,
                        timestamp,
                    }) => {
                        record.insert(k, (*event_id, *timestamp));
                    }
                    None => {}
                }
            }
        }
        out.into_iter()
            .map(|o| {
                o.ok_or_else(|| {
                    StoreError::Internal(Box::new(Message("batch event left undecided")))
                })
            })
            .collect()
    }

    /// Inserts the events `wave` names (no two share a dedup record):
    /// their units in transactions sent at once; the events of a
    /// cancelled transaction that were duplicates are decided from the
    /// cancellation, and the rest sent again.
    async fn insert_wave(
        &self,
        events: &[Insert],
        wave: &[usize],
    ) -> Result<Vec<(usize, Inserted)>, StoreError> {
        let mut decided = Vec::with_capacity(wave.len());
        let mut pending: Vec<usize> = wave.to_vec();
        for _ in 0..ROUNDS {
            if pending.is_empty() {
                return Ok(decided);
            }
            let mut units = Vec::with_capacity(pending.len());
            for &i in &pending {
                let (writes, bytes) = self.insert_writes(&events[i].event, &events[i].dedup)?;
                units.push(Unit::new(writes, bytes, i));
            }
            let (done, dropped) = self.commit_units(units, None).await?;
            decided.extend(done.into_iter().map(|u| (u.tag, Inserted::Created)));
            pending.clear();
            for u in dropped {
                let e = &events[u.tag];
                match self.dedup_verdict(&e.event, &e.dedup, &u.reasons).await? {
                    Some(dup) => decided.push((u.tag, dup)),
                    // The record changed between the cancellation and the
                    // read: decide again.
                    None => pending.push(u.tag),
                }
            }
        }
        if pending.is_empty() {
            Ok(decided)
        } else {
            Err(StoreError::Unavailable(Box::new(Message(
                "dedup records kept changing",
            ))))
        }
    }
}
