//! The one integration-test binary.
//!
//! `conformance::sqlite::*` and `conformance::dynamodb::*` are the same
//! HTTP conformance suite run against each backend (`make test` prints how
//! many ran against which).

// Tests may unwrap: a panic is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod cli;
mod client;
mod conformance;
mod dedup_edge;
mod deploy;
mod dynamodb_store;
mod fixtures;
mod hardening;
mod props;
mod resilience;
mod sqlite_store;
mod support;
