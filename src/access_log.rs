//! The egress access log: one line per request, in the same text or JSON
//! shape as every other log line, filtered like them (`RUST_LOG=warn` or
//! `RUST_LOG=info,access=off` turns it off).
//!
//! It does not go through a generic `tracing` event: formatting one costs as
//! much as proxying the request, and writing each line with its own system
//! call costs more. Lines are formatted by hand into a shared buffer that a
//! background thread writes out every [`FLUSH_INTERVAL`], or sooner once
//! [`FLUSH_SIZE`] bytes wait. A writer that cannot keep up (a blocked pipe)
//! slows requests down once [`MAX_BUFFERED`] bytes wait; lines are never
//! dropped. The process flushes before it exits.

use std::io::Write;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const FLUSH_SIZE: usize = 64 * 1024;
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

/// How log lines are written: human-readable (the default) or one JSON
/// object per line (`--log-format json`), for the access log and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What one line records. Never a header, a query or a secret.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub service: &'a str,
    /// The upstream group's backend that served the last attempt.
    pub backend: Option<&'a str>,
    /// The W3C trace id of the exchange (32 hex digits); None when
    /// `tracing.propagate` is off.
    pub trace_id: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    /// 0 when no answer was written.
    pub status: u16,
    pub duration: Duration,
    /// The sidecar's own error code when it answered for itself.
    pub sidecar_error: Option<&'static str>,
    /// Pingora's error type when the exchange failed.
    pub error: Option<&'static str>,
}

struct Sink {
    format: LogFormat,
    buffer: Mutex<Vec<u8>>,
    wake: Condvar,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the writer thread. Lines recorded before this are not written.
pub fn init(format: LogFormat) {
    let sink = Sink {
        format,
        buffer: Mutex::new(Vec::with_capacity(FLUSH_SIZE)),
        wake: Condvar::new(),
    };
    if SINK.set(sink).is_ok() {
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(write_out_forever)
            .expect("spawning the access-log writer");
    }
}

/// Records one request if the access log is enabled.
pub fn record(entry: &Entry<'_>) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let Some(sink) = SINK.get() else { return };
    let mut buffer = lock(&sink.buffer);
    format_line(&mut buffer, sink.format, SystemTime::now(), entry);
    if buffer.len() >= MAX_BUFFERED {
        let full = std::mem::take(&mut *buffer);
        write_stderr(&full); // back-pressure: the caller waits for the writer
    } else if buffer.len() >= FLUSH_SIZE {
        sink.wake.notify_one();
    }
}

/// Writes out every recorded line; called before the process exits.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let pending = std::mem::take(&mut *lock(&sink.buffer));
        write_stderr(&pending);
    }
}

fn write_out_forever() {
    crate::os::lower_this_thread();
    let Some(sink) = SINK.get() else { return };
    loop {
        let pending = {
            let buffer = lock(&sink.buffer);
            let (mut buffer, _) = sink
                .wake
                .wait_timeout(buffer, FLUSH_INTERVAL)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::replace(&mut *buffer, Vec::with_capacity(FLUSH_SIZE))
        };
        write_stderr(&pending);
    }
}

fn lock(buffer: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    // A panic while appending leaves at worst a partial line; keep logging.
    buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_stderr(bytes: &[u8]) {
    if !bytes.is_empty() {
        let _ = std::io::stderr().lock().write_all(bytes);
    }
}

/// One line, newline included, shaped like the `tracing` lines around it.
pub fn format_line(out: &mut Vec<u8>, format: LogFormat, now: SystemTime, entry: &Entry<'_>) {
    match format {
        LogFormat::Text => {
            push_timestamp(out, now);
            out.extend_from_slice(b"  INFO access: egress request_id=");
            out.extend_from_slice(entry.request_id.as_bytes());
            if let Some(trace_id) = entry.trace_id {
                out.extend_from_slice(b" trace_id=");
                out.extend_from_slice(trace_id.as_bytes());
            }
            out.extend_from_slice(b" service=");
            out.extend_from_slice(entry.service.as_bytes());
            if let Some(backend) = entry.backend {
                out.extend_from_slice(b" backend=");
                out.extend_from_slice(backend.as_bytes());
            }
            out.extend_from_slice(b" method=");
            out.extend_from_slice(entry.method.as_bytes());
            out.extend_from_slice(b" path=");
            out.extend_from_slice(entry.path.as_bytes());
            out.extend_from_slice(b" status=");
            push_number(out, u64::from(entry.status), 1);
            out.extend_from_slice(b" duration_ms=");
            push_millis(out, entry.duration);
            if let Some(code) = entry.sidecar_error {
                out.extend_from_slice(b" sidecar_error=");
                out.extend_from_slice(code.as_bytes());
            }
            if let Some(error) = entry.error {
                out.extend_from_slice(b" error=");
                out.extend_from_slice(error.as_bytes());
            }
        }
        LogFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            push_timestamp(out, now);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"egress\"");
            push_json_field(out, "request_id", entry.request_id);
            if let Some(trace_id) = entry.trace_id {
                push_json_field(out, "trace_id", trace_id);
            }
            push_json_field(out, "service", entry.service);
            if let Some(backend) = entry.backend {
                push_json_field(out, "backend", backend);
            }
            push_json_field(out, "method", entry.method);
            push_json_field(out, "path", entry.path);
            out.extend_from_slice(b",\"status\":");
            push_number(out, u64::from(entry.status), 1);
            out.extend_from_slice(b",\"duration_ms\":");
            push_millis(out, entry.duration);
            if let Some(code) = entry.sidecar_error {
                push_json_field(out, "sidecar_error", code);
            }
            if let Some(error) = entry.error {
                push_json_field(out, "error", error);
            }
            out.extend_from_slice(b",\"target\":\"access\"}");
        }
    }
    out.push(b'\n');
}

