//! The README (and `k8s/README.md`) held to the binary: every YAML block
//! passes `check` (a fragment wrapped into a minimal config), the
//! walk-through's shell lines run offline against a real sidecar on the
//! demo config and print what their comments say, and the tables of
//! metrics, error codes and dead-letter reasons list exactly what the
//! binary can emit: nothing undocumented, nothing documented that is gone.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;
use wedsync_sidecar::metrics::DeadLetterReason;
use wedsync_sidecar::problem::ErrorCode;

const README: &str = include_str!("../README.md");
const K8S_README: &str = include_str!("../k8s/README.md");
const BIN: &str = env!("CARGO_BIN_EXE_wedsync-sidecar");

/// The fenced blocks of `text` tagged `lang`, each with its first line.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<(usize, &'a str)> {
    let fence = format!("```{lang}\n");
    let mut found = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find(&fence) {
        let body_start = start + fence.len();
        let Some(len) = rest[body_start..].find("```") else {
            break;
        };
        let line = text[..offset + start].lines().count() + 2;
        found.push((line, &rest[body_start..body_start + len]));
        offset += body_start + len + 3;
        rest = &rest[body_start + len + 3..];
    }
    found
}

/// The rows of the Markdown table that follows `heading_line` (a line of
/// the text that starts it, e.g. `| metric | labels |`): first cells.
fn first_cells(text: &str, header: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(header));
    lines
        .next()
        .unwrap_or_else(|| panic!("no table {header:?}"));
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap_or_default().trim().to_string())
        .collect()
}

