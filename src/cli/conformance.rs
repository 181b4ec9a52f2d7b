//! `triggers-api conformance`: the black-box suite of the
//! `triggers-conformance` crate against any deployment.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use triggers_conformance::runner::{self, Options};
use triggers_conformance::{cases, Keys, Target};

use crate::config::ConformanceArgs;

/// The run could not start: exit 2 (1 is for cases that failed).
fn cannot_run(what: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {what}");
    ExitCode::from(2)
}

fn list() -> ExitCode {
    let all = cases();
    let skipped = all.iter().filter(|c| c.skip_reason().is_some()).count();
    for c in &all {
        match c.skip_reason() {
            None => println!("run   {}", c.full_name()),
            Some(why) => println!("skip  {}: {why}", c.full_name()),
        }
    }
    println!(
        "{} cases: {} black-box, {skipped} need a test-only hook (run by the repository's own tests)",
        all.len(),
        all.len() - skipped
    );
    ExitCode::SUCCESS
}

pub async fn run(args: ConformanceArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        return Ok(list());
    }
    let Some(base) = args.base_url else {
        return Ok(cannot_run("give --base-url"));
    };
    let keys = match Keys::load(args.keys.as_deref(), |var| std::env::var(var).ok()) {
        Ok(keys) => keys,
        Err(e) => return Ok(cannot_run(e)),
    };
    let key_ids = keys.describe();
    let mut target = match Target::new(&base, keys) {
        Ok(t) => t,
        Err(e) => return Ok(cannot_run(e)),
    };
    target.expect_backend = args.expect_backend;
    target.expect_version = args.expect_version;
    // Fail before the run, not after it, when the report cannot be written.
    if let Some(path) = &args.junit {
        if let Err(e) = std::fs::write(path, "") {
            return Ok(cannot_run(format!("--junit {}: {e}", path.display())));
        }
    }
    let run_id = triggers_conformance::new_run_id();
    println!(
        "triggers-api conformance {} against {} (run {run_id}; event types conf.{run_id}.*)",
        crate::http::routes::meta::VERSION,
        target.base
    );
    println!("{key_ids}");
    match runner::preflight(&target, &run_id).await {
        Ok(notes) => {
            for n in notes {
                println!("note: {n}");
            }
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("preflight: {p}");
            }
            return Ok(cannot_run(
                "the target or the keys are not fit for a run (see above)",
            ));
        }
    }
    let opts = Options {
        only: args.only,
        skip: args.skip,
        case_timeout: Duration::from_secs(args.case_timeout_secs),
        run_id: Some(run_id),
    };
    // A failed check is reported with its case, not printed where it panics.
    runner::quiet_panics();
    let report = runner::run(Arc::new(target), &opts, |result| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", result.text());
        let _ = out.flush();
    })
    .await;
    print!("{}", report.footer());
    if let Some(path) = &args.junit {
        if let Err(e) = std::fs::write(path, report.junit()) {
            return Ok(cannot_run(format!("--junit {}: {e}", path.display())));
        }
        println!("JUnit report: {}", path.display());
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
