//! Request ids: kept when the app sends a usable one, generated otherwise.

/// Request ids: a random per-process prefix and a counter, 32 hex digits.
/// Unique like a UUID v4 without a random-number syscall per request, and
/// made as a header value once, then shared by the upstream request, the
/// answer and the log.
pub struct RequestIds {
    prefix: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let prefix = uuid::Uuid::new_v4().as_u64_pair().0;
        Self {
            prefix,
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// Keeps the app's request id when it is 1 to 128 visible token
    /// characters (RFC 9110's `tchar`), otherwise makes one: an id with
    /// spaces or quotes could forge fields of the text access log.
    pub fn for_request(&self, header: Option<&http::HeaderValue>) -> http::HeaderValue {
        match header.filter(|v| is_usable(v.as_bytes())) {
            Some(id) => id.clone(),
            None => {
                let n = self
                    .counter
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                hex_id(self.prefix, n)
            }
        }
    }
}

/// The process's request ids: the egress's, the ingress's and the admin
/// listener's.
pub fn shared() -> &'static RequestIds {
    static SHARED: std::sync::LazyLock<RequestIds> = std::sync::LazyLock::new(RequestIds::default);
    &SHARED
}

/// The request id header every answer of the sidecar's carries.
pub const HEADER: &str = "x-request-id";

/// The longest request id an app may choose.
pub const MAX_REQUEST_ID: usize = 128;

fn is_usable(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| is_tchar(*b))
}

/// RFC 9110 §5.6.2: `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn hex_id(high: u64, low: u64) -> http::HeaderValue {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let bytes = high.to_be_bytes().into_iter().chain(low.to_be_bytes());
    for (pair, byte) in id.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    http::HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_keep_the_apps_and_are_unique_otherwise() {
        let ids = RequestIds::default();
        assert_eq!(
            ids.for_request(Some(&http::HeaderValue::from_static("abc"))),
            "abc"
        );
        let (a, b) = (ids.for_request(None), ids.for_request(None));
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn unusable_app_request_ids_are_replaced() {
        let ids = RequestIds::default();
        let too_long = http::HeaderValue::from_str(&"x".repeat(129)).unwrap();
        let not_text = http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        for unusable in [
            http::HeaderValue::from_static(""),
            too_long,
            not_text,
            http::HeaderValue::from_static("a b"),
            http::HeaderValue::from_static("a\"b"),
            http::HeaderValue::from_static("a=b,c"),
        ] {
            assert_eq!(ids.for_request(Some(&unusable)).len(), 32, "{unusable:?}");
        }
        let longest = http::HeaderValue::from_str(&"x".repeat(128)).unwrap();
        assert_eq!(ids.for_request(Some(&longest)), longest);
    }

    #[test]
    fn generated_ids_are_the_prefix_then_the_counter_in_hex() {
        assert_eq!(
            hex_id(0x0123_4567_89ab_cdef, 255),
            "0123456789abcdef00000000000000ff"
        );
    }
}
