//! The daemon (`vigil run`): builds the node from its configuration and runs the loop
//!
//! ```text
//! every interval:  observe (one heartbeat round) → tick the plugin → hand the actions to the
//!                  executor → publish status
//! ```
//!
//! Ticks never overlap and never wait for an action: actions run on the executor's ordered queue and
//! their results reach the plugin on a later tick. Service status commands are polled by a task of
//! their own for the same reason. The first tick runs only after the first heartbeat round, so a node
//! never claims the active role before it has looked at its peers, and after one poll of every
//! service's status, so a restarted daemon's plugin sees which services already run. Until that tick
//! the node reports `STARTING`. After every tick the mode and the plugin's state go to
//! `node-state.json` ([`super::persist`]), which the next start hands to the first tick.

use super::persist::{NodeStateFile, Start};
use super::{NodeCore, Observations, Outcome};
use crate::clock::{Clock, SystemClock};
use crate::config::NodeConfig;
use crate::events::{Event, EventKind, EventLog};
use crate::executor::{Delegate, Executor};
use crate::heartbeat::{prober_for, Prober, Targets, Tracker};
use crate::http_client::HttpClient;
use crate::model::{Action, Level, PeerCommand};
use crate::peer::client::PeerClient;
use crate::peer::signing::Verifier;
use crate::policy::reload::{self, PolicyHandle, ReloadOutcome};
use crate::policy::{self, PluginDirs, Runtime};
use crate::replication::Replicator;
use crate::services::{Services, WatchdogLimits};
use crate::state::{self, Inbox, NodeState, PolicyStatus, RelayStatus, ServiceStatus, Status};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Why the daemon could not start. `Config` errors exit 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(anyhow::Error),
    #[error(transparent)]
    Other(anyhow::Error),
}

/// Debounce of policy file events.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);
/// Window for peer request timestamps; clocks of a pair are assumed NTP-synchronized.
const SIGNATURE_WINDOW_MS: u64 = 30_000;

/// How long start-up waits for its address while another process holds it.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// Bind the node's address. An address in use is tried again for [`LISTEN_WAIT`]: a daemon restarted
/// at once (by systemd, after a crash) may find its predecessor's socket not yet closed, or a
/// process that holds the port for a moment.
async fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(%addr, wait_s = LISTEN_WAIT.as_secs(), "address in use; trying again");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

