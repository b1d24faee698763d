//! Public endpoints: unauthenticated, cheap, read-only; for load balancers and monitors. `/` is the
//! operator console (`host/assets/index.html`): it reads `/status` and its controls call the admin
//! endpoints with the token the operator types, so it holds no secret and grants nothing itself.

use super::{status_only, text, text_static, Answer};
use crate::model::Mode;
use crate::state::NodeState;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use std::sync::atomic::Ordering;

const INDEX_HTML: &str = include_str!("../../assets/index.html");

/// The operator console's policy: its inline script and style only, requests to this node only (an
/// injected script could not send the admin token elsewhere), and no framing (no click-jacking of
/// its controls).
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                           base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn handle(state: &NodeState, method: &Method, path: &str, headers: &hyper::HeaderMap) -> Answer {
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("{path}: use GET, HEAD or OPTIONS"));
    }
    let answer = match path {
        "/health" | "/active" | "/standby" | "/role" => {
            let (status, body) = probe(state, path).expect("a load balancer's endpoint");
            text_static(status, body)
        }
        "/app" => {
            if state.status.read().expect("status lock").app_healthy {
                text(StatusCode::OK, "APP=OK")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "APP=ERROR")
            }
        }
        "/status" => status(state),
        "/metrics" => metrics(state, headers),
        "/" | "/index.html" => Response::builder()
            .header(hyper::header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(hyper::header::CONTENT_SECURITY_POLICY, CONSOLE_CSP)
            .body(Full::new(Bytes::from_static(INDEX_HTML.as_bytes())))
            .expect("valid response"),
        _ => text(StatusCode::NOT_FOUND, format!("{path}: no such endpoint")),
    };
    status_only(answer, method)
}

/// `/status`, rendered once per publication (and per 100 ms of loop age, which it reports).
fn status(state: &NodeState) -> Answer {
    let age = state.loop_age_ms();
    let key = (state.generation.load(Ordering::Acquire), age.map(|a| a / 100));
    let cached = state.status_json.lock().expect("status cache lock").as_ref().filter(|(k, _)| *k == key).map(|(_, b)| b.clone());
    let body = cached.unwrap_or_else(|| {
        let mut status = state.snapshot();
        status.loop_age_ms = age;
        let body = Bytes::from(serde_json::to_vec_pretty(&status).expect("serializable"));
        *state.status_json.lock().expect("status cache lock") = Some((key, body.clone()));
        body
    });
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("valid response")
}

/// The answer of a load balancer's endpoint (`/health`, `/active`, `/standby`, `/role`): its status
/// and a constant body (no allocation). Shared with the fast lane ([`super::fast`]), so both answer alike.
pub(super) fn probe(state: &NodeState, path: &str) -> Option<(StatusCode, &'static str)> {
    match path {
        "/health" => Some(health(state)),
        "/active" => Some(mode_check(state, Mode::Active)),
        "/standby" => Some(mode_check(state, Mode::Standby)),
        "/role" => Some((StatusCode::OK, role_line(state.mode()))),
        _ => None,
    }
}

fn health(state: &NodeState) -> (StatusCode, &'static str) {
    if state.loop_alive() {
        (StatusCode::OK, "OK\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "STALLED: the node loop has not run within two heartbeat intervals\n")
    }
}

/// 200 only in `mode` and while the loop is alive: a hung daemon must stop claiming its role.
fn mode_check(state: &NodeState, mode: Mode) -> (StatusCode, &'static str) {
    let current = state.mode();
    if !state.loop_alive() {
        (StatusCode::SERVICE_UNAVAILABLE, "STALLED\n")
    } else if current == mode {
        (StatusCode::OK, role_line(current))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, role_line(current))
    }
}

/// The role word and a newline, from constants (the endpoints a load balancer polls allocate nothing
/// for their body).
fn role_line(mode: Mode) -> &'static str {
    let line = match mode {
        Mode::Active => "ACTIVE\n",
        Mode::Standby => "STANDBY\n",
        Mode::Off => "OFF\n",
        Mode::Failed => "FAILED\n",
        Mode::HoldOff => "HOLD-OFF\n",
        Mode::Starting => "STARTING\n",
    };
    debug_assert_eq!(line.trim_end(), mode.role_word());
    line
}

/// `/metrics`: the node's registry, in OpenMetrics, or in the Prometheus text format 0.0.4 for a
/// client that asks only for `text/plain` (see [`crate::metrics`]).
fn metrics(state: &NodeState, headers: &hyper::HeaderMap) -> Answer {
    let accept = headers.get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok());
    let openmetrics = !crate::metrics::wants_prometheus_text(accept);
    let content_type = if openmetrics { crate::metrics::OPENMETRICS } else { crate::metrics::PROMETHEUS_TEXT };
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type))
        .body(Full::new(Bytes::from(state.metrics.encode(openmetrics))))
        .expect("valid response")
}
