//! Public endpoints: unauthenticated, cheap, read-only; for load balancers and monitors. `/` is the
//! operator console (`host/assets/index.html`): it reads `/status` and its controls call the admin
//! endpoints with the token the operator types, so it holds no secret and grants nothing itself.

use super::{status_only, text, text_static, Answer};
use crate::model::Mode;
use crate::state::NodeState;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

const INDEX_HTML: &str = include_str!("../../assets/index.html");

/// The operator console's policy: its inline script and style only, requests to this node only (an
/// injected script could not send the admin token elsewhere), and no framing (no click-jacking of
/// its controls).
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                           base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn handle(state: &NodeState, method: &Method, path: &str) -> Answer {
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("{path}: use GET, HEAD or OPTIONS"));
    }
    let answer = match path {
        "/health" => health(state),
        "/active" => mode_check(state, Mode::Active),
        "/standby" => mode_check(state, Mode::Standby),
        "/role" => role_answer(StatusCode::OK, state.mode()),
        "/app" => {
            if state.status.read().expect("status lock").app_healthy {
                text(StatusCode::OK, "APP=OK")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "APP=ERROR")
            }
        }
        "/status" => status(state),
        "/metrics" => metrics(state),
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

fn health(state: &NodeState) -> Answer {
    if state.loop_alive() {
        text_static(StatusCode::OK, "OK\n")
    } else {
        text_static(StatusCode::SERVICE_UNAVAILABLE, "STALLED: the node loop has not run within two heartbeat intervals\n")
    }
}

/// 200 only in `mode` and while the loop is alive: a hung daemon must stop claiming its role.
fn mode_check(state: &NodeState, mode: Mode) -> Answer {
    let current = state.mode();
    if !state.loop_alive() {
        text_static(StatusCode::SERVICE_UNAVAILABLE, "STALLED\n")
    } else if current == mode {
        role_answer(StatusCode::OK, current)
    } else {
        role_answer(StatusCode::SERVICE_UNAVAILABLE, current)
    }
}

/// The role word and a newline, from constants (the endpoints a load balancer polls allocate nothing
/// for their body).
fn role_answer(status: StatusCode, mode: Mode) -> Answer {
    let line = match mode {
        Mode::Active => "ACTIVE\n",
        Mode::Standby => "STANDBY\n",
        Mode::Off => "OFF\n",
        Mode::Failed => "FAILED\n",
        Mode::HoldOff => "HOLD-OFF\n",
        Mode::Starting => "STARTING\n",
    };
    debug_assert_eq!(line.trim_end(), mode.role_word());
    text_static(status, line)
}

/// Prometheus text format.
fn metrics(state: &NodeState) -> Answer {
    let s = state.snapshot();
    let c = &state.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v.to_string())];
    metric(
        "vigil_mode",
        "gauge",
        "1 for the node's current mode.",
        Mode::ALL.iter().map(|m| (format!("{{mode=\"{m}\"}}"), u64::from(*m == s.node.mode).to_string())).collect(),
    );
    metric("vigil_loop_alive", "gauge", "1 while the node loop ran within two heartbeat intervals.", one(u64::from(state.loop_alive())));
    metric("vigil_ticks_total", "counter", "Ticks decided.", one(c.ticks.load(Ordering::Relaxed)));
    metric("vigil_mode_changes_total", "counter", "Mode changes.", one(c.mode_changes.load(Ordering::Relaxed)));
    metric("vigil_plugin_faults_total", "counter", "Plugin faults (time, memory, trap, invalid decision).", one(s.policy.faults));
    metric("vigil_policy_reloads_total", "counter", "Successful policy reloads.", one(s.policy.reloads));
    metric("vigil_policy_reload_failures_total", "counter", "Failed policy reloads.", one(s.policy.reload_failures));
    metric("vigil_http_requests_total", "counter", "HTTP requests served.", one(c.http_requests.load(Ordering::Relaxed)));
    metric("vigil_auth_failures_total", "counter", "Refused admin and peer requests.", one(c.auth_failures.load(Ordering::Relaxed)));
    metric("vigil_tls_refused_total", "counter", "Failed TLS handshakes (certificate refused, none shown, old version).", one(c.tls_refused.load(Ordering::Relaxed)));
    if let Some(tls) = &state.tls {
        metric("vigil_tls_certificate_reloads_total", "counter", "Times the TLS certificate and key were read again after their files changed.", one(tls.identity.reloads()));
    }
    metric("vigil_http_connections", "gauge", "Open HTTP connections.", one(state.connections.len() as u64));
    metric(
        "vigil_http_connections_evicted_total",
        "counter",
        "HTTP connections closed to make room for new clients, or for being idle or stalled.",
        one(state.connections.evicted.load(Ordering::Relaxed)),
    );
    metric("vigil_pending_actions", "gauge", "Actions queued or running.", one(u64::from(s.pending_actions)));
    metric("vigil_app_healthy", "gauge", "1 while every app-check service runs.", one(u64::from(s.app_healthy)));
    let peer_lines = |f: &dyn Fn(&crate::state::PeerStatus) -> Option<String>| {
        s.peers.iter().filter_map(|p| f(p).map(|v| (format!("{{peer=\"{}\"}}", p.id), v))).collect::<Vec<_>>()
    };
    metric("vigil_peer_reachable", "gauge", "1 while the peer answers on at least one path.", peer_lines(&|p| Some(u8::from(p.reachable).to_string())));
    metric("vigil_peer_consecutive_failures", "gauge", "Consecutive failed heartbeat checks.", peer_lines(&|p| Some(p.consecutive_failures.to_string())));
    metric("vigil_peer_clock_skew_ms", "gauge", "The peer's clock minus this node's, from heartbeats.", peer_lines(&|p| p.clock_skew_ms.map(|v| v.to_string())));
    if let Some(r) = &s.relay {
        let target = |v: u64| vec![(format!("{{target=\"{}\"}}", r.target), v.to_string())];
        metric("vigil_relay_accepted_total", "counter", "Client connections accepted by the relay.", target(r.accepted));
        metric("vigil_relay_open_connections", "gauge", "Connections the relay splices now.", target(r.open));
        metric("vigil_relay_failed_total", "counter", "Connections closed because the target did not answer.", target(r.failed));
    }
    metric("vigil_sync_items", "gauge", "Live entries in the replicated store.", one(s.sync.items));
    metric("vigil_sync_consecutive_failures", "gauge", "Failed sync attempts in a row.", one(u64::from(s.sync.consecutive_failures)));
    metric("vigil_sync_pending_files", "gauge", "File changes in the store not yet written to disk (retried).", one(s.sync.pending_files));
    metric("vigil_sync_held_directories", "gauge", "Replicated directories whose scan is held (see /status).", one(s.sync.held.len() as u64));
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(out)))
        .expect("valid response")
}