/// Run the daemon until SIGINT or SIGTERM.
pub async fn run(config: NodeConfig) -> Result<(), StartError> {
    let clock: Arc<dyn Clock> = SystemClock::new();
    let state = build(config, clock).await?;
    let listener = listen(state.config.node.listen).await.map_err(|e| {
        StartError::Other(anyhow::anyhow!("{}: key `node.listen`: cannot listen on {}: {e}", state.config.path.display(), state.config.node.listen))
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let endpoint = match &state.tls {
        Some(tls) => crate::http::Endpoint::Tls(tls.acceptor.clone()),
        None => crate::http::Endpoint::Plain,
    };
    if let Some(plain) = state.config.tls.as_ref().and_then(|t| t.plain_listen) {
        let listener = listen(plain).await.map_err(|e| {
            StartError::Other(anyhow::anyhow!("{}: key `tls.plain_listen`: cannot listen on {plain}: {e}", state.config.path.display()))
        })?;
        tokio::spawn(crate::http::serve(listener, state.clone(), stop_rx.clone(), crate::http::Endpoint::PublicOnly));
    }
    tokio::spawn(crate::http::serve(listener, state.clone(), stop_rx.clone(), endpoint));

    let reload_state = state.clone();
    let _watcher = reload::watch(state.policy.clone(), state.runtime.clone(), state.plugin_dirs.clone(), RELOAD_DEBOUNCE, move |outcome| {
        record_reload(&reload_state, &outcome);
    })
    .map_err(|e| tracing::warn!(error = %e, "policy hot reload is off"))
    .ok();

    // The loop (ticks, heartbeat rounds, actions, pulls) runs on threads of its own: a crowd of HTTP
    // clients keeps the server's threads busy, and must not delay a tick past the liveness rule of
    // `/active` or a heartbeat past its timeout.
    let loop_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vigil-loop")
        .enable_all()
        .build()
        .map_err(|e| StartError::Other(anyhow::anyhow!("cannot start the node loop's runtime: {e}")))?;
    let node = loop_runtime.spawn(node_loop(state.clone(), stop_rx));
    shutdown_signal().await;
    tracing::info!("stopping");
    crate::systemd::Notifier::from_env().stopping();
    let _ = stop_tx.send(true);
    let _ = node.await;
    loop_runtime.shutdown_background();
    // Marked before the services stop: a daemon killed while stopping them starts fresh next time.
    let mut persisted = NodeStateFile::new(&state.config.node.data_dir, &state.config.node.id);
    if let Err(e) = persisted.save_clean_stop(state.clock.wall_ms()) {
        tracing::warn!(file = %persisted.path().display(), error = %e, "cannot record the clean stop");
    }
    stop_services(&state).await;
    state.record(Event::new(state.clock.wall_ms(), EventKind::Startup, "vigil stopped".to_string()));
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Build the node's shared state: event log, plugin runtime, policy, keys.
pub async fn build(config: NodeConfig, clock: Arc<dyn Clock>) -> Result<Arc<NodeState>, StartError> {
    let cfg_err = |e: anyhow::Error| StartError::Config(e);
    let data_dir = &config.node.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| cfg_err(anyhow::anyhow!("{}: key `node.data_dir`: cannot create {}: {e}", config.path.display(), data_dir.display())))?;
    let keys = config.read_peer_keys().map_err(|e| cfg_err(e.into()))?;
    let admin_token = config.read_admin_token().map_err(|e| cfg_err(e.into()))?;
    let tls = crate::tls::server(&config).map_err(|e| cfg_err(e.into()))?;
    if let Some(a) = &config.arbiter {
        let password = config.read_arbiter_password().map_err(|e| cfg_err(e.into()))?;
        crate::arbiter::check(a, password).map_err(|e| cfg_err(anyhow::anyhow!("{}: {e}", config.path.display())))?;
    }
    let client_tls = crate::tls::ClientTls::for_node(&config, tls.as_ref().map(|t| t.identity.clone())).map_err(|e| cfg_err(e.into()))?;
    let events = EventLog::open(&data_dir.join("events.sqlite"), config.events.retention).map_err(|e| StartError::Other(e.into()))?;
    let runtime = Arc::new(Runtime::new(Some(data_dir.join("plugin-cache"))).map_err(StartError::Other)?);
    let plugin_dirs = PluginDirs::standard(config.node.plugin_dirs.clone());
    let policy_path = config.node.policy.clone();
    let loaded = {
        let (runtime, dirs) = (runtime.clone(), plugin_dirs.clone());
        tokio::task::spawn_blocking(move || policy::load(&runtime, &dirs, &policy_path))
            .await
            .map_err(|e| StartError::Other(e.into()))?
            .map_err(|e| cfg_err(e.into()))?
    };
    let udp_socket = match config.heartbeat.udp_listen {
        Some(addr) => Some(std::net::UdpSocket::bind(addr).map_err(|e| {
            StartError::Other(anyhow::anyhow!("{}: key `heartbeat.udp_listen`: cannot bind {addr}: {e}", config.path.display()))
        })?),
        None => None,
    };
    let now = clock.wall_ms();
    let peer_client = PeerClient::new(HttpClient::with_tls(client_tls.as_ref()), config.node.id.clone(), keys.clone(), clock.clone());
    let metrics = crate::metrics::Metrics::new(&config.peers.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
    let mut replicator = Replicator::open(&config, &loaded.file.local_only, peer_client, clock.clone())
        .map_err(|e| StartError::Other(anyhow::anyhow!("{}: key `node.data_dir`: {e}", config.path.display())))?;
    replicator.set_metrics(metrics.sync.clone());
    let status = Status {
        node: state::NodeStatus {
            id: config.node.id.clone(),
            configured_role: config.node.role,
            mode: crate::model::Mode::Starting,
            mode_since_ms: now,
            reason: "started; the first tick decides the mode".into(),
        },
        timeline: state::ModeTimeline::new(now, crate::model::Mode::Starting, "started"),
        ..Status::default()
    };
    let state = Arc::new(NodeState {
        verifier: Verifier::new(keys, SIGNATURE_WINDOW_MS, &config.node.id),
        admin_token,
        tls,
        client_tls,
        clock: clock.clone(),
        runtime,
        plugin_dirs,
        policy: PolicyHandle::new(loaded),
        events,
        services: Arc::new(Services::with_clock(clock.clone(), WatchdogLimits::default())),
        replicator: Arc::new(replicator),
        status: RwLock::new(status),
        last_loop_mono_ms: u64::MAX.into(),
        inbox: Mutex::new(Inbox::default()),
        shadow: Mutex::new(None),
        metrics,
        status_json: Mutex::new(None),
        generation: AtomicU64::new(0),
        connections: crate::http::conns::Table::new(crate::http::conns::MAX_CONNECTIONS, crate::http::conns::MAX_PER_ADDRESS),
        node_header: config.node.id.parse().ok(),
        udp_socket: Mutex::new(udp_socket),
        config,
    });
    state.metrics.bind(&state);
    let p = state.policy.current();
    state.record(Event::new(
        now,
        EventKind::Startup,
        format!("vigil started as {} ({}), policy {} with plugin {}", state.config.node.id, state.config.node.role, p.path.display(), p.plugin.name()),
    ));
    if let Some(path) = state.config.shadow.policy.clone() {
        // A shadow that does not load is reported, not fatal: it never decides anything.
        let note = match set_shadow(&state, &path) {
            Ok(note) => note,
            Err(e) => {
                tracing::warn!(error = %e, "shadow policy not started");
                format!("shadow policy not started: {e}")
            }
        };
        state.record(Event::new(state.clock.wall_ms(), EventKind::Shadow, note));
    }
    Ok(state)
}

/// Load `path` as the shadow policy (replacing any), with the full load pipeline: what it says.
pub fn set_shadow(state: &NodeState, path: &std::path::Path) -> Result<String, String> {
    let shadow = crate::node::shadow::Shadow::start(&state.runtime, &state.plugin_dirs, path, state.config.shadow.promote_after_ticks, state.metrics.shadow.clone())?;
    let status = shadow.status();
    *state.shadow.lock().expect("shadow lock") = Some(Arc::new(shadow));
    Ok(format!("shadow policy {} set ({}, plugin {}): it decides every tick beside the live policy and never acts", status.policy, status.path, &status.plugin_sha256[..12.min(status.plugin_sha256.len())]))
}

/// Write a reload attempt to the event log.
pub fn record_reload(state: &NodeState, outcome: &ReloadOutcome) {
    let message = match outcome {
        ReloadOutcome::Reloaded { policy, plugin_sha256, took_ms } => {
            format!("policy {policy} reloaded in {took_ms} ms (plugin sha256 {})", &plugin_sha256[..12.min(plugin_sha256.len())])
        }
        ReloadOutcome::Failed { error } => format!("policy reload failed, the previous policy keeps deciding: {error}"),
    };
    state.record(Event::new(state.clock.wall_ms(), EventKind::Reload, message));
}

/// How long after the loop starts the start-up code is released (see [`crate::footprint`]).
const STARTUP_MS: u64 = 3_000;

/// The loop, until `stop` turns true.
pub async fn node_loop(state: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_millis(u64::from(state.config.heartbeat.interval_ms));
    let mut node = NodeLoop::start(state, interval, &stop);
    let mut systemd = crate::systemd::Notifier::from_env();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start-up is over a few seconds after the first tick: its code is given back (`footprint`).
    let release_code_at = node.state.clock.mono_ms() + STARTUP_MS;
    let mut code_released = false;
    loop {
        // A udp-judged peer is counted failed the moment its `failures`-th datagram is overdue, not
        // at the next tick after that (see `udp`).
        let udp_deadline = node.udp_deadline().map(|at| {
            let now = node.state.clock.mono_ms();
            tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now))
        });
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::time::sleep_until(udp_deadline.unwrap_or_else(tokio::time::Instant::now)), if udp_deadline.is_some() => {}
            _ = stop.changed() => break,
        }
        node.tick().await;
        let reachable = node.tracker.peers.iter().filter(|t| t.remote.reachable).count();
        systemd.after_tick(node.core.mode, reachable, node.tracker.peers.len());
        if !code_released && node.state.clock.mono_ms() >= release_code_at {
            code_released = true;
            let began = std::time::Instant::now();
            crate::footprint::trim_heap();
            let r = crate::footprint::release_startup_code();
            tracing::info!(
                took_ms = began.elapsed().as_millis() as u64,
                resident_before_kib = r.resident_before_kib,
                resident_after_kib = r.resident_after_kib,
                mapped_kib = r.mapped_kib,
                "start-up over: its code pages released"
            );
        }
    }
    // The actions already decided finish first (bounded), so that stopping the services on the way
    // out comes after them and nothing starts behind it.
    if tokio::time::timeout(Duration::from_secs(30), node.executor.idle()).await.is_err() {
        tracing::warn!("actions still running at shutdown after 30 s");
    }
    // The last state reaches the disk before `run` records the clean stop over it.
    node.persist.take();
    if let Some(writer) = node.writer.take() {
        let _ = writer.await;
    }
}

