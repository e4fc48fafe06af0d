//! The embedded store's leases, held in memory. One process owns the file,
//! and its leases end with it (they are released when the file is opened),
//! so writing them down bought nothing and cost the single writer a job
//! record decoded and encoded again and two queue updates per lease: a
//! third of its work per delivered job. A leased job keeps its place in the
//! queue; a lease passes over the jobs held here until their lease ends.

use std::collections::HashMap;

use crate::store::records::Job;
use crate::store::StoreError;

/// Where a leased job sits in the tables: what an ack removes, without
/// reading its record again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub rank: u8,
    pub target: String,
    /// Its due time in the queue (the lease does not move it).
    pub due_ms: u64,
    pub event: u64,
}

#[derive(Debug, Clone)]
pub struct Held {
    pub token: u64,
    pub until_ms: u64,
    pub place: Place,
}

/// Every lease this process holds. Bounded by the delivery workers (a job
/// is leased only for a free worker), so a copy per write batch is cheap.
#[derive(Debug, Clone, Default)]
pub struct Leases {
    held: HashMap<u64, Held>,
    last_token: u64,
}

impl Leases {
    /// Whether job `id` is held by a lease that has not ended at `now_ms`.
    pub fn blocks(&self, id: u64, now_ms: u64) -> bool {
        self.held.get(&id).is_some_and(|h| h.until_ms > now_ms)
    }

    /// Whether job `id` is leased at all (ended or not): its due time is
    /// then its lease's end, not its place in the queue.
    pub fn holds(&self, id: u64) -> bool {
        self.held.contains_key(&id)
    }

    /// Leases job `id` until `until_ms`, replacing an ended lease: the new
    /// token.
    pub fn grant(&mut self, id: u64, until_ms: u64, place: Place) -> u64 {
        self.last_token += 1;
        let token = self.last_token;
        self.held.insert(
            id,
            Held {
                token,
                until_ms,
                place,
            },
        );
        token
    }

    /// The lease `job` carries, if it is still the job's current one.
    pub fn check(&self, job: &Job) -> Result<&Held, StoreError> {
        match self.held.get(&job.id) {
            Some(held) if held.token == job.lease => Ok(held),
            _ => Err(StoreError::LeaseLost(job.id)),
        }
    }

    pub fn release(&mut self, id: u64) {
        self.held.remove(&id);
    }

    /// When the first lease ends.
    pub fn first_end(&self) -> Option<u64> {
        self.held.values().map(|h| h.until_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> Place {
        Place {
            rank: 1,
            target: "notify".into(),
            due_ms: 10,
            event: 1,
        }
    }

    #[test]
    fn a_lease_blocks_until_it_ends_and_a_new_one_takes_the_job_from_its_holder() {
        let mut leases = Leases::default();
        let first = leases.grant(2, 100, place());
        assert!(leases.blocks(2, 99));
        assert!(!leases.blocks(2, 100), "ended");
        assert!(leases.holds(2));
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "id": 2, "event": 1, "webhook": "stripe", "event_id": "evt", "event_type": "t",
            "target": "notify", "priority": "normal", "received_at_ms": 10, "due_ms": 10,
            "attempts": 0, "lease": 0, "leased": false
        }))
        .unwrap();
        job.lease = first;
        assert!(leases.check(&job).is_ok(), "an ended lease still acks");
        let second = leases.grant(2, 200, place());
        assert_ne!(first, second);
        assert_eq!(leases.check(&job).unwrap_err(), StoreError::LeaseLost(2));
        assert_eq!(leases.first_end(), Some(200));
        leases.release(2);
        assert!(!leases.holds(2));
        assert_eq!(leases.first_end(), None);
    }
}
