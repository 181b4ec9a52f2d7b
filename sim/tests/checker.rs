//! The checker on hand-written histories: each invariant fails when its
//! rule is broken, and holds on the legitimate cases next to it.

#![allow(clippy::unwrap_used)]

use triggers_sim::checker::{check, CheckConfig};
use triggers_sim::history::{Action, ActorInfo, Content, Entry, History, Note, Outcome, Seen};

const WINDOW: u64 = 300_000;

fn cfg() -> CheckConfig {
    CheckConfig {
        dedup_window_ms: WINDOW,
        retention_ms: 3_600_000,
        auth_ttl_ms: 30_000,
        max_page_bytes: 10_000,
        header_timeout_ms: 10_000,
        per_key_per_minute: 100,
        per_source_per_minute: 20,
        keys: 2,
        shutdown_bound_ms: 20_000,
        max_leases: 5,
    }
}

/// Builds a history: actors 0 (producer of a), 1 (consumer of a),
/// 2 (key of account b), 3 (the final walk of a).
struct H {
    entries: Vec<Entry>,
    calls: usize,
    t: u64,
}

fn actors() -> Vec<ActorInfo> {
    [
        ("a-p", "a", "a-p"),
        ("a-c", "a", "a-c"),
        ("b-c", "b", "b-c"),
        ("final-a", "a", "a-c"),
    ]
    .into_iter()
    .map(|(n, a, k)| ActorInfo {
        name: n.into(),
        account: a.into(),
        key: k.into(),
    })
    .collect()
}

fn content(n: u32) -> Content {
    Content {
        account: "a".into(),
        event_type: "t".into(),
        payload: format!(r#"{{"acct":"a","n":{n}}}"#),
        source: None,
        metadata: None,
    }
}

fn seen(id: &str, n: u32, ts: i64) -> Seen {
    let payload = format!(r#"{{"acct":"a","n":{n}}}"#);
    Seen {
        id: id.into(),
        ts_ms: ts,
        event_type: "t".into(),
        approx_bytes: 200 + payload.len() + 2 + 1,
        payload,
        source: None,
        metadata: "{}".into(),
        delivered: false,
    }
}

impl H {
    fn new() -> Self {
        Self {
            entries: Vec::new(),
            calls: 0,
            t: 0,
        }
    }

    fn at(&mut self, t: u64) -> &mut Self {
        self.t = t;
        self
    }

    fn call(&mut self, actor: usize, action: Action, outcome: Outcome) -> &mut Self {
        let call = self.calls;
        self.calls += 1;
        self.entries.push(Entry::Invoke {
            call,
            t: self.t,
            actor,
            action,
        });
        self.entries.push(Entry::Complete {
            call,
            t: self.t,
            outcome,
        });
        self
    }

    fn note(&mut self, note: Note) -> &mut Self {
        self.entries.push(Entry::Note { t: self.t, note });
        self
    }

    fn post(&mut self, n: u32, id: &str, ts: i64) -> &mut Self {
        self.call(
            0,
            Action::Post {
                send: u64::from(n),
                attempt: 1,
                content: content(n),
                valid: true,
                idem: None,
            },
            Outcome::Posted {
                status: 201,
                event_id: id.into(),
                ts_ms: ts,
                duplicate: false,
                replayed: false,
            },
        )
    }

    fn page(&mut self, actor: usize, walk: u64, events: Vec<Seen>, final_walk: bool) -> &mut Self {
        self.call(
            actor,
            Action::Page {
                walk,
                page: 0,
                limit: 50,
                event_type: None,
                cursor: None,
                final_walk,
                quarantined: false,
            },
            Outcome::Page {
                events,
                has_more: false,
                next_cursor: None,
            },
        )
    }

    fn ack(&mut self, id: &str, outcome: Outcome) -> &mut Self {
        self.call(1, Action::Ack { id: id.into() }, outcome)
    }

    fn invariants(&self) -> Vec<&'static str> {
        let h = History::from_entries(actors(), self.entries.clone());
        let mut v: Vec<&'static str> = check(&h, &cfg()).iter().map(|v| v.invariant).collect();
        v.dedup();
        v
    }
}

#[test]
fn a_clean_history_has_no_violation() {
    let mut h = H::new();
    h.at(1).post(1, "e1", 1).post(2, "e2", 2);
    h.at(5)
        .page(1, 1, vec![seen("e1", 1, 1), seen("e2", 2, 2)], false);
    h.ack("e1", Outcome::Acked);
    h.at(9).page(3, 2, vec![seen("e2", 2, 2)], true);
    assert_eq!(h.invariants(), Vec::<&str>::new());
}

#[test]
fn an_answered_event_missing_from_the_final_walk_is_lost_unless_an_ack_may_have_removed_it() {
    let mut h = H::new();
    h.at(1).post(1, "e1", 1).post(2, "e2", 2);
    h.at(9).page(3, 1, vec![], true);
    assert_eq!(h.invariants(), ["lost"]);

    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    // An ack with no answer may have happened.
    h.ack("e1", Outcome::Unknown("timeout"));
    h.at(9).page(3, 1, vec![], true);
    assert_eq!(h.invariants(), Vec::<&str>::new());

    // An ack refused (a 4xx) did not happen.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.ack(
        "e1",
        Outcome::Status {
            status: 429,
            code: "RATE_LIMITED".into(),
        },
    );
    h.at(9).page(3, 1, vec![], true);
    assert_eq!(h.invariants(), ["lost"]);
}

