//! W3C Trace Context (`traceparent`): parsed strictly (version 00 shape,
//! lowercase hex, ids not all zero; a later version is read by its first
//! four fields as the spec asks), and new spans made as children of it or
//! as the root of a new trace. Ids come from a per-thread generator seeded
//! from the OS once: trace ids need to be unique, not secret, and a
//! syscall per request would show in the egress's cost.

use std::cell::Cell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Bit 0: sampled.
    pub flags: u8,
}

/// The `sampled` flag, the only one level 1 defines.
const SAMPLED: u8 = 0x01;

/// `traceparent` is 55 bytes in version 00; anything much longer is not one.
const MAX_HEADER: usize = 512;

impl TraceContext {
    /// Reads a `traceparent` header value; None when it is not a valid one
    /// (the caller then starts a new trace, as the spec asks).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || value.len() > MAX_HEADER {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?.trim();
        let mut parts = text.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; a later one may add more.
        if version == "00" && (rest.is_some() || text.len() != 55) {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = decode_hex(span)?.try_into().ok()?;
        let flags = decode_hex(flags)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace, sampled or not.
    pub fn root(sampled: bool) -> Self {
        Self {
            trace_id: random_id(),
            span_id: random_span(),
            flags: u8::from(sampled),
        }
    }

    /// The request's trace context: its one `traceparent` header, read.
    /// Two of them are invalid, as the spec says: the caller starts a new
    /// trace rather than pick one.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(super::TRACEPARENT).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(first.as_bytes())
    }

    /// A span of this trace under this one: same trace id, a new span id,
    /// and of the flags only `sampled`, the one Trace Context level 1
    /// defines (an unknown flag is not passed on as if it were ours).
    pub fn child(&self) -> Self {
        Self {
            span_id: random_span(),
            flags: self.flags & SAMPLED,
            ..*self
        }
    }

    /// The parent's child and the parent's span id, or a new trace when
    /// there is no valid parent.
    pub fn continue_or_start(
        parent: Option<Self>,
        sample: impl FnOnce() -> bool,
    ) -> (Self, Option<[u8; 8]>) {
        match parent {
            Some(parent) => (parent.child(), Some(parent.span_id)),
            None => (Self::root(sample()), None),
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED == SAMPLED
    }

    /// The `traceparent` value, version 00.
    pub fn header(&self) -> String {
        String::from_utf8_lossy(&self.header_bytes()).into_owned()
    }

    /// The `traceparent` value as a header, made on the stack: this is on
    /// every egress request.
    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_bytes(&self.header_bytes())
            .unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    fn header_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.span_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }

    /// The trace id in hex, on the stack (for log lines).
    pub fn trace_id_text(&self) -> TraceIdText {
        let mut out = [0; 32];
        write_hex(&mut out, &self.trace_id);
        TraceIdText(out)
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !is_lower_hex(text) || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[(byte >> 4) as usize];
        pair[1] = HEX[(byte & 15) as usize];
    }
}

/// A trace id as 32 hex digits, without a heap allocation.
#[derive(Clone, Copy)]
pub struct TraceIdText([u8; 32]);

impl TraceIdText {
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("-")
    }
}

impl std::fmt::Display for TraceIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) | 1
}

