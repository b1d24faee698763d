//! xivo-cc: a XiVO CC (contact center) node that follows its XiVO's role (deployments.md §3, seed
//! `003_…` "CC Deployment").
//!
//! A CC node has no pair heartbeat of its own: it watches its XiVO (a `[[watch]]` entry on the XiVO's
//! vigil, whose `/role` it reads every heartbeat interval) and mirrors it. The same rule serves both
//! sides of the product:
//!
//! - XiVO ACTIVE → start the CC services in order, mode `active` (standby CC on failover, main CC on
//!   failback);
//! - XiVO not active (reports standby/off/failed, or unreachable for `failures` checks) → stop them in
//!   reverse, mode `standby` (main CC on failover, standby CC on failback);
//! - each switch raises an `info` alarm telling operators where users must reconnect: the product's
//!   "manual action", since a CC's users are logged in to one CC address (FQDN) in their browser.
//!   Only moves that happened do: a CC that starts its services when nobody served before (its very
//!   first start beside an active XiVO) raises none, since no user was logged in elsewhere.
//! - a XiVO whose daemon just restarted reports STARTING for one interval: not known, the CC keeps
//!   what it does. A restart of this CC's own daemon resumes its mode with its services running
//!   (`vigil_sdk::restart`).
//!
//! `docs/plugins/xivo-cc.md` has the parameters and the mapping to the product.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use vigil_sdk::prelude::*;
use vigil_sdk::Service;

/// The policy file's `[params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The watched id of this CC's XiVO; default: the first `[[watch]]`.
    #[serde(default)]
    xivo: Option<String>,
    /// Consecutive unanswered checks before an unreachable XiVO counts as inactive; default: the node's
    /// `[heartbeat] failures`. A XiVO that answers with its mode is believed at once.
    #[serde(default)]
    failures: Option<u32>,
    /// The other CC's address as users type it (FQDN or URL), for the reconnect notice.
    other_cc_address: String,
    /// This CC's own address as users type it, for the notice when it takes over; optional.
    #[serde(default)]
    own_address: Option<String>,
    /// CC service names in start order (stopped in reverse). Declared services not listed follow in
    /// the policy's order.
    #[serde(default)]
    services: Vec<String>,
}

const MAX_COUNT: u32 = 1000;

/// What the plugin remembers between ticks.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct State {
    /// Configuration warnings already raised (each once).
    warned: BTreeSet<String>,
    /// This CC saw its XiVO not active while it was not serving itself: the other CC held the role,
    /// so its users must reconnect when this CC takes over. False after this CC took over.
    other_held: bool,
}

/// The XiVO as this CC sees it in this check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Xivo {
    /// It answers and reports ACTIVE: it runs the telephony.
    Active,
    /// It answers in another mode, or has been unreachable long enough: it does not.
    Inactive(String),
    /// Not enough evidence yet (briefly unreachable, or no report): keep what we do.
    Unknown(String),
}

/// How the XiVO looks now. Unreachable is debounced by `failures`; a reported mode is the XiVO's own
/// word and needs no debounce.
fn classify(xivo: Option<&Remote>, failures: u32) -> Xivo {
    let Some(x) = xivo else { return Xivo::Unknown("no XiVO to watch ([[watch]] missing)".into()) };
    if !x.reachable {
        let n = x.consecutive_failures;
        return if n >= failures {
            Xivo::Inactive(format!("XiVO {} unreachable {}/{failures} checks", x.id, failures))
        } else {
            Xivo::Unknown(format!("XiVO {} unreachable {n}/{failures} checks", x.id))
        };
    }
    match x.report.as_ref().map(|r| r.mode) {
        Some(Mode::Active) => Xivo::Active,
        // Its daemon just (re)started and has not decided yet: not known.
        Some(Mode::Starting) => Xivo::Unknown(format!("XiVO {} is STARTING (its daemon restarted)", x.id)),
        Some(other) => Xivo::Inactive(format!("XiVO {} reports {}", x.id, mode_word(other))),
        None => Xivo::Unknown(format!("XiVO {} answers without a mode (watch its vigil /role)", x.id)),
    }
}

/// XiVO active, CC not: start the CC services and, when the other CC held the role, tell its users
/// to come here.
fn take_over(tick: &Tick, params: &Params, order: &[&Service], xivo: &str, other_held: bool) -> Decision {
    let here = params.own_address.as_deref().map(|a| format!(" at {a}")).unwrap_or_default();
    let mut d = Decision::to(
        Mode::Active,
        format!("XiVO {xivo} is ACTIVE: starting CC services on this node ({}): {}", tick.node.id, names(order)),
    );
    for s in order {
        d = d.start(&s.name);
    }
    if !other_held {
        return d.and_because("no CC served before: nobody must reconnect");
    }
    d.alarm(
        Level::Info,
        format!(
            "CC services started on {} because XiVO {xivo} is ACTIVE: users logged in to the other CC ({}) must reconnect to this CC{here}",
            tick.node.id, params.other_cc_address
        ),
    )
}

