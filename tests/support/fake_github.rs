//! A fake of GitHub's webhook deliveries API, written from its REST
//! reference ("Repository webhook deliveries", "Organization webhook
//! deliveries", "GitHub App webhooks", "Using pagination"), for gap repair:
//!
//! - `GET {hook}/deliveries?per_page=&cursor=&redelivery=`: newest first,
//!   `per_page` up to 100 (default 30), the next page's cursor only in the
//!   `Link` header (`<...&cursor=v1_ID>; rel="next"`); each item `id`,
//!   `guid`, `delivered_at`, `redelivery`, `duration`, `status` (`OK` or
//!   the failure), `status_code`, `event`, `action`, `installation_id`,
//!   `repository_id`;
//! - `GET {hook}/deliveries/{id}`: one, with its `request` and `response`;
//! - `POST {hook}/deliveries/{id}/attempts`: `202 {}`, then the original
//!   payload is sent again to the hook's URL, signed with the hook's secret
//!   (`X-Hub-Signature-256`), with the same `X-GitHub-Delivery` guid, and
//!   recorded as a new delivery with `redelivery: true`;
//! - `{hook}` is `/repos/OWNER/REPO/hooks/ID`, `/orgs/ORG/hooks/ID` or
//!   `/app/hook`; requests need `Authorization: Bearer <token>` (the app's
//!   a JWT: any three dot-separated parts are accepted here, the sidecar's
//!   tests check its claims themselves); errors as `{"message",
//!   "documentation_url"}`, and scripted 403 (rate limited) or 500 answers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::mock::{MockAnswer, MockServer, Seen};

pub struct FakeGitHub {
    pub server: MockServer,
    state: Arc<Mutex<State>>,
}

/// One delivery as GitHub keeps it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: u64,
    pub guid: String,
    pub event: String,
    pub payload: String,
    pub status_code: u16,
    pub redelivery: bool,
    /// Unix seconds.
    pub delivered_at: u64,
}

struct State {
    hook: String,
    token: String,
    secret: String,
    /// Where the hook delivers (the sidecar's webhook URL).
    target: String,
    /// Oldest first.
    deliveries: Vec<Delivery>,
    next_id: u64,
    failures: VecDeque<u16>,
    redeliveries_asked: Vec<u64>,
}

