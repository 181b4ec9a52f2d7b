//! Property tests through the service API (the same calls the handlers
//! make): pagination under random interleavings, and deduplication.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};
use triggers_api::clock::ManualClock;
use triggers_api::config::Settings;
use triggers_api::domain::fingerprint::{canonical_form, fingerprint};
use triggers_api::domain::{AccountId, EventId, EventType, LeaseId};
use triggers_api::service::leases::LeaseParams;
use triggers_api::service::CreateEvent;
use triggers_api::store::{Fingerprint, InboxQuery, InboxState, Position, RequeueOutcome};
use triggers_api::AppState;

use crate::support::{test_store, Backend, TestStore};

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn service() -> (AppState, Arc<ManualClock>, TestStore) {
    let store = test_store(Backend::Sqlite).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let state = AppState::new(store.store.clone(), clock.clone(), Settings::default())
        .await
        .unwrap();
    (state, clock, store)
}

fn create(event_type: &str, payload: Value, source: Option<&str>) -> CreateEvent {
    let body = json!({"event_type": event_type, "payload": payload, "source": source});
    CreateEvent::parse_json(&serde_json::to_vec(&body).unwrap(), 256 * 1024).expect("valid")
}

const TYPES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Step {
    Insert(usize),
    Ack(usize),
    Page(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..TYPES.len()).prop_map(Step::Insert),
        2 => any::<usize>().prop_map(Step::Ack),
        3 => (1u32..8).prop_map(Step::Page),
    ]
}

struct Model {
    /// (id, type index, acked) in creation order.
    events: Vec<(EventId, usize, bool)>,
}

impl Model {
    fn index_of(&self, id: &EventId) -> usize {
        self.events
            .iter()
            .position(|(e, _, _)| e == id)
            .expect("known id")
    }
    fn undelivered(&self, filter: Option<usize>) -> Vec<EventId> {
        self.events
            .iter()
            .filter(|(_, t, acked)| !acked && filter.is_none_or(|f| f == *t))
            .map(|(id, _, _)| *id)
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Concatenated pages equal the undelivered set, in order, no repeats;
    /// while inserts and acks interleave with the walk, no event repeats,
    /// order holds, and every event undelivered throughout appears.
    #[test]
    fn pagination_under_random_interleavings_of_inserts_acks_and_page_sizes(
        before in proptest::collection::vec(0..TYPES.len(), 0..25),
        steps in proptest::collection::vec(step(), 0..60),
        filter in proptest::option::of(0..TYPES.len()),
        final_limit in 1u32..10,
    ) {
        runtime().block_on(async {
            let (svc, _clock, _store) = service().await;
            let account = AccountId::parse("acct").unwrap();
            let mut model = Model { events: Vec::new() };
            let mut n = 0u64;
            for t in &before {
                let out = svc.ingest(&account, create(TYPES[*t], json!({"n": n}), None)).await.unwrap();
                n += 1;
                model.events.push((out.event_id, *t, false));
            }
            let at_start: HashSet<EventId> = model.undelivered(filter).into_iter().collect();
            let mut acked_during = HashSet::new();
            let mut seen: Vec<EventId> = Vec::new();
            let mut after: Option<Position> = None;
            let mut done = false;
            let event_type = filter.map(|f| EventType::parse(TYPES[f]).unwrap());
            let page = |limit: u32, after: Option<Position>| {
                let q = InboxQuery { after, event_type: event_type.clone(), state: InboxState::Inbox, limit, max_bytes: usize::MAX };
                let svc = svc.clone();
                let account = account.clone();
                async move { svc.inbox(&account, &q).await.unwrap() }
            };
            for s in &steps {
                match s {
                    Step::Insert(t) => {
                        let out = svc.ingest(&account, create(TYPES[*t], json!({"n": n}), None)).await.unwrap();
                        n += 1;
                        model.events.push((out.event_id, *t, false));
                    }
                    Step::Ack(pick) if !model.events.is_empty() => {
                        let i = pick % model.events.len();
                        let id = model.events[i].0;
                        svc.ack(&account, &id).await.unwrap();
                        model.events[i].2 = true;
                        acked_during.insert(id);
                    }
                    Step::Ack(_) => {}
                    Step::Page(limit) if !done => {
                        let p = page(*limit, after.clone()).await;
                        prop_assert!(p.events.len() <= *limit as usize);
                        seen.extend(p.events.iter().map(|e| e.event_id));
                        if p.has_more {
                            prop_assert_eq!(p.events.len(), *limit as usize, "a short page must be the last");
                            after = p.last.clone();
                        } else {
                            done = true;
                        }
                    }
                    Step::Page(_) => {}
                }
            }
            while !done {
                let p = page(5, after.clone()).await;
                seen.extend(p.events.iter().map(|e| e.event_id));
                done = !p.has_more;
                after = p.last.clone();
            }
            let unique: HashSet<EventId> = seen.iter().copied().collect();
            prop_assert_eq!(unique.len(), seen.len(), "no event appears twice");
            let idx: Vec<usize> = seen.iter().map(|id| model.index_of(id)).collect();
            prop_assert!(idx.windows(2).all(|w| w[0] < w[1]), "oldest first: {:?}", idx);
            for id in &seen {
                let (_, t, _) = model.events[model.index_of(id)];
                prop_assert!(filter.is_none_or(|f| f == t), "filter respected");
            }
            for id in &at_start {
                if !acked_during.contains(id) {
                    prop_assert!(unique.contains(id), "undelivered throughout, yet missing");
                }
            }
            // A quiet walk returns exactly the undelivered set, in order.
            let mut quiet = Vec::new();
            let mut after = None;
            loop {
                let p = page(final_limit, after).await;
                quiet.extend(p.events.iter().map(|e| e.event_id));
                if !p.has_more { break; }
                after = p.last.clone();
            }
            prop_assert_eq!(quiet, model.undelivered(filter));
            Ok(())
        })?;
    }
}

/// Object keys: mostly plain, sometimes with characters whose escaped
/// spelling or UTF-8 bytes change their sort order.
const KEY: &str = "[a-zA-Z_é€\"\\\\\u{1F600}]{1,5}";

/// Arbitrary JSON of bounded size.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
        "[a-zA-Z0-9 _\\-\"\\\\/é€\u{1F600}]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(KEY, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(KEY, json_value(), 0..6).prop_map(|m| m.into_iter().collect())
}

