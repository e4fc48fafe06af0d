//! Resolves `${env:NAME}`, `${env:NAME:-default}` and `${file:/path}` inside
//! configuration strings, so that secrets live in the environment or in
//! Kubernetes Secret mounts, never in the file. Never puts a resolved value
//! into an error message.

use std::collections::HashMap;

/// Where references are looked up; tests use a fixed map instead of the process.
pub trait Lookup {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &str) -> std::io::Result<String>;
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
}

/// The result of resolving one string.
pub struct Resolved {
    pub value: String,
    /// True when any part came from the environment or a file: such values are
    /// treated as secrets when the effective configuration is shown.
    pub referenced: bool,
}

/// Replaces every reference in `text`. `$${` stands for a literal `${`.
pub fn resolve(text: &str, lookup: &dyn Lookup) -> Result<Resolved, String> {
    let mut value = String::with_capacity(text.len());
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
        let end = after.find('}').ok_or_else(|| {
            format!("unterminated reference \"${{{after}\": expected a closing }}")
        })?;
        value.push_str(&resolve_reference(&after[..end], lookup)?);
        referenced = true;
        rest = &after[end + 1..];
    }
    value.push_str(rest);
    Ok(Resolved { value, referenced })
}

fn resolve_reference(reference: &str, lookup: &dyn Lookup) -> Result<String, String> {
    if let Some(spec) = reference.strip_prefix("env:") {
        let (name, default) = match spec.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (spec, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "invalid environment variable name \"{name}\" in ${{env:{name}}}"
            ));
        }
        return match (lookup.env(name), default) {
            (Some(value), None) => Ok(value),
            (Some(value), Some(_)) if !value.is_empty() => Ok(value),
            (_, Some(default)) => Ok(default.to_string()),
            (None, None) => Err(format!(
                "environment variable {name} is not set (referenced as ${{env:{name}}}; use ${{env:{name}:-default}} for a default)"
            )),
        };
    }
    if let Some(path) = reference.strip_prefix("file:") {
        if path.is_empty() {
            return Err("empty path in ${file:}".to_string());
        }
        return match lookup.file(path) {
            // Secret files usually end with one newline that is not part of the secret.
            Ok(content) => Ok(content
                .strip_suffix('\n')
                .map(|s| s.strip_suffix('\r').unwrap_or(s))
                .unwrap_or(&content)
                .to_string()),
            Err(err) => Err(format!(
                "cannot read {path} (referenced as ${{file:{path}}}): {err}"
            )),
        };
    }
    Err(format!(
        "unknown reference \"${{{reference}}}\": expected ${{env:NAME}}, ${{env:NAME:-default}} or ${{file:/path}}"
    ))
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
        assert!(
            err.starts_with("environment variable NOPE is not set"),
            "{err}"
        );
        let err = resolve("${file:/nope}", &l).err().unwrap();
        assert!(err.starts_with("cannot read /nope"), "{err}");
        let err = resolve("${vault:x}", &l).err().unwrap();
        assert!(err.starts_with("unknown reference"), "{err}");
        let err = resolve("${env:X", &l).err().unwrap();
        assert!(err.starts_with("unterminated reference"), "{err}");
    }
}
