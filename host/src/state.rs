//! The node's shared state: what the loop publishes and the HTTP server reads, and the inbox the
//! HTTP server fills for the loop (operator requests, peer commands).
//!
//! The loop is the only writer of [`Status`]; handlers take a snapshot and never wait on the loop, so
//! a stalled loop cannot stall the endpoints that must report it stalled.

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::events::{Event, EventLog};
use crate::heartbeat::Tracker;
use crate::model::{Check, Mode, OperatorRequest, ReceivedCommand, Role, ServiceState, VipView};
use crate::peer::signing::Verifier;
use crate::policy::reload::PolicyHandle;
use crate::policy::{PluginDirs, Runtime};
use crate::services::Services;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Requests waiting for the next tick.
#[derive(Debug, Default)]
pub struct Inbox {
    /// The latest operator request (a newer one replaces an undelivered older one).
    pub operator: Option<OperatorRequest>,
    pub commands: Vec<ReceivedCommand>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub ticks: AtomicU64,
    pub plugin_faults: AtomicU64,
    pub http_requests: AtomicU64,
    pub auth_failures: AtomicU64,
    /// TLS handshakes that failed (a certificate refused, a client without one, an old version).
    pub tls_refused: AtomicU64,
    pub mode_changes: AtomicU64,
}

/// What a rendering of `/status` is valid for: the publication, and the loop's age in 100 ms steps.
pub type StatusKey = (u64, Option<u64>);

/// Everything the loop and the HTTP server share.
pub struct NodeState {
    pub config: NodeConfig,
    pub clock: Arc<dyn Clock>,
    pub runtime: Arc<Runtime>,
    pub plugin_dirs: PluginDirs,
    pub policy: PolicyHandle,
    pub events: EventLog,
    pub services: Arc<Services>,
    pub replicator: Arc<crate::replication::Replicator>,
    pub verifier: Verifier,
    pub admin_token: Option<String>,
    /// The HTTPS listener's TLS (`[tls]`), with this node's reloaded certificate.
    pub tls: Option<crate::tls::ServerTls>,
    /// How this node checks `https://` peers and watched nodes (`tls.ca`).
    pub client_tls: Option<crate::tls::ClientTls>,
    /// Written by [`NodeState::publish`] only.
    pub status: RwLock<Status>,
    /// `/status` rendered, with the publication and loop-age bucket it was rendered for: a crowd of
    /// clients asking for it costs one rendering per tick, not one per request.
    pub status_json: Mutex<Option<(StatusKey, bytes::Bytes)>>,
    /// Bumped by every [`NodeState::publish`].
    pub generation: AtomicU64,
    /// Monotonic time the loop last finished a tick; `u64::MAX` before the first.
    pub last_loop_mono_ms: AtomicU64,
    pub inbox: Mutex<Inbox>,
    pub counters: Counters,
    /// The HTTP server's open connections.
    pub connections: Arc<crate::http::conns::Table>,
    /// `x-vigil-node` of every answer, made once (`None`: an id that is no header value).
    pub node_header: Option<hyper::header::HeaderValue>,
    /// The udp fast path's socket (`heartbeat.udp_listen`), bound at start, until the loop takes it.
    pub udp_socket: Mutex<Option<std::net::UdpSocket>>,
}

impl NodeState {
    /// Whether the loop ran within two heartbeat intervals: the liveness rule of `/health`,
    /// `/active` and `/standby`.
    pub fn loop_alive(&self) -> bool {
        let last = self.last_loop_mono_ms.load(Ordering::Acquire);
        last != u64::MAX && self.clock.mono_ms().saturating_sub(last) <= 2 * u64::from(self.config.heartbeat.interval_ms)
    }

    /// Milliseconds since the loop last ran, if it ever did.
    pub fn loop_age_ms(&self) -> Option<u64> {
        let last = self.last_loop_mono_ms.load(Ordering::Acquire);
        (last != u64::MAX).then(|| self.clock.mono_ms().saturating_sub(last))
    }

