//! Every case of the suite, in one list: the black-box cases this crate
//! runs, and the cases that need a test-only hook, which live in the
//! repository's in-process suite (`tests/it/conformance/`) and are listed
//! here with the reason a runner against a deployment cannot run them.
//!
//! Both lists are macros that hand their entries to a callback macro, so
//! the in-process suite builds its wrappers from the same list (a case added
//! here and missing from its `suite!` list is dead code there, which the
//! lints refuse).

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::{Ctx, Target};

/// The black-box cases, `group::name` (the group is the module of `cases`).
#[macro_export]
macro_rules! with_black_box_cases {
    ($callback:ident) => {
        $callback! {
            meta::the_index_names_the_service_and_links_the_docs,
            meta::the_openapi_document_is_3_1_and_covers_every_endpoint,
            meta::the_docs_page_renders_the_openapi_document_without_external_assets,
            meta::status_reports_ok_with_version_uptime_and_store,
            meta::metrics_expose_requests_latency_ingests_duplicates_and_acks,

            transport::an_unknown_route_is_a_404_problem,
            transport::a_sane_request_id_is_echoed_and_an_insane_one_replaced,
            transport::a_wrong_method_is_a_405_problem_with_an_allow_header,
            transport::a_body_that_is_not_json_content_type_is_415,
            transport::malformed_json_is_a_400_validation_error,
            transport::invalid_utf8_is_a_400_validation_error,
            transport::a_body_over_512_kib_is_413_before_parsing,
            transport::a_chunked_body_over_the_limit_is_413,
            transport::a_content_length_shorter_than_the_body_reads_only_what_it_declares,
            transport::a_declared_length_over_the_limit_is_413_before_any_body_is_read,
            transport::a_payload_over_256_kib_is_413,
            transport::request_nesting_of_128_is_accepted_and_129_is_400,
            transport::unknown_fields_are_400_and_listed,
            transport::missing_and_mistyped_fields_are_all_listed,
            transport::event_type_must_be_1_to_255_characters_without_control_characters,
            transport::source_must_be_at_most_255_characters,
            transport::payload_and_metadata_must_be_objects,

            auth::a_request_without_a_key_is_401,
            auth::a_malformed_or_unknown_key_is_401,
            auth::a_wrong_secret_for_a_real_key_id_is_401,
            auth::the_x_api_key_header_is_accepted,
            auth::a_revoked_key_is_403,
            auth::a_viewer_may_read_but_not_ingest_or_acknowledge,
            auth::authenticated_responses_carry_ratelimit_headers,

            events::posting_an_event_answers_201_with_location_and_an_accepted_body,
            events::payload_and_metadata_come_back_exactly_as_sent,
            events::a_fetched_event_has_every_field_and_is_undelivered,
            events::a_repeat_within_the_window_answers_200_with_the_original_id,
            events::key_order_and_whitespace_do_not_make_a_payload_different,
            events::escape_and_exponent_spelling_do_not_make_a_payload_different_but_digits_do,
            events::a_different_type_payload_or_source_is_not_a_duplicate,
            events::concurrent_identical_posts_create_exactly_one_event,
            events::deduplication_is_per_account,
            events::acknowledging_removes_from_the_inbox_but_keeps_the_event_readable,
            events::a_second_acknowledgement_is_204_and_keeps_the_first_delivered_at,
            events::an_invalid_or_unknown_event_id_is_404,
            events::the_inbox_alias_paths_read_and_acknowledge,
            events::another_accounts_event_is_404_for_read_and_acknowledge,

            inbox::the_inbox_lists_undelivered_events_oldest_first,
            inbox::limit_out_of_range_or_not_a_number_is_400,
            inbox::unknown_query_parameters_are_400,
            inbox::a_malformed_tampered_or_foreign_cursor_is_400_invalid_cursor,
            inbox::the_event_type_filter_is_exact,
            inbox::has_more_is_false_only_on_the_last_page,
            inbox::walking_pages_while_events_are_added_and_acknowledged_never_repeats_one,
            inbox::the_inbox_is_read_your_writes,
            inbox::an_account_sees_only_its_own_inbox,
            inbox::clients_of_the_original_service_work_unchanged,

            leases::a_lease_takes_the_oldest_available_events_and_holds_them_until_leased_until,
            leases::two_concurrent_leases_never_share_an_event,
            leases::an_ack_after_the_lease_ended_is_stale_only_for_events_leased_again_or_acknowledged,
            leases::ack_and_release_of_a_subset_leave_the_rest_of_the_lease_held,
            leases::an_unknown_or_foreign_lease_id_is_404,
            leases::the_event_type_filter_applies_to_leases,
            leases::a_long_poll_wakes_up_when_an_event_is_ingested,
            leases::a_long_poll_answers_empty_when_its_wait_ends,
            leases::a_long_poll_finds_a_lease_that_ends_while_it_waits,
            leases::v1_walks_and_delete_keep_working_beside_leases,
            leases::an_event_deleted_while_leased_takes_no_place_in_later_leases,
            leases::a_viewer_gets_403_on_the_lease_routes_before_the_body_is_read,
            leases::lease_ack_and_release_bodies_are_validated,

            batch::a_batch_answers_every_event_in_request_order,
            batch::a_repeat_inside_one_batch_is_a_duplicate_of_its_first,
            batch::a_malformed_envelope_is_400_for_the_whole_batch,
            batch::invalid_utf8_anywhere_in_a_batch_is_a_400_for_the_body,
            batch::a_batch_of_100_events_is_accepted_and_101_is_400,
            batch::the_batch_byte_limit_holds_on_the_bytes_read_and_events_keep_theirs,
            batch::nesting_is_judged_per_event,
            batch::a_viewer_gets_403_on_batch_before_the_body_or_key_is_read,
            batch::concurrent_identical_batches_create_each_event_once,
            batch::a_batch_wakes_a_long_poll_and_its_events_are_leasable,
            batch::the_openapi_document_states_the_batch_route_and_the_idempotency_key,

            idempotency::a_retry_with_the_same_key_and_body_gets_the_first_response_again,
            idempotency::the_same_key_with_another_body_or_route_is_409,
            idempotency::equal_keys_of_different_accounts_never_meet,
            idempotency::an_invalid_idempotency_key_is_400_naming_the_header,
            idempotency::a_repeated_idempotency_key_header_is_400_naming_it,
            idempotency::answers_other_than_2xx_are_not_kept,
        }
    };
}

