//! The HTTP server (hyper): public endpoints for load balancers and monitors, admin endpoints behind a
//! bearer token, and the signed peer endpoints.
//!
//! Owns: routing, size limits, authentication, and turning requests into inbox entries or reads of
//! the published status. Never: decides anything, or waits on the node loop — every handler answers
//! from a snapshot, so a stalled loop is reported, not inherited.
//!
//! Limits: request heads up to 16 KiB (hyper's buffer), bodies up to [`MAX_BODY`]; anything larger is
//! refused with 413 before it is read.

mod admin;
mod peer;
mod public;

use crate::state::NodeState;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Largest pushed replication batch (`POST /peer/changes`): as large as a page can be.
pub const MAX_BATCH_BODY: usize = crate::http_client::MAX_ANSWER;
/// Most connections served at once; more wait in the kernel's backlog. Leaves file descriptors for
/// the node's own heartbeats, services and stores however many clients connect.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A response with a small in-memory body.
pub type Answer = Response<Full<Bytes>>;

/// Serve until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: Arc<NodeState>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot before accepting: excess clients queue in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = shutdown.changed() => return,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let conn = http1::Builder::new()
                .max_buf_size(16 * 1024)
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Route one request.
pub async fn handle(state: &NodeState, req: Request<Incoming>) -> Answer {
    state.counters.http_requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    // The large limit only for what can need it: a pushed batch that looks signed and fresh.
    let limit = match parts.uri.path() {
        crate::replication::CHANGES_PATH if parts.method == Method::POST && peer::looks_signed(state, &parts.headers) => MAX_BATCH_BODY,
        p if p.starts_with("/config/") => crate::replication::store::MAX_VALUE,
        _ => MAX_BODY,
    };
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(body, parts.headers.get(hyper::header::CONTENT_LENGTH), limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(answer)) => return answer,
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs())),
    };
    route(state, &parts.method, parts.uri.path(), parts.uri.query(), &parts.headers, body).await
}

/// Route a request whose body has been read (separate from [`handle`] so tests can call it).
pub async fn route(
    state: &NodeState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &hyper::HeaderMap,
    body: Bytes,
) -> Answer {
    let mut answer = if path.starts_with("/peer/") {
        peer::handle(state, method, path, query, headers, body).await
    } else if path.starts_with("/admin/") || path == "/events" || path.starts_with("/config/") {
        admin::handle(state, method, path, query, headers, body).await
    } else {
        public::handle(state, method, path)
    };
    let headers = answer.headers_mut();
    if let Ok(id) = state.config.node.id.parse() {
        headers.insert("x-vigil-node", id);
    }
    headers.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    answer
}

async fn read_body(body: Incoming, declared: Option<&hyper::header::HeaderValue>, limit: usize) -> Result<Bytes, Answer> {
    if let Some(len) = declared.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()) {
        if len > limit {
            return Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("body of {len} bytes is over the limit of {limit}")));
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("body over the limit of {limit} bytes")))
        }
        Err(e) => Err(text(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))),
    }
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Answer {
    let body = serde_json::to_vec_pretty(value).expect("serializable");
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Strip the body for HEAD and OPTIONS: the status line (and headers) alone.
pub fn status_only(mut answer: Answer, method: &Method) -> Answer {
    if method == Method::HEAD || method == Method::OPTIONS {
        *answer.body_mut() = Full::new(Bytes::new());
        if method == Method::OPTIONS {
            answer.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD, OPTIONS"));
        }
    }
    answer
}

#[cfg(test)]
mod tests;
