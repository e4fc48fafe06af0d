//! How typed values are written back out in `/admin/config`: durations in the
//! configuration's own syntax, so operators can compare it with their file.

use std::time::Duration;

use serde::Serializer;

use super::units::format_duration;

pub fn duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*value))
}

pub fn percent<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{}%", value * 100.0))
}

/// Anything with a `Display` (paths, header values) as its text.
pub fn display<T: std::fmt::Display, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

pub fn header_value<S: Serializer>(
    value: &http::HeaderValue,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.to_str().unwrap_or_default())
}

pub fn status<S: Serializer>(value: &http::StatusCode, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u16(value.as_u16())
}
