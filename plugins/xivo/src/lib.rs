//! xivo: a XiVO telephony pair, main + standby IPBX (deployments.md §2, seed `003_…` "XiVO
//! Deployment").
//!
//! The standby checks the main over the heartbeat link (a ping-like probe configured in the node's
//! `[[peer]]`; `count` probes per check, and the host reports a check as failed only when every probe
//! in it was lost). The rules, first that fires wins:
//!
//! 1. `off`/`failed`: only an operator `restart-ha` or `restore` brings the node back;
//! 2. an operator request (in manual mode the only thing the standby acts on);
//! 3. main (configured primary): it is the telephony server; it runs the services unless an operator
//!    switched it to standby;
//! 4. standby, automatic: main lost `failures` whole checks → config regeneration hook, then the
//!    telephony services in order, `active`; main answers again (`failback_after` checks in a row) →
//!    services stopped in reverse, `standby` (automatic failback, no manual step);
//! 5. hygiene: an active node restarts a telephony service that stopped; a standby node stops services
//!    left running.
//!
//! `docs/plugins/xivo.md` maps each rule to the product and lists the choices made where it is silent.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use vigil_sdk::handover;
use vigil_sdk::prelude::*;
use vigil_sdk::Service;

/// The policy file's `[params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Manual mode: no heartbeat decisions; the standby acts only on operator switch commands.
    #[serde(default)]
    manual: bool,
    /// Consecutive whole checks of the main lost before the standby takes over; default: the node's
    /// `[heartbeat] failures`.
    #[serde(default)]
    failures: Option<u32>,
    /// Consecutive answered checks of the main before the standby hands back (hysteresis). Default 1:
    /// the product stops the standby's telephony as soon as it pings the main again.
    #[serde(default)]
    failback_after: Option<u32>,
    /// The hook run before the services on takeover (XiVO regenerates its configuration from the
    /// replicated database first). None: no hook.
    #[serde(default)]
    config_hook: Option<String>,
    /// Telephony service names in start order (stopped in reverse). Declared services not listed
    /// follow in the policy's order.
    #[serde(default)]
    services: Vec<String>,
    /// The peer id of the main; default: the first peer.
    #[serde(default)]
    main: Option<String>,
}

/// Upper bound for every count: beyond this a typo is more likely than intent.
const MAX_COUNT: u32 = 1000;

/// What the plugin remembers between ticks.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct State {
    /// An operator switched this node by hand: automatic rules wait for `restore`.
    operator_hold: bool,
    /// Configuration warnings already raised (each once).
    warned: BTreeSet<String>,
    /// An operator `standby` on an active node: its telephony is being stopped, and it reports
    /// STANDBY only once every service reads stopped (break-before-make).
    stepping_down: bool,
}

/// Everything a rule needs, computed once per tick.
struct Cx<'a> {
    tick: &'a Tick,
    params: &'a Params,
    failures: u32,
    failback_after: u32,
    /// The main as a peer (`None` on the main itself, or when no peer is configured).
    main: Option<&'a Remote>,
    /// Declared services in start order.
    order: Vec<&'a Service>,
}

