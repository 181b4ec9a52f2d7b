//! API keys, in one place: their format ([`key`]), verification with its
//! bcrypt budgets ([`Authenticator`], [`budget`]) and administration
//! ([`admin`]). It needs only the store and the clock; the HTTP side (the
//! layer that authenticates a request, the role extractors) is
//! `crate::http::auth`.

pub mod admin;
pub mod budget;
pub mod key;
mod verify;

pub use budget::ClientNet;
pub use verify::{
    on_blocking_pool, AuthConfig, AuthError, AuthMetrics, Authenticator, Caller, CheckJob,
    CheckRunner, SecretCheck,
};