/// Serializes `v` with object keys rotated by `rot` and reversed, and with
/// whitespace between every token: the same JSON, written differently.
fn rewrite(v: &Value, rot: usize, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().rev().collect();
            if !entries.is_empty() {
                let k = rot % entries.len();
                entries.rotate_left(k);
            }
            out.push_str("{ ");
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(" ,\n ");
                }
                write_string(k, rot, out);
                out.push_str(" :\t");
                rewrite(v, rot + 1, out);
            }
            out.push_str(" }");
        }
        Value::Array(a) => {
            out.push_str("[ ");
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(" , ");
                }
                rewrite(v, rot + 1, out);
            }
            out.push_str(" ]");
        }
        Value::String(s) => write_string(s, rot, out),
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
}

/// A JSON string, on odd `rot` with every character spelled as a `\uXXXX`
/// escape (surrogate pairs above U+FFFF).
fn write_string(s: &str, rot: usize, out: &mut String) {
    if rot % 2 == 0 {
        out.push_str(&serde_json::to_string(s).unwrap());
        return;
    }
    out.push('"');
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04X}"));
    }
    out.push('"');
}

/// The canonical form built the straightforward way from the parsed tree:
/// keys sorted by UTF-8 bytes, serde_json's escaping and number literals as
/// serde_json keeps them (a repeated key would keep its last value).
fn reference_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                reference_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                reference_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
}

fn fp(t: &str, payload: &Map<String, Value>, s: Option<&str>) -> Fingerprint {
    fingerprint(t, &serde_json::to_string(payload).unwrap(), s).expect("valid JSON")
}

