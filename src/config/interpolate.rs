//! Resolves `${env:NAME}`, `${env:NAME:-default}` and `${file:/path}` inside
//! configuration strings, so that secrets live in the environment or in
//! Kubernetes Secret mounts, never in the file. Never puts a resolved value
//! into an error message.

use std::collections::HashMap;

/// Where references are looked up; tests use a fixed map instead of the process.
pub trait Lookup {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &str) -> std::io::Result<String>;
    /// Whether a file the config names (a CA, a client certificate) can
    /// be opened now.
    fn readable(&self, path: &str) -> std::io::Result<()> {
        std::fs::File::open(path).map(drop)
    }
}

/// The process environment and the file system.
pub struct ProcessLookup;

impl Lookup for ProcessLookup {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn file(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// A fixed set of variables and files, for tests.
#[derive(Default)]
pub struct MapLookup {
    pub env: HashMap<String, String>,
    pub files: HashMap<String, String>,
}

impl Lookup for MapLookup {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn file(&self, path: &str) -> std::io::Result<String> {
        self.files.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
        })
    }

    fn readable(&self, path: &str) -> std::io::Result<()> {
        self.file(path).map(drop)
    }
}

/// The result of resolving one string.
pub struct Resolved {
    pub value: String,
    /// True when any part came from the environment or a file: such values are
    /// treated as secrets when the effective configuration is shown.
    pub referenced: bool,
    /// Each reference and what it resolved to, so that an error about the
    /// value can name the reference instead of showing what it holds.
    pub substitutions: Vec<(String, String)>,
}

impl Resolved {
    /// `message` (an error about this value) with every resolved part
    /// replaced by the reference it came from. A message that would still
    /// show part of a resolved value (a parser quoting a piece of a URL,
    /// say) is cut down to naming the references: a password inside a URL
    /// must never reach a log.
    pub fn redact(&self, message: &str) -> String {
        let mut redacted = message.to_string();
        // Longest first, so that a value containing another is replaced whole.
        let mut parts: Vec<&(String, String)> = self
            .substitutions
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .collect();
        parts.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        for (reference, value) in &parts {
            redacted = redacted.replace(value.as_str(), reference);
        }
        let leaks = parts
            .iter()
            .any(|(_, value)| shares_a_piece(&redacted, value));
        if !leaks {
            return redacted;
        }
        let references: Vec<&str> = parts.iter().map(|(r, _)| r.as_str()).collect();
        format!(
            "invalid value (it comes from {}; the value is not shown)",
            references.join(", ")
        )
    }
}

/// Does `text` contain any run of 8 bytes of `secret` (or all of a shorter
/// one)?
fn shares_a_piece(text: &str, secret: &str) -> bool {
    let secret = secret.as_bytes();
    let window = secret.len().min(8);
    secret
        .windows(window)
        .any(|piece| text.as_bytes().windows(window).any(|t| t == piece))
}

/// A reference that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("unterminated reference \"${{{0}\": expected a closing }}")]
    Unterminated(String),
    #[error("invalid environment variable name \"{0}\" in ${{env:{0}}}")]
    EnvName(String),
    #[error("environment variable {0} is not set (referenced as ${{env:{0}}}; use ${{env:{0}:-default}} for a default)")]
    EnvUnset(String),
    #[error("empty path in ${{file:}}")]
    EmptyPath,
    #[error("cannot read {path} (referenced as ${{file:{path}}}): {reason}")]
    File { path: String, reason: String },
    #[error("unknown reference \"${{{0}}}\": expected ${{env:NAME}}, ${{env:NAME:-default}} or ${{file:/path}}")]
    Unknown(String),
}

/// Replaces every reference in `text`. `$${` stands for a literal `${`.
pub fn resolve(text: &str, lookup: &dyn Lookup) -> Result<Resolved, ReferenceError> {
    let mut value = String::with_capacity(text.len());
    let mut substitutions = Vec::new();
    let mut referenced = false;
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            value.push_str(&rest[..start - 1]);
            value.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        value.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ReferenceError::Unterminated(after.into()))?;
        let (resolved, from_file_text) = resolve_reference(&after[..end], lookup)?;
        value.push_str(&resolved);
        referenced = true;
        // A default written in the file is no secret; only what came from
        // the environment or a file is kept out of error messages.
        if !from_file_text {
            substitutions.push((format!("${{{}}}", &after[..end]), resolved));
        }
        rest = &after[end + 1..];
    }
    value.push_str(rest);
    Ok(Resolved {
        value,
        referenced,
        substitutions,
    })
}

