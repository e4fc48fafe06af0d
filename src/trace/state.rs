//! W3C `tracestate`, as it is passed on: every `tracestate` header of the
//! request joined in order (RFC 9110 list semantics: two headers are one
//! list), blank members and the whitespace around commas dropped, a later
//! duplicate of a key dropped. A list with a member that is not
//! `key=value` in the spec's grammar, or with more than 32 members, is
//! dropped whole, as the spec's test suite expects; so is any list whose
//! `traceparent` was missing or invalid (the caller's part). Never grows
//! past what came in.

use http::HeaderMap;

pub const TRACESTATE: &str = "tracestate";

/// The spec's limit on list members.
const MAX_MEMBERS: usize = 32;

/// The list to pass on, or None to pass none.
pub fn forwarded(headers: &HeaderMap) -> Option<http::HeaderValue> {
    let mut members: Vec<&[u8]> = Vec::new();
    for value in headers.get_all(TRACESTATE) {
        for member in value.as_bytes().split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            let key = member_key(member)?;
            if members.iter().any(|m| member_key(m) == Some(key)) {
                continue;
            }
            members.push(member);
            if members.len() > MAX_MEMBERS {
                return None;
            }
        }
    }
    if members.is_empty() {
        return None;
    }
    http::HeaderValue::from_bytes(&members.join(&b","[..])).ok()
}

/// A member's key when the member is `key=value` by the spec's grammar:
/// a key of lowercase letters, digits and `_-*/@` starting with a letter or
/// digit, at most 256 long; a value of printable ASCII but `,` and `=`, at
/// most 256 long, not ending in a space.
fn member_key(member: &[u8]) -> Option<&[u8]> {
    let equals = member.iter().position(|&b| b == b'=')?;
    let (key, value) = (&member[..equals], &member[equals + 1..]);
    let key_ok = !key.is_empty()
        && key.len() <= 256
        && (key[0].is_ascii_lowercase() || key[0].is_ascii_digit())
        && key.iter().all(|&b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
        });
    let value_ok = !value.is_empty()
        && value.len() <= 256
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value.last() != Some(&b' ');
    (key_ok && value_ok).then_some(key)
}

#[cfg(test)]
mod tests {
    //! The cases of the W3C Trace Context test suite (`test/test.py`,
    //! `test_tracestate_*`) that decide what is passed on.

    use super::*;

    fn pass(values: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(TRACESTATE, value.parse().unwrap());
        }
        forwarded(&headers).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn several_headers_are_one_list_in_their_order() {
        assert_eq!(
            pass(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).as_deref(),
            Some("foo=1,bar=2,rojo=1,congo=2,baz=3")
        );
    }

    #[test]
    fn blank_members_and_whitespace_around_commas_are_dropped() {
        assert_eq!(pass(&[""]), None);
        assert_eq!(pass(&["foo=1", ""]).as_deref(), Some("foo=1"));
        assert_eq!(pass(&["", "foo=1"]).as_deref(), Some("foo=1"));
        assert_eq!(
            pass(&["foo=1 \t , \t bar=2, \t baz=3"]).as_deref(),
            Some("foo=1,bar=2,baz=3")
        );
        assert_eq!(pass(&["\t foo=1 \t"]).as_deref(), Some("foo=1"));
    }

    #[test]
    fn a_later_duplicate_key_is_dropped() {
        assert_eq!(pass(&["foo=1,foo=2"]).as_deref(), Some("foo=1"));
        assert_eq!(pass(&["foo=1", "foo=2"]).as_deref(), Some("foo=1"));
    }

    #[test]
    fn every_allowed_character_passes() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let value: String = (0x20u8..=0x7e)
            .filter(|b| *b != b',' && *b != b'=')
            .map(char::from)
            .collect();
        let member = format!("{key}={value}");
        assert_eq!(pass(&[&member]).as_deref(), Some(member.as_str()));
        let vendor = format!("{key}@a-z0-9_-*/={value}");
        assert_eq!(pass(&[&vendor]).as_deref(), Some(vendor.as_str()));
        assert_eq!(pass(&["foo@=1,bar=2"]).as_deref(), Some("foo@=1,bar=2"));
        assert_eq!(
            pass(&["foo@bar@baz=1,bar=2"]).as_deref(),
            Some("foo@bar@baz=1,bar=2")
        );
    }

    #[test]
    fn a_list_with_an_illegal_member_is_dropped_whole() {
        for bad in [
            "foo =1",
            "FOO=1",
            "foo.bar=1",
            "@foo=1,bar=2",
            "foo=1,bar",
            "foo=",
        ] {
            assert_eq!(pass(&[bad]), None, "{bad:?}");
        }
        let long_key = format!("foo=1,{}=1", "z".repeat(257));
        assert_eq!(pass(&[&long_key]), None);
        let longest_key = format!("foo=1,{}=1", "z".repeat(256));
        assert_eq!(pass(&[&longest_key]).as_deref(), Some(longest_key.as_str()));
    }

    #[test]
    fn thirty_two_members_pass_and_thirty_three_drop_the_list() {
        let members = |n: usize| {
            (1..=n)
                .map(|i| format!("bar{i:02}={i:02}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            pass(&[&members(32)]).map(|s| s.split(',').count()),
            Some(32)
        );
        assert_eq!(pass(&[&members(33)]), None);
    }
}
