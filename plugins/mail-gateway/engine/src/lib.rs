//! active-passive: the HA rules of a FortiMail-like mail gateway (deployments.md §6, seeds `001_…`,
//! `002_…`), shared with the FortiVoice-like voice pair (§7, seed `000_…`) which is "active-passive
//! like the mail gateway, plus" a planned-reboot hold-off and a calls-interrupted alarm.
//!
//! Words of the seed and of vigil: configured mode master/slave = configured role primary/secondary;
//! effective mode master = `active`, slave = `standby`, plus `off`, `failed` and (voice) `hold-off`.
//!
//! Every tick the engine first observes (its own counters in the state), then applies the first rule
//! that fires, in this order:
//!
//! 1. config-only group: every node serves, nothing ever switches;
//! 2. `off` / `failed`: automatic exits only where the seed has them (a failed first sync, recovery of
//!    local monitoring); otherwise only an operator `restart-ha` or `restore`;
//! 3. an operator request (explicit human intent beats every automatic rule);
//! 4. a peer command (`go-standby`, `go-active`, `planned-reboot`);
//! 5. `hold-off`: wait for the rebooting peer, until the deadline;
//! 6. active: local monitoring failure → on-failure option; two actives → configured roles decide;
//! 7. standby: failed first sync → `off`; heartbeat lost on every path → failover; failback;
//!    nobody active.
//!
//! With an arbiter (`tick.arbiter`) and a flavour that learns it ([`Config::arbiter`]; the mail
//! gateway does, the voice pair not yet) no rule asks for the active role while another node holds the
//! role key, an active node that sees another holder steps down, and in a group of more than two
//! nodes only the first node of the priority order that can still serve fails over
//! (`vigil_sdk::arbiter`). Without an arbiter nothing of this applies.
//!
//! The host does the mechanics (heartbeat paths, remote service probes, local monitors, `ip addr`,
//! the sync); this crate only decides. `docs/plugins/mail-gateway.md` maps each rule to the seed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use vigil_sdk::arbiter;
use vigil_sdk::handover::{self, Handover, StepDown};
use vigil_sdk::prelude::*;
use vigil_sdk::Service;

/// What a node does when its local monitoring fails while active (FortiMail "On failure").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// "switch off": go `off` until an operator restarts HA.
    #[default]
    SwitchOff,
    /// "wait for recovery then restore original role": `failed`; once healthy, back to the configured
    /// role (a primary takes the role back, the peer hands it over).
    RestoreOriginalRole,
    /// "wait for recovery then restore slave role": `failed`; once healthy, `standby`, pushing the mail
    /// queue to the new active node; the peer stays active.
    RestoreSlaveRole,
}

impl OnFailure {
    fn word(self) -> &'static str {
        match self {
            OnFailure::SwitchOff => "switch-off",
            OnFailure::RestoreOriginalRole => "restore-original-role",
            OnFailure::RestoreSlaveRole => "restore-slave-role",
        }
    }
}

/// Upper bound for counts and times: beyond these a typo is more likely than intent.
pub const MAX_COUNT: u32 = 1000;
/// One day.
pub const MAX_MS: u64 = 86_400_000;

/// The rules' settings, built by each plugin from its own `[params]`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The plugin's name, for reasons.
    pub plugin: &'static str,
    /// A config-only group: configuration sync only, no failover, every node serves.
    pub config_only: bool,
    /// How long the heartbeat must be lost on every path before failover; default: the node's
    /// `[heartbeat] failures` checks.
    pub heartbeat_lost_threshold_ms: Option<u64>,
    /// Remote service probes of the peer (`[[peer]] services` in the node configuration) count as
    /// heartbeat: failover also needs every one of them lost for the threshold.
    pub remote_services_as_heartbeat: bool,
    /// Consecutive failed local monitor checks before the on-failure option; default `failures`.
    pub local_failures: Option<u32>,
    /// Consecutive good local checks before a `failed` node recovers, and before a failback; default
    /// the node's `[heartbeat] successes`.
    pub recovery_successes: Option<u32>,
    pub on_failure: OnFailure,
    /// The hook that pushes this node's mail queue to the active peer (`restore-slave-role`), run with
    /// the peer's id.
    pub push_queue_hook: Option<String>,
    /// A configured primary that finds the secondary active (after its restart, a failover, or a
    /// healed heartbeat outage) takes the role back by itself once healthy.
    pub failback: bool,
    /// Planned reboots (voice): how long the secondary holds off when the primary announces one.
    pub planned_reboot_hold_ms: Option<u64>,
    /// An alarm raised by every automatic takeover (voice: calls are interrupted).
    pub takeover_alarm: Option<String>,
    /// Service names in start order (stopped in reverse); the others follow in the policy's order.
    pub start_order: Vec<String>,
    /// The policy declares `[[vip]]` entries: claim them on takeover, release them when leaving
    /// active. The host refuses VIP actions of a policy without any, and the plugin cannot see the
    /// policy file, so the parameter says it.
    pub vip: bool,
    /// The flavour follows the group's arbiter when the tick has one (the mail gateway).
    pub arbiter: bool,
    /// With the arbiter: the group's node ids, highest priority first (empty: the configured role
    /// primary first, then the secondaries by id).
    pub priority: Vec<String>,
}

impl Config {
    /// Checks shared by both plugins; the message names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(ms) = self.heartbeat_lost_threshold_ms {
            if !(1..=MAX_MS).contains(&ms) {
                return Err(format!("heartbeat_lost_threshold_ms: expected 1 to {MAX_MS} milliseconds, got {ms}"));
            }
        }
        for (name, value) in [("local_failures", self.local_failures), ("recovery_successes", self.recovery_successes)] {
            if let Some(v) = value {
                if !(1..=MAX_COUNT).contains(&v) {
                    return Err(format!("{name}: expected a count from 1 to {MAX_COUNT}, got {v}"));
                }
            }
        }
        if let Some(ms) = self.planned_reboot_hold_ms {
            if !(1_000..=MAX_MS).contains(&ms) {
                return Err(format!("planned_reboot_hold_ms: expected 1000 to {MAX_MS} milliseconds, got {ms}"));
            }
        }
        if self.push_queue_hook.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return Err("push_queue_hook: expected a hook name declared under [hooks]".into());
        }
        check_names("start_order", &self.start_order)?;
        Priority::validate("priority", &self.priority)
    }
}

/// Why a node is `off`: only some causes have an automatic way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OffCause {
    /// A secondary's first configuration sync failed (seed: "to prevent both … acting as primary").
    SyncFailed,
    /// Local monitoring failed with on-failure `switch-off`.
    LocalFailure,
    /// The primary found the secondary active after a heartbeat outage, with `switch-off`.
    TwoActives,
}

