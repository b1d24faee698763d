//! The node: its mode, and the loop that lets the policy decide it.
//!
//! [`NodeCore`] is the deterministic heart: given what was observed and a policy, it builds the tick,
//! asks the plugin, applies the policy's fallback when the plugin faults, and says what changed. It
//! does no I/O and reads no clock, so the simulation can run it through thousands of fault schedules.
//! [`runner`] is the thin shell around it that probes, executes, serves and sleeps.
//!
//! A node starts in [`Mode::Starting`] and leaves it on its first tick, whatever happens there: the
//! plugin's mode, or standby when it keeps the mode (or faults, or the start-up grace holds it). After
//! a restart of the daemon ([`persist`]) the first tick carries what the node was before
//! (`tick.node.restart`); a decision that resumes that mode keeps the time the node entered it.
//!
//! Never: executes an action itself, or changes the mode except as a decision or the policy's
//! fallback says.

pub mod persist;
pub mod runner;
pub mod shadow;

use crate::model::{
    Action, ArbiterView, ActionResult, Check, Decision, Heartbeat, LocalNode, Mode, OperatorRequest, ReceivedCommand, Remote, RestartInfo,
    Role, Service, SyncView, Tick, VipView,
};
use crate::policy::file::FallbackMode;
use crate::policy::{Fault, LoadedPolicy};

/// Everything observed since the previous tick.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub now_ms: u64,
    pub heartbeat: Heartbeat,
    pub peers: Vec<Remote>,
    pub watched: Vec<Remote>,
    pub lan: Option<Check>,
    pub monitors: Vec<Check>,
    pub vip: Option<VipView>,
    pub route: Option<String>,
    pub services: Vec<Service>,
    pub sync: SyncView,
    pub arbiter: Option<ArbiterView>,
    pub operator: Option<OperatorRequest>,
    pub commands: Vec<ReceivedCommand>,
    pub results: Vec<ActionResult>,
    pub pending_actions: u32,
}

/// What one tick did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub from: Mode,
    pub to: Mode,
    /// Actions to execute, in order.
    pub actions: Vec<Action>,
    /// The plugin's reason, or the host's when it faulted.
    pub reason: String,
    /// The fault, when the plugin misbehaved.
    pub fault: Option<Fault>,
    /// True when the fallback (not the plugin) set the mode.
    pub fallback_applied: bool,
    /// The policy asked for the active role this tick (granted or not): with an arbiter, the node
    /// campaigns for the role key while this holds and it does not hold the key.
    pub wants_active: bool,
}

impl Outcome {
    /// Whether this tick changed something worth an event-log entry.
    pub fn changed(&self) -> bool {
        self.from != self.to || !self.actions.is_empty() || self.fault.is_some()
    }
}

/// What fencing does with a decision (see [`NodeCore::fence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fence {
    /// Apply it.
    Pass,
    /// Apply it, noting that the arbiter's failsafe keeps the node active.
    Failsafe(String),
    /// Do not take it (the node does not become active); why.
    Refuse(String),
    /// Step down from active; why.
    Demote(String),
}

/// Why this node does not hold the role key, for reasons and events.
fn key_state(me: &str, a: &ArbiterView) -> String {
    match a.holder.as_deref() {
        Some(holder) if holder != me => format!("the role key is held by {holder}"),
        _ if !a.reachable => "the arbiter is unreachable".into(),
        Some(_) => format!("the lease was not renewed in time ({} ms left)", a.lease_left_ms),
        None => "the role key is free; campaigning".into(),
    }
}

/// Faults in a row a starting node waits through in `starting` before it leaves it for standby.
pub const STARTING_FAULTS: u32 = 3;

