//! Values that end up in HTTP messages (paths, header values, statuses),
//! parsed into their `http` types when the config is loaded, so nothing
//! built from the config later can fail or panic on them.

use http::uri::PathAndQuery;

use super::error::ValueError;

/// An absolute request path, optionally with a query: `/events/stripe`.
/// Spaces, control characters and other bytes a request line cannot carry
/// are refused here, with the path in the error, rather than met by the
/// first delivery.
pub fn request_path(text: &str) -> Result<PathAndQuery, ValueError> {
    if !text.starts_with('/') {
        return Err(ValueError::PathNotAbsolute(text.into()));
    }
    if text.contains('#') {
        return Err(ValueError::PathFragment(text.into()));
    }
    let unsendable = || ValueError::PathCharacters(text.into());
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(unsendable());
    }
    text.parse::<PathAndQuery>().map_err(|_| unsendable())
}

/// An absolute path without a query, as a listener matches it.
pub fn plain_path(text: &str) -> Result<String, ValueError> {
    let path = request_path(text)?;
    if path.query().is_some() {
        return Err(ValueError::PathQuery(text.into()));
    }
    Ok(text.to_string())
}

/// A header value: visible ASCII, spaces and tabs inside.
pub fn header_value(text: &str) -> Result<http::HeaderValue, ValueError> {
    http::HeaderValue::from_str(text).map_err(|_| ValueError::HeaderValue(text.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_a_request_line_cannot_carry_are_refused() {
        assert_eq!(request_path("/events/stripe").unwrap(), "/events/stripe");
        assert_eq!(request_path("/e?x=1").unwrap().query(), Some("x=1"));
        for bad in ["/events/a b", "events", "/a\tb", "/a\u{7f}", "/a#b", "/é"] {
            assert!(request_path(bad).is_err(), "{bad:?}");
        }
        assert!(plain_path("/webhooks/stripe").is_ok());
        assert!(plain_path("/webhooks?x").is_err());
    }

    #[test]
    fn header_values_are_visible_ascii() {
        assert!(header_value("text/xml; charset=utf-8").is_ok());
        assert!(header_value("a\nb").is_err());
    }
}
