//! Endpoint tests on a real node state (real policy, real SQLite event log) with a manual clock;
//! requests go through the router, as the server would send them.

use super::route;
use crate::clock::{Clock, ManualClock};
use crate::config::NodeConfig;
use crate::model::{Mode, OperatorRequest, PeerCommand};
use crate::peer::signing::{self, HEADER_NONCE, HEADER_SIGNATURE};
use crate::state::NodeState;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{HeaderMap, Method, StatusCode};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const KEY: &str = "test-peer-key-0123456789abcdef";
pub(super) const TOKEN: &str = "test-admin-token-0123456789";
const INTERVAL: u64 = 100;

fn plugin_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(dir.join("testkit.wasm").exists(), "run `cargo xtask plugins` first (missing {})", dir.display());
    dir
}

pub(super) async fn node(mode: &str) -> (Arc<NodeState>, Arc<ManualClock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("peer.key"), KEY).unwrap();
    std::fs::write(p.join("admin.token"), TOKEN).unwrap();
    std::fs::write(p.join("policy.toml"), format!("plugin = \"testkit\"\n[params]\nmode = \"{mode}\"\n")).unwrap();
    std::fs::write(
        p.join("node.toml"),
        format!(
            "[node]\nid = \"a\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicy = \"policy.toml\"\nplugin_dirs = [\"{}\"]\n\
             [heartbeat]\ninterval_ms = {INTERVAL}\ntimeout_ms = {INTERVAL}\n\
             [[peer]]\nid = \"b\"\nurl = \"http://127.0.0.1:1\"\n\
             [security]\npeer_keys = [\"peer.key\"]\nadmin_token_file = \"admin.token\"\n",
            plugin_dir().display()
        ),
    )
    .unwrap();
    let config = NodeConfig::read(&p.join("node.toml")).unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let state = crate::node::runner::build(config, clock.clone()).await.unwrap();
    (state, clock, dir)
}

/// What the loop does at the end of a tick, for a given mode.
pub(super) fn loop_ran(state: &NodeState, clock: &ManualClock, mode: Mode) {
    let mut status = state.snapshot();
    status.node.mode = mode;
    state.publish(status);
    state.last_loop_mono_ms.store(clock.mono_ms(), Ordering::Release);
}

