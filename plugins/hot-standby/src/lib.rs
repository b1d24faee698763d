//! hot-standby: two servers behind a load balancer, one active, one standby (deployments.md §1, the
//! vendor's "Fault tolerant Hot Standby" guide, seed `004_…` §5 and §6.3).
//!
//! Every tick the plugin first *observes* (updates its own counters in the state: how long each peer
//! has failed, how long another node has been seen active while this one is, how long nobody has been
//! active), then applies the first rule that fires, in this order:
//!
//! 1. `off`/`failed`: only an operator `restart-ha` or `restore` brings the node back;
//! 2. an operator request (explicit human intent beats every automatic rule);
//! 3. a command from a peer (`go-standby`, `go-active`);
//! 4. active: LAN lost (§6.3.4) → two actives (§6.3.3) → watchdog and daily restarts (§6.3.4.1);
//! 5. standby: failover (§6.3.1) → rollback of server #1 (§6.3.2) → nobody active (simultaneous start).
//!
//! With an arbiter (`tick.arbiter`, `[arbiter]` in the node configuration) the rules ask for the
//! active role only when no other node holds the role key, an active node that sees another holder
//! gives way, and in a group of more than two nodes only the first node of the `priority` order that
//! can still serve fails over (`vigil_sdk::arbiter`). Without one, nothing of this applies.
//!
//! The host does the mechanics (heartbeats, LAN probe, VIP test, running commands, restart backoff);
//! this file only decides. `docs/plugins/hot-standby.md` maps every rule to the seed and lists the
//! interpretations made where the seed is silent.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use vigil_sdk::arbiter;
use vigil_sdk::handover::{self, Handover, StepDown};
use vigil_sdk::prelude::*;
use vigil_sdk::Service;

/// The policy file's `[params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Consecutive failed checks of the peer before failover, and of "other node seen active" before the
    /// two-actives rule; default: the node's `[heartbeat] failures`.
    #[serde(default)]
    failures: Option<u32>,
    /// Consecutive good checks before server #1 takes the role back; default: `[heartbeat] successes`.
    #[serde(default)]
    successes: Option<u32>,
    /// Count the peer's application error (`/app`) as a failed check, not only "it did not answer".
    #[serde(default)]
    switch_on_app_error: bool,
    /// Server #1 (configured primary) takes the active role back by itself once healthy again.
    #[serde(default)]
    first_server_auto_active: bool,
    /// Use the host's VIP destination test: rollback needs the VIP to reach this node, and in a
    /// two-actives conflict the node the VIP reaches keeps the role.
    #[serde(default)]
    test_vip_destination: bool,
    /// Consecutive failed LAN probes before an active node steps down; default: `failures`.
    #[serde(default)]
    lan_failures: Option<u32>,
    /// Service names in start order (stopped in reverse). Declared services not listed start after
    /// these, in the policy's (alphabetical) order. Default: the policy's order.
    #[serde(default)]
    start_order: Vec<String>,
    /// How long a node taking the role from a live peer (rollback, `vigil switch`, a peer's
    /// go-active) waits for the peer to report STANDBY with its services stopped before it gives up
    /// and stays standby. Default 30 s.
    #[serde(default)]
    handover_timeout_ms: Option<u64>,
    /// With an arbiter: the group's node ids, highest priority first. A standby fails over by itself
    /// only when every node before it is lost or reports OFF/FAILED. Default: the configured role
    /// primary first, then the secondaries by id.
    #[serde(default)]
    priority: Vec<String>,
}

/// Bounds of `handover_timeout_ms`: at least a second, at most an hour.
const HANDOVER_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;

/// Upper bound for every count: beyond this a typo (e.g. 500 instead of 5) is more likely than intent.
const MAX_COUNT: u32 = 1000;

/// What the plugin remembers between ticks. Every field defaults, so an older state still loads.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct State {
    /// Per peer id: consecutive failed checks, counted only while this node's LAN was up.
    peer_failures: BTreeMap<String, u32>,
    /// Consecutive checks in which another node reported active while this node was active.
    seen_active: u32,
    /// Consecutive checks in which no node was active (every peer answered in standby, so did we).
    idle: u32,
    /// This node gave the role away (operator, peer command, LAN lost, two actives); until a peer is
    /// seen active, it does not grab the role back on the fast "nobody active" path.
    yielded: bool,
    /// The operator switched this node to standby: automatic rollback waits for `restore` or `active`.
    operator_hold: bool,
    /// Configuration warnings already raised (each is raised once).
    warned: BTreeSet<String>,
    /// This node takes the role from a live peer and waits for it to report STANDBY.
    handover: Option<Handover>,
    /// This node gives the role up: its stops are issued, it reports STANDBY once they finished.
    stepping_down: Option<StepDown>,
    /// After an abandoned hand-over, rollback waits until this tick time before asking again.
    rollback_after_ms: Option<u64>,
}

/// The counts this tick runs with: parameters, or the node's heartbeat settings by default.
#[derive(Debug, Clone, Copy)]
struct Counts {
    failures: u32,
    successes: u32,
    lan_failures: u32,
}

impl Counts {
    fn of(params: &Params, tick: &Tick) -> Counts {
        // A zero in the node configuration would make every rule fire at once; one is the least.
        let failures = params.failures.unwrap_or(tick.heartbeat.failures).max(1);
        Counts {
            failures,
            successes: params.successes.unwrap_or(tick.heartbeat.successes).max(1),
            lan_failures: params.lan_failures.unwrap_or(failures).max(1),
        }
    }
}