/// The cases that need a test-only hook, with the reason; they run in the
/// repository's in-process suite only.
#[macro_export]
macro_rules! with_hooked_cases {
    ($callback:ident) => {
        $callback! {
            auth::an_inactive_key_is_403 =>
                "needs a key set inactive through the store (the runner is given no inactive key)",
            auth::a_revoked_key_stops_working_once_the_auth_cache_expires =>
                "needs the server's clock (the auth cache expiring to the millisecond) and a key revoked while cached",
            auth::a_key_over_its_limit_gets_429_with_retry_after_until_the_window_resets =>
                "needs a key with a limit of 3 requests/minute and the server's clock to end the window",

            events::the_server_clock_stamps_timestamp_and_delivered_at =>
                "needs the server's clock (exact timestamps)",
            events::the_dedup_window_ends_exactly_at_its_bound =>
                "needs the server's clock (the 5-minute window, to the millisecond)",
            events::deduplication_holds_across_instances_and_restarts =>
                "needs a second server instance on the same store, and a restart",
            events::a_delivered_event_is_purged_after_the_retention_period =>
                "needs the server's clock (30 days of retention) and the purge",

            inbox::a_page_ends_early_at_its_byte_bound_with_a_cursor_and_at_least_one_event =>
                "needs a small --max-page-bytes (20 KiB)",

            leases::leased_events_are_available_again_exactly_at_leased_until =>
                "needs the server's clock (to the millisecond)",
            leases::an_event_leased_max_leases_times_is_quarantined =>
                "needs a small --max-leases (3) and the server's clock",
            leases::the_last_lease_of_a_quarantined_event_may_still_acknowledge_it =>
                "needs --max-leases 1",
            leases::the_quarantined_listing_pages_like_the_inbox =>
                "needs --max-leases 1",
            leases::requeue_brings_a_quarantined_event_back_with_lease_count_0 =>
                "needs --max-leases 2 and the server's clock",
            leases::a_long_poll_wakes_up_when_an_event_is_ingested_on_this_instance =>
                "needs to know that both requests reach one instance (the runner's long-poll case allows for any instance)",
            leases::a_long_poll_wakes_up_when_an_event_is_ingested_on_another_instance =>
                "needs a second server instance",
            leases::shutdown_ends_a_long_poll_promptly =>
                "needs to shut the server down",
            leases::over_the_waiter_budget_a_lease_answers_at_once =>
                "needs --lease-waiters-per-account 1",
            leases::leases_hold_across_instances_and_restarts =>
                "needs a second server instance on the same store, and a restart",

            snapshots::every_error_body_matches_its_snapshot =>
                "needs an inactive key and a key limited to 1 request/minute (made through the store); compares with the insta snapshots under snapshots/",

            batch::a_batch_counts_once_against_the_rate_limit =>
                "needs a key with a limit of 2 requests/minute",
            batch::batch_events_count_in_the_ingest_and_duplicate_metrics =>
                "needs the exact counts of /metrics, of one server that nobody else uses",
            batch::a_store_failure_fails_the_whole_batch_and_its_retry_is_deduplicated =>
                "needs a store that refuses a write, and one that writes and loses the answer",

            idempotency::the_same_request_while_the_first_is_under_way_is_409_retryable =>
                "needs a store that holds a write until released (a request kept under way); compares with an insta snapshot",
            idempotency::a_kept_response_expires_after_24_hours =>
                "needs the server's clock (24 hours, to the millisecond) and the purge",
            idempotency::a_retry_after_a_lost_answer_creates_no_second_event =>
                "needs a store that writes and loses the answer",
            idempotency::a_claim_left_by_a_request_that_died_lapses_after_the_request_timeout =>
                "needs a claim written through the store (a request that died) and the server's clock",
            idempotency::kept_responses_hold_across_instances_and_restarts =>
                "needs a second server instance on the same store",
            idempotency::idempotent_replays_are_counted_in_the_metrics =>
                "needs the exact counts of /metrics, of one server that nobody else uses",
            idempotency::an_idempotency_key_belongs_to_the_account_not_to_the_api_key =>
                "needs two creator keys of one account (the runner is given one)",
            idempotency::a_503_answer_is_not_kept =>
                "needs a store that refuses a write",
        }
    };
}

