//! xds: media server (MDS) registrations of a XiVO in an XDS deployment (deployments.md §4, seed
//! `003_…` "XDS Deployment").
//!
//! In XDS the media servers send their calls to the XiVO they are registered with. The product: "when
//! the standby takes over the telephony service, it registers to the other MDS; when the main is back
//! again, it registers to the other MDS". This plugin does that for one XiVO: it watches the XiVO's
//! role (a `[[watch]]` on its vigil) and
//!
//! - when the XiVO becomes ACTIVE, runs the `register` hook once per configured MDS;
//! - when it stops being active (and an `unregister` hook is configured), runs that once per MDS this
//!   node knows it registered (its state remembers): a node that never registered (a standby-side
//!   node at its first start) unregisters nothing;
//! - a hook that failed (its result arrives on a later tick) is run again for that MDS only, every
//!   tick, until it succeeds; MDSs already done are not touched again.
//!
//! One xds node runs beside each XiVO: the standby's registers on failover, the main's on failback, so
//! registrations move back without a manual step. The node's own mode mirrors its XiVO's. A XiVO whose
//! daemon just restarted reports STARTING for one interval: not known, nothing changes.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use vigil_sdk::prelude::*;

/// The policy file's `[params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The watched id of the XiVO; default: the first `[[watch]]`.
    #[serde(default)]
    xivo: Option<String>,
    /// The media servers, each passed as `{0}` to the hooks.
    mds: Vec<String>,
    /// The hook that registers the XiVO to one MDS.
    #[serde(default = "default_register")]
    register_hook: String,
    /// The hook that withdraws a registration when the XiVO stops being active; none by default (the
    /// other XiVO's registration replaces it).
    #[serde(default)]
    unregister_hook: Option<String>,
    /// Consecutive unanswered checks before an unreachable XiVO counts as inactive; default: the node's
    /// `[heartbeat] failures`.
    #[serde(default)]
    failures: Option<u32>,
}

fn default_register() -> String {
    "register-mds".into()
}

const MAX_COUNT: u32 = 1000;

/// What the registrations should be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Goal {
    /// Nothing asked yet (first ticks, XiVO not known).
    #[default]
    None,
    /// Registered to every MDS (the XiVO is active).
    Registered,
    /// Unregistered from every MDS (the XiVO is not active).
    Unregistered,
}

/// What the plugin remembers between ticks.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct State {
    goal: Goal,
    /// MDSs for which the goal's hook succeeded.
    done: BTreeSet<String>,
    /// Failed attempts per MDS for the current goal.
    failed: BTreeMap<String, u32>,
    /// MDSs this node ran its register hook for (succeeded, or whose result never came: a daemon
    /// killed meanwhile), and no unregister succeeded since: the only ones an unregister is run for.
    registered: BTreeSet<String>,
}

/// The XiVO as seen in this check: `Some(true)` active, `Some(false)` not, `None` not known yet.
fn xivo_active(x: Option<&Remote>, failures: u32) -> (Option<bool>, String) {
    let Some(x) = x else { return (None, "no XiVO to watch ([[watch]] missing)".into()) };
    if !x.reachable {
        let n = x.consecutive_failures;
        let known = (n >= failures).then_some(false);
        return (known, format!("XiVO {} unreachable {}/{failures} checks", x.id, n.min(failures)));
    }
    match x.report.as_ref().map(|r| r.mode) {
        Some(Mode::Active) => (Some(true), format!("XiVO {} ACTIVE", x.id)),
        // Its daemon just (re)started and has not decided: not known, keep the registrations.
        Some(Mode::Starting) => (None, format!("XiVO {} STARTING", x.id)),
        Some(_) => (Some(false), format!("XiVO {} not active", x.id)),
        None => (None, format!("XiVO {} answers without a mode", x.id)),
    }
}

/// The hook the goal runs per MDS, if any.
fn hook_of(params: &Params, goal: Goal) -> Option<&str> {
    match goal {
        Goal::Registered => Some(&params.register_hook),
        Goal::Unregistered => params.unregister_hook.as_deref(),
        Goal::None => None,
    }
}

