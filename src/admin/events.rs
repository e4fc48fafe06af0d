//! `/admin/events`: the event log. List (newest first, filtered, paged by
//! an opaque cursor, with an estimate of the total), show one event with
//! its headers, body and every attempt per target, redeliver one, or
//! redeliver exactly what a filter matches (counted first on a dry run).
//! The `events` CLI speaks this API.

use base64::Engine as _;

use super::dead_letters::{rfc3339, Query};
use crate::config::units::parse_duration;
use crate::problem::{ErrorCode, Problem};
use crate::store::history::{
    status_of, EventDetail, EventFilter, EventStatus, Redelivered, DEFAULT_REDELIVER_MAX,
};
use crate::store::records::{Attempt, StoredEvent, TargetOutcome, TargetStatus, UNROUTED};
use crate::store::{Store, StoreError};

type Answer = Result<(u16, serde_json::Value), Problem>;

/// Routes `/admin/events…` (the path after that prefix is `rest`).
pub async fn handle(
    store: &dyn Store,
    method: &http::Method,
    rest: &str,
    query: &Query,
    now_ms: u64,
) -> Answer {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET" | "HEAD", []) => list(store, query, now_ms).await,
        ("POST", ["redeliver"]) => redeliver_matching(store, query, now_ms).await,
        ("GET" | "HEAD", [source, id]) => {
            let detail = find(store, source, id).await?;
            Ok((200, detail_json(&detail)))
        }
        ("POST", [source, id, "redeliver"]) => {
            let detail = find(store, source, id).await?;
            let target = query.get("target");
            if let Some(target) = target {
                if !detail.event.targets.iter().any(|t| t.target == *target) {
                    return Err(Problem::new(
                        ErrorCode::NotFound,
                        format!("event {} is not delivered to {target:?}", detail.event.id),
                    ));
                }
            }
            let queued = store
                .redeliver(detail.sequence, target, now_ms)
                .await
                .map_err(store_problem)?
                .ok_or_else(|| not_found(&detail.event.webhook, &detail.event.id))?;
            Ok((
                200,
                serde_json::json!({
                    "queued": queued,
                    "source": detail.event.webhook,
                    "id": detail.event.id,
                }),
            ))
        }
        (_, [] | ["redeliver"] | [_, _] | [_, _, "redeliver"]) => Err(Problem::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed here"),
        )),
        _ => Err(Problem::new(
            ErrorCode::NotFound,
            format!("no admin endpoint at /admin/events{rest}"),
        )),
    }
}

async fn list(store: &dyn Store, query: &Query, now_ms: u64) -> Answer {
    let limit = query.limit()?;
    let filter = filter(query, now_ms)?;
    let page = store
        .events(&filter, query.get("cursor"), limit)
        .await
        .map_err(store_problem)?;
    let items: Vec<serde_json::Value> = page.items.iter().map(|(_, e)| summary(e)).collect();
    Ok((
        200,
        serde_json::json!({
            "items": items,
            "next": page.next,
            "total_estimate": page.total_estimate,
        }),
    ))
}

async fn redeliver_matching(store: &dyn Store, query: &Query, now_ms: u64) -> Answer {
    let filter = filter(query, now_ms)?;
    let max = match query.get("max") {
        None => DEFAULT_REDELIVER_MAX,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (1..=DEFAULT_REDELIVER_MAX).contains(&n) => n,
            _ => {
                return Err(Problem::new(
                    ErrorCode::BadRequest,
                    format!("max must be a number from 1 to {DEFAULT_REDELIVER_MAX}, not {text:?}"),
                ))
            }
        },
    };
    let dry_run = query.flag("dry_run")?;
    match store
        .redeliver_matching(&filter, max, dry_run, now_ms)
        .await
        .map_err(store_problem)?
    {
        Redelivered::Matched(n) if dry_run => Ok((200, serde_json::json!({ "matched": n }))),
        Redelivered::Matched(n) => Err(Problem::new(
            ErrorCode::BadRequest,
            format!(
                "the filter matches {n} events, more than max ({max}): narrow it, or redeliver in parts"
            ),
        )),
        Redelivered::Queued(n) => Ok((200, serde_json::json!({ "queued": n }))),
    }
}

