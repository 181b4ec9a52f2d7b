//! What the simulator injects into the service through its ordinary seams:
//! the clock (tokio's clock, virtual on a paused runtime), event ids from
//! the seed, and where bcrypt runs (a task of the runtime itself).

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use triggers_api::auth::CheckJob;
use triggers_api::clock::Clock;
use triggers_api::domain::{EventId, EventIds};

/// Wall time as the service sees it: `epoch` plus tokio's elapsed time. On
/// a paused runtime that is virtual time, which jumps to the next timer
/// whenever every task waits; on a normal runtime it is real time.
#[derive(Debug)]
pub struct SimClock {
    epoch: DateTime<Utc>,
    start: Instant,
}

impl SimClock {
    pub fn new(epoch: DateTime<Utc>) -> Self {
        Self {
            epoch,
            start: Instant::now(),
        }
    }

    /// Milliseconds since the start of the run.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn epoch(&self) -> DateTime<Utc> {
        self.epoch
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default();
        self.epoch + elapsed
    }
}

/// UUIDv7 event ids from a seed: the clock's millisecond, a counter within
/// the millisecond (so ids increase in the order they are taken, as
/// `Uuid::now_v7` does in one process) and seeded random bits.
pub struct SeededEventIds {
    state: Mutex<IdState>,
}

struct IdState {
    rng: ChaCha8Rng,
    last_ms: i64,
    counter: u16,
}

impl SeededEventIds {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Mutex::new(IdState {
                rng: ChaCha8Rng::seed_from_u64(seed),
                last_ms: i64::MIN,
                counter: 0,
            }),
        }
    }
}

impl EventIds for SeededEventIds {
    fn next_id(&self, now: DateTime<Utc>) -> EventId {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ms = now.timestamp_millis();
        if ms > s.last_ms {
            s.last_ms = ms;
            s.counter = 0;
        } else {
            // The same millisecond (or a clock that stood still): count up,
            // borrowing the next millisecond when the 12-bit counter is full.
            s.counter += 1;
            if s.counter > 0x0fff {
                s.last_ms += 1;
                s.counter = 0;
            }
        }
        let mut bytes = [0u8; 10];
        s.rng.fill_bytes(&mut bytes[2..]);
        bytes[..2].copy_from_slice(&s.counter.to_be_bytes());
        let millis = u64::try_from(s.last_ms).unwrap_or(0);
        EventId::from_uuid(uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid())
    }
}

/// The simulator's `CheckRunner`: bcrypt as an ordinary task of the
/// (single-threaded) runtime, so when it finishes is decided by the
/// runtime's schedule, not by another thread.
pub fn check_on_runtime(
    job: CheckJob,
) -> tokio::task::JoinHandle<Result<bool, bcrypt::BcryptError>> {
    tokio::spawn(async move { job() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_are_v7_increasing_and_replayable() {
        let t = DateTime::from_timestamp_millis(1_900_000_000_000).unwrap();
        let a = SeededEventIds::new(1);
        let b = SeededEventIds::new(1);
        let mut prev = None;
        for i in 0..5000 {
            let now = t + chrono::Duration::milliseconds(i / 1000);
            let id = a.next_id(now);
            assert_eq!(id, b.next_id(now));
            assert_eq!(id.as_uuid().get_version_num(), 7);
            assert!(EventId::parse(&id.to_string()).is_some());
            if let Some(p) = prev {
                assert!(id > p, "{id} after {p}");
            }
            prev = Some(id);
        }
    }
}
