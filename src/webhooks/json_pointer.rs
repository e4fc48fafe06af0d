//! A value at a JSON pointer, read from a document serde_json cannot read
//! whole: nested past its 128 levels, with invalid UTF-8, a number out of
//! range or a lone surrogate. A provider signed those bytes and will not
//! send others, so its event's id, type and context must still be read,
//! never silently lost with its routing.
//!
//! Iterative (a nesting counter, no recursion: any depth in linear time,
//! never a stack overflow), read-only, and lenient only where serde_json is
//! strict about content: a string is decoded with invalid UTF-8 and lone
//! surrogates replaced by U+FFFD, a number is kept as written. A document
//! that is not JSON where the path runs gives None. Of duplicate keys the
//! last counts, as in serde_json's maps.

/// The scalar at `pointer` (RFC 6901) as `Sources::pointer` gives it: a
/// non-empty string, a number as written, or `true`/`false`.
pub fn scalar_at(document: &[u8], pointer: &str) -> Option<String> {
    let mut at = skip_ws(document, 0);
    for token in tokens(pointer)? {
        at = match document.get(at)? {
            b'{' => member(document, at, &token)?,
            b'[' => element(document, at, array_index(&token)?)?,
            _ => return None,
        };
    }
    scalar(document, at)
}

/// The pointer's reference tokens, unescaped; None for a pointer that
/// does not start with `/` (the whole document is never a scalar we want).
fn tokens(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// An array index as RFC 6901 writes it: digits, no leading zero but in
/// `0` itself, no sign (Rust's `usize` parser would take `+0`).
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = token.len() > 1 && token.starts_with('0');
    (digits && !leading_zero)
        .then(|| token.parse().ok())
        .flatten()
}

