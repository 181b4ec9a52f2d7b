//! The `lease` scenario: consumers lease up to 100 events at a time and
//! acknowledge the whole lease, while producers ingest. Every leased event
//! is tracked with its lease window (from the server's `leased_until`), so
//! the run proves what it measures: no event is handed to a second lease
//! while a first one holds it, and none is leased again after it was
//! acknowledged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use goose::goose::{GooseMethod, GooseRequest, GooseUser};
use goose::prelude::TransactionResult;

use crate::target;

/// Events per lease call.
pub(crate) const LIMIT: u32 = 100;
/// Lease duration: long enough that a consumer on a loaded machine acks
/// within it, so a re-lease would be a bug, not an expiry.
pub(crate) const LEASE_SECONDS: i64 = 30;

/// What the consumers saw, over the whole run.
#[derive(Debug, Default)]
struct Tracker {
    /// Per event id: the end of its latest lease (server time, ms) and
    /// whether it was acknowledged.
    events: HashMap<String, Seen>,
    leased: u64,
    /// Leased again after a first lease (whether or not it had ended).
    leased_again: u64,
    /// Handed to a lease while an earlier lease still held it.
    overlapping: u64,
    /// Leased after it was acknowledged.
    after_ack: u64,
    /// Lease calls that found nothing.
    empty: u64,
    /// Ids an ack reported stale (the lease no longer held them).
    stale: u64,
    /// (client time ms, events acknowledged) per ack call.
    acks: Vec<(i64, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    until_ms: i64,
    acked: bool,
}

static TRACKER: Mutex<Option<Tracker>> = Mutex::new(None);

/// Simulated processing time per lease (between the lease and its ack), ms.
static PROCESS_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn set_process_ms(ms: u64) {
    PROCESS_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

fn with_tracker<T>(f: impl FnOnce(&mut Tracker) -> T) -> T {
    let mut guard = TRACKER.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Tracker::default))
}

