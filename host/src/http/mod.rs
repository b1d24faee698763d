//! The HTTP server (hyper): public endpoints for load balancers and monitors, admin endpoints behind a
//! bearer token, and the signed peer endpoints.
//!
//! Owns: routing, size limits, authentication, and turning requests into inbox entries or reads of
//! the published status. Never: decides anything, or waits on the node loop — every handler answers
//! from a snapshot, so a stalled loop is reported, not inherited.
//!
//! The load balancers' endpoints (`/health`, `/active`, `/standby`, `/role`) have a fast lane in front
//! of hyper ([`fast`]): each connection starts there, body-less `GET`/`HEAD`s of those paths are
//! answered from constants without allocating, pipelined ones in order and in one write, and the first
//! other request hands the connection to hyper for the rest of its life (the bytes already read
//! replayed first), so every rule below is hyper's and the server's as before. Both answer the probes
//! byte for byte alike (status, `content-type`, `x-vigil-node`, `cache-control: no-store`,
//! `connection`, `content-length`, `date`).
//!
//! Limits: request heads up to 16 KiB (hyper's buffer), read within [`HEAD_TIMEOUT`]; bodies up to
//! [`MAX_BODY`] read within [`BODY_TIMEOUT`] (anything larger is refused with 413 before it is
//! read); peer requests have their signature checked from the headers before the body is read, and
//! only then may a replication batch be larger. Connections: see [`conns`] — the server never stops
//! accepting, and idle or stalled clients make room for new ones.
//!
//! Transport ([`Endpoint`]): plain HTTP, HTTPS (`[tls]`: the handshake must end within
//! [`HEAD_TIMEOUT`]), or the plain public-only listener of `tls.plain_listen`, where admin and peer
//! requests are refused. Without TLS, admin requests are answered only from loopback addresses unless
//! `security.admin_insecure_remote` is set: the bearer token would cross the network in clear. With
//! `tls.peer_names` and mutual TLS, a peer request's client certificate must name the node that
//! signed it.

mod admin;
pub mod conns;
pub mod fast;
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
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Largest pushed replication batch (`POST /peer/changes`): as large as a page can be.
pub const MAX_BATCH_BODY: usize = crate::http_client::MAX_ANSWER;
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head, once it started one.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How often idle and stalled connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A response with a small in-memory body.
pub type Answer = Response<Full<Bytes>>;

/// What a listener speaks.
#[derive(Clone)]
pub enum Endpoint {
    /// Plain HTTP, every endpoint (admin ones from loopback only, unless allowed).
    Plain,
    /// HTTPS, every endpoint.
    Tls(tokio_rustls::TlsAcceptor),
    /// Plain HTTP, the public endpoints only (`tls.plain_listen`).
    PublicOnly,
}

/// Who is on the other end of a connection, and how it came.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub from: std::net::IpAddr,
    pub tls: bool,
    pub public_only: bool,
    /// The client's certificate (mutual TLS).
    pub client_cert: Option<rustls_pki_types::CertificateDer<'static>>,
}

impl ConnInfo {
    /// A plain connection from loopback (what the endpoint tests send).
    pub fn loopback() -> ConnInfo {
        ConnInfo { from: std::net::Ipv4Addr::LOCALHOST.into(), tls: false, public_only: false, client_cert: None }
    }
}

