//! The history checker, in the spirit of Jepsen's queue checkers. It reads
//! only the recorded history: what clients sent and what they were told
//! (ok / fail / info), with times. An `info` (no answer, a 5xx) may or may
//! not have happened; a `fail` (a 4xx, a refused connection) did not.
//!
//! Invariants (the name is what a report says):
//!
//! - `lost`: an event answered 2xx (or seen in any read) that the final
//!   complete walk, after the run with every fault off, does not show, and
//!   that no acknowledgement could have removed.
//! - `unexpected`: an event in an answer that no producer of that account
//!   sent (content, metadata or timestamp differ from what was sent or
//!   answered).
//! - `duplicated`: two event ids for one (account, event_type, payload,
//!   source) whose timestamps are closer than the dedup window.
//! - `cross-tenant`: an event of account A in an answer to a key of
//!   account B, or another account's id or cursor accepted.
//! - `walk-missing`: a complete walk that does not show an event known to
//!   exist before the walk began and not possibly acknowledged before it
//!   ended; `walk-repeat`: an event twice in one walk; `walk-order`: an
//!   event listed after one created after it (oldest first).
//! - `ack-reappeared`: an event answered 204 to a DELETE, in a page (or
//!   undelivered in a GET) requested after that answer.
//! - `read-your-writes`: a GET answered 404 for an event whose POST was
//!   answered before the GET was sent (retention aside); `ack-not-found`:
//!   the same for a DELETE.
//! - `page-bound`: a page longer than its limit or, with more than one
//!   event, over the page byte bound; `pagination`: `has_more` without a
//!   cursor.
//! - `revocation`: a 2xx for a key revoked longer ago than the auth cache
//!   TTL.
//! - `accepted-invalid` / `wrong-refusal`: a request that must be refused
//!   answered 2xx, or refused with another status; `refused-valid`: a valid
//!   request refused (a 4xx other than 429, or 403 for a revoked key);
//!   `internal-error`: any 500; `malformed-answer`: a 2xx that does not
//!   parse.
//! - `bcrypt-budget`: a wrong-secret burst ran more bcrypt than the
//!   per-key and per-network budgets allow (plus one per real key).
//! - `header-timeout`: a stalled request head not closed within the
//!   header-read timeout; `shutdown-bounded`: a graceful stop slower than
//!   its grace plus the store budget; `resource-leak`: bcrypt runs or
//!   connections still open after the run.
//! - `status`: `/status` answered 200 "ok" while the store was in an
//!   outage (every call failing) from before the request to after it.
//! - `double-lease`: an event under two unexpired leases: a lease answered
//!   after another lease of the same event was answered and before that one
//!   ended, with no release or ack of it by the first lease sent in
//!   between; `lease-filter`: a lease with `event_type` that took another
//!   type.
//! - `idempotency`: with one `Idempotency-Key`, two 2xx answers to the same
//!   request that name different event ids (a replay must answer the first
//!   id, and a retry creates at most one event), a 2xx answer to the same
//!   request after a kept answer that is not marked `Idempotent-Replayed`,
//!   a 2xx (or the kept answer) to another body after a kept answer (must be
//!   409), a 409 to the same request once it was answered, or a replay
//!   when no earlier request with the key could have been processed.
//!
//! Acknowledgements are `DELETE /events/{id}` and `POST /inbox/ack` (the ids
//! it answered `acknowledged`, or every id it sent when it had no answer):
//! both count for `lost`, `walk-missing` and `ack-reappeared` (an acked
//! event must not be in a page or a lease asked for after the answer).
//! Batch items answered 200/201 are learned like single POSTs (dedup,
//! `lost`, `duplicated`). Quarantined events leave the inbox: the final walk
//! also walks `?state=quarantined`, and an event that may have been leased
//! `max_leases` times (answered leases of it plus leases of its account
//! with no answer) is not required in a plain inbox walk.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Action, CallId, Content, Entry, History, Kind, Note, Outcome, Seen};

/// The service's limits the invariants depend on.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub dedup_window_ms: u64,
    pub retention_ms: u64,
    pub auth_ttl_ms: u64,
    pub max_page_bytes: usize,
    pub header_timeout_ms: u64,
    pub per_key_per_minute: u32,
    pub per_source_per_minute: u32,
    /// Keys in the run (each may cost one bcrypt run per instance).
    pub keys: u64,
    /// The longest a graceful stop may take.
    pub shutdown_bound_ms: u64,
    /// The lease that brings an event's lease count to this quarantines it.
    pub max_leases: u32,
}

/// How long a kept idempotent answer lives (the service's default).
const IDEMPOTENCY_TTL_MS: u64 = 24 * 3_600_000;

#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub message: String,
    /// When it became visible (ms into the run) and at which history entry.
    pub time: u64,
    pub at: usize,
    /// The calls and notes that show it.
    pub calls: BTreeSet<CallId>,
    pub notes: BTreeSet<usize>,
    /// Event ids to show in page listings.
    pub focus: BTreeSet<String>,
}

impl Violation {
    /// The shortest excerpt of the history that shows it: the evidence
    /// calls (invocation and completion) and notes, in order.
    pub fn excerpt(&self, h: &History) -> Vec<String> {
        let mut idx: BTreeSet<usize> = self.notes.clone();
        for c in &self.calls {
            if let Some((inv, done)) = h.calls.get(*c) {
                idx.insert(*inv);
                if let Some(d) = done {
                    idx.insert(*d);
                }
            }
        }
        h.excerpt(&idx, &self.focus)
    }
}

type ContentKey = (String, String, String, Option<String>);

fn key_of(account: &str, s: &Seen) -> ContentKey {
    (
        account.to_owned(),
        s.event_type.clone(),
        s.payload.clone(),
        s.source.clone(),
    )
}

fn metadata_text(c: &Content) -> &str {
    c.metadata.as_deref().unwrap_or("{}")
}

/// The account a payload names (`"acct"`), as producers write it.
fn owner_tag(payload: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()?
        .get("acct")?
        .as_str()
        .map(str::to_owned)
}

