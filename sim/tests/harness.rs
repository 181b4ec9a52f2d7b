//! The harness itself: one seed replays byte for byte, and the checker fails
//! runs over deliberately broken stores, naming the invariant.

#![allow(clippy::unwrap_used)]

use triggers_sim::broken::Broken;
use triggers_sim::{run, SimConfig};

fn config(seed: u64, steps: usize) -> SimConfig {
    SimConfig {
        steps,
        ..SimConfig::new(seed)
    }
}

#[test]
fn one_seed_gives_the_same_history_byte_for_byte() {
    let cfg = config(11, 1200);
    let a = run(&cfg).unwrap();
    let b = run(&cfg).unwrap();
    assert!(a.ops > 1000, "{}", a.summary());
    assert!(
        a.span_ms > 12 * 3600 * 1000,
        "the run spans many simulated hours: {}",
        a.summary()
    );
    assert_eq!(a.history.digest, b.history.digest);
    assert!(a.history.lines().eq(b.history.lines()));
    assert!(a.violations.is_empty(), "{}{}", a.summary(), a.report());
}

#[test]
fn different_seeds_give_different_histories() {
    let a = run(&config(1, 300)).unwrap();
    let b = run(&config(2, 300)).unwrap();
    assert_ne!(a.history.digest, b.history.digest);
}

/// Each broken store fails the checker with its invariant named, within a
/// few seeds (the harness is deterministic, so this never flakes).
fn caught(kind: Broken) {
    for seed in 1..=6 {
        let r = run(&SimConfig {
            broken: Some(kind),
            ..config(seed, 1500)
        })
        .unwrap();
        if r.violations
            .iter()
            .any(|v| v.invariant == kind.expected_invariant())
        {
            let report = r.report();
            assert!(
                report.contains(&format!("VIOLATION {}", kind.expected_invariant())),
                "{report}"
            );
            assert!(report.contains(&format!("seed {seed}")), "{report}");
            assert!(
                report.contains(&format!("replay: make sim SEED={seed}")),
                "{report}"
            );
            assert!(report.contains("history excerpt:"), "{report}");
            return;
        }
    }
    panic!(
        "the checker never reported {} over the {} store",
        kind.expected_invariant(),
        kind.name()
    );
}

#[test]
fn a_store_that_drops_an_answered_write_fails_lost() {
    caught(Broken::DropsWrite);
}

#[test]
fn a_store_that_returns_another_accounts_event_fails_cross_tenant() {
    caught(Broken::LeaksAccount);
}

#[test]
fn a_store_that_repeats_a_page_entry_fails_walk_repeat() {
    caught(Broken::RepeatsEntry);
}

#[test]
fn a_store_that_forgets_dedup_after_a_restart_fails_duplicated() {
    caught(Broken::ForgetsDedup);
}

#[test]
fn a_store_that_hands_a_leased_event_to_a_second_lease_fails_double_lease() {
    caught(Broken::StealsLeases);
}

#[test]
fn the_same_workload_passes_without_faults() {
    let r = run(&SimConfig {
        faults: false,
        ..config(5, 600)
    })
    .unwrap();
    assert!(r.violations.is_empty(), "{}", r.report());
    assert_eq!(r.info, 0, "no fault, no unknown outcome: {}", r.summary());
}
