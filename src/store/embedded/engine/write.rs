//! The writes of the queue's hot path and what each does to the tables:
//! several share one transaction (the writer's batch).

use std::time::Duration;

use super::tables::Tables;
use crate::store::embedded::leases::Leases;
use crate::store::records::{
    Acceptance, Attempt, DeadLetter, Job, LeaseRequest, NewEvent, TargetStatus,
};
use crate::store::StoreError;

/// A write the queue's hot path makes; several share one transaction.
pub enum Write<'a> {
    Accept(NewEvent<'a>, u64, Duration),
    Lease(&'a LeaseRequest),
    /// Delivered, by this attempt (None when it was not recorded).
    Ack(&'a Job, Option<Attempt>),
    Retry(&'a Job, Attempt, u64),
    DeadLetter {
        held: &'a Job,
        attempt: Option<Attempt>,
        reason: &'a str,
        now_ms: u64,
    },
}

/// What a write answers.
#[derive(Debug)]
pub enum Written {
    Accepted(Acceptance),
    Leased(Vec<Job>),
    Done,
}

impl Write<'_> {
    /// Accepts are acknowledged to providers and dead letters to
    /// operators: both wait for the fsync. Leases, acks and retries may be
    /// lost in a crash at the cost of a repeated delivery.
    pub(super) fn needs_fsync(&self) -> bool {
        matches!(self, Self::Accept(..) | Self::DeadLetter { .. })
    }

    pub(super) fn apply(
        &self,
        tables: &mut Tables<'_>,
        leases: &mut Leases,
    ) -> Result<Written, StoreError> {
        match self {
            Self::Accept(event, now_ms, window) => tables
                .insert(event, *now_ms, *window)
                .map(Written::Accepted),
            Self::Lease(request) => tables.lease(request, leases).map(Written::Leased),
            Self::Ack(held, attempt) => {
                let place = leases.check(held)?.place.clone();
                tables.remove_job_at(held.id, &place)?;
                let now_ms = attempt
                    .as_ref()
                    .map_or(held.due_ms, |a| a.at_ms + a.duration_ms);
                if tables.history {
                    // The job as leased carries its earlier attempts.
                    let mut job = (*held).clone();
                    if let Some(attempt) = attempt {
                        job.record(attempt.clone());
                    }
                    let delivered = Some((&job, TargetStatus::Delivered));
                    tables.release_event(place.event, now_ms, delivered)?;
                } else {
                    // Without the log no outcome is written: no copy made.
                    tables.release_event(place.event, now_ms, None)?;
                }
                leases.release(held.id);
                Ok(Written::Done)
            }
            Self::Retry(held, attempt, due_ms) => {
                let current = tables.held_job(held, leases)?;
                let grow = !tables.full;
                let retried = current.clone().retried(attempt.clone(), *due_ms, grow);
                tables.replace_job(&current, &retried)?;
                leases.release(held.id);
                Ok(Written::Done)
            }
            Self::DeadLetter {
                held,
                attempt,
                reason,
                now_ms,
            } => {
                let current = tables.held_job(held, leases)?;
                tables.remove_job(&current)?;
                leases.release(held.id);
                let mut job = current;
                if let Some(attempt) = attempt {
                    job.record(attempt.clone());
                }
                job.leased = false;
                tables.record_outcome(&job, TargetStatus::Dead)?;
                tables.insert_dead(&DeadLetter {
                    job,
                    reason: reason.to_string(),
                    dead_at_ms: *now_ms,
                })?;
                Ok(Written::Done)
            }
        }
    }
}