#[test]
fn an_event_nobody_sent_is_unexpected_and_another_accounts_is_cross_tenant() {
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.page(1, 1, vec![seen("e1", 1, 1), seen("x9", 9, 1)], false);
    h.at(9).page(3, 2, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), ["unexpected"]);

    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.page(2, 1, vec![seen("e1", 1, 1)], false);
    h.at(9).page(3, 2, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), ["cross-tenant"]);

    // Another account's id accepted by DELETE.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.call(
        2,
        Action::Refusable {
            what: "foreign event acknowledgement",
            expect: 404,
            target: "DELETE /events/e1".into(),
        },
        Outcome::Status {
            status: 204,
            code: String::new(),
        },
    );
    h.at(9).page(3, 2, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), ["cross-tenant"]);
}

#[test]
fn two_ids_for_one_content_inside_the_window_are_duplicated_and_at_the_window_are_not() {
    let ts = i64::try_from(WINDOW).unwrap();
    let mut h = H::new();
    h.at(1).post(1, "e1", 1000).post(1, "e2", 1000 + ts - 1);
    h.at(9).page(
        3,
        1,
        vec![seen("e1", 1, 1000), seen("e2", 1, 1000 + ts - 1)],
        true,
    );
    assert_eq!(h.invariants(), ["duplicated"]);

    let mut h = H::new();
    h.at(1).post(1, "e1", 1000).post(1, "e2", 1000 + ts);
    h.at(9).page(
        3,
        1,
        vec![seen("e1", 1, 1000), seen("e2", 1, 1000 + ts)],
        true,
    );
    assert_eq!(h.invariants(), Vec::<&str>::new());
}

#[test]
fn walks_must_show_every_known_event_once_oldest_first() {
    // Missing: e1 was answered before the walk began.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1).post(2, "e2", 2);
    h.at(5).page(1, 1, vec![seen("e2", 2, 2)], false);
    h.at(9)
        .page(3, 2, vec![seen("e1", 1, 1), seen("e2", 2, 2)], true);
    assert_eq!(h.invariants(), ["walk-missing"]);

    // Repeated.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.at(5)
        .page(1, 1, vec![seen("e1", 1, 1), seen("e1", 1, 1)], false);
    h.at(9).page(3, 2, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), ["walk-repeat"]);

    // Out of order: e1 was answered before e2 was sent.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1).post(2, "e2", 2);
    h.at(5)
        .page(1, 1, vec![seen("e2", 2, 2), seen("e1", 1, 1)], false);
    h.at(9)
        .page(3, 2, vec![seen("e1", 1, 1), seen("e2", 2, 2)], true);
    assert_eq!(h.invariants(), ["walk-order"]);
}