/// SplitMix64: fast, and every output of one thread distinct.
fn next_u64() -> u64 {
    STATE.with(|state| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn random_span() -> [u8; 8] {
    loop {
        let id = next_u64();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn random_id() -> [u8; 16] {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&random_span());
    id[8..].copy_from_slice(&next_u64().to_be_bytes());
    id
}

/// A uniform draw in [0, 1), for the sampling ratio.
pub fn unit_random() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_and_writes_the_spec_example() {
        let context = TraceContext::parse(VALID.as_bytes()).unwrap();
        assert!(context.sampled());
        assert_eq!(context.header(), VALID);
        assert_eq!(context.header_value(), VALID);
        assert_eq!(
            context.trace_id_text().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let parent = TraceContext::parse(VALID.as_bytes()).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(TraceContext::parse(child.header().as_bytes()), Some(child));
    }

    #[test]
    fn a_child_carries_only_the_sampled_flag() {
        let all = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff";
        let child = TraceContext::parse(all.as_bytes()).unwrap().child();
        assert!(child.header().ends_with("-01"), "{}", child.header());
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe";
        let child = TraceContext::parse(unsampled.as_bytes()).unwrap().child();
        assert!(child.header().ends_with("-00"), "{}", child.header());
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    /// The `test_traceparent_*` cases of the W3C Trace Context test suite
    /// (`test/test.py`): continued (the same trace id) or not.
    #[test]
    fn the_spec_suites_traceparent_cases() {
        const ID: &str = "12345678901234567890123456789012";
        let continued = |pairs: &[(&str, &str)]| {
            TraceContext::from_headers(&headers(pairs))
                .map(|t| t.trace_id_text().as_str().to_string())
                == Some(ID.to_string())
        };
        let one = |value: &str| continued(&[("traceparent", value)]);
        // Continued.
        for name in ["traceparent", "TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
            assert!(
                continued(&[(
                    name,
                    "00-12345678901234567890123456789012-1234567890123456-01"
                )]),
                "{name}"
            );
        }
        for value in [
            "00-12345678901234567890123456789012-1234567890123456-01",
            "cc-12345678901234567890123456789012-1234567890123456-01",
            "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
            " 00-12345678901234567890123456789012-1234567890123456-01",
            "\t00-12345678901234567890123456789012-1234567890123456-01",
            "00-12345678901234567890123456789012-1234567890123456-01 ",
            "00-12345678901234567890123456789012-1234567890123456-01\t",
            "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
        ] {
            assert!(one(value), "{value:?} is continued");
        }
        // A new trace.
        assert!(
            !continued(&[
                (
                    "traceparent",
                    "00-12345678901234567890123456789011-1234567890123456-01"
                ),
                (
                    "traceparent",
                    "00-12345678901234567890123456789012-1234567890123456-01"
                ),
            ]),
            "duplicated"
        );
        assert!(!continued(&[(
            "trace-parent",
            "00-12345678901234567890123456789012-1234567890123456-01"
        )]));
        assert!(!continued(&[(
            "trace.parent",
            "00-12345678901234567890123456789012-1234567890123456-01"
        )]));
        for value in [
            "00-12345678901234567890123456789012-1234567890123456-01.",
            "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
            "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
            "ff-12345678901234567890123456789012-1234567890123456-01",
            ".0-12345678901234567890123456789012-1234567890123456-01",
            "0.-12345678901234567890123456789012-1234567890123456-01",
            "000-12345678901234567890123456789012-1234567890123456-01",
            "0000-12345678901234567890123456789012-1234567890123456-01",
            "0-12345678901234567890123456789012-1234567890123456-01",
            "00-12345678901234567890123456789012-0000000000000000-01",
            "00-12345678901234567890123456789012-.234567890123456-01",
            "00-12345678901234567890123456789012-123456789012345.-01",
            "00-12345678901234567890123456789012-12345678901234567-01",
            "00-12345678901234567890123456789012-123456789012345-01",
            "00-12345678901234567890123456789012-1234567890123456-.0",
            "00-12345678901234567890123456789012-1234567890123456-0.",
            "00-12345678901234567890123456789012-1234567890123456-001",
            "00-12345678901234567890123456789012-1234567890123456-1",
            "00-123456789012345678901234567890123-1234567890123456-01",
            "00-1234567890123456789012345678901-1234567890123456-01",
        ] {
            assert!(!one(value), "{value:?} starts a new trace");
        }
        for value in [
            "00-00000000000000000000000000000000-1234567890123456-01",
            "00-.2345678901234567890123456789012-1234567890123456-01",
            "00-1234567890123456789012345678901.-1234567890123456-01",
        ] {
            assert_eq!(
                TraceContext::from_headers(&headers(&[("traceparent", value)])),
                None,
                "{value:?}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_traceparent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let context = TraceContext::parse(future.as_bytes()).unwrap();
        assert!(!context.sampled());
    }

    #[test]
    fn a_missing_or_broken_header_starts_a_new_trace() {
        let garbage = TraceContext::parse(b"garbage");
        let (started, parent) = TraceContext::continue_or_start(garbage, || true);
        assert!(started.sampled());
        assert_eq!(parent, None);
        let a = TraceContext::root(false);
        let b = TraceContext::root(false);
        assert_ne!(a.trace_id, b.trace_id);
    }
}
