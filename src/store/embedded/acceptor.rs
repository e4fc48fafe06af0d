//! The acceptor thread of a store with an event log: takes every accept
//! waiting at that moment, refuses what the space gate refuses, has the
//! engine append the rest to the log with one `fdatasync`
//! (`LocalStore::accept_into_log`), answers, and hands each new event to
//! the writer to apply to the tables. An acknowledgement waits for the log
//! alone, never for a redb commit; the writer is kept at most
//! [`MAX_UNAPPLIED`] events behind.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::oneshot;

use super::engine::{LocalStore, Logged, Ticket};
use super::health::WriterHealth;
use super::room;
use crate::store::records::{Acceptance, OwnedEvent};
use crate::store::space::SpaceGate;
use crate::store::StoreError;

/// The most accepts appended with one `fdatasync` (the writer's batch).
const MAX_BATCH: usize = 256;

/// An accept and who waits for its answer.
pub struct AcceptRequest {
    pub event: OwnedEvent,
    pub answer: oneshot::Sender<Result<Acceptance, StoreError>>,
}

/// Hands an event accepted into the log to the writer, to apply.
pub type Apply = Box<dyn Fn(OwnedEvent, Logged, Ticket) + Send>;

/// Events accepted into the log and not yet applied that make the
/// acceptor wait for the writer: what a burst may hold in memory beyond
/// the ingress's own bound, and how far reads of the log lag behind it.
pub const MAX_UNAPPLIED: usize = 8 * MAX_BATCH;

pub(super) struct Acceptor {
    pub store: Arc<LocalStore>,
    pub gate: Arc<SpaceGate>,
    pub health: Arc<WriterHealth>,
    pub apply: Apply,
}

impl Acceptor {
    pub fn run(&self, incoming: &mpsc::Receiver<AcceptRequest>) {
        while let Ok(first) = incoming.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match incoming.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.accept(batch);
        }
    }

    fn accept(&self, batch: Vec<AcceptRequest>) {
        let mut admitted = Vec::with_capacity(batch.len());
        for request in batch {
            match self.gate.admit(room::estimated_bytes(&request.event)) {
                Ok(()) => admitted.push(request),
                Err(_) => {
                    let _ = request.answer.send(Err(StoreError::Full));
                }
            }
        }
        if admitted.is_empty() {
            return;
        }
        // While the tables cannot commit, nothing is accepted: the log
        // would run ahead of a writer that may not come back soon.
        if let Some((_, reason)) = self.health.failure() {
            for request in admitted {
                let _ = request
                    .answer
                    .send(Err(StoreError::Unavailable(reason.clone())));
            }
            return;
        }
        while self.store.unapplied() >= MAX_UNAPPLIED {
            std::thread::sleep(Duration::from_millis(1));
        }
        let events: Vec<OwnedEvent> = admitted.iter().map(|r| r.event.clone()).collect();
        let answers = match self.store.accept_into_log(&events) {
            Some(Ok(answers)) => answers,
            Some(Err(error)) => {
                tracing::warn!(%error, accepts = events.len(), "the event log refused a batch of accepts; none was acknowledged");
                for request in admitted {
                    let _ = request.answer.send(Err(error.clone()));
                }
                return;
            }
            None => unreachable!("the acceptor runs only for a store with an event log"),
        };
        for (request, (acceptance, logged)) in admitted.into_iter().zip(answers) {
            if let Some((logged, ticket)) = logged {
                (self.apply)(request.event, logged, ticket);
            }
            let _ = request.answer.send(Ok(acceptance));
        }
    }
}