/// One peer as the failover rules see it in this check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerStatus {
    /// The check failed; the text says how.
    Down(&'static str),
    /// It answered and reports active (and healthy, when application errors count).
    Active,
    /// It answered and reports standby (or hold-off): it does not serve.
    Idle,
    /// It answered without saying its mode: no evidence either way.
    Unknown,
}

/// The LAN probe (`[lan]` in the node configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lan {
    /// No probe configured: assume connected (there is nothing better to go by).
    NotProbed,
    /// Configured but no result yet: not known to be connected.
    NotYet,
    Up(u32),
    Down(u32),
}

impl Lan {
    fn of(tick: &Tick) -> Lan {
        match &tick.lan {
            None => Lan::NotProbed,
            Some(c) if c.consecutive_failures == 0 && c.consecutive_successes == 0 => Lan::NotYet,
            Some(c) if c.ok => Lan::Up(c.consecutive_successes),
            Some(c) => Lan::Down(c.consecutive_failures),
        }
    }

    fn connected(self) -> bool {
        matches!(self, Lan::NotProbed | Lan::Up(_))
    }
}

/// Everything a rule needs, computed once per tick.
struct Cx<'a> {
    tick: &'a Tick,
    params: &'a Params,
    n: Counts,
    lan: Lan,
    /// `(peer, status)` in the tick's order.
    peers: Vec<(&'a Remote, PeerStatus)>,
    /// Declared services in start order.
    order: Vec<&'a Service>,
}

impl<'a> Cx<'a> {
    fn me(&self) -> &str {
        &self.tick.node.id
    }

    fn is_primary(&self) -> bool {
        self.tick.node.configured_role == Role::Primary
    }

    fn peer_ids(&self) -> Vec<&'a str> {
        self.peers.iter().map(|(p, _)| p.id.as_str()).collect()
    }

    fn priority(&self) -> Priority<'a> {
        Priority::new(&self.params.priority)
    }

    fn handover_timeout_ms(&self) -> u64 {
        self.params.handover_timeout_ms.unwrap_or(handover::DEFAULT_TIMEOUT_MS)
    }

    fn vip_reaches_me(&self) -> bool {
        self.tick.vip.as_ref().and_then(|v| v.reaches.as_deref()) == Some(self.me())
    }

    /// Our own actions (starts, stops, commands) are still queued or running.
    fn busy(&self) -> bool {
        self.tick.pending_actions > 0
    }

    /// Whether this node is the one that gives way to `peer` when both are active: the secondary,
    /// or — if both claim the same role (a misconfiguration) — the one with the larger id.
    fn is_backup_against(&self, peer: &Remote) -> bool {
        let mine = self.tick.node.configured_role;
        match peer.report.as_ref().and_then(|r| r.configured_role) {
            Some(theirs) if theirs == mine => self.me() > peer.id.as_str(),
            _ => mine == Role::Secondary,
        }
    }
}

/// Whether one check of `peer` failed, and how. With `switch_on_app_error` an active peer whose
/// application is unhealthy has failed too; a standby peer's `/app` is unhealthy by design (its
/// services are stopped), so it never counts.
fn classify(peer: &Remote, app_errors_count: bool) -> PeerStatus {
    if !peer.reachable {
        return PeerStatus::Down("unreachable");
    }
    let Some(report) = &peer.report else { return PeerStatus::Unknown };
    match report.mode {
        Mode::Off => PeerStatus::Down("reports OFF"),
        Mode::Failed => PeerStatus::Down("reports FAILED"),
        Mode::Active if app_errors_count && report.app_healthy == Some(false) => PeerStatus::Down("application error"),
        Mode::Active => PeerStatus::Active,
        Mode::Standby | Mode::HoldOff => PeerStatus::Idle,
        // Its daemon just started and has not decided: it may resume ACTIVE. Keep what we do.
        Mode::Starting => PeerStatus::Unknown,
    }
}

/// The peer's failure streak after this check. Failures seen while this node's own LAN was down prove
/// nothing about the peer, so the streak never exceeds the LAN's current run of successes; when the
/// state is fresh (first tick, lost state), the host's own reachability count seeds it.
fn next_failures(prev: u32, peer: &Remote, status: PeerStatus, lan: Lan) -> u32 {
    let streak = match status {
        PeerStatus::Down(_) if !peer.reachable => prev.saturating_add(1).max(peer.consecutive_failures),
        PeerStatus::Down(_) => prev.saturating_add(1),
        _ => 0,
    };
    match lan {
        Lan::NotProbed => streak,
        Lan::Up(successes) => streak.min(successes),
        Lan::NotYet | Lan::Down(_) => 0,
    }
}

/// How many consecutive "other node seen active" checks before this active node steps down, or
/// `None` if it keeps the role (§6.3.3). `keeps` is "the VIP reaches this node" with
/// `test_vip_destination`, else "this node is the primary".
fn step_down_after(backup: bool, keeps: bool, n: u32) -> Option<u32> {
    match (backup, keeps) {
        // The backup gives way as soon as the conflict is established.
        (true, false) => Some(n),
        // A primary the VIP does not reach: "if the other server is active two times the number …".
        (false, false) => Some(n.saturating_mul(2)),
        // A backup the VIP reaches keeps the role, but if the conflict outlives the primary's own
        // 2× limit (both think the VIP reaches them), it gives way: the end state is one active node.
        (true, true) => Some(n.saturating_mul(3)),
        (false, true) => None,
    }
}

/// Switch to active: local services first, then tell `peers` to stand by (§6.3.1, §6.3.2).
fn go_active(cx: &Cx, reason: String, peers: &[&str]) -> Decision {
    let mut d = Decision::to(Mode::Active, reason);
    for s in &cx.order {
        d = d.start(&s.name);
    }
    for p in peers {
        d = d.command_peer(Some(p), PeerCommand::GoStandby);
    }
    d
}

