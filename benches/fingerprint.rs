//! The dedup fingerprint against plain SHA-256 over the same number of bytes
//! (the limit: the fingerprint hashes at least the payload's bytes). The
//! fingerprint starts from the payload's JSON text, as the server does for a
//! POST (no parsed tree is built, so nothing is left out of the timing). Goal:
//! fingerprint throughput >= 0.4x raw SHA-256 at 64 KiB and above.
//!
//! `cargo bench --bench fingerprint` prints criterion's figures and then one
//! ratio line per size, read back from criterion's own estimates.

use std::path::PathBuf;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use serde_json::Value;
use sha2::{Digest, Sha256};
use triggers_api::domain::fingerprint::fingerprint;

const SIZES: [(&str, usize); 3] = [("1KiB", 1024), ("64KiB", 64 * 1024), ("256KiB", 256 * 1024)];

/// A realistic event payload of about `target` bytes of compact JSON: a few
/// top-level fields and an array of order lines (nested objects with strings,
/// integers, decimals, booleans and nulls), keys deliberately unsorted.
fn payload(target: usize) -> (String, usize) {
    let mut lines = Vec::new();
    let mut i = 0u64;
    loop {
        let text = format!(
            r#"{{"sku":"SKU-{i:08}","qty":{q},"price":{p}.{c:02},"name":"Item number {i} \u00e9 with a \"quote\"","tags":["a","b{i}"],"gift":{g},"note":null,"attrs":{{"z":{i},"colour":"blue","a":true}}}}"#,
            q = i % 7 + 1,
            p = i * 37 % 1000,
            c = i % 100,
            g = i % 2 == 0,
        );
        lines.push(text);
        let body = format!(
            r#"{{"order_id":"ord_{target}","customer":{{"id":42,"email":"x@example.com"}},"total":"123.45","lines":[{}]}}"#,
            lines.join(",")
        );
        if body.len() >= target {
            // Drop the last line so the payload stays at or under target,
            // unless it is the only one.
            if lines.len() > 1 && body.len() > target {
                lines.pop();
            }
            let body = format!(
                r#"{{"order_id":"ord_{target}","customer":{{"id":42,"email":"x@example.com"}},"total":"123.45","lines":[{}]}}"#,
                lines.join(",")
            );
            let len = body.len();
            assert!(serde_json::from_str::<Value>(&body).is_ok_and(|v| v.is_object()));
            return (body, len);
        }
        i += 1;
    }
}

/// The previous implementation, kept as the baseline: what a POST used to
/// cost — parse the payload into a `serde_json::Map`, then walk the tree
/// (sorted keys, serde_json escaping) into the hasher.
fn tree_walk_baseline(event_type: &str, payload: &str, source: Option<&str>) -> [u8; 32] {
    use std::io::Write;
    struct HashWriter<'a>(&'a mut Sha256);
    impl Write for HashWriter<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    fn put(h: &mut Sha256, v: &Value) {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                h.update(b"{");
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        h.update(b",");
                    }
                    let _ = serde_json::to_writer(HashWriter(h), k);
                    h.update(b":");
                    put(h, v);
                }
                h.update(b"}");
            }
            Value::Array(items) => {
                h.update(b"[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        h.update(b",");
                    }
                    put(h, item);
                }
                h.update(b"]");
            }
            Value::String(s) => {
                let _ = serde_json::to_writer(HashWriter(h), s);
            }
            other => {
                let _ = write!(HashWriter(h), "{other}");
            }
        }
    }
    let map: serde_json::Map<String, Value> = serde_json::from_str(payload).expect("an object");
    let mut h = Sha256::new();
    h.update(b"triggers-fp-v1\n");
    h.update((event_type.len() as u64).to_be_bytes());
    h.update(event_type.as_bytes());
    match source {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    }
    put(&mut h, &Value::Object(map));
    h.finalize().into()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fingerprint");
    for (name, size) in SIZES {
        let (text, len) = payload(size);
        assert_eq!(
            fingerprint("order.created", &text, Some("shop")).map(|f| f.0),
            Ok(tree_walk_baseline("order.created", &text, Some("shop"))),
            "the baseline computes the same fingerprint"
        );
        let raw = vec![0x5au8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("fingerprint", name), &text, |b, t| {
            b.iter(|| fingerprint("order.created", std::hint::black_box(t), Some("shop")))
        });
        g.bench_with_input(
            BenchmarkId::new("tree_walk_baseline", name),
            &text,
            |b, t| {
                b.iter(|| {
                    tree_walk_baseline("order.created", std::hint::black_box(t), Some("shop"))
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("sha256", name), &raw, |b, r| {
            b.iter(|| Sha256::digest(std::hint::black_box(r)))
        });
    }
    g.finish();
}

/// criterion's point estimate of the mean time per iteration, in ns.
fn mean_ns(dir: &std::path::Path, func: &str, size: &str) -> Option<f64> {
    let path = dir
        .join("fingerprint")
        .join(func)
        .join(size)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn report() {
    // Where criterion 0.5 writes: $CRITERION_HOME, else
    // $CARGO_TARGET_DIR/criterion, else the workspace's target/criterion
    // (this package is the workspace root).
    let dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion"))
        })
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("criterion")
        });
    println!(
        "\nfingerprint vs raw SHA-256 over the same bytes (goal >= 0.40x at 64 KiB and above):"
    );
    let mut missed = false;
    for (name, size) in SIZES {
        let (_, len) = payload(size);
        match (
            mean_ns(&dir, "fingerprint", name),
            mean_ns(&dir, "sha256", name),
        ) {
            (Some(fp), Some(sha)) => {
                let ratio = sha / fp;
                let before = mean_ns(&dir, "tree_walk_baseline", name)
                    .map(|b| format!(", {:.2}x faster than parse + tree walk", b / fp))
                    .unwrap_or_default();
                let mib = |ns: f64| len as f64 / (ns / 1e9) / (1024.0 * 1024.0);
                let goal = size >= 64 * 1024;
                let verdict = match (goal, ratio >= 0.4) {
                    (false, _) => "",
                    (true, true) => "  goal met",
                    (true, false) => {
                        missed = true;
                        "  GOAL MISSED"
                    }
                };
                println!(
                    "  {name:>7} ({len} B): fingerprint {:8.1} MiB/s, sha256 {:8.1} MiB/s, ratio {ratio:.2}x{verdict}{before}",
                    mib(fp),
                    mib(sha)
                );
            }
            _ => println!("  {name:>7}: no estimates (filtered out or not run)"),
        }
    }
    if missed {
        println!("  (a missed goal is reported, not fatal: benches measure, they do not gate)");
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