impl FakeGitHub {
    /// `hook` is the hook's API path (`/repos/wedsync/app/hooks/7`);
    /// `target` the URL it delivers to; `secret` its signing secret.
    pub async fn start(hook: &str, token: &str, secret: &str, target: &str) -> Self {
        let state = Arc::new(Mutex::new(State {
            hook: hook.trim_end_matches('/').to_string(),
            token: token.to_string(),
            secret: secret.to_string(),
            target: target.to_string(),
            deliveries: Vec::new(),
            next_id: 1_000,
            failures: VecDeque::new(),
            redeliveries_asked: Vec::new(),
        }));
        let handler_state = Arc::clone(&state);
        let server = MockServer::start(move |seen| answer(&handler_state, seen)).await;
        Self { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The hook delivers `payload` as a new event (a fresh guid): the
    /// delivery is sent to the target now and recorded with its answer
    /// (a target that does not answer is recorded as status 0). Returns
    /// the guid.
    pub async fn send_event(&self, event: &str, payload: &str) -> String {
        let guid = uuid::Uuid::new_v4().to_string();
        deliver(&self.state, &guid, event, payload, false).await;
        guid
    }

    /// An event the hook failed to deliver (the sidecar was down): only
    /// its failed delivery is recorded.
    pub fn failed_event(&self, event: &str, payload: &str, status_code: u16) -> String {
        let guid = uuid::Uuid::new_v4().to_string();
        record(&self.state, &guid, event, payload, status_code, false);
        guid
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().deliveries.clone()
    }

    /// The delivery ids redelivery was asked for, in order.
    pub fn redeliveries_asked(&self) -> Vec<u64> {
        self.state.lock().unwrap().redeliveries_asked.clone()
    }

    /// The next API calls answer these statuses (403, 500) instead.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.state.lock().unwrap().failures.extend(statuses);
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn record(
    state: &Mutex<State>,
    guid: &str,
    event: &str,
    payload: &str,
    status_code: u16,
    redelivery: bool,
) -> u64 {
    let mut state = state.lock().unwrap();
    state.next_id += 1;
    let id = state.next_id;
    state.deliveries.push(Delivery {
        id,
        guid: guid.to_string(),
        event: event.to_string(),
        payload: payload.to_string(),
        status_code,
        redelivery,
        delivered_at: now_secs(),
    });
    id
}

/// Sends `payload` to the hook's target as GitHub does, then records it.
async fn deliver(
    state: &Arc<Mutex<State>>,
    guid: &str,
    event: &str,
    payload: &str,
    redelivery: bool,
) {
    let (target, secret) = {
        let s = state.lock().unwrap();
        (s.target.clone(), s.secret.clone())
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = format!(
        "sha256={}",
        hex(ring::hmac::sign(&key, payload.as_bytes()).as_ref())
    );
    let status = super::client::try_send(
        &target,
        &[
            ("content-type", "application/json"),
            ("user-agent", "GitHub-Hookshot/fake"),
            ("x-github-event", event),
            ("x-github-delivery", guid),
            ("x-hub-signature-256", &signature),
        ],
        payload.as_bytes().to_vec(),
    )
    .await
    .unwrap_or(0);
    record(state, guid, event, payload, status, redelivery);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn error(status: u16, message: &str) -> MockAnswer {
    let body = json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest/webhooks",
        "status": status.to_string(),
    });
    MockAnswer::status(status, &body.to_string())
        .header("content-type", "application/json; charset=utf-8")
}

fn item(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "guid": d.guid,
        "delivered_at": rfc3339(d.delivered_at),
        "redelivery": d.redelivery,
        "duration": 0.05,
        "status": if (200..300).contains(&d.status_code) { "OK".to_string() } else if d.status_code == 0 { "failed to connect to host".to_string() } else { format!("Invalid HTTP Response: {}", d.status_code) },
        "status_code": d.status_code,
        "event": d.event,
        "action": null,
        "installation_id": null,
        "repository_id": 1296269,
        "throttled_at": null,
    })
}

fn rfc3339(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn answer(shared: &Arc<Mutex<State>>, seen: &Seen) -> MockAnswer {
    let mut state = shared.lock().unwrap();
    let authorized = seen
        .headers
        .get("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
        .is_some_and(|token| {
            token == state.token || state.hook == "/app/hook" && token.split('.').count() == 3
        });
    if !authorized {
        return error(401, "Requires authentication");
    }
    if let Some(status) = state.failures.pop_front() {
        return match status {
            403 => error(403, "API rate limit exceeded for installation.")
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", &(now_secs() + 1).to_string()),
            _ => error(status, "Server Error"),
        };
    }
    let (path, query) = seen.uri.split_once('?').unwrap_or((&seen.uri, ""));
    let Some(rest) = path.strip_prefix(&format!("{}/deliveries", state.hook)) else {
        return error(404, "Not Found");
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (seen.method.as_str(), segments.as_slice()) {
        ("GET", []) => list(&state, query),
        ("GET", [id]) => match find(&state, id) {
            Some(d) => {
                let mut value = item(d);
                value["request"] = json!({ "headers": { "X-GitHub-Event": d.event, "X-GitHub-Delivery": d.guid }, "payload": serde_json::from_str::<Value>(&d.payload).unwrap_or(Value::Null) });
                value["response"] = json!({ "headers": {}, "payload": null });
                MockAnswer::ok(&value.to_string())
                    .header("content-type", "application/json; charset=utf-8")
            }
            None => error(404, "Not Found"),
        },
        ("POST", [id, "attempts"]) => match find(&state, id).cloned() {
            Some(d) => {
                state.redeliveries_asked.push(d.id);
                drop(state);
                let shared = Arc::clone(shared);
                tokio::spawn(async move {
                    deliver(&shared, &d.guid, &d.event, &d.payload, true).await;
                });
                MockAnswer::status(202, "{}")
                    .header("content-type", "application/json; charset=utf-8")
            }
            None => error(404, "Not Found"),
        },
        _ => error(404, "Not Found"),
    }
}

fn find<'a>(state: &'a State, id: &str) -> Option<&'a Delivery> {
    let id: u64 = id.parse().ok()?;
    state.deliveries.iter().find(|d| d.id == id)
}

fn list(state: &State, query: &str) -> MockAnswer {
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let get = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let per_page = match get("per_page") {
        None => 30,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return error(422, "per_page must be between 1 and 100"),
        },
    };
    let redelivery = match get("redelivery") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return error(400, "Bad Request"),
    };
    // Newest first; the cursor names the first delivery of its page.
    let newest_first: Vec<&Delivery> = state
        .deliveries
        .iter()
        .rev()
        .filter(|d| redelivery.is_none_or(|r| d.redelivery == r))
        .collect();
    let start = match get("cursor") {
        None => 0,
        Some(cursor) => {
            let id = cursor
                .strip_prefix("v1_")
                .and_then(|id| id.parse::<u64>().ok());
            match id.and_then(|id| newest_first.iter().position(|d| d.id == id)) {
                Some(at) => at,
                None => return error(400, "Bad Request: invalid cursor"),
            }
        }
    };
    let page: Vec<Value> = newest_first
        .iter()
        .skip(start)
        .take(per_page)
        .map(|d| item(d))
        .collect();
    let mut answer = MockAnswer::ok(&Value::Array(page).to_string())
        .header("content-type", "application/json; charset=utf-8");
    if let Some(next) = newest_first.get(start + per_page) {
        let mut link = format!(
            "<{}/deliveries?per_page={per_page}&cursor=v1_{}",
            state.hook, next.id
        );
        if let Some(r) = redelivery {
            link.push_str(&format!("&redelivery={r}"));
        }
        link.push_str(">; rel=\"next\"");
        answer = answer.header("link", &link);
    }
    answer
}
