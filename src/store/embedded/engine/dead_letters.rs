//! Dead letters in the embedded store: the list (newest first, by the
//! DEAD_ORDER index), one by id, a replay back onto the queue, a deletion,
//! and the counts per webhook the gauges read.

use redb::ReadableDatabase;

use super::schema::*;
use super::LocalStore;
use crate::store::records::{
    parse_cursor, DeadLetter, DeadLetterFilter, DeadLetterPage, TargetStatus, UNROUTED,
};
use crate::store::StoreError;
use crate::time::unix_time;

impl LocalStore {
    pub fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        let below = match cursor {
            None => (u64::MAX, u64::MAX),
            Some(cursor) => parse_cursor(cursor)?,
        };
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let order = txn.open_table(DEAD_ORDER).map_err(failed)?;
        let dead = txn.open_table(DEAD).map_err(failed)?;
        let mut items: Vec<DeadLetter> = Vec::new();
        let mut more = false;
        for entry in order.range(..below).map_err(failed)?.rev() {
            let id = entry.map_err(failed)?.0.value().1;
            let Some(value) = dead.get(id).map_err(failed)? else {
                continue;
            };
            let letter: DeadLetter = decode(value.value())?;
            if !filter.matches(&letter) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(letter);
        }
        // A cursor is exclusive: the next page starts below this one's last.
        let next = items.last().filter(|_| more).map(DeadLetter::order_key);
        Ok(DeadLetterPage { items, next })
    }

    pub fn dead_letter_by_id(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let dead = txn.open_table(DEAD).map_err(failed)?;
        let value = dead.get(id).map_err(failed)?;
        value.map(|v| decode(v.value())).transpose()
    }

    pub fn replay(&self, id: u64, now_ms: u64) -> Result<bool, StoreError> {
        self.write(true, |tables| {
            let Some(letter) = tables.remove_dead(id)? else {
                return Ok(false);
            };
            if letter.job.target == UNROUTED {
                tables.insert_dead(&letter)?;
                return Ok(false);
            }
            let job = letter.job.replayed(now_ms);
            tables.record_outcome(&job, TargetStatus::Pending)?;
            tables.insert_job(&job)?;
            Ok(true)
        })
    }

    pub fn delete_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        self.write(true, |tables| match tables.remove_dead(id)? {
            None => Ok(false),
            Some(letter) => {
                let now_ms = unix_time().as_millis() as u64;
                tables.release_event(letter.job.event, now_ms, None)?;
                Ok(true)
            }
        })
    }

    /// From counters kept with every change: the gauges read them every
    /// second, however long the queue.
    pub fn dead_letter_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(failed)?;
        let counters = txn.open_table(COUNTERS).map_err(failed)?;
        let mut counts = Vec::new();
        // Keys after "dead:" and before "dead;" (';' follows ':').
        for entry in counters.range("dead:".."dead;").map_err(failed)? {
            let (key, count) = entry.map_err(failed)?;
            let webhook = key.value().trim_start_matches("dead:").to_string();
            counts.push((webhook, count.value()));
        }
        Ok(counts)
    }
}
