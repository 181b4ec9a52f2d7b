//! Deterministic simulation of the Triggers API.
//!
//! One seed fixes a whole run: the workload (producers, consumers, viewers,
//! adversaries), the fault schedule (store faults, restarts, network
//! faults), timing and time itself. The service inside is the real one:
//! `Application` (the same router, auth, rate limits, `Timed` store budget,
//! purge loop and HTTP/1.1 server loop as production) on an in-memory
//! network, over the in-memory store, on a single-threaded tokio runtime
//! whose clock is paused: time jumps to the next timer whenever every task
//! waits, so a simulated day takes seconds and the same seed gives the same
//! history byte for byte. The same workloads and checker also run over
//! SQLite and DynamoDB Local, with real threads and time (same invariants,
//! no determinism promise).
//!
//! - [`config`]: the seed's choices; [`run`]: one run end to end;
//! - [`world`], [`workload`]: the actors and the chaos schedule;
//! - [`net`], [`client`]: the simulated network and HTTP client;
//! - [`faults`]: the store fault decorator; [`broken`]: broken stores;
//! - [`history`], [`checker`]: the recorded history and its invariants;
//! - [`env`]: the clock, event ids and bcrypt runner injected into the
//!   service through its ordinary seams.

pub mod broken;
pub mod checker;
pub mod client;
pub mod config;
pub mod env;
pub mod faults;
pub mod history;
pub mod net;
pub mod run;
pub mod workload;
pub mod world;

pub use config::{Backend, SimConfig};
pub use run::{run, RunResult};
