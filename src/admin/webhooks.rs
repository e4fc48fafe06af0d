//! `/admin/webhooks`: each webhook and its gap repair (the last run's time,
//! outcome, error and findings, and the checkpoint), and
//! `POST /admin/webhooks/{name}/recover[?since=6h&dry_run=true]`: one run
//! now (the `recover` CLI speaks this).

use crate::config::units::{format_duration, parse_duration};
use crate::config::webhooks::Webhook;
use crate::problem::{ErrorCode, Problem};
use crate::store::Store;
use crate::webhooks::recover::state::RecoverState;
use crate::webhooks::recover::{GapRepair, RecoverError, RunRequest};
use crate::webhooks::Webhooks;

use super::dead_letters::{rfc3339, Query};

type Answer = Result<(u16, serde_json::Value), Problem>;

pub async fn handle(
    webhooks: &Webhooks,
    store: &dyn Store,
    repair: Option<&GapRepair>,
    method: &http::Method,
    rest: &str,
    query: &Query,
) -> Answer {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET" | "HEAD", []) => list(webhooks, store).await,
        ("POST", [name, "recover"]) => recover_now(repair, name, query).await,
        (_, [] | [_, "recover"]) => Err(Problem::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed here"),
        )),
        _ => Err(Problem::new(
            ErrorCode::NotFound,
            format!("no admin endpoint at /admin/webhooks{rest}"),
        )),
    }
}

async fn list(webhooks: &Webhooks, store: &dyn Store) -> Answer {
    let mut items = Vec::new();
    for webhook in webhooks.iter() {
        let config = &webhook.config;
        items.push(serde_json::json!({
            "name": config.name,
            "path": config.path,
            "verify": config.verify.kind,
            "recover": recover_status(config, store).await,
        }));
    }
    Ok((200, serde_json::json!({ "webhooks": items })))
}

/// A webhook's gap repair as an operator sees it (null without
/// `recover`): its settings, checkpoint and last run. A store that does not
/// answer shows as such; the rest of the page still does.
pub async fn recover_status(config: &Webhook, store: &dyn Store) -> serde_json::Value {
    let Some(recover) = &config.recover else {
        return serde_json::Value::Null;
    };
    let mut value = serde_json::json!({
        "kind": recover.kind,
        "service": recover.service,
        "every": format_duration(recover.every),
    });
    if let Some(hook) = &recover.hook {
        value["hook"] = serde_json::json!(hook);
    }
    match store.recover_state(config.name.as_str()).await {
        Ok(bytes) => {
            let state = bytes
                .map(|bytes| RecoverState::decode(&bytes))
                .unwrap_or_default();
            value["checkpoint"] = serde_json::json!(state.checkpoint.map(|s| rfc3339(s * 1000)));
            value["last_run_at"] = serde_json::json!(state.last_run_ms.map(rfc3339));
            value["outcome"] = serde_json::json!(state.outcome);
            value["error"] = serde_json::json!(state.error);
            value["last"] = serde_json::json!(state.last);
        }
        Err(error) => value["store_error"] = serde_json::json!(error.to_string()),
    }
    value
}

async fn recover_now(repair: Option<&GapRepair>, name: &str, query: &Query) -> Answer {
    let Some(repair) = repair else {
        return Err(Problem::new(
            ErrorCode::NotFound,
            "there is no event store, so no gap repair",
        ));
    };
    let since = match query.get("since") {
        None => None,
        Some(text) => Some(
            parse_duration(text)
                .map_err(|e| Problem::new(ErrorCode::BadRequest, format!("since: {e}")))?,
        ),
    };
    let dry_run = query.flag("dry_run")?;
    match repair.run(name, RunRequest { since, dry_run }).await {
        Ok(Some(report)) => Ok((
            200,
            serde_json::json!({ "webhook": name, "report": report }),
        )),
        Ok(None) => Err(Problem::new(
            ErrorCode::Conflict,
            format!("another replica is running {name}'s recovery now; try again shortly"),
        )),
        Err(error @ (RecoverError::NoRecover(_) | RecoverError::NoService(_))) => {
            Err(Problem::new(ErrorCode::NotFound, error.to_string()))
        }
        Err(RecoverError::Provider(error)) => Err(Problem::new(
            ErrorCode::UpstreamFailed,
            format!("the run stopped; the checkpoint stays: {error}"),
        )),
        Err(RecoverError::Store(error)) => Err(Problem::new(
            ErrorCode::StoreUnavailable,
            format!("the event store: {error}"),
        )),
    }
}