/// The filter a query asks for; a value that cannot be read is a 400.
pub fn filter(query: &Query, now_ms: u64) -> Result<EventFilter, Problem> {
    let bad = |detail: String| Problem::new(ErrorCode::BadRequest, detail);
    let status = match query.get("status") {
        None => None,
        Some(text) => Some(EventStatus::parse(text).ok_or_else(|| {
            bad(format!(
                "status must be pending, delivered, dead or partial, not {text:?}"
            ))
        })?),
    };
    let time = |name: &str| -> Result<Option<u64>, Problem> {
        query
            .get(name)
            .map(|text| {
                parse_time(text, now_ms).ok_or_else(|| {
                    bad(format!(
                        "{name} must be an RFC 3339 time (2026-12-05T10:00:00Z) or a duration back from now (2h), not {text:?}"
                    ))
                })
            })
            .transpose()
    };
    Ok(EventFilter {
        source: query.get("source").map(str::to_string),
        event_type: query.get("type").map(str::to_string),
        status,
        target: query.get("target").map(str::to_string),
        context: query.prefixed("context."),
        since_ms: time("since")?,
        until_ms: time("until")?,
    })
}

/// An RFC 3339 time, or a duration back from `now_ms`, as Unix ms.
pub fn parse_time(text: &str, now_ms: u64) -> Option<u64> {
    if let Ok(back) = parse_duration(text) {
        return Some(now_ms.saturating_sub(back.as_millis() as u64));
    }
    parse_rfc3339(text)
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` as Unix ms; None otherwise.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || !text.is_ascii() {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[3..4], ":") => {
            let sign = match &rest[..1] {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let (h, m) = (
                rest[1..3].parse::<i64>().ok()?,
                rest[4..6].parse::<i64>().ok()?,
            );
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1000 + millis).ok()
}

async fn find(store: &dyn Store, source: &str, id: &str) -> Result<EventDetail, Problem> {
    let (source, id) = (decode_segment(source)?, decode_segment(id)?);
    store
        .event_detail(&source, &id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| not_found(&source, &id))
}

/// A path segment, percent-decoded (an id may hold `/` or spaces).
fn decode_segment(segment: &str) -> Result<String, Problem> {
    let bytes: Vec<u8> = percent_decode(segment.as_bytes());
    String::from_utf8(bytes).map_err(|_| {
        Problem::new(
            ErrorCode::BadRequest,
            format!("{segment:?} is not percent-encoded UTF-8"),
        )
    })
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match (input[i], input.get(i + 1), input.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(hex(h).unwrap_or(0) << 4 | hex(l).unwrap_or(0));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn not_found(source: &str, id: &str) -> Problem {
    Problem::new(
        ErrorCode::NotFound,
        format!("no event {id:?} from {source:?} is kept"),
    )
}

fn store_problem(error: StoreError) -> Problem {
    match error {
        StoreError::InvalidCursor(_) => Problem::new(ErrorCode::BadRequest, error.to_string()),
        _ => Problem::new(ErrorCode::StoreUnavailable, error.to_string())
            .with_header("retry-after", "1"),
    }
}

fn trace_id(event: &StoredEvent) -> Option<&str> {
    event.trace.as_deref()?.split('-').nth(1)
}

/// One row of the list.
pub fn summary(event: &StoredEvent) -> serde_json::Value {
    let context: serde_json::Map<String, serde_json::Value> = event
        .context
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let targets: Vec<serde_json::Value> = event
        .targets
        .iter()
        .map(|t| {
            let mut value = serde_json::json!({
                "target": target_name(t),
                "status": t.status.as_str(),
            });
            if let Some(id) = dead_letter_id(t) {
                value["dead_letter"] = serde_json::json!(id);
            }
            value
        })
        .collect();
    serde_json::json!({
        "source": event.webhook,
        "id": event.id,
        "type": event.event_type,
        "status": status_of(event).as_str(),
        "received_at": rfc3339(event.received_at_ms),
        "finished_at": event.finished_at_ms.map(rfc3339),
        "recovered": event.recovered,
        "priority": event.priority.map(|p| p.as_str()),
        "context": context,
        "trace_id": trace_id(event),
        "size": event.size,
        "targets": targets,
    })
}

/// A dead target's dead letter (`/admin/dead-letters/{id}`): its job's.
fn dead_letter_id(outcome: &TargetOutcome) -> Option<String> {
    (outcome.status == TargetStatus::Dead)
        .then_some(outcome.job)
        .flatten()
        .map(|job| job.to_string())
}

fn target_name(outcome: &TargetOutcome) -> &str {
    if outcome.target == UNROUTED {
        "(unrouted)"
    } else {
        outcome.target.as_str()
    }
}

/// The whole record: the summary with headers, body and every attempt per
/// target (a pending target's include its job's so far).
fn detail_json(detail: &EventDetail) -> serde_json::Value {
    let event = &detail.event;
    let mut value = summary(event);
    value["content_type"] = serde_json::json!(event.content_type);
    value["headers"] = event
        .headers
        .iter()
        .map(|(k, v)| serde_json::json!([k, v]))
        .collect();
    match std::str::from_utf8(&detail.body) {
        Ok(text) => {
            value["body"] = serde_json::json!(text);
            value["body_encoding"] = serde_json::json!("utf-8");
        }
        Err(_) => {
            value["body"] =
                serde_json::json!(base64::engine::general_purpose::STANDARD.encode(&detail.body));
            value["body_encoding"] = serde_json::json!("base64");
        }
    }
    value["targets"] = event
        .targets
        .iter()
        .map(|outcome| {
            let mut attempts: Vec<&Attempt> = outcome.attempts.iter().collect();
            let live = detail
                .jobs
                .iter()
                .find(|j| Some(j.id) == outcome.job && outcome.status == TargetStatus::Pending);
            if let Some(job) = live {
                attempts.extend(job.history.iter());
            }
            serde_json::json!({
                "target": target_name(outcome),
                "status": outcome.status.as_str(),
                "attempts": attempts.into_iter().map(attempt_json).collect::<Vec<_>>(),
                "next_attempt_at": live.filter(|j| !j.leased).map(|j| rfc3339(j.due_ms)),
                "dead_letter": dead_letter_id(outcome),
            })
        })
        .collect();
    value
}

fn attempt_json(attempt: &Attempt) -> serde_json::Value {
    serde_json::json!({
        "at": rfc3339(attempt.at_ms),
        "duration_ms": attempt.duration_ms,
        "backend": attempt.backend,
        "status": attempt.status,
        "error": attempt.error,
        "response": attempt.response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_read_back() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-27T13:04:05.123Z"),
            Some(1_795_784_645_123)
        );
        assert_eq!(
            parse_rfc3339("2026-11-27T14:04:05.123+01:00"),
            Some(1_795_784_645_123)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-11-27",
            "2026-11-27T13:04:05",
            "2026-11-27T13:04:05+1:00",
            "yesterday",
            "2026-11-27T13:04:05.Z",
            "２０２６-11-27T13:04:05Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(
            rfc3339(parse_rfc3339("2026-12-05T10:00:00Z").unwrap()),
            "2026-12-05T10:00:00.000Z"
        );
    }

    #[test]
    fn since_takes_a_duration_back_from_now() {
        assert_eq!(parse_time("2h", 10_000_000), Some(10_000_000 - 7_200_000));
        assert_eq!(parse_time("2h", 1_000), Some(0));
    }

    #[test]
    fn a_query_becomes_a_filter_and_bad_values_are_named() {
        let query = Query::parse(Some(
            "source=stripe&type=payment_intent.*&status=dead&target=ledger&context.wedding_id=w-42&since=1h",
        ));
        let filter = filter(&query, 7_200_000).unwrap();
        assert_eq!(filter.source.as_deref(), Some("stripe"));
        assert_eq!(filter.event_type.as_deref(), Some("payment_intent.*"));
        assert_eq!(filter.status, Some(EventStatus::Dead));
        assert_eq!(filter.target.as_deref(), Some("ledger"));
        assert_eq!(filter.context, vec![("wedding_id".into(), "w-42".into())]);
        assert_eq!(filter.since_ms, Some(3_600_000));
        let bad = super::filter(&Query::parse(Some("status=lost")), 0).unwrap_err();
        assert!(bad.detail.contains("status must be"), "{}", bad.detail);
        let bad = super::filter(&Query::parse(Some("until=tomorrow")), 0).unwrap_err();
        assert!(bad.detail.contains("until must be"), "{}", bad.detail);
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(decode_segment("evt%2F1%20a").unwrap(), "evt/1 a");
        assert_eq!(decode_segment("100%").unwrap(), "100%");
        assert!(decode_segment("%ff").is_err());
    }
}