/// XiVO inactive, CC active: stop the CC services and tell the users to reconnect to the other CC.
fn hand_back(tick: &Tick, params: &Params, order: &[&Service], why: &str) -> Decision {
    let mut d = Decision::to(Mode::Standby, format!("{why}: stopping CC services on this node ({}), STANDBY", tick.node.id));
    for s in order.iter().rev() {
        d = d.stop(&s.name);
    }
    d.alarm(
        Level::Info,
        format!("CC services stopped on {} ({why}): users must reconnect to the other CC at {}", tick.node.id, params.other_cc_address),
    )
}

fn names(order: &[&Service]) -> String {
    order.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Keep the services in line with the mode: a CC service that stopped while active is started again,
/// one left running while standby (a daemon restart) is stopped. Not while actions are in flight.
fn hygiene(tick: &Tick, order: &[&Service], mut d: Decision) -> Decision {
    if tick.pending_actions > 0 {
        return d;
    }
    if tick.node.mode == Mode::Active {
        for s in order.iter().filter(|s| s.state == ServiceState::Stopped) {
            d = d.start(&s.name).and_because(&format!("{} stopped while ACTIVE, starting it", s.name));
        }
    } else {
        for s in order.iter().rev().filter(|s| s.state == ServiceState::Running) {
            d = d.stop(&s.name).and_because(&format!("{} left running while STANDBY, stopping it", s.name));
        }
    }
    d
}

struct XivoCc;

impl Policy for XivoCc {
    type Params = Params;
    type State = State;

    fn validate(p: &Params) -> Result<(), String> {
        if let Some(v) = p.failures {
            if !(1..=MAX_COUNT).contains(&v) {
                return Err(format!("failures: expected a count from 1 to {MAX_COUNT}, got {v}"));
            }
        }
        if p.other_cc_address.trim().is_empty() {
            return Err("other_cc_address: expected the other CC's address as users type it, e.g. cc-standby.example.com".into());
        }
        check_names("services", &p.services)
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        let (order, unknown) = tick.services_in_order(&params.services);
        let failures = params.failures.unwrap_or(tick.heartbeat.failures).max(1);
        let watched = match &params.xivo {
            Some(id) => tick.watched_node(id),
            None => tick.watched.first(),
        };
        let id = watched.map(|x| x.id.clone()).unwrap_or_else(|| params.xivo.clone().unwrap_or_default());
        let active = tick.node.mode == Mode::Active;
        let xivo = classify(watched, failures);
        let other_held = state.other_held;
        match &xivo {
            Xivo::Inactive(_) => state.other_held = true,
            Xivo::Active if !active => state.other_held = false,
            _ => {}
        }
        let mut d = match xivo {
            Xivo::Active if !active => take_over(tick, params, &order, &id, other_held),
            Xivo::Inactive(why) if active => hand_back(tick, params, &order, &why),
            Xivo::Active => hygiene(tick, &order, Decision::because(format!("ACTIVE: XiVO {id} is ACTIVE"))),
            Xivo::Inactive(why) => hygiene(tick, &order, Decision::because(format!("STANDBY: {why}"))),
            Xivo::Unknown(why) => hygiene(tick, &order, Decision::because(format!("{}: {why}; keeping the CC as it is", mode_word(tick.node.mode)))),
        };
        if let Some(op) = tick.operator {
            // The CC mirrors its XiVO: switching the CC alone would send agents to a CC whose
            // telephony is elsewhere. Switch the XiVO instead; the CC follows.
            let op = match op {
                OperatorRequest::Standby => "standby",
                OperatorRequest::Active => "active",
                OperatorRequest::Restore => "restore",
                OperatorRequest::RestartHa => "restart-ha",
                OperatorRequest::PlannedReboot => "planned-reboot",
            };
            d = d.and_because(&format!("operator request {op} ignored: a CC follows its XiVO, switch the XiVO instead"));
        }
        if !tick.services.is_empty() {
            for name in unknown {
                if state.warned.insert(format!("services:{name}")) {
                    d = d.alarm(Level::Warn, format!("params.services names {name:?}, which the policy does not declare under [services]; ignored"));
                }
            }
        }
        if watched.is_none() && !tick.watched.is_empty() && state.warned.insert("xivo".into()) {
            d = d.alarm(Level::Warn, format!("params.xivo is {id:?} but the node configuration has no such [[watch]]: this CC follows nothing"));
        }
        d
    }
}

vigil_sdk::export_policy!(XivoCc);