fn parse_ms(v: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Records one lease answer: `until_ms` is its `leased_until`, so it was
/// granted at `until_ms - LEASE_SECONDS` (server time).
fn record_lease(ids: &[String], until_ms: i64) {
    let granted = until_ms - LEASE_SECONDS * 1000;
    with_tracker(|t| {
        t.leased += ids.len() as u64;
        for id in ids {
            match t.events.get_mut(id) {
                None => {
                    t.events.insert(
                        id.clone(),
                        Seen {
                            until_ms,
                            acked: false,
                        },
                    );
                }
                Some(seen) => {
                    t.leased_again += 1;
                    if seen.until_ms > granted {
                        t.overlapping += 1;
                    }
                    if seen.acked {
                        t.after_ack += 1;
                    }
                    seen.until_ms = until_ms;
                }
            }
        }
    });
}

fn record_ack(acknowledged: &[String], stale: usize) {
    let now = chrono::Utc::now().timestamp_millis();
    with_tracker(|t| {
        for id in acknowledged {
            if let Some(seen) = t.events.get_mut(id) {
                seen.acked = true;
            }
        }
        t.stale += stale as u64;
        t.acks.push((now, acknowledged.len() as u64));
    });
}

/// What a consumer reads of a lease answer: ids and times only (serde skips
/// the payloads without building them, so the client leaves the server more
/// of a shared machine's CPU).
#[derive(serde::Deserialize)]
struct LeaseAnswer {
    lease_id: Option<String>,
    leased_until: Option<String>,
    events: Vec<EventRef>,
}

#[derive(serde::Deserialize)]
struct EventRef {
    event_id: String,
}

#[derive(serde::Deserialize)]
struct AckAnswer {
    acknowledged: Vec<String>,
    stale: Vec<String>,
}

async fn post<T: serde::de::DeserializeOwned>(
    user: &mut GooseUser,
    path: &'static str,
    body: String,
) -> Result<Option<T>, Box<goose::goose::TransactionError>> {
    let rb = user
        .get_request_builder(&GooseMethod::Post, path)?
        .bearer_auth(&target().key)
        .header("content-type", "application/json")
        .body(body);
    let req = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path(path)
        .name(path)
        .expect_status_code(200)
        .set_request_builder(rb)
        .build();
    let resp = user.request(req).await?;
    match resp.response {
        Ok(r) if r.status().is_success() => Ok(r.json::<T>().await.ok()),
        _ => Ok(None),
    }
}

/// A consumer's turn: lease up to 100, "process" them (`--process-ms`,
/// default nothing), ack the lease. An empty lease backs off 20 ms instead
/// of spinning.
pub(crate) async fn lease_and_ack(user: &mut GooseUser) -> TransactionResult {
    let body = format!(r#"{{"limit":{LIMIT},"lease_seconds":{LEASE_SECONDS}}}"#);
    let Some(leased) = post::<LeaseAnswer>(user, "/inbox/lease", body).await? else {
        return Ok(());
    };
    let ids: Vec<String> = leased.events.into_iter().map(|e| e.event_id).collect();
    let (Some(lease_id), Some(until)) = (
        leased.lease_id,
        leased.leased_until.as_deref().and_then(parse_ms),
    ) else {
        with_tracker(|t| t.empty += 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        return Ok(());
    };
    record_lease(&ids, until);
    let process = PROCESS_MS.load(std::sync::atomic::Ordering::Relaxed);
    if process > 0 {
        tokio::time::sleep(Duration::from_millis(process)).await;
    }
    let body = serde_json::json!({ "lease_id": lease_id }).to_string();
    if let Some(acked) = post::<AckAnswer>(user, "/inbox/ack", body).await? {
        record_ack(&acked.acknowledged, acked.stale.len());
    }
    Ok(())
}

/// What the consumers did, for the summary and the checks.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct LeaseStats {
    /// Events acknowledged through leases within the measured window, per
    /// second.
    pub acked_per_sec: f64,
    pub events_leased: u64,
    pub events_leased_again: u64,
    pub overlapping_leases: u64,
    pub leased_after_ack: u64,
    pub stale_acks: u64,
    pub empty_leases: u64,
    /// Distinct events leased over the run (warm-up included).
    pub distinct_events: usize,
}

/// The stats of the run so far; the ack rate counts acks made between
/// `from_ms` and `to_ms` (client time), over `seconds`.
pub(crate) fn stats(from_ms: i64, to_ms: i64, seconds: f64) -> LeaseStats {
    with_tracker(|t| {
        let acked: u64 = t
            .acks
            .iter()
            .filter(|(at, _)| (from_ms..=to_ms).contains(at))
            .map(|(_, n)| n)
            .sum();
        LeaseStats {
            acked_per_sec: acked as f64 / seconds.max(0.001),
            events_leased: t.leased,
            events_leased_again: t.leased_again,
            overlapping_leases: t.overlapping,
            leased_after_ack: t.after_ack,
            stale_acks: t.stale,
            empty_leases: t.empty,
            distinct_events: t.events.len(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lease_inside_the_first_one_is_an_overlap_and_one_after_an_ack_is_counted() {
        let id = vec![format!("e-{}", rand::random::<u64>())];
        let until = 1_000_000_000;
        let before = stats(0, 0, 1.0);
        record_lease(&id, until);
        // Granted 1 ms before the first lease ended: overlap.
        record_lease(&id, until + LEASE_SECONDS * 1000 - 1);
        let s = stats(0, 0, 1.0);
        assert_eq!(s.overlapping_leases - before.overlapping_leases, 1);
        assert_eq!(s.events_leased_again - before.events_leased_again, 1);
        // Granted exactly when the second ended, after an ack: no overlap,
        // but leased after its acknowledgement.
        record_ack(&id, 0);
        record_lease(&id, until + 2 * LEASE_SECONDS * 1000 - 1);
        let s2 = stats(0, 0, 1.0);
        assert_eq!(s2.overlapping_leases, s.overlapping_leases);
        assert_eq!(s2.leased_after_ack - s.leased_after_ack, 1);
    }
}
