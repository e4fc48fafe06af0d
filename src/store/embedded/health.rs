//! Whether the embedded store's writer can commit: set by the writer when
//! a batch fails and cleared once a probe commits again; read by the
//! acceptor (which then accepts nothing) and by the store's health check.

use std::sync::Mutex;
use std::time::Instant;

/// Whether the writer can commit; shared with the store's health check.
#[derive(Default)]
pub struct WriterHealth {
    /// Since when and why commits fail; None while they work.
    failing: Mutex<Option<(Instant, String)>>,
}

impl WriterHealth {
    pub fn failure(&self) -> Option<(Instant, String)> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn fail(&self, reason: String) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let since = failing
            .as_ref()
            .map_or_else(Instant::now, |(since, _)| *since);
        *failing = Some((since, reason));
    }

    pub fn recover(&self) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
