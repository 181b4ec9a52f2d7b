//! Consumer leases on DynamoDB (design and request counts: docs/dynamodb.md,
//! "Leases").
//!
//! The event item (`EV#…` / `E`) holds the lease state (`lc`, `lu`, `lid`,
//! `q`) and every change to it is conditional on the state it was read in,
//! so of two calls racing for one event exactly one wins. Beside it, one
//! marker per undelivered, unquarantined event says where leases find it:
//! `AV#{account}` (available, oldest first) or `LX#{account}` (leased, by
//! the end of the lease, so the ended ones come first). Markers change in
//! the same transaction as the state; a marker of an event since delivered
//! (a DELETE does not know its lease's marker) is removed by the next lease
//! that reads it.

use std::collections::{BTreeSet, HashMap, HashSet};

use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Delete, KeysAndAttributes, Put, TransactWriteItem, Update,
};
use chrono::{DateTime, Utc};

use super::item::{
    self, Item, LeaseEntry, A_DELIVERED_AT, A_LEASED_UNTIL, A_LEASE_COUNT, A_LEASE_ID,
    A_QUARANTINED, PK, SK, TSK, TTL,
};
use super::{
    corrupt, from_millis_saturating, names, reason_code, sdk_err, values, DynamoStore, Message,
    CONDITION_FAILED,
};
use crate::domain::{AccountId, Event, EventId, EventType, LeaseId};
use crate::store::{LeaseRequest, RequeueOutcome, Settled, StoreError};

/// Ended leases one lease call reads at most (the earliest-ended first):
/// oldest-first among them is exact unless more than this many of the
/// account's leases ended and nobody leased their events since.
const ENDED_READ: usize = 1000;
/// Rounds of one lease call when candidates were lost to concurrent calls
/// or were not available after all (markers of events delivered by DELETE,
/// which the round removes).
const LEASE_ROUNDS: usize = 4;
/// DynamoDB's limits per transaction: 100 items, 4 MB (kept well under).
const TX_ITEMS: usize = 100;
const TX_BYTES: usize = 3_500_000;

/// Where a candidate's marker said it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Available,
    /// Leased until (ms), ended.
    Ended(i64),
}

/// Writes that succeed or fail together (one event's), with what they are
/// for. Shared with batch ingest (`super::batch`).
pub(super) struct Unit<T> {
    pub(super) writes: Vec<TransactWriteItem>,
    pub(super) bytes: usize,
    pub(super) tag: T,
    /// Set on a unit dropped by [`DynamoStore::commit_units`]: the
    /// cancellation reasons of its writes, in order (the failed condition's
    /// `ALL_OLD` item among them).
    pub(super) reasons: Vec<CancellationReason>,
}

impl<T> Unit<T> {
    pub(super) fn new(writes: Vec<TransactWriteItem>, bytes: usize, tag: T) -> Self {
        Self {
            writes,
            bytes,
            tag,
            reasons: Vec::new(),
        }
    }
}

/// One more item for a transaction, given its index and the units it
/// holds at that attempt (a lease record's chunk).
type ExtraItem<'a, T> =
    dyn Fn(usize, &[Unit<T>]) -> Result<Option<TransactWriteItem>, StoreError> + Sync + 'a;

/// What a lease unit leased (`None`: the removal of a stale marker).
struct Took {
    entry: LeaseEntry,
    /// The event item as the lease left it.
    event: Item,
}

fn update(
    table: &str,
    key: Item,
    expr: &str,
    cond: Option<&str>,
    attr_names: &[&str],
    attr_values: Vec<(&str, AttributeValue)>,
) -> Result<TransactWriteItem, StoreError> {
    let mut u = Update::builder()
        .table_name(table)
        .set_key(Some(key))
        .update_expression(expr)
        .set_expression_attribute_names(Some(names(attr_names)));
    if !attr_values.is_empty() {
        u = u.set_expression_attribute_values(Some(values(attr_values)));
    }
    if let Some(c) = cond {
        u = u.condition_expression(c);
    }
    Ok(TransactWriteItem::builder()
        .update(u.build().map_err(StoreError::internal)?)
        .build())
}

