//! The simulated world every deployment module runs in: nodes, links, an executor of actions with
//! results, delivery of peer commands, the initial configuration sync, and the bookkeeping of the
//! property (how long two nodes were active at once, when a group settled).
//!
//! Each node is the real pure core (`NodeCore` + `heartbeat::Tracker`) deciding with the real wasm
//! plugin; everything around it is a small model of what the host does (`node/runner.rs`):
//!
//! - a tick: every node that is up observes a heartbeat round built from the world as it was at the
//!   end of the previous tick (so the order in which nodes decide does not matter), decides, and
//!   queues its actions;
//! - the executor: actions run in order, one queue per node; an action may be slow (its effect and
//!   its result come one or two ticks later, `pending_actions` counts it meanwhile); results reach
//!   the plugin on the next tick; a crash loses the queue;
//! - services are processes: they keep running when the daemon is killed (kill -9 stops nothing);
//! - peer commands cross a link that is up, to a daemon that is up, unless the fault schedule loses
//!   them; the sender's result says whether the command arrived;
//! - links: one per heartbeat path or watch; a cut link fails every probe over it;
//! - the initial sync: the first round in which a peer answers ACTIVE makes it `pending`; the pull
//!   ends on the next tick, `done` when the link and the peer are up and the schedule does not fail
//!   it, else `failed` (retried from an active peer, or on a `sync` action).
//!
//! - the arbiter (deployments that have one, [`ArbiterModel`]): one role key and one lease per
//!   daemon that expires in simulated time unless renewed; a node reaches it or not (a partition
//!   between the node and the arbiter); before deciding, a node that reaches it renews its lease and
//!   reads the key; after deciding, it campaigns (create-if-absent, bound to its lease) when its
//!   outcome wants the active role, and resigns when it no longer does. Its nodes run with
//!   `NodeCore.fencing`.
//!
//! Never: a clock, a socket, a sleep, a thread. The same seed gives the same run.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use vigil::config::{Probe, ProbeKind};
use vigil::heartbeat::{CheckResult, RemoteRound, Round, Targets, Tracker};
use vigil::model::{
    Action, ActionResult, ArbiterView, Check, Heartbeat, InitialSync, Mode, OperatorRequest, PeerCommand, ReceivedCommand, Report, RestartInfo, Role,
    Service, ServiceState, SyncView,
};
use vigil::node::{NodeCore, Observations};
use vigil::policy::LoadedPolicy;
pub use vigil_tests::Rng;

/// Every daemon starts with the node configuration's default start-up grace, as `vigil run` does.
pub const STARTUP_GRACE_MS: u64 = vigil::config::DEFAULT_STARTUP_GRACE_MS as u64;

/// The wall clock of tick 0 (any fixed instant: the plugins only compare times).
pub const START_MS: u64 = 1_800_000_000_000;

/// The node configuration's default `restart.max_downtime_ms`.
pub const MAX_DOWNTIME_MS: u64 = vigil::config::DEFAULT_MAX_DOWNTIME_MS;

/// How a node probes another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The vigil heartbeat (or `/role`): the daemon must answer; its report (mode…) comes with it.
    Vigil,
    /// A ping-like probe of the host: answers while the link is up, whatever the daemon does; no report.
    Ping,
}

/// A pair peer, probed over one or more links.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub node: usize,
    pub links: Vec<usize>,
    pub how: How,
    /// The peer's services probed as extra heartbeat: ok while that service runs and `service_link` is up.
    pub services: Vec<String>,
    pub service_link: Option<usize>,
}

impl PeerSpec {
    /// A peer probed with `how` over `links`, without service probes.
    pub fn new(node: usize, links: &[usize], how: How) -> PeerSpec {
        PeerSpec { node, links: links.to_vec(), how, services: Vec::new(), service_link: None }
    }
}

/// What a watch points at.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Node(usize),
    /// An outside system (an Edge's stacks): [`Sim::externals`].
    External(usize),
}

/// A watched node or system, probed over one link.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub id: String,
    pub target: Target,
    pub link: usize,
    pub how: How,
}

/// An outside system a node watches (not a vigil node of the simulation).
#[derive(Debug, Clone)]
pub struct External {
    pub name: String,
    /// It answers its health check.
    pub answers: bool,
    /// The mode its vigil reports, when it is a vigil node seen through `/role`.
    pub mode: Option<Mode>,
}

/// Per-schedule fault rates (percent per occasion), drawn by each deployment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// A peer command is lost although the link is up (its request timed out).
    pub command_loss: u64,
    /// An action takes one or two ticks (its result and effect come late).
    pub slow_action: u64,
    /// A hook or a route change fails.
    pub hook_failure: u64,
    /// A service fails to start.
    pub start_failure: u64,
    /// An initial sync pull fails.
    pub sync_failure: u64,
}

/// A model of the group's arbiter: etcd with one role key bound to a lease. Each daemon has its own
/// lease (a restarted daemon gets a new one); a lease not renewed for `ttl_ms` expires and deletes the
/// key bound to it. A node knows what it read the last time it reached the arbiter, and its own lease
/// from its last renewal: `held` is "the key was mine at my last read, and my lease has more than
/// `margin_ms` left", as the host computes it.
#[derive(Debug, Clone)]
pub struct ArbiterModel {
    pub ttl_ms: u64,
    pub margin_ms: u64,
    /// Per node: the node reaches the arbiter (no partition between them).
    pub reach: Vec<bool>,
    /// Every lease granted: id → expiry (ms). A killed daemon's lease stays until it expires.
    leases: BTreeMap<u64, u64>,
    /// Per node: its current daemon's lease, once granted.
    current: Vec<Option<u64>>,
    /// The role key: the node holding it and the lease it is bound to.
    key: Option<(usize, u64)>,
    revision: i64,
    /// Per node: what it read last (holder, the key was on its own lease, revision).
    read: Vec<(Option<usize>, bool, i64)>,
    /// Keys granted so far (campaigns won), for the figures.
    pub grants: u64,
    /// Plugin-level breaches of the arbiter: a node that was not active asked for the role while the
    /// key it had read was another node's (`tick t: node: …`).
    pub breaches: Vec<String>,
}

