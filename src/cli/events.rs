//! `wedsync-sidecar events`: the event log's admin API from a shell: list
//! (a table, or the API's JSON page), show one event (JSON), redeliver one
//! or every event a filter matches (`--dry-run` counts them first).

use super::admin_api::{call, counted, query, segment, table};
use super::CommandError;
use crate::config::Config;

/// The filters `list` and `redeliver` share, as the admin API names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub source: Option<String>,
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub target: Option<String>,
    /// `field=value` pairs of the event's context.
    pub context: Vec<(String, String)>,
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Filters {
    fn pairs(&self) -> Vec<(String, Option<String>)> {
        let mut pairs = vec![
            ("source".to_string(), self.source.clone()),
            ("type".to_string(), self.event_type.clone()),
            ("status".to_string(), self.status.clone()),
            ("target".to_string(), self.target.clone()),
        ];
        for (field, value) in &self.context {
            pairs.push((format!("context.{field}"), Some(value.clone())));
        }
        pairs.push(("since".to_string(), self.since.clone()));
        pairs.push(("until".to_string(), self.until.clone()));
        pairs
    }
}

/// An events subcommand, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsCommand {
    List {
        filters: Filters,
        limit: Option<usize>,
        cursor: Option<String>,
        /// The admin API's JSON page instead of a table.
        json: bool,
    },
    Show {
        source: String,
        id: String,
    },
    /// One event again, to `target` or all its targets.
    Redeliver {
        source: String,
        id: String,
        target: Option<String>,
    },
    /// Every event the filters match (`max` at most), or their count.
    RedeliverMatching {
        filters: Filters,
        max: Option<u64>,
        dry_run: bool,
    },
}

/// `field=value` as a context filter.
pub fn parse_context(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((field, value)) if !field.is_empty() => Ok((field.to_string(), value.to_string())),
        _ => Err(format!("expected FIELD=VALUE, not {text:?}")),
    }
}

impl EventsCommand {
    fn request(&self) -> (&'static str, String) {
        let base = "/admin/events";
        let with = |mut pairs: Vec<(String, Option<String>)>, more: &[(&str, Option<String>)]| {
            pairs.extend(more.iter().map(|(k, v)| (k.to_string(), v.clone())));
            let borrowed: Vec<(&str, Option<String>)> =
                pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            query(&borrowed)
        };
        match self {
            Self::List {
                filters,
                limit,
                cursor,
                ..
            } => (
                "GET",
                format!(
                    "{base}{}",
                    with(
                        filters.pairs(),
                        &[
                            ("limit", limit.map(|l| l.to_string())),
                            ("cursor", cursor.clone()),
                        ]
                    )
                ),
            ),
            Self::Show { source, id } => {
                ("GET", format!("{base}/{}/{}", segment(source), segment(id)))
            }
            Self::Redeliver { source, id, target } => (
                "POST",
                format!(
                    "{base}/{}/{}/redeliver{}",
                    segment(source),
                    segment(id),
                    query(&[("target", target.clone())])
                ),
            ),
            Self::RedeliverMatching {
                filters,
                max,
                dry_run,
            } => (
                "POST",
                format!(
                    "{base}/redeliver{}",
                    with(
                        filters.pairs(),
                        &[
                            ("max", max.map(|m| m.to_string())),
                            ("dry_run", dry_run.then(|| "true".to_string())),
                        ]
                    )
                ),
            ),
        }
    }
}

/// Runs the command against the sidecar `config` describes; returns what
/// to print.
pub async fn run(config: &Config, command: &EventsCommand) -> Result<String, CommandError> {
    let (method, path) = command.request();
    let body = call(config, method, &path).await?;
    Ok(match command {
        EventsCommand::List { json: true, .. } | EventsCommand::Show { .. } => {
            serde_json::to_string_pretty(&body).unwrap_or_default()
        }
        EventsCommand::List { .. } => list_table(&body),
        EventsCommand::Redeliver { source, id, .. } => {
            let queued = body["queued"].as_u64().unwrap_or(0);
            format!(
                "queued event {id} from {source} again ({})",
                counted(queued, "delivery", "deliveries")
            )
        }
        EventsCommand::RedeliverMatching { dry_run: true, .. } => {
            let matched = body["matched"].as_u64().unwrap_or(0);
            let verb = if matched == 1 { "matches" } else { "match" };
            format!(
                "{} {verb} (nothing queued: a dry run)",
                counted(matched, "event", "events")
            )
        }
        EventsCommand::RedeliverMatching { .. } => {
            let queued = body["queued"].as_u64().unwrap_or(0);
            format!("queued {} again", counted(queued, "event", "events"))
        }
    })
}

