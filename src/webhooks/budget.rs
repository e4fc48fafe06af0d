//! The ingress's memory for request bodies: every body being read (and
//! then stored) holds a reservation of its bytes against `max_buffered`, so
//! a flood of slow, large requests from anyone on the internet costs a
//! bounded amount of memory. A request whose reservation does not fit is
//! answered 503 before a byte of its body is read; providers retry.
//!
//! A quarter of the budget is kept for bodies of at most [`SMALL_BODY`]:
//! real webhooks are small, so a flood of large ones never starves them.
//! When nothing else is buffered, one body of any allowed size fits, so a
//! `max_body` above `max_buffered` still works, one at a time.

use std::sync::{Arc, Mutex};

/// Bodies up to this size may use the whole budget.
pub const SMALL_BODY: u64 = 64 << 10;

pub struct BodyBudget {
    limit: u64,
    used: Mutex<u64>,
}

/// Bytes held against the budget until dropped.
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: Mutex::new(0),
        })
    }

    /// The most that may be held while a body of `size` bytes is admitted.
    fn ceiling(&self, size: u64) -> u64 {
        if size <= SMALL_BODY {
            self.limit
        } else {
            self.limit - self.limit / 4
        }
    }

    /// Reserves `bytes`, or None when they do not fit now.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let mut reservation = Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        };
        reservation.grow(bytes).then_some(reservation)
    }

    /// Bytes reserved now (for tests and the flood benchmark's report).
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reservation {
    /// Adds `more` bytes (a chunked body's next chunk); false, and nothing
    /// changed, when they do not fit.
    pub fn grow(&mut self, more: u64) -> bool {
        if more == 0 {
            return true;
        }
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        let size = self.bytes.saturating_add(more);
        let after = used.saturating_add(more);
        // `used == self.bytes`: nothing else is buffered, so this body fits
        // whatever its size (it passed `max_body` already).
        let fits = *used == self.bytes || after <= self.budget.ceiling(size);
        if fits {
            *used = after;
            self.bytes = size;
        }
        fits
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn large_bodies_share_three_quarters_and_small_ones_the_rest() {
        let budget = BodyBudget::new(32 * MIB);
        let large: Vec<Reservation> = (0..24).map_while(|_| budget.reserve(MIB)).collect();
        assert_eq!(large.len(), 24, "24 MiB of 32 for large bodies");
        assert!(budget.reserve(MIB).is_none(), "the 25th large body waits");
        let small: Vec<Reservation> = (0..128).map_while(|_| budget.reserve(SMALL_BODY)).collect();
        assert_eq!(small.len(), 128, "the last 8 MiB serve small bodies");
        assert!(budget.reserve(1).is_none(), "full");
        drop(large);
        assert_eq!(budget.used(), 8 * MIB);
        assert!(budget.reserve(MIB).is_some());
    }

    #[test]
    fn a_body_larger_than_the_budget_fits_only_alone() {
        let budget = BodyBudget::new(MIB);
        let alone = budget.reserve(4 * MIB).expect("nothing else is buffered");
        assert!(budget.reserve(10).is_none());
        drop(alone);
        assert_eq!(budget.used(), 0);
        let _small = budget.reserve(10).unwrap();
        assert!(budget.reserve(4 * MIB).is_none(), "not while another reads");
    }

    #[test]
    fn a_chunked_body_grows_its_reservation_until_it_no_longer_fits() {
        let budget = BodyBudget::new(256 << 10);
        let mut chunked = budget.reserve(0).unwrap();
        assert!(chunked.grow(100 << 10));
        let _other = budget.reserve(60 << 10).unwrap();
        assert!(
            !chunked.grow(100 << 10),
            "200 KiB is large: at most 192 KiB may be held"
        );
        assert_eq!(
            chunked.bytes(),
            100 << 10,
            "a refused growth changes nothing"
        );
        drop(chunked);
        assert_eq!(budget.used(), 60 << 10);
    }
}
