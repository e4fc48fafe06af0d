//! What gap repair keeps in the store per webhook, and what a run reports.

/// Kept in the store (`Store::save_recover_state`), JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoverState {
    /// Unix seconds: every event the provider had listed as undelivered
    /// before this was looked at by a run that got through.
    pub checkpoint: Option<u64>,
    /// When the last run ended (Unix ms).
    pub last_run_ms: Option<u64>,
    /// `ok` or `failed`.
    pub outcome: Option<String>,
    /// Why the last run stopped.
    pub error: Option<String>,
    /// What the last run found.
    pub last: Option<RunReport>,
}

impl RecoverState {
    /// An unreadable state (a newer version's, or damaged) starts over
    /// from the lookback: nothing is lost, at worst fetched again.
    pub fn decode(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or_else(|error| {
            tracing::warn!(%error, "gap repair's state is unreadable; the next run looks back from lookback");
            Self::default()
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One run's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    /// Unix seconds the run listed from.
    pub since: u64,
    pub dry_run: bool,
    pub found: u64,
    pub accepted: u64,
    /// GitHub: events the provider was asked to deliver again (they are
    /// accepted, and counted, when they arrive).
    #[serde(default)]
    pub requested: u64,
    pub duplicate: u64,
    pub skipped: u64,
    /// The checkpoint after the run.
    pub checkpoint: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_a_damaged_one_starts_over() {
        let state = RecoverState {
            checkpoint: Some(1_700_000_000),
            last_run_ms: Some(1_700_000_000_123),
            outcome: Some("failed".into()),
            error: Some("the provider answered 429".into()),
            last: Some(RunReport {
                since: 1_699_999_000,
                found: 3,
                accepted: 2,
                skipped: 1,
                ..RunReport::default()
            }),
        };
        assert_eq!(RecoverState::decode(&state.encode()), state);
        assert_eq!(RecoverState::decode(b"{not json"), RecoverState::default());
    }
}