/// What a case does in a runner.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Runs against the target.
    Run(fn(Arc<Ctx>) -> BoxFuture<'static, ()>),
    /// Needs a test-only hook: listed as skipped, with the reason.
    Skip(&'static str),
}

/// One case of the suite.
#[derive(Clone, Copy)]
pub struct Case {
    /// The area of the contract: meta, transport, auth, events, inbox,
    /// leases, batch, idempotency, snapshots.
    pub group: &'static str,
    /// A sentence, as the test is named.
    pub name: &'static str,
    pub kind: Kind,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full_name())
    }
}

impl Case {
    /// `group::name`.
    pub fn full_name(&self) -> String {
        format!("{}::{}", self.group, self.name)
    }

    /// The reason it is skipped by a runner, if it is.
    pub fn skip_reason(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Skip(why) => Some(why),
            Kind::Run(_) => None,
        }
    }

    /// Runs the case against `target`, then acknowledges what it left in the
    /// inbox. A failed check panics, as in a test. Returns the reason when
    /// the case found it cannot run against this target.
    pub async fn run_once(&self, target: Arc<Target>, run_id: &str) -> Option<String> {
        let Kind::Run(run) = self.kind else {
            panic!("{self:?} needs a test-only hook; it runs in the in-process suite");
        };
        let cx = Arc::new(Ctx::new(target, run_id, self.name));
        run(cx.clone()).await;
        if let Some(reason) = cx.skipped() {
            return Some(reason);
        }
        cx.clean_up().await;
        None
    }
}

macro_rules! black_box_entries {
    ($($group:ident :: $name:ident),* $(,)?) => {
        vec![$(
            Case {
                group: stringify!($group),
                name: stringify!($name),
                kind: Kind::Run(|cx| Box::pin(async move {
                    $crate::cases::$group::$name(&cx).await
                })),
            },
        )*]
    };
}

macro_rules! hooked_entries {
    ($($group:ident :: $name:ident => $why:expr),* $(,)?) => {
        vec![$(
            Case {
                group: stringify!($group),
                name: stringify!($name),
                kind: Kind::Skip($why),
            },
        )*]
    };
}

/// Every case: the black-box ones in suite order, then the hooked ones.
pub fn cases() -> Vec<Case> {
    let mut all: Vec<Case> = crate::with_black_box_cases!(black_box_entries);
    let hooked: Vec<Case> = crate::with_hooked_cases!(hooked_entries);
    all.extend(hooked);
    all
}

/// The case named `group::name` (or just `name`).
pub fn case(name: &str) -> Option<Case> {
    cases()
        .into_iter()
        .find(|c| c.full_name() == name || c.name == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn case_names_are_unique_sentences() {
        let all = super::cases();
        let mut names: Vec<&str> = all.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "a name appears twice");
        for c in &all {
            assert!(c.name.split('_').count() >= 3, "{c:?} is not a sentence");
        }
        assert!(super::case("auth::a_revoked_key_is_403").is_some());
        assert!(super::case("a_revoked_key_is_403").is_some());
        assert!(super::case("auth::nope").is_none());
    }
}
