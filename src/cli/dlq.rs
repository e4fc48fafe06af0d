//! `wedsync-sidecar dlq`: the dead-letter admin API from a shell. It reads
//! `listen.admin` and `admin.token` from the config, calls the running
//! sidecar, and prints a table (list) or JSON (show).

use super::admin_api::{call, counted, query, segment};
use super::CommandError;
use crate::config::Config;

/// A dlq subcommand, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqCommand {
    List {
        webhook: Option<String>,
        target: Option<String>,
        limit: Option<usize>,
        cursor: Option<String>,
        /// The admin API's JSON page (items and next cursor) instead of a table.
        json: bool,
    },
    Show {
        id: String,
    },
    Replay {
        id: String,
    },
    ReplayAll {
        webhook: Option<String>,
        target: Option<String>,
    },
    Purge {
        id: String,
    },
}

impl DlqCommand {
    fn request(&self) -> (&'static str, String) {
        let base = "/admin/dead-letters";
        match self {
            Self::List {
                webhook,
                target,
                limit,
                cursor,
                ..
            } => (
                "GET",
                format!(
                    "{base}{}",
                    query(&[
                        ("webhook", webhook.clone()),
                        ("target", target.clone()),
                        ("limit", limit.map(|l| l.to_string())),
                        ("cursor", cursor.clone()),
                    ])
                ),
            ),
            Self::Show { id } => ("GET", format!("{base}/{}", segment(id))),
            Self::Replay { id } => ("POST", format!("{base}/{}/replay", segment(id))),
            Self::ReplayAll { webhook, target } => (
                "POST",
                format!(
                    "{base}/replay{}",
                    query(&[("webhook", webhook.clone()), ("target", target.clone())])
                ),
            ),
            Self::Purge { id } => ("DELETE", format!("{base}/{}", segment(id))),
        }
    }
}

/// Runs the command against the sidecar `config` describes; returns what
/// to print.
pub async fn run(config: &Config, command: &DlqCommand) -> Result<String, CommandError> {
    let (method, path) = command.request();
    let body = call(config, method, &path).await?;
    Ok(match command {
        DlqCommand::List { json: true, .. } => {
            serde_json::to_string_pretty(&body).unwrap_or_default()
        }
        DlqCommand::List { .. } => table(&body),
        DlqCommand::Show { .. } => serde_json::to_string_pretty(&body).unwrap_or_default(),
        DlqCommand::Replay { id } => format!("replayed dead letter {id}"),
        DlqCommand::ReplayAll { .. } => format!(
            "replayed {}",
            counted(
                body["replayed"].as_u64().unwrap_or(0),
                "dead letter",
                "dead letters"
            )
        ),
        DlqCommand::Purge { id } => format!("deleted dead letter {id}"),
    })
}

/// The list as aligned columns, and how to get the next page.
fn table(page: &serde_json::Value) -> String {
    let columns = [
        "id",
        "dead_at",
        "webhook",
        "target",
        "event_id",
        "event_type",
        "reason",
        "attempts",
        "last_error",
    ];
    super::admin_api::table(page, &columns, "(no dead letters)", |next| {
        format!("more: dlq list --cursor {next}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_to_the_admin_api() {
        let list = DlqCommand::List {
            webhook: Some("stripe".into()),
            target: None,
            limit: Some(10),
            cursor: None,
            json: false,
        };
        assert_eq!(
            list.request(),
            ("GET", "/admin/dead-letters?webhook=stripe&limit=10".into())
        );
        let all = DlqCommand::ReplayAll {
            webhook: None,
            target: Some("notify service".into()),
        };
        assert_eq!(
            all.request(),
            (
                "POST",
                "/admin/dead-letters/replay?target=notify+service".into()
            )
        );
        assert_eq!(
            DlqCommand::Purge { id: "42".into() }.request(),
            ("DELETE", "/admin/dead-letters/42".into())
        );
    }

    #[test]
    fn a_page_prints_as_columns_with_the_next_cursor() {
        let page = serde_json::json!({
            "items": [{"id": "7", "dead_at": "2026-11-27T13:04:05.123Z", "webhook": "stripe",
                       "target": "notify", "event_id": "evt_1", "event_type": "charge.failed",
                       "reason": "rejected", "attempts": 1, "last_error": "HTTP 400"}],
            "next": "00000000001795784645123.00000000000000000007"
        });
        let printed = table(&page);
        let lines: Vec<&str> = printed.lines().collect();
        assert!(lines[0].starts_with("ID  DEAD_AT"), "{printed}");
        assert!(
            lines[1].contains("evt_1") && lines[1].ends_with("HTTP 400"),
            "{printed}"
        );
        assert!(
            lines[2].starts_with("more: dlq list --cursor 0000"),
            "{printed}"
        );
    }
}
