//! The backends one egress request on an upstream group goes to: one
//! chosen per attempt by the group's balancer, a retry avoiding those
//! already tried, each attempt's outcome told to that backend's passive
//! breaker, latency estimate and call counter.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;

use crate::resilience::breaker::Outcome;
use crate::upstreams::{Chosen, Group};

#[derive(Default)]
pub struct GroupAttempts {
    /// The backend of the attempt under way.
    current: Option<(Arc<Group>, Chosen)>,
    /// Backends this request has gone to, in order.
    tried: Vec<String>,
    /// The Host of the attempt under way.
    host: Option<HeaderValue>,
}

impl GroupAttempts {
    /// A backend of `group` for the next attempt, and the peer to reach it;
    /// None when no backend is healthy with its breaker closed.
    pub fn next_peer(
        &mut self,
        group: &Arc<Group>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Option<HttpPeer> {
        // An attempt whose end no callback reported says nothing.
        self.finish(Outcome::Unknown, None);
        let chosen = group.choose_excluding(&self.tried)?;
        let peer = group.peer(&chosen, connect_timeout, timeout);
        self.host = HeaderValue::try_from(group.host_for(&chosen)).ok();
        self.tried.push(chosen.addr.clone());
        self.current = Some((Arc::clone(group), chosen));
        Some(peer)
    }

    /// The Host of the attempt under way (None when it is not on a group).
    pub fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// The backend that served the latest attempt, for the access log.
    pub fn last(&self) -> Option<&str> {
        self.tried.last().map(String::as_str)
    }

    /// The backend answered `status`: 5xx counts against it, 408 and 429
    /// say nothing of its health, the rest for it.
    pub fn answered(&mut self, status: u16) {
        let outcome = match status {
            500..=599 => Outcome::Failure,
            408 | 429 => Outcome::Unknown,
            _ => Outcome::Success,
        };
        self.finish(outcome, Some(&status.to_string()));
    }

    /// The attempt failed without an answer (connect error, reset, timeout).
    pub fn failed(&mut self) {
        self.finish(Outcome::Failure, Some("error"));
    }

    /// The request ended: an attempt still open (the app went away) says
    /// nothing of the backend.
    pub fn end(&mut self) {
        self.finish(Outcome::Unknown, None);
    }

    fn finish(&mut self, outcome: Outcome, code: Option<&str>) {
        if let Some((group, chosen)) = self.current.take() {
            if let Some(code) = code {
                group.count_call(&chosen.addr, code);
            }
            chosen.finish(outcome);
        }
    }
}
