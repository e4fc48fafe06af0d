//! One builder for the YAML every test file gives the sidecar (without
//! `listen`, which the sidecar support adds), and the Stripe webhook most
//! of them share.

use std::fmt::Display;
use std::time::Duration;

/// The Stripe webhook's signing secret in every test config.
pub const SECRET: &str = "whsec_test_secret_0123456789";

/// A config built from top-level lines, upstream groups, egress services and
/// webhooks, each section written once.
#[derive(Debug, Clone, Default)]
pub struct Yaml {
    top: Vec<String>,
    upstreams: Vec<String>,
    services: Vec<String>,
    webhooks: Vec<String>,
}

impl Yaml {
    pub fn new() -> Self {
        Self::default()
    }

    /// A top-level entry, e.g. `drain_delay: 0s` or `store: { kind: redis, ... }`;
    /// several lines are kept as they are.
    pub fn with(mut self, entry: impl Display) -> Self {
        self.top.push(entry.to_string());
        self
    }

    /// `upstreams.<name>: <spec>`, the spec in flow style.
    pub fn upstream(mut self, name: &str, spec: impl Display) -> Self {
        self.upstreams.push(format!("  {name}: {spec}"));
        self
    }

    /// `services.<name>` with its route and upstream, and `keys` (each a
    /// `key: value` line) below them.
    pub fn service(self, name: &str, route: &str, upstream: &str, keys: &[&str]) -> Self {
        self.service_to(name, route, &format!("upstream: {upstream}"), keys)
    }

    /// `services.<name>` on the upstream group `group`, with `keys`.
    pub fn group_service(self, name: &str, route: &str, group: &str, keys: &[&str]) -> Self {
        self.service_to(name, route, &format!("group: {group}"), keys)
    }

    /// `services.<name>` with its route, `destination` (an `upstream:` or
    /// `group:` line) and `keys`.
    fn service_to(mut self, name: &str, route: &str, destination: &str, keys: &[&str]) -> Self {
        let mut lines = vec![
            format!("  {name}:"),
            format!("    route: {route}"),
            format!("    {destination}"),
        ];
        lines.extend(keys.iter().map(|k| indented(k, 4)));
        self.services.push(lines.join("\n"));
        self
    }

    /// `webhooks.<name>` with `keys` (each a `key: value` line).
    pub fn webhook(mut self, name: &str, keys: &[&str]) -> Self {
        let mut lines = vec![format!("  {name}:")];
        lines.extend(keys.iter().map(|k| indented(k, 4)));
        self.webhooks.push(lines.join("\n"));
        self
    }

    /// The Stripe webhook on `/webhooks/stripe`, verified with `SECRET`,
    /// with `keys` more (its routes, delivery ...).
    pub fn stripe_webhook(self, keys: &[&str]) -> Self {
        let verify = format!("verify: {{ kind: stripe, secrets: [{SECRET}] }}");
        let mut all = vec!["path: /webhooks/stripe", verify.as_str()];
        all.extend_from_slice(keys);
        self.webhook("stripe", &all)
    }

    pub fn build(&self) -> String {
        let mut out = String::new();
        for line in &self.top {
            out.push_str(line.trim_end_matches('\n'));
            out.push('\n');
        }
        for (section, entries) in [
            ("upstreams", &self.upstreams),
            ("services", &self.services),
            ("webhooks", &self.webhooks),
        ] {
            if !entries.is_empty() {
                out.push_str(section);
                out.push_str(":\n");
                for entry in entries {
                    out.push_str(entry);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Each line of `text` indented by `by` spaces.
fn indented(text: &str, by: usize) -> String {
    text.lines()
        .map(|line| format!("{:by$}{line}", ""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `Stripe-Signature` value for `body`, signed now with `secret`.
pub fn stripe_signature_with(secret: &str, body: &[u8]) -> String {
    use wedsync_sidecar::webhooks::verify::Scheme;
    let now = wedsync_sidecar::time::unix_time().as_secs();
    wedsync_sidecar::webhooks::verify::stripe::Stripe {
        keys: vec![secret.as_bytes().to_vec()],
        tolerance: Duration::from_secs(300),
    }
    .sign(body, now)
    .headers[0]
        .1
        .clone()
}

#[test]
fn sections_are_written_once_with_their_entries() {
    let yaml = Yaml::new()
        .with("drain_delay: 0s")
        .upstream("notify", "{ backends: [127.0.0.1:9] }")
        .stripe_webhook(&["routes: [{ events: [\"*\"], targets: [notify] }]"])
        .build();
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(parsed["drain_delay"], "0s");
    assert_eq!(parsed["webhooks"]["stripe"]["path"], "/webhooks/stripe");
    assert_eq!(parsed["upstreams"]["notify"]["backends"][0], "127.0.0.1:9");
}