/// The value of one reference, and whether it is the default written in
/// the file itself.
fn resolve_reference(
    reference: &str,
    lookup: &dyn Lookup,
) -> Result<(String, bool), ReferenceError> {
    if let Some(spec) = reference.strip_prefix("env:") {
        let (name, default) = match spec.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (spec, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ReferenceError::EnvName(name.into()));
        }
        return match (lookup.env(name), default) {
            (Some(value), None) => Ok((value, false)),
            (Some(value), Some(_)) if !value.is_empty() => Ok((value, false)),
            (_, Some(default)) => Ok((default.to_string(), true)),
            (None, None) => Err(ReferenceError::EnvUnset(name.into())),
        };
    }
    if let Some(path) = reference.strip_prefix("file:") {
        if path.is_empty() {
            return Err(ReferenceError::EmptyPath);
        }
        return match lookup.file(path) {
            // Secret files usually end with one newline that is not part of the secret.
            Ok(content) => Ok((
                content
                    .strip_suffix('\n')
                    .map(|s| s.strip_suffix('\r').unwrap_or(s))
                    .unwrap_or(&content)
                    .to_string(),
                false,
            )),
            Err(err) => Err(ReferenceError::File {
                path: path.into(),
                reason: err.to_string(),
            }),
        };
    }
    Err(ReferenceError::Unknown(reference.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup() -> MapLookup {
        let mut lookup = MapLookup::default();
        lookup.env.insert("STRIPE_KEY".into(), "sk_test_123".into());
        lookup.env.insert("EMPTY".into(), String::new());
        lookup
            .files
            .insert("/run/secrets/token".into(), "s3cret\n".into());
        lookup
    }

    #[test]
    fn resolves_env_file_and_defaults() {
        let l = lookup();
        assert_eq!(
            resolve("${env:STRIPE_KEY}", &l).unwrap().value,
            "sk_test_123"
        );
        assert_eq!(
            resolve("${env:MISSING:-fallback}", &l).unwrap().value,
            "fallback"
        );
        assert_eq!(
            resolve("${env:EMPTY:-fallback}", &l).unwrap().value,
            "fallback"
        );
        assert_eq!(resolve("${env:EMPTY}", &l).unwrap().value, "");
        assert_eq!(
            resolve("${file:/run/secrets/token}", &l).unwrap().value,
            "s3cret"
        );
        assert_eq!(
            resolve("Bearer ${env:STRIPE_KEY}!", &l).unwrap().value,
            "Bearer sk_test_123!"
        );
    }

    #[test]
    fn marks_only_referenced_values() {
        let l = lookup();
        assert!(resolve("${env:STRIPE_KEY}", &l).unwrap().referenced);
        assert!(!resolve("plain", &l).unwrap().referenced);
    }

    #[test]
    fn errors_name_the_reference_never_the_value() {
        let mut l = lookup();
        l.env
            .insert("REDIS_URL".into(), "redis://:hunter2-pass@db:6379".into());
        let resolved = resolve("${env:REDIS_URL}", &l).unwrap();
        assert_eq!(
            resolved.redact("invalid URL \"redis://:hunter2-pass@db:6379\": bad"),
            "invalid URL \"${env:REDIS_URL}\": bad"
        );
        let piece = resolved.redact("invalid password \"hunter2-pass\"");
        assert!(!piece.contains("hunter2"), "{piece}");
        assert!(piece.contains("${env:REDIS_URL}"), "{piece}");
        let plain = resolve("redis://db:6379", &l).unwrap();
        assert_eq!(plain.redact("bad port"), "bad port");
        let defaulted = resolve("${env:UNSET:-redis://db}", &l).unwrap();
        assert_eq!(
            defaulted.redact("invalid URL \"redis://db\""),
            "invalid URL \"redis://db\"",
            "a default is written in the file: no secret"
        );
    }

    #[test]
    fn keeps_escaped_references_literal() {
        assert_eq!(
            resolve("price: $${env:X}", &lookup()).unwrap().value,
            "price: ${env:X}"
        );
    }

    #[test]
    fn names_the_missing_variable_and_file() {
        let l = lookup();
        let err = resolve("${env:NOPE}", &l).err().unwrap();
        assert_eq!(err, ReferenceError::EnvUnset("NOPE".into()));
        assert!(
            err.to_string()
                .starts_with("environment variable NOPE is not set"),
            "{err}"
        );
        let err = resolve("${file:/nope}", &l).err().unwrap();
        assert!(err.to_string().starts_with("cannot read /nope"), "{err}");
        let err = resolve("${vault:x}", &l).err().unwrap();
        assert_eq!(err, ReferenceError::Unknown("vault:x".into()));
        let err = resolve("${env:X", &l).err().unwrap();
        assert!(matches!(err, ReferenceError::Unterminated(_)), "{err}");
    }
}