/// Take the results of the hooks of the current goal: successes are done, failures counted (and run
/// again below). Results of an earlier goal's hooks are ignored: the goal changed since.
fn record_results(params: &Params, tick: &Tick, state: &mut State) {
    let Some(hook) = hook_of(params, state.goal) else { return };
    for r in &tick.results {
        let Action::Hook(call) = &r.action else { continue };
        let Some(mds) = call.args.first() else { continue };
        if call.name != hook || !params.mds.contains(mds) {
            continue;
        }
        if r.ok {
            if state.goal == Goal::Unregistered {
                state.registered.remove(mds);
            }
            state.done.insert(mds.clone());
            state.failed.remove(mds);
        } else {
            *state.failed.entry(mds.clone()).or_default() += 1;
        }
    }
}

/// `registered to 2/3 MDS (mds-3 failed 2 times, retrying)`
fn progress(params: &Params, state: &State) -> String {
    let verb = match state.goal {
        Goal::Registered => "registered to",
        _ => "unregistered from",
    };
    let mut text = format!("{verb} {}/{} MDS", state.done.len(), params.mds.len());
    let failing: Vec<String> = state.failed.iter().map(|(m, n)| format!("{m} failed {n} time{}", if *n == 1 { "" } else { "s" })).collect();
    if !failing.is_empty() {
        text.push_str(&format!(" ({}, retrying)", failing.join(", ")));
    }
    text
}

struct Xds;

impl Policy for Xds {
    type Params = Params;
    type State = State;

    fn validate(p: &Params) -> Result<(), String> {
        if p.mds.is_empty() {
            return Err("mds: expected at least one media server, e.g. mds = [\"mds1\", \"mds2\"]".into());
        }
        check_names("mds", &p.mds)?;
        if p.register_hook.trim().is_empty() || p.unregister_hook.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return Err("register_hook/unregister_hook: expected a hook name declared under [hooks]".into());
        }
        if let Some(v) = p.failures {
            if !(1..=MAX_COUNT).contains(&v) {
                return Err(format!("failures: expected a count from 1 to {MAX_COUNT}, got {v}"));
            }
        }
        Ok(())
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        let failures = params.failures.unwrap_or(tick.heartbeat.failures).max(1);
        let watched = match &params.xivo {
            Some(id) => tick.watched_node(id),
            None => tick.watched.first(),
        };
        let (active, seen) = xivo_active(watched, failures);
        if state.goal == Goal::Registered && state.registered.is_empty() {
            // A state written before `registered` existed: what was done is what is registered.
            state.registered = state.done.clone();
        }
        record_results(params, tick, state);

        // A new goal starts from scratch: every MDS gets the new hook once.
        let goal = match active {
            Some(true) => Goal::Registered,
            Some(false) => Goal::Unregistered,
            None => state.goal,
        };
        let switched = goal != state.goal;
        if switched {
            let registered = std::mem::take(&mut state.registered);
            // Unregistering: only what this node knows it registered; the rest is done already.
            let done = match goal {
                Goal::Unregistered => params.mds.iter().filter(|m| !registered.contains(*m)).cloned().collect(),
                _ => BTreeSet::new(),
            };
            *state = State { goal, done, registered, ..State::default() };
        }
        let mode = match goal {
            Goal::Registered => Mode::Active,
            _ => Mode::Standby,
        };
        let mut d = if tick.node.mode != mode {
            Decision::to(mode, format!("{seen}: this node follows, {}", word(mode)))
        } else {
            Decision::because(seen)
        };
        let Some(hook) = hook_of(params, goal) else { return d };
        // While our own hooks run, their results are not in yet: running them again would register twice.
        if tick.pending_actions > 0 {
            return d.and_because(&progress(params, state));
        }
        let todo: Vec<&String> = params.mds.iter().filter(|m| !state.done.contains(*m)).collect();
        if todo.is_empty() {
            return d.and_because(&progress(params, state));
        }
        let verb = if switched { "running" } else { "retrying" };
        d = d.and_because(&format!("{}; {verb} {hook} for {}", progress(params, state), todo.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")));
        for m in todo {
            if goal == Goal::Registered {
                state.registered.insert(m.clone());
            }
            d = d.hook(hook, &[m]);
        }
        d
    }
}

fn word(mode: Mode) -> &'static str {
    match mode {
        Mode::Active => "ACTIVE",
        _ => "STANDBY",
    }
}

vigil_sdk::export_policy!(Xds);
