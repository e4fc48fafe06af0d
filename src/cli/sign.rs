//! `wedsync-sidecar sign --webhook NAME < body`: the headers (and for
//! Twilio the URL) that make `body` a valid request for that webhook,
//! signed now with its first secret, as a provider would send it.

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("no webhook named {name} (configured: {known})")]
    NoWebhook { name: String, known: String },
    #[error("webhooks.{name}: {reason}")]
    Verifier { name: String, reason: String },
}

/// The lines to print: `URL: ...` (Twilio) then one `Header: value` each.
pub fn sign(config: &Config, name: &str, body: &[u8], now: u64) -> Result<String, SignError> {
    let Some(webhook) = config.webhooks.iter().find(|w| w.name == name) else {
        let known: Vec<&str> = config.webhooks.iter().map(|w| w.name.as_str()).collect();
        return Err(SignError::NoWebhook {
            name: name.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    };
    let scheme =
        crate::webhooks::verify::build(&webhook.verify).map_err(|reason| SignError::Verifier {
            name: name.to_string(),
            reason: reason.to_string(),
        })?;
    let signed = scheme.sign(body, now);
    let mut lines: Vec<String> = signed.url.iter().map(|url| format!("URL: {url}")).collect();
    lines.extend(signed.headers.iter().map(|(h, v)| format!("{h}: {v}")));
    Ok(lines.join("\n"))
}