impl ArbiterModel {
    /// An arbiter for `nodes` nodes, every one reaching it, no lease yet.
    pub fn new(nodes: usize, ttl_ms: u64, margin_ms: u64) -> ArbiterModel {
        ArbiterModel {
            ttl_ms,
            margin_ms,
            reach: vec![true; nodes],
            leases: BTreeMap::new(),
            current: vec![None; nodes],
            key: None,
            revision: 0,
            read: vec![(None, false, 0); nodes],
            grants: 0,
            breaches: Vec::new(),
        }
    }

    fn alive(&self, lease: u64, now: u64) -> bool {
        self.leases.get(&lease).is_some_and(|expiry| *expiry > now)
    }

    /// The key goes with its lease's expiry.
    fn expire(&mut self, now: u64) {
        if let Some((_, lease)) = self.key {
            if !self.alive(lease, now) {
                self.key = None;
                self.revision += 1;
            }
        }
    }

    /// Node `i` (daemon up) before it decides: renew (or get a lease) and read the key when it
    /// reaches the arbiter; the view its tick carries either way.
    fn view(&mut self, i: usize, now: u64, ids: &[String]) -> ArbiterView {
        self.expire(now);
        if self.reach[i] {
            let lease = match self.current[i].filter(|l| self.alive(*l, now)) {
                Some(l) => l,
                None => {
                    let l = self.leases.len() as u64 + 1;
                    self.current[i] = Some(l);
                    l
                }
            };
            self.leases.insert(lease, now + self.ttl_ms);
            let mine = self.key == Some((i, lease));
            self.read[i] = (self.key.map(|(n, _)| n), mine, self.revision);
        }
        let (holder, mine, revision) = self.read[i];
        let lease_left_ms = self.current[i].and_then(|l| self.leases.get(&l)).map_or(0, |expiry| expiry.saturating_sub(now));
        ArbiterView {
            reachable: self.reach[i],
            holder: holder.map(|h| ids[h].clone()),
            held: mine && lease_left_ms > self.margin_ms,
            lease_left_ms,
            revision,
        }
    }

    /// Node `i` decided: campaign (create-if-absent, bound to its lease) when it wants the active
    /// role, resign (delete the key on its own lease) when it does not. Only when it reaches the
    /// arbiter and its lease is alive.
    fn after(&mut self, i: usize, wants_active: bool, now: u64) {
        if !self.reach[i] {
            return;
        }
        self.expire(now);
        let Some(lease) = self.current[i].filter(|l| self.alive(*l, now)) else { return };
        match self.key {
            None if wants_active => {
                self.key = Some((i, lease));
                self.revision += 1;
                self.grants += 1;
            }
            Some(k) if k == (i, lease) && !wants_active => {
                self.key = None;
                self.revision += 1;
            }
            _ => {}
        }
    }

    /// A new daemon on node `i`: it gets a new lease on its first contact and has read nothing yet.
    /// The killed daemon's lease (and a key bound to it) runs out by itself.
    fn restarted(&mut self, i: usize) {
        self.read[i] = (None, false, 0);
        self.current[i] = None;
    }

    /// The node holding the key now, if any.
    pub fn holder(&self) -> Option<usize> {
        self.key.map(|(n, _)| n)
    }
}

/// The initial configuration sync as the host's replicator tracks it.
#[derive(Debug, Clone, Default)]
struct SyncModel {
    view: SyncView,
    first_round_seen: bool,
    /// A pull from this peer, ending on the next tick.
    pulling: Option<usize>,
}

#[derive(Debug, Clone)]
struct Queued {
    action: Action,
    ready_tick: u64,
}

/// One simulated node.
pub struct Node {
    pub id: String,
    pub role: Role,
    /// Index into [`Sim::policies`].
    pub policy: usize,
    pub peers: Vec<PeerSpec>,
    pub watched: Vec<WatchSpec>,
    pub core: NodeCore,
    tracker: Tracker,
    /// The daemon runs.
    pub up: bool,
    /// Declared services: running or not. Processes outlive the daemon.
    pub services: BTreeMap<String, bool>,
    specs: Vec<Service>,
    /// The world's truth for each local monitor of the policy (healthy or not).
    pub monitors: BTreeMap<String, bool>,
    monitor_checks: Vec<Check>,
    inbox: Vec<ReceivedCommand>,
    pub operator: Option<OperatorRequest>,
    results: Vec<ActionResult>,
    queue: VecDeque<Queued>,
    sync: SyncModel,
    /// The relay's current target as the daemon knows it (a new daemon starts from `route_initial`,
    /// or, with a route hook, from the target of the last successful hook, which the host keeps in
    /// its data directory).
    pub route: Option<String>,
    pub route_initial: Option<String>,
    route_hooked: Option<String>,
    /// The node holds the policy's VIP addresses (a killed daemon leaves them up).
    pub vip: bool,
    /// An operator request was made on this node during the schedule.
    pub operated: bool,
    /// The last operator request this daemon received (forgotten when it restarts).
    pub last_operator: Option<OperatorRequest>,
    /// What the daemon persisted (`node-state.json`) when it was killed, and when: a restart within
    /// [`MAX_DOWNTIME_MS`] hands it to the first tick, as the real daemon does.
    pub persisted: Option<(RestartInfo, u64)>,
}