/// What is known of one event id.
#[derive(Debug, Clone)]
struct Known {
    owner: String,
    content: ContentKey,
    ts_ms: i64,
    /// The earliest completion (history position) that proves it exists,
    /// and by which call.
    known_at: usize,
    proof: CallId,
}

struct Checker<'a> {
    h: &'a History,
    cfg: &'a CheckConfig,
    out: Vec<Violation>,
    actor_account: Vec<String>,
    actor_key: Vec<String>,
    /// Key label -> (revocation time, note entry).
    revoked: BTreeMap<String, (u64, usize)>,
    known: BTreeMap<String, Known>,
    /// Valid POSTs per content key.
    sends: BTreeMap<ContentKey, Vec<CallId>>,
    /// Acknowledgements per event id (DELETEs and lease acks).
    acks: BTreeMap<String, Vec<CallId>>,
    /// Answered leases that took each event.
    grants: BTreeMap<String, Vec<CallId>>,
    /// Per account, history positions of lease calls that may have leased
    /// without the client learning what (no answer, a 5xx).
    unknown_leases: BTreeMap<String, Vec<usize>>,
    /// Lease id -> its `until_ms`.
    lease_until: BTreeMap<String, u64>,
}

/// Checks `h`; every violation found, in the order of the history.
pub fn check(h: &History, cfg: &CheckConfig) -> Vec<Violation> {
    let mut c = Checker {
        h,
        cfg,
        out: Vec::new(),
        actor_account: h.actors.iter().map(|a| a.account.clone()).collect(),
        actor_key: h.actors.iter().map(|a| a.key.clone()).collect(),
        revoked: BTreeMap::new(),
        known: BTreeMap::new(),
        sends: BTreeMap::new(),
        acks: BTreeMap::new(),
        grants: BTreeMap::new(),
        unknown_leases: BTreeMap::new(),
        lease_until: BTreeMap::new(),
    };
    c.index();
    c.statuses();
    c.reads();
    c.duplicates();
    c.walks();
    c.gets_and_acks();
    c.notes();
    c.leases();
    c.idempotency();
    c.context();
    c.out.sort_by_key(|v| (v.at, v.invariant));
    c.out
}

/// Restarts shown in an excerpt at most.
const CONTEXT_NOTES: usize = 6;

impl<'a> Checker<'a> {
    fn account(&self, actor: usize) -> &str {
        self.actor_account.get(actor).map_or("", String::as_str)
    }

    fn completion_entry(&self, call: CallId) -> usize {
        self.h
            .calls
            .get(call)
            .map_or(0, |(inv, done)| done.unwrap_or(*inv))
    }

    fn violation(
        &mut self,
        invariant: &'static str,
        message: String,
        calls: impl IntoIterator<Item = CallId>,
        focus: impl IntoIterator<Item = String>,
    ) {
        let calls: BTreeSet<CallId> = calls.into_iter().collect();
        let at = calls
            .iter()
            .map(|c| self.completion_entry(*c))
            .max()
            .unwrap_or(0);
        let time = self.h.entries.get(at).map_or(0, Entry::time);
        self.out.push(Violation {
            invariant,
            message,
            time,
            at,
            calls,
            notes: BTreeSet::new(),
            focus: focus.into_iter().collect(),
        });
    }

    fn note_violation(&mut self, invariant: &'static str, message: String, entry: usize) {
        let time = self.h.entries.get(entry).map_or(0, Entry::time);
        self.out.push(Violation {
            invariant,
            message,
            time,
            at: entry,
            calls: BTreeSet::new(),
            notes: [entry].into(),
            focus: BTreeSet::new(),
        });
    }

    /// Adds to each excerpt the restarts (and revocations) that happened
    /// between its first and last evidence: what explains most violations
    /// of durable state.
    fn context(&mut self) {
        let marks: Vec<usize> = self
            .h
            .notes()
            .filter(|(_, _, n)| matches!(n, Note::Restart { .. } | Note::Revoked { .. }))
            .map(|(i, _, _)| i)
            .collect();
        for v in &mut self.out {
            let mut first = usize::MAX;
            for c in &v.calls {
                if let Some((inv, _)) = self.h.calls.get(*c) {
                    first = first.min(*inv);
                }
            }
            let within: Vec<usize> = marks
                .iter()
                .copied()
                .filter(|i| *i > first && *i < v.at)
                .collect();
            let skip = within.len().saturating_sub(CONTEXT_NOTES);
            v.notes.extend(within.into_iter().skip(skip));
        }
    }

