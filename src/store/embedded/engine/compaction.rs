//! Keeps a few events from holding the event log's segments: a sealed
//! segment that keeps few events has their records copied to the end of the
//! log, and goes at the commit after; the segment being appended to, once
//! nothing kept lies in it, is closed so that it can go too (a store
//! drained of its backlog gets its room back without a new event).

use super::logged::{self, ACCEPTED, MOVED};
use super::{LocalStore, StoreError};
use crate::store::embedded::log::Place;

/// A sealed segment keeping at most this many events has them copied
/// forward: a copy costs at most this many records' bytes.
pub const COMPACT_AT_MOST: u64 = 32;

impl LocalStore {
    /// Copies forward the events of one sealed segment that keeps few, or
    /// closes the segment being appended to if nothing kept lies in it;
    /// how many events were copied. The commit is fsynced, so the segments
    /// left with nothing go at once.
    pub fn compact_log(&self) -> Result<u64, StoreError> {
        let Some(log) = self.log.get() else {
            return Ok(0);
        };
        self.write(true, |tables| {
            let active = log.active();
            // The segment just closed is left alone: what waits in it is
            // the ordinary backlog, delivered soon.
            let below = active.saturating_sub(1);
            let (sparse, active_kept) = tables.sparse_segment(below, COMPACT_AT_MOST, active)?;
            let Some(segment) = sparse else {
                if !active_kept && log.active_holds_records() {
                    log.roll_now()?;
                }
                return Ok(0);
            };
            // The records still kept here, then copied in one append.
            let mut kept: Vec<(u64, Place, Vec<u8>)> = Vec::new();
            log.records::<StoreError>(segment, |place, kind, payload| {
                if kind != ACCEPTED && kind != MOVED {
                    return Ok(());
                }
                let sequence = logged::sequence_of(place, payload)?;
                // Dropped, or copied already: not kept here.
                if tables.place_of(sequence)? == Some(place) {
                    kept.push((sequence, place, payload.to_vec()));
                }
                Ok(())
            })?;
            let records: Vec<(u8, &[u8])> =
                kept.iter().map(|(_, _, p)| (MOVED, p.as_slice())).collect();
            let copies = log.append(&records)?;
            let moved = kept.len() as u64;
            for ((sequence, from, _), to) in kept.iter().zip(copies) {
                tables.move_record(*sequence, *from, to)?;
            }
            Ok(moved)
        })
    }
}