impl Node {
    /// A node with the services and monitors its policy declares (services stopped, monitors good).
    pub fn new(id: &str, role: Role, policy: usize, loaded: &LoadedPolicy) -> Node {
        let specs: Vec<Service> = loaded
            .file
            .services
            .iter()
            .map(|(name, spec)| Service { name: name.clone(), app_check: spec.app_check, watchdog: spec.watchdog, ..Service::default() })
            .collect();
        let route_initial = loaded.file.relay.as_ref().map(|r| r.initial.clone());
        Node {
            id: id.into(),
            role,
            policy,
            peers: Vec::new(),
            watched: Vec::new(),
            core: NodeCore::new(id, role, START_MS).with_startup_grace(STARTUP_GRACE_MS),
            tracker: Tracker::default(),
            up: true,
            services: specs.iter().map(|s| (s.name.clone(), false)).collect(),
            specs,
            monitors: loaded.file.monitors.keys().map(|m| (m.clone(), true)).collect(),
            monitor_checks: loaded.file.monitors.keys().map(|m| Check { name: m.clone(), ..Check::default() }).collect(),
            inbox: Vec::new(),
            operator: None,
            results: Vec::new(),
            queue: VecDeque::new(),
            sync: SyncModel::default(),
            route: route_initial.clone(),
            route_initial,
            route_hooked: None,
            vip: false,
            operated: false,
            last_operator: None,
            persisted: None,
        }
    }

    /// Whether every `app_check` service runs (`/app`).
    pub fn app_healthy(&self) -> bool {
        self.specs.iter().filter(|s| s.app_check).all(|s| self.services[&s.name])
    }

    /// Any declared service runs.
    pub fn any_running(&self) -> bool {
        self.services.values().any(|r| *r)
    }

    fn targets(&self, sim_ids: &[String]) -> Targets {
        let probe = |name: String| Probe { name, kind: ProbeKind::Vigil, target: String::new(), expect_status: 200, expect_body: None, count: 1 };
        Targets {
            peers: self
                .peers
                .iter()
                .map(|p| {
                    let paths = p.links.iter().enumerate().map(|(k, _)| probe(format!("path{k}"))).collect();
                    let services = p.services.iter().map(|s| probe(s.clone())).collect();
                    (sim_ids[p.node].clone(), paths, services)
                })
                .collect(),
            watched: self.watched.iter().map(|w| (w.id.clone(), probe(w.id.clone()))).collect(),
            lan: None,
            vip_url: None,
        }
    }
}

/// What the world looked like at the end of the previous tick, for the heartbeat rounds.
struct Snapshot {
    up: Vec<bool>,
    mode: Vec<Mode>,
    role: Vec<Role>,
    app: Vec<bool>,
    services: Vec<BTreeMap<String, bool>>,
}

/// Deployment-specific effects of hooks and routes.
pub trait World {
    /// Hook `name(args)` of node `node` ran; `ok` is whether it succeeded.
    fn hook(&mut self, _node: usize, _name: &str, _args: &[String], _ok: bool) {}
    /// Node `node` routed new connections to `target` (when `ok`).
    fn route(&mut self, _node: usize, _target: &str, _ok: bool) {}
}

impl World for () {}

/// A plugin faulted: the simulation stops at once (a fault is never part of the property).
#[derive(Debug)]
pub struct Faulted(pub String);

/// One schedule's world.
pub struct Sim<'p, W: World> {
    pub policies: Vec<&'p LoadedPolicy>,
    pub nodes: Vec<Node>,
    /// Link names and states (up or cut).
    pub links: Vec<(String, bool)>,
    pub externals: Vec<External>,
    pub heartbeat: Heartbeat,
    pub faults: Faults,
    pub world: W,
    /// The current tick (0 before the first).
    pub t: u64,
    pub now: u64,
    /// Actions executed so far.
    pub actions_run: u64,
    /// Write a timeline (only when a failing seed is replayed: formatting costs time).
    pub trace: bool,
    pub timeline: String,
    /// The group's arbiter, when the deployment has one (its nodes then run with fencing).
    pub arbiter: Option<ArbiterModel>,
}

impl<'p, W: World> Sim<'p, W> {
    pub fn new(policies: Vec<&'p LoadedPolicy>, heartbeat: Heartbeat, world: W, trace: bool) -> Self {
        Sim {
            policies,
            nodes: Vec::new(),
            links: Vec::new(),
            externals: Vec::new(),
            heartbeat,
            faults: Faults::default(),
            world,
            t: 0,
            now: START_MS,
            actions_run: 0,
            trace,
            timeline: String::new(),
            arbiter: None,
        }
    }

    /// Give the group an arbiter (after the nodes are added): every node runs with fencing.
    pub fn with_arbiter(&mut self, ttl_ms: u64, margin_ms: u64) {
        self.arbiter = Some(ArbiterModel::new(self.nodes.len(), ttl_ms, margin_ms));
        for n in &mut self.nodes {
            n.core.fencing = true;
        }
    }

    /// Cut or heal the partition between node `i` and the arbiter.
    pub fn set_arbiter_reach(&mut self, i: usize, reach: bool) {
        let Some(a) = self.arbiter.as_mut() else { return };
        if a.reach[i] != reach {
            a.reach[i] = reach;
            let id = self.nodes[i].id.clone();
            self.note(|| format!("{id} {} the arbiter", if reach { "reaches" } else { "CUT from" }));
        }
    }

    /// Fault helper: each node's reach of the arbiter flips with `percent` chance.
    pub fn flip_arbiter(&mut self, rng: &mut Rng, percent: u64) {
        for i in 0..self.nodes.len() {
            if self.arbiter.is_some() && rng.chance(percent) {
                let reach = !self.arbiter.as_ref().is_some_and(|a| a.reach[i]);
                self.set_arbiter_reach(i, reach);
            }
        }
    }

    /// Add a link; returns its index.
    pub fn link(&mut self, name: &str) -> usize {
        self.links.push((name.into(), true));
        self.links.len() - 1
    }

    /// Add a node; returns its index. Call [`Sim::start`] once the peers and watches are set.
    pub fn node(&mut self, id: &str, role: Role, policy: usize) -> usize {
        self.nodes.push(Node::new(id, role, policy, self.policies[policy]));
        self.nodes.len() - 1
    }

    /// Build every node's heartbeat tracker (after peers and watches are declared).
    pub fn start(&mut self) {
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        for n in &mut self.nodes {
            n.tracker = Tracker::new(&n.id, &n.targets(&ids));
        }
    }