/// The node's own state.
#[derive(Debug, Clone)]
pub struct NodeCore {
    pub id: String,
    pub role: Role,
    pub mode: Mode,
    pub mode_since_ms: u64,
    /// Why the node is in its mode (the reason of the decision that set it).
    pub reason: String,
    pub started_ms: u64,
    pub tick_count: u64,
    /// The plugin's state bytes from its last good decision.
    pub state: Vec<u8>,
    /// Faults since start, and in a row.
    pub faults: u64,
    pub consecutive_faults: u32,
    pub last_fault: Option<String>,
    /// After the start, how long a decision to become active waits for every peer to have answered
    /// once (0: not at all). A node that starts before its peer must not take the role from a peer it
    /// never heard from just because that peer's daemon came up a moment later.
    pub startup_grace_ms: u64,
    /// What the node was before its daemon restarted, shown to the plugin while the node is starting.
    pub restart: Option<RestartInfo>,
    /// With an arbiter (`[arbiter] fencing`): no active mode without holding the role key.
    pub fencing: bool,
    /// Keep each tick and the plugin's answer in [`NodeCore::seen`] (for the flight recorder).
    pub recording: bool,
    /// The last tick as the plugin saw it and what the plugin returned, when `recording`.
    pub seen: Option<(Tick, Result<Decision, Fault>)>,
}

impl NodeCore {
    /// A node that starts, as every node does, in [`Mode::Starting`]: its first tick decides.
    pub fn new(id: &str, role: Role, now_ms: u64) -> NodeCore {
        NodeCore {
            id: id.to_string(),
            role,
            mode: Mode::Starting,
            mode_since_ms: now_ms,
            reason: "started; the first tick decides the mode".into(),
            started_ms: now_ms,
            tick_count: 0,
            state: Vec::new(),
            faults: 0,
            consecutive_faults: 0,
            last_fault: None,
            startup_grace_ms: 0,
            restart: None,
            fencing: false,
            recording: false,
            seen: None,
        }
    }

    /// The same node told what it was before its daemon restarted (see [`persist`]).
    pub fn with_restart(mut self, restart: Option<RestartInfo>) -> NodeCore {
        self.restart = restart;
        self
    }

    /// Whether this node was `mode` before a restart and has not decided yet: a decision to be
    /// `mode` again resumes.
    fn resumes(&self, mode: Mode) -> bool {
        self.mode == Mode::Starting && self.restart.as_ref().is_some_and(|r| r.mode == mode)
    }

    /// The same node with a start-up grace period (see [`NodeCore::startup_grace_ms`]).
    pub fn with_startup_grace(mut self, grace_ms: u64) -> NodeCore {
        self.startup_grace_ms = grace_ms;
        self
    }

    /// Why a decision to become active must wait: inside the start-up grace, some peer has not
    /// answered since this node started.
    fn grace_holds(&self, tick: &Tick, decision: &Decision) -> Option<String> {
        // Resuming the role held before a restart of the daemon is not taking it: the services run,
        // and the peers saw this node active until a moment ago.
        let becomes_active = decision.mode == Some(Mode::Active) && self.mode != Mode::Active && !self.resumes(Mode::Active);
        let elapsed = tick.now_ms.saturating_sub(self.started_ms);
        if !becomes_active || elapsed >= self.startup_grace_ms {
            return None;
        }
        let silent: Vec<&str> = tick.peers.iter().filter(|p| p.last_seen_ago_ms.is_none()).map(|p| p.id.as_str()).collect();
        if silent.is_empty() {
            return None;
        }
        Some(format!(
            "start-up grace: no ACTIVE until peer {} answers or {} ms after the start; the policy's decision waits ({})",
            silent.join(", "),
            self.startup_grace_ms,
            decision.reason
        ))
    }

    /// The tick the plugin will see.
    pub fn tick(&self, o: Observations) -> Tick {
        Tick {
            now_ms: o.now_ms,
            node: LocalNode {
                id: self.id.clone(),
                configured_role: self.role,
                mode: self.mode,
                mode_since_ms: self.mode_since_ms,
                started_ms: self.started_ms,
                tick_count: self.tick_count,
                restart: if self.mode == Mode::Starting { self.restart.clone() } else { None },
            },
            heartbeat: o.heartbeat,
            peers: o.peers,
            watched: o.watched,
            lan: o.lan,
            monitors: o.monitors,
            vip: o.vip,
            route: o.route,
            services: o.services,
            sync: o.sync,
            arbiter: o.arbiter,
            operator: o.operator,
            commands: o.commands,
            results: o.results,
            pending_actions: o.pending_actions,
            state: self.state.clone(),
        }
    }