#[test]
fn an_event_acknowledged_with_204_never_reappears() {
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.ack("e1", Outcome::Acked);
    h.at(5).page(1, 1, vec![seen("e1", 1, 1)], false);
    h.at(9).page(3, 2, vec![], true);
    assert_eq!(h.invariants(), ["ack-reappeared"]);
}

#[test]
fn a_get_after_the_post_answered_must_find_the_event() {
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.call(
        0,
        Action::Get { id: "e1".into() },
        Outcome::Status {
            status: 404,
            code: "NOT_FOUND".into(),
        },
    );
    h.at(9).page(3, 2, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), ["read-your-writes"]);
}

#[test]
fn a_revoked_key_must_fail_once_the_auth_cache_ttl_has_passed() {
    let probe = |t: u64, ok: bool| {
        let mut h = H::new();
        h.at(1000).note(Note::Revoked {
            label: "a-c".into(),
        });
        let outcome = if ok {
            Outcome::Page {
                events: vec![],
                has_more: false,
                next_cursor: None,
            }
        } else {
            Outcome::Status {
                status: 403,
                code: "FORBIDDEN".into(),
            }
        };
        h.at(t).call(
            1,
            Action::Page {
                walk: 1,
                page: 0,
                limit: 1,
                event_type: None,
                cursor: None,
                final_walk: false,
                quarantined: false,
            },
            outcome,
        );
        h.invariants()
    };
    // Within the TTL a cached key may still work; past it, never.
    assert_eq!(probe(1000 + 30_000, true), Vec::<&str>::new());
    assert_eq!(probe(1000 + 30_001, false), Vec::<&str>::new());
    assert_eq!(probe(1000 + 30_001, true), ["revocation"]);
}

#[test]
fn pages_stay_within_their_limit_and_byte_bound() {
    let mut big = seen("e2", 2, 2);
    big.approx_bytes = 9_900;
    let mut h = H::new();
    h.at(1).post(1, "e1", 1).post(2, "e2", 2);
    h.at(5)
        .page(1, 1, vec![seen("e1", 1, 1), big.clone()], false);
    h.at(9)
        .page(3, 2, vec![seen("e1", 1, 1), seen("e2", 2, 2)], true);
    assert_eq!(h.invariants(), ["page-bound"]);

    // One event alone may exceed the bound.
    let mut h = H::new();
    h.at(1).post(2, "e2", 2);
    h.at(5).page(1, 1, vec![big], false);
    h.at(9).page(3, 2, vec![seen("e2", 2, 2)], true);
    assert_eq!(h.invariants(), Vec::<&str>::new());
}

fn burst(runs_after: u64, sources: u32) -> Note {
    Note::Burst {
        key_id: "k".into(),
        attempts: 300,
        sources,
        instance: 1,
        runs_before: 10,
        runs_after,
        instance_after: 1,
    }
}

#[test]
fn a_wrong_secret_burst_stays_within_the_bcrypt_budgets() {
    // One network: 20 a minute, a burst may straddle two windows.
    let mut h = H::new();
    h.note(burst(10 + 40 + 2, 1));
    assert_eq!(h.invariants(), Vec::<&str>::new());
    let mut h = H::new();
    h.note(burst(10 + 40 + 3, 1));
    assert_eq!(h.invariants(), ["bcrypt-budget"]);
    // Many networks: the per-key cap of 100 a minute.
    let mut h = H::new();
    h.note(burst(10 + 203, 50));
    assert_eq!(h.invariants(), ["bcrypt-budget"]);
}

#[test]
fn stalled_heads_shutdowns_and_leaks_are_bounded() {
    let mut h = H::new();
    h.call(0, Action::SlowHead, Outcome::Closed { after_ms: 10_000 });
    h.call(0, Action::SlowHead, Outcome::Closed { after_ms: 12_000 });
    h.note(Note::ServerStopped {
        instance: 1,
        took_ms: 25_000,
    });
    h.note(Note::Resource {
        what: "open connections",
        value: 1,
    });
    assert_eq!(
        h.invariants(),
        ["header-timeout", "shutdown-bounded", "resource-leak"]
    );
}