    /// Every daemon up and every link up: nothing in the world excuses two actives.
    pub fn whole(&self) -> bool {
        self.nodes.iter().all(|n| n.up) && self.links.iter().all(|l| l.1)
    }

    /// A note in the timeline (a fault of the schedule, a check).
    pub fn note(&mut self, text: impl FnOnce() -> String) {
        if self.trace {
            let text = text();
            let _ = writeln!(self.timeline, "  t{:<3} ** {text}", self.t);
        }
    }

    /// Cut or heal a link.
    pub fn set_link(&mut self, link: usize, up: bool) {
        if self.links[link].1 != up {
            self.links[link].1 = up;
            let name = self.links[link].0.clone();
            self.note(|| format!("link {name} {}", if up { "healed" } else { "CUT" }));
        }
    }

    /// Kill node `i`'s daemon (kill -9): its queue, inbox and results are lost; services, VIPs and
    /// whatever a route hook configured stay as they are.
    pub fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.up {
            return;
        }
        n.up = false;
        let info = RestartInfo { downtime_ms: 0, mode: n.core.mode, mode_since_ms: n.core.mode_since_ms, state: n.core.state.clone() };
        n.persisted = (n.core.mode != Mode::Starting).then_some((info, self.now));
        n.queue.clear();
        n.inbox.clear();
        n.results.clear();
        n.operator = None;
        let id = n.id.clone();
        self.note(|| format!("{id} daemon killed (services left as they are)"));
    }

    /// Start node `i`'s daemon again: a new core (tick 0, starting; within [`MAX_DOWNTIME_MS`] of the
    /// crash it is told what it was, as the real daemon reads `node-state.json`), a new tracker,
    /// monitors and sync counted afresh, the relay at its initial target (or the last hook's).
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].up {
            return;
        }
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        let now = self.now;
        let n = &mut self.nodes[i];
        n.up = true;
        let restart = n.persisted.take().and_then(|(mut info, at)| {
            info.downtime_ms = now.saturating_sub(at);
            (info.downtime_ms <= MAX_DOWNTIME_MS).then_some(info)
        });
        n.core = NodeCore::new(&n.id, n.role, now).with_startup_grace(STARTUP_GRACE_MS).with_restart(restart);
        if let Some(a) = self.arbiter.as_mut() {
            n.core.fencing = true;
            a.restarted(i);
        }
        n.tracker = Tracker::new(&n.id, &n.targets(&ids));
        for c in &mut n.monitor_checks {
            *c = Check { name: c.name.clone(), ..Check::default() };
        }
        n.sync = SyncModel::default();
        n.route = n.route_hooked.clone().or_else(|| n.route_initial.clone());
        n.last_operator = None;
        let id = n.id.clone();
        self.note(|| format!("{id} daemon restarted"));
    }

    /// Queue an operator request for node `i` (delivered on its next tick, if its daemon is up).
    pub fn operator(&mut self, i: usize, request: OperatorRequest) {
        if !self.nodes[i].up {
            return;
        }
        self.nodes[i].operator = Some(request);
        self.nodes[i].operated = true;
        self.nodes[i].last_operator = Some(request);
        let id = self.nodes[i].id.clone();
        self.note(|| format!("operator {request} on {id}"));
    }

    /// Node `i`'s daemon runs and says ACTIVE.
    pub fn active(&self, i: usize) -> bool {
        self.nodes[i].up && self.nodes[i].core.mode == Mode::Active
    }

    /// How many nodes of `group` are active.
    pub fn actives(&self, group: &[usize]) -> usize {
        group.iter().filter(|i| self.active(**i)).count()
    }

    /// Exactly one node of `group` is active, every node is up, and no service runs on a node that
    /// is not active. `Ok(the active one)`. (Whether the active node runs every service depends on the
    /// plugin: some restart only watchdog services; each deployment checks what its plugin promises.)
    pub fn one_active(&self, group: &[usize]) -> Result<usize, String> {
        let active: Vec<usize> = group.iter().copied().filter(|i| self.active(*i)).collect();
        if active.len() != 1 {
            let ids: Vec<&str> = active.iter().map(|i| self.nodes[*i].id.as_str()).collect();
            return Err(format!("{} active nodes {ids:?}, expected one", active.len()));
        }
        for &i in group {
            let n = &self.nodes[i];
            if !n.up {
                return Err(format!("{} is down", n.id));
            }
            if n.core.mode != Mode::Active && n.any_running() {
                return Err(format!("{} is {} with services running", n.id, n.core.mode));
            }
        }
        Ok(active[0])
    }

    /// Node `i` runs `services` (every declared one when empty).
    pub fn runs(&self, i: usize, services: &[&str]) -> Result<(), String> {
        let n = &self.nodes[i];
        let stopped: Vec<&String> = n.services.iter().filter(|(name, running)| !**running && (services.is_empty() || services.contains(&name.as_str()))).map(|(name, _)| name).collect();
        if stopped.is_empty() {
            Ok(())
        } else {
            Err(format!("{} is {} with {stopped:?} stopped", n.id, n.core.mode))
        }
    }

    /// Fault helper: each link flips (cut ⇄ healed) with `percent` chance.
    pub fn flip_links(&mut self, rng: &mut Rng, percent: u64) {
        for l in 0..self.links.len() {
            if rng.chance(percent) {
                let up = !self.links[l].1;
                self.set_link(l, up);
            }
        }
    }

    /// Fault helper: node `i`'s daemon is killed, or restarted if down, with `percent` chance.
    pub fn crash_or_restart(&mut self, rng: &mut Rng, i: usize, percent: u64) {
        if rng.chance(percent) {
            if self.nodes[i].up {
                self.crash(i);
            } else {
                self.restart(i);
            }
        }
    }

    /// The faults end: every link healed, every daemon up, every monitor good, no more fault rates.
    pub fn heal(&mut self) {
        for l in 0..self.links.len() {
            self.set_link(l, true);
        }
        for i in 0..self.nodes.len() {
            self.set_arbiter_reach(i, true);
            self.restart(i);
            for healthy in self.nodes[i].monitors.values_mut() {
                *healthy = true;
            }
        }
        self.faults = Faults::default();
    }

    /// Fault helper: node `i`'s monitors each flip (failing ⇄ good) with `percent` chance.
    pub fn flip_monitors(&mut self, rng: &mut Rng, i: usize, percent: u64) {
        let names: Vec<String> = self.nodes[i].monitors.keys().cloned().collect();
        for name in names {
            if rng.chance(percent) {
                let healthy = !self.nodes[i].monitors[&name];
                self.nodes[i].monitors.insert(name.clone(), healthy);
                let id = self.nodes[i].id.clone();
                self.note(|| format!("monitor {name} of {id} {}", if healthy { "good again" } else { "FAILING" }));
            }
        }
    }

    /// Whether any link between node `i` and peer spec `p` is up.
    fn reaches(&self, p: &PeerSpec) -> bool {
        p.links.iter().any(|l| self.links[*l].1)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            up: self.nodes.iter().map(|n| n.up).collect(),
            mode: self.nodes.iter().map(|n| n.core.mode).collect(),
            role: self.nodes.iter().map(|n| n.role).collect(),
            app: self.nodes.iter().map(Node::app_healthy).collect(),
            services: self.nodes.iter().map(|n| n.services.clone()).collect(),
        }
    }

    fn report(s: &Snapshot, j: usize) -> Report {
        Report { mode: s.mode[j], configured_role: Some(s.role[j]), app_healthy: Some(s.app[j]), mode_since_ms: None }
    }

    fn round(&self, i: usize, s: &Snapshot) -> Round {
        let n = &self.nodes[i];
        let answer = |ok: bool, report: Option<Report>| CheckResult { ok, report: if ok { report } else { None }, ..CheckResult::default() };
        let peers = n
            .peers
            .iter()
            .map(|p| {
                let host = match p.how {
                    How::Vigil => s.up[p.node],
                    How::Ping => true,
                };
                let report = (p.how == How::Vigil).then(|| Self::report(s, p.node));
                RemoteRound {
                    paths: p.links.iter().map(|l| answer(self.links[*l].1 && host, report.clone())).collect(),
                    services: p
                        .services
                        .iter()
                        .map(|name| {
                            let link = p.service_link.is_some_and(|l| self.links[l].1);
                            answer(link && s.services[p.node].get(name).copied().unwrap_or(false), None)
                        })
                        .collect(),
                }
            })
            .collect();
        let watched = n
            .watched
            .iter()
            .map(|w| {
                let link = self.links[w.link].1;
                let (ok, report) = match w.target {
                    Target::Node(j) => {
                        let host = w.how == How::Ping || s.up[j];
                        (link && host, (w.how == How::Vigil).then(|| Self::report(s, j)))
                    }
                    Target::External(k) => {
                        let e = &self.externals[k];
                        (link && e.answers, e.mode.map(|mode| Report { mode, ..Report::default() }))
                    }
                };
                RemoteRound { paths: vec![answer(ok, report)], services: Vec::new() }
            })
            .collect();
        Round { peers, watched, ..Round::default() }
    }

    /// The initial sync, as the replicator runs it after a round (`round` is this node's).
    fn sync(&mut self, i: usize, round: &Round, s: &Snapshot, rng: &mut Rng) {
        let finished = self.nodes[i].sync.pulling.take();
        if let Some(j) = finished {
            let spec = self.nodes[i].peers.iter().find(|p| p.node == j).cloned();
            let ok = spec.is_some_and(|p| self.reaches(&p)) && s.up[j] && !rng.chance(self.faults.sync_failure);
            let view = &mut self.nodes[i].sync.view;
            if ok {
                view.consecutive_failures = 0;
                view.last_ok_ms = Some(self.now);
                if matches!(view.initial, InitialSync::Pending | InitialSync::Failed) {
                    view.initial = InitialSync::Done;
                }
            } else {
                view.consecutive_failures += 1;
                if matches!(view.initial, InitialSync::Pending | InitialSync::Failed) {
                    view.initial = InitialSync::Failed;
                }
            }
        }
        let n = &mut self.nodes[i];
        let answered: Vec<(usize, Mode)> = n
            .peers
            .iter()
            .zip(&round.peers)
            .filter_map(|(p, r)| r.paths.iter().find(|c| c.ok).and_then(|c| c.report.as_ref()).map(|rep| (p.node, rep.mode)))
            .collect();
        if !n.sync.first_round_seen && !answered.is_empty() {
            n.sync.first_round_seen = true;
            if let Some((j, _)) = answered.iter().find(|(_, m)| *m == Mode::Active) {
                n.sync.view.initial = InitialSync::Pending;
                n.sync.pulling = Some(*j);
            }
        }
        if n.sync.view.initial == InitialSync::Failed && n.sync.pulling.is_none() {
            if let Some((j, _)) = answered.iter().find(|(_, m)| *m == Mode::Active) {
                n.sync.pulling = Some(*j);
            }
        }
    }

    /// One heartbeat interval: every node that is up observes, decides and queues; then the executors
    /// run what is due.
    pub fn tick(&mut self, rng: &mut Rng) -> Result<(), Faulted> {
        self.t += 1;
        self.now += u64::from(self.heartbeat.interval_ms);
        let s = self.snapshot();
        let peer_ids: Vec<Vec<String>> = self.nodes.iter().map(|n| n.peers.iter().map(|p| self.nodes[p.node].id.clone()).collect()).collect();
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        for (i, peers) in peer_ids.iter().enumerate() {
            if !self.nodes[i].up {
                continue;
            }
            let now = self.now;
            let arbiter = self.arbiter.as_mut().map(|a| a.view(i, now, &ids));
            let arbiter_seen = arbiter.clone();
            let round = self.round(i, &s);
            self.sync(i, &round, &s, rng);
            let heartbeat = self.heartbeat;
            let policy = self.policies[self.nodes[i].policy];
            let n = &mut self.nodes[i];
            n.tracker.record(&round, now);
            for c in &mut n.monitor_checks {
                c.record(n.monitors[&c.name]);
            }
            let observations = Observations {
                now_ms: now,
                heartbeat,
                peers: n.tracker.peers(now),
                watched: n.tracker.watched(now),
                monitors: n.monitor_checks.clone(),
                route: n.route.clone(),
                services: n
                    .specs
                    .iter()
                    .map(|spec| Service {
                        state: if n.services[&spec.name] { ServiceState::Running } else { ServiceState::Stopped },
                        ..spec.clone()
                    })
                    .collect(),
                sync: n.sync.view.clone(),
                arbiter,
                operator: n.operator.take(),
                commands: std::mem::take(&mut n.inbox),
                results: std::mem::take(&mut n.results),
                pending_actions: n.queue.len() as u32,
                ..Observations::default()
            };
            let trace_inputs = self.trace.then(|| {
                let o = &observations;
                let mut extra = Vec::new();
                if let Some(op) = o.operator {
                    extra.push(format!("operator {op}"));
                }
                for c in &o.commands {
                    extra.push(format!("cmd {} from {}", c.command, c.from));
                }
                for r in &o.results {
                    if !r.ok {
                        extra.push(format!("FAILED {}", r.action));
                    }
                }
                extra.join(", ")
            });
            let outcome = n.core.step(policy, observations, peers);
            if let Some(fault) = &outcome.fault {
                return Err(Faulted(format!("tick {}: node {} faulted: {fault}", self.t, n.id)));
            }
            if let (Some(a), Some(view)) = (self.arbiter.as_mut(), arbiter_seen) {
                let holder = view.holder.as_deref().filter(|h| *h != ids[i]);
                if let Some(holder) = holder.filter(|_| outcome.wants_active && outcome.from != Mode::Active) {
                    a.breaches.push(format!("tick {}: {} asked for the active role while its arbiter view said {holder} holds the key", self.t, ids[i]));
                }
                a.after(i, outcome.wants_active, now);
            }
            let n = &mut self.nodes[i];
            let t = self.t;
            for action in &outcome.actions {
                let delay = if rng.chance(self.faults.slow_action) { 1 + rng.below(2) as u64 } else { 0 };
                n.queue.push_back(Queued { action: action.clone(), ready_tick: t + delay });
            }
            if self.trace && (outcome.changed() || trace_inputs.as_deref().is_some_and(|x| !x.is_empty())) {
                let actions: Vec<String> = outcome.actions.iter().filter(|a| !matches!(a, Action::Alarm { .. })).map(ToString::to_string).collect();
                let _ = writeln!(
                    self.timeline,
                    "  t{t:<3} {} {}→{} [{}] {{{}}} {}",
                    n.id,
                    outcome.from,
                    outcome.to,
                    trace_inputs.unwrap_or_default(),
                    actions.join(" "),
                    outcome.reason
                );
            }
        }
        for i in 0..self.nodes.len() {
            self.execute(i, rng);
        }
        if self.trace {
            let line = self.state_line();
            let _ = writeln!(self.timeline, "  t{:<3} {line}", self.t);
        }
        Ok(())
    }

    /// One line: links, and each node's daemon, mode, running services, VIP and route.
    pub fn state_line(&self) -> String {
        let mut line = String::new();
        for (name, up) in &self.links {
            if !up {
                let _ = write!(line, "{name}:CUT ");
            }
        }
        if let Some(a) = &self.arbiter {
            for (i, reach) in a.reach.iter().enumerate() {
                if !reach {
                    let _ = write!(line, "{}-arbiter:CUT ", self.nodes[i].id);
                }
            }
            let _ = write!(line, "key={} ", a.holder().map_or("-", |h| self.nodes[h].id.as_str()));
        }
        for n in &self.nodes {
            let services = n.services.values().filter(|r| **r).count();
            let _ = write!(
                line,
                "| {}{} {}{}{}{} ",
                n.id,
                if n.up { "" } else { "(down)" },
                n.core.mode,
                if services > 0 { format!(" svc{services}") } else { String::new() },
                if n.vip { " vip" } else { "" },
                n.route.as_deref().map(|r| format!(" route={r}")).unwrap_or_default(),
            );
        }
        line
    }

    /// Run node `i`'s due actions, in order, stopping at the first that is not due yet.
    fn execute(&mut self, i: usize, rng: &mut Rng) {
        while self.nodes[i].up && self.nodes[i].queue.front().is_some_and(|q| q.ready_tick <= self.t) {
            let action = self.nodes[i].queue.pop_front().expect("a due action").action;
            self.actions_run += 1;
            let ok = match &action {
                Action::Start(s) | Action::Restart(s) => {
                    let ok = !rng.chance(self.faults.start_failure);
                    self.nodes[i].services.insert(s.clone(), ok);
                    ok
                }
                Action::Stop(s) => {
                    self.nodes[i].services.insert(s.clone(), false);
                    true
                }
                Action::Hook { name, args } => {
                    let ok = !rng.chance(self.faults.hook_failure);
                    self.world.hook(i, name, args, ok);
                    ok
                }
                Action::ClaimVip => {
                    self.nodes[i].vip = true;
                    true
                }
                Action::ReleaseVip => {
                    self.nodes[i].vip = false;
                    true
                }
                Action::Route(target) => {
                    let known = self.policies[self.nodes[i].policy].file.relay.as_ref().is_some_and(|r| r.targets.contains_key(target));
                    let ok = known && !rng.chance(self.faults.hook_failure);
                    if ok {
                        self.nodes[i].route = Some(target.clone());
                        if self.policies[self.nodes[i].policy].file.relay.as_ref().is_some_and(|r| r.hook.is_some()) {
                            self.nodes[i].route_hooked = Some(target.clone());
                        }
                    }
                    self.world.route(i, target, ok);
                    ok
                }
                Action::Command { peer, command } => self.send(i, peer.as_deref(), *command, rng),
                Action::Sync => {
                    if self.nodes[i].sync.pulling.is_none() {
                        self.nodes[i].sync.pulling = self.nodes[i].peers.first().map(|p| p.node);
                    }
                    true
                }
                Action::Alarm { .. } => true,
            };
            let finished_ms = self.now;
            self.nodes[i].results.push(ActionResult { action, ok, message: String::new(), finished_ms, duration_ms: 0 });
        }
    }

    /// Deliver a peer command; whether every addressed peer got it.
    fn send(&mut self, from: usize, to: Option<&str>, command: PeerCommand, rng: &mut Rng) -> bool {
        let specs: Vec<PeerSpec> =
            self.nodes[from].peers.iter().filter(|p| to.is_none_or(|id| self.nodes[p.node].id == id)).cloned().collect();
        let mut all = !specs.is_empty();
        for p in specs {
            let delivered = self.reaches(&p) && self.nodes[p.node].up && !rng.chance(self.faults.command_loss);
            if delivered {
                let sender = self.nodes[from].id.clone();
                self.nodes[p.node].inbox.push(ReceivedCommand { from: sender, command });
            } else {
                let (a, b) = (self.nodes[from].id.clone(), self.nodes[p.node].id.clone());
                self.note(|| format!("command {command} {a}→{b} lost"));
            }
            all &= delivered;
        }
        all
    }
}