    /// Decide one tick with `policy` and apply the result. `peers` are the ids commands may name.
    pub fn step(&mut self, policy: &LoadedPolicy, observations: Observations, peers: &[String]) -> Outcome {
        let now = observations.now_ms;
        let tick = self.tick(observations);
        let result = policy.decide(&tick, peers);
        let held = result.as_ref().ok().filter(|_| policy.file.exclusive).and_then(|d| self.grace_holds(&tick, d));
        let (fallback, after) = (policy.file.fallback.mode, policy.file.fallback.after);
        let fence = if held.is_some() { Fence::Pass } else { self.fence(&tick, &result, fallback, after) };
        if self.recording {
            self.seen = Some((tick, result.clone()));
        }
        if let Some(reason) = held {
            return self.hold(reason, now);
        }
        let mut result = result;
        match fence {
            Fence::Pass => {}
            Fence::Failsafe(note) => {
                if let Ok(d) = &mut result {
                    d.reason = format!("{}; {note}", d.reason);
                }
            }
            Fence::Refuse(why) => {
                let reason = match &result {
                    Ok(d) => format!("fencing: no ACTIVE without the arbiter's role key ({why}); the policy's decision waits ({})", d.reason),
                    Err(f) => format!("fencing: no ACTIVE without the arbiter's role key ({why}); plugin {f}"),
                };
                let mut outcome = self.hold(reason, now);
                outcome.wants_active = true;
                return outcome;
            }
            Fence::Demote(why) => return self.demote(&why, &policy.file, now),
        }
        self.apply(now, result, fallback, after)
    }

    /// The host's fencing (`[arbiter] fencing`, see [`NodeCore::fencing`]) for a decision about to
    /// be applied: with an arbiter in the tick, a node becomes active only while it holds the role key,
    /// and an active node that no longer holds it is demoted. When no arbiter endpoint answers, an
    /// active node keeps the role while every peer answered within two intervals and reports itself
    /// not active (the failsafe); otherwise it steps down when its lease ends (minus the margin).
    /// Without fencing or without an arbiter, every decision passes.
    fn fence(&self, tick: &Tick, result: &Result<Decision, Fault>, fallback: FallbackMode, after: u32) -> Fence {
        let Some(arbiter) = tick.arbiter.as_ref().filter(|_| self.fencing) else { return Fence::Pass };
        let from = self.mode;
        let to = match result {
            Ok(d) => d.mode.unwrap_or(from),
            Err(_) => match fallback {
                FallbackMode::To(mode) if self.consecutive_faults + 1 >= after => mode,
                _ => from,
            },
        };
        if to != Mode::Active {
            return Fence::Pass;
        }
        let recent = 2 * u64::from(tick.heartbeat.interval_ms);
        let heard = |p: &Remote| p.last_seen_ago_ms.is_some_and(|ago| ago <= recent);
        if from != Mode::Active {
            if !arbiter.held {
                return Fence::Refuse(key_state(&self.id, arbiter));
            }
            // The key is ours, but a peer that answers still says it is active: it has not stepped
            // down yet (its lease ends before ours began, and it demotes itself by then).
            if let Some(p) = tick.peers.iter().find(|p| heard(p) && p.report.as_ref().is_some_and(|r| r.mode == Mode::Active)) {
                return Fence::Refuse(format!("this node holds the role key but peer {} still reports itself active", p.id));
            }
            return Fence::Pass;
        }
        if !arbiter.reachable {
            let unconfirmed: Vec<&str> =
                tick.peers.iter().filter(|p| !heard(p) || p.report.as_ref().is_none_or(|r| r.mode == Mode::Active)).map(|p| p.id.as_str()).collect();
            if !tick.peers.is_empty() && unconfirmed.is_empty() {
                return Fence::Failsafe("arbiter unreachable: failsafe, every peer answers and reports itself not active".into());
            }
            if arbiter.held {
                return Fence::Pass;
            }
            let who = if tick.peers.is_empty() { "no peer to confirm it".to_string() } else { format!("peer {} does not confirm it", unconfirmed.join(", ")) };
            return Fence::Demote(format!("the arbiter is unreachable and the lease was not renewed in time; {who}"));
        }
        if arbiter.held { Fence::Pass } else { Fence::Demote(key_state(&self.id, arbiter)) }
    }

