//! Runs the suite against a target, one case at a time, and reports each
//! as it ends: a line of text per case, a summary, a JUnit XML report.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{cases, Case, Endpoint, Target};

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run only the cases whose `group::name` contains one of these.
    pub only: Vec<String>,
    /// Skip the cases whose `group::name` contains one of these.
    pub skip: Vec<String>,
    /// A case (with its clean-up) that takes longer fails.
    pub case_timeout: Duration,
    /// Names this run's event types (`conf.<run id>.…`); random when unset.
    pub run_id: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            only: Vec::new(),
            skip: Vec::new(),
            case_timeout: Duration::from_secs(60),
            run_id: None,
        }
    }
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The failed check's message.
    Failed(String),
    /// Why it did not run.
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub group: &'static str,
    pub name: &'static str,
    pub outcome: Outcome,
    pub duration: Duration,
}

impl CaseResult {
    pub fn full_name(&self) -> String {
        format!("{}::{}", self.group, self.name)
    }

    /// The case's line(s) of the text report.
    pub fn text(&self) -> String {
        let name = self.full_name();
        let ms = self.duration.as_millis();
        match &self.outcome {
            Outcome::Passed => format!("PASS  {name} ({ms} ms)"),
            Outcome::Skipped(why) => format!("SKIP  {name}: {why}"),
            Outcome::Failed(msg) => {
                let mut s = format!("FAIL  {name} ({ms} ms)");
                for line in msg.lines() {
                    s.push_str("\n      ");
                    s.push_str(line);
                }
                s
            }
        }
    }
}

/// Everything a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub base: String,
    pub run_id: String,
    pub results: Vec<CaseResult>,
    pub elapsed: Duration,
    /// When the run started, RFC 3339.
    pub started_at: String,
}

impl Report {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }
    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Passed)
    }
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }
    pub fn ok(&self) -> bool {
        self.failed() == 0
    }

    /// `conformance: 81 passed, 0 failed, 30 skipped (111 cases) against URL in 11.2 s`
    pub fn summary(&self) -> String {
        format!(
            "conformance: {} passed, {} failed, {} skipped ({} cases) against {} in {:.1} s",
            self.passed(),
            self.failed(),
            self.skipped(),
            self.results.len(),
            self.base,
            self.elapsed.as_secs_f64()
        )
    }

    /// Every case's line(s), then the [`footer`](Self::footer).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            let _ = writeln!(s, "{}", r.text());
        }
        s + &self.footer()
    }

    /// The failed cases again by name, then the summary.
    pub fn footer(&self) -> String {
        let mut s = String::new();
        let failed: Vec<String> = self
            .results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .map(CaseResult::full_name)
            .collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "\nfailed:");
            for f in failed {
                let _ = writeln!(s, "    {f}");
            }
        }
        let _ = writeln!(s, "\n{}", self.summary());
        s
    }

    /// A JUnit XML report: one `<testsuite>` per group, a `<testcase>` per
    /// case with `<failure>` or `<skipped>`.
    pub fn junit(&self) -> String {
        let mut groups: Vec<&str> = Vec::new();
        for r in &self.results {
            if !groups.contains(&r.group) {
                groups.push(r.group);
            }
        }
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"triggers-api conformance\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{:.3}\">",
            self.results.len(),
            self.failed(),
            self.skipped(),
            self.elapsed.as_secs_f64()
        );
        for g in groups {
            let of: Vec<&CaseResult> = self.results.iter().filter(|r| r.group == g).collect();
            let count = |f: fn(&Outcome) -> bool| of.iter().filter(|r| f(&r.outcome)).count();
            let time: f64 = of.iter().map(|r| r.duration.as_secs_f64()).sum();
            let _ = writeln!(
                x,
                "  <testsuite name=\"conformance.{g}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{time:.3}\" timestamp=\"{}\">",
                of.len(),
                count(|o| matches!(o, Outcome::Failed(_))),
                count(|o| matches!(o, Outcome::Skipped(_))),
                xml(&self.started_at),
            );
            let _ = writeln!(
                x,
                "    <properties>\n      <property name=\"base_url\" value=\"{}\"/>\n      <property name=\"run_id\" value=\"{}\"/>\n    </properties>",
                xml(&self.base),
                xml(&self.run_id)
            );
            for r in of {
                let head = format!(
                    "    <testcase classname=\"conformance.{g}\" name=\"{}\" time=\"{:.3}\"",
                    xml(r.name),
                    r.duration.as_secs_f64()
                );
                match &r.outcome {
                    Outcome::Passed => {
                        let _ = writeln!(x, "{head}/>");
                    }
                    Outcome::Skipped(why) => {
                        let _ = writeln!(
                            x,
                            "{head}>\n      <skipped message=\"{}\"/>\n    </testcase>",
                            xml(why)
                        );
                    }
                    Outcome::Failed(msg) => {
                        let first = msg.lines().next().unwrap_or("failed");
                        let _ = writeln!(
                            x,
                            "{head}>\n      <failure message=\"{}\" type=\"assertion\">{}</failure>\n    </testcase>",
                            xml(first),
                            xml(msg)
                        );
                    }
                }
            }
            let _ = writeln!(x, "  </testsuite>");
        }
        x.push_str("</testsuites>\n");
        x
    }
}