/// The list as aligned columns, the estimate of the total, and how to get
/// the next page.
fn list_table(page: &serde_json::Value) -> String {
    let columns = ["received_at", "source", "id", "type", "status"];
    let mut rows = page.clone();
    // Targets as `name:status` pairs, one column.
    for item in rows["items"].as_array_mut().into_iter().flatten() {
        let targets: Vec<String> = item["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                format!(
                    "{}:{}",
                    t["target"].as_str().unwrap_or("?"),
                    t["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        item["targets_text"] = serde_json::json!(targets.join(","));
    }
    let mut all = columns.to_vec();
    all.push("targets_text");
    let text = table(&rows, &all, "(no events)", |next| {
        format!("more: events list --cursor {next} (with the same filters)")
    })
    .replacen("TARGETS_TEXT", "TARGETS", 1);
    format!("{text}\nabout {} events match", page["total_estimate"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_to_the_admin_api() {
        let filters = Filters {
            source: Some("stripe".into()),
            event_type: Some("payment_intent.*".into()),
            status: Some("dead".into()),
            context: vec![("wedding_id".into(), "w 42".into())],
            since: Some("2h".into()),
            ..Filters::default()
        };
        let list = EventsCommand::List {
            filters: filters.clone(),
            limit: Some(10),
            cursor: None,
            json: false,
        };
        assert_eq!(
            list.request(),
            (
                "GET",
                "/admin/events?source=stripe&type=payment_intent.*&status=dead&context.wedding_id=w+42&since=2h&limit=10".into()
            )
        );
        let show = EventsCommand::Show {
            source: "stripe".into(),
            id: "evt/1".into(),
        };
        assert_eq!(
            show.request(),
            ("GET", "/admin/events/stripe/evt%2F1".into())
        );
        let one = EventsCommand::Redeliver {
            source: "stripe".into(),
            id: "evt_1".into(),
            target: Some("ledger".into()),
        };
        assert_eq!(
            one.request(),
            (
                "POST",
                "/admin/events/stripe/evt_1/redeliver?target=ledger".into()
            )
        );
        let all = EventsCommand::RedeliverMatching {
            filters: Filters {
                status: Some("dead".into()),
                ..Filters::default()
            },
            max: Some(500),
            dry_run: true,
        };
        assert_eq!(
            all.request(),
            (
                "POST",
                "/admin/events/redeliver?status=dead&max=500&dry_run=true".into()
            )
        );
    }

    #[test]
    fn context_filters_read_field_equals_value() {
        assert_eq!(
            parse_context("wedding_id=w-42").unwrap(),
            ("wedding_id".into(), "w-42".into())
        );
        assert!(parse_context("=w").is_err());
        assert!(parse_context("wedding_id").is_err());
    }

    #[test]
    fn a_page_prints_as_columns_with_targets_and_the_estimate() {
        let page = serde_json::json!({
            "items": [{"received_at": "2026-12-05T10:00:00.000Z", "source": "stripe",
                       "id": "evt_1", "type": "charge.failed", "status": "partial",
                       "targets": [{"target": "notify", "status": "delivered"},
                                   {"target": "ledger", "status": "dead"}]}],
            "next": "17",
            "total_estimate": 120
        });
        let printed = list_table(&page);
        let lines: Vec<&str> = printed.lines().collect();
        assert!(
            lines[0].starts_with("RECEIVED_AT") && lines[0].ends_with("TARGETS"),
            "{printed}"
        );
        assert!(
            lines[1].ends_with("notify:delivered,ledger:dead"),
            "{printed}"
        );
        assert!(
            lines[2].starts_with("more: events list --cursor 17"),
            "{printed}"
        );
        assert_eq!(lines[3], "about 120 events match");
    }
}