async fn call(state: &NodeState, method: Method, path: &str, headers: HeaderMap, body: &[u8]) -> (StatusCode, HeaderMap, String) {
    let answer = route(state, &method, path, None, &headers, Bytes::copy_from_slice(body)).await;
    let (parts, body) = answer.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

async fn get(state: &NodeState, path: &str) -> (StatusCode, String) {
    let (status, _, body) = call(state, Method::GET, path, HeaderMap::new(), b"").await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_loop_stops_claiming_the_role_while_http_answers() {
    let (state, clock, _dir) = node("active").await;
    assert_eq!(get(&state, "/health").await.0, StatusCode::SERVICE_UNAVAILABLE, "no tick yet: not healthy");
    loop_ran(&state, &clock, Mode::Active);
    assert_eq!(get(&state, "/active").await, (StatusCode::OK, "ACTIVE\n".into()));
    assert_eq!(get(&state, "/health").await.0, StatusCode::OK);
    assert_eq!(get(&state, "/standby").await.0, StatusCode::SERVICE_UNAVAILABLE);

    clock.advance(2 * INTERVAL);
    assert_eq!(get(&state, "/active").await.0, StatusCode::OK, "two intervals is still alive");
    clock.advance(1);
    assert_eq!(get(&state, "/active").await.0, StatusCode::SERVICE_UNAVAILABLE, "stalled: must stop claiming active");
    assert_eq!(get(&state, "/health").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&state, "/role").await, (StatusCode::OK, "ACTIVE\n".into()), "the server itself still answers");

    loop_ran(&state, &clock, Mode::Standby);
    assert_eq!(get(&state, "/standby").await.0, StatusCode::OK);
    assert_eq!(get(&state, "/active").await, (StatusCode::SERVICE_UNAVAILABLE, "STANDBY\n".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn head_and_options_answer_with_the_status_line_alone() {
    let (state, clock, _dir) = node("active").await;
    loop_ran(&state, &clock, Mode::Active);
    for method in [Method::HEAD, Method::OPTIONS] {
        let (status, headers, body) = call(&state, method.clone(), "/active", HeaderMap::new(), b"").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""), "{method}");
        assert_eq!(headers["x-vigil-node"], "a");
    }
    let (status, _, body) = call(&state, Method::HEAD, "/standby", HeaderMap::new(), b"").await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, ""));
    assert_eq!(call(&state, Method::POST, "/active", HeaderMap::new(), b"").await.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get(&state, "/nope").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_metrics_and_page_are_served() {
    let (state, clock, _dir) = node("active").await;
    loop_ran(&state, &clock, Mode::Active);
    let (status, body) = get(&state, "/status").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["node"]["id"], "a");
    assert_eq!(json["loop_age_ms"], 0);
    let (_, metrics) = get(&state, "/metrics").await;
    assert!(metrics.contains("vigil_mode{mode=\"active\"} 1"), "{metrics}");
    assert!(metrics.contains("vigil_loop_alive 1"));
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics ends with EOF: {metrics}");
    let (status, headers, page) = call(&state, Method::GET, "/", HeaderMap::new(), b"").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<title>vigil</title>"));
    for path in ["switch/standby", "switch/active", "switch/restore", "switch/restart-ha", "sync", "reload"] {
        assert!(page.contains(&format!("data-path=\"/admin/{path}\"")), "the console has a control for /admin/{path}");
    }
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "no external assets");
    let csp = headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(json["timeline"]["window_ms"], 3_600_000, "the mode timeline is published: {body}");
}