/// What the engine remembers between ticks. Every field defaults, so an older state still loads.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Consecutive checks in which a peer reported active while this node was active.
    pub seen_active: u32,
    /// Consecutive checks in which no node was active.
    pub idle: u32,
    /// This node gave the role away; no fast "nobody active" reclaim until a peer is seen active.
    pub yielded: bool,
    /// The operator switched this node to standby: failback waits for `restore`/`active`.
    pub operator_hold: bool,
    /// Why the node is `off`, when it is.
    pub off_cause: Option<OffCause>,
    /// Hold-off (voice): when it ends (tick time, ms since the epoch).
    pub hold_until_ms: Option<u64>,
    /// Hold-off: the rebooting peer has been seen unreachable since the hold began.
    pub hold_saw_peer_down: bool,
    /// The mail queue is to be pushed to the active peer (restore-slave-role).
    pub push_queue_due: bool,
    /// Configuration warnings already raised (each is raised once).
    pub warned: BTreeSet<String>,
    /// This node takes the role from a live peer and waits for it to report STANDBY.
    pub handover: Option<Handover>,
    /// This node gives the role up: its stops are issued, it reports its new mode once they finished.
    pub stepping_down: Option<StepDown>,
    /// After an abandoned hand-over, failback waits until this tick time before asking again.
    pub failback_after_ms: Option<u64>,
}

/// The counts this tick runs with.
#[derive(Debug, Clone, Copy)]
struct Counts {
    /// Checks the heartbeat must be lost on every path.
    lost: u32,
    local_failures: u32,
    successes: u32,
}

/// `ceil(threshold / interval)`, at least one: the seed's threshold is a time, the host counts checks.
fn checks_for(threshold_ms: u64, interval_ms: u32) -> u32 {
    let interval = u64::from(interval_ms.max(1));
    u32::try_from(threshold_ms.div_ceil(interval)).unwrap_or(u32::MAX).max(1)
}

impl Counts {
    fn of(cfg: &Config, tick: &Tick) -> Counts {
        let failures = tick.heartbeat.failures.max(1);
        let lost = cfg.heartbeat_lost_threshold_ms.map_or(failures, |ms| checks_for(ms, tick.heartbeat.interval_ms));
        Counts {
            lost,
            local_failures: cfg.local_failures.unwrap_or(failures).max(1),
            successes: cfg.recovery_successes.unwrap_or(tick.heartbeat.successes).max(1),
        }
    }
}

/// One peer as the rules see it in this check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// No heartbeat on any path (and, when they count, no remote service answers) this check.
    Lost,
    /// It answered and says it does not serve (`off`, `failed`).
    Out(Mode),
    Active,
    /// Standby or hold-off: it does not serve but could.
    Idle,
    /// It answered without a mode.
    Unknown,
}

fn classify(p: &Remote, services_count: bool) -> Peer {
    let services_answer = services_count && p.services.iter().any(|s| s.ok);
    if !p.reachable && !services_answer {
        return Peer::Lost;
    }
    match p.report.as_ref().map(|r| r.mode) {
        // Reached only through its services: alive, mode unknown.
        _ if !p.reachable => Peer::Unknown,
        Some(m @ (Mode::Off | Mode::Failed)) => Peer::Out(m),
        Some(Mode::Active) => Peer::Active,
        Some(Mode::Standby | Mode::HoldOff) => Peer::Idle,
        // Its daemon just started and has not decided (it may resume ACTIVE): not known.
        Some(Mode::Starting) | None => Peer::Unknown,
    }
}

/// Everything a rule needs, computed once per tick.
struct Cx<'a> {
    cfg: &'a Config,
    tick: &'a Tick,
    n: Counts,
    peers: Vec<(&'a Remote, Peer)>,
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

    fn busy(&self) -> bool {
        self.tick.pending_actions > 0
    }

    /// The arbiter, when the tick has one and this flavour follows it.
    fn arbiter(&self) -> Option<&'a vigil_sdk::ArbiterView> {
        self.tick.arbiter.as_ref().filter(|_| self.cfg.arbiter)
    }

    /// Another node holds the role key (and this flavour follows the arbiter).
    fn held_elsewhere(&self) -> Option<&'a str> {
        self.arbiter().and_then(|_| arbiter::held_elsewhere(self.tick))
    }

    /// With the arbiter: why this node must not ask for the active role by itself — another node
    /// holds the role key, or a node before it in the priority order can still serve.
    fn held_back(&self) -> Option<String> {
        self.arbiter()?;
        if let Some(holder) = self.held_elsewhere() {
            return Some(format!("{}: waiting for node {holder} to release it", arbiter::describe(self.tick)));
        }
        let first = Priority::new(&self.cfg.priority).first_ahead(self.tick, |p| self.lost_for_threshold(p))?;
        Some(format!("peer {} comes first in the priority order and can serve", first.id))
    }

    fn active_peer(&self) -> Option<&'a Remote> {
        self.peers.iter().find(|(_, s)| *s == Peer::Active).map(|(p, _)| *p)
    }

    /// Whether `p` has been lost for the full failover threshold: every heartbeat path and, when they
    /// count, every remote service.
    fn lost_for_threshold(&self, p: &Remote) -> bool {
        let n = self.n.lost;
        p.consecutive_failures >= n
            && (!self.cfg.remote_services_as_heartbeat || p.services.iter().all(|s| !s.ok && s.consecutive_failures >= n))
    }

    /// Whether this node may take the role without waiting for `p`: it answers STANDBY now (so its
    /// services are stopped, see `vigil_sdk::handover`), it answers OFF or FAILED (a local failure took
    /// it out: the failover rule takes over from it at once, as before), or it has been lost for the
    /// full threshold.
    fn released(&self, p: &Remote) -> bool {
        let out = p.reachable && p.report.as_ref().is_some_and(|r| matches!(r.mode, Mode::Off | Mode::Failed));
        handover::confirms_standby(p) || out || self.lost_for_threshold(p)
    }

    /// The least run of successes over the local monitors (`u32::MAX` without monitors).
    fn monitors_good_for(&self) -> u32 {
        self.tick.monitors.iter().map(|m| m.consecutive_successes).min().unwrap_or(u32::MAX)
    }

    /// The local monitors that failed at least `n` consecutive checks, with their counts.
    fn monitors_failed(&self, n: u32) -> Vec<String> {
        self.tick
            .monitors
            .iter()
            .filter(|m| m.consecutive_failures >= n)
            .map(|m| format!("{} failed {}/{n} checks", m.name, m.consecutive_failures.min(n)))
            .collect()
    }
}

/// The word the seed's status page uses for a mode.
fn word(mode: Mode) -> &'static str {
    match mode {
        Mode::Active => "ACTIVE (master)",
        Mode::Standby => "STANDBY (slave)",
        Mode::Off => "OFF",
        Mode::Failed => "FAILED",
        Mode::HoldOff => "HOLD-OFF",
        Mode::Starting => "STARTING",
    }
}

fn request_word(r: OperatorRequest) -> &'static str {
    match r {
        OperatorRequest::Standby => "standby",
        OperatorRequest::Active => "active",
        OperatorRequest::Restore => "restore",
        OperatorRequest::RestartHa => "restart-ha",
        OperatorRequest::PlannedReboot => "planned-reboot",
    }
}

