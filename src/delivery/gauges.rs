//! The queue's gauges (depth per priority, oldest waiting event, dead
//! letters per webhook, the event log's size) and the upstream groups' per-backend gauges,
//! refreshed every second by the scheduler.

use super::attempt::{now_ms, Deliverer};
use super::settings::Plan;
use crate::event::Priority;

pub async fn refresh(deliverer: &Deliverer, plan: &Plan) {
    let (store, metrics) = (&deliverer.store, &deliverer.metrics);
    if let Ok(depth) = store.queue_depth().await {
        for priority in Priority::ALL {
            metrics
                .queue_depth
                .with_label_values(&[priority.as_str()])
                .set(depth.of(priority) as i64);
        }
    }
    if let Ok(oldest) = store.oldest_pending_ms().await {
        let age = oldest.map_or(0.0, |at| now_ms().saturating_sub(at) as f64 / 1000.0);
        metrics.event_age_seconds.set(age);
    }
    if let Ok(counts) = store.dead_letter_counts().await {
        for webhook in &plan.settings.webhooks {
            let count = counts
                .iter()
                .find(|(w, _)| webhook == w)
                .map_or(0, |(_, c)| *c);
            metrics
                .dead_letters
                .with_label_values(&[webhook.as_str()])
                .set(count as i64);
        }
    }
    if let Ok(usage) = store.history_usage().await {
        metrics.store_history_events.set(usage.events as i64);
        metrics.store_history_bytes.set(usage.bytes as i64);
    }
    for group in plan.upstreams.all() {
        group.refresh_gauges();
    }
}
