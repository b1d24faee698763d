//! Peer endpoints: signed requests in, signed answers out (see `peer::signing`).

use super::{json, read_body, text, Answer, MAX_BATCH_BODY, MAX_BODY};
use crate::events::{Event, EventKind};
use crate::model::ReceivedCommand;
use crate::peer::signing::{self, AuthError, SignedHeaders, HEADER_SIGNATURE};
use crate::peer::{CommandMessage, HeartbeatAnswer, COMMAND_PATH, HEADER_REFUSED, HEARTBEAT_PATH};
use crate::replication::{Batch, Page, CHANGES_PATH, PAGE_BYTES, PAGE_CHANGES};
use crate::state::NodeState;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, StatusCode};

/// A peer request off the wire: the signature is checked from its headers first, and only an
/// authentic request has its body read (up to the batch limit for a pushed batch).
pub async fn serve(state: &NodeState, parts: &hyper::http::request::Parts, body: Incoming) -> Answer {
    let (method, path, query) = (&parts.method, parts.uri.path(), parts.uri.query());
    let signed = match authenticate(state, method, &signed_path(path, query), &parts.headers) {
        Ok(h) => h,
        Err(refusal) => return refuse(state, method, path, refusal),
    };
    let limit = if *method == Method::POST && path == CHANGES_PATH { MAX_BATCH_BODY } else { MAX_BODY };
    let body = match read_body(body, parts.headers.get(hyper::header::CONTENT_LENGTH), limit).await {
        Ok(b) => b,
        Err(answer) => return sign(state, answer, &signed.nonce),
    };
    answer(state, method, path, query, &signed, body).await
}

/// A peer request whose body has been read (for [`super::route`]).
pub async fn handle(state: &NodeState, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap, body: Bytes) -> Answer {
    match authenticate(state, method, &signed_path(path, query), headers) {
        Ok(signed) => answer(state, method, path, query, &signed, body).await,
        Err(refusal) => refuse(state, method, path, refusal),
    }
}

/// The signature covers the query too: it says which changes are asked for.
fn signed_path(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// Why a request was refused, and its headers when they were well-formed (to sign the refusal).
struct Refusal {
    error: AuthError,
    headers: Option<Box<SignedHeaders>>,
}

fn authenticate(state: &NodeState, method: &Method, path: &str, headers: &HeaderMap) -> Result<SignedHeaders, Refusal> {
    let h = SignedHeaders::from_headers(headers).map_err(|error| Refusal { error, headers: None })?;
    match state.verifier.verify(method.as_str(), path, &h, state.clock.wall_ms()) {
        Ok(()) => Ok(h),
        Err(error) => Err(Refusal { error, headers: Some(Box::new(h)) }),
    }
}

/// Refuse a request. An authentic one (good signature, wrong time or receiver) gets a signed answer
/// that says why; a heartbeat refused for its timestamp is still answered, with 409, so that a peer
/// whose clock is off sees this node alive and in its mode ("reachable, skewed"), never dead. Nothing
/// else is done for it.
fn refuse(state: &NodeState, method: &Method, path: &str, refusal: Refusal) -> Answer {
    let Refusal { error, headers } = refusal;
    state.metrics.auth_failures.inc();
    tracing::warn!(%path, error = %error, "peer request refused");
    let reason = format!("peer request refused: {error}");
    match headers.filter(|_| error.authentic()) {
        Some(h) => {
            let mut answer = if error.is_clock() && *method == Method::GET && path == HEARTBEAT_PATH {
                let mut a = heartbeat(state);
                *a.status_mut() = StatusCode::CONFLICT;
                a
            } else if matches!(error, AuthError::Misdirected { .. }) {
                text(StatusCode::MISDIRECTED_REQUEST, reason.clone())
            } else {
                text(StatusCode::UNAUTHORIZED, reason.clone())
            };
            // Header values are ASCII: the window's "±" is spelled out.
            let header: String = reason.replace('±', "+/-").chars().filter(char::is_ascii).collect();
            if let Ok(value) = hyper::header::HeaderValue::from_str(&header) {
                answer.headers_mut().insert(HEADER_REFUSED, value);
            }
            sign(state, answer, &h.nonce)
        }
        None => {
            let mut answer = text(StatusCode::UNAUTHORIZED, reason);
            answer.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("vigil-hmac"));
            answer
        }
    }
}

/// Answer an authenticated request, once its body is checked against the signed hash.
async fn answer(state: &NodeState, method: &Method, path: &str, query: Option<&str>, signed: &SignedHeaders, body: Bytes) -> Answer {
    if let Err(error) = signed.check_body(&body) {
        return refuse(state, method, path, Refusal { error, headers: None });
    }
    let answer = match (method, path) {
        (&Method::GET, HEARTBEAT_PATH) => heartbeat(state),
        (&Method::POST, COMMAND_PATH) => command(state, &signed.node, &body),
        // A page is up to megabytes read from SQLite: off the server's worker thread.
        (&Method::GET, CHANGES_PATH) => tokio::task::block_in_place(|| changes(state, &signed.node, query)),
        (&Method::POST, CHANGES_PATH) => pushed(state, &signed.node, &body).await,
        _ => text(StatusCode::NOT_FOUND, format!("{method} {path}: no such peer endpoint")),
    };
    sign(state, answer, &signed.nonce)
}

fn heartbeat(state: &NodeState) -> Answer {
    let answer = {
        let s = state.status.read().expect("status lock");
        HeartbeatAnswer {
            id: s.node.id.clone(),
            mode: s.node.mode,
            configured_role: s.node.configured_role,
            app_healthy: s.app_healthy,
            mode_since_ms: s.node.mode_since_ms,
            now_ms: state.clock.wall_ms(),
            seq: state.replicator.latest_seq(),
            boot: state.verifier.boot().to_string(),
            incarnation: state.replicator.store.incarnation(),
        }
    };
    json(StatusCode::OK, &answer)
}

/// A page of the change feed: `?since=N&limit=M`.
fn changes(state: &NodeState, from: &str, query: Option<&str>) -> Answer {
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
        Ok((changes, next)) => {
            let count = changes.len() as u64;
            let body = serde_json::to_vec(&Page { changes, next: next.max(since), latest, incarnation: store.incarnation() }).expect("serializes");
            if let Some(m) = state.replicator.metrics().peer(from) {
                m.bytes_out.inc_by(body.len() as u64);
                m.changes_out.inc_by(count);
            }
            hyper::Response::builder()
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(Bytes::from(body)))
                .expect("valid response")
        }
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
    if let Some(m) = state.replicator.metrics().peer(from) {
        m.bytes_in.inc_by(body.len() as u64);
    }
    let batch: Batch = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("malformed change batch: {e}")),
    };
    match state.replicator.apply(from, batch.changes).await {
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