    /// Step down from active on the host's own authority: mode standby, and the host's actions to stop
    /// the policy's services (in reverse order) and release its VIPs. The plugin's decision and state
    /// of this tick are not taken.
    fn demote(&mut self, why: &str, file: &crate::policy::PolicyFile, now_ms: u64) -> Outcome {
        let from = self.mode;
        self.tick_count += 1;
        let mut actions: Vec<Action> = file.services.keys().rev().map(|name| Action::Stop(name.clone())).collect();
        if !file.vip.is_empty() {
            actions.push(Action::ReleaseVip);
        }
        let reason = format!("fencing: demoted, {why}");
        self.mode = Mode::Standby;
        self.mode_since_ms = now_ms;
        self.reason = reason.clone();
        Outcome { from, to: Mode::Standby, actions, reason, fault: None, fallback_applied: false, wants_active: true }
    }

    /// Keep the mode and the state, act on nothing: the decision is not taken, and the plugin decides
    /// again from the same state on the next tick.
    fn hold(&mut self, reason: String, now_ms: u64) -> Outcome {
        let from = self.mode;
        self.tick_count += 1;
        let to = self.leave_starting(from, now_ms, &reason);
        Outcome { from, to, actions: Vec::new(), reason, fault: None, fallback_applied: false, wants_active: false }
    }

    /// The first tick ends [`Mode::Starting`]: a node still in it after the decision is standby.
    fn leave_starting(&mut self, to: Mode, now_ms: u64, reason: &str) -> Mode {
        if to != Mode::Starting {
            return to;
        }
        self.mode = Mode::Standby;
        self.mode_since_ms = now_ms;
        self.reason = reason.to_string();
        Mode::Standby
    }

