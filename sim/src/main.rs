//! `triggers-sim`: run one seed (`run`), random seeds for a while (`long`),
//! or the CI set (`ci`). See the README's "Simulation" section.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use triggers_sim::broken::Broken;
use triggers_sim::run::random_seed;
use triggers_sim::{run, Backend, RunResult, SimConfig};

#[derive(Parser)]
#[command(
    name = "triggers-sim",
    about = "Deterministic simulation of the Triggers API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One seed: its summary line, and on failure the report (replayable).
    Run {
        #[arg(long)]
        seed: u64,
        /// Client operations to make, at most.
        #[arg(long, default_value_t = 2000)]
        steps: usize,
        /// Time the run spans (e.g. 24h, 90m, 30s); the backend's default
        /// when absent (24h virtual on memory).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// memory (deterministic), sqlite or dynamodb (real time).
        #[arg(long, default_value = "memory")]
        backend: String,
        /// Run over a deliberately broken store (the checker must fail).
        #[arg(long, value_enum)]
        broken: Option<Broken>,
        /// No store faults, restarts or network faults.
        #[arg(long)]
        no_faults: bool,
        /// Print every history line.
        #[arg(long)]
        print_history: bool,
    },
    /// Random seeds until the duration is over; reports seeds/s and
    /// operations/s, and every failing seed.
    Long {
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 2000)]
        steps: usize,
    },
    /// The CI set: seeds first..first+seeds on memory, then a few on
    /// SQLite and DynamoDB; `simulation: N seeds, M operations, V
    /// violations`; fails on any violation or when no seed ran.
    Ci {
        #[arg(long, default_value_t = 1)]
        first: u64,
        #[arg(long, default_value_t = 24)]
        seeds: u64,
        #[arg(long, default_value_t = 1500)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        sqlite: u64,
        #[arg(long, default_value_t = 2)]
        dynamodb: u64,
        /// The DynamoDB endpoint [default: $TRIGGERS_TEST_DYNAMODB_ENDPOINT].
        #[arg(long)]
        dynamodb_endpoint: Option<String>,
        /// Steps of each SQLite and DynamoDB run.
        #[arg(long, default_value_t = 600)]
        real_steps: usize,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("unknown unit in {s} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn dynamodb_endpoint(given: Option<String>) -> Option<String> {
    let endpoint = given
        .or_else(|| std::env::var("TRIGGERS_TEST_DYNAMODB_ENDPOINT").ok())
        .filter(|e| !e.is_empty())?;
    // DynamoDB Local takes any credentials; the SDK wants some.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
    Some(endpoint)
}

fn backend(name: &str) -> Result<Backend, String> {
    match name {
        "memory" => Ok(Backend::Memory),
        "sqlite" => Ok(Backend::Sqlite),
        "dynamodb" => dynamodb_endpoint(None)
            .map(|endpoint| Backend::Dynamodb { endpoint })
            .ok_or_else(|| "dynamodb needs TRIGGERS_TEST_DYNAMODB_ENDPOINT".to_owned()),
        other => Err(format!(
            "unknown backend {other} (memory, sqlite, dynamodb)"
        )),
    }
}

fn run_one(cfg: &SimConfig) -> Option<RunResult> {
    match run(cfg) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("seed {}: the run could not complete: {e:#}", cfg.seed);
            None
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            seed,
            steps,
            duration,
            backend: name,
            broken,
            no_faults,
            print_history,
        } => {
            let backend = match backend(&name) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let cfg = SimConfig {
                seed,
                steps,
                duration,
                backend,
                broken,
                faults: !no_faults,
            };
            let Some(r) = run_one(&cfg) else {
                return ExitCode::FAILURE;
            };
            if print_history {
                for line in r.history.lines() {
                    println!("{line}");
                }
            }
            println!("seed: {}", r.seed);
            println!("operations: {}", r.ops);
            println!("verdict: {} violations", r.violations.len());
            println!("digest: {}", r.history.digest);
            println!("{}", r.summary());
            if r.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                print!("{}", r.report());
                ExitCode::FAILURE
            }
        }
        Command::Long { duration, steps } => {
            let started = Instant::now();
            let (mut seeds, mut ops, mut failed) = (0u64, 0usize, Vec::new());
            while started.elapsed() < duration {
                let seed = random_seed();
                let cfg = SimConfig {
                    steps,
                    ..SimConfig::new(seed)
                };
                let Some(r) = run_one(&cfg) else {
                    failed.push(seed);
                    continue;
                };
                seeds += 1;
                ops += r.ops;
                if !r.violations.is_empty() {
                    println!("{}", r.summary());
                    print!("{}", r.report());
                    failed.push(seed);
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "sim-long: {seeds} seeds, {ops} operations in {secs:.1} s: {:.2} seeds/s, {:.0} operations/s; {} failing seeds{}",
                seeds as f64 / secs,
                ops as f64 / secs,
                failed.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        failed
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Ci {
            first,
            seeds,
            steps,
            sqlite,
            dynamodb,
            dynamodb_endpoint: endpoint,
            real_steps,
        } => {
            let started = Instant::now();
            let mut configs: Vec<SimConfig> = (first..first + seeds)
                .map(|seed| SimConfig {
                    steps,
                    ..SimConfig::new(seed)
                })
                .collect();
            for seed in first..first + sqlite {
                configs.push(SimConfig {
                    steps: real_steps,
                    backend: Backend::Sqlite,
                    ..SimConfig::new(seed)
                });
            }
            if dynamodb > 0 {
                let Some(endpoint) = dynamodb_endpoint(endpoint) else {
                    eprintln!("simulation: DynamoDB runs asked for, but no endpoint (set TRIGGERS_TEST_DYNAMODB_ENDPOINT)");
                    return ExitCode::FAILURE;
                };
                for seed in first..first + dynamodb {
                    configs.push(SimConfig {
                        steps: real_steps,
                        backend: Backend::Dynamodb {
                            endpoint: endpoint.clone(),
                        },
                        ..SimConfig::new(seed)
                    });
                }
            }
            let (mut ran, mut ops, mut violations, mut errors) = (0u64, 0usize, 0usize, 0u64);
            for cfg in &configs {
                let Some(r) = run_one(cfg) else {
                    errors += 1;
                    continue;
                };
                ran += 1;
                ops += r.ops;
                violations += r.violations.len();
                println!("{}", r.summary());
                if !r.violations.is_empty() {
                    print!("{}", r.report());
                }
            }
            println!(
                "simulation: {ran} seeds, {ops} operations, {violations} violations ({} on memory, {sqlite} on sqlite, {dynamodb} on dynamodb; {:.1} s)",
                seeds,
                started.elapsed().as_secs_f64()
            );
            if violations > 0 || ran == 0 || errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