/// Give up the active role break-before-make (`vigil_sdk::handover`): stop the services in reverse
/// start order and keep reporting ACTIVE until they are stopped ([`finish_step_down`] then reports
/// STANDBY), so a peer waiting for this node's STANDBY never starts its services beside ours.
fn step_down(cx: &Cx, state: &mut State, reason: String) -> Decision {
    state.handover = None;
    if handover::stopped(cx.tick, &cx.order).is_ok() {
        state.stepping_down = None;
        return Decision::to(Mode::Standby, format!("{reason}: services stopped, STANDBY"));
    }
    state.stepping_down = Some(StepDown { why: reason.clone(), attempts: 0 });
    let mut d = Decision::because(format!("{reason}: stopping the services first, STANDBY once they are stopped"));
    for s in cx.order.iter().rev() {
        d = d.stop(&s.name);
    }
    d
}

/// A node stepping down: STANDBY once its stops finished and every service reads stopped; a service
/// that would not stop is stopped again, and after [`handover::STOP_ATTEMPTS`] rounds the node gives
/// up the hand-over and keeps the role with its services started again (one active node, serving).
fn finish_step_down(cx: &Cx, state: &mut State, step: StepDown) -> Decision {
    match handover::stopped(cx.tick, &cx.order) {
        Ok(()) => {
            state.stepping_down = None;
            Decision::to(Mode::Standby, format!("{}: services stopped, this node ({}) now reports STANDBY", step.why, cx.me()))
        }
        Err(left) if left.is_empty() => {
            state.stepping_down = Some(step.clone());
            Decision::because(format!("{}: waiting for the stop actions before reporting STANDBY", step.why))
        }
        Err(left) => {
            let attempts = step.attempts + 1;
            if attempts >= handover::STOP_ATTEMPTS {
                state.stepping_down = None;
                let text = format!(
                    "could not stop {} after {attempts} attempts: hand-over abandoned, this node ({}) stays ACTIVE",
                    left.join(", "),
                    cx.me()
                );
                let mut d = Decision::because(text.clone()).alarm(Level::Error, text);
                for s in &cx.order {
                    d = d.start(&s.name);
                }
                return d;
            }
            let mut d = Decision::because(format!(
                "{}: {} not stopped, stopping again (attempt {}/{}) before reporting STANDBY",
                step.why,
                left.join(", "),
                attempts + 1,
                handover::STOP_ATTEMPTS
            ));
            for name in left.iter().rev() {
                d = d.stop(name);
            }
            state.stepping_down = Some(StepDown { attempts, ..step });
            d
        }
    }
}

/// Whether this node may take the role without waiting for `peer`: it reports STANDBY (so its
/// services are stopped), or it has failed the full failure threshold.
fn released(cx: &Cx, state: &State, peer: &Remote) -> bool {
    handover::confirms_standby(peer) || state.peer_failures.get(&peer.id).copied().unwrap_or(0) >= cx.n.failures
}

/// Take the role from live peers break-before-make: when every peer already serves nothing, switch
/// now; otherwise command them to stand by and stay STANDBY until they confirm ([`handover_progress`]).
/// `why` says what asks for the switch.
fn take_role(cx: &Cx, state: &mut State, why: &str) -> Decision {
    state.stepping_down = None;
    let peers = cx.peer_ids();
    let waiting: Vec<&Remote> = cx.peers.iter().map(|(p, _)| *p).filter(|p| !released(cx, state, p)).collect();
    let timeout = cx.handover_timeout_ms();
    if waiting.is_empty() {
        if arbiter::held_elsewhere(cx.tick).is_some() {
            // Every peer has let go, but the arbiter's key is still another node's (a lease not yet
            // expired, a resign not yet seen): wait for it as for a peer, within the same deadline.
            state.handover = Some(Handover::new(why, cx.tick.now_ms, timeout));
            let mut d = Decision::because(format!("{why}: {}: this node ({}) stays STANDBY until it is released", arbiter::describe(cx.tick), cx.me()));
            if cx.tick.node.mode != Mode::Standby {
                d.mode = Some(Mode::Standby);
            }
            return stop_leftovers(cx, d);
        }
        state.handover = None;
        return go_active(cx, format!("{why}: switch this node ({}) to ACTIVE, peers to STANDBY", cx.me()), &peers);
    }
    state.handover = Some(Handover::new(why, cx.tick.now_ms, timeout));
    let names: Vec<&str> = waiting.iter().map(|p| p.id.as_str()).collect();
    let mut d = Decision::because(format!(
        "{why}: break-before-make: asking {} to stand by; this node ({}) stays STANDBY until {} reports STANDBY with its services stopped (at most {} s)",
        names.iter().map(|n| format!("peer {n}")).collect::<Vec<_>>().join(", "),
        cx.me(),
        if names.len() == 1 { "it" } else { "each" },
        timeout.div_ceil(1000)
    ));
    for p in names {
        d = d.command_peer(Some(p), PeerCommand::GoStandby);
    }
    // The wait happens in standby, where the hand-over's progress is followed (from off or failed
    // too: an operator restore there means "take the role").
    if cx.tick.node.mode != Mode::Standby {
        d.mode = Some(Mode::Standby);
    }
    stop_leftovers(cx, d)
}