#[test]
fn invalid_requests_must_be_refused_and_valid_ones_not() {
    let mut h = H::new();
    h.call(
        0,
        Action::Refusable {
            what: "unknown field",
            expect: 400,
            target: "POST /events".into(),
        },
        Outcome::Status {
            status: 201,
            code: String::new(),
        },
    );
    h.call(
        0,
        Action::Post {
            send: 1,
            attempt: 1,
            content: content(1),
            valid: true,
            idem: None,
        },
        Outcome::Status {
            status: 400,
            code: "VALIDATION_ERROR".into(),
        },
    );
    h.call(
        0,
        Action::Get { id: "e".into() },
        Outcome::Status {
            status: 500,
            code: "INTERNAL_ERROR".into(),
        },
    );
    assert_eq!(
        h.invariants(),
        ["accepted-invalid", "refused-valid", "internal-error"]
    );
}

fn lease(id: &str, until_ms: u64) -> Outcome {
    Outcome::Leased {
        lease_id: id.into(),
        until_ms,
        events: vec![seen("e1", 1, 1)],
    }
}

#[test]
fn no_event_is_under_two_unexpired_leases() {
    let take = Action::Lease {
        limit: 10,
        lease_seconds: 30,
        event_type: None,
        wait_seconds: 0,
    };
    // L2 granted while L1 is unexpired.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.at(10).call(1, take.clone(), lease("L1", 30_010));
    h.at(20_000).call(1, take.clone(), lease("L2", 50_000));
    h.at(99_000).page(3, 1, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), ["double-lease"]);

    // After L1 expired, or after L1 was released: fine.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.at(10).call(1, take.clone(), lease("L1", 30_010));
    h.at(30_011).call(1, take.clone(), lease("L2", 60_011));
    h.at(99_000).page(3, 1, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), Vec::<&str>::new());

    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.at(10).call(1, take.clone(), lease("L1", 30_010));
    h.at(15).call(
        1,
        Action::LeaseSettle {
            lease_id: "L1".into(),
            release: true,
            event_ids: vec!["e1".into()],
            all: true,
        },
        Outcome::Settled {
            done: vec!["e1".into()],
            stale: vec![],
        },
    );
    h.at(20).call(1, take, lease("L2", 30_020));
    h.at(99_000).page(3, 1, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), Vec::<&str>::new());
}

#[test]
fn status_is_not_ok_while_every_store_call_fails() {
    let ok = || Outcome::Status {
        status: 200,
        code: "ok".into(),
    };
    let mut h = H::new();
    h.note(Note::Faults { level: "outage" });
    h.call(2, Action::Status, ok());
    h.call(
        2,
        Action::Status,
        Outcome::Status {
            status: 503,
            code: "degraded".into(),
        },
    );
    h.note(Note::Faults { level: "off" });
    h.call(2, Action::Status, ok());
    assert_eq!(h.invariants(), ["status"]);
}

fn take() -> Action {
    Action::Lease {
        limit: 10,
        lease_seconds: 30,
        event_type: None,
        wait_seconds: 0,
    }
}

fn settle(lease: &str, ids: &[&str], release: bool) -> Action {
    Action::LeaseSettle {
        lease_id: lease.into(),
        release,
        event_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        all: false,
    }
}

