//! A small reader over the parsed YAML tree that keeps going after an error, so
//! that `check` reports every mistake in one run, each with its path. Strings
//! pass through `${...}` resolution here, once, for the whole document.

use std::net::SocketAddr;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::error::ValueError;
use super::interpolate::{self, Lookup};
use super::path::YamlPath;
use super::secret::Secret;
use super::units;

/// A value and where it stands in the document.
#[derive(Clone)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub path: YamlPath,
}

impl<'a> Node<'a> {
    pub fn root(value: &'a Value) -> Self {
        Self {
            value,
            path: YamlPath::root(),
        }
    }
}

/// The keys of one YAML mapping whose key set has been checked.
pub struct Fields<'a> {
    map: &'a Mapping,
    pub path: YamlPath,
}

impl<'a> Fields<'a> {
    /// The value of `key`, or None when absent or `null`.
    pub fn get(&self, key: &str) -> Option<Node<'a>> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(Node {
                value,
                path: self.path.key(key),
            }),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

pub struct Decoder<'l> {
    lookup: &'l dyn Lookup,
    errors: Vec<(YamlPath, String)>,
}

impl<'l> Decoder<'l> {
    pub fn new(lookup: &'l dyn Lookup) -> Self {
        Self {
            lookup,
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, path: &YamlPath, message: impl Into<String>) {
        self.errors.push((path.clone(), message.into()));
    }

    pub fn into_errors(self) -> Vec<(YamlPath, String)> {
        self.errors
    }

    /// A mapping whose keys must all be among `allowed`; unknown keys are errors
    /// because a typo must never silently disable a setting.
    pub fn fields<'a>(&mut self, node: &Node<'a>, allowed: &[&str]) -> Option<Fields<'a>> {
        let Value::Mapping(map) = untagged(node.value) else {
            self.error(
                &node.path,
                format!(
                    "expected a mapping with keys {}, found {}",
                    allowed.join(", "),
                    kind_of(node.value)
                ),
            );
            return None;
        };
        for key in map.keys() {
            match key.as_str() {
                Some(key) if allowed.contains(&key) => {}
                Some(key) => {
                    let hint = closest(key, allowed)
                        .map(|k| format!("; did you mean \"{k}\"?"))
                        .unwrap_or_default();
                    self.error(
                        &node.path.key(key),
                        format!(
                            "unknown key \"{key}\"{hint} (expected one of: {})",
                            allowed.join(", ")
                        ),
                    );
                }
                None => self.error(
                    &node.path,
                    format!("keys must be strings, found {}", kind_of(key)),
                ),
            }
        }
        Some(Fields {
            map,
            path: node.path.clone(),
        })
    }

    /// `name: {...}` entries of a user-named mapping (services, upstreams, webhooks).
    pub fn entries<'a>(&mut self, node: &Node<'a>) -> Vec<(String, Node<'a>)> {
        let Value::Mapping(map) = untagged(node.value) else {
            self.error(
                &node.path,
                format!(
                    "expected a mapping of names to entries, found {}",
                    kind_of(node.value)
                ),
            );
            return Vec::new();
        };
        let mut entries = Vec::new();
        for (key, value) in map {
            let Some(name) = key.as_str() else {
                self.error(
                    &node.path,
                    format!("names must be strings, found {}", kind_of(key)),
                );
                continue;
            };
            let path = node.path.key(name);
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.error(
                    &path,
                    format!("invalid name \"{name}\": use letters, digits, '-' and '_'"),
                );
                continue;
            }
            entries.push((name.to_string(), Node { value, path }));
        }
        entries
    }

    pub fn required<'a>(&mut self, fields: &Fields<'a>, key: &str) -> Option<Node<'a>> {
        let node = fields.get(key);
        if node.is_none() {
            self.error(&fields.path.key(key), "is required");
        }
        node
    }

    /// A string with every `${...}` resolved.
    pub fn string(&mut self, node: &Node) -> Option<String> {
        self.resolved(node).map(|r| r.value)
    }

    /// A string that is never shown again (tokens, passwords, signing secrets).
    pub fn secret(&mut self, node: &Node) -> Option<Secret> {
        self.string(node).map(Secret::new)
    }

    pub fn resolved(&mut self, node: &Node) -> Option<interpolate::Resolved> {
        let text = match untagged(node.value) {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                self.error(
                    &node.path,
                    format!("expected a string, found {}", kind_of(other)),
                );
                return None;
            }
        };
        match interpolate::resolve(&text, self.lookup) {
            Ok(resolved) => Some(resolved),
            Err(error) => {
                self.error(&node.path, error.to_string());
                None
            }
        }
    }

    /// Whether `path` can be opened now, as the config's lookup sees it.
    pub fn readable(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.lookup.readable(&path.to_string_lossy())
    }

    pub fn non_empty_string(&mut self, node: &Node) -> Option<String> {
        let value = self.string(node)?;
        if value.is_empty() {
            self.error(&node.path, "must not be empty");
            return None;
        }
        Some(value)
    }

    /// A string, after resolution, parsed by `parse`. An error names the
    /// `${...}` references a value came from, never what they hold.
    pub fn parsed<T>(
        &mut self,
        node: &Node,
        parse: impl FnOnce(&str) -> Result<T, ValueError>,
    ) -> Option<T> {
        let resolved = self.resolved(node)?;
        match parse(&resolved.value) {
            Ok(value) => Some(value),
            Err(error) => {
                self.error(&node.path, resolved.redact(&error.to_string()));
                None
            }
        }
    }

    pub fn duration(&mut self, node: &Node) -> Option<Duration> {
        self.parsed(node, units::parse_duration)
    }

    pub fn size(&mut self, node: &Node) -> Option<u64> {
        self.parsed(node, units::parse_size)
    }

    pub fn percent(&mut self, node: &Node) -> Option<f64> {
        self.parsed(node, units::parse_percent)
    }

    pub fn socket_addr(&mut self, node: &Node) -> Option<SocketAddr> {
        self.parsed(node, |text| {
            text.parse::<SocketAddr>()
                .map_err(|_| ValueError::SocketAddr(text.into()))
        })
    }

    /// A whole number within `min..=max`.
    pub fn integer(&mut self, node: &Node, min: u64, max: u64) -> Option<u64> {
        let value = match untagged(node.value) {
            Value::Number(n) => n.as_u64(),
            Value::String(_) => self.string(node).and_then(|s| s.trim().parse().ok()),
            _ => None,
        };
        match value {
            Some(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                self.error(
                    &node.path,
                    format!(
                        "expected a whole number from {min} to {max}, found {}",
                        display_scalar(node.value)
                    ),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, node: &Node) -> Option<bool> {
        match untagged(node.value) {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(
                    &node.path,
                    format!("expected true or false, found {}", display_scalar(other)),
                );
                None
            }
        }
    }

    /// The value under `key` decoded by `decode`, or `default` when the
    /// key is absent (or `null`).
    pub fn or<'a, T>(
        &mut self,
        fields: &Fields<'a>,
        key: &str,
        default: T,
        decode: impl FnOnce(&mut Self, &Node<'a>) -> Option<T>,
    ) -> Option<T> {
        match fields.get(key) {
            Some(node) => decode(self, &node),
            None => Some(default),
        }
    }

    /// One of a fixed set of words under `key`, or `default` when absent.
    pub fn choice_or<T: Copy>(
        &mut self,
        fields: &Fields,
        key: &str,
        options: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        self.or(fields, key, default, |d, node| d.choice(node, options))
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(&mut self, node: &Node, options: &[(&str, T)]) -> Option<T> {
        self.parsed(node, |text| {
            match options.iter().find(|(name, _)| *name == text) {
                Some((_, value)) => Ok(*value),
                None => {
                    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                    Err(ValueError::Choice {
                        value: text.into(),
                        expected: names.join(", "),
                    })
                }
            }
        })
    }

    /// A sequence whose items are read by `item`; a bad item is reported and skipped.
    pub fn list<'a, T>(
        &mut self,
        node: &Node<'a>,
        mut item: impl FnMut(&mut Self, &Node<'a>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Value::Sequence(items) = untagged(node.value) else {
            self.error(
                &node.path,
                format!("expected a list, found {}", kind_of(node.value)),
            );
            return None;
        };
        let before = self.errors.len();
        let values: Vec<T> = items
            .iter()
            .enumerate()
            .filter_map(|(i, value)| {
                item(
                    self,
                    &Node {
                        value,
                        path: node.path.index(i),
                    },
                )
            })
            .collect();
        (self.errors.len() == before).then_some(values)
    }
}

fn untagged(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => untagged(&tagged.value),
        other => other,
    }
}

fn kind_of(value: &Value) -> &'static str {
    match untagged(value) {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn display_scalar(value: &Value) -> String {
    match untagged(value) {
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("\"{s}\""),
        Value::Bool(b) => b.to_string(),
        other => kind_of(other).to_string(),
    }
}

/// The allowed key nearest to a typo, if it is close enough to be a likely match.
fn closest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_key_for_a_typo() {
        assert_eq!(
            closest("rate_limt", &["route", "rate_limit", "retry"]),
            Some("rate_limit")
        );
        assert_eq!(closest("zzzzzz", &["route", "retry"]), None);
    }
}
