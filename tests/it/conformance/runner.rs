//! The runner (`triggers-api conformance`) against servers: on each backend
//! every black-box case passes against one server shared by all of them,
//! which is left as it was found; the command passes under a path prefix
//! with keys from a file, fails with a clear report (exit status 1, JUnit
//! file) against a server that breaks the contract, and refuses to start
//! with keys that are not what they claim (exit status 2).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use tokio::net::TcpListener;
use triggers_conformance::runner::{self, Options, Outcome, Report};
use triggers_conformance::{cases, Keys, KEY_VARS};

use super::blackbox::{keep_real_time, keys_of, target};
use crate::support::{Backend, TestApp};

/// Every black-box case against one server, then the server is checked to
/// be as the run found it: no undelivered event left in either account.
async fn every_case_passes_against_one_server(b: Backend) {
    let app = TestApp::start(b).await;
    keep_real_time(&app);
    let target = Arc::new(target(&app).await);
    let (creator, other) = (target.creator.clone(), target.other_account.clone());
    runner::preflight(&target, "preflight")
        .await
        .expect("the keys fit");
    let report = runner::run(target, &Options::default(), |_| {}).await;
    save(&report, app.state.store.backend());
    assert!(report.ok(), "{}", report.text());
    let all = cases();
    let hooked: Vec<_> = all.iter().filter(|c| c.skip_reason().is_some()).collect();
    assert_eq!(
        report.passed(),
        all.len() - hooked.len(),
        "{}",
        report.text()
    );
    assert_eq!(report.skipped(), hooked.len());
    for r in &report.results {
        if let Outcome::Skipped(why) = &r.outcome {
            let case = triggers_conformance::case(&r.full_name()).unwrap();
            assert_eq!(Some(why.as_str()), case.skip_reason(), "{}", r.full_name());
        }
    }
    for key in [&creator, &other] {
        assert_eq!(
            app.walk_inbox(key, 200, None).await,
            Vec::<String>::new(),
            "the run left events in the inbox"
        );
    }
}

/// The run's text and JUnit reports under target/tmp (`make test` prints
/// their summary lines).
fn save(report: &Report, backend: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(
        dir.join(format!("conformance-runner-{backend}.txt")),
        report.text(),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("conformance-runner-{backend}.xml")),
        report.junit(),
    )
    .unwrap();
}

pub mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_runner_passes_every_black_box_case_against_one_shared_server() {
        super::every_case_passes_against_one_server(crate::support::Backend::Sqlite).await;
    }
}

pub mod dynamodb {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_runner_passes_every_black_box_case_against_one_shared_server() {
        super::every_case_passes_against_one_server(crate::support::Backend::Dynamodb).await;
    }
}

pub mod memory {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_runner_passes_every_black_box_case_against_one_shared_server() {
        super::every_case_passes_against_one_server(crate::support::Backend::Memory).await;
    }
}

