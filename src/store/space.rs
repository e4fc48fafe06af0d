//! Room for the drain. A store filled by its own backlog must still lease,
//! ack, retry, dead-letter, replay and delete what it holds: a copy-on-write
//! B-tree needs free pages to delete anything, and Redis refuses writes over
//! `maxmemory`. So new events are refused (`store_full`) while the store
//! still has room, and taken again once the drain has freed some, below a
//! low-water mark so that the ingress does not flap between 202 and 503.
//!
//! The gate never refuses a drain and never blocks: it only answers whether
//! one more event may come in. Each store measures its own room (the
//! embedded store's writer, the Redis store's monitor) and tells the gate;
//! between two measurements the gate adds up an estimate of what it let in.

use std::sync::Mutex;

/// Accepting resumes once the store is at most this full again.
pub const RESUME_AT: f64 = 0.9;

/// What a store measured of its room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// Bytes the store holds now.
    pub used: u64,
    /// What it may hold before new events are refused (the reserve for the
    /// drain already taken off); None where nothing bounds it.
    pub capacity: Option<u64>,
    /// How full its fullest part is, as a fraction of that part's capacity
    /// (a Redis Cluster's fullest master); `used / capacity` for one part.
    pub fullest: f64,
}

impl Room {
    /// One part: its fullness is `used / capacity`.
    pub fn single(used: u64, capacity: Option<u64>) -> Self {
        let fullest = capacity.map_or(0.0, |c| used as f64 / c.max(1) as f64);
        Self {
            used,
            capacity,
            fullest,
        }
    }
}

/// What `/admin/store` and the gauges show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SpaceStatus {
    /// Measured, plus what was let in since.
    pub used_bytes: u64,
    /// None: no limit is known (a Redis without `maxmemory`, a store in
    /// memory), or nothing was measured yet.
    pub capacity_bytes: Option<u64>,
    /// New events are refused until the drain frees room.
    pub paused: bool,
}

/// Why an event was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    Accepting,
    /// The estimate crossed the capacity: the next measurement decides.
    Estimated,
    /// A measurement found the store full: accepting resumes at
    /// [`RESUME_AT`].
    Measured,
}

#[derive(Debug)]
struct State {
    room: Option<Room>,
    /// Estimated bytes let in since `room` was measured.
    added: u64,
    pause: Pause,
}

/// A change the caller may want to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Paused,
    Resumed,
}

#[derive(Debug)]
pub struct SpaceGate {
    /// `embedded` or `redis`, for the log lines.
    store: &'static str,
    state: Mutex<State>,
}

impl Default for SpaceGate {
    fn default() -> Self {
        Self::new("event")
    }
}

impl SpaceGate {
    pub fn new(store: &'static str) -> Self {
        Self {
            store,
            state: Mutex::new(State {
                room: None,
                added: 0,
                pause: Pause::Accepting,
            }),
        }
    }

