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
//!   `/app/hook`; requests need `Authorization: Bearer <token>`, for the
//!   app's hook a JWT ("Authenticating as a GitHub App"): RS256, signed
//!   by the app's key, `iss` the app's id, `exp` at most 10 minutes after
//!   `iat`, valid now; errors as `{"message", "documentation_url"}`, and
//!   scripted 403 (rate limited) or 500 answers.

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
    /// The fake's own URL, for the absolute `Link` URLs GitHub sends.
    base: String,
    hook: String,
    token: String,
    /// `/app/hook`: the app's id and its public key (PKCS#1 DER).
    app: Option<(String, Vec<u8>)>,
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
        Self::start_with(hook, token, None, secret, target).await
    }

    /// A GitHub App's hook (`/app/hook`): calls must carry a JWT the app's
    /// key signed (`public_key`, PKCS#1 DER) for `app_id`.
    pub async fn start_app(app_id: &str, public_key: &[u8], secret: &str, target: &str) -> Self {
        let app = Some((app_id.to_string(), public_key.to_vec()));
        Self::start_with("/app/hook", "", app, secret, target).await
    }

    async fn start_with(
        hook: &str,
        token: &str,
        app: Option<(String, Vec<u8>)>,
        secret: &str,
        target: &str,
    ) -> Self {
        let state = Arc::new(Mutex::new(State {
            base: String::new(),
            hook: hook.trim_end_matches('/').to_string(),
            token: token.to_string(),
            app,
            secret: secret.to_string(),
            target: target.to_string(),
            deliveries: Vec::new(),
            next_id: 1_000,
            failures: VecDeque::new(),
            redeliveries_asked: Vec::new(),
        }));
        let handler_state = Arc::clone(&state);
        let server = MockServer::start(move |seen| answer(&handler_state, seen)).await;
        state.lock().unwrap().base = server.url();
        Self { server, state }
    }

    /// Where the hook delivers from now on (a sidecar started after the
    /// fake).
    pub fn set_target(&self, target: &str) {
        self.state.lock().unwrap().target = target.to_string();
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

    /// Every delivery of `guid` recorded as failed, as GitHub does when
    /// the receiver took the event but answered after GitHub's 10 s.
    pub fn mark_failed(&self, guid: &str) {
        for d in &mut self.state.lock().unwrap().deliveries {
            if d.guid == guid {
                d.status_code = 504;
            }
        }
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
        "action": serde_json::from_str::<Value>(&d.payload).ok().and_then(|p| p["action"].as_str().map(str::to_string)),
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
    let token = seen.headers.get("authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("token "))
    });
    let Some(token) = token else {
        return error(401, "Requires authentication");
    };
    let refused = match &state.app {
        Some((app_id, key)) => app_jwt_refused(token, app_id, key),
        None => (token != state.token).then_some("Bad credentials"),
    };
    if let Some(message) = refused {
        return error(401, message);
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

/// Why GitHub would refuse `token` as the app's JWT, if it would.
fn app_jwt_refused(token: &str, app_id: &str, public_key: &[u8]) -> Option<&'static str> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Some("A JSON web token could not be decoded");
    };
    let header: Value = b64
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .unwrap_or(Value::Null);
    if header["alg"] != "RS256" {
        return Some("A JSON web token could not be decoded");
    }
    let signed = format!("{}.{}", parts[0], parts[1]);
    let verified = b64.decode(signature).ok().is_some_and(|signature| {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            public_key,
        )
        .verify(signed.as_bytes(), &signature)
        .is_ok()
    });
    if !verified {
        return Some("A JSON web token could not be decoded");
    }
    let claims: Value = b64
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .unwrap_or(Value::Null);
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return Some("A JSON web token could not be decoded");
    };
    let iss = match &claims["iss"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    };
    let now = now_secs();
    if iss != app_id {
        Some("Integration not found")
    } else if exp.saturating_sub(iat) > 600 {
        Some("'Expiration time' claim ('exp') is too far in the future")
    } else if exp <= now {
        Some("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires")
    } else if iat > now + 60 {
        Some("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued")
    } else {
        None
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
            "<{}{}/deliveries?per_page={per_page}&cursor=v1_{}",
            state.base, state.hook, next.id
        );
        if let Some(r) = redelivery {
            link.push_str(&format!("&redelivery={r}"));
        }
        link.push_str(">; rel=\"next\"");
        answer = answer.header("link", &link);
    }
    answer
}