/// The longest run of consecutive ticks in which a condition held (e.g. two actives while whole).
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    current: u64,
    pub longest: u64,
    /// The tick at which the longest run ended (last tick of it).
    pub at: u64,
}

impl Run {
    /// Count tick `t`: the condition held or not.
    pub fn count(&mut self, held: bool, t: u64) {
        if held {
            self.current += 1;
            if self.current > self.longest {
                self.longest = self.current;
                self.at = t;
            }
        } else {
            self.current = 0;
        }
    }
}

/// A failover group: at most one of its nodes should be active.
pub struct Group {
    pub name: &'static str,
    pub nodes: Vec<usize>,
    /// The documented bound: the longest run of ticks in which two of its nodes may be active while
    /// every daemon and every link is up.
    pub bound: u64,
}

/// What one schedule measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Per group: the longest run of two (or more) actives while every daemon and link was up.
    pub overlaps: Vec<(&'static str, u64)>,
    /// The calm tick from which the deployment stayed settled.
    pub settled_at: u64,
    /// The deployment's own figure ([`Deployment::observe`]).
    pub extra: u64,
}

/// Ticks before the faults: the deployment must settle here first ("after the first settle").
pub const WARMUP_TICKS: u64 = 8;
/// Ticks with faults, then calm ticks in which the deployment must settle again and stay settled.
pub const FAULT_TICKS: u64 = 36;
pub const CALM_TICKS: u64 = 28;