/// Every `name` in backticks in `cell`.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// `check` on `yaml` as an operator would run it: the `${env:...}` it
/// references set, the `${file:...}` it reads and the key files it
/// names present (under `dir`).
fn check_config(yaml: &str, dir: &Path) -> (bool, String) {
    let mut yaml = yaml.to_string();
    let mut env = Vec::new();
    for reference in yaml.clone().split("${").skip(1) {
        let Some(end) = reference.find('}') else {
            continue;
        };
        let reference = &reference[..end];
        if let Some(name) = reference.strip_prefix("env:") {
            let name = name.split(":-").next().unwrap().to_string();
            // Good for every kind of secret, Standard Webhooks' too.
            env.push((
                name,
                "whsec_cmVhZG1lLWV4YW1wbGUtc2VjcmV0LTAxMjM0NTY3".to_string(),
            ));
        } else if let Some(file) = reference.strip_prefix("file:") {
            let local = dir.join(file.trim_start_matches('/'));
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            std::fs::write(&local, "readme-example-secret-0123456789\n").unwrap();
            yaml = yaml.replace(
                &format!("${{file:{file}}}"),
                &format!("${{file:{}}}", local.display()),
            );
        }
    }
    // A GitHub App's key file, as a Secret mount would hold it.
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/github_app_test_key.pem"
    );
    yaml = yaml.replace("/var/run/secrets/github/app.pem", key);
    let path = dir.join("sidecar.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .envs(env)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A minimal config around a fragment: what its first key needs.
const BASE: &str = "upstreams:\n  notify: { backends: [\"127.0.0.1:9\"] }\n";

fn wrapped(fragment: &str) -> Vec<String> {
    let first = fragment
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap_or_default();
    let key = first.split(':').next().unwrap_or_default().trim();
    let indent = |text: &str, by: usize| -> String {
        text.lines().map(|l| format!("{:by$}{l}\n", "")).collect()
    };
    let service = |keys: &str| {
        format!(
            "{BASE}services:\n  demo:\n    route: /demo\n    upstream: https://api.example.com\n{}",
            indent(keys, 4)
        )
    };
    match key {
        // One alternative a line (or a mapping over several).
        "auth" => split_alternatives(fragment, "auth:")
            .into_iter()
            .map(|alternative| service(&alternative))
            .collect(),
        "rate_limit" | "circuit_breaker" | "retry" | "idempotency_key" => vec![service(fragment)],
        // One provider a line (or a mapping over several), in a webhook.
        "verify" => split_alternatives(fragment, "verify:")
            .into_iter()
            .map(|alternative| {
                format!(
                    "{BASE}webhooks:\n  demo:\n    path: /webhooks/demo\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n{}",
                    indent(&alternative, 4)
                )
            })
            .collect(),
        "services" | "upstreams" | "webhooks" | "events" | "listen" | "store" | "delivery"
        | "admin" | "ingress" | "tracing" | "limits" => {
            if fragment.contains("upstreams:") {
                vec![fragment.to_string()]
            } else {
                vec![format!("{BASE}{fragment}")]
            }
        }
        other => panic!("a YAML block starting with {other:?}: say how to wrap it"),
    }
}

/// `auth: {...}` lines and `auth:` mappings, each its own fragment.
fn split_alternatives(fragment: &str, key: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for line in fragment.lines() {
        if line.starts_with(key) {
            parts.push(String::new());
        }
        if let Some(part) = parts.last_mut() {
            part.push_str(line);
            part.push('\n');
        }
    }
    parts
}

#[test]
fn every_yaml_block_of_the_readmes_passes_check() {
    let dir = unique_dir("readme-yaml");
    let mut checked = 0;
    for (name, text) in [("README.md", README), ("k8s/README.md", K8S_README)] {
        for (line, block) in blocks(text, "yaml") {
            for config in wrapped(block) {
                let (ok, printed) = check_config(&config, &dir);
                assert!(
                    ok,
                    "{name} line {line}: the block fails check:\n{printed}\n--- as checked:\n{config}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} configs found");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Both ways: nothing the binary emits is undocumented, nothing
/// documented is gone.
fn assert_documented_exactly(emitted: &BTreeSet<String>, documented: &BTreeSet<String>) {
    let undocumented: Vec<_> = emitted.difference(documented).collect();
    let gone: Vec<_> = documented.difference(emitted).collect();
    assert!(
        undocumented.is_empty() && gone.is_empty(),
        "undocumented: {undocumented:?}; documented but gone: {gone:?}"
    );
}

#[test]
fn the_metrics_table_lists_exactly_the_metrics_the_binary_registers() {
    let source = include_str!("../src/metrics.rs");
    let registered: BTreeSet<String> = source
        .split('"')
        .filter(|s| {
            s.starts_with("sidecar_")
                && s.len() > 8
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        })
        .map(str::to_string)
        .collect();
    let documented: BTreeSet<String> = first_cells(README, "| metric | labels |")
        .iter()
        .flat_map(|cell| ticked(cell))
        .filter(|name| name.starts_with("sidecar_"))
        .collect();
    assert_documented_exactly(&registered, &documented);
}

#[test]
fn the_error_table_lists_exactly_the_codes_the_binary_answers() {
    let emitted: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    let documented: BTreeSet<String> = first_cells(README, "| code | status | when |")
        .iter()
        .flat_map(|cell| ticked(cell))
        .collect();
    assert_documented_exactly(&emitted, &documented);
}

#[test]
fn the_dead_letter_reasons_are_exactly_the_binarys() {
    let emitted: BTreeSet<String> = DeadLetterReason::ALL
        .iter()
        .map(|r| r.as_str().to_string())
        .collect();
    let row = README
        .lines()
        .find(|l| l.starts_with("| `sidecar_dead_lettered_total`"))
        .expect("the dead-letter metric's row");
    let documented: BTreeSet<String> = ticked(row.split("`reason`").nth(1).unwrap())
        .into_iter()
        .collect();
    assert_documented_exactly(&emitted, &documented);
}

/// The demo config on ports the kernel picks, with its store in `dir`.
fn demo_sidecar() -> Sidecar {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sidecar.yaml")).unwrap();
    // Sidecar::start adds its own `listen` and `store`.
    let mut body = String::new();
    let mut skipping = false;
    for line in demo.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
            skipping = line.starts_with("listen:") || line.starts_with("store:");
        }
        if !skipping {
            body.push_str(line);
            body.push('\n');
        }
    }
    Sidecar::start(&body)
}

/// The walk-through's shell blocks, as one script each; `# {json}`
/// comments (at the end of a line, or on the next) are what the command
/// prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_through_runs_offline_and_prints_what_it_says() {
    let sidecar = demo_sidecar();
    let walk = README
        .split("## A walk-through")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let dir = unique_dir("readme-walk");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for (line, block) in blocks(walk, "sh") {
        // Joined continuation lines; `scripts/run` is the sidecar above.
        let mut commands: Vec<(String, Option<String>)> = Vec::new();
        let mut pending = String::new();
        for text in block.lines() {
            if let Some(expected) = text.trim_start().strip_prefix("# ") {
                if let Some(last) = commands.last_mut() {
                    last.1.get_or_insert_with(|| expected.to_string());
                }
                continue;
            }
            pending.push_str(text.trim_end_matches('\\'));
            if text.ends_with('\\') {
                continue;
            }
            let (command, comment) = match pending.split_once("  # ") {
                Some((c, e)) => (c.trim().to_string(), Some(e.trim().to_string())),
                None => (pending.trim().to_string(), None),
            };
            pending.clear();
            if command.contains("scripts/run") {
                continue;
            }
            let command = command
                .replace("./target/release/wedsync-sidecar", BIN)
                .replace("wedsync-sidecar check", &format!("{BIN} check"))
                .replace("127.0.0.1:9901", &sidecar.admin.to_string())
                .replace("127.0.0.1:15001", &sidecar.egress.to_string())
                .replace("127.0.0.1:8080", &sidecar.ingress.to_string())
                .replace(
                    "-c conf/sidecar.yaml",
                    &format!("-c {}", sidecar.config_with_bound_ports().display()),
                );
            commands.push((command, comment));
        }
        // One shell per block (a variable set on one line is read on the
        // next), each command's output between markers.
        let mut script = String::from("set -eo pipefail\n");
        for (n, (command, _)) in commands.iter().enumerate() {
            script.push_str(&format!("echo '@@{n}@@'\n{command}\necho\n"));
        }
        script.push_str("echo '@@end@@'\n");
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    root.join("target/debug").display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .env("SIDECAR_CONFIG", sidecar.config_with_bound_ports())
            .current_dir(&dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            stdout.contains("@@end@@"),
            "README walk-through (block at line {line}) stopped: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (n, (command, expected)) in commands.iter().enumerate() {
            let printed = stdout
                .split(&format!("@@{n}@@\n"))
                .nth(1)
                .and_then(|rest| rest.split("\n@@").next())
                .unwrap_or_default()
                .to_string();
            if let Some(json) = expected.as_deref().and_then(|e| {
                let end = e.find('}')?;
                serde_json::from_str::<serde_json::Value>(&e[..=end]).ok()
            }) {
                let got: serde_json::Value = serde_json::from_str(printed.trim())
                    .unwrap_or_else(|_| panic!("`{command}` printed {printed:?}, not JSON"));
                for (key, value) in json.as_object().unwrap() {
                    assert_eq!(&got[key], value, "`{command}` printed {printed}");
                }
            } else if let Some(expected) = expected.as_deref().filter(|e| e.starts_with("404")) {
                for word in expected.split(", ").filter(|w| !w.contains(' ')) {
                    let word = word.split(": ").last().unwrap();
                    assert!(
                        printed.contains(word),
                        "`{command}`: {word} not in {printed}"
                    );
                }
            }
            ran += 1;
        }
    }
    assert!(ran >= 8, "only {ran} commands found");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The key paths a YAML example sets (maps of named entries as `<name>`).
fn yaml_paths(value: &serde_json::Value, path: &str, out: &mut BTreeSet<String>) {
    if let Some(map) = value.as_object() {
        for (key, sub) in map {
            let named = ["services", "upstreams", "webhooks", "events"].contains(&path);
            let key = if named { "<name>" } else { key.as_str() };
            let next = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            out.insert(next.clone());
            yaml_paths(sub, &next, out);
        }
    } else if let Some(items) = value.as_array() {
        for item in items {
            yaml_paths(item, path, out);
        }
    }
}

/// Every key path of the schema (`services.<name>.auth.kind`), from its
/// `properties`, maps and list items, through every combinator.
fn schema_paths(
    node: &serde_json::Value,
    defs: &serde_json::Value,
    path: &str,
    out: &mut BTreeSet<String>,
) {
    let node = match node.get("$ref").and_then(|r| r.as_str()) {
        Some(reference) => &defs[reference.rsplit('/').next().unwrap()],
        None => node,
    };
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    if let Some(properties) = node.get("properties").and_then(|p| p.as_object()) {
        for (key, sub) in properties {
            out.insert(join(key));
            schema_paths(sub, defs, &join(key), out);
        }
    }
    if let Some(map) = node.get("additionalProperties").filter(|m| m.is_object()) {
        schema_paths(map, defs, &join("<name>"), out);
    }
    if let Some(items) = node.get("items").filter(|m| m.is_object()) {
        schema_paths(items, defs, path, out);
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        for sub in node
            .get(combinator)
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            schema_paths(sub, defs, path, out);
        }
    }
}

/// Every key the config takes has a row in the configuration reference
/// (its own, or its parent's naming it), with its default: a reader can
/// configure every part from the README alone.
#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let schema: serde_json::Value = serde_json::from_str(wedsync_sidecar::config::SCHEMA).unwrap();
    let mut paths = BTreeSet::new();
    schema_paths(&schema, &schema["$defs"], "", &mut paths);
    // The reference's rows (the tables under "Configuration reference",
    // and "Gap repair" whose rows are `recover.*`): first cell's keys and
    // the row's text.
    let mut rows: Vec<(Vec<String>, String)> = Vec::new();
    for section in ["## Configuration reference", "### Gap repair"] {
        let text = README.split(section).nth(1).unwrap();
        let text = text.split("\n## ").next().unwrap();
        for line in text.lines().filter(|l| l.starts_with("| `")) {
            let first = line.split('|').nth(1).unwrap_or_default();
            let keys = ticked(first)
                .into_iter()
                .map(|k| {
                    if k.starts_with("recover.") {
                        format!("webhooks.<name>.{k}")
                    } else {
                        k
                    }
                })
                .collect();
            rows.push((keys, line.to_string()));
        }
    }
    let documented = |path: &str| {
        rows.iter().any(|(keys, row)| {
            keys.iter().any(|key| {
                key == path
                    || path.strip_prefix(key.as_str()).is_some_and(|rest| {
                        let child = rest
                            .trim_start_matches('.')
                            .split('.')
                            .next_back()
                            .unwrap_or_default();
                        rest.starts_with('.')
                            && (row.contains(&format!("`{child}`"))
                                || row.contains(&format!("{child}:")))
                    })
            })
        })
    };
    // Keys explained by the commented examples of "Auth kinds" and
    // "Resilience" (each key with what it does and its default).
    let mut examples = BTreeSet::new();
    for (_, block) in blocks(README, "yaml") {
        for config in wrapped(block) {
            let value: serde_json::Value = serde_yaml_ng::from_str(&config).unwrap();
            yaml_paths(&value, "", &mut examples);
        }
    }
    let explained_by_example = [
        "services.<name>.auth.",
        "services.<name>.rate_limit.",
        "services.<name>.circuit_breaker.",
        "services.<name>.retry.",
    ];
    let containers: BTreeSet<&String> = paths
        .iter()
        .filter(|p| paths.iter().any(|q| q.starts_with(&format!("{p}."))))
        .collect();
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !containers.contains(p) || p.ends_with(".delivery"))
        .filter(|p| {
            // An event source takes a webhook's keys (its row says so).
            let p = p.replacen("events.<name>.", "webhooks.<name>.", 1);
            let p = p.replacen(
                "upstreams.<name>.circuit_breaker.",
                "services.<name>.circuit_breaker.",
                1,
            );
            let by_example =
                explained_by_example.iter().any(|e| p.starts_with(e)) && examples.contains(&p);
            !(documented(&p) || by_example)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys without a row in the configuration reference: {missing:#?}"
    );
}

/// Wherever the READMEs write a status and a code (`503 store_full`), the
/// code is one the binary answers, with that status.
#[test]
fn every_status_and_code_the_readmes_name_is_the_binarys() {
    let codes: std::collections::BTreeMap<&str, u16> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str(), c.status()))
        .collect();
    let mut wrong = Vec::new();
    for (name, text) in [("README.md", README), ("k8s/README.md", K8S_README)] {
        // `NNN word`: three digits (not part of a longer number) and one
        // space, then a snake_case word.
        let bytes = text.as_bytes();
        for at in 0..bytes.len().saturating_sub(5) {
            let digits = &bytes[at..at + 3];
            let before = at.checked_sub(1).map(|b| bytes[b]);
            if !digits.iter().all(u8::is_ascii_digit)
                || before.is_some_and(|b| b.is_ascii_digit() || b == b',' || b == b'.')
                || bytes[at + 3] != b' '
            {
                continue;
            }
            let word: String = text[at + 4..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let status: u16 = text[at..at + 3].parse().unwrap();
            if !(400..600).contains(&status) || !word.contains('_') {
                continue;
            }
            if codes.get(word.as_str()) != Some(&status) {
                wrong.push(format!("{name}: {status} {word}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not a status and code the binary answers: {wrong:?}"
    );
}
