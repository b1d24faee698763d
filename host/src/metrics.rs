//! `/metrics`: the node's OpenMetrics registry (`prometheus-client`).
//!
//! Two kinds of metric, one registry, owned by [`NodeState`]:
//! - **recorded where they happen**, through handles made once: ticks, decide time (the policy call),
//!   mode changes by from/to mode, heartbeat round trips per peer and path, action durations per
//!   kind, peer-command results, replicated bytes and changes per peer, HTTP requests, refused
//!   requests and TLS handshakes. Recording is an atomic add or a short lock, and allocates nothing.
//! - **read at scrape time** from what the loop publishes ([`StateCollector`]): the mode, loop
//!   liveness, peer and path reachability, clock skew, sync lag and store counts, policy reloads,
//!   connections, the relay. A stalled loop cannot report itself stalled, so these are never pushed
//!   by it.
//!
//! Never: a label value from unbounded input (peers and paths come from the configuration, actions
//! and commands are verbs, modes are the mode set), nor anything a scrape makes the loop wait for.
//!
//! `/metrics` answers in the OpenMetrics text format, or in the Prometheus text format 0.0.4 when the
//! client asks for `text/plain` or `text/html` and not OpenMetrics (older scrapers, `promtool check
//! metrics`, browsers). The names, types and labels are listed in the operator guide, "Metrics";
//! `dist/prometheus/vigil-rules.yml` and `dist/grafana/vigil.json` use them.

use crate::model::{Action, Mode, PeerCommand};
use crate::state::NodeState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Policy calls: well under a millisecond for a small plugin, up to its time limit.
const DECIDE_BUCKETS: [f64; 11] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Heartbeat round trips: loopback to a slow WAN link, up to a timeout.
const RTT_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Actions: a recorded alarm to a service start that takes a minute.
const ACTION_BUCKETS: [f64; 13] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

