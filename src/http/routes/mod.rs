//! Each resource module owns its router; `crate::app` merges and layers them.

pub mod batch;
pub mod events;
pub mod leases;
pub mod meta;
