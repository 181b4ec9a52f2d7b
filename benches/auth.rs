//! The per-request key check: the cached hot path against a cold bcrypt
//! verification at cost 12, and the negative paths (unknown key id, wrong
//! secret for a real key id).
//!
//! `cargo bench --bench auth`

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use triggers_api::auth::{AuthConfig, AuthError, AuthMetrics, Authenticator, ClientNet};
use triggers_api::clock::SystemClock;
use triggers_api::domain::Role;
use triggers_api::store::sqlite::SqliteStore;
use triggers_api::store::Store;

/// The production default (`--bcrypt-cost`).
const COST: u32 = 12;

/// Replaces the secret of a `trg_<id>_<secret>` key, keeping its length and
/// alphabet, so the key id is real but the secret is wrong.
fn wrong_secret(token: &str, n: u64) -> String {
    let cut = token.len() - 16;
    format!("{}{:016x}", &token[..cut], n)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("auth.db")).expect("open store"));
    let created = rt
        .block_on(triggers_api::auth::admin::create(
            store.as_ref(),
            "bench",
            "bench@example.com",
            Role::Creator,
            1_000_000,
            COST,
        ))
        .expect("create key");
    let token = created.token.clone();
    let hash = created.record.secret_hash.clone();
    // The secret is base64url and may itself contain '_': split with the
    // service's own parser, not at the last underscore.
    let secret = triggers_api::auth::key::parse(&token)
        .expect("key format")
        .secret
        .to_owned();

    // A long TTL so the cached entry outlives the measurement.
    let auth = Arc::new(Authenticator::new(
        store.clone(),
        Arc::new(SystemClock),
        AuthConfig {
            cache_ttl: Duration::from_secs(3600),
            ..AuthConfig::default()
        },
        AuthMetrics::default(),
    ));
    let src = ClientNet::UNKNOWN;
    rt.block_on(auth.authenticate(&token, src))
        .expect("first check");

    let mut g = c.benchmark_group("auth");

    g.bench_function("cached_key_check", |b| {
        b.to_async(&rt).iter(|| {
            let auth = auth.clone();
            let token = token.clone();
            async move { auth.authenticate(&token, src).await.expect("valid") }
        })
    });

    // Unknown key id: the first check misses the store, every later one is
    // answered from the negative cache.
    let unknown = format!("trg_{}_{}", "zzzzzzzzzzzzzzzz", &secret);
    let _ = rt.block_on(auth.authenticate(&unknown, src));
    g.bench_function("unknown_key_negative_cached", |b| {
        b.to_async(&rt).iter(|| {
            let auth = auth.clone();
            let unknown = unknown.clone();
            async move {
                assert!(matches!(
                    auth.authenticate(&unknown, src).await,
                    Err(AuthError::Invalid)
                ))
            }
        })
    });

    // A fresh unknown key id each time: a store lookup, no bcrypt.
    let mut n = 0u64;
    g.bench_function("unknown_key_store_lookup", |b| {
        b.to_async(&rt).iter_batched(
            || {
                n += 1;
                format!("trg_{:016}_{}", n, &secret)
            },
            |t| {
                let auth = auth.clone();
                async move { assert!(auth.authenticate(&t, src).await.is_err()) }
            },
            BatchSize::SmallInput,
        )
    });

    // Wrong secret for a real key id, repeated: negative cache.
    let wrong = wrong_secret(&token, 0);
    let _ = rt.block_on(auth.authenticate(&wrong, src));
    g.bench_function("wrong_secret_negative_cached", |b| {
        b.to_async(&rt).iter(|| {
            let auth = auth.clone();
            let wrong = wrong.clone();
            async move { assert!(auth.authenticate(&wrong, src).await.is_err()) }
        })
    });

    // A different wrong secret each time: after 20 bcrypt runs in a minute
    // from one source the key id is refused without bcrypt (429). Burn the
    // 20 first (cost-12 bcrypts).
    for i in 1..=20 {
        let _ = rt.block_on(auth.authenticate(&wrong_secret(&token, i), src));
    }
    let mut m = 1_000u64;
    g.bench_function("wrong_secret_fresh_over_budget", |b| {
        b.to_async(&rt).iter_batched(
            || {
                m += 1;
                wrong_secret(&token, m)
            },
            |t| {
                let auth = auth.clone();
                async move { assert!(auth.authenticate(&t, src).await.is_err()) }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // The cold path: what every request would cost without the cache.
    let mut g = c.benchmark_group("auth_cold");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("bcrypt_verify_cost12", |b| {
        b.iter(|| assert!(bcrypt::verify(&secret, &hash).expect("verify")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
