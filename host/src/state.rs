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
    /// A promoted shadow policy and its state: the loop swaps it in at the start of its next tick.
    pub promote: Option<(Arc<crate::policy::LoadedPolicy>, Vec<u8>)>,
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
    /// The shadow policy, when one is set (`[shadow]`, `POST /admin/shadow`).
    pub shadow: Mutex<Option<Arc<crate::node::shadow::Shadow>>>,
    /// `/metrics`: the registry and the handles the loop, the executor, replication and the HTTP
    /// server record into.
    pub metrics: crate::metrics::Metrics,
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
    /// The node's modes over the last hour (the operator console draws it).
    pub timeline: ModeTimeline,
    /// The etcd arbiter (`[arbiter]`): endpoints up, holder, lease left, last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arbiter: Option<crate::arbiter::ArbiterStatus>,
    /// The shadow policy (`[shadow]`), when one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::node::shadow::ShadowStatus>,
    /// The flight recorder (`[recorder]`), when it records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorder: Option<crate::recorder::RecorderStatus>,
}

/// One mode change of the [`ModeTimeline`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModeChange {
    /// Wall-clock time of the change (ms since the Unix epoch).
    pub at_ms: u64,
    pub mode: Mode,
    pub reason: String,
}

/// The node's mode changes over the last [`window_ms`](Self::window_ms), kept in memory by the loop
/// (a restart starts a new one): oldest first, the first one possibly older than the window (the
/// mode the window opens with). At most [`ModeTimeline::MAX_CHANGES`]: a node flapping faster drops
/// its oldest changes and counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModeTimeline {
    pub window_ms: u64,
    /// When the loop last published it (ms since the Unix epoch): the window ends there.
    pub until_ms: u64,
    pub changes: std::collections::VecDeque<ModeChange>,
    /// Changes dropped within the window for want of room.
    pub dropped: u64,
}

impl ModeTimeline {
    /// One hour.
    pub const WINDOW_MS: u64 = 3_600_000;
    /// Room for a change every 15 s over the hour.
    pub const MAX_CHANGES: usize = 240;

    /// A timeline whose first entry is `mode` at `at_ms`.
    pub fn new(at_ms: u64, mode: Mode, reason: &str) -> ModeTimeline {
        let mut timeline = ModeTimeline { window_ms: Self::WINDOW_MS, until_ms: at_ms, ..ModeTimeline::default() };
        timeline.changes.push_back(ModeChange { at_ms, mode, reason: reason.to_string() });
        timeline
    }

    /// Record a change to `mode` at `at_ms`, and forget what fell out of the window.
    pub fn record(&mut self, at_ms: u64, mode: Mode, reason: &str) {
        if self.changes.back().is_some_and(|last| last.mode == mode) {
            return;
        }
        self.changes.push_back(ModeChange { at_ms, mode, reason: reason.to_string() });
        if self.changes.len() > Self::MAX_CHANGES {
            self.changes.pop_front();
            self.dropped += 1;
        }
        self.advance(at_ms);
    }

    /// Move the window's end to `now_ms`: changes before the window go, except the last of them
    /// (the mode the window starts in).
    pub fn advance(&mut self, now_ms: u64) {
        self.until_ms = self.until_ms.max(now_ms);
        let start = self.until_ms.saturating_sub(self.window_ms);
        while self.changes.get(1).is_some_and(|next| next.at_ms <= start) {
            self.changes.pop_front();
        }
        if self.changes.front().is_some_and(|first| first.at_ms <= start) {
            // Whatever was dropped is now out of the window too.
            self.dropped = 0;
        }
    }
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
    /// Each path's round trip in the latest heartbeat round, in microseconds (`None`: it failed), in
    /// the order of `paths`.
    pub path_rtt_us: Vec<Option<u64>>,
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
                path_rtt_us: t.path_rtt_us.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_keeps_the_last_hour_and_the_mode_it_opens_with() {
        let hour = ModeTimeline::WINDOW_MS;
        let mut t = ModeTimeline::new(1_000, Mode::Starting, "started");
        t.record(2_000, Mode::Standby, "peer active");
        t.record(2_500, Mode::Standby, "still");
        assert_eq!(t.changes.len(), 2, "a repeated mode is no change");
        t.record(10_000, Mode::Active, "peer failed");
        t.advance(2_000 + hour);
        let modes: Vec<Mode> = t.changes.iter().map(|c| c.mode).collect();
        assert_eq!(modes, [Mode::Standby, Mode::Active], "starting fell out; standby opens the window");
        t.advance(20_000 + hour);
        assert_eq!(t.changes.len(), 1, "only the mode the window opens with is left");
        assert_eq!((t.changes[0].mode, t.until_ms), (Mode::Active, 20_000 + hour));
    }

    #[test]
    fn a_flapping_node_keeps_the_latest_changes_and_counts_the_rest() {
        let mut t = ModeTimeline::new(0, Mode::Starting, "started");
        for i in 1..=1_000u64 {
            t.record(i * 100, if i % 2 == 0 { Mode::Active } else { Mode::Standby }, "flap");
        }
        assert_eq!(t.changes.len(), ModeTimeline::MAX_CHANGES);
        assert_eq!(t.dropped, 1_001 - ModeTimeline::MAX_CHANGES as u64);
        assert_eq!(t.changes.back().unwrap().at_ms, 100_000);
    }
}