/// Escapes text for XML 1.0 (attribute values and content alike); the
/// characters XML cannot carry at all become U+FFFD.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The cases `opts` selects, with why the others are skipped.
pub fn plan(opts: &Options) -> Vec<(Case, Option<String>)> {
    cases()
        .into_iter()
        .map(|c| {
            let name = c.full_name();
            let why = if let Some(why) = c.skip_reason() {
                Some(why.to_owned())
            } else if !opts.only.is_empty() && !opts.only.iter().any(|o| name.contains(o.as_str()))
            {
                Some("not selected by --only".to_owned())
            } else {
                opts.skip
                    .iter()
                    .find(|s| name.contains(s.split_once('=').map_or(s.as_str(), |(n, _)| n)))
                    .map(|s| match s.split_once('=') {
                        Some((_, why)) if !why.is_empty() => format!("skipped by --skip: {why}"),
                        _ => "skipped by --skip".to_owned(),
                    })
            };
            (c, why)
        })
        .collect()
}

static PANIC_LOCATION: Mutex<Option<String>> = Mutex::new(None);

/// For a command-line runner: panics (the cases' failed checks) are not
/// printed where they happen; their message and place go in the report.
/// (A process-wide hook: not for a test binary, whose other tests need the
/// usual one.)
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        if let Some(l) = info.location() {
            *PANIC_LOCATION.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{}:{}", l.file(), l.line()));
        }
    }));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "the case panicked".to_owned()
    };
    match PANIC_LOCATION
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        Some(at) => format!("{msg}\nat {at}"),
        None => msg,
    }
}

/// Runs one case in a task of its own, with its clean-up, within `timeout`.
async fn run_case(case: Case, target: Arc<Target>, run_id: String, timeout: Duration) -> Outcome {
    let task = tokio::spawn(async move { case.run_once(target, &run_id).await });
    let abort = task.abort_handle();
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(None)) => Outcome::Passed,
        Ok(Ok(Some(why))) => Outcome::Skipped(why),
        Ok(Err(e)) if e.is_panic() => Outcome::Failed(panic_message(e.into_panic().as_ref())),
        Ok(Err(e)) => Outcome::Failed(format!("the case's task ended: {e}")),
        Err(_) => {
            abort.abort();
            Outcome::Failed(format!(
                "no answer within {} s (the case with its clean-up)",
                timeout.as_secs()
            ))
        }
    }
}

/// Runs every selected case against `target`, one at a time, calling
/// `on_result` as each one ends.
pub async fn run(
    target: Arc<Target>,
    opts: &Options,
    mut on_result: impl FnMut(&CaseResult),
) -> Report {
    let run_id = opts.run_id.clone().unwrap_or_else(crate::new_run_id);
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut results = Vec::new();
    for (case, why) in plan(opts) {
        let began = Instant::now();
        let outcome = match why {
            Some(why) => Outcome::Skipped(why),
            None => run_case(case, target.clone(), run_id.clone(), opts.case_timeout).await,
        };
        let result = CaseResult {
            group: case.group,
            name: case.name,
            outcome,
            duration: began.elapsed(),
        };
        on_result(&result);
        results.push(result);
    }
    Report {
        base: target.base.clone(),
        run_id,
        results,
        elapsed: started.elapsed(),
        started_at,
    }
}