/// How many ticks an operator request is delivered on while the plugin faults on them.
const OPERATOR_TRIES: u32 = 3;

/// What the loop keeps from tick to tick.
struct NodeLoop {
    state: Arc<NodeState>,
    core: NodeCore,
    targets: Targets,
    prober: Prober,
    tracker: Tracker,
    monitors: Arc<crate::monitors::Monitors>,
    executor: Executor,
    relay: Arc<crate::relay::RelayHost>,
    peer_ids: Vec<String>,
    /// `/metrics` round-trip histograms, per peer and path of `targets` (made once).
    round_trips: Vec<Vec<prometheus_client::metrics::histogram::Histogram>>,
    /// The reason of the last decision written to the event log.
    last_reason: String,
    /// The modes of the last hour, for `/status` (the operator console).
    timeline: state::ModeTimeline,
    /// An operator request delivered again because the plugin faulted on its tick, and on how many
    /// ticks it has faulted so far.
    operator_faulted: Option<(crate::model::OperatorRequest, u32)>,
    /// Service polling, directory scans, monitor probes: each on a task of its own, so that nothing
    /// slow sits in a tick. Aborted when the loop ends.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The latest mode and state for `node-state.json`, which a writer task of its own saves: the
    /// loop never waits for the disk. Taken at the end, so the writer finishes before a clean stop.
    persist: Option<watch::Sender<Option<Persist>>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    /// The udp fast path (`heartbeat.udp_listen`): its threads stop when it is dropped.
    fast: Option<crate::udp::FastPath>,
    /// With `heartbeat.http_interval_ms`: the pace of every probe but the udp paths, the round of
    /// them running beside the fast rounds, and when the next one is due (monotonic ms).
    paced: Option<u64>,
    slow_round: Option<tokio::task::JoinHandle<crate::heartbeat::Round>>,
    next_slow_mono_ms: u64,
    /// The etcd arbiter (`[arbiter]`): its task runs beside the loop; each tick reads its view.
    arbiter: Option<Arc<crate::arbiter::Arbiter>>,
    /// The flight recorder (`[recorder]`): every decided tick, written by a thread of its own.
    recorder: Option<crate::recorder::Recorder>,
}

/// What the loop hands the `node-state.json` writer after a tick.
#[derive(Debug, Clone)]
struct Persist {
    mode: crate::model::Mode,
    since_ms: u64,
    state: Vec<u8>,
    now_ms: u64,
}

/// Save the latest [`Persist`] whenever it changes (a burst collapses to its last value), off the
/// loop, until the loop drops the sender; what was sent last is written before it returns.
async fn write_node_state(mut file: NodeStateFile, mut latest: watch::Receiver<Option<Persist>>) {
    while latest.changed().await.is_ok() {
        let Some(p) = latest.borrow_and_update().clone() else { continue };
        let saved = tokio::task::spawn_blocking(move || {
            let result = file.save(p.mode, p.since_ms, &p.state, p.now_ms);
            (file, result)
        })
        .await;
        match saved {
            Ok((back, result)) => {
                file = back;
                if let Err(e) = result {
                    tracing::warn!(file = %file.path().display(), error = %e, "cannot persist the node's mode and state");
                }
            }
            Err(_) => return,
        }
    }
}