fn push_json_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    // Writing a string into a Vec cannot fail; serde_json does the escaping.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// RFC 3339 in UTC with microseconds, like the `tracing` lines.
fn push_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let in_day = seconds % 86_400;
    push_number(out, year as u64, 4);
    out.push(b'-');
    push_number(out, month, 2);
    out.push(b'-');
    push_number(out, day, 2);
    out.push(b'T');
    push_number(out, in_day / 3600, 2);
    out.push(b':');
    push_number(out, in_day / 60 % 60, 2);
    out.push(b':');
    push_number(out, in_day % 60, 2);
    out.push(b'.');
    push_number(out, u64::from(since_epoch.subsec_micros()), 6);
    out.push(b'Z');
}

/// Milliseconds with three decimals, without float formatting.
fn push_millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = duration.as_micros().min(u128::from(u64::MAX)) as u64;
    push_number(out, micros / 1000, 1);
    out.push(b'.');
    push_number(out, micros % 1000, 3);
}

/// `n` in decimal, zero-padded to at least `width` digits.
fn push_number(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    while n > 0 || digits.len() - start < width {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[start..]);
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            request_id: "req-\"1\"",
            service: "stripe",
            backend: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            method: "POST",
            path: "/v1/charges",
            status: 502,
            duration: Duration::from_micros(12_345),
            sidecar_error: Some("upstream_unreachable"),
            error: Some("ConnectRefused"),
        }
    }

    fn at(seconds: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, micros * 1000)
    }

    #[test]
    fn text_lines_look_like_the_other_log_lines() {
        let mut out = Vec::new();
        format_line(&mut out, LogFormat::Text, at(1_795_775_405, 42), &entry());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-27T10:30:05.000042Z  INFO access: egress request_id=req-\"1\" \
             trace_id=4bf92f3577b34da6a3ce929d0e0e4736 service=stripe \
             method=POST path=/v1/charges status=502 duration_ms=12.345 \
             sidecar_error=upstream_unreachable error=ConnectRefused\n"
        );
    }

    #[test]
    fn json_lines_are_valid_json_with_escaped_strings() {
        let mut out = Vec::new();
        let mut plain = entry();
        plain.sidecar_error = None;
        plain.error = None;
        plain.status = 200;
        format_line(&mut out, LogFormat::Json, at(0, 0), &plain);
        assert_eq!(out.last(), Some(&b'\n'));
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "timestamp": "1970-01-01T00:00:00.000000Z", "level": "INFO",
                "message": "egress", "target": "access", "request_id": "req-\"1\"",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "service": "stripe", "method": "POST", "path": "/v1/charges",
                "status": 200, "duration_ms": 12.345
            })
        );
    }

    #[test]
    fn dates_are_right_across_leap_years_and_centuries() {
        for (seconds, expected) in [
            (951_782_400, "2000-02-29T00:00:00"),
            (4_107_542_399, "2100-02-28T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
            (1_709_164_800, "2024-02-29T00:00:00"),
        ] {
            let mut out = Vec::new();
            push_timestamp(&mut out, at(seconds, 0));
            assert_eq!(&String::from_utf8(out).unwrap()[..19], expected);
        }
    }

    #[test]
    fn numbers_are_padded_and_durations_keep_three_decimals() {
        let mut out = Vec::new();
        push_number(&mut out, 7, 3);
        out.push(b' ');
        push_number(&mut out, 0, 1);
        out.push(b' ');
        push_millis(&mut out, Duration::from_micros(5));
        out.push(b' ');
        push_millis(&mut out, Duration::from_secs(2));
        assert_eq!(String::from_utf8(out).unwrap(), "007 0 0.005 2000.000");
    }
}