/// `peer a: heartbeat lost 3/5 checks (hb1 3, hb2 3)`, `peer a ACTIVE`, …
fn describe_peers(cx: &Cx) -> String {
    cx.peers
        .iter()
        .map(|(p, s)| match s {
            Peer::Lost | Peer::Unknown if p.consecutive_failures > 0 || *s == Peer::Lost => {
                format!("peer {}: heartbeat lost {}", p.id, lost_detail(cx, p))
            }
            Peer::Out(m) => format!("peer {} reports {}", p.id, word(*m)),
            Peer::Active => format!("peer {} ACTIVE{}", p.id, paths_note(p)),
            Peer::Idle => format!("peer {} {}{}", p.id, word(p.report.as_ref().map_or(Mode::Standby, |r| r.mode)), paths_note(p)),
            _ => format!("peer {} answers without a mode", p.id),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `3/5 checks (hb1 3, hb2 3; smtp 3)`: the peer's run of lost rounds and each path's and service's.
fn lost_detail(cx: &Cx, p: &Remote) -> String {
    let n = cx.n.lost;
    let counts = |checks: &[Check]| checks.iter().map(|c| format!("{} {}", c.name, c.consecutive_failures)).collect::<Vec<_>>().join(", ");
    let mut inner = counts(&p.paths);
    if cx.cfg.remote_services_as_heartbeat && !p.services.is_empty() {
        inner.push_str("; services ");
        inner.push_str(&counts(&p.services));
    }
    let head = if p.consecutive_failures <= n {
        format!("{}/{n} checks", p.consecutive_failures)
    } else {
        format!("{} checks (threshold {n})", p.consecutive_failures)
    };
    if inner.is_empty() {
        head
    } else {
        format!("{head} ({inner})")
    }
}

/// `, link hb2 down 4 checks`: a heartbeat path that fails while another still reaches the peer.
fn paths_note(p: &Remote) -> String {
    let down: Vec<String> =
        p.paths.iter().filter(|c| !c.ok && c.consecutive_failures > 0).map(|c| format!("{} down {} checks", c.name, c.consecutive_failures)).collect();
    if down.is_empty() || !p.reachable {
        String::new()
    } else {
        format!(" (heartbeat link {}; still reached on another link)", down.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// Switches: what becoming active or leaving active does, in one place.
// ---------------------------------------------------------------------------------------------

/// Become active: the VIPs first (so the services answer on them at once), then the services in order,
/// then tell `peers` to stand by.
fn go_active(cx: &Cx, reason: String, peers: &[&str]) -> Decision {
    let mut d = Decision::to(Mode::Active, reason);
    if cx.cfg.vip {
        d = d.then(Action::ClaimVip);
    }
    for s in &cx.order {
        d = d.start(&s.name);
    }
    for p in peers {
        d = d.command_peer(Some(p), PeerCommand::GoStandby);
    }
    d
}

/// An automatic takeover: as [`go_active`], plus the flavour's alarm (voice: calls were interrupted).
fn take_over(cx: &Cx, reason: String, peers: &[&str]) -> Decision {
    let d = go_active(cx, reason, peers);
    match &cx.cfg.takeover_alarm {
        Some(text) => d.alarm(Level::Warn, text.clone()),
        None => d,
    }
}

/// Leave active (or make sure nothing is held): release the VIPs, stop the services in reverse.
fn leave_active(cx: &Cx, mode: Mode, reason: String) -> Decision {
    let mut d = Decision::to(mode, reason);
    if cx.cfg.vip {
        d = d.then(Action::ReleaseVip);
    }
    for s in cx.order.iter().rev() {
        d = d.stop(&s.name);
    }
    d
}

/// Hand the role to a live peer break-before-make (`vigil_sdk::handover`): release the VIPs and stop
/// the services as [`leave_active`] does, but keep reporting ACTIVE until the stops finished and every
/// service reads stopped ([`finish_step_down`] then reports STANDBY), so a peer waiting for this
/// node's STANDBY never starts its services beside ours. Real failures (local monitoring) still
/// leave at once: [`leave_active`].
fn step_down(cx: &Cx, state: &mut State, reason: String) -> Decision {
    state.handover = None;
    if cx.tick.node.mode != Mode::Active || handover::stopped(cx.tick, &cx.order).is_ok() {
        state.stepping_down = None;
        return leave_active(cx, Mode::Standby, reason);
    }
    state.stepping_down = Some(StepDown { why: reason.clone(), attempts: 0 });
    let mut d = leave_active(cx, Mode::Standby, format!("{reason}: stopping the services first, STANDBY once they are stopped"));
    d.mode = None;
    d
}

/// A node stepping down: its new mode once its stops finished and every service reads stopped; a
/// service that would not stop is stopped again, and after [`handover::STOP_ATTEMPTS`] rounds the node
/// gives up the hand-over and keeps the role with its VIPs and services back (one active node).
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
                let text = format!("could not stop {} after {attempts} attempts: hand-over abandoned, this node ({}) stays ACTIVE", left.join(", "), cx.me());
                let mut d = go_active(cx, text.clone(), &[]).alarm(Level::Error, text);
                d.mode = None;
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

/// Take the role from live peers break-before-make: when every peer is released ([`Cx::released`])
/// switch now; otherwise command them to stand by and wait in STANDBY ([`handover_progress`]). `why`
/// says what asks for the switch.
fn take_role(cx: &Cx, state: &mut State, why: &str) -> Decision {
    state.stepping_down = None;
    let peers = cx.peer_ids();
    let waiting: Vec<&str> = cx.peers.iter().filter(|(p, _)| !cx.released(p)).map(|(p, _)| p.id.as_str()).collect();
    let timeout = handover::DEFAULT_TIMEOUT_MS;
    if waiting.is_empty() {
        if cx.held_elsewhere().is_some() {
            // Every peer has let go, but the role key is still another node's: wait for it as for a
            // peer, within the same deadline.
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
    let mut d = Decision::because(format!(
        "{why}: break-before-make: asking {} to stand by; this node ({}) stays STANDBY until {} reports STANDBY with its services stopped (at most {} s)",
        waiting.iter().map(|n| format!("peer {n}")).collect::<Vec<_>>().join(", "),
        cx.me(),
        if waiting.len() == 1 { "it" } else { "each" },
        timeout / 1000
    ));
    for p in waiting {
        d = d.command_peer(Some(p), PeerCommand::GoStandby);
    }
    // The wait happens in standby, where the hand-over's progress is followed (from off or failed
    // too: an operator restore there means "take the role").
    if cx.tick.node.mode != Mode::Standby {
        d.mode = Some(Mode::Standby);
    }
    d
}

/// A hand-over under way: switch once every peer is released, give up at the deadline.
fn handover_progress(cx: &Cx, state: &mut State) -> Option<Decision> {
    let h = state.handover.clone()?;
    let now = cx.tick.now_ms;
    let waiting: Vec<&Remote> = cx.peers.iter().filter(|(p, _)| !cx.released(p)).map(|(p, _)| *p).collect();
    if waiting.is_empty() && cx.held_elsewhere().is_some() {
        if !h.expired(now) {
            let text = format!("{}: peers released, {}: waiting for it ({} s left)", h.why, arbiter::describe(cx.tick), h.seconds_left(now));
            return Some(stop_leftovers(cx, Decision::because(text)));
        }
        state.handover = None;
        state.failback_after_ms = Some(now.saturating_add(handover::DEFAULT_TIMEOUT_MS));
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
                } else if p.reachable {
                    format!("peer {} reports {}", p.id, word(p.report.as_ref().map_or(Mode::Off, |r| r.mode)))
                } else {
                    format!("peer {}: heartbeat lost {}", p.id, lost_detail(cx, p))
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Some(go_active(cx, format!("{}: {how}: switch this node ({}) to ACTIVE", h.why, cx.me()), &[]));
    }
    match handover::wait_for(&h, cx.tick, &waiting, handover::DEFAULT_TIMEOUT_MS, cx.me(), &describe_peers(cx)) {
        Ok(d) => Some(stop_leftovers(cx, d)),
        Err(text) => {
            state.handover = None;
            state.failback_after_ms = Some(now.saturating_add(handover::DEFAULT_TIMEOUT_MS));
            Some(stop_leftovers(cx, Decision::because(text.clone()).alarm(Level::Warn, text)))
        }
    }
}

/// Not active, not switching: stop services left running (e.g. by a killed daemon). Not while our own
/// actions are in flight, whose effect the status does not show yet.
fn stop_leftovers(cx: &Cx, d: Decision) -> Decision {
    if cx.busy() {
        return d;
    }
    let running: Vec<&str> = cx.order.iter().rev().filter(|s| s.state == ServiceState::Running).map(|s| s.name.as_str()).collect();
    if running.is_empty() {
        return d;
    }
    let mut d = d.and_because(&format!("stopping {} left running while not active", running.join(", ")));
    for name in running {
        d = d.stop(name);
    }
    d
}

/// Push the mail queue to the active peer (restore-slave-role), once; a failed push is retried.
fn push_queue(cx: &Cx, state: &mut State, d: Decision) -> Decision {
    let Some(hook) = cx.cfg.push_queue_hook.as_deref() else {
        state.push_queue_due = false;
        return d;
    };
    let failed = cx.tick.results.iter().any(|r| !r.ok && matches!(&r.action, Action::Hook(h) if h.name == hook));
    if failed {
        state.push_queue_due = true;
    }
    if !state.push_queue_due || cx.busy() {
        return d;
    }
    let Some(active) = cx.active_peer() else { return d };
    state.push_queue_due = false;
    let retry = if failed { " (the previous push failed, retrying)" } else { "" };
    d.hook(hook, &[&active.id]).and_because(&format!("pushing the mail queue to the active peer {}{retry}", active.id))
}

// ---------------------------------------------------------------------------------------------
// Rules.
// ---------------------------------------------------------------------------------------------

/// Config-only group (seed: "config master"/"config slave"): every node serves and only the
/// configuration is synchronized (by the host). Nothing fails over, nothing is monitored.
fn config_only(cx: &Cx) -> Decision {
    let role = if cx.is_primary() { "config primary" } else { "config secondary" };
    let d = if cx.tick.node.mode != Mode::Active {
        Decision::to(Mode::Active, format!("config-only group ({role}): every node serves; only the configuration is synchronized"))
    } else {
        Decision::because(format!("config-only group ({role}): serving; configuration sync only, no failover"))
    };
    // An operator request changes nothing here, not even on the first tick.
    match cx.tick.operator {
        Some(r) => d.and_because(&format!("operator {} has no mode to switch; only `vigil sync` applies", request_word(r))),
        None => d,
    }
}

/// `off` / `failed`.
fn out_of_group(cx: &Cx, state: &mut State) -> Decision {
    let mode = cx.tick.node.mode;
    match cx.tick.operator {
        Some(OperatorRequest::RestartHa) => {
            state.off_cause = None;
            let d = Decision::to(Mode::Standby, format!("operator restart-ha: this node ({}) leaves {} and rejoins the group in STANDBY", cx.me(), word(mode)));
            return stop_leftovers(cx, d);
        }
        Some(OperatorRequest::Restore) => {
            state.off_cause = None;
            return restore(cx, state);
        }
        Some(other) => {
            return Decision::because(format!("operator {} ignored: this node is {}; use restart-ha or restore first", request_word(other), word(mode)));
        }
        None => {}
    }
    if mode == Mode::Failed {
        return recovery(cx, state);
    }
    if state.off_cause == Some(OffCause::SyncFailed) {
        if let Some(d) = sync_failed_again(cx, state) {
            return d;
        }
    }
    let why = match state.off_cause {
        Some(OffCause::SyncFailed) => "first configuration sync failed; waiting for the next attempt",
        Some(OffCause::LocalFailure) => "local monitoring failed (on failure: switch-off)",
        Some(OffCause::TwoActives) => "the secondary took over during a heartbeat outage (on failure: switch-off)",
        None => "out of the group",
    };
    stop_leftovers(cx, Decision::because(format!("OFF: {why}; waiting for operator restart-ha or restore")))
}

/// A secondary `off` after its first sync failed: the next sync result decides (seed table 31:
/// "If subsequent synchronization fails, the secondary unit's effective HA mode becomes master").
fn sync_failed_again(cx: &Cx, state: &mut State) -> Option<Decision> {
    let sync = &cx.tick.sync;
    match sync.initial {
        InitialSync::Done | InitialSync::NotNeeded => {
            state.off_cause = None;
            Some(Decision::to(Mode::Standby, format!("configuration sync succeeded after {} failure(s): this node ({}) rejoins in STANDBY", sync.consecutive_failures.max(1), cx.me())))
        }
        InitialSync::Failed if sync.consecutive_failures >= 2 => {
            // The off mode exists to prevent two actives. A peer may still serve unless it answers in
            // another mode now or has been lost for the full failover threshold: one lost round (the
            // link trouble that likely failed the sync) is not enough, nor is an answer without a mode.
            if let Some((peer, _)) = cx.peers.iter().find(|(p, _)| !sync_failure_may_take_over_from(cx, p)) {
                let seen = match (peer.reachable, peer.report.as_ref().map(|r| r.mode)) {
                    (true, Some(Mode::Active)) => "answers ACTIVE".to_string(),
                    (true, _) => "answers without a mode".to_string(),
                    (false, Some(Mode::Active)) => format!("answered ACTIVE and is lost only {}", lost_detail(cx, peer)),
                    (false, _) => format!("is lost only {}", lost_detail(cx, peer)),
                };
                let text = format!(
                    "configuration sync failed {} times, but peer {} {seen}: staying OFF (two actives is what OFF prevents); check the sync",
                    sync.consecutive_failures, peer.id
                );
                let d = if cx.tick.node.mode == Mode::Off { Decision::because(text) } else { Decision::to(Mode::Off, text) };
                return Some(stop_leftovers(cx, d));
            }
            state.off_cause = None;
            Some(take_over(cx, format!("configuration sync failed {} times and no peer is active ({}): switch this node ({}) to ACTIVE", sync.consecutive_failures, describe_peers(cx), cx.me()), &[]))
        }
        _ => None,
    }
}

/// Whether a secondary whose sync failed again may take the role in spite of `p`: `p` answers now in
/// a mode that serves nobody (standby, off, failed, hold-off), or has been lost for the full
/// failover threshold.
fn sync_failure_may_take_over_from(cx: &Cx, p: &Remote) -> bool {
    let answers_idle = p.reachable && p.report.as_ref().is_some_and(|r| !matches!(r.mode, Mode::Active | Mode::Starting));
    answers_idle || cx.lost_for_threshold(p)
}

/// `failed`: wait until the local monitors are good again, then apply the on-failure option.
fn recovery(cx: &Cx, state: &mut State) -> Decision {
    let s = cx.n.successes;
    let good = cx.monitors_good_for();
    if good < s {
        let detail = if cx.tick.monitors.is_empty() { String::new() } else { format!(": local monitors good {}/{s} checks", good.min(s)) };
        return stop_leftovers(cx, Decision::because(format!("FAILED, waiting for recovery ({}){detail}", cx.cfg.on_failure.word())));
    }
    match cx.cfg.on_failure {
        OnFailure::RestoreOriginalRole if cx.is_primary() => {
            take_role(cx, state, &format!("recovered: local monitors good {s}/{s} checks: restore original role"))
        }
        OnFailure::RestoreOriginalRole => Decision::to(Mode::Standby, format!("recovered: local monitors good {s}/{s} checks: restore original role (secondary): STANDBY")),
        OnFailure::RestoreSlaveRole | OnFailure::SwitchOff => {
            state.push_queue_due = true;
            let d = Decision::to(Mode::Standby, format!("recovered: local monitors good {s}/{s} checks: restore slave role, this node ({}) is STANDBY, the peer stays ACTIVE", cx.me()));
            push_queue(cx, state, d)
        }
    }
}

/// The operator's requests (delivered once). `None` lets a step-down under way go on.
fn operator(cx: &Cx, request: OperatorRequest, state: &mut State) -> Option<Decision> {
    if state.stepping_down.is_some() && matches!(request, OperatorRequest::RestartHa | OperatorRequest::PlannedReboot) {
        return None;
    }
    Some(match request {
        OperatorRequest::Active => take_by_operator(cx, state, "operator switch active"),
        OperatorRequest::Standby => release_by_operator(cx, state, "operator switch to slave mode (standby)"),
        OperatorRequest::Restore => restore(cx, state),
        OperatorRequest::RestartHa => Decision::because(format!("operator restart-ha: nothing to restart, this node is {}", word(cx.tick.node.mode))),
        OperatorRequest::PlannedReboot => planned_reboot(cx),
    })
}

/// "click HERE to restore configured operating mode": primary active, secondary standby.
fn restore(cx: &Cx, state: &mut State) -> Decision {
    if cx.is_primary() {
        take_by_operator(cx, state, "operator restore configured mode (primary)")
    } else {
        release_by_operator(cx, state, "operator restore configured mode (secondary)")
    }
}

fn take_by_operator(cx: &Cx, state: &mut State, why: &str) -> Decision {
    state.operator_hold = false;
    if cx.tick.sync.initial == InitialSync::Pending {
        let text = format!("{why} refused: the initial configuration sync from the active peer is still pending");
        return Decision::because(text.clone()).alarm(Level::Warn, text);
    }
    let peers = cx.peer_ids();
    if cx.tick.node.mode != Mode::Active {
        return take_role(cx, state, why);
    }
    // Already active (or stepping down, which this cancels).
    state.stepping_down = None;
    let mut d = go_active(cx, format!("{why}: switch this node ({}) to ACTIVE, peers to STANDBY", cx.me()), &peers);
    d.mode = None;
    d.reason = format!("{why}: this node ({}) is already ACTIVE; VIPs and services ensured, peers told to stand by", cx.me());
    d
}

fn release_by_operator(cx: &Cx, state: &mut State, why: &str) -> Decision {
    state.operator_hold = true;
    state.yielded = true;
    state.handover = None;
    let peers = cx.peer_ids();
    let mut d = if cx.tick.node.mode == Mode::Standby {
        Decision::because(format!("{why}: this node ({}) is already STANDBY; asking peers to take the role", cx.me()))
    } else {
        step_down(cx, state, format!("{why}: switch this node ({}) to STANDBY, peers to ACTIVE", cx.me()))
    };
    for p in peers {
        d = d.command_peer(Some(p), PeerCommand::GoActive);
    }
    d
}

/// Operator `planned-reboot` (voice): an active node tells its peers to hold off instead of taking
/// over; it keeps serving until the reboot itself takes it down.
fn planned_reboot(cx: &Cx) -> Decision {
    let Some(hold) = cx.cfg.planned_reboot_hold_ms else {
        return Decision::because(format!("operator planned-reboot: not used by {}; the reboot costs one ordinary failover", cx.cfg.plugin));
    };
    if cx.tick.node.mode != Mode::Active {
        return Decision::because("operator planned-reboot: this node is not ACTIVE, its reboot causes no failover; peers not told");
    }
    let mut d = Decision::because(format!(
        "operator planned-reboot: peers told to hold off {} s instead of taking over; this node keeps serving until it goes down",
        hold / 1000
    ));
    for p in cx.peer_ids() {
        d = d.command_peer(Some(p), PeerCommand::PlannedReboot);
    }
    d
}

/// Commands from peers: the last one of the tick counts.
fn peer_command(cx: &Cx, state: &mut State) -> Option<Decision> {
    let cmd = cx.tick.commands.last()?;
    let from = &cmd.from;
    let mode = cx.tick.node.mode;
    match cmd.command {
        PeerCommand::GoStandby if mode == Mode::Active || mode == Mode::HoldOff => {
            state.yielded = true;
            state.hold_until_ms = None;
            Some(step_down(cx, state, format!("peer {from} holds the role and commands go-standby: switch this node ({}) to STANDBY", cx.me())))
        }
        PeerCommand::GoActive if mode != Mode::Active => Some(if cx.tick.sync.initial == InitialSync::Pending {
            Decision::because(format!("peer {from} commands go-active: refused, initial configuration sync still pending"))
        } else {
            take_role(cx, state, &format!("peer {from} hands over and commands go-active"))
        }),
        PeerCommand::PlannedReboot if mode == Mode::Standby => {
            let Some(hold) = cx.cfg.planned_reboot_hold_ms else {
                return Some(Decision::because(format!("peer {from} announces a planned reboot: {} does not hold off; ordinary failover rules apply", cx.cfg.plugin)));
            };
            state.hold_until_ms = Some(cx.tick.now_ms.saturating_add(hold));
            state.hold_saw_peer_down = false;
            Some(Decision::to(
                Mode::HoldOff,
                format!("peer {from} announces a planned reboot: HOLD-OFF for {} s instead of taking over", hold / 1000),
            ))
        }
        _ => None,
    }
}

/// `hold-off` (voice): the primary announced a planned reboot.
fn hold_off(cx: &Cx, state: &mut State) -> Decision {
    let Some(until) = state.hold_until_ms else {
        // A hold-off without a deadline (state lost, e.g. a plugin downgrade): decide as standby.
        return Decision::to(Mode::Standby, "HOLD-OFF without a deadline in the state: back to STANDBY");
    };
    if cx.peers.iter().any(|(_, s)| *s == Peer::Lost) {
        state.hold_saw_peer_down = true;
    }
    let now = cx.tick.now_ms;
    let back = cx.active_peer().filter(|_| state.hold_saw_peer_down);
    if let Some(peer) = back {
        state.hold_until_ms = None;
        return Decision::to(Mode::Standby, format!("peer {} is back from its planned reboot and ACTIVE: resume STANDBY", peer.id));
    }
    if now >= until {
        state.hold_until_ms = None;
        if let Some(peer) = cx.active_peer() {
            return Decision::to(Mode::Standby, format!("hold-off ended: peer {} is still ACTIVE (the reboot did not happen): resume STANDBY", peer.id));
        }
        let peers = cx.peer_ids();
        return take_over(cx, format!("hold-off ended and the peer did not return ({}): switch this node ({}) to ACTIVE", describe_peers(cx), cx.me()), &peers);
    }
    let left = (until - now).div_ceil(1000);
    Decision::because(format!("HOLD-OFF for the peer's planned reboot, {left} s left; {}", describe_peers(cx)))
}

/// Rules of an active node.
fn active_rules(cx: &Cx, state: &mut State) -> Decision {
    let failed = cx.monitors_failed(cx.n.local_failures);
    if !failed.is_empty() {
        return local_failure(cx, state, &failed);
    }
    if let Some(holder) = cx.arbiter().filter(|a| a.reachable).and_then(|_| cx.held_elsewhere()) {
        // The arbiter granted the role to another node: never fight it.
        state.yielded = true;
        let why = format!("{}: node {holder} has the role: this node ({}) releases the VIPs and goes STANDBY", arbiter::describe(cx.tick), cx.me());
        return step_down(cx, state, why);
    }
    if let Some(d) = two_actives(cx, state) {
        return d;
    }
    let mut d = Decision::because(format!("ACTIVE; {}", describe_peers(cx)));
    let n = cx.n.local_failures;
    let weak: Vec<String> =
        cx.tick.monitors.iter().filter(|m| m.consecutive_failures > 0).map(|m| format!("{} failed {}/{n} checks", m.name, m.consecutive_failures)).collect();
    if !weak.is_empty() {
        d = d.and_because(&format!("local monitoring: {}", weak.join(", ")));
    }
    d
}

/// Local monitoring failed on the active node (FortiMail "service-based failover"): give the role
/// away at once (release the VIPs, stop mail services, tell the peer to take over) and go `off` or
/// `failed` per the on-failure option.
fn local_failure(cx: &Cx, state: &mut State, failed: &[String]) -> Decision {
    let (mode, next) = match cx.cfg.on_failure {
        OnFailure::SwitchOff => {
            state.off_cause = Some(OffCause::LocalFailure);
            (Mode::Off, "OFF until an operator restarts HA")
        }
        OnFailure::RestoreOriginalRole => (Mode::Failed, "FAILED, waiting for recovery, then the original role"),
        OnFailure::RestoreSlaveRole => (Mode::Failed, "FAILED, waiting for recovery, then the slave role"),
    };
    state.yielded = true;
    let mut d = leave_active(cx, mode, format!("local monitoring: {}: on failure {}: this node ({}) goes {next}; peers to ACTIVE", failed.join(", "), cx.cfg.on_failure.word(), cx.me()));
    for p in cx.peer_ids() {
        d = d.command_peer(Some(p), PeerCommand::GoActive);
    }
    d
}

/// Two actives (a heartbeat outage healed: each side saw the other lost). The configured roles and
/// the on-failure option decide, so the end state is always one active node:
/// - the primary treats the outage as its own failure and recovers per `on_failure` (with failback or
///   `restore-original-role` it keeps the role and commands the secondary to stand by);
/// - the secondary waits for the primary's decision; if the conflict outlives 3× the count (the
///   primary runs something else), it gives way.
fn two_actives(cx: &Cx, state: &mut State) -> Option<Decision> {
    let other = cx.active_peer()?;
    let seen = state.seen_active;
    let n = cx.n.lost;
    let count = format!("peer {} seen ACTIVE {}/{n} checks while this node is ACTIVE", other.id, seen.min(n));
    if cx.arbiter().is_some_and(|a| a.reachable && a.held) {
        // The arbiter settles it: the holder keeps the role, the other sees the holder and gives way.
        #[allow(clippy::manual_is_multiple_of)]
        let d = if seen >= n && seen % n == 0 {
            Decision::because(format!("two actives: {count}: this node holds the role key and keeps the role")).command_peer(Some(&other.id), PeerCommand::GoStandby)
        } else {
            Decision::because(format!("possible two actives: {count}: this node holds the role key"))
        };
        return Some(d);
    }
    if cx.is_primary() {
        if seen < n {
            return Some(Decision::because(format!("possible two actives: {count}")));
        }
        let keeps = cx.cfg.failback || cx.cfg.on_failure == OnFailure::RestoreOriginalRole;
        if keeps {
            #[allow(clippy::manual_is_multiple_of)]
            let d = if seen % n == 0 {
                // Claiming again (idempotent) re-announces the VIPs with a gratuitous ARP: the LAN learnt
                // the secondary's MAC during the outage and must come back to this node.
                let d = Decision::because(format!("two actives: {count}: restore original role, this node (primary) keeps the role"));
                let d = if cx.cfg.vip { d.then(Action::ClaimVip) } else { d };
                d.command_peer(Some(&other.id), PeerCommand::GoStandby)
            } else {
                Decision::because(format!("two actives: {count}: waiting for peer {} to stand by", other.id))
            };
            return Some(d);
        }
        state.yielded = true;
        return Some(match cx.cfg.on_failure {
            OnFailure::SwitchOff => {
                state.off_cause = Some(OffCause::TwoActives);
                leave_active(cx, Mode::Off, format!("two actives: {count}: the secondary took over during the heartbeat outage; on failure switch-off: this node ({}) goes OFF until an operator restarts HA", cx.me()))
            }
            _ => {
                state.push_queue_due = true;
                let d = step_down(cx, state, format!("two actives: {count}: the secondary took over during the heartbeat outage; restore slave role: this node ({}) goes STANDBY", cx.me()));
                push_queue(cx, state, d)
            }
        });
    }
    let limit = n.saturating_mul(3);
    if seen >= limit {
        state.yielded = true;
        return Some(step_down(cx, state, format!("two actives: peer {} still ACTIVE after {limit} checks: this node (secondary) gives way, STANDBY", other.id)));
    }
    Some(Decision::because(format!("two actives: peer {} seen ACTIVE {seen} checks: waiting for the primary to resolve (this node gives way after {limit})", other.id)))
}

/// Rules of a standby node.
fn standby_rules(cx: &Cx, state: &mut State) -> Decision {
    let tick = cx.tick;
    if cx.peers.is_empty() {
        return stop_leftovers(cx, Decision::because("STANDBY: no peer configured, nothing to take over from"));
    }
    if tick.node.tick_count == 0 {
        // A fresh daemon has one round of evidence: never claim the role on it. A VIP left by a killed
        // predecessor must not answer from two nodes: release it (idempotent).
        if cx.is_primary() && cx.active_peer().is_some() && cx.cfg.on_failure == OnFailure::RestoreSlaveRole {
            state.push_queue_due = true;
        }
        let mut d = Decision::because(format!("STANDBY: first tick, observing; {}", describe_peers(cx)));
        if cx.cfg.vip {
            d = d.then(Action::ReleaseVip);
        }
        return stop_leftovers(cx, d);
    }
    if tick.sync.initial == InitialSync::Pending {
        return stop_leftovers(cx, Decision::because("STANDBY: initial configuration sync from the active peer pending"));
    }
    if !cx.is_primary() && tick.sync.initial == InitialSync::Failed {
        if tick.sync.consecutive_failures <= 1 {
            state.off_cause = Some(OffCause::SyncFailed);
            return Decision::to(
                Mode::Off,
                "first configuration sync failed (1 failure): OFF so that two actives cannot appear; retrying the sync, a second failure makes this node ACTIVE",
            )
            .then(Action::Sync);
        }
        state.off_cause = Some(OffCause::SyncFailed);
        if let Some(d) = sync_failed_again(cx, state) {
            return d;
        }
    }
    let peers = cx.peer_ids();
    if let Some(d) = granted(cx, &peers) {
        return d;
    }
    if let Some(d) = failover(cx, &peers) {
        return d;
    }
    if let Some(d) = handover_progress(cx, state) {
        return d;
    }
    if let Some(d) = failback(cx, state) {
        return d;
    }
    if let Some(d) = nobody_active(cx, state, &peers) {
        return d;
    }
    let mut text = format!("STANDBY; {}", describe_peers(cx));
    if cx.arbiter().is_some() {
        text = format!("{text}; {}", arbiter::describe(cx.tick));
    }
    let d = push_queue(cx, state, Decision::because(text));
    stop_leftovers(cx, failback_progress(cx, state, d))
}

/// Failover (seed 002: "If the maximum number of consecutive failures is reached, and no secondary
/// heartbeat or remote service monitoring heartbeat is available, the secondary unit will change its
/// effective HA operating mode to become the new primary unit"). A peer that says it is `off` or
/// `failed` serves nobody: take over at once.
fn failover(cx: &Cx, peers: &[&str]) -> Option<Decision> {
    if let Some(d) = group_failover(cx, peers) {
        return d;
    }
    if let Some((p, Peer::Out(m))) = cx.peers.iter().find(|(_, s)| matches!(s, Peer::Out(_))) {
        if cx.peers.iter().all(|(_, s)| !matches!(s, Peer::Active)) {
            return Some(take_over(cx, format!("peer {} reports {}: switch this node ({}) to ACTIVE", p.id, word(*m), cx.me()), peers));
        }
    }
    let services_count = cx.cfg.remote_services_as_heartbeat;
    if cx.peers.iter().all(|(p, _)| cx.lost_for_threshold(p)) {
        let what = if services_count && cx.peers.iter().any(|(p, _)| !p.services.is_empty()) {
            "heartbeat and remote services lost"
        } else {
            "heartbeat lost on every path"
        };
        let detail = cx.peers.iter().map(|(p, _)| format!("peer {}: heartbeat lost {}", p.id, lost_detail(cx, p))).collect::<Vec<_>>().join(", ");
        return Some(take_over(cx, format!("{what}: {detail}: switch this node ({}) to ACTIVE, claiming the VIPs", cx.me()), peers));
    }
    None
}

/// With the arbiter: a standby node holding the role key asked for the role on an earlier tick (it
/// resigns the key whenever it stops asking), and the host's fencing held it back until the key was
/// its own: ask again, unless a peer serves.
fn granted(cx: &Cx, peers: &[&str]) -> Option<Decision> {
    let a = cx.arbiter().filter(|a| a.held)?;
    if cx.tick.node.mode != Mode::Standby || cx.active_peer().is_some() {
        return None;
    }
    let why = format!("the arbiter granted this node the role key ({} ms of lease left): switch this node ({}) to ACTIVE", a.lease_left_ms, cx.me());
    Some(go_active(cx, why, peers))
}

/// With the arbiter: failover in a group of any size. Once no peer serves — each is lost for the
/// threshold, reports OFF/FAILED, or stands by, and at least one is lost or out — the first node of the
/// priority order that can serve asks for the role, if no other node holds the role key. `None`
/// without the arbiter (the pair rules of [`failover`] apply); `Some(None)` when no failover is due.
fn group_failover(cx: &Cx, peers: &[&str]) -> Option<Option<Decision>> {
    cx.arbiter()?;
    let gone = |p: &Remote, s: Peer| cx.lost_for_threshold(p) || matches!(s, Peer::Out(_));
    let due = cx.peers.iter().any(|(p, s)| gone(p, *s)) && cx.peers.iter().all(|(p, s)| gone(p, *s) || *s == Peer::Idle);
    if !due {
        return Some(None);
    }
    if let Some(why) = cx.held_back() {
        return Some(Some(stop_leftovers(cx, Decision::because(format!("{}: {why}: no failover, STANDBY", describe_peers(cx))))));
    }
    Some(Some(take_over(cx, format!("no peer serves ({}), {}: switch this node ({}) to ACTIVE, claiming the VIPs", describe_peers(cx), arbiter::describe(cx.tick), cx.me()), peers)))
}

/// A configured primary with failback (or restore-original-role) takes the role back from the active
/// secondary once its local monitors and the peer link have been good `successes` checks.
fn failback(cx: &Cx, state: &mut State) -> Option<Decision> {
    if !cx.is_primary() || !failback_enabled(cx) || state.operator_hold {
        return None;
    }
    if state.failback_after_ms.is_some_and(|t| cx.tick.now_ms < t) {
        return None;
    }
    let other = cx.active_peer()?;
    let s = cx.n.successes;
    if healthy_for(cx) < s {
        return None;
    }
    Some(take_role(cx, state, &format!("failback: local health good {s}/{s} checks, peer {} ACTIVE: restore original role", other.id)))
}

fn failback_enabled(cx: &Cx) -> bool {
    cx.cfg.failback || cx.cfg.on_failure == OnFailure::RestoreOriginalRole
}

/// Local monitors and the peer link good this many consecutive checks.
fn healthy_for(cx: &Cx) -> u32 {
    let peers = cx.peers.iter().map(|(p, _)| p.consecutive_successes).min().unwrap_or(u32::MAX);
    cx.monitors_good_for().min(peers)
}

fn failback_progress(cx: &Cx, state: &State, d: Decision) -> Decision {
    if !cx.is_primary() || !failback_enabled(cx) || cx.active_peer().is_none() {
        return d;
    }
    if state.operator_hold {
        return d.and_because("failback held by the operator's switchover (restore hands the role back)");
    }
    let s = cx.n.successes;
    d.and_because(&format!("failback: local health good {}/{s} checks", healthy_for(cx).min(s)))
}

/// Nobody active (both restarted together, a hand-over that did not complete, the primary back from a
/// planned reboot while the secondary holds off); who claims when is
/// [`vigil_sdk::handover::nobody_active_wait`].
fn nobody_active(cx: &Cx, state: &State, peers: &[&str]) -> Option<Decision> {
    // With an arbiter the first node of the priority order that can serve leads, as the primary
    // does in a pair; the others never claim (they are held back).
    let held = cx.held_back();
    let leads = if cx.arbiter().is_some() { held.is_none() } else { cx.is_primary() };
    let fast = leads && !state.yielded;
    let needed = vigil_sdk::handover::nobody_active_wait(leads, state.yielded, cx.n.lost);
    if state.idle < needed {
        return None;
    }
    if let Some(why) = held {
        return Some(stop_leftovers(cx, Decision::because(format!("no node ACTIVE for {needed}/{needed} checks ({}): {why}", describe_peers(cx)))));
    }
    let who = match (fast, cx.arbiter().is_some()) {
        (true, true) => "this node comes first in the priority order",
        (true, false) => "the primary runs",
        (false, _) => "the primary did not take the role",
    };
    Some(go_active(cx, format!("no node ACTIVE for {needed}/{needed} checks ({}; {who}): switch this node ({}) to ACTIVE", describe_peers(cx), cx.me()), peers))
}

// ---------------------------------------------------------------------------------------------
// Observation, warnings, entry point.
// ---------------------------------------------------------------------------------------------

fn observe(cx: &Cx, state: &mut State) {
    let active = cx.tick.node.mode == Mode::Active;
    let other_active = cx.active_peer().is_some();
    // While our own switch is carried out, the peer's "active" is expected, not a conflict.
    state.seen_active = if active && other_active && !cx.busy() { state.seen_active.saturating_add(1) } else { 0 };
    let all_idle = !cx.peers.is_empty() && cx.peers.iter().all(|(_, s)| *s == Peer::Idle);
    state.idle = if cx.tick.node.mode == Mode::Standby && all_idle { state.idle.saturating_add(1) } else { 0 };
    if other_active {
        state.yielded = false;
    }
}

/// Configuration problems only the tick can reveal; each raised once.
fn warnings(cx: &Cx, state: &mut State, mut d: Decision) -> Decision {
    let mut raise = |key: &str, text: String, d: Decision| if state.warned.insert(key.to_string()) { d.alarm(Level::Warn, text) } else { d };
    if cx.cfg.config_only || cx.peers.is_empty() {
        return d;
    }
    if cx.cfg.arbiter {
        let (unknown, missing) = Priority::new(&cx.cfg.priority).mismatches(cx.tick);
        for name in unknown {
            d = raise(&format!("priority:{name}"), format!("params.priority names {name:?}, which is neither this node nor a peer; ignored"), d);
        }
        for name in missing {
            d = raise(&format!("priority-missing:{name}"), format!("params.priority does not list node {name:?}: it comes after the listed nodes"), d);
        }
    }
    if cx.cfg.remote_services_as_heartbeat && cx.peers.iter().all(|(p, _)| p.services.is_empty()) {
        d = raise(
            "services",
            "params.remote_services_as_heartbeat is set but the node configuration probes no services of the peer ([[peer]] services): only the heartbeat paths count".into(),
            d,
        );
    }
    if cx.peers.iter().any(|(p, _)| p.paths.len() < 2) {
        d = raise(
            "paths",
            "a peer has a single heartbeat path: a cut cable fails over; configure a primary and a secondary link ([[peer]] paths)".into(),
            d,
        );
    }
    d
}

/// Decide one tick.
pub fn decide(cfg: &Config, tick: &Tick, state: &mut State) -> Decision {
    let n = Counts::of(cfg, tick);
    let peers = tick.peers.iter().map(|p| (p, classify(p, cfg.remote_services_as_heartbeat))).collect();
    let cx = Cx { cfg, tick, n, peers, order: tick.services_in_order(&cfg.start_order).0 };
    if cfg.config_only {
        return config_only(&cx);
    }
    observe(&cx, state);
    let before = tick.node.mode;
    if before != Mode::Active {
        // A step-down ends in its new mode; one found in another mode is a leftover.
        state.stepping_down = None;
    }
    if matches!(before, Mode::Off | Mode::Failed) {
        state.handover = None;
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
    } else if before == Mode::HoldOff {
        hold_off(&cx, state)
    } else if before == Mode::Active {
        active_rules(&cx, state)
    } else {
        standby_rules(&cx, state)
    };
    // The remaining ways to the role (a second failed sync, the end of a hold-off, recovery) follow
    // the arbiter too: never ask for it while another node holds the key.
    let d = match (d.mode, cx.held_elsewhere()) {
        (Some(Mode::Active), Some(_)) if before != Mode::Active => {
            let mut held = Decision::because(format!("{}; but {}: STANDBY until it is released", d.reason, arbiter::describe(tick)));
            if before != Mode::Standby {
                held.mode = Some(Mode::Standby);
            }
            stop_leftovers(&cx, held)
        }
        _ => d,
    };
    match d.mode {
        Some(Mode::Active) if before != Mode::Active => {
            state.idle = 0;
            state.yielded = false;
            state.operator_hold = false;
            state.push_queue_due = false;
            state.off_cause = None;
            state.handover = None;
            state.stepping_down = None;
            state.failback_after_ms = None;
        }
        Some(m) if m != Mode::Active && before == Mode::Active => state.seen_active = 0,
        _ => {}
    }
    if !matches!(d.mode.unwrap_or(before), Mode::HoldOff) {
        state.hold_until_ms = None;
    }
    warnings(&cx, state, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_in_ms_becomes_whole_checks() {
        assert_eq!(checks_for(15_000, 3_000), 5);
        assert_eq!(checks_for(15_001, 3_000), 6, "a partial interval still has to be waited for");
        assert_eq!(checks_for(1, 3_000), 1);
        assert_eq!(checks_for(1000, 0), 1000, "a zero interval is treated as 1 ms, never a division by zero");
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = Config { local_failures: Some(0), ..Config::default() };
        assert!(bad.validate().unwrap_err().starts_with("local_failures:"));
        let bad = Config { planned_reboot_hold_ms: Some(10), ..Config::default() };
        assert!(bad.validate().unwrap_err().starts_with("planned_reboot_hold_ms:"));
        let bad = Config { start_order: vec!["a".into(), "a".into()], ..Config::default() };
        assert!(bad.validate().unwrap_err().contains("listed twice"));
        let bad = Config { arbiter: true, priority: vec!["b".into(), "b".into()], ..Config::default() };
        assert_eq!(bad.validate().unwrap_err(), "priority: \"b\" is listed twice");
        assert!(Config::default().validate().is_ok());
    }
}