    /// Calls in invocation order, sends, acks, revocations, and every
    /// event id answered to a POST.
    fn index(&mut self) {
        for (entry, t, note) in self.h.notes() {
            if let Note::Revoked { label } = note {
                self.revoked.insert(label.clone(), (t, entry));
            }
        }
        for call in self.h.all_calls() {
            match call.action {
                Action::Post {
                    content,
                    valid: true,
                    ..
                } => {
                    self.sends.entry(content.key()).or_default().push(call.id);
                    if let Some(Outcome::Posted {
                        event_id, ts_ms, ..
                    }) = call.outcome
                    {
                        self.learn(
                            event_id,
                            &content.account,
                            content.key(),
                            *ts_ms,
                            call.done,
                            call.id,
                        );
                    }
                }
                Action::Batch { items, .. } => {
                    for c in items {
                        self.sends.entry(c.key()).or_default().push(call.id);
                    }
                    if let Some(Outcome::Batch { results, .. }) = call.outcome {
                        for r in results {
                            if let (Some(id), Some(ts), Some(c)) =
                                (&r.event_id, r.ts_ms, items.get(r.index))
                            {
                                if matches!(r.status, 200 | 201) {
                                    self.learn(id, &c.account, c.key(), ts, call.done, call.id);
                                }
                            }
                        }
                    }
                }
                Action::Ack { id } => self.acks.entry(id.clone()).or_default().push(call.id),
                Action::LeaseSettle {
                    release: false,
                    event_ids,
                    ..
                } => {
                    for id in event_ids {
                        self.acks.entry(id.clone()).or_default().push(call.id);
                    }
                }
                Action::Lease { .. } => match call.outcome {
                    Some(Outcome::Leased {
                        lease_id,
                        until_ms,
                        events,
                    }) => {
                        for e in events {
                            self.grants.entry(e.id.clone()).or_default().push(call.id);
                        }
                        if !lease_id.is_empty() {
                            self.lease_until.insert(lease_id.clone(), *until_ms);
                        }
                    }
                    o if o.is_none_or(|o| o.kind() == Kind::Info) => {
                        let account = self.account(call.actor).to_owned();
                        self.unknown_leases
                            .entry(account)
                            .or_default()
                            .push(call.inv);
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }

    /// Whether `id` may have been quarantined by history position `at`:
    /// leases answered with it plus leases of its account with no answer,
    /// all begun before `at`, reach `max_leases`.
    fn possibly_quarantined(&self, id: &str, account: &str, at: usize) -> bool {
        let granted = self.grants.get(id).map_or(0, |g| {
            g.iter()
                .filter(|c| self.h.call(**c).is_some_and(|x| x.inv < at))
                .count()
        });
        let unknown = self
            .unknown_leases
            .get(account)
            .map_or(0, |u| u.iter().filter(|i| **i < at).count());
        granted + unknown >= self.cfg.max_leases.max(1) as usize
    }

    /// What acknowledgement call `c` means for `id`: `Some(true)` it was
    /// certainly acknowledged (204, or listed `acknowledged`),
    /// `Some(false)` it may have been (no answer, a 5xx), `None` not by it.
    fn ack_effect(&self, call: &crate::history::Call<'_>, id: &str) -> Option<bool> {
        match (call.action, call.outcome) {
            (Action::Ack { .. }, Some(Outcome::Acked)) => Some(true),
            (Action::LeaseSettle { .. }, Some(Outcome::Settled { done, .. })) => {
                done.iter().any(|d| d == id).then_some(true)
            }
            (_, None) => Some(false),
            (_, Some(o)) => match o.kind() {
                Kind::Info => Some(false),
                // A DELETE answered 2xx otherwise (not 204) still counts.
                Kind::Ok if matches!(call.action, Action::Ack { .. }) => Some(false),
                _ => None,
            },
        }
    }

    fn learn(
        &mut self,
        id: &str,
        owner: &str,
        content: ContentKey,
        ts_ms: i64,
        at: usize,
        proof: CallId,
    ) {
        let k = self.known.entry(id.to_owned()).or_insert_with(|| Known {
            owner: owner.to_owned(),
            content,
            ts_ms,
            known_at: at,
            proof,
        });
        if at < k.known_at {
            k.known_at = at;
            k.proof = proof;
        }
    }

    /// An acknowledgement of `id` invoked before history position `at` that
    /// may have happened (answered 2xx, or no answer).
    fn possibly_acked_before(&self, id: &str, at: usize) -> Option<CallId> {
        self.possibly_acked(id, |call| call.inv < at)
    }

    /// The same, invoked at or before time `t`.
    fn possibly_acked_by_time(&self, id: &str, t: u64) -> Option<CallId> {
        self.possibly_acked(id, |call| call.invoked <= t)
    }

    fn possibly_acked(
        &self,
        id: &str,
        when: impl Fn(&crate::history::Call<'_>) -> bool,
    ) -> Option<CallId> {
        self.acks.get(id)?.iter().copied().find(|c| {
            self.h
                .call(*c)
                .is_some_and(|call| when(&call) && self.ack_effect(&call, id).is_some())
        })
    }

    /// An acknowledgement of `id` answered 204 before history position `at`.
    fn acked_before(&self, id: &str, at: usize) -> Option<CallId> {
        self.acks.get(id)?.iter().copied().find(|c| {
            self.h
                .call(*c)
                .is_some_and(|call| call.done < at && self.ack_effect(&call, id) == Some(true))
        })
    }

    fn revoked_key(&self, actor: usize) -> Option<(u64, usize)> {
        self.actor_key
            .get(actor)
            .and_then(|k| self.revoked.get(k))
            .copied()
    }

    /// Status-level rules on every call.
    fn statuses(&mut self) {
        let calls: Vec<_> = self.h.all_calls().collect();
        for call in calls {
            let Some(outcome) = call.outcome else {
                continue;
            };
            let status = outcome.status();
            if status == Some(500) {
                self.violation(
                    "internal-error",
                    format!("op #{} was answered 500", call.id),
                    [call.id],
                    [],
                );
            }
            let revoked = self.revoked_key(call.actor);
            if let Some((t, note)) = revoked {
                if call.invoked > t + self.cfg.auth_ttl_ms && outcome.kind() == Kind::Ok {
                    self.violation(
                        "revocation",
                        format!(
                            "op #{} with a key revoked at T+{} ms succeeded {} ms later (auth cache TTL {} ms)",
                            call.id,
                            t,
                            call.invoked - t,
                            self.cfg.auth_ttl_ms
                        ),
                        [call.id],
                        [],
                    );
                    if let Some(v) = self.out.last_mut() {
                        v.notes.insert(note);
                    }
                }
            }
            let may_be_403 = revoked.is_some();
            if let Some(Outcome::Status { status, code }) = outcome.filter_2xx() {
                let parsed_kind = matches!(
                    call.action,
                    Action::Post { .. }
                        | Action::Batch { .. }
                        | Action::Page { .. }
                        | Action::Get { .. }
                        | Action::Ack { .. }
                        | Action::Lease { .. }
                        | Action::LeaseSettle { .. }
                );
                if parsed_kind {
                    self.violation(
                        "malformed-answer",
                        format!(
                            "op #{} got {status} {code}: not the answer the API documents",
                            call.id
                        ),
                        [call.id],
                        [],
                    );
                }
            }
            match (call.action, status) {
                (Action::Refusable { what, expect, .. }, Some(s)) => {
                    let foreign = what.starts_with("foreign");
                    if s < 300 {
                        self.violation(
                            if foreign {
                                "cross-tenant"
                            } else {
                                "accepted-invalid"
                            },
                            format!(
                                "op #{} ({what}) was answered {s}, expected {expect}",
                                call.id
                            ),
                            [call.id],
                            [],
                        );
                    } else if s < 500 && s != *expect && s != 429 && !(s == 403 && may_be_403) {
                        self.violation(
                            "wrong-refusal",
                            format!(
                                "op #{} ({what}) was answered {s}, expected {expect}",
                                call.id
                            ),
                            [call.id],
                            [],
                        );
                    }
                }
                (Action::WrongSecret { key_id }, Some(s)) if s < 300 => {
                    self.violation(
                        "accepted-invalid",
                        format!(
                            "op #{}: a wrong secret for key id {key_id} was answered {s}",
                            call.id
                        ),
                        [call.id],
                        [],
                    );
                }
                // With an idempotency key, 409 is the answer to another body
                // or to a request in flight (the idempotency check judges).
                (
                    Action::Post {
                        valid: true,
                        idem: Some(_),
                        ..
                    }
                    | Action::Batch { idem: Some(_), .. },
                    Some(409),
                ) => {}
                (
                    Action::Post { valid: true, .. }
                    | Action::Batch { .. }
                    | Action::Page { .. }
                    | Action::Lease { .. },
                    Some(s),
                ) if (400..500).contains(&s) && s != 429 && !(s == 403 && may_be_403) => {
                    self.violation(
                        "refused-valid",
                        format!("op #{}, a valid request, was answered {s}", call.id),
                        [call.id],
                        [],
                    );
                }
                (Action::LeaseSettle { lease_id, .. }, Some(s))
                    if (400..500).contains(&s)
                        && s != 429
                        && !(s == 403 && may_be_403)
                        && !(s == 404
                            && self.lease_until.get(lease_id).is_none_or(|u| {
                                call.completed >= u.saturating_add(self.cfg.retention_ms)
                            })) =>
                {
                    self.violation(
                        "refused-valid",
                        format!("op #{}, a valid request, was answered {s}", call.id),
                        [call.id],
                        [],
                    );
                }
                (Action::Get { .. } | Action::Ack { .. }, Some(s))
                    if (400..500).contains(&s)
                        && s != 404
                        && s != 429
                        && !(s == 403 && may_be_403) =>
                {
                    self.violation(
                        "refused-valid",
                        format!("op #{}, a valid request, was answered {s}", call.id),
                        [call.id],
                        [],
                    );
                }
                _ => {}
            }
            if let (Action::Batch { items, .. }, Outcome::Batch { results, .. }) =
                (call.action, outcome)
            {
                let in_order = results.len() == items.len()
                    && results.iter().enumerate().all(|(i, r)| r.index == i);
                if !in_order {
                    self.violation(
                        "malformed-answer",
                        format!(
                            "op #{}: {} results for a batch of {} events, or out of order",
                            call.id,
                            results.len(),
                            items.len()
                        ),
                        [call.id],
                        [],
                    );
                }
                for r in results {
                    if !matches!(r.status, 200 | 201) || r.event_id.is_none() {
                        self.violation(
                            "refused-valid",
                            format!(
                                "op #{}: item {} of a valid batch was answered {}",
                                call.id, r.index, r.status
                            ),
                            [call.id],
                            [],
                        );
                    }
                }
            }
        }
    }

    /// Every event in an answer: whose it is, whether it was sent, and
    /// what it proves exists.
    fn reads(&mut self) {
        let calls: Vec<_> = self.h.all_calls().collect();
        for call in calls {
            let (events, limit): (Vec<&Seen>, Option<u32>) = match (call.action, call.outcome) {
                (
                    Action::Page { limit, .. },
                    Some(Outcome::Page {
                        events,
                        has_more,
                        next_cursor,
                    }),
                ) => {
                    if *has_more && next_cursor.is_none() {
                        self.violation(
                            "pagination",
                            format!(
                                "op #{}: has_more is true but there is no next_cursor",
                                call.id
                            ),
                            [call.id],
                            [],
                        );
                    }
                    (events.iter().collect(), Some(*limit))
                }
                (_, Some(Outcome::Event(e))) => (vec![e], None),
                (Action::Lease { limit, .. }, Some(Outcome::Leased { events, .. })) => {
                    (events.iter().collect(), Some(*limit))
                }
                _ => continue,
            };
            if let Some(limit) = limit {
                let bytes: usize = events.iter().map(|e| e.approx_bytes).sum();
                if events.len() > limit as usize {
                    self.violation(
                        "page-bound",
                        format!(
                            "op #{}: {} events on a page of limit {limit}",
                            call.id,
                            events.len()
                        ),
                        [call.id],
                        [],
                    );
                } else if events.len() > 1 && bytes > self.cfg.max_page_bytes {
                    self.violation(
                        "page-bound",
                        format!(
                            "op #{}: a page of {} events and {bytes} bytes, over the bound of {}",
                            call.id,
                            events.len(),
                            self.cfg.max_page_bytes
                        ),
                        [call.id],
                        [],
                    );
                }
            }
            let reader = self.account(call.actor).to_owned();
            for e in events {
                self.seen(call.id, call.done, &reader, e);
            }
        }
    }

    fn seen(&mut self, call: CallId, at: usize, reader: &str, e: &Seen) {
        let owner = owner_tag(&e.payload);
        let answered_owner = self.known.get(&e.id).map(|k| k.owner.clone());
        let owner = answered_owner.or(owner);
        let Some(owner) = owner else {
            self.violation(
                "unexpected",
                format!(
                    "op #{call}: event {} was sent by no producer (no account in its payload)",
                    e.id
                ),
                [call],
                [e.id.clone()],
            );
            return;
        };
        if owner != reader {
            let mut calls = vec![call];
            if let Some(k) = self.known.get(&e.id) {
                calls.push(k.proof);
            }
            self.violation(
                "cross-tenant",
                format!(
                    "op #{call}: event {} of account {owner} was served to a key of account {reader}",
                    e.id
                ),
                calls,
                [e.id.clone()],
            );
            return;
        }
        let key = key_of(&owner, e);
        let sends: Vec<CallId> = self.sends.get(&key).cloned().unwrap_or_default();
        let sent_before: Vec<CallId> = sends
            .iter()
            .copied()
            .filter(|c| self.h.call(*c).is_some_and(|x| x.inv < at))
            .collect();
        if sent_before.is_empty() {
            self.violation(
                "unexpected",
                format!(
                    "op #{call}: event {} (type {}, payload {}) matches nothing account {owner} sent",
                    e.id,
                    e.event_type,
                    crate::history::fmt_payload(&e.payload)
                ),
                [call],
                [e.id.clone()],
            );
            return;
        }
        let metadata_ok = sent_before
            .iter()
            .any(|c| match self.h.call(*c).map(|x| x.action) {
                Some(Action::Post { content, .. }) => metadata_text(content) == e.metadata,
                Some(Action::Batch { items, .. }) => items
                    .iter()
                    .any(|c| c.key() == key && metadata_text(c) == e.metadata),
                _ => false,
            });
        if !metadata_ok {
            self.violation(
                "unexpected",
                format!(
                    "op #{call}: event {} has metadata {} that no send of it had",
                    e.id, e.metadata
                ),
                std::iter::once(call).chain(sent_before.iter().copied()),
                [e.id.clone()],
            );
        }
        if let Some(k) = self.known.get(&e.id) {
            if k.content != key || k.ts_ms != e.ts_ms {
                let proof = k.proof;
                self.violation(
                    "unexpected",
                    format!(
                        "op #{call}: event {} differs from what its POST sent or was answered (timestamp {} vs {})",
                        e.id, e.ts_ms, k.ts_ms
                    ),
                    [call, proof],
                    [e.id.clone()],
                );
                return;
            }
        }
        self.learn(&e.id, &owner, key, e.ts_ms, at, call);
    }

    /// Two ids for one content closer than the dedup window.
    fn duplicates(&mut self) {
        let mut by_content: BTreeMap<&ContentKey, Vec<(&String, &Known)>> = BTreeMap::new();
        for (id, k) in &self.known {
            by_content.entry(&k.content).or_default().push((id, k));
        }
        let mut found = Vec::new();
        for list in by_content.values_mut() {
            list.sort_by_key(|(id, k)| (k.ts_ms, (*id).clone()));
            for pair in list.windows(2) {
                let ((a, ka), (b, kb)) = (pair[0], pair[1]);
                let gap = kb.ts_ms - ka.ts_ms;
                if gap < i64::try_from(self.cfg.dedup_window_ms).unwrap_or(i64::MAX) {
                    found.push((
                        a.clone(),
                        b.clone(),
                        gap,
                        ka.proof,
                        kb.proof,
                        ka.content.0.clone(),
                    ));
                }
            }
        }
        for (a, b, gap, pa, pb, account) in found {
            let mut calls: Vec<CallId> = vec![pa, pb];
            if let Some(sends) = self.sends.get(&self.known[&a].content) {
                calls.extend(sends.iter().copied().take(6));
            }
            self.violation(
                "duplicated",
                format!(
                    "events {a} and {b} of account {account} have the same type, payload and source, {gap} ms apart (dedup window {} ms)",
                    self.cfg.dedup_window_ms
                ),
                calls,
                [a, b],
            );
        }
    }

    /// Walks: repeats, order, completeness; the final walks: lost events.
    fn walks(&mut self) {
        let mut walks: BTreeMap<u64, Vec<CallId>> = BTreeMap::new();
        for call in self.h.all_calls() {
            if let (Action::Page { walk, .. }, Some(Outcome::Page { .. })) =
                (call.action, call.outcome)
            {
                walks.entry(*walk).or_default().push(call.id);
            }
        }
        let mut final_seen: BTreeMap<String, (BTreeSet<String>, Vec<CallId>)> = BTreeMap::new();
        let mut final_complete: BTreeSet<String> = BTreeSet::new();
        // The same for the final walks of the quarantine listing.
        let mut final_q: BTreeMap<String, (BTreeSet<String>, Vec<CallId>)> = BTreeMap::new();
        let mut final_q_complete: BTreeSet<String> = BTreeSet::new();
        for (walk, pages) in walks {
            let mut ids: Vec<(String, CallId)> = Vec::new();
            let mut complete = false;
            let (mut start, mut end, mut actor) = (usize::MAX, 0, 0);
            let mut filter = None;
            let mut is_final = false;
            let mut is_quarantine = false;
            for (i, c) in pages.iter().enumerate() {
                let Some(call) = self.h.call(*c) else {
                    continue;
                };
                let (
                    Action::Page {
                        page,
                        event_type,
                        final_walk,
                        quarantined,
                        ..
                    },
                    Some(Outcome::Page {
                        events, has_more, ..
                    }),
                ) = (call.action, call.outcome)
                else {
                    continue;
                };
                if *page as usize != i {
                    break;
                }
                actor = call.actor;
                filter = event_type.clone();
                is_final = *final_walk;
                is_quarantine = *quarantined;
                start = start.min(call.inv);
                end = call.done;
                ids.extend(events.iter().map(|e| (e.id.clone(), call.id)));
                complete = !has_more;
            }
            // The walk began with its first page's first attempt.
            if let Some(first) = self.first_attempt(walk) {
                start = start.min(first);
            }
            let account = self.account(actor).to_owned();
            // Repeats.
            let mut first_at: BTreeMap<&str, CallId> = BTreeMap::new();
            let mut repeats = Vec::new();
            for (id, c) in &ids {
                if let Some(prev) = first_at.insert(id.as_str(), *c) {
                    repeats.push((id.clone(), prev, *c));
                }
            }
            for (id, a, b) in repeats {
                self.violation(
                    "walk-repeat",
                    format!("walk {walk}: event {id} appears twice"),
                    [a, b],
                    [id],
                );
            }
            self.walk_order(walk, &ids);
            if !complete {
                continue;
            }
            if is_final && is_quarantine {
                final_q_complete.insert(account.clone());
                let entry = final_q.entry(account).or_default();
                entry.0.extend(ids.iter().map(|(id, _)| id.clone()));
                entry.1.extend(pages.iter().copied());
                continue;
            }
            if is_quarantine {
                continue;
            }
            if is_final {
                final_complete.insert(account.clone());
                let entry = final_seen.entry(account).or_default();
                entry.0.extend(ids.iter().map(|(id, _)| id.clone()));
                entry.1.extend(pages.iter().copied());
                continue;
            }
            let listed: BTreeSet<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
            let mut missing = Vec::new();
            for (id, k) in &self.known {
                if k.owner != account || k.known_at >= start || listed.contains(id.as_str()) {
                    continue;
                }
                if filter.as_ref().is_some_and(|t| *t != k.content.1) {
                    continue;
                }
                if self.possibly_acked_before(id, end).is_some()
                    || self.possibly_quarantined(id, &account, end)
                {
                    continue;
                }
                missing.push((id.clone(), k.proof));
            }
            for (id, proof) in missing {
                let mut calls = vec![proof];
                calls.extend(pages.iter().copied());
                self.violation(
                    "walk-missing",
                    format!(
                        "walk {walk} of account {account}{} began after event {id} was answered, completed, and does not show it (no acknowledgement of it was sent)",
                        filter.as_ref().map(|t| format!(" (event_type={t})")).unwrap_or_default()
                    ),
                    calls,
                    [id],
                );
            }
        }
        self.lost(&final_seen, &final_complete, &final_q, &final_q_complete);
    }

    fn first_attempt(&self, walk: u64) -> Option<usize> {
        self.h
            .all_calls()
            .find(|c| matches!(c.action, Action::Page { walk: w, page: 0, .. } if *w == walk))
            .map(|c| c.inv)
    }

    /// Oldest first: no event after one that was created after it.
    fn walk_order(&mut self, walk: u64, ids: &[(String, CallId)]) {
        // For each listed event: the earliest a POST of its content was sent
        // (it was created after that) and when its existence was first
        // proven (it was created before that).
        let mut latest_send: Option<(usize, &str, CallId)> = None;
        let mut found = Vec::new();
        for (id, c) in ids {
            let Some(k) = self.known.get(id) else {
                continue;
            };
            if let Some((sent, earlier, earlier_call)) = latest_send {
                if k.known_at < sent {
                    found.push((earlier.to_owned(), id.clone(), earlier_call, *c, k.proof));
                }
            }
            let first_send = self.sends.get(&k.content).and_then(|s| {
                s.iter()
                    .filter_map(|c| self.h.call(*c))
                    .map(|c| c.inv)
                    .min()
            });
            if let Some(sent) = first_send {
                if latest_send.is_none_or(|(t, _, _)| sent > t) {
                    latest_send = Some((sent, id, *c));
                }
            }
        }
        for (a, b, ca, cb, proof) in found {
            let sends_a = self
                .known
                .get(&a)
                .and_then(|k| self.sends.get(&k.content))
                .cloned()
                .unwrap_or_default();
            let mut calls = vec![ca, cb, proof];
            calls.extend(sends_a.into_iter().take(2));
            self.violation(
                "walk-order",
                format!("walk {walk}: event {b} is listed after {a}, but {b} existed before {a} was first sent"),
                calls,
                [a, b],
            );
        }
    }

    fn lost(
        &mut self,
        final_seen: &BTreeMap<String, (BTreeSet<String>, Vec<CallId>)>,
        final_complete: &BTreeSet<String>,
        final_q: &BTreeMap<String, (BTreeSet<String>, Vec<CallId>)>,
        final_q_complete: &BTreeSet<String>,
    ) {
        let accounts: BTreeSet<String> = self.known.values().map(|k| k.owner.clone()).collect();
        for account in accounts {
            if !final_complete.contains(&account) {
                self.out.push(Violation {
                    invariant: "final-walk",
                    message: format!("no complete final walk of account {account}: lost events cannot be ruled out"),
                    time: self.h.entries.last().map_or(0, Entry::time),
                    at: self.h.entries.len().saturating_sub(1),
                    calls: BTreeSet::new(),
                    notes: BTreeSet::new(),
                    focus: BTreeSet::new(),
                });
                continue;
            }
            if final_q.contains_key(&account) && !final_q_complete.contains(&account) {
                self.out.push(Violation {
                    invariant: "final-walk",
                    message: format!("no complete final walk of account {account}'s quarantine: lost events cannot be ruled out"),
                    time: self.h.entries.last().map_or(0, Entry::time),
                    at: self.h.entries.len().saturating_sub(1),
                    calls: BTreeSet::new(),
                    notes: BTreeSet::new(),
                    focus: BTreeSet::new(),
                });
                continue;
            }
            let (listed, pages) = &final_seen[&account];
            let quarantined = final_q.get(&account);
            let mut lost = Vec::new();
            for (id, k) in &self.known {
                if k.owner != account || listed.contains(id) {
                    continue;
                }
                if quarantined.is_some_and(|(q, _)| q.contains(id)) {
                    continue;
                }
                if self.possibly_acked_before(id, usize::MAX).is_some() {
                    continue;
                }
                // Without a quarantine walk, an event that may be
                // quarantined cannot be judged.
                if quarantined.is_none() && self.possibly_quarantined(id, &account, usize::MAX) {
                    continue;
                }
                lost.push((id.clone(), k.proof));
            }
            for (id, proof) in lost {
                let mut calls = vec![proof];
                calls.extend(pages.iter().copied());
                if let Some((_, q)) = quarantined {
                    calls.extend(q.iter().copied());
                }
                self.violation(
                    "lost",
                    format!(
                        "event {id} of account {account} was answered 2xx (or seen), never acknowledged, and the final walk does not show it"
                    ),
                    calls,
                    [id],
                );
            }
        }
    }

    /// Reads of single events and acknowledgements against what is known.
    fn gets_and_acks(&mut self) {
        let calls: Vec<_> = self.h.all_calls().collect();
        for call in calls {
            let reader = self.account(call.actor).to_owned();
            match (call.action, call.outcome) {
                (
                    Action::Get { id } | Action::Ack { id },
                    Some(Outcome::Status { status: 404, .. }),
                ) => {
                    let Some(k) = self.known.get(id) else {
                        continue;
                    };
                    if k.owner != reader || k.known_at >= call.inv {
                        continue;
                    }
                    let purgeable = call.completed.saturating_sub(self.cfg.retention_ms);
                    if self.possibly_acked_by_time(id, purgeable).is_some() {
                        continue;
                    }
                    let proof = k.proof;
                    let invariant = if matches!(call.action, Action::Get { .. }) {
                        "read-your-writes"
                    } else {
                        "ack-not-found"
                    };
                    self.violation(
                        invariant,
                        format!(
                            "op #{}: event {id} was answered before, yet the service says 404",
                            call.id
                        ),
                        [proof, call.id],
                        [id.clone()],
                    );
                }
                (Action::Get { id }, Some(Outcome::Event(e))) if !e.delivered => {
                    if let Some(ack) = self.acked_before(id, call.inv) {
                        self.violation(
                            "ack-reappeared",
                            format!("op #{}: event {id} is undelivered after its acknowledgement was answered 204", call.id),
                            [ack, call.id],
                            [id.clone()],
                        );
                    }
                }
                (Action::Page { .. }, Some(Outcome::Page { events, .. }))
                | (Action::Lease { .. }, Some(Outcome::Leased { events, .. })) => {
                    for e in events {
                        if let Some(ack) = self.acked_before(&e.id, call.inv) {
                            self.violation(
                                "ack-reappeared",
                                format!("op #{}: event {} is in the inbox (or a lease) after its acknowledgement was answered", call.id, e.id),
                                [ack, call.id],
                                [e.id.clone()],
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn notes(&mut self) {
        let notes: Vec<(usize, u64, Note)> =
            self.h.notes().map(|(i, t, n)| (i, t, n.clone())).collect();
        for (entry, _, note) in notes {
            match note {
                Note::Burst {
                    key_id,
                    attempts,
                    sources,
                    instance,
                    runs_before,
                    runs_after,
                    instance_after,
                } if instance == instance_after && instance != 0 => {
                    let runs = runs_after.saturating_sub(runs_before);
                    let windows = 2;
                    let bound = u64::from(attempts)
                        .min(u64::from(self.cfg.per_key_per_minute) * windows)
                        .min(
                            u64::from(self.cfg.per_source_per_minute)
                                * u64::from(sources)
                                * windows,
                        )
                        + self.cfg.keys;
                    if runs > bound {
                        self.note_violation(
                            "bcrypt-budget",
                            format!("a burst of {attempts} wrong secrets for {key_id} from {sources} networks ran bcrypt {runs} times; the budgets allow {bound}"),
                            entry,
                        );
                    }
                }
                Note::Resource { what, value } if value != 0 => {
                    self.note_violation(
                        "resource-leak",
                        format!("after the run, {what} = {value} (expected 0)"),
                        entry,
                    );
                }
                Note::ServerStopped { instance, took_ms }
                    if took_ms > self.cfg.shutdown_bound_ms =>
                {
                    self.note_violation(
                        "shutdown-bounded",
                        format!(
                            "instance {instance} took {took_ms} ms to stop (bound {} ms)",
                            self.cfg.shutdown_bound_ms
                        ),
                        entry,
                    );
                }
                _ => {}
            }
        }
        // Outages: from a "faults: outage" note to the next faults note.
        let mut outages: Vec<(usize, usize)> = Vec::new();
        let mut open: Option<usize> = None;
        for (i, _, note) in self.h.notes() {
            if let Note::Faults { level } = note {
                if let Some(start) = open.take() {
                    outages.push((start, i));
                }
                if *level == "outage" {
                    open = Some(i);
                }
            }
        }
        if let Some(start) = open {
            outages.push((start, usize::MAX));
        }
        let calls: Vec<_> = self.h.all_calls().collect();
        for call in &calls {
            if let (Action::Status, Some(Outcome::Status { status: 200, .. })) =
                (call.action, call.outcome)
            {
                let during = outages
                    .iter()
                    .find(|(s, e)| *s < call.inv && call.done < *e)
                    .map(|(s, _)| *s);
                if let Some(start) = during {
                    self.violation(
                        "status",
                        format!(
                            "op #{}: /status answered 200 while every store call was failing",
                            call.id
                        ),
                        [call.id],
                        [],
                    );
                    if let Some(v) = self.out.last_mut() {
                        v.notes.insert(start);
                    }
                }
            }
        }
        for call in calls {
            let bound = self.cfg.header_timeout_ms + 1000;
            match (call.action, call.outcome) {
                (Action::SlowHead, Some(Outcome::Closed { after_ms })) if *after_ms > bound => {
                    self.violation(
                        "header-timeout",
                        format!("op #{}: a stalled request head was closed after {after_ms} ms (bound {bound} ms)", call.id),
                        [call.id],
                        [],
                    );
                }
                (Action::SlowHead, Some(Outcome::Unknown(_))) => {
                    self.violation(
                        "header-timeout",
                        format!("op #{}: a stalled request head was never closed", call.id),
                        [call.id],
                        [],
                    );
                }
                _ => {}
            }
        }
    }

    /// No event under two unexpired leases: a lease answered after
    /// another lease of the same event was answered, and before that one
    /// ended, unless a release or ack of the event by the first lease may
    /// have happened before the second was answered.
    fn leases(&mut self) {
        struct Grant {
            call: CallId,
            inv: usize,
            done: usize,
            completed: u64,
            until: u64,
            lease: String,
        }
        let mut by_event: BTreeMap<String, Vec<Grant>> = BTreeMap::new();
        // (lease id, event id) -> invocations of settles that may have
        // settled it.
        let mut settled: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut wrong_type = Vec::new();
        for call in self.h.all_calls() {
            match (call.action, call.outcome) {
                (
                    Action::Lease { event_type, .. },
                    Some(Outcome::Leased {
                        lease_id,
                        until_ms,
                        events,
                    }),
                ) => {
                    for e in events {
                        if event_type.as_ref().is_some_and(|t| *t != e.event_type) {
                            wrong_type.push((call.id, e.id.clone()));
                        }
                        by_event.entry(e.id.clone()).or_default().push(Grant {
                            call: call.id,
                            inv: call.inv,
                            done: call.done,
                            completed: call.completed,
                            until: *until_ms,
                            lease: lease_id.clone(),
                        });
                    }
                }
                (
                    Action::LeaseSettle {
                        lease_id,
                        event_ids,
                        ..
                    },
                    outcome,
                ) => {
                    let ids: Vec<&String> = match outcome {
                        Some(Outcome::Settled { done, .. }) => done.iter().collect(),
                        None => event_ids.iter().collect(),
                        Some(o) if o.kind() == Kind::Info => event_ids.iter().collect(),
                        Some(_) => Vec::new(),
                    };
                    for id in ids {
                        settled
                            .entry((lease_id.clone(), id.clone()))
                            .or_default()
                            .push(call.inv);
                    }
                }
                _ => {}
            }
        }
        for (call, id) in wrong_type {
            self.violation(
                "lease-filter",
                format!("op #{call}: a lease of one event type took event {id} of another"),
                [call],
                [id],
            );
        }
        let mut found = Vec::new();
        for (id, leases) in &by_event {
            for (i, a) in leases.iter().enumerate() {
                for b in &leases[i + 1..] {
                    let released = settled
                        .get(&(a.lease.clone(), id.clone()))
                        .is_some_and(|s| s.iter().any(|inv| *inv < b.done));
                    if b.inv > a.done && b.completed < a.until && !released {
                        found.push((id.clone(), a.call, b.call, a.lease.clone(), b.lease.clone()));
                    }
                }
            }
        }
        for (id, ca, cb, la, lb) in found {
            self.violation(
                "double-lease",
                format!("event {id} is under lease {la} and, before it expired, under lease {lb}"),
                [ca, cb],
                [id],
            );
        }
    }

    /// One `Idempotency-Key` (per account): same request, same answer.
    fn idempotency(&mut self) {
        type Body = (bool, Vec<Content>);
        struct Keyed {
            call: CallId,
            inv: usize,
            done: usize,
            completed: u64,
            invoked: u64,
            body: Body,
            /// Event ids answered (2xx only), and whether marked replayed.
            ids: Option<(Vec<Option<String>>, bool)>,
            status: Option<u16>,
            may_have_run: bool,
        }
        let mut groups: BTreeMap<(String, String), Vec<Keyed>> = BTreeMap::new();
        for call in self.h.all_calls() {
            let (key, body) = match call.action {
                Action::Post {
                    content,
                    idem: Some(k),
                    valid: true,
                    ..
                } => (k, (false, vec![content.clone()])),
                Action::Batch {
                    items,
                    idem: Some(k),
                    ..
                } => (k, (true, items.clone())),
                _ => continue,
            };
            let ids = match call.outcome {
                Some(Outcome::Posted {
                    event_id, replayed, ..
                }) => Some((vec![Some(event_id.clone())], *replayed)),
                Some(Outcome::Batch { results, replayed }) => Some((
                    results.iter().map(|r| r.event_id.clone()).collect(),
                    *replayed,
                )),
                _ => None,
            };
            let may_have_run = call
                .outcome
                .is_none_or(|o| matches!(o.kind(), Kind::Ok | Kind::Info));
            groups
                .entry((self.account(call.actor).to_owned(), key.clone()))
                .or_default()
                .push(Keyed {
                    call: call.id,
                    inv: call.inv,
                    done: call.done,
                    completed: call.completed,
                    invoked: call.invoked,
                    body,
                    ids,
                    status: call.outcome.and_then(Outcome::status),
                    may_have_run,
                });
        }
        let mut found: Vec<(String, Vec<CallId>)> = Vec::new();
        for ((account, key), calls) in &groups {
            for b in calls {
                // A replay needs an earlier request with the key that may
                // have been processed.
                if let Some((_, true)) = &b.ids {
                    let earlier = calls.iter().any(|a| {
                        a.call != b.call && a.inv < b.done && a.may_have_run && a.body == b.body
                    });
                    if !earlier {
                        found.push((
                            format!("op #{}: answered as a replay (key {key} of account {account}), but no earlier request with the key could have been processed", b.call),
                            vec![b.call],
                        ));
                    }
                }
                // Against every answer kept before it was sent.
                for a in calls {
                    let Some((a_ids, _)) = &a.ids else {
                        continue;
                    };
                    if a.call == b.call || a.done >= b.inv {
                        continue;
                    }
                    if b.invoked >= a.completed.saturating_add(IDEMPOTENCY_TTL_MS) {
                        continue;
                    }
                    if a.body == b.body {
                        match (&b.ids, b.status) {
                            (Some((b_ids, replayed)), _) => {
                                if b_ids != a_ids {
                                    found.push((format!("op #{}: a replay of op #{} (key {key} of account {account}) answered other event ids ({:?} vs {:?})", b.call, a.call, b_ids, a_ids), vec![a.call, b.call]));
                                } else if !replayed {
                                    found.push((format!("op #{}: the same request as op #{} (key {key} of account {account}), whose answer was kept, was not answered as a replay", b.call, a.call), vec![a.call, b.call]));
                                }
                            }
                            (None, Some(409)) => {
                                found.push((format!("op #{}: the same request as op #{} (key {key} of account {account}), whose answer was kept, was answered 409", b.call, a.call), vec![a.call, b.call]));
                            }
                            _ => {}
                        }
                    } else if b.ids.is_some() {
                        found.push((format!("op #{}: key {key} of account {account} was answered 2xx for another body than op #{}'s, whose answer was kept (expected 409)", b.call, a.call), vec![a.call, b.call]));
                    }
                    break;
                }
            }
        }
        for (message, calls) in found {
            self.violation("idempotency", message, calls, []);
        }
    }
}
