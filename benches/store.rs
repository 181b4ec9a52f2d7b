//! What group commit buys on the embedded store: one insert at a time (each
//! waits for its own fsync) against N concurrent inserts (the writer thread
//! commits every waiting insert in one transaction, one fsync). Durable
//! writes as in production: WAL, synchronous=FULL, on the target dir's disk.
//!
//! `cargo bench --bench store`; the throughput line is inserts/s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::future::try_join_all;
use sha2::{Digest, Sha256};
use triggers_api::domain::{trunc_ms, AccountId, EventId, EventType, JsonObject, Source};
use triggers_api::store::sqlite::SqliteStore;
use triggers_api::store::{Dedup, Fingerprint, Inserted, NewEvent, Store};

const CONCURRENCY: [usize; 4] = [1, 8, 64, 256];

/// A 1 KiB payload, unique per `n` (so nothing is deduplicated).
fn event(account: &AccountId, n: u64) -> (NewEvent, Dedup) {
    let pad = "x".repeat(1024 - 40);
    let text = format!(r#"{{"n":{n:>20},"pad":"{pad}"}}"#);
    let payload = JsonObject::from_json_text(text.clone()).expect("object");
    let fp = Fingerprint(Sha256::digest(text.as_bytes()).into());
    (
        NewEvent {
            event_id: EventId::new_v7(),
            account: account.clone(),
            event_type: EventType::parse("bench.insert").expect("type"),
            payload,
            source: Some(Source::parse("bench").expect("source")),
            metadata: JsonObject::empty(),
            timestamp: trunc_ms(Utc::now()),
        },
        Dedup {
            fingerprint: fp,
            window: Duration::from_secs(300),
            margin: Duration::ZERO,
        },
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Not /tmp: it may be a tmpfs, where fsync is free. The target dir is on
    // the disk the server would use.
    let base = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let dir = tempfile::tempdir_in(&base).expect("tempdir under target/");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("store.db")).expect("open store"));
    let account = AccountId::parse("bench").expect("account");
    let counter = Arc::new(AtomicU64::new(0));

    let mut g = c.benchmark_group("store_insert");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    for n in CONCURRENCY {
        g.throughput(Throughput::Elements(n as u64));
        let name = if n == 1 { "single" } else { "concurrent" };
        g.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                let (store, account, counter) = (store.clone(), account.clone(), counter.clone());
                async move {
                    let inserts = (0..n).map(|_| {
                        let (ev, dd) = event(&account, counter.fetch_add(1, Ordering::Relaxed));
                        let store = store.clone();
                        // Spawned, so the inserts really are concurrent
                        // requests on the runtime's workers.
                        tokio::spawn(async move { store.insert_event(ev, dd).await })
                    });
                    let done = try_join_all(inserts).await.expect("join");
                    for r in done {
                        assert_eq!(r.expect("insert"), Inserted::Created);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
