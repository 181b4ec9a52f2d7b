//! The HTTP conformance suite: every row of SPEC.md, over real HTTP, run
//! unchanged against each backend. Each case is `async fn(Backend)`; the
//! `suite!` macro instantiates it as `sqlite::<name>`, `dynamodb::<name>`
//! and `memory::<name>` (the in-memory store the simulator runs on).

mod auth;
mod events;
mod inbox;
mod meta;
mod snapshots;
mod transport;

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

suite! {
    meta::the_index_names_the_service_and_links_the_docs,
    meta::status_reports_ok_with_version_uptime_and_store,
    meta::the_openapi_document_is_3_1_and_covers_every_endpoint,
    meta::the_docs_page_renders_the_openapi_document_without_external_assets,
    meta::metrics_expose_requests_latency_ingests_duplicates_and_acks,

    transport::an_unknown_route_is_a_404_problem,
    transport::a_wrong_method_is_a_405_problem_with_an_allow_header,
    transport::a_sane_request_id_is_echoed_and_an_insane_one_replaced,
    transport::a_body_that_is_not_json_content_type_is_415,
    transport::malformed_json_is_a_400_validation_error,
    transport::invalid_utf8_is_a_400_validation_error,
    transport::a_body_over_512_kib_is_413_before_parsing,
    transport::a_chunked_body_over_the_limit_is_413,
    transport::a_lying_content_length_cannot_smuggle_a_large_body,
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
    auth::inactive_and_revoked_keys_are_403,
    auth::a_revoked_key_stops_working_once_the_auth_cache_expires,
    auth::a_viewer_may_read_but_not_ingest_or_acknowledge,
    auth::authenticated_responses_carry_ratelimit_headers,
    auth::a_key_over_its_limit_gets_429_with_retry_after_until_the_window_resets,

    events::posting_an_event_answers_201_with_location_and_an_accepted_body,
    events::payload_and_metadata_come_back_exactly_as_sent,
    events::a_fetched_event_has_every_field_and_is_undelivered,
    events::a_repeat_within_the_window_answers_200_with_the_original_id,
    events::key_order_and_whitespace_do_not_make_a_payload_different,
    events::escape_and_exponent_spelling_do_not_make_a_payload_different_but_digits_do,
    events::a_different_type_payload_or_source_is_not_a_duplicate,
    events::the_dedup_window_ends_exactly_at_its_bound,
    events::concurrent_identical_posts_create_exactly_one_event,
    events::deduplication_is_per_account,
    events::deduplication_holds_across_instances_and_restarts,
    events::acknowledging_removes_from_the_inbox_but_keeps_the_event_readable,
    events::a_second_acknowledgement_is_204_and_keeps_the_first_delivered_at,
    events::an_invalid_or_unknown_event_id_is_404,
    events::the_inbox_alias_paths_read_and_acknowledge,
    events::a_delivered_event_is_purged_after_the_retention_period,
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
    inbox::a_page_ends_early_at_its_byte_bound_with_a_cursor_and_at_least_one_event,

    snapshots::every_error_body_matches_its_snapshot,
}
