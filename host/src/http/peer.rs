//! Peer endpoints: signed requests in, signed answers out (see `peer::signing`).

use super::{json, text, Answer};
use crate::events::{Event, EventKind};
use crate::model::ReceivedCommand;
use crate::peer::signing::{self, AuthError, SignedHeaders, HEADER_NODE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::peer::{CommandMessage, HeartbeatAnswer, COMMAND_PATH, HEARTBEAT_PATH};
use crate::replication::{Batch, Page, CHANGES_PATH, PAGE_BYTES, PAGE_CHANGES};
use crate::state::NodeState;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{HeaderMap, Method, StatusCode};
use std::sync::atomic::Ordering;

pub async fn handle(state: &NodeState, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap, body: Bytes) -> Answer {
    // The signature covers the query too: it says which changes are asked for.
    let signed_path = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let signed = match authenticate(state, method, &signed_path, headers, &body) {
        Ok(h) => h,
        Err(e) => {
            state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%path, error = %e, "peer request refused");
            let mut answer = text(StatusCode::UNAUTHORIZED, format!("peer request refused: {e}"));
            answer
                .headers_mut()
                .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("vigil-hmac"));
            return answer;
        }
    };
    let answer = match (method, path) {
        (&Method::GET, HEARTBEAT_PATH) => heartbeat(state),
        (&Method::POST, COMMAND_PATH) => command(state, &signed.node, &body),
        (&Method::GET, CHANGES_PATH) => changes(state, query),
        (&Method::POST, CHANGES_PATH) => pushed(state, &signed.node, &body).await,
        _ => text(StatusCode::NOT_FOUND, format!("{method} {path}: no such peer endpoint")),
    };
    sign(state, answer, &signed.nonce)
}

/// A cheap look at a request's signature headers before its body is read: present, and a timestamp
/// inside the window. Only such requests may send a large body; the signature itself is checked
/// once the body is in.
pub fn looks_signed(state: &NodeState, headers: &HeaderMap) -> bool {
    let present = [HEADER_NODE, HEADER_NONCE, HEADER_SIGNATURE].iter().all(|h| headers.contains_key(*h));
    let fresh = headers
        .get(HEADER_TIMESTAMP)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|t| state.verifier.is_fresh(t, state.clock.wall_ms()));
    present && fresh
}

fn authenticate(state: &NodeState, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Result<SignedHeaders, AuthError> {
    let h = SignedHeaders::from_headers(headers)?;
    state.verifier.verify(method.as_str(), path, body, &h, state.clock.wall_ms())?;
    Ok(h)
}

fn heartbeat(state: &NodeState) -> Answer {
    let s = state.snapshot();
    json(
        StatusCode::OK,
        &HeartbeatAnswer {
            id: s.node.id,
            mode: s.node.mode,
            configured_role: s.node.configured_role,
            app_healthy: s.app_healthy,
            mode_since_ms: s.node.mode_since_ms,
            now_ms: state.clock.wall_ms(),
            seq: state.replicator.latest_seq(),
            incarnation: state.replicator.store.incarnation(),
        },
    )
}

/// A page of the change feed: `?since=N&limit=M`.
fn changes(state: &NodeState, query: Option<&str>) -> Answer {
    let param = |name: &str| query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')));
    let since = match param("since").map(str::parse::<u64>) {
        Some(Ok(n)) => n,
        _ => return text(StatusCode::BAD_REQUEST, "since: expected a sequence number"),
    };
    let limit = match param("limit").map(str::parse::<usize>) {
        None => PAGE_CHANGES,
        Some(Ok(n)) if (1..=PAGE_CHANGES).contains(&n) => n,
        _ => return text(StatusCode::BAD_REQUEST, format!("limit: expected 1 to {PAGE_CHANGES}")),
    };
    let store = &state.replicator.store;
    let latest = match store.latest_seq() {
        Ok(l) => l,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match store.changes_since(since, limit, PAGE_BYTES) {
        // Compact JSON: a page is megabytes, and only a machine reads it.
        Ok((changes, next)) => hyper::Response::builder()
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(
                serde_json::to_vec(&Page { changes, next: next.max(since), latest, incarnation: store.incarnation() }).expect("serializes"),
            )))
            .expect("valid response"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A pushed batch, applied in one transaction; a change the checks refuse is skipped and recorded
/// (event log, `/status.sync.refused_changes`), the others apply. Only a malformed or oversized
/// batch is refused whole.
async fn pushed(state: &NodeState, from: &str, body: &[u8]) -> Answer {
    if !state.config.peers.iter().any(|p| p.id == from) {
        return text(StatusCode::FORBIDDEN, format!("{from:?} is not a peer of this node"));
    }
    let batch: Batch = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("malformed change batch: {e}")),
    };
    match state.replicator.apply(batch.changes).await {
        Ok(n) => json(StatusCode::OK, &serde_json::json!({ "applied": n })),
        Err(e) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("change batch refused, nothing applied: {e}")),
    }
}

fn command(state: &NodeState, from: &str, body: &[u8]) -> Answer {
    if !state.config.peers.iter().any(|p| p.id == from) {
        return text(StatusCode::FORBIDDEN, format!("{from:?} is not a peer of this node"));
    }
    let message: CommandMessage = match serde_json::from_slice(body) {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("malformed command: {e}")),
    };
    {
        let mut inbox = state.inbox.lock().expect("inbox lock");
        if inbox.commands.len() >= 64 {
            return text(StatusCode::TOO_MANY_REQUESTS, "too many undelivered commands");
        }
        inbox.commands.push(ReceivedCommand { from: from.to_string(), command: message.command });
    }
    state.record(Event::new(
        state.clock.wall_ms(),
        EventKind::Peer,
        format!("command {} received from {from}", message.command),
    ));
    json(StatusCode::OK, &serde_json::json!({ "accepted": message.command }))
}

/// Sign the answer, bound to the request's nonce.
fn sign(state: &NodeState, answer: Answer, nonce: &str) -> Answer {
    let Some(key) = state.verifier.signing_key() else { return answer };
    let (mut parts, body) = answer.into_parts();
    // The body is a `Full`: collecting it is immediate.
    let bytes = futures_util::FutureExt::now_or_never(body.collect())
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let signature = signing::sign_response(key, parts.status.as_u16(), nonce, &bytes);
    parts.headers.insert(HEADER_SIGNATURE, signature.parse().expect("hex is a valid header"));
    hyper::Response::from_parts(parts, http_body_util::Full::new(bytes))
}