impl Cx<'_> {
    fn me(&self) -> &str {
        &self.tick.node.id
    }

    fn is_main(&self) -> bool {
        self.tick.node.configured_role == Role::Primary
    }

    /// Our own actions are still queued or running: their effect is not visible yet.
    fn busy(&self) -> bool {
        self.tick.pending_actions > 0
    }

    fn service_list(&self) -> String {
        self.order.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// Start the telephony: the configuration regeneration hook first (the services read what it
/// writes), then every service in order. `start` of a running service is a no-op in the host, so a
/// repeated takeover restarts nothing.
fn start_telephony(cx: &Cx, reason: String) -> Decision {
    let mut d = Decision::to(Mode::Active, reason);
    if let Some(hook) = &cx.params.config_hook {
        d = d.hook(hook, &[]);
    }
    for s in &cx.order {
        d = d.start(&s.name);
    }
    d
}

/// Stop the telephony in reverse start order.
fn stop_telephony(cx: &Cx, reason: String) -> Decision {
    let mut d = Decision::to(Mode::Standby, reason);
    for s in cx.order.iter().rev() {
        d = d.stop(&s.name);
    }
    d
}

/// `main a lost 2/3 checks`, `main a answers 1/1 checks`.
fn main_counts(cx: &Cx) -> String {
    match cx.main {
        None => "no main peer configured".into(),
        Some(m) if !m.reachable => format!("main {} lost {}/{} checks", m.id, m.consecutive_failures.min(cx.failures), cx.failures),
        Some(m) => format!("main {} answers ({} checks in a row)", m.id, m.consecutive_successes),
    }
}

// ---------------------------------------------------------------------------------------------
// Rules.
// ---------------------------------------------------------------------------------------------

/// `off`/`failed`: nothing automatic until the operator says so.
fn out_of_group(cx: &Cx, state: &mut State) -> Decision {
    match cx.tick.operator {
        Some(OperatorRequest::RestartHa) | Some(OperatorRequest::Restore) => {
            state.operator_hold = false;
            Decision::to(Mode::Standby, format!("operator {}: this node ({}) rejoins in STANDBY", word(cx.tick.operator), cx.me()))
        }
        _ => Decision::because(format!("{}: waiting for an operator restart-ha or restore", mode_word(cx.tick.node.mode))),
    }
}

/// Operator requests. `active`/`standby` hold the automatic rules until `restore` (otherwise the next
/// heartbeat would undo the operator's switch a second later); `restore` releases them at once.
fn operator(cx: &Cx, request: OperatorRequest, state: &mut State) -> Option<Decision> {
    let mode = cx.tick.node.mode;
    match request {
        OperatorRequest::Active => {
            if mode != Mode::Active {
                // Break-before-make: the main ignores the standby, so it cannot be asked to stop; the
                // operator stops it first (`vigil switch standby` there).
                if let Some(main) = cx.main.filter(|m| still_serving(m, cx.failures)) {
                    let text = format!(
                        "operator active refused: main {} {} and runs the telephony; `vigil switch standby` on the main first (two telephony servers must never run at once)",
                        main.id,
                        if main.reachable { "answers ACTIVE" } else { "answered ACTIVE and is not lost for the failure threshold yet" }
                    );
                    return Some(Decision::because(text.clone()).alarm(Level::Warn, text));
                }
            }
            state.operator_hold = !cx.is_main() && !cx.params.manual;
            state.stepping_down = false;
            let hold = if state.operator_hold { "; automatic failback held until restore" } else { "" };
            if mode == Mode::Active {
                return Some(ensure_running(cx, Decision::because(format!("operator active: already ACTIVE{hold}"))));
            }
            Some(start_telephony(cx, format!("operator active: starting telephony on this node ({}): {}{hold}", cx.me(), cx.service_list())))
        }
        OperatorRequest::Standby => {
            state.operator_hold = cx.is_main() || !cx.params.manual;
            let hold = if state.operator_hold { "; automatic rules held until restore" } else { "" };
            if mode == Mode::Active {
                state.stepping_down = true;
                return Some(step_down(cx, format!("operator standby: stopping telephony on this node ({}){hold}", cx.me())));
            }
            Some(stop_telephony(cx, format!("operator standby: stopping telephony on this node ({}){hold}", cx.me())))
        }
        // Back to the configured behaviour: the automatic rules decide in this very tick. A manual
        // standby has no automatic rule to give the role back by: restore stops what the operator's
        // `active` started (as its policy file says), break-before-make like a `standby`.
        OperatorRequest::Restore => {
            state.operator_hold = false;
            if cx.params.manual && !cx.is_main() && mode == Mode::Active {
                state.stepping_down = true;
                return Some(step_down(cx, format!("operator restore: manual standby back to its configured role, stopping telephony on this node ({})", cx.me())));
            }
            None
        }
        OperatorRequest::RestartHa | OperatorRequest::PlannedReboot => {
            Some(Decision::because(format!("operator {} ignored: not used by the XiVO pair", word(Some(request)))))
        }
    }
}

/// The main is the telephony server: it runs the services. Break-before-make: when it sees the
/// standby serving (a vigil heartbeat answering ACTIVE, or last answering so and not yet lost for the
/// failure threshold), it starts only once the standby has failed back — the standby stops its
/// telephony when it reaches the main and reports STANDBY only after the stops finished. With a probe
/// that reports no mode (ping, tcp) nothing is known, and the main starts at once as the product does.
fn main_rules(cx: &Cx, state: &State) -> Decision {
    if state.operator_hold {
        return stop_leftovers(cx, Decision::because("STANDBY by operator switch; `vigil switch restore` resumes telephony"));
    }
    if cx.tick.node.mode != Mode::Active {
        if let Some(standby) = cx.tick.peers.iter().find(|p| still_serving(p, cx.failures)) {
            let seen = if standby.reachable {
                "answers ACTIVE".to_string()
            } else {
                format!("answered ACTIVE and is lost only {}/{} checks", standby.consecutive_failures, cx.failures)
            };
            return stop_leftovers(
                cx,
                Decision::because(format!(
                    "main: standby {} {seen}: waiting for it to stop its telephony and report STANDBY before starting here (break-before-make)",
                    standby.id
                )),
            );
        }
        return start_telephony(cx, format!("main: starting telephony on this node ({}): {}", cx.me(), cx.service_list()));
    }
    ensure_running(cx, Decision::because("ACTIVE (main)"))
}

/// An active node giving up the role (operator `standby`): STANDBY once its stops finished and every
/// service reads stopped; until then it keeps reporting ACTIVE, so a main waiting for this node's
/// STANDBY never starts beside it. A service still running is stopped again.
fn step_down(cx: &Cx, why: String) -> Decision {
    match handover::stopped(cx.tick, &cx.order) {
        Ok(()) => Decision::to(Mode::Standby, format!("{why}: telephony stopped, STANDBY")),
        Err(left) if left.is_empty() => Decision::because(format!("{why}: waiting for the stop actions before reporting STANDBY")),
        Err(left) => {
            let mut d = Decision::because(format!("{why}; STANDBY once {} stopped", left.join(", ")));
            for name in left.iter().rev() {
                d = d.stop(name);
            }
            d
        }
    }
}

/// Whether `peer` may still run telephony: its last answer said ACTIVE (or STARTING: its daemon just
/// restarted and may resume ACTIVE), and it either answers now or has not been lost for `failures`
/// checks yet.
fn still_serving(peer: &Remote, failures: u32) -> bool {
    let active = peer.report.as_ref().is_some_and(|r| matches!(r.mode, Mode::Active | Mode::Starting));
    active && (peer.reachable || peer.consecutive_failures < failures)
}

/// Automatic failback of the standby, break-before-make: stop the telephony in reverse and keep
/// reporting ACTIVE until the stops finished and every service reads stopped; only then STANDBY, which
/// is what the main waits for before it starts its own.
fn fail_back(cx: &Cx, why: String) -> Decision {
    match handover::stopped(cx.tick, &cx.order) {
        Ok(()) => Decision::to(Mode::Standby, format!("{why}: telephony stopped on this node ({}), back to STANDBY (automatic failback)", cx.me())),
        Err(left) if left.is_empty() => Decision::because(format!("{why}: waiting for the stop actions before reporting STANDBY")),
        Err(left) => {
            let mut d = Decision::because(format!(
                "{why}: stopping telephony on this node ({}) ({}), STANDBY once stopped (automatic failback)",
                cx.me(),
                left.join(", ")
            ));
            for name in left.iter().rev() {
                d = d.stop(name);
            }
            d
        }
    }
}

/// The standby's automatic rules.
fn standby_rules(cx: &Cx, state: &State) -> Decision {
    let mode = cx.tick.node.mode;
    let counts = main_counts(cx);
    if cx.params.manual || state.operator_hold {
        let why = if cx.params.manual { "manual mode: heartbeat decisions off" } else { "held by operator switch until restore" };
        let d = Decision::because(format!("{} ({why}); {counts}", mode_word(mode)));
        return if mode == Mode::Active { ensure_running(cx, d) } else { stop_leftovers(cx, d) };
    }
    let Some(main) = cx.main else {
        return stop_leftovers(cx, Decision::because("STANDBY: no main peer configured, nothing to take over from"));
    };
    match mode {
        Mode::Active if main.reachable && main.consecutive_successes >= cx.failback_after => {
            fail_back(cx, format!("main {} answers again {}/{} checks", main.id, cx.failback_after, cx.failback_after))
        }
        Mode::Active if main.reachable => {
            ensure_running(cx, Decision::because(format!("ACTIVE; main {} answers {}/{} checks before failback", main.id, main.consecutive_successes, cx.failback_after)))
        }
        Mode::Active => ensure_running(cx, Decision::because(format!("ACTIVE; {counts}"))),
        // A fresh daemon has one round of evidence at most: never take over on it.
        _ if cx.tick.node.tick_count == 0 => stop_leftovers(cx, Decision::because(format!("STANDBY: first tick, observing; {counts}"))),
        _ if !main.reachable && main.consecutive_failures >= cx.failures => start_telephony(
            cx,
            format!(
                "main {} lost {}/{} checks (every probe lost): starting telephony on this node ({}): {}{}, ACTIVE",
                main.id,
                cx.failures,
                cx.failures,
                cx.me(),
                cx.params.config_hook.as_deref().map(|h| format!("{h}, then ")).unwrap_or_default(),
                cx.service_list()
            ),
        ),
        _ => stop_leftovers(cx, Decision::because(format!("STANDBY; {counts}"))),
    }
}

/// Active: a telephony service that stopped is started again (the product's monit does the same on a
/// XiVO). Not while our own actions are in flight, whose effect the status does not show yet.
fn ensure_running(cx: &Cx, mut d: Decision) -> Decision {
    if cx.busy() {
        return d;
    }
    for s in cx.order.iter().filter(|s| s.state == ServiceState::Stopped) {
        d = d.start(&s.name).and_because(&format!("{} stopped while ACTIVE, starting it", s.name));
    }
    d
}

/// Not active: telephony left running (e.g. across a daemon restart) would answer the phones twice.
fn stop_leftovers(cx: &Cx, mut d: Decision) -> Decision {
    if cx.busy() {
        return d;
    }
    let running: Vec<&str> = cx.order.iter().rev().filter(|s| s.state == ServiceState::Running).map(|s| s.name.as_str()).collect();
    if running.is_empty() {
        return d;
    }
    d = d.and_because(&format!("stopping {} left running while not active", running.join(", ")));
    for name in running {
        d = d.stop(name);
    }
    d
}

fn word(request: Option<OperatorRequest>) -> &'static str {
    match request {
        Some(OperatorRequest::Standby) => "standby",
        Some(OperatorRequest::Active) => "active",
        Some(OperatorRequest::Restore) => "restore",
        Some(OperatorRequest::RestartHa) => "restart-ha",
        Some(OperatorRequest::PlannedReboot) => "planned-reboot",
        None => "none",
    }
}

