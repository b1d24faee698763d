//! Admin endpoints, behind `Authorization: Bearer <token>` (compared in constant time).

use super::{json, text, Answer};
use crate::events::{Event, EventKind};
use crate::model::OperatorRequest;
use crate::peer::signing::token_matches;
use crate::policy::reload::ReloadOutcome;
use crate::state::NodeState;
use bytes::Bytes;
use hyper::{HeaderMap, Method, StatusCode};
use std::sync::atomic::Ordering;

pub async fn handle(state: &NodeState, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap, _body: Bytes) -> Answer {
    let Some(expected) = &state.admin_token else {
        return text(StatusCode::FORBIDDEN, "the admin API is disabled: set security.admin_token_file in the node configuration");
    };
    let presented = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token_matches(presented, expected) {
        state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        let mut answer = text(StatusCode::UNAUTHORIZED, "admin request refused: missing or wrong bearer token");
        answer.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
        return answer;
    }
    match (method, path) {
        (&Method::POST, p) if p.starts_with("/admin/switch/") => switch(state, &p["/admin/switch/".len()..]),
        (&Method::POST, "/admin/reload") => reload(state).await,
        (&Method::GET, "/events") => events(state, query),
        _ => text(StatusCode::NOT_FOUND, format!("{method} {path}: no such admin endpoint")),
    }
}

fn switch(state: &NodeState, what: &str) -> Answer {
    let request: OperatorRequest = match what.parse() {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("switch {what:?}: {e}")),
    };
    state.inbox.lock().expect("inbox lock").operator = Some(request);
    state.record(Event::new(state.clock.wall_ms(), EventKind::Operator, format!("operator requested {request}")));
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "accepted": request, "note": "delivered to the policy on the next tick" }),
    )
}

async fn reload(state: &NodeState) -> Answer {
    let outcome = tokio::task::block_in_place(|| state.policy.reload(&state.runtime, &state.plugin_dirs));
    crate::node::runner::record_reload(state, &outcome);
    match outcome {
        ReloadOutcome::Reloaded { policy, plugin_sha256, took_ms } => json(
            StatusCode::OK,
            &serde_json::json!({ "reloaded": policy, "plugin_sha256": plugin_sha256, "took_ms": took_ms }),
        ),
        ReloadOutcome::Failed { error } => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({ "error": error, "note": "the previous policy keeps deciding" }),
        ),
    }
}

fn events(state: &NodeState, query: Option<&str>) -> Answer {
    let limit = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
        .map(|v| v.parse::<usize>())
        .unwrap_or(Ok(100));
    let limit = match limit {
        Ok(n) if (1..=10_000).contains(&n) => n,
        _ => return text(StatusCode::BAD_REQUEST, "limit: expected a number from 1 to 10000"),
    };
    match state.events.latest(limit) {
        Ok(events) => json(StatusCode::OK, &events),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("event log: {e}")),
    }
}