/// Serve until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: Arc<NodeState>, mut shutdown: watch::Receiver<bool>, endpoint: Endpoint) {
    let table = state.connections.clone();
    let fixed: Arc<[u8]> = fast::fixed_headers(&state).into();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        let (stream, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, most likely: the sweep and closing clients free some.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = sweep.tick() => {
                table.sweep();
                continue;
            }
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let slot = table.admit(from.ip());
        let state = state.clone();
        let endpoint = endpoint.clone();
        let fixed = fixed.clone();
        tokio::spawn(async move {
            let stream = conns::Tracked::new(stream, slot.activity.clone());
            let mut conn = ConnInfo { from: from.ip().to_canonical(), tls: false, public_only: false, client_cert: None };
            match endpoint {
                Endpoint::Plain => serve_connection(state, conn, stream, &slot, &fixed).await,
                Endpoint::PublicOnly => {
                    conn.public_only = true;
                    serve_connection(state, conn, stream, &slot, &fixed).await
                }
                Endpoint::Tls(acceptor) => {
                    let handshake = tokio::select! {
                        done = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)) => done,
                        _ = slot.activity.closed() => return,
                    };
                    match handshake {
                        Ok(Ok(tls)) => {
                            conn.tls = true;
                            conn.client_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
                            serve_connection(state, conn, tls, &slot, &fixed).await
                        }
                        Ok(Err(e)) => {
                            // A peer with a bad certificate retries every interval: logged at the 1st,
                            // 2nd, 4th, 8th… refusal; `vigil_tls_refused_total` counts them all.
                            let refused = state.metrics.tls_refused.inc() + 1;
                            if refused.is_power_of_two() {
                                tracing::warn!(from = %from, error = %e, refused, "TLS handshake refused");
                            } else {
                                tracing::debug!(from = %from, error = %e, "TLS handshake refused");
                            }
                        }
                        Err(_) => tracing::debug!(from = %from, "TLS handshake not done in time"),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// Serve HTTP/1.1 on one accepted connection until it ends or is closed to make room: the fast lane
/// first ([`fast`]), then hyper from the first request the lane does not answer.
async fn serve_connection<I>(state: Arc<NodeState>, conn: ConnInfo, mut io: I, slot: &conns::Slot, fixed: &[u8])
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let lane = tokio::select! {
        lane = fast::serve(&state, fixed, &mut io) => lane,
        // Made room for another client, or idle/stalled: dropping the connection closes it.
        _ = slot.activity.closed() => return,
    };
    match lane {
        fast::Lane::Done => {}
        fast::Lane::Handover(read) => serve_hyper(state, conn, fast::Rewind::new(read, io), slot).await,
    }
}

/// Serve HTTP/1.1 with hyper until the connection ends or is closed to make room.
async fn serve_hyper<I>(state: Arc<NodeState>, conn: ConnInfo, io: I, slot: &conns::Slot)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let service = service_fn(move |req| {
        let (state, conn) = (state.clone(), conn.clone());
        async move { Ok::<_, Infallible>(handle(&state, &conn, req).await) }
    });
    let serving = http1::Builder::new()
        .max_buf_size(16 * 1024)
        .header_read_timeout(HEAD_TIMEOUT)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        ended = serving => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        // Made room for another client, or idle/stalled: dropping the connection closes it.
        _ = slot.activity.closed() => {}
    }
}

/// Why a request may not be served on this connection, if it may not: admin and peer requests on
/// the public-only listener; admin requests in clear from other than loopback (unless allowed);
/// with `tls.peer_names` and mutual TLS, a peer request whose client certificate does not name the
/// node it claims to come from.
pub fn refusal(state: &NodeState, conn: &ConnInfo, path: &str, headers: &hyper::HeaderMap) -> Option<Answer> {
    let peer = path.starts_with("/peer/");
    let admin = is_admin(path);
    if conn.public_only && (peer || admin) {
        let listen = state.config.node.listen;
        return Some(text(
            StatusCode::FORBIDDEN,
            format!("{path}: this plain-HTTP address (tls.plain_listen) serves only the public endpoints; admin and peer requests go to https://{listen}"),
        ));
    }
    if admin && !conn.tls && !conn.from.is_loopback() && !state.config.security.admin_insecure_remote {
        state.metrics.auth_failures.inc();
        return Some(text(
            StatusCode::FORBIDDEN,
            format!(
                "admin request from {} refused: over plain HTTP the admin token would cross the network in clear text; \
                 configure [tls], or set security.admin_insecure_remote = true to allow it",
                conn.from
            ),
        ));
    }
    if peer && state.config.tls.as_ref().is_some_and(|t| t.peer_names) {
        if let (Some(cert), Ok(signed)) = (&conn.client_cert, crate::peer::signing::SignedHeaders::from_headers(headers)) {
            if !crate::tls::cert_names(cert, &signed.node) {
                state.metrics.auth_failures.inc();
                return Some(text(
                    StatusCode::FORBIDDEN,
                    format!("peer request from {:?} refused: its client certificate does not name that node (tls.peer_names)", signed.node),
                ));
            }
        }
    }
    None
}

/// The endpoints behind the admin token.
fn is_admin(path: &str) -> bool {
    path.starts_with("/admin/") || path == "/events" || path.starts_with("/config/")
}

/// Route one request.
pub async fn handle(state: &NodeState, conn: &ConnInfo, req: Request<Incoming>) -> Answer {
    state.metrics.http_requests.inc();
    let (parts, body) = req.into_parts();
    if let Some(refused) = refusal(state, conn, parts.uri.path(), &parts.headers) {
        return finish(state, refused);
    }
    if parts.uri.path().starts_with("/peer/") {
        // Authenticated from the headers before the body is read.
        return finish(state, peer::serve(state, &parts, body).await);
    }
    let limit = if parts.uri.path().starts_with("/config/") { crate::replication::store::MAX_VALUE } else { MAX_BODY };
    // A request without a body (a load balancer's GET) needs no read and no timer.
    let body = if hyper::body::Body::is_end_stream(&body) {
        Bytes::new()
    } else {
        match read_body(body, parts.headers.get(hyper::header::CONTENT_LENGTH), limit).await {
            Ok(b) => b,
            Err(answer) => return finish(state, answer),
        }
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
    let answer = if path.starts_with("/peer/") {
        peer::handle(state, method, path, query, headers, body).await
    } else if is_admin(path) {
        admin::handle(state, method, path, query, headers, body).await
    } else {
        public::handle(state, method, path, headers)
    };
    finish(state, answer)
}

/// The headers of every answer: which node answered, and that it must not be cached.
fn finish(state: &NodeState, mut answer: Answer) -> Answer {
    let headers = answer.headers_mut();
    if let Some(id) = &state.node_header {
        headers.insert("x-vigil-node", id.clone());
    }
    headers.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    answer
}

/// Read a body of at most `limit` bytes within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming, declared: Option<&hyper::header::HeaderValue>, limit: usize) -> Result<Bytes, Answer> {
    if let Some(len) = declared.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()) {
        if len > limit {
            return Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("body of {len} bytes is over the limit of {limit}")));
        }
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("body over the limit of {limit} bytes")))
        }
        Ok(Err(e)) => Err(text(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))),
        Err(_) => Err(text(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()))),
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

/// A plain-text answer whose body is a constant: no allocation for the load balancers' endpoints.
pub fn text_static(status: StatusCode, body: &'static str) -> Answer {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
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
#[cfg(test)]
mod fast_tests;
