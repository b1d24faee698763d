//! Admin endpoints, behind `Authorization: Bearer <token>` (compared in constant time).

use super::{json, text, Answer};
use crate::events::{Event, EventKind};
use crate::model::OperatorRequest;
use crate::peer::signing::token_matches;
use crate::policy::reload::ReloadOutcome;
use crate::state::NodeState;
use bytes::Bytes;
use hyper::{HeaderMap, Method, StatusCode};

pub async fn handle(state: &NodeState, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap, body: Bytes) -> Answer {
    let Some(expected) = &state.admin_token else {
        return text(StatusCode::FORBIDDEN, "the admin API is disabled: set security.admin_token_file in the node configuration");
    };
    let presented = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token_matches(presented, expected) {
        state.metrics.auth_failures.inc();
        let mut answer = text(StatusCode::UNAUTHORIZED, "admin request refused: missing or wrong bearer token");
        answer.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
        return answer;
    }
    match (method, path) {
        (&Method::POST, p) if p.starts_with("/admin/switch/") => switch(state, &p["/admin/switch/".len()..]),
        (&Method::POST, "/admin/reload") => reload(state).await,
        (&Method::POST, "/admin/sync") => sync(state, query).await,
        // SQLite reads and writes (a write waits for its fsync): off the server's worker thread.
        (m, p) if p.starts_with("/config/") => tokio::task::block_in_place(|| config(state, m, &p["/config/".len()..], query, body)),
        (&Method::GET, "/events") => tokio::task::block_in_place(|| events(state, query)),
        (&Method::GET, "/admin/recording") => recording(state, query).await,
        (&Method::POST, "/admin/shadow") => set_shadow(state, body).await,
        (&Method::DELETE, "/admin/shadow") => clear_shadow(state),
        (&Method::POST, "/admin/shadow/promote") => promote_shadow(state).await,
        _ => text(StatusCode::NOT_FOUND, format!("{method} {path}: no such admin endpoint")),
    }
}

/// `GET /admin/recording?since=MS&until=MS` or `?around=EVENT_ID&ticks=N`: the flight recorder's
/// records in the window, as JSON lines (`vigil record`).
async fn recording(state: &NodeState, query: Option<&str>) -> Answer {
    use crate::recorder::export::{self, Window};
    let event_time = |id: u64| state.events.since(id.saturating_sub(1), 1).ok()?.into_iter().find(|e| e.id == id).map(|e| e.at_ms);
    let window = match Window::from_query(query.unwrap_or(""), event_time) {
        Ok(w) => w,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("recording: {e}")),
    };
    let dir = crate::recorder::dir_of(&state.config.node.data_dir);
    match tokio::task::spawn_blocking(move || export::select(&dir, &window)).await {
        Ok(Ok((records, _))) => {
            let mut answer = text(StatusCode::OK, export::to_lines(&records));
            answer.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/x-ndjson"));
            answer
        }
        Ok(Err(e)) => text(StatusCode::NOT_FOUND, format!("recording: {e}")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("recording: {e}")),
    }
}

/// `POST /admin/shadow` with a policy file's path on the node (plain text, or `{"policy": PATH}`):
/// load it as the shadow policy, replacing any. 422 when it does not load (the previous shadow stays).
async fn set_shadow(state: &NodeState, body: Bytes) -> Answer {
    let given = String::from_utf8_lossy(&body).trim().to_string();
    let path = match serde_json::from_str::<serde_json::Value>(&given) {
        Ok(v) if v.is_object() => match v["policy"].as_str() {
            Some(p) => p.to_string(),
            None => return text(StatusCode::BAD_REQUEST, "shadow: expected {\"policy\": \"PATH\"} or the path as the body"),
        },
        _ => given,
    };
    if path.is_empty() {
        return text(StatusCode::BAD_REQUEST, "shadow: the body names no policy file (DELETE /admin/shadow clears the shadow)");
    }
    let path = std::path::PathBuf::from(path);
    if !path.is_absolute() {
        return text(StatusCode::BAD_REQUEST, format!("shadow: {}: give the policy file's absolute path on the node", path.display()));
    }
    match tokio::task::block_in_place(|| crate::node::runner::set_shadow(state, &path)) {
        Ok(note) => {
            state.record(Event::new(state.clock.wall_ms(), EventKind::Shadow, note.clone()));
            json(StatusCode::OK, &serde_json::json!({ "shadow": path.display().to_string(), "note": note }))
        }
        Err(error) => json(StatusCode::UNPROCESSABLE_ENTITY, &serde_json::json!({ "error": error, "note": "the previous shadow, if any, keeps deciding" })),
    }
}

/// `DELETE /admin/shadow`: stop the shadow policy.
fn clear_shadow(state: &NodeState) -> Answer {
    let Some(shadow) = state.shadow.lock().expect("shadow lock").take() else {
        return text(StatusCode::NOT_FOUND, "no shadow policy is set");
    };
    let s = shadow.status();
    let note = format!("shadow policy {} cleared after {} ticks, {} divergences, {} faults", s.policy, s.ticks, s.divergences, s.faults);
    state.record(Event::new(state.clock.wall_ms(), EventKind::Shadow, note.clone()));
    json(StatusCode::OK, &serde_json::json!({ "cleared": s.policy, "note": note }))
}