fn settled(done: &[&str], stale: &[&str]) -> Outcome {
    Outcome::Settled {
        done: done.iter().map(|s| (*s).to_owned()).collect(),
        stale: stale.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn quarantine_page(h: &mut H, walk: u64, events: Vec<Seen>) {
    h.call(
        3,
        Action::Page {
            walk,
            page: 0,
            limit: 50,
            event_type: None,
            cursor: None,
            final_walk: true,
            quarantined: true,
        },
        Outcome::Page {
            events,
            has_more: false,
            next_cursor: None,
        },
    );
}

#[test]
fn an_event_acknowledged_through_its_lease_is_not_lost_and_never_reappears() {
    // Acked through /inbox/ack: gone from the final walk, and not lost.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.at(10).call(1, take(), lease("L1", 30_010));
    h.at(20)
        .call(1, settle("L1", &["e1"], false), settled(&["e1"], &[]));
    h.at(99_000).page(3, 1, vec![], true);
    assert_eq!(h.invariants(), Vec::<&str>::new());

    // Listed stale: the ack did not take, so the event must still be there.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.at(10).call(1, take(), lease("L1", 30_010));
    h.at(20)
        .call(1, settle("L1", &["e1"], false), settled(&[], &["e1"]));
    h.at(99_000).page(3, 1, vec![], true);
    assert_eq!(h.invariants(), ["lost"]);

    // An ack with no answer may have happened.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.at(10).call(1, take(), lease("L1", 30_010));
    h.at(20)
        .call(1, settle("L1", &["e1"], false), Outcome::Unknown("timeout"));
    h.at(99_000).page(3, 1, vec![], true);
    assert_eq!(h.invariants(), Vec::<&str>::new());

    // Acknowledged, then in a page and in another lease.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.at(10).call(1, take(), lease("L1", 30_010));
    h.at(20)
        .call(1, settle("L1", &["e1"], false), settled(&["e1"], &[]));
    h.at(40_000).call(1, take(), lease("L2", 70_000));
    h.at(99_000).page(3, 1, vec![], true);
    assert_eq!(h.invariants(), ["ack-reappeared"]);
}

#[test]
fn a_release_by_the_first_lease_allows_a_second_one_at_once() {
    // Released (or maybe released: no answer) before the second lease.
    for outcome in [settled(&["e1"], &[]), Outcome::Unknown("timeout")] {
        let mut h = H::new();
        h.at(1).post(1, "e1", 1);
        h.at(10).call(1, take(), lease("L1", 30_010));
        h.at(15).call(1, settle("L1", &["e1"], true), outcome);
        h.at(20).call(1, take(), lease("L2", 30_020));
        h.at(99_000).page(3, 1, vec![seen("e1", 1, 1)], true);
        assert_eq!(h.invariants(), Vec::<&str>::new());
    }
    // A release that found it stale does not.
    let mut h = H::new();
    h.at(1).post(1, "e1", 1);
    h.at(10).call(1, take(), lease("L1", 30_010));
    h.at(15)
        .call(1, settle("L1", &["e1"], true), settled(&[], &["e1"]));
    h.at(20).call(1, take(), lease("L2", 30_020));
    h.at(99_000).page(3, 1, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), ["double-lease"]);
}

#[test]
fn quarantined_events_are_not_lost_when_the_quarantine_walk_shows_them() {
    // Leased five times (max_leases), then only in the quarantine listing.
    let five = |h: &mut H| {
        h.at(1).post(1, "e1", 1);
        for i in 0..5u64 {
            h.at(10 + i * 40_000)
                .call(1, take(), lease(&format!("L{i}"), 30_010 + i * 40_000));
        }
    };
    let mut h = H::new();
    five(&mut h);
    h.at(999_000).page(3, 1, vec![], true);
    quarantine_page(&mut h, 2, vec![seen("e1", 1, 1)]);
    assert_eq!(h.invariants(), Vec::<&str>::new());

    // In neither listing: lost.
    let mut h = H::new();
    five(&mut h);
    h.at(999_000).page(3, 1, vec![], true);
    quarantine_page(&mut h, 2, vec![]);
    assert_eq!(h.invariants(), ["lost"]);

    // A non-final walk need not show a possibly quarantined event.
    let mut h = H::new();
    five(&mut h);
    h.at(500_000).page(1, 1, vec![], false);
    h.at(999_000).page(3, 2, vec![], true);
    quarantine_page(&mut h, 3, vec![seen("e1", 1, 1)]);
    assert_eq!(h.invariants(), Vec::<&str>::new());
}

fn batch(send: u64, items: Vec<Content>, idem: Option<&str>) -> Action {
    Action::Batch {
        send,
        attempt: 1,
        items,
        idem: idem.map(str::to_owned),
    }
}

fn batch_ok(ids: &[&str], ts: i64, replayed: bool) -> Outcome {
    let mut first: Vec<&str> = Vec::new();
    Outcome::Batch {
        replayed,
        results: ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let dup = first.contains(id);
                first.push(id);
                triggers_sim::history::ItemResult {
                    index: i,
                    status: if dup { 200 } else { 201 },
                    event_id: Some((*id).to_owned()),
                    ts_ms: Some(ts),
                    duplicate: dup,
                }
            })
            .collect(),
    }
}