/// Configuration problems only the tick reveals; each raised once.
fn warnings(cx: &Cx, unknown: &[String], state: &mut State, mut d: Decision) -> Decision {
    // The dry run of `vigil policy check` has no services: nothing to compare with.
    if !cx.tick.services.is_empty() {
        for name in unknown {
            if state.warned.insert(format!("services:{name}")) {
                d = d.alarm(Level::Warn, format!("params.services names {name:?}, which the policy does not declare under [services]; ignored"));
            }
        }
    }
    if let Some(id) = &cx.params.main {
        if !cx.is_main() && !cx.tick.peers.is_empty() && cx.main.is_none() && state.warned.insert("main".into()) {
            d = d.alarm(Level::Warn, format!("params.main is {id:?} but the node configuration has no such [[peer]]: no automatic failover"));
        }
    }
    d
}

struct Xivo;

impl Policy for Xivo {
    type Params = Params;
    type State = State;

    fn validate(p: &Params) -> Result<(), String> {
        for (name, value) in [("failures", p.failures), ("failback_after", p.failback_after)] {
            if let Some(v) = value {
                if !(1..=MAX_COUNT).contains(&v) {
                    return Err(format!("{name}: expected a count from 1 to {MAX_COUNT}, got {v}"));
                }
            }
        }
        if p.config_hook.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return Err("config_hook: expected a hook name declared under [hooks], got an empty one".into());
        }
        check_names("services", &p.services)
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        let (order, unknown) = tick.services_in_order(&params.services);
        let main = if tick.node.configured_role == Role::Primary {
            None
        } else {
            match &params.main {
                Some(id) => tick.peer(id),
                None => tick.peers.first(),
            }
        };
        let cx = Cx {
            tick,
            params,
            // A zero in the node configuration would make every rule fire at once; one is the least.
            failures: params.failures.unwrap_or(tick.heartbeat.failures).max(1),
            failback_after: params.failback_after.unwrap_or(1),
            main,
            order,
        };
        if tick.node.mode != Mode::Active {
            state.stepping_down = false;
        }
        let d = if matches!(tick.node.mode, Mode::Off | Mode::Failed) {
            out_of_group(&cx, state)
        } else if let Some(d) = tick.operator.and_then(|r| operator(&cx, r, state)) {
            d
        } else if state.stepping_down {
            step_down(&cx, "operator standby".to_string())
        } else if cx.is_main() {
            main_rules(&cx, state)
        } else {
            standby_rules(&cx, state)
        };
        warnings(&cx, &unknown, state, d)
    }
}

vigil_sdk::export_policy!(Xivo);