impl NodeLoop {
    fn start(state: Arc<NodeState>, interval: Duration, stop: &watch::Receiver<bool>) -> NodeLoop {
        let config = &state.config;
        let targets = Targets::from_config(config);
        let mut prober = prober_for(config, state.replicator.peer_client().clone(), HttpClient::with_tls(state.client_tls.as_ref()));
        let fast = start_fast_path(&state, &targets);
        if let Some(fast) = &fast {
            let h = &config.heartbeat;
            prober = prober.with_udp(fast.board.clone(), u64::from(h.interval_ms), udp_slack_ms(h));
        }
        // The traffic relay of the policy's `[relay]`: started on the first tick, kept in line with reloads.
        let relay = Arc::new(crate::relay::RelayHost::with_memory(config.node.data_dir.join("route-target")));
        // The policy's `[[vip]]` addresses; what `set` replaced survives a restart in the data directory.
        let vips = crate::vip::Vips::new(Some(config.node.data_dir.join("vip-replaced.json")));
        let delegate = Arc::new(HostDelegate { state: state.clone(), prober: prober.clone(), targets: targets.clone(), relay: relay.clone(), vips });
        let executor = Executor::start(state.services.clone(), delegate);
        let observer_state = state.clone();
        executor.set_observer(Arc::new(move |result| {
            let verdict = if result.ok { "ok" } else { "FAILED" };
            let mut event = Event::new(
                result.finished_ms,
                EventKind::Action,
                format!("{} {verdict} in {} ms: {}", result.action, result.duration_ms, result.message),
            );
            event.detail = serde_json::json!({ "action": result.action, "ok": result.ok, "duration_ms": result.duration_ms });
            observer_state.record(event);
            observer_state.metrics.action_finished(&result.action, result.ok, f64::from(result.duration_ms) / 1000.0);
        }));
        let monitors = Arc::new(crate::monitors::Monitors::new());
        let arbiter = config.arbiter.as_ref().map(|a| crate::arbiter::Arbiter::new(a.clone(), &config.node.id, interval, state.clock.clone(), state.metrics.arbiter.clone()));
        let mut tasks = vec![
            tokio::spawn(poll_services(state.clone(), interval, stop.clone())),
            tokio::spawn(scan_directories(state.clone(), interval, stop.clone())),
            tokio::spawn(crate::monitors::poll(state.clone(), monitors.clone(), interval, stop.clone())),
        ];
        if let Some(arbiter) = &arbiter {
            let password = config.read_arbiter_password().ok().flatten();
            tasks.push(tokio::spawn(crate::arbiter::run(arbiter.clone(), password, stop.clone())));
        }
        let now = state.clock.wall_ms();
        let persisted = NodeStateFile::new(&config.node.data_dir, &config.node.id);
        let start = persisted.read_start(now, config.restart.max_downtime_ms);
        let (persist, latest) = watch::channel(None);
        let writer = tokio::spawn(write_node_state(persisted, latest));
        let note = match &start {
            Start::First => None,
            Start::Fresh(why) => Some(format!("fresh start: {why}")),
            Start::Restart(r) => Some(format!(
                "restart after {} ms down: the node was {} (since {} ms), with {} bytes of plugin state; the first tick decides whether to resume",
                r.downtime_ms,
                r.mode.role_word(),
                r.mode_since_ms,
                r.state.len()
            )),
        };
        if let Some(note) = note {
            tracing::info!("{note}");
            state.record(Event::new(now, EventKind::Startup, note));
        }
        let round_trips = targets.peers.iter().map(|(id, paths, _)| paths.iter().map(|p| state.metrics.heartbeat_path(id, &p.name)).collect()).collect();
        let recorder = start_recorder(&state);
        let mut core = NodeCore::new(&config.node.id, config.node.role, now)
            .with_startup_grace(u64::from(config.heartbeat.startup_grace_ms))
            .with_restart(start.info());
        core.recording = recorder.is_some();
        core.fencing = config.arbiter.as_ref().is_some_and(|a| a.fencing);
        NodeLoop {
            recorder,
            round_trips,
            core,
            arbiter,
            persist: Some(persist),
            writer: Some(writer),
            tracker: Tracker::new(&config.node.id, &targets),
            peer_ids: config.peers.iter().map(|p| p.id.clone()).collect(),
            targets,
            prober,
            monitors,
            executor,
            relay,
            last_reason: String::new(),
            timeline: state::ModeTimeline::new(now, crate::model::Mode::Starting, "started"),
            operator_faulted: None,
            tasks,
            fast,
            paced: config.heartbeat.http_interval_ms.map(u64::from),
            slow_round: None,
            next_slow_mono_ms: 0,
            state,
        }
    }

    /// Every peer with udp paths has been heard on one of them.
    fn udp_heard_from_every_peer(&self) -> bool {
        let Some(fast) = &self.fast else { return true };
        self.targets.peers.iter().all(|(id, paths, _)| {
            let udp = paths.iter().filter(|p| p.kind == crate::config::ProbeKind::Udp).collect::<Vec<_>>();
            udp.is_empty() || udp.iter().any(|p| fast.board.heard(id, &p.target).last_mono_ms.is_some())
        })
    }

    /// See [`Tracker::udp_deadline`].
    fn udp_deadline(&self) -> Option<u64> {
        self.fast.as_ref()?;
        self.tracker.udp_deadline(&self.state.config.heartbeat.model(), udp_slack_ms(&self.state.config.heartbeat))
    }