    /// Logs a change once, where it happens.
    fn log(&self, change: Change, used: u64, capacity: Option<u64>) {
        match change {
            Change::Paused => tracing::warn!(
                store = self.store, used_bytes = used, capacity_bytes = capacity,
                "the event store is full: new events are refused (503 store_full) until deliveries free room"
            ),
            Change::Resumed => tracing::info!(
                store = self.store, used_bytes = used, capacity_bytes = capacity,
                "the event store has room again: new events are accepted"
            ),
            Change::None => {}
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a new measurement: the estimate starts again from it.
    pub fn measured(&self, room: Room) -> Change {
        let mut state = self.state();
        let was_paused = state.pause != Pause::Accepting;
        state.room = Some(room);
        state.added = 0;
        // Once refused, for whatever reason, accepting resumes only at the
        // low-water mark: a pause the estimate started near the capacity
        // and a measurement just below it would otherwise flip the ingress
        // between 202 and 503 every measurement.
        state.pause = match (room.capacity, state.pause) {
            (None, _) => Pause::Accepting,
            (Some(_), Pause::Measured | Pause::Estimated) if room.fullest > RESUME_AT => {
                Pause::Measured
            }
            (Some(_), _) if room.fullest >= 1.0 => Pause::Measured,
            (Some(_), _) => Pause::Accepting,
        };
        let paused = state.pause != Pause::Accepting;
        let change = match (was_paused, paused) {
            (false, true) => Change::Paused,
            (true, false) => Change::Resumed,
            _ => Change::None,
        };
        drop(state);
        self.log(change, room.used, room.capacity);
        change
    }

    /// Lets in an event of about `bytes`, unless the store is (or would
    /// then be) full.
    pub fn admit(&self, bytes: u64) -> Result<(), Full> {
        let mut state = self.state();
        if state.pause != Pause::Accepting {
            return Err(Full);
        }
        if let Some(Room {
            capacity: Some(capacity),
            fullest,
            ..
        }) = state.room
        {
            let after = fullest + (state.added + bytes) as f64 / capacity.max(1) as f64;
            if after >= 1.0 {
                state.pause = Pause::Estimated;
                return Err(Full);
            }
        }
        state.added += bytes;
        Ok(())
    }

    /// The store itself refused a write for want of room (Redis over
    /// `maxmemory`): as good as a measurement that found it full, so
    /// accepting resumes only at the low-water mark. Its memory can peak
    /// above what the next measurement sees.
    pub fn store_refused(&self) -> Change {
        let mut state = self.state();
        let was = state.pause;
        state.pause = Pause::Measured;
        let (used, capacity) = (
            state.room.map_or(0, |r| r.used) + state.added,
            state.room.and_then(|r| r.capacity),
        );
        drop(state);
        let change = if was == Pause::Accepting {
            Change::Paused
        } else {
            Change::None
        };
        self.log(change, used, capacity);
        change
    }

    /// Whether the store asks for a measurement now: the estimate alone
    /// stopped accepting.
    pub fn wants_measurement(&self) -> bool {
        self.state().pause == Pause::Estimated
    }

    /// Fullness as estimated now (0 with no capacity known).
    pub fn fullness(&self) -> f64 {
        let state = self.state();
        match state.room {
            Some(Room {
                capacity: Some(capacity),
                fullest,
                ..
            }) => fullest + state.added as f64 / capacity.max(1) as f64,
            _ => 0.0,
        }
    }

    pub fn status(&self) -> SpaceStatus {
        let state = self.state();
        SpaceStatus {
            used_bytes: state.room.map_or(0, |r| r.used) + state.added,
            capacity_bytes: state.room.and_then(|r| r.capacity),
            paused: state.pause != Pause::Accepting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_refused_before_their_estimate_would_fill_the_store() {
        let gate = SpaceGate::default();
        gate.measured(Room::single(500, Some(1_000)));
        assert_eq!(gate.admit(300), Ok(()));
        assert_eq!(gate.status().used_bytes, 800);
        assert_eq!(gate.admit(200), Err(Full), "would reach the capacity");
        assert!(gate.status().paused);
        assert_eq!(gate.admit(1), Err(Full), "stays refused until measured");
        assert!(gate.wants_measurement());
    }

    #[test]
    fn a_pause_from_the_estimate_ends_only_with_a_measurement_at_the_low_water_mark() {
        let gate = SpaceGate::default();
        gate.measured(Room::single(900, Some(1_000)));
        assert_eq!(gate.admit(200), Err(Full));
        // The estimate was too high, but the store is 95% full: no flapping.
        assert_eq!(gate.measured(Room::single(950, Some(1_000))), Change::None);
        assert!(!gate.wants_measurement(), "a measurement decided");
        assert_eq!(gate.admit(1), Err(Full));
        assert_eq!(
            gate.measured(Room::single(900, Some(1_000))),
            Change::Resumed
        );
        // Far off: a burst's estimate, not a full store.
        gate.measured(Room::single(500, Some(1_000)));
        assert_eq!(gate.admit(600), Err(Full));
        assert_eq!(
            gate.measured(Room::single(520, Some(1_000))),
            Change::Resumed
        );
        assert_eq!(gate.admit(10), Ok(()));
    }

    #[test]
    fn a_measured_full_store_resumes_only_below_the_low_water_mark() {
        let gate = SpaceGate::default();
        assert_eq!(
            gate.measured(Room::single(1_000, Some(1_000))),
            Change::Paused
        );
        assert!(!gate.wants_measurement(), "the measurement decided");
        assert_eq!(gate.measured(Room::single(950, Some(1_000))), Change::None);
        assert_eq!(gate.admit(1), Err(Full), "above the low-water mark");
        assert_eq!(gate.measured(Room::single(901, Some(1_000))), Change::None);
        assert_eq!(
            gate.measured(Room::single(900, Some(1_000))),
            Change::Resumed
        );
        assert_eq!(gate.admit(1), Ok(()));
    }

    #[test]
    fn a_refusal_by_the_store_itself_holds_until_the_low_water_mark() {
        let gate = SpaceGate::default();
        gate.measured(Room::single(990, Some(1_000)));
        assert_eq!(gate.store_refused(), Change::Paused);
        assert_eq!(gate.admit(1), Err(Full));
        assert_eq!(gate.measured(Room::single(950, Some(1_000))), Change::None);
        assert_eq!(
            gate.measured(Room::single(890, Some(1_000))),
            Change::Resumed
        );
    }

    #[test]
    fn without_a_capacity_nothing_is_refused() {
        let gate = SpaceGate::default();
        assert_eq!(gate.admit(u64::MAX / 4), Ok(()), "not measured yet");
        gate.measured(Room::single(10 << 30, None));
        assert_eq!(gate.admit(1 << 30), Ok(()));
        assert_eq!(gate.status().capacity_bytes, None);
        assert_eq!(gate.fullness(), 0.0);
    }

    #[test]
    fn the_fullest_part_decides_on_a_cluster() {
        let gate = SpaceGate::default();
        // Two masters of 1,000 each: together half full, one of them full.
        let room = Room {
            used: 1_000,
            capacity: Some(2_000),
            fullest: 1.0,
        };
        assert_eq!(gate.measured(room), Change::Paused);
        assert_eq!(gate.admit(1), Err(Full));
    }

    #[test]
    fn a_capacity_of_zero_is_full_not_a_division_by_zero() {
        let gate = SpaceGate::default();
        assert_eq!(gate.measured(Room::single(10, Some(0))), Change::Paused);
        assert_eq!(gate.admit(1), Err(Full));
    }
}