fn delete(table: &str, key: Item) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder()
        .delete(
            Delete::builder()
                .table_name(table)
                .set_key(Some(key))
                .build()
                .map_err(StoreError::internal)?,
        )
        .build())
}

fn put(table: &str, it: Item) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder()
        .put(
            Put::builder()
                .table_name(table)
                .set_item(Some(it))
                .build()
                .map_err(StoreError::internal)?,
        )
        .build())
}

fn event_type_of(it: &Item) -> Result<EventType, StoreError> {
    EventType::parse(item::get_s(it, item::A_TYPE, "event.event_type")?)
        .map_err(|_| corrupt("event.event_type"))
}

/// Approximate bytes of the event an item holds (out-of-line metadata
/// counted at its largest).
fn event_bytes(it: &Item) -> usize {
    let parts = item::meta_parts(it).unwrap_or(0);
    item::approx_bytes(it).saturating_add(parts.saturating_mul(item::PART_BYTES))
}

/// Ids in the order asked (each once), or all of the lease's.
fn settle_order(wanted: Option<&[EventId]>, entries: &[LeaseEntry]) -> Vec<EventId> {
    match wanted {
        Some(w) => {
            let mut seen = HashSet::new();
            w.iter().copied().filter(|id| seen.insert(*id)).collect()
        }
        None => entries.iter().map(|e| e.id).collect(),
    }
}