    /// This tick's heartbeat round. Without `http_interval_ms`, every probe, awaited. With it, the
    /// udp paths now, merged with the last paced round of everything else if one finished since the
    /// last tick; that round runs on a task of its own, so a slow or silent HTTP peer never holds a
    /// tick (nor the udp detection) for its timeout.
    ///
    /// The first tick (STARTING) waits for everything, and for a datagram from every udp peer up to
    /// the detection time: a restarted node must see its peer's mode before it decides to resume.
    async fn round(&mut self, deadlines: &crate::heartbeat::Deadlines, mono: u64) -> crate::heartbeat::Round {
        use crate::heartbeat::{Probes, Round};
        let starting = self.core.mode == crate::model::Mode::Starting;
        if starting && self.fast.is_some() {
            let h = &self.state.config.heartbeat;
            let limit = u64::from(h.failures.max(1)) * u64::from(h.interval_ms) + udp_slack_ms(h);
            let until = tokio::time::Instant::now() + Duration::from_millis(limit);
            while tokio::time::Instant::now() < until && !self.udp_heard_from_every_peer() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let mono = match &self.fast {
            Some(fast) => {
                fast.drain();
                self.state.clock.mono_ms()
            }
            None if starting => self.state.clock.mono_ms(),
            None => mono,
        };
        let pace = match self.paced {
            Some(pace) if !starting => pace,
            _ => return self.prober.round(&self.targets, deadlines, mono, Probes::All).await,
        };
        let mut slow = None;
        if self.slow_round.as_ref().is_some_and(|task| task.is_finished()) {
            slow = self.slow_round.take().expect("checked").await.ok();
        }
        if self.slow_round.is_none() && mono >= self.next_slow_mono_ms {
            self.next_slow_mono_ms = mono + pace;
            let (prober, targets, deadlines) = (self.prober.clone(), self.targets.clone(), deadlines.clone());
            self.slow_round = Some(tokio::spawn(async move { prober.round(&targets, &deadlines, mono, Probes::AllButUdp).await }));
        }
        Round::merge(self.prober.round(&self.targets, deadlines, mono, Probes::UdpOnly).await, slow)
    }

    /// One tick: observe, decide, hand over the actions, publish.
    async fn tick(&mut self) {
        let state = self.state.clone();
        // Alive from the start of a tick: a round whose probes run to their timeout must not make an
        // active node look stalled. A loop stuck anywhere stops refreshing it.
        state.last_loop_mono_ms.store(state.clock.mono_ms(), Ordering::Release);
        let mono = state.clock.mono_ms();
        let deadlines = self.tracker.deadlines(mono, &state.config.heartbeat.model());
        let round = if self.core.mode == crate::model::Mode::Starting {
            // One poll of every service beside the first round: a restarted daemon's plugin must see
            // the services that kept running, not "stopped" for want of a look.
            let policy = state.policy.current();
            let (round, ()) = tokio::join!(self.round(&deadlines, mono), state.services.poll(&policy.file.services));
            round
        } else {
            self.round(&deadlines, mono).await
        };
        let refused_before: Vec<Option<String>> = self.tracker.peers.iter().map(|t| t.refused.clone()).collect();
        self.tracker.record(&round, state.clock.mono_ms());
        self.record_round_trips(&round);
        self.note_refusals(&refused_before);
        let offsets: Vec<i64> = round.peers.iter().filter_map(|r| r.paths.iter().find_map(|p| p.heartbeat.as_ref()).map(|hb| hb.clock_skew_ms())).collect();
        state.replicator.peer_clocks(&offsets);
        state.replicator.after_round(&heartbeat_answers(&self.targets, &round));

        let promoted = state.inbox.lock().expect("inbox lock").promote.take();
        if let Some((policy, shadow_state)) = promoted {
            // The promoted shadow decides from this tick on, from the state it carried as a shadow.
            state.policy.replace(policy);
            self.core.state = shadow_state;
        }
        let policy = state.policy.current();
        let (now, mono) = (state.clock.wall_ms(), state.clock.mono_ms());
        match self.relay.sync(policy.file.relay.as_ref()) {
            Ok(None) => {}
            Ok(Some(note)) => state.record(Event::new(now, EventKind::Reload, note)),
            Err(error) => {
                tracing::warn!(%error, "relay");
                state.record(Event::new(now, EventKind::Reload, error));
            }
        }
        // (A promotion that arrived meanwhile stays for the next tick.)
        let (operator, commands) = {
            let mut inbox = state.inbox.lock().expect("inbox lock");
            (inbox.operator.take(), std::mem::take(&mut inbox.commands))
        };
        let operator_request = operator;
        let observations = Observations {
            now_ms: now,
            heartbeat: state.config.heartbeat.model(),
            peers: self.tracker.peers(mono),
            watched: self.tracker.watched(mono),
            lan: self.tracker.lan.clone(),
            monitors: self.monitors.latest(),
            vip: self.tracker.vip.clone(),
            route: self.relay.current(),
            services: state.services.view(&policy.file.services, now),
            sync: state.replicator.view(),
            arbiter: self.arbiter.as_ref().map(|a| a.view(mono)),
            operator,
            commands,
            results: self.executor.take_results(),
            pending_actions: self.executor.pending(),
        };
        // The plugin call is bounded by its time limit, but it is CPU work: keep it off the I/O threads.
        let started = std::time::Instant::now();
        let shadow = state.shadow.lock().expect("shadow lock").clone();
        self.core.recording = self.recorder.is_some() || shadow.is_some();
        let outcome = tokio::task::block_in_place(|| self.core.step(&policy, observations, &self.peer_ids));
        state.metrics.decide.observe(started.elapsed().as_secs_f64());
        if let Some((tick, decided)) = self.core.seen.take() {
            // What the live policy decided (when it faulted: what the node did), for the shadow.
            let for_shadow = shadow.as_ref().map(|s| {
                let live = match &decided {
                    Ok(d) => crate::node::shadow::Side::of(&tick, d),
                    Err(_) => crate::node::shadow::Side { mode: outcome.to, actions: outcome.actions.iter().map(ToString::to_string).collect(), reason: outcome.reason.clone() },
                };
                (s, live)
            });
            let peers: std::sync::Arc<[String]> = self.peer_ids.as_slice().into();
            match &self.recorder {
                Some(recorder) => {
                    if let Some((s, live)) = for_shadow {
                        s.offer(tick.clone(), live, peers);
                    }
                    let applied = crate::recorder::Applied { mode: outcome.to, actions: outcome.actions.clone(), reason: outcome.reason.clone() };
                    recorder.record(crate::recorder::Entry { policy: recorder.policy_id(&policy), tick, decided, applied });
                }
                None => {
                    if let Some((s, live)) = for_shadow {
                        s.offer(tick, live, peers);
                    }
                }
            }
        }
        if let Some(shadow) = &shadow {
            for note in shadow.take_notes() {
                state.record(Event::new(state.clock.wall_ms(), EventKind::Shadow, note));
            }
        }

        state.metrics.ticks.inc();
        for note in state.replicator.take_notes() {
            state.record(Event::new(state.clock.wall_ms(), EventKind::Peer, note));
        }
        record_outcome(&state, &self.core, &outcome, &mut self.last_reason);
        if let Some(arbiter) = &self.arbiter {
            arbiter.after_tick(outcome.to == crate::model::Mode::Active, outcome.wants_active);
            if outcome.from == crate::model::Mode::Active && outcome.to != crate::model::Mode::Active && outcome.reason.starts_with("fencing:") {
                state.metrics.arbiter.demotions.inc();
                tracing::warn!(reason = %outcome.reason, "demoted by fencing");
            }
        }
        self.redeliver_after_fault(operator_request, &outcome);
        if outcome.from != outcome.to {
            self.timeline.record(now, outcome.to, &outcome.reason);
        }
        self.timeline.advance(now);
        if !outcome.actions.is_empty() {
            self.executor.submit(policy.clone(), outcome.actions.clone());
        }
        self.publish(&policy, now, mono);
        if let Some(persist) = &self.persist {
            let (core, now_ms) = (&self.core, state.clock.wall_ms());
            persist.send_replace(Some(Persist { mode: core.mode, since_ms: core.mode_since_ms, state: core.state.clone(), now_ms }));
        }
        // The next tick's fresh plugin instance, made now that this tick's work is handed over: the
        // next decision then waits for the call alone (`Plugin::prepare`).
        tokio::task::block_in_place(|| policy.prepare());
        state.last_loop_mono_ms.store(state.clock.mono_ms(), Ordering::Release);
    }

    /// A fault discards the plugin's decision and keeps its old state, so the operator request of that
    /// tick was never acted on: it goes back in the inbox (unless a newer one is there) for the next
    /// tick, up to [`OPERATOR_TRIES`] ticks, so that a request the plugin always faults on ends.
    fn redeliver_after_fault(&mut self, request: Option<crate::model::OperatorRequest>, outcome: &Outcome) {
        let (Some(request), Some(fault)) = (request, &outcome.fault) else {
            self.operator_faulted = None;
            return;
        };
        let tries = match self.operator_faulted {
            Some((before, n)) if before == request => n + 1,
            _ => 1,
        };
        let now = self.state.clock.wall_ms();
        let message = {
            let mut inbox = self.state.inbox.lock().expect("inbox lock");
            if inbox.operator.is_some() {
                self.operator_faulted = None;
                return;
            }
            if tries < OPERATOR_TRIES {
                inbox.operator = Some(request);
                self.operator_faulted = Some((request, tries));
                format!("operator request {request}: the plugin faulted on its tick ({}); delivered again on the next tick", fault.kind())
            } else {
                self.operator_faulted = None;
                format!("operator request {request} dropped: the plugin faulted on the {tries} ticks that carried it ({}); ask again", fault.kind())
            }
        };
        tracing::warn!("{message}");
        self.state.record(Event::new(now, EventKind::Operator, message));
    }

    /// The round trips of the peer paths that answered, into `/metrics`.
    fn record_round_trips(&self, round: &crate::heartbeat::Round) {
        for (histograms, remote) in self.round_trips.iter().zip(&round.peers) {
            for (histogram, check) in histograms.iter().zip(&remote.paths) {
                if let Some(rtt) = check.rtt {
                    histogram.observe(rtt.as_secs_f64());
                }
            }
        }
    }

    /// One event when a peer starts refusing this node's requests though it answers (a clock outside
    /// its signature window), and one when it accepts them again.
    fn note_refusals(&self, before: &[Option<String>]) {
        let now = self.state.clock.wall_ms();
        for (track, before) in self.tracker.peers.iter().zip(before) {
            let peer = &track.remote.id;
            let message = match (before, &track.refused) {
                (None, Some(why)) => format!(
                    "peer {peer} answers but refuses this node's requests ({why}; clock skew {} ms): it counts as reachable, \
                     and neither commands nor replication reach it until the clocks agree (NTP)",
                    track.clock_skew_ms.unwrap_or(0)
                ),
                (Some(_), None) if track.remote.reachable => format!("peer {peer} accepts this node's requests again"),
                _ => continue,
            };
            tracing::warn!(%peer, "{message}");
            self.state.record(Event::new(now, EventKind::Peer, message));
        }
    }

    /// Write the status snapshot the HTTP server answers from.
    fn publish(&self, policy: &policy::LoadedPolicy, now: u64, mono: u64) {
        let (state, core) = (&self.state, &self.core);
        let (peers, watched) = state::remote_statuses(&self.tracker, now, mono);
        let reload = state.policy.status();
        let specs = &policy.file.services;
        let relay = self.relay.current().map(|target| {
            let built_in = self.relay.get();
            let counters = built_in.as_ref().map(|r| r.counters()).unwrap_or_default();
            RelayStatus {
                target,
                listen: built_in.and_then(|r| r.local_addr()).map(|a| a.to_string()),
                accepted: counters.accepted,
                open: counters.open,
                failed: counters.failed,
            }
        });
        let mut status = Status {
            node: state::NodeStatus {
                id: core.id.clone(),
                configured_role: core.role,
                mode: core.mode,
                mode_since_ms: core.mode_since_ms,
                reason: core.reason.clone(),
            },
            peers,
            watched,
            lan: self.tracker.lan.clone(),
            vip: self.tracker.vip.clone(),
            relay,
            udp: self.fast.as_ref().map(|f| f.board.counts()),
            policy: PolicyStatus {
                name: policy.name(),
                path: policy.path.display().to_string(),
                plugin: policy.plugin.name().to_string(),
                plugin_sha256: policy.plugin.sha256().to_string(),
                loaded_at_ms: policy.loaded_at_ms,
                faults: core.faults,
                consecutive_faults: core.consecutive_faults,
                last_fault: core.last_fault.clone(),
                reloads: reload.reloads,
                reload_failures: reload.failures,
                last_error: reload.last_error,
            },
            services: state.services.view(specs, now).into_iter().map(|s| ServiceStatus { name: s.name, state: s.state }).collect(),
            app_healthy: state.services.app_healthy(specs),
            sync: state.replicator.status(),
            ticks: core.tick_count,
            pending_actions: self.executor.pending(),
            loop_age_ms: None,
            events: Vec::new(),
            timeline: self.timeline.clone(),
            arbiter: self.arbiter.as_ref().map(|a| a.status()),
            recorder: self.recorder.as_ref().map(|r| r.status()),
            shadow: state.shadow.lock().expect("shadow lock").as_ref().map(|s| s.status()),
        };
        status.events = state.events.latest(20).unwrap_or_default();
        state.publish(status);
    }
}


impl Drop for NodeLoop {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(task) = &self.slow_round {
            task.abort();
        }
    }
}

