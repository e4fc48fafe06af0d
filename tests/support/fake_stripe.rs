//! A fake of Stripe's Events API, written from its public reference
//! ("List all events", "Retrieve an event", "Pagination", "Errors"), for
//! gap repair: `GET /v1/events` and `GET /v1/events/{id}` behind a secret
//! key, newest first, with what the reference documents of the list:
//!
//! - `created` as a Unix time or a range (`created[gt]`, `created[gte]`,
//!   `created[lt]`, `created[lte]`);
//! - `delivery_success`: `false` lists the events with webhooks still
//!   pending or failed (`pending_webhooks > 0`), `true` the others;
//! - `type` (one name, `*` as a wildcard) or `types[]` (up to 20 names),
//!   not both;
//! - `limit` 1 to 100 (default 10), `starting_after` / `ending_before`
//!   cursors (an event id; an unknown one is `resource_missing`), `has_more`;
//! - errors as `{"error": {"type", "code", "message", "param"}}`: 401
//!   without the key, 400 for a bad parameter, 404 for an unknown event,
//!   and scripted 429 (`rate_limit_error`) and 500 (`api_error`) answers.
//!
//! Events are kept in the order they were created; `data.object` is
//! whatever the test gives.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::mock::{MockAnswer, MockServer, Seen};

pub struct FakeStripe {
    pub server: MockServer,
    state: Arc<Mutex<State>>,
}

struct State {
    key: String,
    /// Oldest first.
    events: Vec<Value>,
    /// Statuses the next list calls answer instead of a page.
    failures: VecDeque<u16>,
    /// (list call number, from 1; status): that call fails.
    failing_calls: Vec<(usize, u16)>,
    /// How long each list answer takes.
    delay: std::time::Duration,
    list_calls: usize,
}