    /// A copy of the published status.
    pub fn snapshot(&self) -> Status {
        self.status.read().expect("status lock").clone()
    }

    /// The published mode (without copying the rest: the load balancers' endpoints ask for it).
    pub fn mode(&self) -> crate::model::Mode {
        self.status.read().expect("status lock").node.mode
    }

    /// Publish a new status.
    pub fn publish(&self, status: Status) {
        *self.status.write().expect("status lock") = status;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Record an event, logging (never failing) when the log cannot be written.
    pub fn record(&self, event: Event) {
        if let Err(e) = self.events.record(event) {
            tracing::error!(error = %e, "cannot write the event log");
        }
    }
}

/// `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub node: NodeStatus,
    pub peers: Vec<PeerStatus>,
    pub watched: Vec<PeerStatus>,
    pub lan: Option<Check>,
    pub vip: Option<VipView>,
    /// The traffic relay, when the policy has one.
    pub relay: Option<RelayStatus>,
    /// The udp fast path's receiver: datagrams taken and refused (with the last reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<crate::udp::BoardCounts>,
    pub policy: PolicyStatus,
    pub services: Vec<ServiceStatus>,
    pub app_healthy: bool,
    pub sync: crate::replication::SyncStatus,
    pub ticks: u64,
    pub pending_actions: u32,
    /// Milliseconds since the loop last ran (filled in when served).
    pub loop_age_ms: Option<u64>,
    /// The latest events, newest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub configured_role: Role,
    pub mode: Mode,
    pub mode_since_ms: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStatus {
    pub id: String,
    pub reachable: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub reported_mode: Option<Mode>,
    pub reported_role: Option<Role>,
    pub app_healthy: Option<bool>,
    /// Wall-clock time it last answered (ms since the Unix epoch).
    pub last_seen_ms: Option<u64>,
    pub clock_skew_ms: Option<i64>,
    pub paths: Vec<Check>,
    pub services: Vec<Check>,
    pub last_error: Option<String>,
    /// Reachable, but refusing this node's requests, and why (clock skew beyond the signature window).
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyStatus {
    pub name: String,
    pub path: String,
    pub plugin: String,
    pub plugin_sha256: String,
    pub loaded_at_ms: u64,
    pub faults: u64,
    pub consecutive_faults: u32,
    pub last_fault: Option<String>,
    pub reloads: u64,
    pub reload_failures: u64,
    /// The latest reload error (the previous policy is still deciding).
    pub last_error: Option<String>,
}

/// The relay's target and counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayStatus {
    pub target: String,
    pub listen: Option<String>,
    pub accepted: u64,
    pub open: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
}

/// The peer lines of `/status`, from the tracker.
pub fn peer_statuses(tracks: &[crate::heartbeat::RemoteTrack], now_ms: u64, mono_ms: u64) -> Vec<PeerStatus> {
    tracks
        .iter()
        .map(|t| {
            let r = &t.remote;
            PeerStatus {
                id: r.id.clone(),
                reachable: r.reachable,
                consecutive_failures: r.consecutive_failures,
                consecutive_successes: r.consecutive_successes,
                reported_mode: r.report.as_ref().map(|p| p.mode),
                reported_role: r.report.as_ref().and_then(|p| p.configured_role),
                app_healthy: r.report.as_ref().and_then(|p| p.app_healthy),
                last_seen_ms: t.last_seen_mono_ms.map(|seen| now_ms.saturating_sub(mono_ms.saturating_sub(seen))),
                clock_skew_ms: t.clock_skew_ms,
                paths: r.paths.clone(),
                services: r.services.clone(),
                last_error: t.last_error.clone(),
                refused: t.refused.clone(),
            }
        })
        .collect()
}

/// Both peer tables of `/status`.
pub fn remote_statuses(tracker: &Tracker, now_ms: u64, mono_ms: u64) -> (Vec<PeerStatus>, Vec<PeerStatus>) {
    (peer_statuses(&tracker.peers, now_ms, mono_ms), peer_statuses(&tracker.watched, now_ms, mono_ms))
}