type StaticLabels = [(&'static str, &'static str); 2];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The registry and the handles the node records into.
pub struct Metrics {
    registry: Registry,
    /// The node whose published state the scrape-time metrics read (set once it exists).
    node: Arc<OnceLock<Weak<NodeState>>>,
    pub ticks: Counter,
    pub decide: Histogram,
    pub plugin_faults: Counter,
    pub http_requests: Counter,
    pub auth_failures: Counter,
    pub tls_refused: Counter,
    mode_changes: Family<StaticLabels, Counter>,
    actions: HistogramFamily<StaticLabels>,
    peer_commands: Family<StaticLabels, Counter>,
    heartbeat_rtt: HistogramFamily<[(&'static str, String); 2]>,
    /// Per peer, made at start: replication records without building label sets.
    pub sync: SyncMetrics,
    /// The etcd arbiter (`[arbiter]`; zero without one).
    pub arbiter: ArbiterMetrics,
    /// The flight recorder's records, drops and ring size.
    pub recorder: crate::recorder::RecorderMetrics,
    /// The shadow policy's ticks, divergences, faults, skips and decide time.
    pub shadow: crate::node::shadow::ShadowMetrics,
}

/// The etcd arbiter's metrics (issue 11).
#[derive(Debug, Clone)]
pub struct ArbiterMetrics {
    pub reachable: prometheus_client::metrics::gauge::Gauge,
    pub held: prometheus_client::metrics::gauge::Gauge,
    pub renew_latency: Histogram,
    pub campaigns: Counter,
    pub demotions: Counter,
}

/// Replication's counters, per configured peer.
#[derive(Debug, Clone, Default)]
pub struct SyncMetrics {
    peers: Arc<HashMap<String, PeerSync>>,
}

/// One peer's replication counters.
#[derive(Debug, Clone, Default)]
pub struct PeerSync {
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub changes_in: Counter,
    pub changes_out: Counter,
}

impl SyncMetrics {
    /// `peer`'s counters, if it is a configured peer.
    pub fn peer(&self, peer: &str) -> Option<&PeerSync> {
        self.peers.get(peer)
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn histogram(buckets: &[f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

impl Metrics {
    /// The registry of a node whose peers are `peers`.
    pub fn new(peers: &[String]) -> Metrics {
        let mut registry = Registry::default();
        let ticks = Counter::default();
        registry.register("vigil_ticks", "Ticks decided", ticks.clone());
        let decide = histogram(&DECIDE_BUCKETS);
        registry.register_with_unit("vigil_decide_duration", "Time of one policy decision (the plugin call and its checks)", Unit::Seconds, decide.clone());
        let plugin_faults = Counter::default();
        registry.register("vigil_plugin_faults", "Plugin faults (time, memory, trap, invalid decision)", plugin_faults.clone());
        let mode_changes = Family::<StaticLabels, Counter>::default();
        registry.register("vigil_mode_changes", "Mode changes, by the mode left (from) and the mode entered (to); to=\"active\" is a takeover", mode_changes.clone());
        let actions: HistogramFamily<StaticLabels> = Family::new_with_constructor(|| histogram(&ACTION_BUCKETS));
        registry.register_with_unit("vigil_action_duration", "Time an action took, by action kind and result (ok, failed)", Unit::Seconds, actions.clone());
        let peer_commands = Family::<StaticLabels, Counter>::default();
        registry.register("vigil_peer_commands", "Peer commands sent, by command and result (delivered, failed)", peer_commands.clone());
        let heartbeat_rtt: HistogramFamily<[(&'static str, String); 2]> = Family::new_with_constructor(|| histogram(&RTT_BUCKETS));
        registry.register_with_unit("vigil_heartbeat_round_trip", "Round trip of a heartbeat check that answered, per peer and path", Unit::Seconds, heartbeat_rtt.clone());
        let http_requests = Counter::default();
        registry.register("vigil_http_requests", "HTTP requests served", http_requests.clone());
        let auth_failures = Counter::default();
        registry.register("vigil_auth_failures", "Refused admin and peer requests", auth_failures.clone());
        let tls_refused = Counter::default();
        registry.register("vigil_tls_refused", "Failed TLS handshakes (certificate refused, none shown, old version)", tls_refused.clone());

        let bytes = Family::<[(&'static str, String); 2], Counter>::default();
        registry.register_with_unit("vigil_sync", "Replication bytes per peer: in (pulled pages, pushed batches received), out (pages served, batches pushed)", Unit::Bytes, bytes.clone());
        let changes = Family::<[(&'static str, String); 2], Counter>::default();
        registry.register("vigil_sync_changes", "Replicated changes per peer: in (applied from it), out (served to it or pushed to it)", changes.clone());
        let sync = SyncMetrics {
            peers: Arc::new(
                peers
                    .iter()
                    .map(|p| {
                        let labels = |direction: &'static str| [("peer", p.clone()), ("direction", direction.to_string())];
                        let handles = PeerSync {
                            bytes_in: bytes.get_or_create_owned(&labels("in")),
                            bytes_out: bytes.get_or_create_owned(&labels("out")),
                            changes_in: changes.get_or_create_owned(&labels("in")),
                            changes_out: changes.get_or_create_owned(&labels("out")),
                        };
                        (p.clone(), handles)
                    })
                    .collect(),
            ),
        };
        let arbiter = ArbiterMetrics {
            reachable: Default::default(),
            held: Default::default(),
            renew_latency: histogram(&RTT_BUCKETS),
            campaigns: Counter::default(),
            demotions: Counter::default(),
        };
        registry.register("vigil_arbiter_reachable", "1 when an etcd endpoint of the arbiter answered within half the lease", arbiter.reachable.clone());
        registry.register("vigil_arbiter_held", "1 when this node holds the arbiter's role key on a lease it keeps alive (minus the margin)", arbiter.held.clone());
        registry.register_with_unit("vigil_arbiter_lease_renew", "Time of one lease renewal (keep-alive) with etcd", Unit::Seconds, arbiter.renew_latency.clone());
        registry.register("vigil_arbiter_campaigns", "Campaigns for the arbiter's role key (transactions sent)", arbiter.campaigns.clone());
        registry.register("vigil_arbiter_demotions", "Demotions by the host's fencing (the role key lost, or not renewed in time)", arbiter.demotions.clone());
        let recorder = crate::recorder::RecorderMetrics::default();
        registry.register("vigil_recorder_records", "Decided ticks the flight recorder wrote", recorder.records.clone());
        registry.register("vigil_recorder_dropped", "Decided ticks the flight recorder dropped (its writer behind, or the disk failing)", recorder.dropped.clone());
        registry.register_with_unit("vigil_recorder_size", "The flight recorder's ring on disk", Unit::Bytes, recorder.bytes.clone());
        let shadow = crate::node::shadow::ShadowMetrics::new(&DECIDE_BUCKETS);
        registry.register("vigil_shadow_ticks", "Ticks the shadow policy decided", shadow.ticks.clone());
        registry.register("vigil_shadow_divergences", "Ticks where the shadow policy decided another mode or other actions than the live one", shadow.divergences.clone());
        registry.register("vigil_shadow_faults", "Faults of the shadow policy (the live decision unaffected)", shadow.faults.clone());
        registry.register("vigil_shadow_skipped", "Ticks the shadow policy skipped, still busy with earlier ones", shadow.skipped.clone());
        registry.register_with_unit("vigil_shadow_decide_duration", "Time of one shadow policy decision", Unit::Seconds, shadow.decide.clone());
        let node = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(StateCollector { node: node.clone() }));
        Metrics {
            registry,
            node,
            ticks,
            decide,
            plugin_faults,
            http_requests,
            auth_failures,
            tls_refused,
            mode_changes,
            actions,
            peer_commands,
            heartbeat_rtt,
            sync,
            arbiter,
            recorder,
            shadow,
        }
    }

    /// Let the scrape-time metrics read `state` (once, when the node is built).
    pub fn bind(&self, state: &Arc<NodeState>) {
        let _ = self.node.set(Arc::downgrade(state));
    }

    /// A mode change.
    pub fn mode_changed(&self, from: Mode, to: Mode) {
        self.mode_changes.get_or_create(&[("from", from.as_str()), ("to", to.as_str())]).inc();
    }

    /// A finished action.
    pub fn action_finished(&self, action: &Action, ok: bool, seconds: f64) {
        self.actions.get_or_create(&[("action", action_kind(action)), ("result", if ok { "ok" } else { "failed" })]).observe(seconds);
    }

    /// The result of sending `command` to one peer.
    pub fn peer_command(&self, command: PeerCommand, delivered: bool) {
        self.peer_commands.get_or_create(&[("command", command.as_str()), ("result", if delivered { "delivered" } else { "failed" })]).inc();
    }

    /// The round-trip histogram of one peer path (made once per path by the loop).
    pub fn heartbeat_path(&self, peer: &str, path: &str) -> Histogram {
        self.heartbeat_rtt.get_or_create_owned(&[("peer", peer.to_string()), ("path", path.to_string())])
    }

    /// The registry in the OpenMetrics text format (`openmetrics`) or the Prometheus text format.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        encoded.expect("writing to a String does not fail");
        out
    }
}

/// An action's kind: its verb, a bounded label value.
pub fn action_kind(action: &Action) -> &'static str {
    match action {
        Action::Start(_) => "start",
        Action::Stop(_) => "stop",
        Action::Restart(_) => "restart",
        Action::Hook { .. } => "hook",
        Action::ClaimVip => "claim-vip",
        Action::ReleaseVip => "release-vip",
        Action::Route(_) => "route",
        Action::Command { .. } => "command",
        Action::Sync => "sync",
        Action::Alarm { .. } => "alarm",
    }
}

/// Whether an `Accept` header asks for the Prometheus text format rather than OpenMetrics: it names
/// `text/plain` (an older scraper) or `text/html` (a browser, which shows text but would download
/// OpenMetrics), and not `application/openmetrics-text`. Anything else gets OpenMetrics.
pub fn wants_prometheus_text(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| (a.contains("text/plain") || a.contains("text/html")) && !a.contains("application/openmetrics-text"))
}

/// The metrics read from the published status when scraped.
#[derive(Debug)]
struct StateCollector {
    node: Arc<OnceLock<Weak<NodeState>>>,
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(state) = self.node.get().and_then(Weak::upgrade) else { return Ok(()) };
        let s = state.snapshot();
        {
            let mut m = e.encode_descriptor("vigil_mode", "1 for the node's current mode, 0 for the others", None, MetricType::Gauge)?;
            for mode in Mode::ALL {
                ConstGauge::new(i64::from(*mode == s.node.mode)).encode(m.encode_family(&[("mode", mode.as_str())])?)?;
            }
        }
        gauge(&mut e, "vigil_loop_alive", "1 while the node loop ran within two heartbeat intervals", i64::from(state.loop_alive()))?;
        let reload = state.policy.status();
        counter(&mut e, "vigil_policy_reloads", "Successful policy reloads", reload.reloads)?;
        counter(&mut e, "vigil_policy_reload_failures", "Failed policy reloads (the previous policy keeps deciding)", reload.failures)?;
        if let Some(tls) = &state.tls {
            counter(&mut e, "vigil_tls_certificate_reloads", "Times the TLS certificate and key were read again after their files changed", tls.identity.reloads())?;
        }
        gauge(&mut e, "vigil_http_connections", "Open HTTP connections", state.connections.len() as i64)?;
        counter(
            &mut e,
            "vigil_http_connections_evicted",
            "HTTP connections closed to make room for new clients, or for being idle or stalled",
            state.connections.evicted.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        gauge(&mut e, "vigil_pending_actions", "Actions queued or running", i64::from(s.pending_actions))?;
        gauge(&mut e, "vigil_app_healthy", "1 while every app-check service runs", i64::from(s.app_healthy))?;
        {
            let mut m = e.encode_descriptor("vigil_peer_reachable", "1 while the peer answers on at least one path", None, MetricType::Gauge)?;
            for p in &s.peers {
                ConstGauge::new(i64::from(p.reachable)).encode(m.encode_family(&[("peer", p.id.as_str())])?)?;
            }
        }
        {
            let mut m = e.encode_descriptor("vigil_peer_path_reachable", "1 while the peer answered its latest check on this heartbeat path", None, MetricType::Gauge)?;
            for p in &s.peers {
                for path in &p.paths {
                    ConstGauge::new(i64::from(path.ok)).encode(m.encode_family(&[("peer", p.id.as_str()), ("path", path.name.as_str())])?)?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor("vigil_peer_consecutive_failures", "Consecutive failed heartbeat checks of the peer", None, MetricType::Gauge)?;
            for p in &s.peers {
                ConstGauge::new(i64::from(p.consecutive_failures)).encode(m.encode_family(&[("peer", p.id.as_str())])?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "vigil_peer_clock_skew",
                "The peer's clock minus this node's, from its signed heartbeats",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for p in &s.peers {
                if let Some(skew) = p.clock_skew_ms {
                    ConstGauge::new(skew as f64 / 1000.0).encode(m.encode_family(&[("peer", p.id.as_str())])?)?;
                }
            }
        }
        ConstGauge::new(state.config.sync.max_clock_skew_ms as f64 / 1000.0).encode(e.encode_descriptor(
            "vigil_clock_skew_max",
            "The clock skew tolerated before it is reported (sync.max_clock_skew_ms)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        if let Some(r) = &s.relay {
            let target = [("target", r.target.as_str())];
            ConstCounter::new(r.accepted).encode(e.encode_descriptor("vigil_relay_accepted", "Client connections accepted by the relay", None, MetricType::Counter)?.encode_family(&target)?)?;
            ConstGauge::new(r.open as i64).encode(e.encode_descriptor("vigil_relay_open_connections", "Connections the relay splices now", None, MetricType::Gauge)?.encode_family(&target)?)?;
            ConstCounter::new(r.failed).encode(e.encode_descriptor("vigil_relay_failed", "Connections closed because the target did not answer", None, MetricType::Counter)?.encode_family(&target)?)?;
        }
        if let Some(u) = &s.udp {
            let mut m = e.encode_descriptor("vigil_udp_datagrams", "UDP heartbeats received, by whether they were taken", None, MetricType::Counter)?;
            ConstCounter::new(u.taken).encode(m.encode_family(&[("result", "taken")])?)?;
            ConstCounter::new(u.refused).encode(m.encode_family(&[("result", "refused")])?)?;
        }
        gauge(&mut e, "vigil_sync_items", "Live entries in the replicated store", s.sync.items as i64)?;
        gauge(&mut e, "vigil_sync_consecutive_failures", "Failed sync attempts in a row", i64::from(s.sync.consecutive_failures))?;
        gauge(&mut e, "vigil_sync_pending_files", "File changes in the store not yet written to disk (retried)", s.sync.pending_files as i64)?;
        gauge(&mut e, "vigil_sync_held_directories", "Replicated directories whose scan is held (see /status)", s.sync.held.len() as i64)?;
        {
            let mut m = e.encode_descriptor(
                "vigil_sync_lag_changes",
                "Changes of the peer this node has not pulled yet (from its latest heartbeat)",
                None,
                MetricType::Gauge,
            )?;
            let mut lag: Vec<_> = s.sync.lag.iter().collect();
            lag.sort();
            for (peer, changes) in lag {
                ConstGauge::new(*changes as i64).encode(m.encode_family(&[("peer", peer.as_str())])?)?;
            }
        }
        Ok(())
    }
}
