//! The HTTP conformance suite: every rule of docs/api.md, over real HTTP, run
//! unchanged against each backend. Each case is `async fn(Backend)`; the
//! `suite!` macro instantiates it as `sqlite::<name>`, `dynamodb::<name>`
//! and `memory::<name>` (the in-memory store the simulator runs on).
//!
//! `blackbox::*` are the cases of the `triggers-conformance` crate, the ones
//! `triggers-api conformance` also runs against any deployment (keys given,
//! nothing but HTTP); the other modules hold the cases that need a test-only
//! hook (the server's clock, its store, its settings, a second instance),
//! which that runner lists as skipped with the reason. `runner` runs the
//! runner itself against servers, good and broken.

mod auth;
mod batch;
mod blackbox;
mod events;
pub(crate) mod held;
mod idempotency;
mod inbox;
mod leases;
mod runner;
mod snapshots;

macro_rules! suite {
    ($($module:ident :: $name:ident),* $(,)?) => {
        pub mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$module::$name(crate::support::Backend::Sqlite).await;
                }
            )*
        }
        pub mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$module::$name(crate::support::Backend::Dynamodb).await;
                }
            )*
        }
        pub mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$module::$name(crate::support::Backend::Memory).await;
                }
            )*
        }
    };
}

/// Cases that never reach the store: run once, not once per backend (they
/// would only inflate the per-backend counts).
macro_rules! once {
    ($($module:ident :: $name:ident),* $(,)?) => {
        pub mod http {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$module::$name(crate::support::Backend::Sqlite).await;
                }
            )*
        }
    };
}

once! {
    blackbox::the_index_names_the_service_and_links_the_docs,
    blackbox::the_openapi_document_is_3_1_and_covers_every_endpoint,
    blackbox::the_docs_page_renders_the_openapi_document_without_external_assets,
    blackbox::an_unknown_route_is_a_404_problem,
    blackbox::a_sane_request_id_is_echoed_and_an_insane_one_replaced,
    blackbox::the_openapi_document_states_the_batch_route_and_the_idempotency_key,
}