/// Schedules per deployment per test run (`VIGIL_SIM_SCHEDULES` to change, `VIGIL_SIM_SEED` to
/// replay one with its timeline).
pub const SCHEDULES: u64 = 2000;

/// One deployment under simulation: how to build it, which faults to inject, which groups it has,
/// what "settled" means for it.
pub trait Deployment: Sync {
    type W: World;
    /// Printed with the figures.
    const NAME: &'static str;
    /// The deployment must be settled this many calm ticks after the faults end, and stay settled.
    const SETTLE_WITHIN: u64;

    /// Schedules per run when `VIGIL_SIM_SCHEDULES` does not say.
    fn schedules(&self) -> u64 {
        SCHEDULES
    }
    /// The world of one seed, built and started (`rng` continues with the schedule).
    fn build(&self, rng: &mut Rng, trace: bool) -> Sim<'_, Self::W>;
    /// The failover groups (node indices as `build` adds them).
    fn groups(&self) -> Vec<Group>;
    /// One tick of faults (before the nodes decide).
    fn inject(&self, sim: &mut Sim<'_, Self::W>, rng: &mut Rng);
    /// The faults end: heal every link, restart every daemon, end every outside failure.
    fn calm(&self, sim: &mut Sim<'_, Self::W>);
    /// Settled: `Err(why not)` otherwise.
    fn settled(&self, sim: &Sim<'_, Self::W>) -> Result<(), String>;
    /// Invariants and measures of the deployment beyond the group property, checked every tick;
    /// returns a figure to report (the worst over all schedules is printed).
    fn observe(&self, _sim: &mut Sim<'_, Self::W>) -> Result<u64, String> {
        Ok(0)
    }
    /// A named, documented exception in effect now: a known violation (listed in the deployment's
    /// module doc, to be removed with the fix) that neither the bound nor the settling counts.
    fn excused(&self, _sim: &Sim<'_, Self::W>) -> Option<&'static str> {
        None
    }
}

/// The end of the timeline, for a failure message.
fn tail(timeline: &str, n: usize) -> String {
    let lines: Vec<&str> = timeline.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Why a schedule failed: the seed, the tick, and the end of the timeline when it was traced.
fn failure<W: World>(seed: u64, sim: &Sim<'_, W>, why: String) -> String {
    format!("seed {seed}, tick {}: {why}\n{}", sim.t, if sim.trace { tail(&sim.timeline, 160) } else { String::new() })
}

/// What a passing schedule leaves: its figures, the exceptions it used, its timeline (if traced).
pub struct Passed {
    pub measured: Measured,
    pub exceptions: Vec<&'static str>,
    pub timeline: String,
}

/// Run one schedule of `d` with `seed`: warm-up, faults, calm. `Err` says which property failed
/// (with the timeline when `trace`).
pub fn schedule<D: Deployment>(d: &D, seed: u64, trace: bool) -> Result<Passed, String> {
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut sim = d.build(&mut rng, trace);
    let groups = d.groups();
    // The warm-up and the calm are free of fault rates; the deployment's rates apply to the faults.
    let rates = std::mem::take(&mut sim.faults);
    let mut overlaps = vec![Run::default(); groups.len()];
    let mut first_settle = None;
    let mut settled_since = None;
    let mut exceptions = Vec::new();
    let mut extra = 0;
    for t in 1..=WARMUP_TICKS + FAULT_TICKS + CALM_TICKS {
        if t == WARMUP_TICKS + 1 {
            sim.faults = rates;
        }
        if (WARMUP_TICKS + 1..=WARMUP_TICKS + FAULT_TICKS).contains(&t) {
            d.inject(&mut sim, &mut rng);
        } else if t == WARMUP_TICKS + FAULT_TICKS + 1 {
            sim.note(|| "faults end".into());
            d.calm(&mut sim);
        }
        if let Err(Faulted(why)) = sim.tick(&mut rng) {
            return Err(failure(seed, &sim, why));
        }
        extra = extra.max(d.observe(&mut sim).map_err(|why| failure(seed, &sim, why))?);
        let settled = d.settled(&sim);
        if first_settle.is_none() {
            match settled {
                Ok(()) => first_settle = Some(t),
                Err(why) if t == WARMUP_TICKS => return Err(failure(seed, &sim, format!("never settled during the warm-up: {why}"))),
                Err(_) => {}
            }
            continue;
        }
        let exception = d.excused(&sim);
        if let Some(name) = exception {
            if !exceptions.contains(&name) {
                exceptions.push(name);
                sim.note(|| format!("exception {name} in effect"));
            }
        }
        // Two actives in a group while nothing in the world (and no named exception) excuses them.
        let whole = sim.whole() && exception.is_none();
        for (g, run) in groups.iter().zip(&mut overlaps) {
            run.count(whole && sim.actives(&g.nodes) >= 2, t);
            if run.longest > g.bound {
                let why = format!("two {} nodes active for {} ticks while every daemon and link is up (bound {})", g.name, run.longest, g.bound);
                return Err(failure(seed, &sim, why));
            }
        }
        if t > WARMUP_TICKS + FAULT_TICKS {
            let calm_tick = t - WARMUP_TICKS - FAULT_TICKS;
            match settled {
                Ok(()) => {
                    settled_since.get_or_insert(calm_tick);
                }
                Err(why) => {
                    settled_since = None;
                    if calm_tick >= D::SETTLE_WITHIN && exception.is_none() {
                        let why = format!("not settled at calm tick {calm_tick} (bound {}): {why}", D::SETTLE_WITHIN);
                        return Err(failure(seed, &sim, why));
                    }
                }
            }
        }
    }
    let overlaps = groups.iter().zip(&overlaps).map(|(g, run)| (g.name, run.longest)).collect();
    Ok(Passed { measured: Measured { overlaps, settled_at: settled_since.unwrap_or(0), extra }, exceptions, timeline: sim.timeline })
}

/// Run the schedules of `d` (or only `VIGIL_SIM_SEED`, printing its timeline), print the figures,
/// and panic with the first failing seed's replayed timeline.
pub fn run_all<D: Deployment>(d: &D) {
    let started = std::time::Instant::now();
    let env = |key: &str| std::env::var(key).ok().and_then(|v| v.parse::<u64>().ok());
    let only = env("VIGIL_SIM_SEED");
    let seeds: Vec<u64> = match only {
        Some(seed) => vec![seed],
        None => (0..env("VIGIL_SIM_SCHEDULES").unwrap_or(d.schedules())).collect(),
    };
    let mut overlaps: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let (mut settled_at, mut extra) = (0, (0, 0));
    let mut exceptions: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let mut failures = Vec::new();
    // Schedules are independent: spread them over the cores (the test harness may run another
    // deployment beside this one; a few threads more than cores cost nothing).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(seeds.len().max(1));
    let mut results: Vec<(u64, Result<Passed, String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                let seeds = &seeds;
                let only = only.is_some();
                scope.spawn(move || seeds.iter().skip(k).step_by(threads).map(|&seed| (seed, schedule(d, seed, only))).collect::<Vec<_>>())
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a simulation thread panicked")).collect()
    });
    results.sort_by_key(|(seed, _)| *seed);
    for (seed, result) in results {
        match result {
            Ok(passed) => {
                if only.is_some() {
                    println!("{}", passed.timeline);
                }
                for (name, ticks) in passed.measured.overlaps {
                    let worst = overlaps.entry(name).or_default();
                    if ticks > worst.0 {
                        *worst = (ticks, seed);
                    }
                }
                settled_at = settled_at.max(passed.measured.settled_at);
                if passed.measured.extra > extra.0 {
                    extra = (passed.measured.extra, seed);
                }
                for name in passed.exceptions {
                    let (count, _) = exceptions.entry(name).or_insert((0, seed));
                    *count += 1;
                }
            }
            Err(_) => failures.push(seed),
        }
    }
    let overlaps: Vec<String> = overlaps.iter().map(|(name, (ticks, seed))| format!("{name} {ticks} (seed {seed})")).collect();
    println!(
        "{}: {} schedules of {} ticks in {:.1} s; longest two-actives while whole, in ticks: [{}]; settled by calm tick {} (bound {}); figure {} (seed {}); exceptions (schedules, first seed) {exceptions:?}",
        D::NAME,
        seeds.len(),
        WARMUP_TICKS + FAULT_TICKS + CALM_TICKS,
        started.elapsed().as_secs_f64(),
        overlaps.join(", "),
        settled_at,
        D::SETTLE_WITHIN,
        extra.0,
        extra.1,
    );
    if let Some(&seed) = failures.first() {
        let why = schedule(d, seed, true).err().unwrap_or_else(|| "passed on replay: the simulation is not deterministic".into());
        panic!(
            "{}: {} of {} schedules failed (seeds {:?}); replay with VIGIL_SIM_SEED={seed}:\n{why}",
            D::NAME,
            failures.len(),
            seeds.len(),
            &failures[..failures.len().min(20)]
        );
    }
}