    /// Apply a decision (or a fault) at `now_ms`.
    pub fn apply(&mut self, now_ms: u64, result: Result<Decision, Fault>, fallback: FallbackMode, after: u32) -> Outcome {
        let from = self.mode;
        self.tick_count += 1;
        let wants_active = matches!(&result, Ok(d) if d.mode == Some(Mode::Active) || d.mode.is_none() && from == Mode::Active);
        let (to, actions, reason, fault, fallback_applied) = match result {
            Ok(decision) => {
                self.consecutive_faults = 0;
                self.state = decision.state;
                (decision.mode.unwrap_or(from), decision.actions, decision.reason, None, false)
            }
            Err(fault) => {
                self.faults += 1;
                self.consecutive_faults += 1;
                self.last_fault = Some(fault.to_string());
                // The state is kept: the next tick starts from the last good decision.
                match fallback {
                    FallbackMode::To(mode) if self.consecutive_faults >= after && mode != from => (
                        mode,
                        Vec::new(),
                        format!("plugin {fault}; {} faults in a row: fallback to {mode}", self.consecutive_faults),
                        Some(fault),
                        true,
                    ),
                    _ => (from, Vec::new(), format!("plugin {fault}; holding {from}"), Some(fault), false),
                }
            }
        };
        // A plugin never decides `starting` (the policy refuses it); "keep" on the first tick leaves
        // the node standby, as a node started before there was a `starting`. A fault there holds
        // `starting` (the next tick shows the restart again) for a few ticks: a first call slowed past
        // its time limit must not turn a restart into a fresh start, nor a resumed ACTIVE into a
        // STANDBY and back.
        let to = match to {
            Mode::Starting if fault.is_some() && self.consecutive_faults < STARTING_FAULTS => Mode::Starting,
            Mode::Starting => Mode::Standby,
            other => other,
        };
        if to != from {
            // Resuming the mode of before the restart keeps the time it was entered.
            let since = match &self.restart {
                Some(r) if self.resumes(to) => r.mode_since_ms,
                _ => now_ms,
            };
            self.mode = to;
            self.mode_since_ms = since;
            self.reason = reason.clone();
        }
        Outcome { from, to, actions, reason, fault, fallback_applied, wants_active }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(mode: Option<Mode>) -> Decision {
        Decision { mode, actions: vec![Action::Start("app".into())], state: b"{\"n\":1}".to_vec(), reason: "because".into() }
    }

    #[test]
    fn a_node_starts_in_starting_and_its_first_tick_leaves_it() {
        let mut n = NodeCore::new("a", Role::Primary, 5);
        assert_eq!((n.mode, n.mode_since_ms), (Mode::Starting, 5));
        let o = n.apply(10, Ok(Decision::default()), FallbackMode::Hold, 3);
        assert_eq!((o.from, o.to, n.mode, n.mode_since_ms), (Mode::Starting, Mode::Standby, Mode::Standby, 10));
        let mut n = NodeCore::new("a", Role::Primary, 5);
        for i in 1..STARTING_FAULTS {
            let o = n.apply(10 + u64::from(i), Err(Fault::Trap("boom".into())), FallbackMode::Hold, 3);
            assert_eq!((o.to, n.mode), (Mode::Starting, Mode::Starting), "a fault on the first tick holds starting");
        }
        let o = n.apply(20, Err(Fault::Trap("boom".into())), FallbackMode::Hold, 3);
        assert_eq!((o.to, n.mode), (Mode::Standby, Mode::Standby), "faults in a row leave starting for standby");
        let mut n = NodeCore::new("a", Role::Primary, 5);
        let o = n.hold("grace".into(), 10);
        assert_eq!((o.to, n.mode), (Mode::Standby, Mode::Standby), "so does a held first decision");
    }

    #[test]
    fn a_restart_is_shown_on_the_first_tick_and_resuming_keeps_the_mode_start() {
        let info = RestartInfo { downtime_ms: 150, mode: Mode::Active, mode_since_ms: 3, state: b"{}".to_vec() };
        let mut n = NodeCore::new("a", Role::Primary, 1_000).with_restart(Some(info.clone())).with_startup_grace(5_000);
        let tick = n.tick(Observations { now_ms: 1_100, peers: vec![Remote { id: "b".into(), ..Remote::default() }], ..Observations::default() });
        assert_eq!(tick.node.restart, Some(info));
        assert_eq!(tick.node.mode, Mode::Starting);
        let resume = Decision { mode: Some(Mode::Active), reason: "resuming".into(), ..Decision::default() };
        assert!(n.grace_holds(&tick, &resume).is_none(), "resuming is not taking the role: no grace");
        n.apply(1_100, Ok(resume), FallbackMode::Hold, 3);
        assert_eq!((n.mode, n.mode_since_ms), (Mode::Active, 3));
        assert_eq!(n.tick(Observations::default()).node.restart, None, "only the first tick is told");
    }

    #[test]
    fn decisions_change_mode_and_state() {
        let mut n = NodeCore::new("a", Role::Primary, 0);
        let o = n.apply(10, Ok(decision(Some(Mode::Active))), FallbackMode::Hold, 3);
        assert_eq!((o.from, o.to), (Mode::Starting, Mode::Active));
        assert!(o.changed());
        assert_eq!((n.mode, n.mode_since_ms, n.reason.as_str()), (Mode::Active, 10, "because"));
        assert_eq!(n.state, b"{\"n\":1}");
        let o = n.apply(20, Ok(Decision { state: b"2".to_vec(), ..Decision::default() }), FallbackMode::Hold, 3);
        assert!(!o.changed());
        assert_eq!(n.mode_since_ms, 10, "keeping the mode keeps its start");
    }

    #[test]
    fn faults_hold_the_mode_and_the_state() {
        let mut n = NodeCore::new("a", Role::Primary, 0);
        n.apply(10, Ok(decision(Some(Mode::Active))), FallbackMode::Hold, 3);
        for i in 0..5 {
            let o = n.apply(20 + i, Err(Fault::Trap("boom".into())), FallbackMode::Hold, 3);
            assert_eq!(o.to, Mode::Active);
            assert!(o.actions.is_empty());
        }
        assert_eq!((n.faults, n.consecutive_faults), (5, 5));
        assert_eq!(n.state, b"{\"n\":1}");
        n.apply(30, Ok(decision(None)), FallbackMode::Hold, 3);
        assert_eq!(n.consecutive_faults, 0);
    }

    #[test]
    fn fallback_mode_applies_after_enough_faults() {
        let mut n = NodeCore::new("a", Role::Primary, 0);
        n.apply(10, Ok(decision(Some(Mode::Active))), FallbackMode::To(Mode::Standby), 2);
        let o = n.apply(20, Err(Fault::Timeout { limit_ms: 50 }), FallbackMode::To(Mode::Standby), 2);
        assert_eq!(o.to, Mode::Active);
        let o = n.apply(30, Err(Fault::Timeout { limit_ms: 50 }), FallbackMode::To(Mode::Standby), 2);
        assert_eq!(o.to, Mode::Standby);
        assert!(o.fallback_applied && o.reason.contains("fallback"));
    }

    #[test]
    fn the_start_up_grace_holds_active_until_every_peer_answered() {
        let n = NodeCore::new("b", Role::Secondary, 1_000).with_startup_grace(5_000);
        let peer = Remote { id: "a".into(), ..Remote::default() };
        let mut tick = n.tick(Observations { now_ms: 2_000, peers: vec![peer], ..Observations::default() });
        let active = Decision { mode: Some(Mode::Active), reason: "peer a lost".into(), ..Decision::default() };
        let why = n.grace_holds(&tick, &active).expect("a peer never heard from is not dead yet");
        assert!(why.contains("peer a") && why.contains("peer a lost"), "{why}");
        assert!(n.grace_holds(&tick, &Decision::default()).is_none(), "only becoming active waits");
        tick.peers[0].last_seen_ago_ms = Some(100);
        assert!(n.grace_holds(&tick, &active).is_none(), "a peer that answered once is the policy's to judge");
        tick.peers[0].last_seen_ago_ms = None;
        tick.now_ms = 6_000;
        assert!(n.grace_holds(&tick, &active).is_none(), "after the grace, silence counts");
        assert!(NodeCore::new("b", Role::Secondary, 1_000).grace_holds(&n.tick(Observations { now_ms: 1_100, ..Observations::default() }), &active).is_none());
    }

    #[test]
    fn a_held_decision_changes_nothing() {
        let mut n = NodeCore::new("b", Role::Secondary, 0);
        n.apply(10, Ok(Decision { state: b"kept".to_vec(), ..Decision::default() }), FallbackMode::Hold, 3);
        let o = n.hold("start-up grace".into(), 20);
        assert_eq!((o.from, o.to, o.actions.len()), (Mode::Standby, Mode::Standby, 0));
        assert_eq!((n.state.as_slice(), n.tick_count), (&b"kept"[..], 2));
    }

    fn arbiter(reachable: bool, holder: Option<&str>, held: bool) -> ArbiterView {
        ArbiterView { reachable, holder: holder.map(str::to_string), held, lease_left_ms: if held { 800 } else { 0 }, revision: 7 }
    }

    fn peer(seen_ago_ms: Option<u64>, mode: Mode) -> Remote {
        let report = Some(crate::model::Report { mode, ..Default::default() });
        Remote { id: "b".into(), reachable: seen_ago_ms.is_some(), last_seen_ago_ms: seen_ago_ms, report, ..Remote::default() }
    }

    fn fenced(mode: Mode) -> NodeCore {
        let mut n = NodeCore::new("a", Role::Primary, 0);
        n.fencing = true;
        n.mode = mode;
        n
    }

    fn fence_of(n: &NodeCore, a: Option<ArbiterView>, peers: Vec<Remote>, decided: Option<Mode>) -> Fence {
        let tick = n.tick(Observations { now_ms: 1_000, heartbeat: Heartbeat { interval_ms: 100, ..Heartbeat::default() }, peers, arbiter: a, ..Observations::default() });
        n.fence(&tick, &Ok(decision(decided)), FallbackMode::Hold, 3)
    }

    #[test]
    fn fencing_refuses_active_without_the_role_key() {
        let standby = fenced(Mode::Standby);
        let up = vec![peer(None, Mode::Standby)];
        assert!(matches!(fence_of(&standby, Some(arbiter(true, Some("b"), false)), up.clone(), Some(Mode::Active)), Fence::Refuse(w) if w.contains("held by b")));
        assert!(matches!(fence_of(&standby, Some(arbiter(true, None, false)), up.clone(), Some(Mode::Active)), Fence::Refuse(w) if w.contains("campaigning")));
        assert!(matches!(fence_of(&standby, Some(arbiter(false, None, false)), up.clone(), Some(Mode::Active)), Fence::Refuse(w) if w.contains("unreachable")));
        assert_eq!(fence_of(&standby, Some(arbiter(true, Some("a"), true)), up.clone(), Some(Mode::Active)), Fence::Pass);
        assert!(matches!(fence_of(&standby, Some(arbiter(true, Some("a"), true)), vec![peer(Some(50), Mode::Active)], Some(Mode::Active)), Fence::Refuse(w) if w.contains("peer b still reports")));
        assert_eq!(fence_of(&standby, Some(arbiter(true, Some("b"), false)), up.clone(), Some(Mode::Standby)), Fence::Pass, "only active is fenced");
        assert_eq!(fence_of(&standby, None, up.clone(), Some(Mode::Active)), Fence::Pass, "no arbiter, no fencing");
        let mut off = fenced(Mode::Standby);
        off.fencing = false;
        assert_eq!(fence_of(&off, Some(arbiter(true, Some("b"), false)), up, Some(Mode::Active)), Fence::Pass, "fencing = false");
        let mut starting = fenced(Mode::Standby);
        starting.consecutive_faults = 2;
        let tick = starting.tick(Observations { arbiter: Some(arbiter(true, Some("b"), false)), ..Observations::default() });
        let fault = Err(Fault::Trap("boom".into()));
        assert!(matches!(starting.fence(&tick, &fault, FallbackMode::To(Mode::Active), 3), Fence::Refuse(_)), "a fallback to active is fenced too");
    }

    #[test]
    fn fencing_demotes_an_active_node_that_lost_the_key_unless_the_failsafe_holds() {
        let active = fenced(Mode::Active);
        let confirming = vec![peer(Some(150), Mode::Standby)];
        assert_eq!(fence_of(&active, Some(arbiter(true, Some("a"), true)), confirming.clone(), None), Fence::Pass);
        assert!(matches!(fence_of(&active, Some(arbiter(true, Some("b"), false)), confirming.clone(), None), Fence::Demote(w) if w.contains("held by b")));
        assert!(matches!(fence_of(&active, Some(arbiter(true, Some("a"), false)), confirming.clone(), None), Fence::Demote(w) if w.contains("not renewed")));
        // etcd unreachable: every peer answers and is not active → failsafe, even after the lease.
        assert!(matches!(fence_of(&active, Some(arbiter(false, Some("a"), false)), confirming, None), Fence::Failsafe(_)));
        // A peer silent for more than two intervals (a cut link) ends the failsafe: held until the lease ends.
        let silent = vec![peer(Some(250), Mode::Standby)];
        assert_eq!(fence_of(&active, Some(arbiter(false, Some("a"), true)), silent.clone(), None), Fence::Pass);
        assert!(matches!(fence_of(&active, Some(arbiter(false, Some("a"), false)), silent, None), Fence::Demote(w) if w.contains("peer b does not confirm")));
        assert!(matches!(fence_of(&active, Some(arbiter(false, Some("a"), false)), vec![peer(Some(10), Mode::Active)], None), Fence::Demote(_)));
        assert!(matches!(fence_of(&active, Some(arbiter(false, Some("a"), false)), vec![], None), Fence::Demote(w) if w.contains("no peer")));
    }

    #[test]
    fn a_demotion_stops_the_services_and_releases_the_vips() {
        let file = crate::policy::PolicyFile::parse(
            std::path::Path::new("/p/policy.toml"),
            "plugin = \"testkit\"\n[services.db]\nstart = \"true\"\nstop = \"true\"\n[services.web]\nstart = \"true\"\nstop = \"true\"\n\
             [[vip]]\naddress = \"192.0.2.10/24\"\ninterface = \"lo\"\naction = \"add\"\n",
        )
        .unwrap();
        let mut n = fenced(Mode::Active);
        n.state = b"old".to_vec();
        let o = n.demote("the role key is held by b", &file, 500);
        assert_eq!((o.from, o.to, n.mode, n.mode_since_ms), (Mode::Active, Mode::Standby, Mode::Standby, 500));
        assert_eq!(o.actions, vec![Action::Stop("web".into()), Action::Stop("db".into()), Action::ReleaseVip]);
        assert!(o.reason.starts_with("fencing: demoted, the role key is held by b"), "{}", o.reason);
        assert_eq!(n.state, b"old", "the plugin's decision of the demoting tick is not taken");
    }
}