suite! {
    blackbox::status_reports_ok_with_version_uptime_and_store,
    blackbox::metrics_expose_requests_latency_ingests_duplicates_and_acks,

    blackbox::a_wrong_method_is_a_405_problem_with_an_allow_header,
    blackbox::a_body_that_is_not_json_content_type_is_415,
    blackbox::malformed_json_is_a_400_validation_error,
    blackbox::invalid_utf8_is_a_400_validation_error,
    blackbox::a_body_over_512_kib_is_413_before_parsing,
    blackbox::a_chunked_body_over_the_limit_is_413,
    blackbox::a_content_length_shorter_than_the_body_reads_only_what_it_declares,
    blackbox::a_declared_length_over_the_limit_is_413_before_any_body_is_read,
    blackbox::a_payload_over_256_kib_is_413,
    blackbox::request_nesting_of_128_is_accepted_and_129_is_400,
    blackbox::unknown_fields_are_400_and_listed,
    blackbox::missing_and_mistyped_fields_are_all_listed,
    blackbox::event_type_must_be_1_to_255_characters_without_control_characters,
    blackbox::source_must_be_at_most_255_characters,
    blackbox::payload_and_metadata_must_be_objects,

    blackbox::a_request_without_a_key_is_401,
    blackbox::a_malformed_or_unknown_key_is_401,
    blackbox::a_wrong_secret_for_a_real_key_id_is_401,
    blackbox::the_x_api_key_header_is_accepted,
    auth::an_inactive_key_is_403,
    blackbox::a_revoked_key_is_403,
    auth::a_revoked_key_stops_working_once_the_auth_cache_expires,
    blackbox::a_viewer_may_read_but_not_ingest_or_acknowledge,
    blackbox::authenticated_responses_carry_ratelimit_headers,
    auth::a_key_over_its_limit_gets_429_with_retry_after_until_the_window_resets,

    blackbox::posting_an_event_answers_201_with_location_and_an_accepted_body,
    events::the_server_clock_stamps_timestamp_and_delivered_at,
    blackbox::payload_and_metadata_come_back_exactly_as_sent,
    blackbox::a_fetched_event_has_every_field_and_is_undelivered,
    blackbox::a_repeat_within_the_window_answers_200_with_the_original_id,
    blackbox::key_order_and_whitespace_do_not_make_a_payload_different,
    blackbox::escape_and_exponent_spelling_do_not_make_a_payload_different_but_digits_do,
    blackbox::a_different_type_payload_or_source_is_not_a_duplicate,
    events::the_dedup_window_ends_exactly_at_its_bound,
    blackbox::concurrent_identical_posts_create_exactly_one_event,
    blackbox::deduplication_is_per_account,
    events::deduplication_holds_across_instances_and_restarts,
    blackbox::acknowledging_removes_from_the_inbox_but_keeps_the_event_readable,
    blackbox::a_second_acknowledgement_is_204_and_keeps_the_first_delivered_at,
    blackbox::an_invalid_or_unknown_event_id_is_404,
    blackbox::the_inbox_alias_paths_read_and_acknowledge,
    events::a_delivered_event_is_purged_after_the_retention_period,
    blackbox::another_accounts_event_is_404_for_read_and_acknowledge,

    blackbox::the_inbox_lists_undelivered_events_oldest_first,
    blackbox::limit_out_of_range_or_not_a_number_is_400,
    blackbox::unknown_query_parameters_are_400,
    blackbox::a_malformed_tampered_or_foreign_cursor_is_400_invalid_cursor,
    blackbox::the_event_type_filter_is_exact,
    blackbox::has_more_is_false_only_on_the_last_page,
    blackbox::walking_pages_while_events_are_added_and_acknowledged_never_repeats_one,
    blackbox::the_inbox_is_read_your_writes,
    blackbox::an_account_sees_only_its_own_inbox,
    inbox::a_page_ends_early_at_its_byte_bound_with_a_cursor_and_at_least_one_event,
    blackbox::clients_of_the_original_service_work_unchanged,

    blackbox::a_lease_takes_the_oldest_available_events_and_holds_them_until_leased_until,
    blackbox::two_concurrent_leases_never_share_an_event,
    leases::leased_events_are_available_again_exactly_at_leased_until,
    blackbox::an_ack_after_the_lease_ended_is_stale_only_for_events_leased_again_or_acknowledged,
    blackbox::ack_and_release_of_a_subset_leave_the_rest_of_the_lease_held,
    blackbox::an_unknown_or_foreign_lease_id_is_404,
    leases::an_event_leased_max_leases_times_is_quarantined,
    leases::the_last_lease_of_a_quarantined_event_may_still_acknowledge_it,
    leases::the_quarantined_listing_pages_like_the_inbox,
    leases::requeue_brings_a_quarantined_event_back_with_lease_count_0,
    blackbox::the_event_type_filter_applies_to_leases,
    blackbox::a_long_poll_wakes_up_when_an_event_is_ingested,
    leases::a_long_poll_wakes_up_when_an_event_is_ingested_on_this_instance,
    leases::a_long_poll_wakes_up_when_an_event_is_ingested_on_another_instance,
    blackbox::a_long_poll_answers_empty_when_its_wait_ends,
    blackbox::a_long_poll_finds_a_lease_that_ends_while_it_waits,
    leases::shutdown_ends_a_long_poll_promptly,
    leases::over_the_waiter_budget_a_lease_answers_at_once,
    blackbox::v1_walks_and_delete_keep_working_beside_leases,
    blackbox::an_event_deleted_while_leased_takes_no_place_in_later_leases,
    leases::leases_hold_across_instances_and_restarts,
    blackbox::a_viewer_gets_403_on_the_lease_routes_before_the_body_is_read,
    blackbox::lease_ack_and_release_bodies_are_validated,

    snapshots::every_error_body_matches_its_snapshot,

    blackbox::a_batch_answers_every_event_in_request_order,
    blackbox::a_repeat_inside_one_batch_is_a_duplicate_of_its_first,
    blackbox::a_malformed_envelope_is_400_for_the_whole_batch,
    blackbox::invalid_utf8_anywhere_in_a_batch_is_a_400_for_the_body,
    blackbox::a_batch_of_100_events_is_accepted_and_101_is_400,
    blackbox::the_batch_byte_limit_holds_on_the_bytes_read_and_events_keep_theirs,
    blackbox::nesting_is_judged_per_event,
    blackbox::a_viewer_gets_403_on_batch_before_the_body_or_key_is_read,
    batch::a_batch_counts_once_against_the_rate_limit,
    batch::batch_events_count_in_the_ingest_and_duplicate_metrics,
    batch::a_store_failure_fails_the_whole_batch_and_its_retry_is_deduplicated,
    blackbox::concurrent_identical_batches_create_each_event_once,
    blackbox::a_batch_wakes_a_long_poll_and_its_events_are_leasable,

    blackbox::a_retry_with_the_same_key_and_body_gets_the_first_response_again,
    idempotency::idempotent_replays_are_counted_in_the_metrics,
    blackbox::the_same_key_with_another_body_or_route_is_409,
    idempotency::the_same_request_while_the_first_is_under_way_is_409_retryable,
    blackbox::equal_keys_of_different_accounts_never_meet,
    idempotency::an_idempotency_key_belongs_to_the_account_not_to_the_api_key,
    idempotency::a_kept_response_expires_after_24_hours,
    blackbox::an_invalid_idempotency_key_is_400_naming_the_header,
    blackbox::a_repeated_idempotency_key_header_is_400_naming_it,
    blackbox::answers_other_than_2xx_are_not_kept,
    idempotency::a_503_answer_is_not_kept,
    idempotency::a_retry_after_a_lost_answer_creates_no_second_event,
    idempotency::a_claim_left_by_a_request_that_died_lapses_after_the_request_timeout,
    idempotency::kept_responses_hold_across_instances_and_restarts,
}