/// `/metrics` speaks OpenMetrics (and the Prometheus text format to a client asking for `text/plain`
/// alone), from the registry the node records into.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_openmetrics_from_the_registry() {
    let (state, clock, _dir) = node("active").await;
    loop_ran(&state, &clock, Mode::Active);
    state.metrics.mode_changed(Mode::Standby, Mode::Active);
    state.metrics.decide.observe(0.002);
    state.metrics.action_finished(&crate::model::Action::ClaimVip, true, 0.03);
    state.metrics.peer_command(PeerCommand::GoStandby, false);
    state.metrics.heartbeat_path("b", "main").observe(0.0007);
    state.metrics.sync.peer("b").expect("a configured peer has sync counters").bytes_in.inc_by(512);

    let (status, headers, body) = call(&state, Method::GET, "/metrics", HeaderMap::new(), b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    for line in [
        "vigil_mode_changes_total{from=\"standby\",to=\"active\"} 1",
        "vigil_decide_duration_seconds_count 1",
        "vigil_action_duration_seconds_bucket{le=\"0.05\",action=\"claim-vip\",result=\"ok\"} 1",
        "vigil_peer_commands_total{command=\"go-standby\",result=\"failed\"} 1",
        "vigil_heartbeat_round_trip_seconds_count{peer=\"b\",path=\"main\"} 1",
        "vigil_sync_bytes_total{peer=\"b\",direction=\"in\"} 512",
        "vigil_sync_changes_total{peer=\"b\",direction=\"out\"} 0",
        "vigil_ticks_total 0",
        "# TYPE vigil_peer_clock_skew_seconds gauge",
        "# UNIT vigil_decide_duration_seconds seconds",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in:\n{body}");
    }

    let mut accept = HeaderMap::new();
    accept.insert("accept", "text/plain; version=0.0.4".parse().unwrap());
    let (_, headers, text) = call(&state, Method::GET, "/metrics", accept, b"").await;
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    assert!(text.lines().any(|l| l == "# TYPE vigil_ticks_total counter"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_calls_need_the_token() {
    let (state, _clock, _dir) = node("standby").await;
    for path in ["/admin/switch/active", "/admin/switch/standby", "/admin/switch/restore", "/admin/switch/restart-ha", "/admin/sync", "/admin/reload"] {
        for headers in [HeaderMap::new(), bearer("wrong-token-0123456789"), bearer("")] {
            let (status, _, body) = call(&state, Method::POST, path, headers, b"").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        }
    }
    assert!(state.inbox.lock().unwrap().operator.is_none(), "a refused call changes nothing");
    assert_eq!(call(&state, Method::GET, "/events", HeaderMap::new(), b"").await.0, StatusCode::UNAUTHORIZED);

    let (status, _, body) = call(&state, Method::POST, "/admin/switch/sideways", bearer(TOKEN), b"").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("restart-ha"), "names what was expected: {body}");

    let (status, _, _) = call(&state, Method::POST, "/admin/switch/active", bearer(TOKEN), b"").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(state.inbox.lock().unwrap().operator, Some(OperatorRequest::Active));
    let (status, _, body) = call(&state, Method::GET, "/events", bearer(TOKEN), b"").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("operator requested active"), "{body}");
}

/// Peer b's request to the test node a, for a's current run.
fn signed(state: &NodeState, key: &str, method: &str, path: &str, body: &[u8], at_ms: u64) -> HeaderMap {
    signed_as(key, signing::Request { method, path, from: "b", to: "a", boot: state.verifier.boot(), body }, at_ms)
}

fn signed_as(key: &str, request: signing::Request<'_>, at_ms: u64) -> HeaderMap {
    let h = signing::sign_request(key.as_bytes(), request, at_ms, signing::new_nonce());
    let mut headers = HeaderMap::new();
    for (name, value) in h.pairs() {
        headers.insert(name, value.parse().unwrap());
    }
    headers
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authentic_refusal_is_signed_and_a_skewed_heartbeat_still_answered() {
    let (state, clock, _dir) = node("standby").await;
    let now = clock.wall_ms();
    let keys = [KEY.as_bytes().to_vec()];
    let path = crate::peer::HEARTBEAT_PATH;

    // b's clock is 40 s behind: outside the window, but b is alive and must learn a's mode and time.
    let headers = signed(&state, KEY, "GET", path, b"", now - 40_000);
    let (status, answer_headers, body) = call(&state, Method::GET, path, headers.clone(), b"").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let nonce = headers[HEADER_NONCE].to_str().unwrap();
    signing::verify_response(&keys, 409, nonce, body.as_bytes(), answer_headers[HEADER_SIGNATURE].to_str().unwrap()).expect("signed");
    let answer: crate::peer::HeartbeatAnswer = serde_json::from_str(&body).unwrap();
    assert_eq!((answer.id.as_str(), answer.now_ms), ("a", now));
    assert!(answer_headers[crate::peer::HEADER_REFUSED].to_str().unwrap().contains("40000 ms"));

    // A request addressed to another node (a heartbeat for b reflected to a through a moved VIP).
    let headers = signed_as(KEY, signing::Request { method: "GET", path, from: "b", to: "b", boot: state.verifier.boot(), body: b"" }, now);
    let (status, answer_headers, body) = call(&state, Method::GET, path, headers, b"").await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert!(body.contains("addressed to \"b\"") && answer_headers.contains_key(HEADER_SIGNATURE), "{body}");

    // A command for an earlier run of a (captured before a restart), or skewed, is refused, signed,
    // and not delivered.
    let command = serde_json::to_vec(&crate::peer::CommandMessage { command: PeerCommand::GoStandby }).unwrap();
    let earlier_run = signed_as(KEY, signing::Request { method: "POST", path: crate::peer::COMMAND_PATH, from: "b", to: "a", boot: "an-earlier-run", body: &command }, now);
    let skewed = signed(&state, KEY, "POST", crate::peer::COMMAND_PATH, &command, now - 40_000);
    for headers in [earlier_run, skewed] {
        let (status, answer_headers, body) = call(&state, Method::POST, crate::peer::COMMAND_PATH, headers, &command).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(answer_headers.contains_key(HEADER_SIGNATURE), "an authentic refusal is signed: {body}");
    }
    assert!(state.inbox.lock().unwrap().commands.is_empty());

    // Forged: unsigned, no refusal signature.
    let (status, answer_headers, _) = call(&state, Method::GET, path, HeaderMap::new(), b"").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!answer_headers.contains_key(HEADER_SIGNATURE));
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_requests_must_be_signed_fresh_and_unique() {
    let (state, clock, _dir) = node("standby").await;
    let now = clock.wall_ms();
    let body = serde_json::to_vec(&crate::peer::CommandMessage { command: PeerCommand::GoStandby }).unwrap();
    let path = crate::peer::COMMAND_PATH;
    let refused = [
        ("unsigned", HeaderMap::new()),
        ("wrong key", signed(&state, "another-key-0123456789abcdef", "POST", path, &body, now)),
        ("stale", signed(&state, KEY, "POST", path, &body, now - 60_000)),
        ("signed for another path", signed(&state, KEY, "POST", "/peer/heartbeat", &body, now)),
    ];
    for (what, headers) in refused {
        let (status, _, answer) = call(&state, Method::POST, path, headers, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
    }
    assert!(state.inbox.lock().unwrap().commands.is_empty(), "refused requests change nothing");

    let headers = signed(&state, KEY, "POST", path, &body, now);
    let (status, answer_headers, answer) = call(&state, Method::POST, path, headers.clone(), &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let nonce = headers[HEADER_NONCE].to_str().unwrap();
    let signature = answer_headers[HEADER_SIGNATURE].to_str().unwrap();
    signing::verify_response(&[KEY.as_bytes().to_vec()], 200, nonce, answer.as_bytes(), signature).expect("the answer is signed");
    assert_eq!(state.inbox.lock().unwrap().commands.len(), 1);

    let (status, _, answer) = call(&state, Method::POST, path, headers, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "replayed: {answer}");
    assert!(answer.contains("replay"), "{answer}");
    assert_eq!(state.inbox.lock().unwrap().commands.len(), 1, "the replay changed nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_requests_in_clear_from_other_than_loopback_and_private_ones_on_the_plain_listener_are_refused() {
    use super::{refusal, ConnInfo};
    let (state, _clock, _dir) = node("active").await;
    let headers = HeaderMap::new();
    let remote = ConnInfo { from: "10.1.2.3".parse().unwrap(), tls: false, public_only: false, client_cert: None };
    let body = |answer: super::Answer| async move {
        let (parts, body) = answer.into_parts();
        (parts.status, String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned())
    };
    for path in ["/events", "/admin/switch/standby", "/admin/sync", "/config/x"] {
        let (status, text) = body(refusal(&state, &remote, path, &headers).expect(path)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(text.contains("10.1.2.3") && text.contains("[tls]") && text.contains("admin_insecure_remote"), "{text}");
        assert!(refusal(&state, &ConnInfo::loopback(), path, &headers).is_none(), "{path} from loopback");
        assert!(refusal(&state, &ConnInfo { tls: true, ..remote.clone() }, path, &headers).is_none(), "{path} over TLS");
        let v6 = ConnInfo { from: std::net::Ipv6Addr::LOCALHOST.into(), ..remote.clone() };
        assert!(refusal(&state, &v6, path, &headers).is_none(), "{path} from ::1");
    }
    // Public and (signed) peer endpoints answer everyone.
    for path in ["/role", "/status", "/metrics", "/peer/heartbeat"] {
        assert!(refusal(&state, &remote, path, &headers).is_none(), "{path}");
    }
    // The plain listener of a TLS node: public endpoints only.
    let plain = ConnInfo { public_only: true, ..ConnInfo::loopback() };
    for path in ["/events", "/config/x", "/peer/heartbeat", "/peer/changes"] {
        let (status, text) = body(refusal(&state, &plain, path, &headers).expect(path)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(text.contains("plain_listen") && text.contains("https://"), "{text}");
    }
    assert!(refusal(&state, &plain, "/active", &headers).is_none());
}
