//! An event's own types, which the webhook ingress makes, the store keeps
//! and delivery reads: its priority lane and what was extracted from it.
//! Nothing here knows where an event came from or where it goes.

use crate::names::{EventId, UpstreamName};
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    /// Every priority, in the order workers prefer them.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

/// The context key that marks a wedding-day event: delivered as the
/// `x-wedding-day: true` header.
pub const WEDDING_DAY_CONTEXT: &str = "wedding_day";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// The provider's id: the answer's `id` and the deliveries' `x-event-id`.
    pub id: EventId,
    /// What deduplicates the event: the id when signed bytes carry it,
    /// otherwise a digest of what the signature covers (`sha256:<hex>`),
    /// so an unsigned id header never makes a replay a new event.
    pub dedup: String,
    /// Empty when the provider says nothing of it.
    pub event_type: String,
    /// (key, value) per configured context field found in the request.
    pub context: Vec<(String, String)>,
    pub priority: Priority,
    /// Upstream groups, in route order, each once; empty: unrouted.
    pub targets: Vec<UpstreamName>,
    /// The `traceparent` of the span that accepted the event: every
    /// delivery attempt is a child of it.
    pub trace: Option<String>,
    /// Fetched back from the provider's API by gap repair (`recover`),
    /// not received: delivered with `x-webhook-recovered: true`.
    pub recovered: bool,
}