impl FakeStripe {
    /// Serves on a free port; requests need `Authorization: Bearer <key>`.
    pub async fn start(key: &str) -> Self {
        let state = Arc::new(Mutex::new(State {
            key: key.to_string(),
            events: Vec::new(),
            failures: VecDeque::new(),
            failing_calls: Vec::new(),
            delay: std::time::Duration::ZERO,
            list_calls: 0,
        }));
        let handler_state = Arc::clone(&state);
        let server =
            MockServer::start(move |seen| answer(&mut handler_state.lock().unwrap(), seen)).await;
        Self { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// An event created at `created` (Unix seconds), with `pending` of its
    /// webhook deliveries not yet successful; returns the event object.
    pub fn add_event(
        &self,
        id: &str,
        event_type: &str,
        created: u64,
        api_version: &str,
        pending: u32,
        object: Value,
    ) -> Value {
        let event = json!({
            "id": id,
            "object": "event",
            "api_version": api_version,
            "created": created,
            "data": { "object": object },
            "livemode": false,
            "pending_webhooks": pending,
            "request": { "id": null, "idempotency_key": null },
            "type": event_type,
        });
        let mut state = self.state.lock().unwrap();
        state.events.push(event.clone());
        state
            .events
            .sort_by_key(|e| e["created"].as_u64().unwrap_or(0));
        event
    }

    /// The event's webhooks all succeeded (a provider retry got through).
    pub fn mark_delivered(&self, id: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(event) = state.events.iter_mut().find(|e| e["id"] == id) {
            event["pending_webhooks"] = json!(0);
        }
    }

    /// The next list calls answer these statuses (429, 500) instead.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.state.lock().unwrap().failures.extend(statuses);
    }

    /// List call `n` (counting from 1, all calls so far included) answers
    /// `status`: a run that fails mid-way.
    pub fn fail_list_call(&self, n: usize, status: u16) {
        self.state.lock().unwrap().failing_calls.push((n, status));
    }

    /// Every list answer from now on takes `delay` (a slow API).
    pub fn slow(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn list_calls(&self) -> usize {
        self.state.lock().unwrap().list_calls
    }
}

fn error(
    status: u16,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> MockAnswer {
    let mut body = json!({ "error": { "type": kind, "message": message } });
    if let Some(code) = code {
        body["error"]["code"] = json!(code);
    }
    if let Some(param) = param {
        body["error"]["param"] = json!(param);
    }
    MockAnswer::status(status, &body.to_string())
        .header("content-type", "application/json")
        .header("request-id", "req_fake")
}

fn invalid(message: &str, param: &str) -> MockAnswer {
    error(
        400,
        "invalid_request_error",
        Some("parameter_invalid"),
        message,
        Some(param),
    )
}

fn answer(state: &mut State, seen: &Seen) -> MockAnswer {
    let authorized = seen
        .headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| key == state.key);
    if !authorized {
        return error(
            401,
            "invalid_request_error",
            None,
            "Invalid API Key provided",
            None,
        );
    }
    if seen.method != "GET" {
        return error(
            405,
            "invalid_request_error",
            None,
            "Unrecognized request method",
            None,
        );
    }
    let (path, query) = seen.uri.split_once('?').unwrap_or((&seen.uri, ""));
    let params = parse_query(query);
    match path.strip_prefix("/v1/events") {
        Some("") | Some("/") => {
            state.list_calls += 1;
            let scripted = state
                .failing_calls
                .iter()
                .find(|(n, _)| *n == state.list_calls)
                .map(|(_, status)| *status);
            if let Some(status) = scripted.or_else(|| state.failures.pop_front()) {
                return match status {
                    429 => error(
                        429,
                        "rate_limit_error",
                        Some("rate_limit"),
                        "Too many requests hit the API too quickly.",
                        None,
                    ),
                    _ => error(status, "api_error", None, "An unknown error occurred", None),
                };
            }
            list(state, &params).delayed(state.delay)
        }
        Some(rest) if rest.starts_with('/') => {
            let id = &rest[1..];
            match state.events.iter().find(|e| e["id"] == id) {
                Some(event) => {
                    MockAnswer::ok(&event.to_string()).header("content-type", "application/json")
                }
                None => error(
                    404,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such event: '{id}'"),
                    Some("id"),
                ),
            }
        }
        _ => error(
            404,
            "invalid_request_error",
            None,
            &format!("Unrecognized request URL (GET: {path})"),
            None,
        ),
    }
}

fn list(state: &State, params: &[(String, String)]) -> MockAnswer {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = match get("limit") {
        None => 10,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return invalid("Limit must be between 1 and 100.", "limit"),
        },
    };
    // created: one time, or a range.
    let mut bounds: Vec<(&str, u64)> = Vec::new();
    for (key, value) in params {
        let op = match key.as_str() {
            "created" => "eq",
            "created[gt]" => "gt",
            "created[gte]" => "gte",
            "created[lt]" => "lt",
            "created[lte]" => "lte",
            _ => continue,
        };
        match value.parse::<u64>() {
            Ok(at) => bounds.push((op, at)),
            Err(_) => return invalid(&format!("Invalid integer: {value}"), key),
        }
    }
    let delivery_success = match get("delivery_success") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => return invalid(&format!("Invalid boolean: {other}"), "delivery_success"),
    };
    let types: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "types[]" || k.starts_with("types[") && k.ends_with(']'))
        .map(|(_, v)| v.as_str())
        .collect();
    let single = get("type");
    if single.is_some() && !types.is_empty() {
        return invalid(
            "You may pass either `type` or `types`, but not both.",
            "types",
        );
    }
    if types.len() > 20 {
        return invalid("You may pass up to 20 types.", "types");
    }
    let type_matches = |event_type: &str| match single {
        Some(pattern) => match pattern.strip_suffix('*') {
            Some(prefix) => event_type.starts_with(prefix),
            None => event_type == pattern,
        },
        None => types.is_empty() || types.contains(&event_type),
    };
    // Newest first, then the filters.
    let matching: Vec<&Value> = state
        .events
        .iter()
        .rev()
        .filter(|e| {
            let created = e["created"].as_u64().unwrap_or(0);
            bounds.iter().all(|(op, at)| match *op {
                "eq" => created == *at,
                "gt" => created > *at,
                "gte" => created >= *at,
                "lt" => created < *at,
                _ => created <= *at,
            })
        })
        .filter(|e| {
            delivery_success
                .is_none_or(|success| (e["pending_webhooks"].as_u64().unwrap_or(0) == 0) == success)
        })
        .filter(|e| type_matches(e["type"].as_str().unwrap_or("")))
        .collect();
    let position = |param: &str, id: &str| -> Result<usize, MockAnswer> {
        state
            .events
            .iter()
            .rev()
            .position(|e| e["id"] == id)
            .ok_or_else(|| {
                error(
                    400,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such event: '{id}'"),
                    Some(param),
                )
            })
    };
    // Cursors name a place in the whole list (newest first).
    let order = |e: &Value| {
        state
            .events
            .iter()
            .rev()
            .position(|x| x["id"] == e["id"])
            .unwrap_or(usize::MAX)
    };
    let (page, has_more) = match (get("starting_after"), get("ending_before")) {
        (Some(_), Some(_)) => {
            return invalid(
                "You may pass only one of starting_after and ending_before.",
                "ending_before",
            )
        }
        (Some(after), None) => {
            let at = match position("starting_after", after) {
                Ok(at) => at,
                Err(answer) => return answer,
            };
            let older: Vec<&Value> = matching.iter().copied().filter(|e| order(e) > at).collect();
            let more = older.len() > limit;
            (older.into_iter().take(limit).collect::<Vec<_>>(), more)
        }
        (None, Some(before)) => {
            let at = match position("ending_before", before) {
                Ok(at) => at,
                Err(answer) => return answer,
            };
            let newer: Vec<&Value> = matching.iter().copied().filter(|e| order(e) < at).collect();
            let more = newer.len() > limit;
            let skip = newer.len().saturating_sub(limit);
            (newer.into_iter().skip(skip).collect::<Vec<_>>(), more)
        }
        (None, None) => {
            let more = matching.len() > limit;
            (matching.into_iter().take(limit).collect::<Vec<_>>(), more)
        }
    };
    let body = json!({
        "object": "list",
        "url": "/v1/events",
        "has_more": has_more,
        "data": page,
    });
    MockAnswer::ok(&body.to_string()).header("content-type", "application/json")
}

/// `a=1&created%5Bgte%5D=2&types%5B%5D=x`: decoded pairs, in order.
fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}