/// The flight recorder of `[recorder]`, writing to the data directory, its troubles to the event log.
fn start_recorder(state: &Arc<NodeState>) -> Option<crate::recorder::Recorder> {
    let section = state.config.recorder;
    if !section.enabled {
        return None;
    }
    let dir = crate::recorder::dir_of(&state.config.node.data_dir);
    let events = state.clone();
    let note = Box::new(move |message: String| events.record(Event::new(events.clock.wall_ms(), EventKind::Alarm, message)));
    match crate::recorder::Recorder::start(&dir, section.max_bytes, &state.config.node.id, state.metrics.recorder.clone(), note) {
        Ok(recorder) => Some(recorder),
        Err(e) => {
            let message = format!("flight recorder not started: {e}");
            tracing::warn!("{message}");
            state.record(Event::new(state.clock.wall_ms(), EventKind::Alarm, message));
            None
        }
    }
}

/// How late a udp datagram may come and still be on time: half the heartbeat timeout.
fn udp_slack_ms(h: &crate::config::HeartbeatSection) -> u64 {
    u64::from(h.timeout_ms) / 2
}

/// Start the udp fast path on the socket `build` bound, if there is one.
fn start_fast_path(state: &Arc<NodeState>, targets: &Targets) -> Option<crate::udp::FastPath> {
    let socket = state.udp_socket.lock().expect("udp socket lock").take()?;
    let config = &state.config;
    let paths: Vec<(String, Vec<(String, std::net::SocketAddr)>)> = targets
        .peers
        .iter()
        .map(|(id, paths, _)| {
            let udp = paths.iter().filter(|p| p.kind == crate::config::ProbeKind::Udp).filter_map(|p| Some((p.name.clone(), p.target.parse().ok()?)));
            (id.clone(), udp.collect())
        })
        .collect();
    let board = Arc::new(crate::udp::Board::new(&config.node.id, SIGNATURE_WINDOW_MS, &paths));
    let interval = Duration::from_millis(u64::from(config.heartbeat.interval_ms));
    // Silent when the loop stopped ticking for a second (or five intervals): a wedged daemon must
    // not keep its peer standing by.
    let silent_after = 1_000.max(5 * u64::from(config.heartbeat.interval_ms));
    let reporter = state.clone();
    let sending = crate::udp::Sending {
        me: config.node.id.clone(),
        boot: state.verifier.boot().to_string(),
        key: state.verifier.signing_key().unwrap_or_default().to_vec(),
        targets: paths.iter().flat_map(|(id, p)| p.iter().map(|(_, a)| (id.clone(), *a))).collect(),
        interval,
        report: Box::new(move || {
            if reporter.loop_age_ms()? > silent_after {
                return None;
            }
            let status = reporter.status.read().expect("status lock");
            Some(crate::model::Report {
                mode: status.node.mode,
                configured_role: Some(status.node.configured_role),
                app_healthy: Some(status.app_healthy),
                mode_since_ms: Some(status.node.mode_since_ms),
            })
        }),
    };
    let client = state.replicator.peer_client().clone();
    let known_boot = Arc::new(move |peer: &str| client.known_boot(peer));
    match crate::udp::FastPath::start(socket, board, state.verifier.keys().to_vec(), state.clock.clone(), known_boot, sending) {
        Ok(fast) => {
            tracing::info!(listen = %fast.local, interval_ms = config.heartbeat.interval_ms, "udp fast path running");
            Some(fast)
        }
        Err(e) => {
            let message = format!("the udp fast path cannot start: {e}; its paths count as failed");
            tracing::error!("{message}");
            state.record(Event::new(state.clock.wall_ms(), EventKind::Startup, message));
            None
        }
    }
}