/// A hand-over under way: switch once every peer is released, give up at the deadline.
fn handover_progress(cx: &Cx, state: &mut State) -> Option<Decision> {
    let h = state.handover.clone()?;
    let now = cx.tick.now_ms;
    let waiting: Vec<&Remote> = cx.peers.iter().map(|(p, _)| *p).filter(|p| !released(cx, state, p)).collect();
    if waiting.is_empty() && arbiter::held_elsewhere(cx.tick).is_some() {
        if !h.expired(now) {
            let text = format!("{}: peers released, {}: waiting for it ({} s left)", h.why, arbiter::describe(cx.tick), h.seconds_left(now));
            return Some(stop_leftovers(cx, Decision::because(text)));
        }
        state.handover = None;
        state.rollback_after_ms = Some(now.saturating_add(cx.handover_timeout_ms()));
        let text = format!("{}: {}: not released in time, hand-over abandoned; this node ({}) stays STANDBY", h.why, arbiter::describe(cx.tick), cx.me());
        return Some(stop_leftovers(cx, Decision::because(text.clone()).alarm(Level::Warn, text)));
    }
    if waiting.is_empty() {
        state.handover = None;
        let how = cx
            .peers
            .iter()
            .map(|(p, _)| {
                if handover::confirms_standby(p) {
                    format!("peer {} reports STANDBY with its services stopped", p.id)
                } else {
                    format!("peer {} failed {} checks", p.id, cx.n.failures)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Some(go_active(cx, format!("{}: {how}: switch this node ({}) to ACTIVE", h.why, cx.me()), &[]));
    }
    match handover::wait_for(&h, cx.tick, &waiting, cx.handover_timeout_ms(), cx.me(), &peer_modes(cx)) {
        Ok(d) => Some(stop_leftovers(cx, d)),
        Err(text) => {
            state.handover = None;
            state.rollback_after_ms = Some(now.saturating_add(cx.handover_timeout_ms()));
            Some(stop_leftovers(cx, Decision::because(text.clone()).alarm(Level::Warn, text)))
        }
    }
}

/// A node that is not active must not run the services (two CTI servers on one CUCM is exactly what
/// hot standby prevents): stop any left running, e.g. by a daemon restart. Not while our own actions
/// are in flight, whose effect the status does not show yet.
fn stop_leftovers(cx: &Cx, d: Decision) -> Decision {
    if cx.busy() {
        return d;
    }
    let running: Vec<&str> =
        cx.order.iter().rev().filter(|s| s.state == ServiceState::Running).map(|s| s.name.as_str()).collect();
    if running.is_empty() {
        return d;
    }
    let mut d = d.and_because(&format!("stopping {} left running while not active", running.join(", ")));
    for name in running {
        d = d.stop(name);
    }
    d
}

fn request_word(request: OperatorRequest) -> &'static str {
    match request {
        OperatorRequest::Standby => "standby",
        OperatorRequest::Active => "active",
        OperatorRequest::Restore => "restore",
        OperatorRequest::RestartHa => "restart-ha",
        OperatorRequest::PlannedReboot => "planned-reboot",
    }
}

/// `peer a failed 3/5 checks (unreachable), peer c failed …`
fn failure_counts(cx: &Cx, state: &State) -> String {
    cx.peers
        .iter()
        .map(|(p, status)| {
            let n = state.peer_failures.get(&p.id).copied().unwrap_or(0);
            let how = match status {
                PeerStatus::Down(how) => how,
                _ => "ok now",
            };
            count(&format!("peer {} failed", p.id), n, cx.n.failures, &format!("checks ({how})"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `peer a failed 3/5 checks`, or past the limit (a count that kept running while a rule could not
/// act, e.g. during a pending sync) `peer a failed 7 checks (limit 5)`.
fn count(what: &str, n: u32, limit: u32, unit: &str) -> String {
    if n <= limit {
        format!("{what} {n}/{limit} {unit}")
    } else {
        format!("{what} {n} {unit} (limit {limit})")
    }
}

/// `peer a ACTIVE, peer c STANDBY`
fn peer_modes(cx: &Cx) -> String {
    let word = |p: &Remote, s: PeerStatus| match s {
        PeerStatus::Down(how) => format!("peer {} down ({how})", p.id),
        PeerStatus::Active => format!("peer {} ACTIVE", p.id),
        PeerStatus::Idle => format!("peer {} STANDBY", p.id),
        PeerStatus::Unknown => format!("peer {} answers without a mode", p.id),
    };
    cx.peers.iter().map(|(p, s)| word(p, *s)).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------------------------
// Rules. Each returns the decision if it fires.
// ---------------------------------------------------------------------------------------------

/// `off`/`failed`: out of the group until the operator says otherwise. Services stay stopped.
fn out_of_group(cx: &Cx, state: &mut State) -> Decision {
    let mode = cx.tick.node.mode;
    state.handover = None;
    state.stepping_down = None;
    match cx.tick.operator {
        Some(OperatorRequest::RestartHa) => {
            Decision::to(Mode::Standby, format!("operator restart-ha: this node ({}) leaves {} and rejoins in STANDBY", cx.me(), mode_word(mode)))
        }
        Some(OperatorRequest::Restore) => restore(cx, state),
        Some(other) => {
            let text = format!("operator {} ignored: this node is {}; use restart-ha or restore first", request_word(other), mode_word(mode));
            Decision::because(text.clone()).alarm(Level::Warn, text)
        }
        None => stop_leftovers(cx, Decision::because(format!("{}: waiting for operator restart-ha or restore", mode_word(mode)))),
    }
}

/// The operator's requests (delivered once).
fn operator(cx: &Cx, request: OperatorRequest, state: &mut State) -> Option<Decision> {
    Some(match request {
        OperatorRequest::Active => take_over_by_operator(cx, state, "operator switch active"),
        OperatorRequest::Standby => release_by_operator(cx, state, "operator switch standby"),
        OperatorRequest::Restore => restore(cx, state),
        // A step-down under way goes on: the request changes nothing.
        OperatorRequest::RestartHa | OperatorRequest::PlannedReboot if state.stepping_down.is_some() => return None,
        OperatorRequest::RestartHa => {
            Decision::because(format!("operator restart-ha: nothing to do, this node is already {}", mode_word(cx.tick.node.mode)))
        }
        // Not part of this deployment: a planned reboot costs one ordinary failover.
        OperatorRequest::PlannedReboot => Decision::because("operator planned-reboot: not used by hot-standby"),
    })
}

/// `restore`: back to the configured role — server #1 active, server #2 standby.
fn restore(cx: &Cx, state: &mut State) -> Decision {
    if cx.is_primary() {
        take_over_by_operator(cx, state, "operator restore (configured role primary)")
    } else {
        release_by_operator(cx, state, "operator restore (configured role secondary)")
    }
}

fn take_over_by_operator(cx: &Cx, state: &mut State, why: &str) -> Decision {
    state.operator_hold = false;
    if cx.tick.sync.initial == InitialSync::Pending {
        let text = format!("{why} refused: the initial configuration sync from the active peer is still pending");
        return Decision::because(text.clone()).alarm(Level::Warn, text);
    }
    let peers = cx.peer_ids();
    if cx.tick.node.mode == Mode::Active {
        // Already active (or stepping down, which this cancels): make sure the services run and the
        // peers know (covers a two-actives state).
        state.stepping_down = None;
        let mut d = go_active(cx, format!("{why}: this node ({}) is already ACTIVE; telling peers to stand by", cx.me()), &peers);
        d.mode = None;
        return d;
    }
    take_role(cx, state, why)
}

fn release_by_operator(cx: &Cx, state: &mut State, why: &str) -> Decision {
    state.operator_hold = true;
    state.yielded = true;
    state.handover = None;
    let peers = cx.peer_ids();
    let mut d = if cx.tick.node.mode == Mode::Active {
        step_down(cx, state, format!("{why}: switch this node ({}) to STANDBY, peers to ACTIVE", cx.me()))
    } else {
        Decision::because(format!("{why}: this node ({}) is already STANDBY; asking peers to take the role", cx.me()))
    };
    for p in peers {
        d = d.command_peer(Some(p), PeerCommand::GoActive);
    }
    d
}

/// Commands from peers: the last `go-standby`/`go-active` of the tick counts.
fn peer_command(cx: &Cx, state: &mut State) -> Option<Decision> {
    let cmd = cx
        .tick
        .commands
        .iter()
        .rev()
        .find(|c| matches!(c.command, PeerCommand::GoStandby | PeerCommand::GoActive))?;
    let from = &cmd.from;
    let active = cx.tick.node.mode == Mode::Active;
    match cmd.command {
        PeerCommand::GoStandby if active => {
            state.yielded = true;
            Some(step_down(cx, state, format!("peer {from} takes the role and commands go-standby: switch this node ({}) to STANDBY", cx.me())))
        }
        PeerCommand::GoActive if !active => Some(if cx.tick.sync.initial == InitialSync::Pending {
            Decision::because(format!("peer {from} commands go-active: refused, initial configuration sync still pending"))
        } else if !cx.lan.connected() {
            // Taking a role nobody can reach would only bounce it back and forth.
            Decision::because(format!("peer {from} commands go-active: refused, this node's LAN probe is failing"))
        } else {
            take_role(cx, state, &format!("peer {from} hands over and commands go-active"))
        }),
        _ => None,
    }
}

/// Rules of an active node.
fn active_rules(cx: &Cx, state: &mut State) -> Decision {
    if let Some(holder) = cx.tick.arbiter.as_ref().filter(|a| a.reachable).and_then(|_| arbiter::held_elsewhere(cx.tick)) {
        // The arbiter granted the role to another node: never fight it (with fencing the host demotes
        // this node anyway; without, the plugin does).
        state.yielded = true;
        let why = format!("{}: node {holder} has the role: switch this node ({}) to STANDBY", arbiter::describe(cx.tick), cx.me());
        return step_down(cx, state, why);
    }
    if let Lan::Down(failed) = cx.lan {
        if failed >= cx.n.lan_failures {
            // §6.3.4. Tell the peers to take over: they may still hear us on another link, and would
            // otherwise wait for the slow "nobody active" path.
            state.yielded = true;
            let mut d = step_down(
                cx,
                state,
                format!(
                    "LAN check failed {failed}/{} checks: switch this node ({}) to STANDBY, services nobody can reach are stopped",
                    cx.n.lan_failures,
                    cx.me()
                ),
            );
            for p in cx.peer_ids() {
                d = d.command_peer(Some(p), PeerCommand::GoActive);
            }
            return d;
        }
    }
    let mut d = Decision::because(format!("ACTIVE; {}", peer_modes(cx)));
    if let Lan::Down(failed) = cx.lan {
        d = d.and_because(&format!("LAN check failed {failed}/{} checks", cx.n.lan_failures));
    }
    match two_actives(cx, state) {
        Ok(step_down) => return step_down,
        Err(Some((text, actions))) => d = d.and_because(&text).then_all(actions),
        Err(None) => {}
    }
    watchdog(cx, d)
}

/// §6.3.3, counted in `state.seen_active`. `Ok` steps down; `Err` carries what to add to the decision.
#[allow(clippy::type_complexity)]
fn two_actives(cx: &Cx, state: &mut State) -> Result<Decision, Option<(String, Vec<Action>)>> {
    let seen = state.seen_active;
    let Some((other, _)) = cx.peers.iter().find(|(p, _)| reports_active(p)) else { return Err(None) };
    if seen == 0 {
        return Err(None);
    }
    let n = cx.n.failures;
    let mut backup = cx.is_backup_against(other);
    let mut keeps = if cx.params.test_vip_destination { cx.vip_reaches_me() } else { !backup };
    let mut who = if backup { "backup" } else { "primary" };
    if cx.tick.arbiter.as_ref().is_some_and(|a| a.reachable && a.held) {
        // The arbiter settles it: the holder keeps the role (the other sees the holder and gives way).
        (backup, keeps, who) = (false, true, "this node holds the role key");
    } else if cx.params.switch_on_app_error {
        // When application errors count, the node whose application is broken gives way, whatever its
        // role: otherwise the healthy one would step down and fail over again, round and round.
        let mine = cx.tick.app_healthy();
        let theirs = other.report.as_ref().and_then(|r| r.app_healthy) != Some(false);
        if mine && !theirs {
            (backup, keeps, who) = (false, true, "peer has an application error");
        } else if !mine && theirs {
            (backup, keeps, who) = (true, false, "this node has an application error");
        }
    }
    let vip = match (cx.params.test_vip_destination, cx.vip_reaches_me()) {
        (false, _) => "",
        (true, true) => ", VIP reaches this node",
        (true, false) => ", VIP does not reach this node",
    };
    let count = format!("peer {} seen ACTIVE {seen}/{n} checks while this node is ACTIVE ({who}{vip})", other.id);
    match step_down_after(backup, keeps, n) {
        Some(limit) if seen >= limit => {
            state.yielded = true;
            let why = if limit == n { "this node gives way".to_string() } else { format!("still two actives after {limit} checks, giving way") };
            Ok(step_down(cx, state, format!("two actives: {count}: {why}: switch this node ({}) to STANDBY", cx.me())))
        }
        // `%` rather than `is_multiple_of`: the workspace's rust-version is 1.85.
        #[allow(clippy::manual_is_multiple_of)]
        _ if keeps && seen >= n && seen % n == 0 => Err(Some((
            format!("two actives: {count}: this node keeps the role, commanding peer {} to STANDBY", other.id),
            vec![Action::Command(vigil_sdk::PeerMessage { peer: Some(other.id.clone()), command: PeerCommand::GoStandby })],
        ))),
        _ => Err(Some((format!("possible two actives: {count}"), Vec::new()))),
    }
}

fn reports_active(p: &Remote) -> bool {
    p.reachable && p.report.as_ref().is_some_and(|r| r.mode == Mode::Active)
}

/// §6.3.4.1: a watchdog service that stopped is restarted; a due daily restart is made. The host
/// applies its own backoff and cap and refuses a restart beyond them (a failed result).
fn watchdog(cx: &Cx, mut d: Decision) -> Decision {
    if cx.busy() {
        return d;
    }
    for s in &cx.order {
        if s.watchdog && s.state == ServiceState::Stopped {
            let refused = cx.tick.results.iter().any(|r| !r.ok && matches!(&r.action, Action::Restart(n) if *n == s.name));
            let note = if refused { " (the previous restart failed)" } else { "" };
            d = d.restart(&s.name).and_because(&format!("watchdog: {} stopped, restarting{note}", s.name));
        } else if s.restart_due {
            d = d.restart(&s.name).and_because(&format!("daily restart of {}", s.name));
        }
    }
    d
}

/// Rules of a node that is not active (standby or hold-off).
fn standby_rules(cx: &Cx, state: &mut State) -> Decision {
    let tick = cx.tick;
    if cx.peers.is_empty() {
        return stop_leftovers(cx, Decision::because("STANDBY: no peer configured, nothing to take over from"));
    }
    if tick.node.tick_count == 0 {
        // A fresh daemon has at most one round of evidence: never claim the role on it.
        return stop_leftovers(cx, Decision::because(format!("STANDBY: first tick, observing; {}", peer_modes(cx))));
    }
    if tick.sync.initial == InitialSync::Pending {
        return stop_leftovers(cx, Decision::because("STANDBY: initial configuration sync from the active peer pending"));
    }
    if !cx.lan.connected() {
        return stop_leftovers(cx, Decision::because(format!("STANDBY: LAN check failing, no failover; {}", peer_modes(cx))));
    }
    let peers = cx.peer_ids();
    if let Some(d) = granted(cx, &peers) {
        return d;
    }
    let n = cx.n.failures;
    let failing = cx.peers.iter().any(|(p, _)| state.peer_failures.get(&p.id).copied().unwrap_or(0) > 0);
    let all_failed = cx.peers.iter().all(|(p, _)| failed_for(state, p) >= n);
    // With an arbiter, a group of more than two: the active node lost, the others standing by.
    let group_failed = cx.tick.arbiter.is_some()
        && cx.peers.iter().any(|(p, _)| failed_for(state, p) >= n)
        && cx.peers.iter().all(|(p, s)| failed_for(state, p) >= n || *s == PeerStatus::Idle);
    if all_failed || group_failed {
        if let Some(why) = held_back(cx, state) {
            return stop_leftovers(cx, Decision::because(format!("{}: {why}: no failover, STANDBY", failure_counts(cx, state))));
        }
        let d = go_active(
            cx,
            format!("{}: maximum heartbeat fails, switch this node ({}) to ACTIVE, peers to STANDBY", failure_counts(cx, state), cx.me()),
            &peers,
        );
        return with_sync_note(cx, d);
    }
    if let Some(d) = handover_progress(cx, state) {
        return d;
    }
    if let Some(d) = rollback(cx, state) {
        return d;
    }
    if let Some(d) = nobody_active(cx, state, &peers) {
        return d;
    }
    let mut status = if failing { failure_counts(cx, state) } else { format!("STANDBY; {}", peer_modes(cx)) };
    if cx.tick.arbiter.is_some() {
        status = format!("{status}; {}", arbiter::describe(cx.tick));
    }
    stop_leftovers(cx, rollback_progress(cx, state, Decision::because(status)))
}

/// With an arbiter: a standby node holding the role key asked for the role on an earlier tick (it
/// resigns the key whenever it stops asking), and the host's fencing held it back until the key was
/// its own: ask again, unless a peer serves.
fn granted(cx: &Cx, peers: &[&str]) -> Option<Decision> {
    let a = cx.tick.arbiter.as_ref().filter(|a| a.held)?;
    if cx.tick.node.mode != Mode::Standby || cx.peers.iter().any(|(p, _)| reports_active(p)) {
        return None;
    }
    let why = format!("the arbiter granted this node the role key ({} ms of lease left): switch this node ({}) to ACTIVE", a.lease_left_ms, cx.me());
    Some(go_active(cx, why, peers))
}

/// Consecutive failed checks of `peer`, as this plugin counts them.
fn failed_for(state: &State, peer: &Remote) -> u32 {
    state.peer_failures.get(&peer.id).copied().unwrap_or(0)
}

/// With an arbiter: why this node must not ask for the active role by itself — another node holds
/// the role key, or a node before it in the priority order can still serve. `None` without an arbiter.
fn held_back(cx: &Cx, state: &State) -> Option<String> {
    cx.tick.arbiter.as_ref()?;
    if let Some(holder) = arbiter::held_elsewhere(cx.tick) {
        return Some(format!("{}: waiting for node {holder} to release it", arbiter::describe(cx.tick)));
    }
    let n = cx.n.failures;
    let first = cx.priority().first_ahead(cx.tick, |p| failed_for(state, p) >= n)?;
    Some(format!("peer {} comes first in the priority order and can serve", first.id))
}

fn with_sync_note(cx: &Cx, d: Decision) -> Decision {
    if cx.tick.sync.initial == InitialSync::Failed {
        d.and_because("initial sync failed: running on the local configuration")
    } else {
        d
    }
}

/// How many consecutive checks this node has been healthy, as rollback needs it (§6.3.2: "local
/// server answers OK … the consecutive number of times defined"): the LAN probe, every local monitor,
/// and the peer's reachability (the hand-over command must reach it) all good that long.
fn healthy_for(cx: &Cx) -> u32 {
    let lan = match cx.lan {
        Lan::NotProbed => u32::MAX,
        Lan::Up(n) => n,
        Lan::NotYet | Lan::Down(_) => 0,
    };
    let monitors = cx.tick.monitors.iter().map(|m| m.consecutive_successes).min().unwrap_or(u32::MAX);
    let peers = cx.peers.iter().map(|(p, _)| p.consecutive_successes).min().unwrap_or(u32::MAX);
    lan.min(monitors).min(peers)
}

fn vip_self_for(cx: &Cx) -> u32 {
    match &cx.tick.vip {
        Some(v) if cx.vip_reaches_me() => v.consecutive_self,
        _ => 0,
    }
}

/// §6.3.2: server #1, with `first_server_auto_active`, takes the role back once healthy — from a
/// live server #2, break-before-make ([`take_role`]).
fn rollback(cx: &Cx, state: &mut State) -> Option<Decision> {
    if !cx.is_primary() || !cx.params.first_server_auto_active || state.operator_hold {
        return None;
    }
    if state.rollback_after_ms.is_some_and(|t| cx.tick.now_ms < t) {
        return None;
    }
    let s = cx.n.successes;
    let healthy = healthy_for(cx);
    if healthy < s {
        return None;
    }
    let vip = if cx.params.test_vip_destination {
        let seen = vip_self_for(cx);
        if seen < s {
            return None;
        }
        format!(", VIP reaches this node {}/{s} tests", seen.min(s))
    } else {
        String::new()
    };
    Some(with_sync_note(cx, take_role(cx, state, &format!("first server auto-active: local health good {s}/{s} checks{vip}"))))
}

/// Adds the rollback's progress to a quiet standby decision of server #1.
fn rollback_progress(cx: &Cx, state: &State, d: Decision) -> Decision {
    if !cx.is_primary() || !cx.params.first_server_auto_active {
        return d;
    }
    if state.operator_hold {
        return d.and_because("rollback held by the operator's switchover (restore hands the role back)");
    }
    let s = cx.n.successes;
    let mut text = format!("rollback: local health good {}/{s} checks", healthy_for(cx).min(s));
    if cx.params.test_vip_destination {
        text.push_str(&format!(", VIP reaches this node {}/{s} tests", vip_self_for(cx).min(s)));
    }
    d.and_because(&text)
}

/// Nobody is active (both servers restarted together, or a hand-over did not complete): the seed's
/// "a mechanism forces the primary server to run and the backup to idle"; who claims when is
/// [`vigil_sdk::handover::nobody_active_wait`].
fn nobody_active(cx: &Cx, state: &State, peers: &[&str]) -> Option<Decision> {
    // With an arbiter the first node of the priority order that can serve leads, as the primary
    // does in a pair; the others never claim (they are held back).
    let held = held_back(cx, state);
    let leads = if cx.tick.arbiter.is_some() { held.is_none() } else { cx.is_primary() };
    let fast = leads && !state.yielded;
    let needed = vigil_sdk::handover::nobody_active_wait(leads, state.yielded, cx.n.failures);
    if state.idle < needed {
        return None;
    }
    if let Some(why) = held {
        return Some(stop_leftovers(cx, Decision::because(format!("no node ACTIVE for {needed}/{needed} checks ({}): {why}", peer_modes(cx)))));
    }
    let who = match (fast, cx.tick.arbiter.is_some()) {
        (true, true) => "this node comes first in the priority order",
        (true, false) => "the primary runs",
        (false, _) => "the primary did not take the role",
    };
    Some(go_active(
        cx,
        format!("no node ACTIVE for {needed}/{needed} checks ({}; {who}): switch this node ({}) to ACTIVE", peer_modes(cx), cx.me()),
        peers,
    ))
}

// ---------------------------------------------------------------------------------------------
// Observation and the policy itself.
// ---------------------------------------------------------------------------------------------

/// Update the counters in `state` from this tick's observations.
fn observe(cx: &Cx, state: &mut State) {
    let mut failures = BTreeMap::new();
    for (p, status) in &cx.peers {
        let prev = state.peer_failures.get(&p.id).copied().unwrap_or(0);
        failures.insert(p.id.clone(), next_failures(prev, p, *status, cx.lan));
    }
    state.peer_failures = failures;

    let active = cx.tick.node.mode == Mode::Active;
    let other_active = cx.peers.iter().any(|(p, _)| reports_active(p));
    // While our own switch is being carried out, the peer's "active" is expected, not a conflict.
    state.seen_active = if active && other_active && cx.lan.connected() && !cx.busy() { state.seen_active + 1 } else { 0 };

    let all_idle = !cx.peers.is_empty() && cx.peers.iter().all(|(_, s)| *s == PeerStatus::Idle);
    state.idle = if !active && all_idle && cx.lan.connected() { state.idle + 1 } else { 0 };

    if other_active {
        state.yielded = false;
    }
}

/// Configuration problems only the tick can reveal; each raised once as an alarm.
fn warnings(cx: &Cx, unknown_services: &[String], state: &mut State, mut d: Decision) -> Decision {
    let mut raise = |key: String, text: String, d: Decision| {
        if state.warned.insert(key) {
            d.alarm(Level::Warn, text)
        } else {
            d
        }
    };
    // The dry run of `vigil policy check` has no services: there is nothing to compare with.
    if !cx.tick.services.is_empty() {
        for name in unknown_services {
            d = raise(
                format!("start_order:{name}"),
                format!("params.start_order names {name:?}, which the policy does not declare under [services]; ignored"),
                d,
            );
        }
    }
    let (unknown, missing) = cx.priority().mismatches(cx.tick);
    for name in unknown {
        d = raise(format!("priority:{name}"), format!("params.priority names {name:?}, which is neither this node nor a peer; ignored"), d);
    }
    for name in missing {
        d = raise(
            format!("priority-missing:{name}"),
            format!("params.priority does not list node {name:?}: it comes after the listed nodes"),
            d,
        );
    }
    if cx.params.test_vip_destination && cx.tick.vip.is_none() && !cx.peers.is_empty() {
        d = raise(
            "vip".into(),
            "params.test_vip_destination is set but the node does not test the VIP ([vip] in the node configuration): rollback waits forever and a primary loses two-actives conflicts".into(),
            d,
        );
    }
    d
}

struct HotStandby;

impl Policy for HotStandby {
    type Params = Params;
    type State = State;

    fn validate(p: &Params) -> Result<(), String> {
        for (name, value) in [("failures", p.failures), ("successes", p.successes), ("lan_failures", p.lan_failures)] {
            if let Some(v) = value {
                if !(1..=MAX_COUNT).contains(&v) {
                    return Err(format!("{name}: expected a count from 1 to {MAX_COUNT}, got {v}"));
                }
            }
        }
        if let Some(ms) = p.handover_timeout_ms {
            if !HANDOVER_TIMEOUT_MS.contains(&ms) {
                return Err(format!(
                    "handover_timeout_ms: expected {} to {} milliseconds, got {ms}",
                    HANDOVER_TIMEOUT_MS.start(),
                    HANDOVER_TIMEOUT_MS.end()
                ));
            }
        }
        check_names("start_order", &p.start_order)?;
        Priority::validate("priority", &p.priority)
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        let n = Counts::of(params, tick);
        let lan = Lan::of(tick);
        let (order, unknown) = tick.services_in_order(&params.start_order);
        let peers = tick.peers.iter().map(|p| (p, classify(p, params.switch_on_app_error))).collect();
        let cx = Cx { tick, params, n, lan, peers, order };
        observe(&cx, state);
        if tick.node.restart.is_some() {
            // A hand-over the previous daemon started, and its back-off, belong to a world that may
            // have moved on while it was down: the rules look again from here.
            state.handover = None;
            state.rollback_after_ms = None;
        }

        let before = tick.node.mode;
        if before != Mode::Active {
            // A step-down ends in standby; one found in another mode is a leftover.
            state.stepping_down = None;
        }
        let d = if matches!(before, Mode::Off | Mode::Failed) {
            out_of_group(&cx, state)
        } else if let Some(d) = tick.operator.and_then(|r| operator(&cx, r, state)) {
            d
        } else if let Some(step) = state.stepping_down.clone() {
            // Peer commands wait too: the step-down already does what either would ask.
            finish_step_down(&cx, state, step)
        } else if let Some(d) = peer_command(&cx, state) {
            d
        } else if before == Mode::Active {
            active_rules(&cx, state)
        } else {
            standby_rules(&cx, state)
        };

        // Counters describe the mode they were counted in; a switch starts them afresh.
        match d.mode {
            Some(Mode::Active) if before != Mode::Active => {
                state.idle = 0;
                state.yielded = false;
                state.operator_hold = false;
                state.handover = None;
                state.rollback_after_ms = None;
            }
            Some(m) if m != Mode::Active && before == Mode::Active => state.seen_active = 0,
            _ => {}
        }
        warnings(&cx, &unknown, state, d)
    }
}

vigil_sdk::export_policy!(HotStandby);