/// `POST /admin/shadow/promote`: make the shadow the live policy, if it decided
/// `shadow.promote_after_ticks` ticks in a row without a fault. Its file goes through the full load
/// pipeline again (like a hot reload: nothing changes when it fails); the loop swaps it in, with the
/// shadow's state, at the start of its next tick.
async fn promote_shadow(state: &NodeState) -> Answer {
    let Some(shadow) = state.shadow.lock().expect("shadow lock").clone() else {
        return text(StatusCode::NOT_FOUND, "promote: no shadow policy is set (POST /admin/shadow, or [shadow] policy)");
    };
    if let Err(why) = shadow.promotable() {
        return json(StatusCode::CONFLICT, &serde_json::json!({ "error": format!("promote refused: {why}"), "note": "the live policy keeps deciding" }));
    }
    let path = shadow.path();
    let loaded = tokio::task::block_in_place(|| crate::policy::load(&state.runtime, &state.plugin_dirs, &path));
    let policy = match loaded {
        Ok(p) => std::sync::Arc::new(p),
        Err(e) => {
            return json(StatusCode::UNPROCESSABLE_ENTITY, &serde_json::json!({ "error": format!("promote refused: {}: {e}", path.display()), "note": "the live policy keeps deciding" }))
        }
    };
    let name = policy.name();
    let was = state.policy.current().name();
    {
        let mut inbox = state.inbox.lock().expect("inbox lock");
        inbox.promote = Some((policy, shadow.state()));
        *state.shadow.lock().expect("shadow lock") = None;
    }
    let s = shadow.status();
    let note = format!(
        "shadow policy {name} promoted over {was} after {} clean ticks ({} divergences in {} ticks); it decides from the next tick. \
         node.policy still names the old file: point it at {} to keep it across restarts",
        s.clean_ticks,
        s.divergences,
        s.ticks,
        path.display()
    );
    state.record(Event::new(state.clock.wall_ms(), EventKind::Shadow, note.clone()));
    json(StatusCode::ACCEPTED, &serde_json::json!({ "promoted": name, "replaced": was, "policy": path.display().to_string(), "note": note }))
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

/// A full exchange with every peer, now. With `?confirm_deletes=true`, held directory scans are
/// released first (a rescan that records their deletes), so the exchange carries them.
async fn sync(state: &NodeState, query: Option<&str>) -> Answer {
    let confirm = query.is_some_and(|q| q.split('&').any(|kv| kv == "confirm_deletes=true" || kv == "confirm_deletes"));
    let now = state.clock.wall_ms();
    if confirm {
        state.record(Event::new(now, EventKind::Operator, "operator confirmed the deletes of held directory scans".to_string()));
        state.replicator.confirm_deletes();
        let replicator = state.replicator.clone();
        let _ = tokio::task::spawn_blocking(move || replicator.scan_due(true)).await;
        for note in state.replicator.take_notes() {
            state.record(Event::new(state.clock.wall_ms(), EventKind::Peer, note));
        }
    }
    state.record(Event::new(state.clock.wall_ms(), EventKind::Operator, "operator requested a sync".to_string()));
    let held = state.replicator.status().held;
    match state.replicator.full_exchange().await {
        Ok(report) => {
            state.record(Event::new(state.clock.wall_ms(), EventKind::Peer, format!("sync done: {report}")));
            json(StatusCode::OK, &serde_json::json!({ "synced": report, "held": held }))
        }
        Err(error) => {
            state.record(Event::new(state.clock.wall_ms(), EventKind::Peer, format!("sync failed: {error}")));
            json(StatusCode::BAD_GATEWAY, &serde_json::json!({ "error": error, "held": held }))
        }
    }
}

/// `GET /config/KEY` (the value), `PUT /config/KEY` (body = value), `DELETE /config/KEY`,
/// `GET /config/?prefix=P` (a JSON list).
fn config(state: &NodeState, method: &Method, key: &str, query: Option<&str>, body: Bytes) -> Answer {
    use crate::replication::store::CONFIG;
    let key = match percent_decode(key) {
        Ok(k) => k,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let store = &state.replicator.store;
    let now = state.clock.wall_ms();
    match *method {
        Method::GET if key.is_empty() => {
            let prefix = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("prefix="))).unwrap_or("");
            let prefix = match percent_decode(prefix) {
                Ok(p) => p,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            match store.list(CONFIG, &prefix) {
                Ok(entries) => {
                    let list: Vec<serde_json::Value> = entries
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "key": e.key,
                                "value": e.value.as_deref().map(String::from_utf8_lossy),
                                "origin": e.origin,
                                "hlc": e.hlc.to_string(),
                                "local_only": store.is_local_only(CONFIG, &e.key),
                            })
                        })
                        .collect();
                    json(StatusCode::OK, &list)
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Method::GET => match store.get(CONFIG, &key) {
            Ok(Some(crate::replication::store::Entry { value: Some(v), .. })) => hyper::Response::builder()
                .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                .body(http_body_util::Full::new(Bytes::from(v)))
                .expect("valid response"),
            Ok(_) => text(StatusCode::NOT_FOUND, format!("no key {key:?}")),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Method::PUT => match store.put(CONFIG, &key, body.to_vec(), None, now) {
            Ok(change) => json(StatusCode::OK, &serde_json::json!({ "key": key, "hlc": change.hlc.to_string(), "local_only": store.is_local_only(CONFIG, &key) })),
            Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
        },
        Method::DELETE => match store.delete(CONFIG, &key, now) {
            Ok(Some(_)) => json(StatusCode::OK, &serde_json::json!({ "deleted": key })),
            Ok(None) => text(StatusCode::NOT_FOUND, format!("no key {key:?}")),
            Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
        },
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "/config/KEY: use GET, PUT or DELETE"),
    }
}

/// Decode `%XX` escapes of a URL path segment.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("malformed %-escape in the key")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "malformed %-escape in the key")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the key is not UTF-8".to_string())
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
