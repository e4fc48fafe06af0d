//! Wires the egress's `events.<name>` paths to the webhook side's ack path:
//! the egress recognises the path, the snapshot's published sources store
//! the event. A reload that dropped the source between the two answers 404.

use async_trait::async_trait;
use pingora::proxy::Session;

use super::snapshot::SnapshotHandle;
use crate::egress::publish::EventSink;
use crate::names::WebhookName;
use crate::problem::{ErrorCode, Problem};
use crate::webhooks::publish::Publisher;

pub struct PublishedEvents {
    pub snapshot: SnapshotHandle,
    pub publisher: Publisher,
}

#[async_trait]
impl EventSink for PublishedEvents {
    async fn serve(&self, session: &mut Session, source: &WebhookName) -> u16 {
        let event = self.snapshot.load().published.named(source).cloned();
        match event {
            Some(event) => self.publisher.serve(session, &event).await,
            None => {
                let problem = Problem::new(
                    ErrorCode::NotFound,
                    format!("events.{source} is no longer configured"),
                );
                let _ = problem.write_to(session).await;
                problem.status()
            }
        }
    }
}