#[test]
fn batch_items_count_like_single_posts() {
    // An in-batch repeat answered with the first item's id: fine; e2 missing
    // from the final walk: lost.
    let mut h = H::new();
    h.at(1).call(
        0,
        batch(1, vec![content(1), content(2), content(1)], None),
        batch_ok(&["e1", "e2", "e1"], 1, false),
    );
    h.at(99_000).page(3, 1, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), ["lost"]);

    // Two ids for one content within a batch: duplicated.
    let mut h = H::new();
    h.at(1).call(
        0,
        batch(1, vec![content(1), content(1)], None),
        batch_ok(&["e1", "e2"], 1, false),
    );
    h.at(99_000)
        .page(3, 1, vec![seen("e1", 1, 1), seen("e2", 1, 1)], true);
    assert_eq!(h.invariants(), ["duplicated"]);
}

fn keyed_post(send: u64, n: u32, key: &str) -> Action {
    Action::Post {
        send,
        attempt: 1,
        content: content(n),
        valid: true,
        idem: Some(key.into()),
    }
}

fn posted(id: &str, ts: i64, status: u16, replayed: bool) -> Outcome {
    Outcome::Posted {
        status,
        event_id: id.into(),
        ts_ms: ts,
        duplicate: status == 200,
        replayed,
    }
}

#[test]
fn one_idempotency_key_answers_one_request_once() {
    let conflict = || Outcome::Status {
        status: 409,
        code: "CONFLICT".into(),
    };
    // A replay answers the first id, marked; another body is 409.
    let mut h = H::new();
    h.at(1)
        .call(0, keyed_post(1, 1, "k"), posted("e1", 1, 201, false));
    h.at(5)
        .call(0, keyed_post(2, 1, "k"), posted("e1", 1, 201, true));
    h.at(6).call(0, keyed_post(3, 2, "k"), conflict());
    h.at(99_000).page(3, 1, vec![seen("e1", 1, 1)], true);
    assert_eq!(h.invariants(), Vec::<&str>::new());

    // A replay with another id; another body processed; a 409 to the same
    // request; a replay of nothing.
    let cases: Vec<Vec<(Action, Outcome)>> = vec![
        vec![
            (keyed_post(1, 1, "k"), posted("e1", 1, 201, false)),
            (keyed_post(2, 1, "k"), posted("e9", 1, 200, true)),
        ],
        vec![
            (keyed_post(1, 1, "k"), posted("e1", 1, 201, false)),
            (keyed_post(2, 2, "k"), posted("e2", 5, 201, false)),
        ],
        vec![
            (keyed_post(1, 1, "k"), posted("e1", 1, 201, false)),
            (keyed_post(2, 1, "k"), conflict()),
        ],
        vec![(keyed_post(1, 1, "k"), posted("e1", 1, 201, true))],
        vec![
            (keyed_post(1, 1, "k"), posted("e1", 1, 201, false)),
            (keyed_post(2, 1, "k"), posted("e1", 1, 200, false)),
        ],
    ];
    for case in cases {
        let mut h = H::new();
        let mut listed = Vec::new();
        for (i, (action, outcome)) in case.into_iter().enumerate() {
            if let Outcome::Posted {
                event_id, ts_ms, ..
            } = &outcome
            {
                let n = if event_id == "e2" { 2 } else { 1 };
                if !listed.iter().any(|s: &Seen| s.id == *event_id) {
                    listed.push(seen(event_id, n, *ts_ms));
                }
            }
            h.at(1 + i as u64 * 5).call(0, action, outcome);
        }
        h.at(99_000).page(3, 1, listed, true);
        let found = h.invariants();
        assert!(found.contains(&"idempotency"), "{found:?}");
    }
}