/// Serves `router` on a free port; its base URL.
async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(triggers_api::serve(
        listener,
        router,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `triggers-api conformance --base-url BASE ARGS…` with `keys` in its
/// environment (or none there, when `None`).
async fn command(base: &str, keys: Option<&Keys>, args: &[&str]) -> Ran {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_triggers-api"));
    cmd.arg("conformance")
        .arg("--base-url")
        .arg(base)
        .args(args)
        .env_remove("TRIGGERS_CONFORMANCE_KEYS")
        .kill_on_drop(true);
    for (var, _) in KEY_VARS {
        cmd.env_remove(var);
    }
    if let Some(k) = keys {
        for (var, value) in
            KEY_VARS
                .iter()
                .zip([&k.creator, &k.viewer, &k.other_account, &k.revoked])
        {
            cmd.env(var.0, value);
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("the command ends")
        .unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Passes on requests below `/lambda-url/bootstrap` without it; a bare 404
/// for the rest.
async fn strip_prefix(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = req.uri().clone();
    let rest = uri.path().strip_prefix("/lambda-url/bootstrap");
    let Some(rest) = rest.filter(|r| r.is_empty() || r.starts_with('/')) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let path = if rest.is_empty() { "/" } else { rest };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    *req.uri_mut() = format!("{path}{query}").parse().unwrap();
    next.run(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_passes_against_a_server_under_a_path_prefix_with_keys_from_a_file() {
    let app = TestApp::start(Backend::Sqlite).await;
    keep_real_time(&app);
    let keys = keys_of(&app).await;
    // As under `cargo lambda watch` or behind a proxy: the API answers below
    // a path prefix, which is stripped before it sees the request.
    let behind_a_prefix = Router::new()
        .fallback_service(triggers_api::app(app.state.clone()))
        .layer(axum::middleware::from_fn(strip_prefix));
    let base = format!("{}/lambda-url/bootstrap", serve(behind_a_prefix).await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.env");
    let lines: Vec<String> = KEY_VARS
        .iter()
        .zip([
            &keys.creator,
            &keys.viewer,
            &keys.other_account,
            &keys.revoked,
        ])
        .map(|((var, _), key)| format!("export {var}=\"{key}\""))
        .collect();
    std::fs::write(&file, format!("# test keys\n{}\n", lines.join("\n"))).unwrap();
    let junit = dir.path().join("junit.xml");
    let ran = command(
        &base,
        None,
        &[
            "--keys",
            file.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
            "--expect-backend",
            "sqlite",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    let hooked = cases().iter().filter(|c| c.skip_reason().is_some()).count();
    let passed = cases().len() - hooked;
    let summary = format!("conformance: {passed} passed, 0 failed, {hooked} skipped");
    assert!(ran.stdout.contains(&summary), "{}", ran.stdout);
    assert!(
        ran.stdout.contains(
            "SKIP  events::the_dedup_window_ends_exactly_at_its_bound: needs the server's clock"
        ),
        "{}",
        ran.stdout
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("valid XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("failures"), Some("0"));
    assert_eq!(
        root.attribute("tests"),
        Some(cases().len().to_string().as_str())
    );
    assert_eq!(root.attribute("skipped"), Some(hooked.to_string().as_str()));
    // Nothing reached the API outside the prefix (the root 404s there).
    assert_eq!(app.walk_inbox(&keys.creator, 200, None).await.len(), 0);
}

/// A server that answers 422 where the contract says 400 ("Never 422"):
/// every case that checks a 400 fails, with the status in its message, and
/// the others pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_fails_against_a_server_that_answers_422_for_invalid_requests() {
    let app = TestApp::start(Backend::Sqlite).await;
    keep_real_time(&app);
    let keys = keys_of(&app).await;
    let broken = triggers_api::app(app.state.clone()).layer(axum::middleware::map_response(
        |mut resp: axum::response::Response| async move {
            if resp.status() == StatusCode::BAD_REQUEST {
                *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            }
            resp
        },
    ));
    let base = serve(broken).await;
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let ran = command(&base, Some(&keys), &["--junit", junit.to_str().unwrap()]).await;
    assert_eq!(ran.code, Some(1), "{}\n{}", ran.stdout, ran.stderr);
    let out = &ran.stdout;
    let failed: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL  "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let want: BTreeSet<&str> = [
        "transport::a_content_length_shorter_than_the_body_reads_only_what_it_declares",
        "transport::malformed_json_is_a_400_validation_error",
        "transport::invalid_utf8_is_a_400_validation_error",
        "transport::request_nesting_of_128_is_accepted_and_129_is_400",
        "transport::unknown_fields_are_400_and_listed",
        "transport::missing_and_mistyped_fields_are_all_listed",
        "transport::event_type_must_be_1_to_255_characters_without_control_characters",
        "transport::source_must_be_at_most_255_characters",
        "transport::payload_and_metadata_must_be_objects",
        "inbox::limit_out_of_range_or_not_a_number_is_400",
        "inbox::unknown_query_parameters_are_400",
        "inbox::a_malformed_tampered_or_foreign_cursor_is_400_invalid_cursor",
        "leases::lease_ack_and_release_bodies_are_validated",
        "batch::a_malformed_envelope_is_400_for_the_whole_batch",
        "batch::invalid_utf8_anywhere_in_a_batch_is_a_400_for_the_body",
        "batch::a_batch_of_100_events_is_accepted_and_101_is_400",
        "batch::the_batch_byte_limit_holds_on_the_bytes_read_and_events_keep_theirs",
        "idempotency::an_invalid_idempotency_key_is_400_naming_the_header",
        "idempotency::a_repeated_idempotency_key_header_is_400_naming_it",
        "idempotency::answers_other_than_2xx_are_not_kept",
    ]
    .into();
    assert_eq!(failed, want, "{out}");
    // A failure says what was expected and what came.
    let block = out
        .split("FAIL  transport::unknown_fields_are_400_and_listed")
        .nth(1)
        .unwrap();
    assert!(block.contains("422") && block.contains("400"), "{block}");
    for passing in [
        "PASS  meta::the_index_names_the_service_and_links_the_docs",
        "PASS  events::posting_an_event_answers_201_with_location_and_an_accepted_body",
        "PASS  auth::a_revoked_key_is_403",
    ] {
        assert!(out.contains(passing), "{out}");
    }
    let hooked = cases().iter().filter(|c| c.skip_reason().is_some()).count();
    let summary = format!(
        "conformance: {} passed, {} failed, {hooked} skipped",
        cases().len() - hooked - want.len(),
        want.len()
    );
    assert!(out.contains(&summary), "{summary} in\n{out}");
    assert!(out.contains("\nfailed:\n    transport::"), "{out}");

    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("valid XML");
    assert_eq!(
        doc.root_element().attribute("failures"),
        Some(want.len().to_string().as_str())
    );
    let failures: BTreeSet<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .map(|f| {
            let case = f.parent_element().unwrap();
            let group = case
                .attribute("classname")
                .unwrap()
                .trim_start_matches("conformance.");
            format!("{group}::{}", case.attribute("name").unwrap())
        })
        .collect();
    assert_eq!(
        failures,
        want.iter().map(|s| s.to_string()).collect(),
        "{xml}"
    );
    let failure = doc
        .descendants()
        .find(|n| {
            n.has_tag_name("testcase")
                && n.attribute("name") == Some("malformed_json_is_a_400_validation_error")
        })
        .and_then(|c| c.children().find(|n| n.has_tag_name("failure")))
        .unwrap();
    assert!(failure.text().unwrap().contains("422"), "{xml}");
    assert!(
        failure.attribute("message").unwrap().contains("status"),
        "{xml}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_refuses_keys_that_do_not_fit_before_running_a_case() {
    let app = TestApp::start(Backend::Sqlite).await;
    let mut keys = keys_of(&app).await;
    let base = serve(triggers_api::app(app.state.clone())).await;
    // Missing keys: named, nothing sent.
    let ran = command(&base, None, &[]).await;
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("TRIGGERS_CONFORMANCE_REVOKED_KEY (a revoked key)"),
        "{}",
        ran.stderr
    );
    // A creator key given as the viewer key (and the other way round).
    std::mem::swap(&mut keys.creator, &mut keys.viewer);
    let ran = command(&base, Some(&keys), &[]).await;
    assert_eq!(ran.code, Some(2), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr
            .contains("preflight: TRIGGERS_CONFORMANCE_VIEWER_KEY: POST /events with an invalid body answered 400; a viewer key answers 403"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stdout.contains("PASS"), "{}", ran.stdout);
}

/// The crate's list and the in-process suite's lists name the same cases:
/// `blackbox::*` are its black-box cases, every other entry one it lists as
/// skipped (so the runner names every case it cannot run).
#[test]
fn every_in_process_case_is_a_runner_case_or_listed_as_skipped() {
    let text = include_str!("mod.rs");
    let entries: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_suffix(','))
        .filter_map(|l| l.split_once("::"))
        .filter(|(m, n)| {
            !m.contains(' ')
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    let all = cases();
    let listed_black_box: BTreeSet<&str> = entries
        .iter()
        .filter(|(m, _)| *m == "blackbox")
        .map(|(_, n)| *n)
        .collect();
    let listed_hooked: BTreeSet<String> = entries
        .iter()
        .filter(|(m, _)| *m != "blackbox")
        .map(|(m, n)| format!("{m}::{n}"))
        .collect();
    let black_box: BTreeSet<&str> = all
        .iter()
        .filter(|c| c.skip_reason().is_none())
        .map(|c| c.name)
        .collect();
    let hooked: BTreeSet<String> = all
        .iter()
        .filter(|c| c.skip_reason().is_some())
        .map(|c| c.full_name())
        .collect();
    assert_eq!(listed_black_box, black_box);
    assert_eq!(listed_hooked, hooked);
    assert_eq!(
        entries.len(),
        all.len(),
        "each case once, in suite! or once!"
    );
}
