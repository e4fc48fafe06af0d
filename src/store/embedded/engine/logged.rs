//! An accepted event as the event log keeps it: enough to accept it again,
//! with the same numbers, after a crash took the commits that were not
//! fsynced (its sequence, dedup key and targets, and the record the events
//! table keeps), then its body. The body is read back from here for every
//! delivery and for the log's detail.

use serde::{Deserialize, Serialize};

use super::schema::{decode, encode};
use crate::event::{EventMeta, Priority};
use crate::names::UpstreamName;
use crate::store::embedded::log::Place;
use crate::store::records::{NewEvent, StoredEvent};
use crate::store::StoreError;

/// The log's kind of record for an accepted event.
pub(super) const ACCEPTED: u8 = 1;
/// The same payload copied forward by compaction: never applied again
/// (the commit that points to the copy is fsynced before the segment it
/// came from goes, and a crash before it leaves the original in place).
pub(super) const MOVED: u8 = 2;

#[derive(Serialize, Deserialize)]
struct Head {
    sequence: u64,
    dedup: String,
    targets: Vec<UpstreamName>,
}

/// The record the events table keeps for a new event numbered `sequence`:
/// its jobs are numbered after it, in its targets' order.
pub(super) fn stored_with_jobs(event: &NewEvent<'_>, sequence: u64, now_ms: u64) -> StoredEvent {
    let mut stored = event.stored(now_ms);
    for (offset, outcome) in stored.targets.iter_mut().enumerate() {
        outcome.job = Some(sequence + 1 + offset as u64);
    }
    stored
}

/// The payload for an accepted event: the head's length and the head, the
/// stored record's length and the record (`stored`, as the events table
/// gets it), then the body.
pub(super) fn encode_accepted(sequence: u64, event: &NewEvent<'_>, stored: &[u8]) -> Vec<u8> {
    let head = encode(&Head {
        sequence,
        dedup: event.meta.dedup.clone(),
        targets: event.meta.targets.clone(),
    });
    let mut payload = Vec::with_capacity(8 + head.len() + stored.len() + event.body.len());
    payload.extend_from_slice(&(head.len() as u32).to_le_bytes());
    payload.extend_from_slice(&head);
    payload.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    payload.extend_from_slice(stored);
    payload.extend_from_slice(event.body);
    payload
}

/// The parts of an accepted event's payload.
pub(super) struct Accepted<'a> {
    pub sequence: u64,
    pub meta: EventMeta,
    pub stored: StoredEvent,
    pub body: &'a [u8],
}

impl Accepted<'_> {
    /// The event as it came in, to accept it again.
    pub fn new_event(&self) -> NewEvent<'_> {
        NewEvent {
            webhook: &self.stored.webhook,
            meta: &self.meta,
            content_type: self.stored.content_type.as_deref(),
            headers: &self.stored.headers,
            body: self.body,
        }
    }
}

fn corrupt(place: Place) -> StoreError {
    StoreError::Corrupt(format!(
        "the event log's record at segment {} offset {} is not an accepted event",
        place.segment, place.offset
    ))
}

/// Splits a length-prefixed part off the front of `bytes`.
fn part(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let part = bytes.get(4..4 + len)?;
    Some((part, &bytes[4 + len..]))
}

/// The body of an accepted event's payload, without decoding the rest.
pub(super) fn body_of(place: Place, payload: &[u8]) -> Result<&[u8], StoreError> {
    let (_, rest) = part(payload).ok_or_else(|| corrupt(place))?;
    let (_, body) = part(rest).ok_or_else(|| corrupt(place))?;
    Ok(body)
}

/// The sequence an accepted event's payload was given.
pub(super) fn sequence_of(place: Place, payload: &[u8]) -> Result<u64, StoreError> {
    let (head, _) = part(payload).ok_or_else(|| corrupt(place))?;
    Ok(decode::<Head>(head)?.sequence)
}

pub(super) fn decode_accepted(place: Place, payload: &[u8]) -> Result<Accepted<'_>, StoreError> {
    let (head, rest) = part(payload).ok_or_else(|| corrupt(place))?;
    let (stored, body) = part(rest).ok_or_else(|| corrupt(place))?;
    let head: Head = decode(head)?;
    let stored: StoredEvent = decode(stored)?;
    let meta = EventMeta {
        id: stored.id.clone(),
        dedup: head.dedup,
        event_type: stored.event_type.clone(),
        context: stored.context.clone(),
        priority: stored.priority.unwrap_or(Priority::Normal),
        targets: head.targets,
        trace: stored.trace.clone(),
    };
    Ok(Accepted {
        sequence: head.sequence,
        meta,
        stored,
        body,
    })
}