fn skip_ws(document: &[u8], mut at: usize) -> usize {
    while document
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

/// Where the value of `key` starts in the object at `at` (the last one
/// with that key).
fn member(document: &[u8], at: usize, key: &str) -> Option<usize> {
    let mut at = skip_ws(document, at + 1);
    let mut found = None;
    if document.get(at) == Some(&b'}') {
        return None;
    }
    loop {
        let (name, after) = string(document, at)?;
        at = skip_ws(document, after);
        if document.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(document, at + 1);
        if name == key {
            found = Some(at);
        }
        at = skip_ws(document, skip_value(document, at)?);
        match document.get(at)? {
            b',' => at = skip_ws(document, at + 1),
            b'}' => return found,
            _ => return None,
        }
    }
}

/// Where element `index` starts in the array at `at`.
fn element(document: &[u8], at: usize, index: usize) -> Option<usize> {
    let mut at = skip_ws(document, at + 1);
    let mut position = 0;
    loop {
        if document.get(at)? == &b']' {
            return None;
        }
        if position == index {
            return Some(at);
        }
        at = skip_ws(document, skip_value(document, at)?);
        match document.get(at)? {
            b',' => at = skip_ws(document, at + 1),
            _ => return None,
        }
        position += 1;
    }
}

/// Past the value at `at`, whatever its depth.
fn skip_value(document: &[u8], at: usize) -> Option<usize> {
    match document.get(at)? {
        b'"' => string_end(document, at),
        b'{' | b'[' => {
            let mut depth: u64 = 0;
            let mut at = at;
            loop {
                match document.get(at)? {
                    b'"' => {
                        at = string_end(document, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        _ => Some(literal_end(document, at)),
    }
}

/// Past the closing quote of the string at `at`.
fn string_end(document: &[u8], at: usize) -> Option<usize> {
    let mut at = at + 1;
    loop {
        match document.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => at += 2,
            _ => at += 1,
        }
    }
}

/// Past a number or `true`/`false`/`null`.
fn literal_end(document: &[u8], mut at: usize) -> usize {
    while document
        .get(at)
        .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

fn scalar(document: &[u8], at: usize) -> Option<String> {
    match document.get(at)? {
        b'"' => string(document, at)
            .map(|(text, _)| text)
            .filter(|t| !t.is_empty()),
        b'-' | b'0'..=b'9' => {
            let text = &document[at..literal_end(document, at)];
            let number = text
                .iter()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
            number.then(|| String::from_utf8_lossy(text).into_owned())
        }
        _ => {
            let text = &document[at..literal_end(document, at)];
            matches!(text, b"true" | b"false").then(|| String::from_utf8_lossy(text).into_owned())
        }
    }
}

/// The string at `at`, decoded, and where it ends.
fn string(document: &[u8], at: usize) -> Option<(String, usize)> {
    if document.get(at) != Some(&b'"') {
        return None;
    }
    let mut bytes = Vec::new();
    let mut at = at + 1;
    loop {
        match *document.get(at)? {
            b'"' => return Some((String::from_utf8_lossy(&bytes).into_owned(), at + 1)),
            b'\\' => {
                let escaped = *document.get(at + 1)?;
                at += 2;
                let decoded = match escaped {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        let (unit, after) = hex4(document, at)?;
                        at = after;
                        surrogate_pair(document, &mut at, unit)
                    }
                    _ => char::REPLACEMENT_CHARACTER,
                };
                let mut buffer = [0; 4];
                bytes.extend_from_slice(decoded.encode_utf8(&mut buffer).as_bytes());
            }
            other => {
                bytes.push(other);
                at += 1;
            }
        }
    }
}

/// A `\u` escape's code unit: the character, joining a high surrogate with
/// the low one that follows it; a lone surrogate is U+FFFD.
fn surrogate_pair(document: &[u8], at: &mut usize, unit: u16) -> char {
    if !(0xD800..=0xDBFF).contains(&unit) {
        return char::from_u32(unit.into()).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    if document.get(*at..*at + 2) == Some(b"\\u") {
        if let Some((low, after)) = hex4(document, *at + 2) {
            if (0xDC00..=0xDFFF).contains(&low) {
                *at = after;
                let code = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                return char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
            }
        }
    }
    char::REPLACEMENT_CHARACTER
}

fn hex4(document: &[u8], at: usize) -> Option<(u16, usize)> {
    let digits = std::str::from_utf8(document.get(at..at + 4)?).ok()?;
    Some((u16::from_str_radix(digits, 16).ok()?, at + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(document: &str, pointer: &str) -> Option<String> {
        scalar_at(document.as_bytes(), pointer)
    }

    #[test]
    fn reads_what_serde_json_reads_on_ordinary_documents() {
        let document = r#"{"id":"evt_1","type":"payment.made","n":12.5,"ok":true,"none":null,
            "data":{"object":{"metadata":{"wedding_id":"w-42"}},"list":[{"a":1},{"a":"two"}]},
            "esc":"a\"b\\c\u00e9\ud83d\ude00","a/b":"slash","m~n":"tilde","empty":""}"#;
        let value: serde_json::Value = serde_json::from_str(document).unwrap();
        for pointer in [
            "/id",
            "/type",
            "/n",
            "/ok",
            "/none",
            "/data/object/metadata/wedding_id",
            "/data/list/1/a",
            "/data/list/0/a",
            "/data/list/2/a",
            "/esc",
            "/a~1b",
            "/m~0n",
            "/empty",
            "/missing",
            "/data",
            "/data/list/x",
        ] {
            let expected = match value.pointer(pointer) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
                _ => None,
            };
            assert_eq!(at(document, pointer), expected, "{pointer}");
        }
    }

    #[test]
    fn reads_past_any_depth_without_recursion() {
        let deep = format!(
            r#"{{"x":{}1{},"type":"payment.made"}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
        assert_eq!(at(&deep, "/type").as_deref(), Some("payment.made"));
        let nested = format!(
            r#"{{"type":"t","d":{}"deep"{}}}"#,
            r#"{"k":"#.repeat(300),
            "}".repeat(300)
        );
        let pointer = format!("/d{}", "/k".repeat(300));
        assert_eq!(at(&nested, &pointer).as_deref(), Some("deep"));
    }

    #[test]
    fn what_serde_json_refuses_is_read_leniently() {
        assert_eq!(
            at(r#"{"amount":1e400,"type":"t"}"#, "/amount").as_deref(),
            Some("1e400")
        );
        assert_eq!(
            at(r#"{"note":"\ud800x","type":"t"}"#, "/note").as_deref(),
            Some("\u{fffd}x")
        );
        let invalid = b"{\"type\":\"t\\u00e9\xff\"}";
        assert_eq!(
            scalar_at(invalid, "/type").as_deref(),
            Some("t\u{e9}\u{fffd}")
        );
        assert_eq!(
            at(r#"{"k":1,"k":2}"#, "/k").as_deref(),
            Some("2"),
            "the last key"
        );
    }

    #[test]
    fn what_is_not_json_where_the_path_runs_gives_nothing_and_never_panics() {
        for broken in [
            "",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":\"unterminated",
            "[1,2",
            "{\"a\" 1}",
            "nul",
            "{\"a\":1,}",
            "{\"a\":\"\\u12\"}",
            "\"top\"",
        ] {
            assert_eq!(at(broken, "/a"), None, "{broken:?}");
            assert_eq!(at(broken, "/5"), None, "{broken:?}");
        }
        assert_eq!(at(r#"{"a":1}"#, "a"), None, "a pointer starts with /");
        // Found by the fuzz target: an index is digits alone, as in serde_json.
        for index in ["+0", "00", "01", "-1", " 0", ""] {
            assert_eq!(at("[0,1]", &format!("/{index}")), None, "{index:?}");
        }
        assert_eq!(at("[0,1]", "/1").as_deref(), Some("1"));
    }
}
