//! `wedsync-sidecar recover WEBHOOK [--since 6h] [--dry-run]`: one gap
//! repair run now, through the running sidecar's admin API, and what it
//! found.

use super::admin_api::{call, query, segment};
use super::CommandError;
use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverCommand {
    pub webhook: String,
    /// Look this far back instead of from the checkpoint (`6h`).
    pub since: Option<String>,
    pub dry_run: bool,
}

impl RecoverCommand {
    pub fn path(&self) -> String {
        let pairs = [
            ("since", self.since.clone()),
            ("dry_run", self.dry_run.then(|| "true".to_string())),
        ];
        format!(
            "/admin/webhooks/{}/recover{}",
            segment(&self.webhook),
            query(&pairs)
        )
    }
}

pub async fn run(config: &Config, command: &RecoverCommand) -> Result<String, CommandError> {
    let body = call(config, "POST", &command.path()).await?;
    Ok(summary(&command.webhook, &body["report"]))
}

/// `stripe: 12 undelivered events listed since 2026-12-06T08:00:00Z: 9
/// accepted, 2 already stored, 1 skipped; checkpoint 2026-12-06T14:00:00Z`.
pub fn summary(webhook: &str, report: &serde_json::Value) -> String {
    let time = |secs: &serde_json::Value| {
        secs.as_u64()
            .and_then(|s| jiff::Timestamp::from_second(s as i64).ok())
            .map_or_else(|| "-".to_string(), |t| t.to_string())
    };
    let dry_run = report["dry_run"].as_bool().unwrap_or(false);
    let count = |key: &str| report[key].as_u64().unwrap_or(0);
    // GitHub's are asked for again (and accepted as they arrive); Stripe's
    // are accepted by the run itself.
    let mut taken = Vec::new();
    if count("accepted") > 0 || count("requested") == 0 {
        let verb = if dry_run { "to accept" } else { "accepted" };
        taken.push(format!("{} {verb}", count("accepted")));
    }
    if count("requested") > 0 {
        let verb = if dry_run {
            "to ask the provider for again"
        } else {
            "asked of the provider again"
        };
        taken.push(format!("{} {verb}", count("requested")));
    }
    let mut text = format!(
        "{webhook}: {} listed since {}: {}, {} already stored, {} skipped",
        super::admin_api::counted(count("found"), "undelivered event", "undelivered events"),
        time(&report["since"]),
        taken.join(", "),
        count("duplicate"),
        count("skipped"),
    );
    if dry_run {
        text.push_str(" (a dry run: nothing stored, the checkpoint unchanged)");
    } else {
        text.push_str(&format!("; checkpoint {}", time(&report["checkpoint"])));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_and_the_summary() {
        let command = RecoverCommand {
            webhook: "stripe".into(),
            since: Some("6h".into()),
            dry_run: true,
        };
        assert_eq!(
            command.path(),
            "/admin/webhooks/stripe/recover?since=6h&dry_run=true"
        );
        let plain = RecoverCommand {
            webhook: "stripe".into(),
            since: None,
            dry_run: false,
        };
        assert_eq!(plain.path(), "/admin/webhooks/stripe/recover");
        let report = serde_json::json!({
            "since": 1_796_400_000u64, "dry_run": false, "found": 12, "accepted": 9,
            "duplicate": 2, "skipped": 1, "checkpoint": 1_796_421_600u64
        });
        assert_eq!(
            summary("stripe", &report),
            "stripe: 12 undelivered events listed since 2026-12-04T16:00:00Z: 9 accepted, 2 already stored, 1 skipped; checkpoint 2026-12-04T22:00:00Z"
        );
        let github = serde_json::json!({
            "since": 1_796_400_000u64, "dry_run": true, "found": 4, "accepted": 0,
            "requested": 3, "duplicate": 1, "skipped": 0, "checkpoint": null
        });
        assert_eq!(
            summary("github", &github),
            "github: 4 undelivered events listed since 2026-12-04T16:00:00Z: 3 to ask the provider for again, 1 already stored, 0 skipped (a dry run: nothing stored, the checkpoint unchanged)"
        );
    }
}
