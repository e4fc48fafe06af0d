//! Calls to the running sidecar's admin API from a shell, for `dlq` and
//! `events`: the admin listener and token come from the config; an answer
//! of 400 or more is an error with the API's detail.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::{reachable, CommandError};
use crate::config::Config;
use crate::net::client::SmallClient;

const TIMEOUT: Duration = Duration::from_secs(30);

/// `?name=value&...` of the pairs given a value (empty when none is).
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
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

/// A path segment, percent-encoded.
pub fn segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// `method path` against the sidecar `config` describes; its JSON answer.
pub async fn call(
    config: &Config,
    method: &str,
    path: &str,
) -> Result<serde_json::Value, CommandError> {
    let admin = reachable(config.listen.admin);
    let invalid = |error: pingora::BError| {
        CommandError::refused(format!("cannot make the request {method} {path}: {error}"))
    };
    let mut request = RequestHeader::build(method, path.as_bytes(), None).map_err(invalid)?;
    // The listener serves loopback names whatever address it is bound to
    // (a pod IP included); `localhost` is one.
    request
        .insert_header("host", format!("localhost:{}", admin.port()))
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
    Ok(body)
}

/// A page's `items` as aligned columns (a field that is an object or a
/// list by its JSON text), `empty` when there are none, and `more` with
/// the next cursor when there is one.
pub fn table(
    page: &serde_json::Value,
    columns: &[&str],
    empty: &str,
    more: impl Fn(&str) -> String,
) -> String {
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
        out.push(empty.into());
    }
    if let Some(next) = page["next"].as_str() {
        out.push(more(next));
    }
    out.join("\n")
}
/// `1 dead letter`, `3 dead letters`: what a command prints counts
/// things in the right number.
pub fn counted(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_printed_in_the_right_number() {
        assert_eq!(counted(1, "dead letter", "dead letters"), "1 dead letter");
        assert_eq!(counted(0, "dead letter", "dead letters"), "0 dead letters");
        assert_eq!(counted(3, "delivery", "deliveries"), "3 deliveries");
    }
}