proptest! {
    #[test]
    fn the_canonical_form_equals_the_reference_over_any_spelling_of_the_payload(payload in json_object(), rot in 0usize..7) {
        let mut text = String::new();
        rewrite(&Value::Object(payload.clone()), rot, &mut text);
        let mut want = String::new();
        reference_canonical(&Value::Object(payload), &mut want);
        prop_assert_eq!(canonical_form(&text).expect("valid JSON"), want);
    }

    #[test]
    fn the_fingerprint_ignores_key_order_and_whitespace(payload in json_object(), rot in 0usize..7, t in "[a-z.]{1,10}", s in proptest::option::of("[a-z]{0,6}")) {
        let mut text = String::new();
        rewrite(&Value::Object(payload.clone()), rot, &mut text);
        prop_assert_eq!(fp(&t, &payload, s.as_deref()), fingerprint(&t, &text, s.as_deref()).expect("valid JSON"));
    }

    #[test]
    fn the_fingerprint_differs_when_type_payload_or_source_differ(payload in json_object(), t in "[a-z.]{1,10}", s in proptest::option::of("[a-z]{0,6}"), extra in "[A-Z]{1,4}") {
        let base = fp(&t, &payload, s.as_deref());
        prop_assert_ne!(base, fp(&format!("{t}{extra}"), &payload, s.as_deref()));
        let other_source = match &s { Some(x) => Some(format!("{x}{extra}")), None => Some(String::new()) };
        prop_assert_ne!(base, fp(&t, &payload, other_source.as_deref()));
        let mut changed = payload.clone();
        changed.insert(extra.clone(), json!(1));
        prop_assert_ne!(base, fp(&t, &changed, s.as_deref()));
    }

    #[test]
    fn a_repeat_is_a_duplicate_exactly_until_the_window_ends(window_ms in 1u64..100_000, offset_ms in 0u64..200_000) {
        runtime().block_on(async {
            let store = test_store(Backend::Sqlite).await;
            let clock = Arc::new(ManualClock::new(Utc::now()));
            let settings = Settings { dedup_window: std::time::Duration::from_millis(window_ms), ..Settings::default() };
            let svc = AppState::new(store.store.clone(), clock.clone(), settings).await.unwrap();
            let account = AccountId::parse("acct").unwrap();
            let first = svc.ingest(&account, create("t", json!({"x": 1}), Some("s"))).await.unwrap();
            clock.advance(chrono::Duration::milliseconds(offset_ms as i64));
            let second = svc.ingest(&account, create("t", json!({"x": 1}), Some("s"))).await.unwrap();
            prop_assert_eq!(second.duplicate, offset_ms < window_ms);
            prop_assert_eq!(second.event_id == first.event_id, offset_ms < window_ms);
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------
// Leases: random sequences of lease / ack / release / DELETE / requeue /
// time passing, against a model of every event's state.

/// One step of a lease sequence. Picks are taken modulo what exists.
#[derive(Debug, Clone)]
pub(crate) enum LeaseOp {
    Insert(usize),
    Lease {
        limit: u32,
        secs: u64,
        of_type: Option<usize>,
    },
    Ack {
        lease: usize,
        only: Option<usize>,
    },
    Release {
        lease: usize,
        only: Option<usize>,
    },
    Delete(usize),
    Requeue(usize),
    Advance(i64),
}

pub(crate) fn lease_ops(max_steps: usize) -> impl Strategy<Value = Vec<LeaseOp>> {
    let op = prop_oneof![
        3 => (0..2usize).prop_map(LeaseOp::Insert),
        4 => (1u32..5, 1u64..4, proptest::option::weighted(0.3, 0..2usize))
            .prop_map(|(limit, secs, of_type)| LeaseOp::Lease { limit, secs, of_type }),
        2 => (any::<usize>(), proptest::option::of(any::<usize>()))
            .prop_map(|(lease, only)| LeaseOp::Ack { lease, only }),
        2 => (any::<usize>(), proptest::option::of(any::<usize>()))
            .prop_map(|(lease, only)| LeaseOp::Release { lease, only }),
        1 => any::<usize>().prop_map(LeaseOp::Delete),
        1 => any::<usize>().prop_map(LeaseOp::Requeue),
        3 => (0i64..3000).prop_map(LeaseOp::Advance),
    ];
    proptest::collection::vec(op, 1..max_steps)
}

/// What the model knows of one event.
#[derive(Debug, Clone)]
struct Modelled {
    id: EventId,
    kind: usize,
    lease_count: u32,
    /// End of its latest lease (None: never leased, released, requeued).
    until: Option<chrono::DateTime<Utc>>,
    /// The lease holding it (kept after the lease ends, until another
    /// lease, a release or a requeue).
    held_by: Option<LeaseId>,
    quarantined: bool,
    delivered: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Observed {
    Available,
    Leased,
    Quarantined,
    Delivered,
}

const MAX_LEASES: u32 = 3;

/// Runs `ops` through the service on `backend` and checks, after every
/// step, that each event is in exactly one state (available, leased,
/// quarantined, delivered) as the model says, with its lease count.
pub(crate) async fn check_lease_model(
    backend: Backend,
    ops: &[LeaseOp],
) -> Result<(), TestCaseError> {
    let store = test_store(backend).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let settings = Settings {
        max_leases: MAX_LEASES,
        ..Settings::default()
    };
    let svc = AppState::new(store.store.clone(), clock.clone(), settings)
        .await
        .unwrap();
    let account = AccountId::parse("acct").unwrap();
    let mut model: Vec<Modelled> = Vec::new();
    let mut leases: Vec<(LeaseId, Vec<EventId>)> = Vec::new();
    let mut n = 0u64;
    for op in ops {
        let now = triggers_api::domain::trunc_ms(triggers_api::clock::Clock::now(clock.as_ref()));
        match op {
            LeaseOp::Insert(kind) => {
                let out = svc
                    .ingest(&account, create(TYPES[*kind], json!({"n": n}), None))
                    .await
                    .unwrap();
                n += 1;
                model.push(Modelled {
                    id: out.event_id,
                    kind: *kind,
                    lease_count: 0,
                    until: None,
                    held_by: None,
                    quarantined: false,
                    delivered: false,
                });
            }
            LeaseOp::Lease {
                limit,
                secs,
                of_type,
            } => {
                let params = LeaseParams {
                    limit: *limit,
                    lease_for: std::time::Duration::from_secs(*secs),
                    wait: std::time::Duration::ZERO,
                    event_type: of_type.map(|k| EventType::parse(TYPES[k]).unwrap()),
                };
                let got = svc.lease(&account, &params).await.unwrap();
                let want: Vec<EventId> = model
                    .iter()
                    .filter(|m| {
                        !m.delivered
                            && !m.quarantined
                            && m.until.is_none_or(|u| u <= now)
                            && of_type.is_none_or(|k| k == m.kind)
                    })
                    .take(*limit as usize)
                    .map(|m| m.id)
                    .collect();
                let ids: Vec<EventId> = got.events.iter().map(|e| e.event_id).collect();
                prop_assert_eq!(&ids, &want, "the oldest available, in order");
                let Some(lease_id) = got.lease_id else {
                    prop_assert!(want.is_empty());
                    continue;
                };
                let until = now + chrono::Duration::seconds(*secs as i64);
                prop_assert_eq!(got.leased_until, Some(until));
                for e in &got.events {
                    let m = model.iter_mut().find(|m| m.id == e.event_id).unwrap();
                    m.lease_count += 1;
                    m.until = Some(until);
                    m.held_by = Some(lease_id);
                    m.quarantined = m.lease_count >= MAX_LEASES;
                    prop_assert_eq!(e.lease_count, m.lease_count);
                    prop_assert_eq!(e.quarantined, m.quarantined);
                    prop_assert_eq!(e.leased_until, Some(until));
                }
                leases.push((lease_id, ids));
            }
            LeaseOp::Ack { lease, only } | LeaseOp::Release { lease, only } => {
                if leases.is_empty() {
                    continue;
                }
                let (lease_id, of_lease) = leases[lease % leases.len()].clone();
                let listed: Option<Vec<EventId>> = only.map(|i| vec![of_lease[i % of_lease.len()]]);
                let ack = matches!(op, LeaseOp::Ack { .. });
                let out = if ack {
                    svc.ack_leased(&account, &lease_id, listed.as_deref()).await
                } else {
                    svc.release_leased(&account, &lease_id, listed.as_deref())
                        .await
                }
                .unwrap()
                .expect("a known lease");
                let asked = listed.unwrap_or(of_lease);
                let mut want_done = Vec::new();
                let mut want_stale = Vec::new();
                for id in &asked {
                    let m = model.iter_mut().find(|m| m.id == *id).unwrap();
                    if m.held_by == Some(lease_id) && !m.delivered {
                        want_done.push(*id);
                        if ack {
                            m.delivered = true;
                        } else {
                            m.held_by = None;
                            m.until = None;
                        }
                    } else {
                        want_stale.push(*id);
                    }
                }
                prop_assert_eq!(out.done, want_done, "settled: ack {}", ack);
                prop_assert_eq!(out.stale, want_stale, "stale: ack {}", ack);
            }
            LeaseOp::Delete(pick) if !model.is_empty() => {
                let i = pick % model.len();
                svc.ack(&account, &model[i].id).await.unwrap();
                model[i].delivered = true;
            }
            LeaseOp::Requeue(pick) if !model.is_empty() => {
                let i = pick % model.len();
                let out = svc.requeue(&account, &model[i].id).await.unwrap();
                let m = &mut model[i];
                if m.quarantined && !m.delivered {
                    let RequeueOutcome::Requeued(e) = out else {
                        return Err(TestCaseError::fail(format!("not requeued: {out:?}")));
                    };
                    prop_assert_eq!(
                        (e.lease_count, e.quarantined, e.leased_until),
                        (0, false, None)
                    );
                    m.lease_count = 0;
                    m.quarantined = false;
                    m.until = None;
                    m.held_by = None;
                } else {
                    prop_assert_eq!(out, RequeueOutcome::NotQuarantined);
                }
            }
            LeaseOp::Delete(_) | LeaseOp::Requeue(_) => {}
            LeaseOp::Advance(ms) => clock.advance(chrono::Duration::milliseconds(*ms)),
        }
        check_states(&svc, &account, &model).await?;
    }
    Ok(())
}

async fn listing(svc: &AppState, account: &AccountId, state: InboxState) -> Vec<EventId> {
    let q = InboxQuery {
        after: None,
        event_type: None,
        state,
        limit: 200,
        max_bytes: usize::MAX,
    };
    let page = svc.inbox(account, &q).await.unwrap();
    assert!(!page.has_more);
    page.events.iter().map(|e| e.event_id).collect()
}

async fn check_states(
    svc: &AppState,
    account: &AccountId,
    model: &[Modelled],
) -> Result<(), TestCaseError> {
    let now = triggers_api::clock::Clock::now(svc.clock.as_ref());
    let inbox: HashSet<EventId> = listing(svc, account, InboxState::Inbox)
        .await
        .into_iter()
        .collect();
    let quarantine: HashSet<EventId> = listing(svc, account, InboxState::Quarantined)
        .await
        .into_iter()
        .collect();
    for m in model {
        let e = svc
            .get_event(account, &m.id)
            .await
            .unwrap()
            .expect("readable");
        let running = e.leased_until.is_some_and(|u| u > now);
        // Exactly one state, from what the API shows.
        let mut seen = Vec::new();
        if e.delivered {
            seen.push(Observed::Delivered);
        }
        if quarantine.contains(&m.id) {
            seen.push(Observed::Quarantined);
        }
        if inbox.contains(&m.id) {
            seen.push(if running {
                Observed::Leased
            } else {
                Observed::Available
            });
        }
        let want = if m.delivered {
            Observed::Delivered
        } else if m.quarantined {
            Observed::Quarantined
        } else if m.until.is_some_and(|u| u > now) {
            Observed::Leased
        } else {
            Observed::Available
        };
        prop_assert_eq!(&seen, &vec![want], "event {}: {:?} / {:?}", m.id, e, m);
        prop_assert_eq!(e.lease_count, m.lease_count, "lease_count of {:?}", m);
        prop_assert_eq!(e.quarantined, m.quarantined && !m.delivered);
        let shown = m.until.filter(|u| *u > now && !m.delivered);
        prop_assert_eq!(e.leased_until, shown, "leased_until of {:?}", m);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every event is in exactly one state after every step, as the model
    /// says: leases take the oldest available, ack and release settle
    /// exactly what the lease still holds, quarantine at max_leases,
    /// requeue resets the count. (DynamoDB: `dynamodb_store::`.)
    #[test]
    fn random_lease_sequences_keep_every_event_in_exactly_one_state(ops in lease_ops(40)) {
        runtime().block_on(check_lease_model(Backend::Sqlite, &ops))?;
    }
}
