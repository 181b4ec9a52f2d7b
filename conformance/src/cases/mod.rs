//! The black-box cases, by area of the contract (`docs/api.md`). Each is an
//! `async fn(&Ctx)` named as the sentence it checks.
//!
//! A case is a test: a failed check panics with its message, which the
//! runner reports; so `unwrap` is as welcome here as in `tests/`.
#![allow(clippy::unwrap_used)]

pub mod auth;
pub mod batch;
pub mod events;
pub mod idempotency;
pub mod inbox;
pub mod leases;
pub mod meta;
pub mod transport;
