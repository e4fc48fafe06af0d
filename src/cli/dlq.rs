//! `wedsync-sidecar dlq`: the dead-letter admin API from a shell. It reads
//! `listen.admin` and `admin.token` from the config, calls the running
//! sidecar, and prints a table (list) or JSON (show).

use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::{reachable, CommandError};
use crate::config::Config;
use crate::net::client::SmallClient;

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

const TIMEOUT: Duration = Duration::from_secs(10);

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut encoder = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if let Some(value) = value {
            encoder.append_pair(name, value);
        }
    }
    let encoded = encoder.finish();
    if encoded.is_empty() {
        encoded
    } else {
        format!("?{encoded}")
    }
}

fn segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
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
    let admin = reachable(config.listen.admin);
    let (method, path) = command.request();
    let invalid = |error: pingora::BError| {
        CommandError::refused(format!("cannot make the request {method} {path}: {error}"))
    };
    let mut request = RequestHeader::build(method, path.as_bytes(), None).map_err(invalid)?;
    request
        .insert_header("host", admin.to_string())
        .map_err(invalid)?;
    if let Some(token) = &config.admin.token {
        request
            .insert_header("authorization", format!("Bearer {}", token.expose()))
            .map_err(invalid)?;
    }
    // Both: with a token the admin API needs it; without one, a POST must
    // say it sends JSON (which keeps browsers from sending it cross-site).
    let body = if method == "POST" {
        request
            .insert_header("content-type", "application/json")
            .map_err(invalid)?;
        Bytes::from_static(b"{}")
    } else {
        Bytes::new()
    };
    let peer = HttpPeer::new(admin, false, String::new());
    let response = SmallClient::default()
        .exchange(&peer, request, body, TIMEOUT)
        .await
        .map_err(|error| CommandError {
            exit_code: 2,
            message: format!("cannot reach the sidecar's admin listener at {admin}: {error}"),
        })?;
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
    if response.status >= 400 {
        let detail = body["detail"].as_str().unwrap_or("no detail").to_string();
        return Err(CommandError {
            exit_code: if response.status >= 500 { 2 } else { 1 },
            message: format!("the sidecar answered {}: {detail}", response.status),
        });
    }
    Ok(match command {
        DlqCommand::List { json: true, .. } => {
            serde_json::to_string_pretty(&body).unwrap_or_default()
        }
        DlqCommand::List { .. } => table(&body),
        DlqCommand::Show { .. } => serde_json::to_string_pretty(&body).unwrap_or_default(),
        DlqCommand::Replay { id } => format!("replayed dead letter {id}"),
        DlqCommand::ReplayAll { .. } => format!("replayed {} dead letters", body["replayed"]),
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
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut rows: Vec<Vec<String>> = vec![columns.iter().map(|c| c.to_uppercase()).collect()];
    for item in page["items"].as_array().into_iter().flatten() {
        rows.push(columns.iter().map(|c| text(&item[*c])).collect());
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out: Vec<String> = rows
        .iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect();
    if rows.len() == 1 {
        out.push("(no dead letters)".into());
    }
    if let Some(next) = page["next"].as_str() {
        out.push(format!("more: dlq list --cursor {next}"));
    }
    out.join("\n")
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
