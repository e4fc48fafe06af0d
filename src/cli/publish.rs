//! `wedsync-sidecar publish <name>`: posts the JSON body on stdin to the
//! running sidecar's `events.<name>` path on its egress listener, as the
//! app would, and prints the answer (`{"status":"accepted","id":...}`).

use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::{reachable, CommandError};
use crate::config::Config;
use crate::net::client::SmallClient;

const TIMEOUT: Duration = Duration::from_secs(35);

/// Publishes `body` to `events.<name>`; `idempotency_key` becomes the
/// event's id when the body does not carry one. Returns the answer's body.
pub async fn publish(
    config: &Config,
    name: &str,
    body: Vec<u8>,
    idempotency_key: Option<&str>,
) -> Result<String, CommandError> {
    let Some(event) = config.events.iter().find(|e| e.name == name) else {
        let known: Vec<&str> = config.events.iter().map(|e| e.name.as_str()).collect();
        return Err(CommandError::refused(format!(
            "no events.{name} in the config (defined: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return Err(CommandError::refused(
            "the body on stdin is not a JSON document".into(),
        ));
    }
    let egress = reachable(config.listen.egress);
    let invalid =
        |error: pingora::BError| CommandError::refused(format!("cannot make the request: {error}"));
    let mut request = RequestHeader::build("POST", event.path.as_bytes(), None).map_err(invalid)?;
    request
        .insert_header("host", egress.to_string())
        .map_err(invalid)?;
    request
        .insert_header("content-type", "application/json")
        .map_err(invalid)?;
    if let Some(key) = idempotency_key {
        request
            .insert_header("idempotency-key", key)
            .map_err(invalid)?;
    }
    let peer = HttpPeer::new(egress, false, String::new());
    let response = SmallClient::default()
        .exchange(&peer, request, Bytes::from(body), TIMEOUT)
        .await
        .map_err(|error| CommandError {
            exit_code: 2,
            message: format!("cannot reach the sidecar's egress listener at {egress}: {error}"),
        })?;
    let text = String::from_utf8_lossy(&response.body).into_owned();
    match response.status {
        200..=299 => Ok(text),
        status => Err(CommandError {
            exit_code: if status >= 500 { 2 } else { 1 },
            message: format!("the sidecar answered {status}: {text}"),
        }),
    }
}