impl DynamoStore {
    /// A strongly consistent Query returning at most `max` items (keys of
    /// markers: no `Select`, so an index answers with its projection).
    async fn query_keys(
        &self,
        index: Option<&str>,
        key_condition: &str,
        attr_names: HashMap<String, String>,
        attr_values: HashMap<String, AttributeValue>,
        max: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let mut out: Vec<Item> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let left = max.saturating_sub(out.len()).max(1);
            let page = self
                .client
                .query()
                .table_name(&self.events)
                .set_index_name(index.map(str::to_owned))
                .consistent_read(true)
                .key_condition_expression(key_condition)
                .set_expression_attribute_names(Some(attr_names.clone()))
                .set_expression_attribute_values(Some(attr_values.clone()))
                .set_exclusive_start_key(start.take())
                .limit(i32::try_from(left).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(sdk_err)?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < max => start = Some(k),
                _ => {
                    out.truncate(max);
                    return Ok(out);
                }
            }
        }
    }

    /// The oldest available events by their markers: up to `want` never
    /// leased (or released), and up to [`ENDED_READ`] whose lease ended by
    /// `now`; both Queries at once. Oldest first, at most `want`.
    async fn lease_candidates(
        &self,
        account: &AccountId,
        event_type: Option<&EventType>,
        now_ms: i64,
        want: usize,
    ) -> Result<Vec<(EventId, Marker)>, StoreError> {
        let av = item::s(item::available_pk(account));
        let lx = item::s(item::leased_pk(account));
        let end = item::leased_sk_end(now_ms);
        let (available, ended) = match event_type {
            None => tokio::try_join!(
                self.query_keys(
                    None,
                    "#pk = :pk",
                    names(&[PK]),
                    values(vec![(":pk", av)]),
                    want
                ),
                self.query_keys(
                    None,
                    "#pk = :pk AND #sk < :end",
                    names(&[PK, SK]),
                    values(vec![(":pk", lx), (":end", item::s(end))]),
                    ENDED_READ,
                )
            )?,
            Some(t) => {
                let h = item::type_hash(t);
                let range = "#pk = :pk AND #tsk BETWEEN :lo AND :hi";
                tokio::try_join!(
                    self.query_keys(
                        Some(item::BY_TYPE_INDEX),
                        range,
                        names(&[PK, TSK]),
                        values(vec![
                            (":pk", av),
                            (":lo", item::s(format!("{h}#"))),
                            (":hi", item::s(format!("{h}$"))),
                        ]),
                        want,
                    ),
                    self.query_keys(
                        Some(item::BY_TYPE_INDEX),
                        range,
                        names(&[PK, TSK]),
                        values(vec![
                            (":pk", lx),
                            (":lo", item::s(format!("{h}#"))),
                            (":hi", item::s(format!("{h}#{end}"))),
                        ]),
                        ENDED_READ,
                    )
                )?
            }
        };
        let mut out = Vec::with_capacity(available.len() + ended.len());
        for m in &available {
            out.push((item::marker_event_id(m)?, Marker::Available));
        }
        for m in &ended {
            out.push((
                item::marker_event_id(m)?,
                Marker::Ended(item::marker_until(m)?),
            ));
        }
        out.sort_by_key(|(id, _)| *id);
        out.dedup_by_key(|(id, _)| *id);
        out.truncate(want);
        Ok(out)
    }

    /// Consistent BatchGetItem of the events' items (every key, however
    /// many answers it takes), by id.
    async fn event_items(
        &self,
        account: &AccountId,
        ids: &[EventId],
    ) -> Result<HashMap<EventId, Item>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|id| item::key(item::event_pk(account, id), item::EVENT_SK))
                .collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(StoreError::internal)?,
            );
            let mut backoff_ms = 10u64;
            while let Some(req) = request.take() {
                let answer = self
                    .client
                    .batch_get_item()
                    .request_items(&self.events, req)
                    .send()
                    .await
                    .map_err(sdk_err)?;
                for it in answer
                    .responses
                    .and_then(|mut r| r.remove(&self.events))
                    .unwrap_or_default()
                {
                    out.insert(item::get_event_id(&it)?, it);
                }
                request = answer
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.events))
                    .filter(|k| !k.keys().is_empty());
                if request.is_some() {
                    tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(200);
                }
            }
        }
        Ok(out)
    }

    /// Commits units in transactions of at most 100 items (one of them
    /// kept for `extra`) and ~3.5 MB, all at once. A unit whose condition fails is dropped and its transaction
    /// sent again without it. `extra` adds one item to a transaction (given
    /// the units it holds at that attempt), e.g. a lease record chunk.
    /// Returns (committed, dropped).
    pub(super) async fn commit_units<T>(
        &self,
        units: Vec<Unit<T>>,
        extra: Option<&ExtraItem<'_, T>>,
    ) -> Result<(Vec<Unit<T>>, Vec<Unit<T>>), StoreError> {
        let mut chunks: Vec<Vec<Unit<T>>> = Vec::new();
        let (mut items, mut bytes) = (0usize, 0usize);
        let room = TX_ITEMS - usize::from(extra.is_some());
        for u in units {
            let fits = chunks.last().is_some_and(|c| {
                !c.is_empty() && items + u.writes.len() <= room && bytes + u.bytes <= TX_BYTES
            });
            if !fits {
                chunks.push(Vec::new());
                (items, bytes) = (0, 0);
            }
            items += u.writes.len();
            bytes += u.bytes;
            if let Some(c) = chunks.last_mut() {
                c.push(u);
            }
        }
        let results = futures::future::join_all(
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| self.commit_chunk(i, c, extra)),
        )
        .await;
        let (mut done, mut dropped) = (Vec::new(), Vec::new());
        for r in results {
            let (d, x) = r?;
            done.extend(d);
            dropped.extend(x);
        }
        Ok((done, dropped))
    }

    async fn commit_chunk<T>(
        &self,
        index: usize,
        mut units: Vec<Unit<T>>,
        extra: Option<&ExtraItem<'_, T>>,
    ) -> Result<(Vec<Unit<T>>, Vec<Unit<T>>), StoreError> {
        let mut dropped = Vec::new();
        while !units.is_empty() {
            let mut writes = Vec::new();
            let mut owner = Vec::new();
            for (i, u) in units.iter().enumerate() {
                writes.extend(u.writes.iter().cloned());
                owner.extend(std::iter::repeat_n(i, u.writes.len()));
            }
            if let Some(w) = extra.map(|f| f(index, &units)).transpose()?.flatten() {
                writes.push(w);
            }
            let Some(reasons) = self.transact(writes).await? else {
                return Ok((units, dropped));
            };
            let failed: BTreeSet<usize> = reasons
                .iter()
                .enumerate()
                .filter(|(_, r)| reason_code(r) == CONDITION_FAILED)
                .filter_map(|(i, _)| owner.get(i).copied())
                .collect();
            if failed.is_empty() {
                return Err(StoreError::Internal(Box::new(Message(
                    "unexpected transaction cancellation",
                ))));
            }
            let mut keep = Vec::with_capacity(units.len());
            for (i, mut u) in units.into_iter().enumerate() {
                if failed.contains(&i) {
                    u.reasons = reasons
                        .iter()
                        .zip(&owner)
                        .filter(|(_, o)| **o == i)
                        .map(|(r, _)| r.clone())
                        .collect();
                    dropped.push(u);
                } else {
                    keep.push(u);
                }
            }
            units = keep;
        }
        Ok((units, dropped))
    }

    /// The writes that lease one event, conditional on the state it was
    /// read in (`ev`, found through `marker`).
    fn lease_unit(
        &self,
        account: &AccountId,
        req: &LeaseRequest,
        ev: &Item,
        marker: Marker,
    ) -> Result<Unit<Option<Took>>, StoreError> {
        let id = item::get_event_id(ev)?;
        let lc_old = item::get_opt_n(ev, A_LEASE_COUNT, "event.lease_count")?.unwrap_or(0);
        let lc = lc_old.saturating_add(1);
        let quarantine = lc >= i64::from(req.max_leases.max(1));
        let until = req.leased_until.timestamp_millis();
        let type_hash = item::type_hash(&event_type_of(ev)?);
        let lease = req.lease_id.to_string();

        let (lu_cond, old_marker) = match marker {
            Marker::Available => (
                "attribute_not_exists(#lu)",
                item::key(item::available_pk(account), id.to_string()),
            ),
            Marker::Ended(m) => (
                "#lu = :olu",
                item::key(item::leased_pk(account), item::leased_sk(m, &id)),
            ),
        };
        let lc_cond = if lc_old == 0 {
            "(attribute_not_exists(#lc) OR #lc = :olc)"
        } else {
            "#lc = :olc"
        };
        let cond = format!(
            "attribute_exists(#pk) AND attribute_not_exists(#da) AND attribute_not_exists(#q) \
             AND {lu_cond} AND {lc_cond}"
        );
        let mut vals = vec![
            (":olc", item::n(lc_old)),
            (":lc", item::n(lc)),
            (":lu", item::n(until)),
            (":lid", item::s(lease.clone())),
        ];
        if let Marker::Ended(m) = marker {
            vals.push((":olu", item::n(m)));
        }
        let mut set = "SET #lc = :lc, #lu = :lu, #lid = :lid".to_owned();
        if quarantine {
            set.push_str(", #q = :one");
            vals.push((":one", item::n(1)));
        }
        let event_key = item::key(item::event_pk(account, &id), item::EVENT_SK);
        let inbox_key = item::key(item::inbox_pk(account), item::inbox_sk(&id));
        let mut writes = vec![update(
            &self.events,
            event_key,
            &set,
            Some(&cond),
            &[
                PK,
                A_DELIVERED_AT,
                A_QUARANTINED,
                A_LEASED_UNTIL,
                A_LEASE_COUNT,
                A_LEASE_ID,
            ],
            vals,
        )?];
        let mut after = ev.clone();
        after.insert(A_LEASE_COUNT.to_owned(), item::n(lc));
        after.insert(A_LEASED_UNTIL.to_owned(), item::n(until));
        after.insert(A_LEASE_ID.to_owned(), item::s(lease));
        let mut bytes = 1024;
        if quarantine {
            after.insert(A_QUARANTINED.to_owned(), item::n(1));
            let entry = item::quarantine_entry(&after, account, &id)?;
            bytes += item::item_size(&entry);
            writes.push(delete(&self.events, inbox_key)?);
            writes.push(put(&self.events, entry)?);
        } else {
            writes.push(update(
                &self.events,
                inbox_key,
                "SET #lc = :lc, #lu = :lu",
                Some("attribute_exists(#pk)"),
                &[PK, A_LEASE_COUNT, A_LEASED_UNTIL],
                vec![(":lc", item::n(lc)), (":lu", item::n(until))],
            )?);
            writes.push(put(
                &self.events,
                item::leased_marker(account, &type_hash, until, &id),
            )?);
        }
        writes.push(delete(&self.events, old_marker)?);
        Ok(Unit::new(
            writes,
            bytes,
            Some(Took {
                entry: LeaseEntry {
                    id,
                    type_hash,
                    quarantined: quarantine,
                    parts: item::meta_parts(ev)?,
                },
                event: after,
            }),
        ))
    }

    pub(super) async fn lease_inner(
        &self,
        account: &AccountId,
        req: &LeaseRequest,
    ) -> Result<Vec<Event>, StoreError> {
        let limit = usize::try_from(req.limit.clamp(1, 100)).unwrap_or(100);
        let now = req.now.timestamp_millis();
        let mut took: Vec<Took> = Vec::new();
        let mut bytes = 0usize;
        for round in 0..LEASE_ROUNDS {
            let want = limit - took.len();
            let candidates = self
                .lease_candidates(account, req.event_type.as_ref(), now, want)
                .await?;
            if candidates.is_empty() {
                break;
            }
            // All there is, when fewer than asked for.
            let exhausted = candidates.len() < want;
            let ids: Vec<EventId> = candidates.iter().map(|(id, _)| *id).collect();
            let items = self.event_items(account, &ids).await?;
            let mut units = Vec::new();
            let mut full = false;
            // Candidates that turned out not to be available.
            let mut unusable = 0usize;
            for (id, marker) in candidates {
                let Some(ev) = items.get(&id) else {
                    // Purged: its marker is left over.
                    units.push(self.stale_marker_unit(account, &id, marker)?);
                    unusable += 1;
                    continue;
                };
                if ev.contains_key(A_DELIVERED_AT) {
                    // Delivered by DELETE while leased: its marker is left over.
                    units.push(self.stale_marker_unit(account, &id, marker)?);
                    unusable += 1;
                    continue;
                }
                let lu = item::get_opt_n(ev, A_LEASED_UNTIL, "event.leased_until")?;
                let as_marked = match marker {
                    Marker::Available => lu.is_none(),
                    Marker::Ended(m) => lu == Some(m) && m <= now,
                };
                if !as_marked || ev.contains_key(A_QUARANTINED) {
                    // Changed since the marker was read (another call took
                    // it): not available.
                    unusable += 1;
                    continue;
                }
                let size = event_bytes(ev);
                if bytes.saturating_add(size) > req.max_bytes && (bytes > 0) {
                    full = true;
                    break;
                }
                bytes = bytes.saturating_add(size);
                units.push(self.lease_unit(account, req, ev, marker)?);
            }
            let record = |chunk: usize, units: &[Unit<Option<Took>>]| {
                let entries: Vec<LeaseEntry> = units
                    .iter()
                    .filter_map(|u| u.tag.as_ref().map(|t| t.entry.clone()))
                    .collect();
                if entries.is_empty() {
                    return Ok(None);
                }
                put(
                    &self.events,
                    item::lease_chunk_item(
                        account,
                        &req.lease_id,
                        &format!("C#{round:02}#{chunk:03}"),
                        &req.leased_until,
                        &req.forget_after,
                        &entries,
                    ),
                )
                .map(Some)
            };
            let (done, dropped) = self.commit_units(units, Some(&record)).await?;
            let lost = dropped.iter().filter(|u| u.tag.is_some()).count();
            for u in done {
                if let Some(t) = u.tag {
                    took.push(t);
                }
            }
            for u in dropped.iter().filter_map(|u| u.tag.as_ref()) {
                bytes = bytes.saturating_sub(event_bytes(&u.event));
            }
            // Look again only when candidates were lost or not available
            // (their places may go to the next oldest) and there may be more.
            if full || exhausted || took.len() >= limit || lost + unusable == 0 {
                break;
            }
        }
        took.sort_by_key(|t| t.entry.id);
        let mut out = Vec::with_capacity(took.len());
        for t in &took {
            out.push(self.to_event(&t.event).await?);
        }
        Ok(out)
    }

    /// Removes the marker of an event that is gone or delivered (it can
    /// never be available again, so no condition is needed).
    fn stale_marker_unit(
        &self,
        account: &AccountId,
        id: &EventId,
        marker: Marker,
    ) -> Result<Unit<Option<Took>>, StoreError> {
        let key = match marker {
            Marker::Available => item::key(item::available_pk(account), id.to_string()),
            Marker::Ended(m) => item::key(item::leased_pk(account), item::leased_sk(m, id)),
        };
        Ok(Unit::new(vec![delete(&self.events, key)?], 200, None))
    }

    /// A lease's end and entries; `None` when unknown or kept past the
    /// cutoff (TTL deletes late).
    async fn lease_record(
        &self,
        account: &AccountId,
        lease: &LeaseId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<(i64, Vec<LeaseEntry>)>, StoreError> {
        let chunks = self
            .query_keys(
                None,
                "#pk = :pk",
                names(&[PK]),
                values(vec![(":pk", item::s(item::lease_pk(account, lease)))]),
                usize::MAX,
            )
            .await?;
        if chunks.is_empty() {
            return Ok(None);
        }
        let (until, entries) = item::lease_record(&chunks)?;
        if until <= delivered_cutoff {
            return Ok(None);
        }
        Ok(Some((until.timestamp_millis(), entries)))
    }

    /// Settles the listed events of a lease with one unit of writes each
    /// (`unit` gives it for an entry); what the lease no longer holds is
    /// stale.
    async fn settle(
        &self,
        account: &AccountId,
        lease: &LeaseId,
        wanted: Option<&[EventId]>,
        delivered_cutoff: DateTime<Utc>,
        unit: impl Fn(i64, &LeaseEntry) -> Result<Vec<TransactWriteItem>, StoreError>,
    ) -> Result<Option<Settled>, StoreError> {
        let Some((until, entries)) = self.lease_record(account, lease, delivered_cutoff).await?
        else {
            return Ok(None);
        };
        let order = settle_order(wanted, &entries);
        let by_id: HashMap<EventId, &LeaseEntry> = entries.iter().map(|e| (e.id, e)).collect();
        let mut units = Vec::new();
        for id in &order {
            if let Some(e) = by_id.get(id) {
                units.push(Unit::new(unit(until, e)?, 1024, *id));
            }
        }
        let (done, _) = self.commit_units(units, None).await?;
        let done: HashSet<EventId> = done.into_iter().map(|u| u.tag).collect();
        let mut out = Settled::default();
        for id in order {
            if done.contains(&id) {
                out.done.push(id);
            } else {
                out.stale.push(id);
            }
        }
        Ok(Some(out))
    }

    pub(super) async fn ack_leased_inner(
        &self,
        account: &AccountId,
        lease: &LeaseId,
        wanted: Option<&[EventId]>,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        let retention = (now.timestamp_millis() - delivered_cutoff.timestamp_millis()).max(0);
        let expires = from_millis_saturating(now.timestamp_millis().saturating_add(retention));
        let lease_text = lease.to_string();
        self.settle(account, lease, wanted, delivered_cutoff, |until, e| {
            let pk = item::event_pk(account, &e.id);
            let mut writes = vec![
                update(
                    &self.events,
                    item::key(pk.clone(), item::EVENT_SK),
                    "SET #da = :now, #ttl = :ttl",
                    Some("attribute_exists(#pk) AND attribute_not_exists(#da) AND #lid = :lid"),
                    &[PK, A_DELIVERED_AT, TTL, A_LEASE_ID],
                    vec![
                        (":now", item::ms(&now)),
                        (":ttl", item::ttl_secs(&expires)),
                        (":lid", item::s(lease_text.clone())),
                    ],
                )?,
                delete(
                    &self.events,
                    item::key(item::inbox_pk(account), item::inbox_sk(&e.id)),
                )?,
                delete(
                    &self.events,
                    item::key(item::quarantine_pk(account), item::inbox_sk(&e.id)),
                )?,
                delete(
                    &self.events,
                    item::key(item::leased_pk(account), item::leased_sk(until, &e.id)),
                )?,
            ];
            for i in 0..e.parts {
                writes.push(update(
                    &self.events,
                    item::key(pk.clone(), item::part_sk(i)),
                    "SET #ttl = :ttl",
                    Some("attribute_exists(#pk)"),
                    &[PK, TTL],
                    vec![(":ttl", item::ttl_secs(&expires))],
                )?);
            }
            Ok(writes)
        })
        .await
    }

    pub(super) async fn release_leased_inner(
        &self,
        account: &AccountId,
        lease: &LeaseId,
        wanted: Option<&[EventId]>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        let lease_text = lease.to_string();
        self.settle(account, lease, wanted, delivered_cutoff, |until, e| {
            let mut writes = vec![update(
                &self.events,
                item::key(item::event_pk(account, &e.id), item::EVENT_SK),
                "REMOVE #lu, #lid",
                Some("attribute_exists(#pk) AND attribute_not_exists(#da) AND #lid = :lid"),
                &[PK, A_DELIVERED_AT, A_LEASED_UNTIL, A_LEASE_ID],
                vec![(":lid", item::s(lease_text.clone()))],
            )?];
            let entry_pk = if e.quarantined {
                item::quarantine_pk(account)
            } else {
                item::inbox_pk(account)
            };
            writes.push(update(
                &self.events,
                item::key(entry_pk, item::inbox_sk(&e.id)),
                "REMOVE #lu",
                Some("attribute_exists(#pk)"),
                &[PK, A_LEASED_UNTIL],
                vec![],
            )?);
            if !e.quarantined {
                writes.push(delete(
                    &self.events,
                    item::key(item::leased_pk(account), item::leased_sk(until, &e.id)),
                )?);
                writes.push(put(
                    &self.events,
                    item::available_marker(account, &e.type_hash, &e.id),
                )?);
            }
            Ok(writes)
        })
        .await
    }

    pub(super) async fn requeue_inner(
        &self,
        account: &AccountId,
        id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<RequeueOutcome, StoreError> {
        let event_key = item::key(item::event_pk(account, id), item::EVENT_SK);
        for _ in 0..4 {
            let Some(ev) = self.get_item(&self.events, event_key.clone()).await? else {
                return Ok(RequeueOutcome::NotFound);
            };
            if item::get_s(&ev, item::A_ACCOUNT, "event.account")? != account.as_str() {
                return Ok(RequeueOutcome::NotFound);
            }
            if let Some(da) = item::get_opt_ms(&ev, A_DELIVERED_AT, "event.delivered_at")? {
                return Ok(if da <= delivered_cutoff {
                    RequeueOutcome::NotFound
                } else {
                    RequeueOutcome::NotQuarantined
                });
            }
            if !ev.contains_key(A_QUARANTINED) {
                return Ok(RequeueOutcome::NotQuarantined);
            }
            let lc_old = item::get_opt_n(&ev, A_LEASE_COUNT, "event.lease_count")?.unwrap_or(0);
            let writes = vec![
                update(
                    &self.events,
                    event_key.clone(),
                    "SET #lc = :zero REMOVE #lu, #lid, #q",
                    Some(
                        "attribute_exists(#pk) AND attribute_not_exists(#da) \
                         AND attribute_exists(#q) AND #lc = :olc",
                    ),
                    &[
                        PK,
                        A_DELIVERED_AT,
                        A_QUARANTINED,
                        A_LEASE_COUNT,
                        A_LEASED_UNTIL,
                        A_LEASE_ID,
                    ],
                    vec![(":zero", item::n(0)), (":olc", item::n(lc_old))],
                )?,
                delete(
                    &self.events,
                    item::key(item::quarantine_pk(account), item::inbox_sk(id)),
                )?,
                put(&self.events, item::requeued_inbox_entry(&ev, account, id)?)?,
                put(
                    &self.events,
                    item::available_marker(account, &item::type_hash(&event_type_of(&ev)?), id),
                )?,
            ];
            if self.transact(writes).await?.is_some() {
                // Changed since it was read: look again.
                continue;
            }
            let mut after = ev;
            for k in [A_LEASED_UNTIL, A_LEASE_ID, A_QUARANTINED] {
                after.remove(k);
            }
            after.insert(A_LEASE_COUNT.to_owned(), item::n(0));
            return Ok(RequeueOutcome::Requeued(self.to_event(&after).await?));
        }
        Err(StoreError::Unavailable(Box::new(Message(
            "event kept changing during requeue",
        ))))
    }
}

impl DynamoStore {
    /// Writes the availability marker of every event of `account` that is
    /// available and has none: events written by a version before leases.
    /// Pages through the account's inbox partition (100 entries a Query);
    /// each marker is written in a transaction with a condition that the
    /// event is still undelivered, unquarantined and never leased, so it is
    /// safe beside a running service and idempotent. Admin path (the CLI's
    /// `dynamodb add-lease-markers`), not bounded by the request budget.
    /// Returns how many events it looked at and how many markers it wrote
    /// (a marker that was there already is written again).
    pub async fn add_lease_markers(&self, account: &AccountId) -> Result<(u64, u64), StoreError> {
        let (mut seen, mut written) = (0u64, 0u64);
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.events)
                .consistent_read(true)
                .key_condition_expression("#pk = :pk")
                .projection_expression("#sk, #et, #lu")
                .set_expression_attribute_names(Some(names(&[
                    PK,
                    SK,
                    item::A_TYPE,
                    A_LEASED_UNTIL,
                ])))
                .expression_attribute_values(":pk", item::s(item::inbox_pk(account)))
                .limit(100)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(sdk_err)?;
            let mut units = Vec::new();
            for it in page.items.unwrap_or_default() {
                seen += 1;
                if it.contains_key(A_LEASED_UNTIL) {
                    continue;
                }
                let id = EventId::parse(item::get_s(&it, SK, "inbox key")?)
                    .ok_or(corrupt("inbox key"))?;
                let check = aws_sdk_dynamodb::types::ConditionCheck::builder()
                    .table_name(&self.events)
                    .set_key(Some(item::key(
                        item::event_pk(account, &id),
                        item::EVENT_SK,
                    )))
                    .condition_expression(
                        "attribute_exists(#pk) AND attribute_not_exists(#da) \
                         AND attribute_not_exists(#lu) AND attribute_not_exists(#q)",
                    )
                    .set_expression_attribute_names(Some(names(&[
                        PK,
                        A_DELIVERED_AT,
                        A_LEASED_UNTIL,
                        A_QUARANTINED,
                    ])))
                    .build()
                    .map_err(StoreError::internal)?;
                let type_hash = item::type_hash(&event_type_of(&it)?);
                units.push(Unit::new(
                    vec![
                        TransactWriteItem::builder().condition_check(check).build(),
                        put(
                            &self.events,
                            item::available_marker(account, &type_hash, &id),
                        )?,
                    ],
                    200,
                    (),
                ));
            }
            let (done, _) = self.commit_units(units, None).await?;
            written += done.len() as u64;
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok((seen, written)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settling_lists_each_asked_id_once_in_order_or_the_whole_lease() {
        let (a, b) = (EventId::new_v7(), EventId::new_v7());
        let entries = vec![
            LeaseEntry {
                id: a,
                type_hash: "h".into(),
                quarantined: false,
                parts: 0,
            },
            LeaseEntry {
                id: b,
                type_hash: "h".into(),
                quarantined: true,
                parts: 2,
            },
        ];
        assert_eq!(settle_order(None, &entries), vec![a, b]);
        assert_eq!(settle_order(Some(&[b, a, b]), &entries), vec![b, a]);
    }
}
