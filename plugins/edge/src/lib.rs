//! edge: one Edge relay in front of a main and a standby stack (deployments.md §5, seed `003_…` "Edge
//! Deployment").
//!
//! The Edge watches both stacks (two `[[watch]]` entries: their vigil `/role`, an HTTP health URL, or
//! a TCP port) and keeps client traffic on one of them with `route` actions, which the host executes
//! with its built-in TCP relay and/or a route hook (`[relay]` in the policy). Clients keep the Edge's
//! address; new connections reach the new target.
//!
//! - on main, main failed `failures` consecutive checks and standby answers now → route to standby;
//! - on standby, standby failed `failures` checks and main answers now → route back to main;
//! - with `return_to_main`, on standby, main healthy `successes` consecutive checks → route back to main
//!   even though standby still works (otherwise the product's rule: only when standby fails);
//! - both down: stay where we are (moving cannot help) and raise one alarm;
//! - a route that did not take (failed hook) is asked again on the next tick.
//!
//! The Edge node itself is `active` (it serves). `docs/plugins/edge.md` maps this to the product.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vigil_sdk::prelude::*;

/// The policy file's `[params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The id of the main stack: both its `[[watch]]` id and its `[relay] targets` id.
    #[serde(default = "default_main")]
    main: String,
    /// The id of the standby stack (watch id and relay target id).
    #[serde(default = "default_standby")]
    standby: String,
    /// Consecutive failed checks of the stack in use before traffic moves; default: the node's
    /// `[heartbeat] failures`.
    #[serde(default)]
    failures: Option<u32>,
    /// Consecutive good checks of main before traffic returns with `return_to_main`; default: the
    /// node's `[heartbeat] successes`.
    #[serde(default)]
    successes: Option<u32>,
    /// Return to main as soon as it has been healthy `successes` checks, without waiting for standby
    /// to fail.
    #[serde(default)]
    return_to_main: bool,
}

fn default_main() -> String {
    "main".into()
}

fn default_standby() -> String {
    "standby".into()
}

const MAX_COUNT: u32 = 1000;

/// What the plugin remembers between ticks.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct State {
    /// Per stack: consecutive failed checks (unreachable, or reporting off/failed).
    down: BTreeMap<String, u32>,
    /// Per stack: consecutive good checks.
    up: BTreeMap<String, u32>,
    /// The target of the last successful route, for a host without a relay view (`tick.route` unset).
    routed: Option<String>,
    /// Both stacks down: the alarm was raised (once per outage).
    both_down_alarm: bool,
}

/// One check of a stack: it answers, and if it is a vigil it does not report off or failed (such a
/// stack serves nobody).
fn check_ok(r: &Remote) -> bool {
    r.reachable && !matches!(r.report.as_ref().map(|r| r.mode), Some(Mode::Off | Mode::Failed))
}

/// Advance the per-stack streaks. A stack that is not watched at all counts as down: the Edge cannot
/// know it works.
fn observe(tick: &Tick, ids: [&str; 2], state: &mut State) {
    for id in ids {
        let ok = tick.watched_node(id).is_some_and(check_ok);
        let down = state.down.entry(id.to_string()).or_default();
        let up = state.up.entry(id.to_string()).or_default();
        (*down, *up) = if ok { (0, *up + 1) } else { (*down + 1, 0) };
    }
}

/// Take the results of our route actions: a success confirms the target when the host has no relay
/// view.
fn record_results(tick: &Tick, state: &mut State) {
    for r in &tick.results {
        if let (Action::Route(target), true) = (&r.action, r.ok) {
            state.routed = Some(target.clone());
        }
    }
}

/// `main failed 3/3 checks`, `main ok 2/3 checks`
fn describe(id: &str, state: &State, limit: u32) -> String {
    let down = state.down.get(id).copied().unwrap_or(0);
    let up = state.up.get(id).copied().unwrap_or(0);
    if down > 0 {
        format!("{id} failed {}/{limit} checks", down.min(limit))
    } else {
        format!("{id} ok {up} checks")
    }
}

struct Edge;

impl Policy for Edge {
    type Params = Params;
    type State = State;

    fn validate(p: &Params) -> Result<(), String> {
        for (name, value) in [("failures", p.failures), ("successes", p.successes)] {
            if let Some(v) = value {
                if !(1..=MAX_COUNT).contains(&v) {
                    return Err(format!("{name}: expected a count from 1 to {MAX_COUNT}, got {v}"));
                }
            }
        }
        if p.main.trim().is_empty() || p.standby.trim().is_empty() || p.main == p.standby {
            return Err(format!("main/standby: expected two different ids, got {:?} and {:?}", p.main, p.standby));
        }
        Ok(())
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        let (main, standby) = (params.main.as_str(), params.standby.as_str());
        let failures = params.failures.unwrap_or(tick.heartbeat.failures).max(1);
        let successes = params.successes.unwrap_or(tick.heartbeat.successes).max(1);
        observe(tick, [main, standby], state);
        record_results(tick, state);

        let current = tick.route.clone().or_else(|| state.routed.clone()).unwrap_or_else(|| main.to_string());
        let down = |id: &str| state.down.get(id).copied().unwrap_or(0);
        let up = |id: &str| state.up.get(id).copied().unwrap_or(0);
        let counts = format!("{}, {}", describe(main, state, failures), describe(standby, state, failures));

        // The Edge serves whatever happens to the stacks behind it.
        let mut d = if tick.node.mode != Mode::Active {
            Decision::to(Mode::Active, format!("Edge relays client traffic, to {current} now"))
        } else {
            Decision::keep()
        };
        let to = |d: Decision, target: &str, why: String| d.and_because(&format!("{why}: routing new connections to {target}")).then(Action::Route(target.to_string()));

        // A route already asked is still running: its effect shows on a later tick.
        if tick.pending_actions > 0 {
            return d.and_because(&format!("traffic to {current}; {counts}; route change in progress"));
        }
        let both_down = down(main) > 0 && down(standby) > 0;
        if !both_down {
            state.both_down_alarm = false;
        }
        d = if current == standby {
            if down(standby) >= failures && up(main) > 0 {
                to(d, main, format!("{counts}: standby not working"))
            } else if params.return_to_main && up(main) >= successes {
                to(d, main, format!("{main} healthy {successes}/{successes} checks (return_to_main)"))
            } else {
                d.and_because(&format!("traffic to {standby}; {counts}"))
            }
        } else if current == main {
            if down(main) >= failures && up(standby) > 0 {
                to(d, standby, format!("{counts}: main not working"))
            } else {
                d.and_because(&format!("traffic to {main}; {counts}"))
            }
        } else if up(main) > 0 {
            // A target this policy does not know (a renamed relay target): put traffic back on main.
            to(d, main, format!("traffic goes to {current:?}, which is neither {main} nor {standby}"))
        } else {
            d.and_because(&format!("traffic to {current:?}; {counts}"))
        };
        if both_down && down(main) >= failures && down(standby) >= failures && !state.both_down_alarm {
            state.both_down_alarm = true;
            d = d.alarm(Level::Error, format!("neither {main} nor {standby} works ({counts}): traffic stays on {current}"));
        }
        d
    }
}

vigil_sdk::export_policy!(Edge);