/// Checks, before any case, that the target answers and that the keys are
/// what they claim to be; returns notes (e.g. low rate limits) or every
/// problem found. It leaves nothing behind (one event, acknowledged).
pub async fn preflight(target: &Target, run_id: &str) -> Result<Vec<String>, Vec<String>> {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let status = match target.client.get(target.url("/status")).send().await {
        Ok(resp) => resp.status().as_u16(),
        Err(e) => return Err(vec![format!("GET {}: {e}", target.url("/status"))]),
    };
    if status != 200 {
        problems.push(format!("GET /status answered {status}, not 200"));
    }
    let send = |req: reqwest::RequestBuilder| async move {
        match req.send().await {
            Ok(resp) => {
                let limit = resp
                    .headers()
                    .get("ratelimit-limit")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                (resp.status().as_u16(), limit)
            }
            Err(_) => (0, None),
        }
    };
    let named = [
        ("TRIGGERS_CONFORMANCE_CREATOR_KEY", &target.creator),
        ("TRIGGERS_CONFORMANCE_VIEWER_KEY", &target.viewer),
        (
            "TRIGGERS_CONFORMANCE_OTHER_ACCOUNT_KEY",
            &target.other_account,
        ),
    ];
    // Reading: every key but the revoked one may.
    for (var, key) in named {
        let (status, limit) = send(target.get("/inbox?limit=1", key)).await;
        if status != 200 {
            problems.push(format!(
                "{var}: GET /inbox answered {status}, not 200 (an unknown, inactive or revoked key?)"
            ));
        }
        if let Some(limit) = limit {
            if limit < 2_000 {
                notes.push(format!(
                    "{var} allows {limit} requests/minute; a run makes about a thousand with it \
                     within a few minutes, so it may see 429s (create the key with --rate-limit 100000)"
                ));
            }
        }
    }
    // Writing: an invalid body tells the roles apart without writing.
    for (var, key, want) in [
        (
            "TRIGGERS_CONFORMANCE_CREATOR_KEY",
            &target.creator,
            "creator",
        ),
        (
            "TRIGGERS_CONFORMANCE_OTHER_ACCOUNT_KEY",
            &target.other_account,
            "creator",
        ),
        ("TRIGGERS_CONFORMANCE_VIEWER_KEY", &target.viewer, "viewer"),
    ] {
        let (status, _) = send(target.post_raw("/events", key, "{}")).await;
        let is_viewer = status == 403;
        if (want == "viewer") != is_viewer || status == 401 || status == 0 {
            problems.push(format!(
                "{var}: POST /events with an invalid body answered {status}; a {want} key \
                 answers {}",
                if want == "viewer" { "403" } else { "400" }
            ));
        }
    }
    let (status, _) = send(target.get("/inbox?limit=1", &target.revoked)).await;
    if status != 403 {
        problems.push(format!(
            "TRIGGERS_CONFORMANCE_REVOKED_KEY: GET /inbox answered {status}, not 403 (revoked \
             less than the auth cache time ago, 30 s by default?)"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Accounts: the viewer sees the creator's event, the other account not.
    let body = json!({"event_type": format!("conf.{run_id}.preflight"), "payload": {}});
    let resp = target
        .post_json("/events", &target.creator, &body)
        .send()
        .await;
    let id = match resp {
        Ok(resp) if resp.status().is_success() => resp
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["event_id"].as_str().map(str::to_owned)),
        _ => None,
    };
    let Some(id) = id else {
        return Err(vec!["the creator key could not POST an event".to_owned()]);
    };
    let path = format!("/events/{id}");
    let (viewer, _) = send(target.get(&path, &target.viewer)).await;
    if viewer != 200 {
        problems.push(format!(
            "TRIGGERS_CONFORMANCE_VIEWER_KEY cannot read the creator key's event ({viewer}): \
             not of the same account?"
        ));
    }
    let (other, _) = send(target.get(&path, &target.other_account)).await;
    if other != 404 {
        problems.push(format!(
            "TRIGGERS_CONFORMANCE_OTHER_ACCOUNT_KEY reads the creator key's event ({other}): \
             it must be of another account"
        ));
    }
    let (acked, _) = send(target.delete(&path, &target.creator)).await;
    if acked != 204 {
        problems.push(format!("DELETE of the preflight event answered {acked}"));
    }
    if problems.is_empty() {
        Ok(notes)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(group: &'static str, name: &'static str, outcome: Outcome) -> CaseResult {
        CaseResult {
            group,
            name,
            outcome,
            duration: Duration::from_millis(12),
        }
    }

    #[test]
    fn the_reports_name_every_case_and_escape_what_xml_cannot_carry() {
        let report = Report {
            base: "http://127.0.0.1:1/p?<&>".into(),
            run_id: "abcd1234".into(),
            results: vec![
                result("meta", "a_case_that_passes", Outcome::Passed),
                result(
                    "events",
                    "a_case_that_fails",
                    Outcome::Failed(
                        "assertion `left == right` failed\n  left: \"<422>\" & \u{1}".into(),
                    ),
                ),
                result(
                    "events",
                    "a_case_that_needs_a_hook",
                    Outcome::Skipped("needs the clock".into()),
                ),
            ],
            elapsed: Duration::from_millis(1500),
            started_at: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            (report.passed(), report.failed(), report.skipped()),
            (1, 1, 1)
        );
        assert!(!report.ok());
        let text = report.text();
        assert!(
            text.contains("PASS  meta::a_case_that_passes (12 ms)"),
            "{text}"
        );
        assert!(
            text.contains("FAIL  events::a_case_that_fails (12 ms)\n      assertion"),
            "{text}"
        );
        assert!(
            text.contains("SKIP  events::a_case_that_needs_a_hook: needs the clock"),
            "{text}"
        );
        assert!(text.ends_with(&format!("{}\n", report.summary())));
        assert!(report
            .summary()
            .starts_with("conformance: 1 passed, 1 failed, 1 skipped (3 cases)"));
        let x = report.junit();
        assert!(x.contains("<testsuite name=\"conformance.events\" tests=\"2\" failures=\"1\" errors=\"0\" skipped=\"1\""), "{x}");
        assert!(x.contains("&quot;&lt;422&gt;&quot; &amp; \u{FFFD}"), "{x}");
        assert!(
            x.contains("value=\"http://127.0.0.1:1/p?&lt;&amp;&gt;\""),
            "{x}"
        );
        assert!(!x.contains('\u{1}'));
    }

    #[test]
    fn only_and_skip_select_cases_by_name() {
        let opts = Options {
            only: vec!["auth::".into()],
            skip: vec!["x_api_key".into()],
            ..Options::default()
        };
        let plan = plan(&opts);
        assert_eq!(plan.len(), cases().len());
        let run: Vec<String> = plan
            .iter()
            .filter(|(_, why)| why.is_none())
            .map(|(c, _)| c.full_name())
            .collect();
        assert!(run.iter().all(|n| n.starts_with("auth::")), "{run:?}");
        assert!(run.contains(&"auth::a_revoked_key_is_403".to_owned()));
        assert!(!run.iter().any(|n| n.contains("x_api_key")));
        let hooked = plan
            .iter()
            .find(|(c, _)| c.name == "an_inactive_key_is_403")
            .unwrap();
        assert!(hooked.1.as_deref().unwrap().contains("inactive"));
    }

    #[test]
    fn a_skip_with_a_reason_prints_the_reason() {
        let opts = Options {
            skip: vec![
                "x_api_key=the gateway strips X-API-Key".into(),
                "a_revoked_key".into(),
            ],
            ..Options::default()
        };
        let plan = plan(&opts);
        let why = |name: &str| {
            plan.iter()
                .find(|(c, _)| c.full_name() == name)
                .and_then(|(_, why)| why.clone())
        };
        assert_eq!(
            why("auth::the_x_api_key_header_is_accepted").as_deref(),
            Some("skipped by --skip: the gateway strips X-API-Key")
        );
        assert_eq!(
            why("auth::a_revoked_key_is_403").as_deref(),
            Some("skipped by --skip")
        );
        assert_eq!(why("auth::a_request_without_a_key_is_401"), None);
    }
}
