//! Patterns the config compiles once at load: event-type globs (priority
//! rules, routes) and the generic HMAC scheme's payload template. Each
//! keeps the text it was written as, for `/admin/config` and errors.

use serde::Serialize;

use super::error::ValueError;

/// `*` matches any run of characters (dots included); everything else is
/// literal. `payment_intent.*`, `*.updated`, `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    /// The literal pieces between the stars; one piece means no star.
    pieces: Vec<String>,
}

impl Glob {
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_string(),
            pieces: text.split('*').map(str::to_string).collect(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, text: &str) -> bool {
        let pieces = &self.pieces;
        if pieces.len() == 1 {
            return pieces[0] == text;
        }
        let (first, last) = (&pieces[0], &pieces[pieces.len() - 1]);
        // The ends may not overlap: `ab*ba` does not match `aba`.
        if text.len() < first.len() + last.len()
            || !text.starts_with(first.as_str())
            || !text.ends_with(last.as_str())
        {
            return false;
        }
        let mut rest = &text[first.len()..text.len() - last.len()];
        for middle in &pieces[1..pieces.len() - 1] {
            match rest.find(middle.as_str()) {
                Some(at) => rest = &rest[at + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

impl Serialize for Glob {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// What the generic HMAC scheme signs: literal text around `{body}` and,
/// with a `timestamp_header`, `{timestamp}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Body,
    Timestamp,
}

impl PayloadTemplate {
    /// A template must sign the body; `{` not starting a placeholder is literal.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut has_body = false;
        while let Some(start) = rest.find('{') {
            literal.push_str(&rest[..start]);
            let tail = &rest[start..];
            let (part, after) = if let Some(after) = tail.strip_prefix("{body}") {
                has_body = true;
                (Some(Part::Body), after)
            } else if let Some(after) = tail.strip_prefix("{timestamp}") {
                (Some(Part::Timestamp), after)
            } else {
                literal.push('{');
                (None, &tail[1..])
            };
            if let Some(part) = part {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
            }
            rest = after;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !has_body {
            return Err(ValueError::PayloadTemplate(text.into()));
        }
        Ok(Self {
            text: text.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn uses_timestamp(&self) -> bool {
        self.parts.contains(&Part::Timestamp)
    }

    /// The signed bytes, in pieces: the template with `timestamp` and
    /// `body` in their places.
    pub fn fill<'a>(&'a self, timestamp: &'a str, body: &'a [u8]) -> Vec<&'a [u8]> {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.as_bytes(),
                Part::Body => body,
                Part::Timestamp => timestamp.as_bytes(),
            })
            .collect()
    }
}

impl Serialize for PayloadTemplate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).matches(text)
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything.at.all"));
        assert!(glob("payment_intent.*", "payment_intent.succeeded"));
        assert!(!glob("payment_intent.*", "charge.succeeded"));
        assert!(glob("*.updated", "customer.subscription.updated"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("ab*ba", "aba"), "the ends may not overlap");
        assert!(glob("ab*ba", "abba"));
    }

    #[test]
    fn a_template_is_filled_in_place() {
        let template = PayloadTemplate::parse("v0:{timestamp}:{body}{x}").unwrap();
        assert!(template.uses_timestamp());
        assert_eq!(template.fill("17", b"{}").concat(), b"v0:17:{}{x}".to_vec());
        assert_eq!(
            PayloadTemplate::parse("{body}").unwrap().fill("", b"b"),
            [b"b"]
        );
        assert!(
            PayloadTemplate::parse("{timestamp}").is_err(),
            "the body must be signed"
        );
    }
}