/// Each peer's signed heartbeat answer in this round, with the clock skew it showed.
fn heartbeat_answers(targets: &Targets, round: &crate::heartbeat::Round) -> Vec<(String, Option<(crate::peer::HeartbeatAnswer, i64)>)> {
    targets
        .peers
        .iter()
        .zip(&round.peers)
        .map(|((id, _, _), r)| {
            // A peer that refuses our requests (clock skew) answers heartbeats but would refuse every
            // pull: replication waits until it accepts them again.
            let answer = r
                .paths
                .iter()
                .find_map(|p| p.heartbeat.as_ref())
                .filter(|hb| hb.refused.is_none())
                .map(|hb| (hb.answer.clone(), hb.clock_skew_ms()));
            (id.clone(), answer)
        })
        .collect()
}

/// Scan the replicated directories when due, or at once when a file event says something changed.
async fn scan_directories(state: Arc<NodeState>, interval: Duration, stop: watch::Receiver<bool>) {
    use notify::Watcher as _;
    use notify::event::{EventKind, ModifyKind, RenameMode};
    let dirty = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = dirty.clone();
    let events_state = state.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // A path that went away (removed, or renamed from): its delete is dated now, not when the
        // next scan notices it.
        if matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))) {
            let now = events_state.clock.wall_ms();
            for path in &event.paths {
                events_state.replicator.note_gone(path, now);
            }
        }
        flag.store(true, Ordering::Release);
    })
    .map_err(|e| tracing::warn!(error = %e, "file events unavailable; replicated directories are rescanned periodically"))
    .ok();
    state.replicator.create_new_roots();
    for root in state.replicator.directory_roots() {
        if let Some(w) = watcher.as_mut() {
            if let Err(e) = w.watch(root, notify::RecursiveMode::Recursive) {
                tracing::warn!(dir = %root.display(), error = %e, "cannot watch a replicated directory");
            }
        }
    }
    crate::clock::every(interval, stop, || async {
        let force = dirty.swap(false, Ordering::AcqRel);
        let replicator = state.replicator.clone();
        let _ = tokio::task::spawn_blocking(move || replicator.scan_due(force)).await;
    })
    .await;
    drop(watcher);
}

