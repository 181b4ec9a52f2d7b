//! Triggers API: systems POST events; each account's consumers read their
//! inbox of undelivered events and acknowledge them.

pub mod domain;
pub mod store;
