//! `/admin/dead-letters`: list (newest first, filtered by webhook and
//! target, paged by an opaque cursor), show one with every attempt, replay
//! one or all that match, delete one. The `dlq` CLI speaks this API.

use std::time::Duration;

use crate::problem::{ErrorCode, Problem};
use crate::store::records::UNROUTED;
use crate::store::{Attempt, DeadLetter, DeadLetterFilter, Store, StoreError};

/// Items per page unless `limit` says otherwise, and the most it may say.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// Query parameters, decoded.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Self {
            pairs: form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }

    /// Every non-empty `<prefix><name>=value` pair, as (name, value).
    pub fn prefixed(&self, prefix: &str) -> Vec<(String, String)> {
        self.pairs
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .filter_map(|(key, value)| Some((key.strip_prefix(prefix)?.to_string(), value.clone())))
            .filter(|(name, _)| !name.is_empty())
            .collect()
    }

    /// A `true`/`false` parameter; false when not given.
    pub fn flag(&self, name: &str) -> Result<bool, Problem> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(Problem::new(
                ErrorCode::BadRequest,
                format!("{name} must be true or false, not {other:?}"),
            )),
        }
    }

    /// The page size asked for: 1 to 500, 50 when not given.
    pub fn limit(&self) -> Result<usize, Problem> {
        match self.get("limit") {
            None => Ok(DEFAULT_PAGE),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
                _ => Err(Problem::new(
                    ErrorCode::BadRequest,
                    format!("limit must be a number from 1 to {MAX_PAGE}, not {text:?}"),
                )),
            },
        }
    }

    pub fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            webhook: self.get("webhook").map(str::to_string),
            target: self.get("target").map(str::to_string),
        }
    }
}

type Answer = Result<(u16, serde_json::Value), Problem>;

/// Routes `/admin/dead-letters…` (the path after that prefix is `rest`).
pub async fn handle(
    store: &dyn Store,
    method: &http::Method,
    rest: &str,
    query: &Query,
    now_ms: u64,
) -> Answer {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET" | "HEAD", []) => list(store, query).await,
        ("POST", ["replay"]) => {
            let replayed = store
                .replay_all(&query.filter(), now_ms)
                .await
                .map_err(store_problem)?;
            Ok((200, serde_json::json!({ "replayed": replayed })))
        }
        ("GET" | "HEAD", [id]) => {
            let id = parse_id(id)?;
            let dead = find(store, id).await?;
            Ok((200, detail(&dead)))
        }
        ("POST", [id, "replay"]) => {
            let id = parse_id(id)?;
            let dead = find(store, id).await?;
            if dead.job.target == UNROUTED {
                return Err(Problem::new(
                    ErrorCode::Conflict,
                    "this event matched no route, so it has no target to be replayed to",
                ));
            }
            match store.replay(id, now_ms).await.map_err(store_problem)? {
                true => Ok((
                    200,
                    serde_json::json!({ "replayed": 1, "id": id.to_string() }),
                )),
                false => Err(not_found(id)),
            }
        }
        ("DELETE", [id]) => {
            let id = parse_id(id)?;
            match store.delete_dead_letter(id).await.map_err(store_problem)? {
                true => Ok((
                    200,
                    serde_json::json!({ "deleted": 1, "id": id.to_string() }),
                )),
                false => Err(not_found(id)),
            }
        }
        (_, [] | ["replay"] | [_] | [_, "replay"]) => Err(Problem::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed here"),
        )),
        _ => Err(Problem::new(
            ErrorCode::NotFound,
            format!("no admin endpoint at /admin/dead-letters{rest}"),
        )),
    }
}

async fn list(store: &dyn Store, query: &Query) -> Answer {
    let limit = query.limit()?;
    let page = store
        .dead_letters(&query.filter(), query.get("cursor"), limit)
        .await
        .map_err(store_problem)?;
    let items: Vec<serde_json::Value> = page.items.iter().map(summary).collect();
    Ok((
        200,
        serde_json::json!({ "items": items, "next": page.next }),
    ))
}

async fn find(store: &dyn Store, id: u64) -> Result<DeadLetter, Problem> {
    store
        .dead_letter_by_id(id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| not_found(id))
}

pub fn parse_id(text: &str) -> Result<u64, Problem> {
    text.parse().map_err(|_| {
        Problem::new(
            ErrorCode::BadRequest,
            format!("{text:?} is not a dead-letter id (a number)"),
        )
    })
}

fn not_found(id: u64) -> Problem {
    Problem::new(ErrorCode::NotFound, format!("no dead letter {id}"))
}

fn store_problem(error: StoreError) -> Problem {
    match error {
        StoreError::InvalidCursor(_) => Problem::new(ErrorCode::BadRequest, error.to_string()),
        _ => Problem::new(ErrorCode::StoreUnavailable, error.to_string())
            .with_header("retry-after", "1"),
    }
}

/// One row of the list, as the contract names its fields.
pub fn summary(dead: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        // Ids are strings so that no JSON reader rounds them.
        "id": dead.job.id.to_string(),
        "event_id": dead.job.event_id,
        "webhook": dead.job.webhook,
        "target": dead.job.target,
        "event_type": dead.job.event_type,
        "reason": dead.reason,
        "attempts": dead.job.attempts,
        "last_error": dead.last_error(),
        "dead_at": rfc3339(dead.dead_at_ms),
    })
}

/// The summary, with when the event came in and every attempt kept.
fn detail(dead: &DeadLetter) -> serde_json::Value {
    let mut value = summary(dead);
    value["priority"] = serde_json::json!(dead.job.priority);
    value["received_at"] = serde_json::json!(rfc3339(dead.job.received_at_ms));
    value["history"] = dead.job.history.iter().map(attempt).collect();
    value
}

fn attempt(attempt: &Attempt) -> serde_json::Value {
    serde_json::json!({
        "at": rfc3339(attempt.at_ms),
        "duration_ms": attempt.duration_ms,
        "backend": attempt.backend,
        "status": attempt.status,
        "error": attempt.error,
    })
}

/// Unix milliseconds as RFC 3339 UTC (`2026-11-27T13:04:05.123Z`).
pub fn rfc3339(unix_ms: u64) -> String {
    let time = Duration::from_millis(unix_ms);
    let days = (time.as_secs() / 86_400) as i64;
    let seconds_of_day = time.as_secs() % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_784_645_123), "2026-11-27T13:04:05.123Z");
    }

    #[test]
    fn empty_query_values_filter_nothing() {
        let query = Query::parse(Some("webhook=stripe&target=&cursor="));
        assert_eq!(
            query.filter(),
            DeadLetterFilter {
                webhook: Some("stripe".into()),
                target: None
            }
        );
        assert_eq!(query.get("cursor"), None);
    }
}