/// One event per decision that changed something, per fault, and per new reason: a plugin's reason
/// carries its counts ("peer b failed 2/3 checks"), so the log reads like the seed's fault-tolerant
/// log without a line for every identical tick.
fn record_outcome(state: &NodeState, core: &NodeCore, outcome: &Outcome, last_reason: &mut String) {
    if outcome.from != outcome.to {
        state.metrics.mode_changed(outcome.from, outcome.to);
        tracing::info!(node = %core.id, from = %outcome.from, to = %outcome.to, reason = %outcome.reason, "mode changed");
    }
    if let Some(fault) = &outcome.fault {
        state.metrics.plugin_faults.inc();
        let mut event = Event::new(state.clock.wall_ms(), EventKind::Fault, outcome.reason.clone());
        event.mode = Some(outcome.to);
        event.detail = serde_json::json!({ "fault": fault.kind(), "consecutive": core.consecutive_faults });
        state.record(event);
        if outcome.from == outcome.to {
            return;
        }
    }
    let new_reason = outcome.fault.is_none() && !outcome.reason.is_empty() && outcome.reason != *last_reason;
    if outcome.fault.is_none() {
        last_reason.clone_from(&outcome.reason);
    }
    if (outcome.changed() || new_reason) && outcome.fault.is_none() || outcome.fallback_applied {
        let actions: Vec<String> = outcome.actions.iter().map(ToString::to_string).collect();
        let message = if outcome.from != outcome.to {
            format!("{} → {}: {}", outcome.from, outcome.to, outcome.reason)
        } else {
            format!("{}: {}", outcome.to, outcome.reason)
        };
        let mut event = Event::new(state.clock.wall_ms(), EventKind::Decision, message);
        event.mode = Some(outcome.to);
        event.detail = serde_json::json!({ "from": outcome.from, "to": outcome.to, "actions": actions });
        state.record(event);
    }
}

/// Poll service status commands every interval, off the loop.
async fn poll_services(state: Arc<NodeState>, interval: Duration, stop: watch::Receiver<bool>) {
    crate::clock::every(interval, stop, || async {
        let policy = state.policy.current();
        state.services.poll(&policy.file.services).await;
    })
    .await
}

/// On shutdown, stop the services vigil runs, in reverse order, so a stopped daemon does not leave
/// a second active service behind when its peer takes over.
async fn stop_services(state: &NodeState) {
    let policy = state.policy.current();
    for (name, spec) in policy.file.services.iter().rev() {
        // Unknown counts as possibly running: a status command that timed out proves nothing.
        if state.services.state(name) != crate::model::ServiceState::Stopped {
            match state.services.stop(name, spec).await {
                Ok(note) => tracing::info!(service = %name, %note, "stopped on shutdown"),
                Err(error) => tracing::warn!(service = %name, %error, "could not stop on shutdown"),
            }
        }
    }
}

/// Executes the actions that are not processes: peer commands, alarms, and the mechanics that later
/// parts of the host provide.
struct HostDelegate {
    state: Arc<NodeState>,
    prober: Prober,
    targets: Targets,
    relay: Arc<crate::relay::RelayHost>,
    vips: crate::vip::Vips,
}

impl HostDelegate {
    async fn command(&self, peer: Option<&str>, command: PeerCommand) -> Result<String, String> {
        let client: &PeerClient = self.prober.peer_client();
        let timeout = Duration::from_millis(u64::from(self.state.config.heartbeat.timeout_ms));
        let mut sent = Vec::new();
        let mut errors = Vec::new();
        for (id, paths, _) in self.targets.peers.iter().filter(|(id, _, _)| peer.is_none_or(|p| p == id)) {
            let mut delivered = false;
            for path in paths.iter().filter(|p| p.kind == crate::config::ProbeKind::Vigil) {
                match client.command(id, &path.target, command, timeout).await {
                    Ok(()) => {
                        sent.push(format!("{id} via {}", path.name));
                        delivered = true;
                        break;
                    }
                    Err(e) => errors.push(e),
                }
            }
            self.state.metrics.peer_command(command, delivered);
            if !delivered && errors.is_empty() {
                errors.push(format!("{id}: no vigil heartbeat path to send on"));
            }
        }
        if sent.is_empty() {
            Err(format!("{command} not delivered: {}", errors.join("; ")))
        } else {
            Ok(format!("{command} sent to {}", sent.join(", ")))
        }
    }
}

impl Delegate for HostDelegate {
    fn run<'a>(&'a self, action: Action, policy: &'a crate::policy::PolicyFile) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
        Box::pin(async move {
            match action {
                Action::Command { peer, command } => self.command(peer.as_deref(), command).await,
                Action::Alarm { severity, message } => {
                    let mut event = Event::new(self.state.clock.wall_ms(), EventKind::Alarm, message.clone());
                    event.detail = serde_json::json!({ "severity": severity });
                    self.state.record(event);
                    match severity {
                        Level::Error => tracing::error!(alarm = %message),
                        Level::Warn => tracing::warn!(alarm = %message),
                        _ => tracing::info!(alarm = %message),
                    }
                    Ok("recorded".into())
                }
                Action::ClaimVip => self.vips.claim(&policy.vip).await,
                Action::ReleaseVip => self.vips.release(&policy.vip).await,
                Action::Route(target) => self.relay.route(&target, policy).await,
                Action::Sync => self.state.replicator.full_exchange().await,
                other => Err(format!("{other}: not a delegated action")),
            }
        })
    }
}
