//! Scenario replay: golden timelines that prove a policy's behaviour (`vigil policy test`).
//!
//! A scenario is a TOML file: a starting world (`[tick]`, any fields of a tick) and steps. Each step is
//! one heartbeat interval: the runner advances the clock, applies the step's `set` (a partial tick,
//! merged into the previous one; list entries with an `id` or `name` merge with the entry of the same
//! id), does the bookkeeping the host would do, asks the plugin to decide, applies the decision, and
//! compares it with the step's `expect`.
//!
//! The bookkeeping mirrors the node runtime so that scenarios stay short:
//! - every remote's and check's consecutive counters advance from its `reachable`/`ok` flag, unless
//!   the step sets the counters itself; a reachable remote was last seen 0 ms ago, unless the step
//!   sets `last_seen_ago_ms`;
//! - the VIP view counts whether the VIP `reaches` this node;
//! - operator requests and peer commands are delivered once;
//! - a step's `unset` (dotted paths) sets fields back to their default after its `set`: TOML has no
//!   null, so this is how an optional field becomes `none` again (`unset = ["arbiter.holder"]`);
//! - the previous decision's actions are executed in simulation: they succeed (services start and
//!   stop, routes move) unless listed in `[simulate] fail`, and their results arrive on the next tick;
//! - a node in `starting` (a daemon's first tick; with `node.restart` after a restart) leaves it on its
//!   first decision: the decided mode, or `standby` when the decision keeps it; a decision resuming
//!   `restart.mode` keeps `restart.mode_since_ms`; `restart` is shown only while starting.
//!
//! ```toml
//! description = "the standby takes over after three lost heartbeats"
//!
//! [tick]
//! node = { id = "b", configured_role = "secondary", mode = "standby" }
//! heartbeat = { interval_ms = 1000, failures = 3, successes = 3 }
//! peers = [{ id = "a", reachable = true, report = { mode = "active" } }]
//!
//! [[step]]
//! set = { peers = [{ id = "a", reachable = false }] }
//! repeat = 2
//! expect = { mode = "standby", actions = [] }
//!
//! [[step]]
//! expect = { mode = "active", actions = ["start:app", "command:a:go-standby"], reason = "lost" }
//! ```

use crate::model::{Action, ActionResult, Check, Decision, Mode, Remote, ServiceState, Tick};
use crate::policy::{Fault, LoadedPolicy};
use crate::toml_file::{self, TomlError};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A parsed scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub path: PathBuf,
    pub description: String,
    start: Tick,
    steps: Vec<(usize, Step)>,
    simulate: Simulate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    tick: Tick,
    #[serde(default)]
    simulate: Simulate,
    #[serde(default)]
    step: Vec<toml::Spanned<Step>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Simulate {
    /// Actions (in text form) that fail when executed in simulation.
    fail: Vec<Action>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Step {
    /// Shown in the timeline.
    note: String,
    /// Milliseconds since the previous tick; the heartbeat interval by default.
    advance_ms: Option<u64>,
    /// A partial tick merged into the previous one.
    set: toml::Table,
    /// Dotted paths of tick fields set back to their default after `set` (TOML has no null: this is
    /// how an optional field becomes `none` again, e.g. `unset = ["arbiter.holder"]`).
    unset: Vec<String>,
    /// Run this step this many times (the expectations are checked on the last).
    repeat: Option<u32>,
    expect: Expect,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Expect {
    /// The node's mode after the decision.
    mode: Option<Mode>,
    /// Exactly these actions, in this order.
    actions: Option<Vec<Action>>,
    /// These actions among others, in this relative order.
    actions_include: Option<Vec<Action>>,
    /// None of these actions.
    actions_exclude: Option<Vec<Action>>,
    /// A substring of the reason.
    reason: Option<String>,
    /// Whether the plugin faults on this tick.
    fault: Option<bool>,
    /// A subset of the decision's state, read as JSON.
    state: Option<toml::Table>,
}

impl Scenario {
    /// Read and check a scenario file.
    pub fn read(path: &Path) -> Result<Scenario, TomlError> {
        Self::parse(path, &toml_file::read_text(path)?)
    }

    /// Parse and check the text of the scenario file at `path` (named in errors). Touches no file.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, TomlError> {
        let file: ScenarioFile = toml_file::parse(path, text)?;
        let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        if file.step.is_empty() {
            return Err(TomlError::at(path, "step", "expected at least one [[step]]"));
        }
        let steps = file
            .step
            .into_iter()
            .map(|s| {
                let l = line(s.span().start);
                (l, s.into_inner())
            })
            .collect::<Vec<_>>();
        for (l, step) in &steps {
            if step.repeat == Some(0) {
                return Err(TomlError { line: Some(*l), ..TomlError::at(path, "step.repeat", "expected at least 1") });
            }
        }
        Ok(Scenario { path: path.to_path_buf(), description: file.description, start: file.tick, steps, simulate: file.simulate })
    }
}

/// The result of replaying one scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The timeline, one line per tick, with mismatches under the tick they concern.
    pub timeline: String,
    /// How many expectations failed.
    pub mismatches: usize,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.mismatches == 0
    }
}

/// Replay `scenario` through `policy`.
pub fn run(policy: &LoadedPolicy, scenario: &Scenario) -> Result<Outcome, TomlError> {
    let mut out = String::new();
    let mut mismatches = 0;
    let mut tick = scenario.start.clone();
    let t0 = tick.now_ms;
    let mut last: Option<Decision> = None;
    // As on a live node: commands may name pair peers only.
    let peers: Vec<String> = tick.peers.iter().map(|r| r.id.clone()).collect();

    let mut number = 0;
    for (line, step) in &scenario.steps {
        let repeat = step.repeat.unwrap_or(1);
        for round in 1..=repeat {
            number += 1;
            let advance = step.advance_ms.unwrap_or(u64::from(tick.heartbeat.interval_ms));
            tick = next_tick(&tick, number == 1, last.as_ref(), step, advance, &scenario.simulate)
                .map_err(|e| TomlError { line: Some(*line), ..TomlError::at(&scenario.path, "step.set", e) })?;
            let before = tick.node.mode;
            let result = policy.decide(&tick, &peers);
            let _ = write!(out, "  #{number:<3} t+{:<7} ", format!("{}ms", tick.now_ms - t0));
            let decision = match &result {
                Ok(d) => {
                    let after = host_mode(d.mode.unwrap_or(before));
                    let modes = if after == before { format!("{before}") } else { format!("{before} → {after}") };
                    let actions: Vec<String> = d.actions.iter().map(ToString::to_string).collect();
                    let _ = write!(out, "{modes:<22} [{}]", actions.join(", "));
                    if !d.reason.is_empty() {
                        let _ = write!(out, "  \"{}\"", d.reason);
                    }
                    Some(d.clone())
                }
                Err(fault) => {
                    let _ = write!(out, "{before:<22} FAULT: {fault}");
                    None
                }
            };
            if !step.note.is_empty() && round == 1 {
                let _ = write!(out, "  — {}", step.note);
            }
            out.push('\n');
            if round == repeat {
                for problem in compare(&step.expect, &result, before) {
                    mismatches += 1;
                    let _ = writeln!(out, "       ✗ line {line}: {problem}");
                }
            }
            apply_decision(&mut tick, decision.as_ref());
            last = decision;
        }
    }
    Ok(Outcome { timeline: out, mismatches })
}

/// Apply a decision as the node would; a fault (`None`) holds everything (but `starting`).
pub(crate) fn apply_decision(tick: &mut Tick, decision: Option<&Decision>) {
    let to = host_mode(decision.and_then(|d| d.mode).unwrap_or(tick.node.mode));
    if to != tick.node.mode {
        tick.node.mode_since_ms = match &tick.node.restart {
            Some(r) if tick.node.mode == Mode::Starting && r.mode == to => r.mode_since_ms,
            _ => tick.now_ms,
        };
        tick.node.mode = to;
    }
    tick.node.restart = None;
    if let Some(d) = decision {
        tick.state = d.state.clone();
    }
}

/// The tick a step with `set` and `advance_ms` makes after `prev` (the tick with the previous
/// `decision` applied; `first` for a scenario's first step): what the flight recorder's export
/// checks its steps with.
pub(crate) fn step_tick(prev: &Tick, first: bool, decision: Option<&Decision>, set: &toml::Table, advance_ms: u64) -> Result<Tick, String> {
    let step = Step { set: set.clone(), ..Step::default() };
    next_tick(prev, first, decision, &step, advance_ms, &Simulate::default())
}

/// The tick after `prev`: time advanced, step applied, counters and simulated results updated.
fn next_tick(prev: &Tick, first: bool, decision: Option<&Decision>, step: &Step, advance: u64, simulate: &Simulate) -> Result<Tick, String> {
    let mut tick = prev.clone();
    tick.now_ms += advance;
    if !first {
        tick.node.tick_count += 1;
    }
    // One-shot inputs are delivered once.
    tick.operator = None;
    tick.commands.clear();
    tick.results.clear();

    if let Some(d) = decision {
        for action in &d.actions {
            let ok = !simulate.fail.contains(action);
            if ok {
                match action {
                    Action::Start(s) | Action::Restart(s) => set_service(&mut tick, s, ServiceState::Running),
                    Action::Stop(s) => set_service(&mut tick, s, ServiceState::Stopped),
                    Action::Route(target) => tick.route = Some(target.clone()),
                    _ => {}
                }
            }
            tick.results.push(ActionResult {
                action: action.clone(),
                ok,
                message: if ok { "simulated".into() } else { "simulated failure".into() },
                finished_ms: tick.now_ms,
                duration_ms: 0,
            });
        }
    }

    let patch = serde_json::to_value(&step.set).map_err(|e| e.to_string())?;
    if !step.set.is_empty() || !step.unset.is_empty() {
        let mut value = serde_json::to_value(&tick).map_err(|e| e.to_string())?;
        merge(&mut value, &patch);
        for path in &step.unset {
            unset(&mut value, path)?;
        }
        tick = serde_json::from_value(value).map_err(|e| format!("set: {e}"))?;
    }
    advance_counters(&mut tick, &patch);
    Ok(tick)
}

fn set_service(tick: &mut Tick, name: &str, state: ServiceState) {
    if let Some(s) = tick.services.iter_mut().find(|s| s.name == name) {
        s.state = state;
    }
}

/// Remove the field at the dotted `path`, so that it reads as its default. A missing field is already
/// its default; a path through something that is not a table is an error naming it.
fn unset(value: &mut Value, path: &str) -> Result<(), String> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().filter(|l| !l.is_empty()).ok_or_else(|| format!("unset: {path:?} is not a field path"))?;
    let mut v = value;
    for (i, part) in parts.iter().enumerate() {
        match v.get_mut(*part) {
            Some(next) if next.is_object() => v = next,
            Some(next) if next.is_null() => return Ok(()),
            Some(_) => return Err(format!("unset: {path:?}: {} is not a table", parts[..=i].join("."))),
            None => return Ok(()),
        }
    }
    match v.as_object_mut() {
        Some(o) => {
            o.remove(last);
            Ok(())
        }
        None => Err(format!("unset: {path:?} is not a field path")),
    }
}

/// JSON merge where lists of objects with an `id` or `name` merge entry by entry.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) if !existing.is_null() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p)) if p.iter().all(|e| key_of(e).is_some()) && !p.is_empty() => {
            for entry in p {
                match b.iter_mut().find(|e| key_of(e) == key_of(entry)) {
                    Some(existing) => merge(existing, entry),
                    None => b.push(entry.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn key_of(v: &Value) -> Option<(&'static str, &Value)> {
    let o = v.as_object()?;
    o.get("id").map(|k| ("id", k)).or_else(|| o.get("name").map(|k| ("name", k)))
}

/// Whether the patch sets a counter of the list entry `key` in `list` itself.
fn patched_counters(patch: &Value, path: &[&str], key: Option<&str>) -> bool {
    let mut v = patch;
    for p in path {
        match v.get(p) {
            Some(next) => v = next,
            None => return false,
        }
    }
    let entry = match (v, key) {
        (Value::Array(items), Some(key)) => items.iter().find(|e| key_of(e).is_some_and(|(_, k)| k == key)),
        (other, None) => Some(other),
        _ => None,
    };
    entry.is_some_and(|e| {
        e.get("consecutive_failures").is_some()
            || e.get("consecutive_successes").is_some()
            || e.get("consecutive_self").is_some()
            || e.get("consecutive_other").is_some()
    })
}

fn advance_counters(tick: &mut Tick, patch: &Value) {
    let advance_checks = |checks: &mut Vec<Check>, path: &[&str], patch: &Value| {
        for c in checks.iter_mut() {
            if !patched_counters(patch, path, Some(&c.name)) {
                let ok = c.ok;
                c.record(ok);
            }
        }
    };
    for (list, field) in [(&mut tick.peers, "peers"), (&mut tick.watched, "watched")] {
        for r in list.iter_mut() {
            advance_remote(r, patch.get(field).and_then(|v| find_entry(v, &r.id)));
        }
    }
    advance_checks(&mut tick.monitors, &["monitors"], patch);
    if let Some(lan) = tick.lan.as_mut() {
        if !patched_counters(patch, &["lan"], None) {
            let ok = lan.ok;
            lan.record(ok);
        }
    }
    let id = tick.node.id.clone();
    if let Some(vip) = tick.vip.as_mut() {
        if !patched_counters(patch, &["vip"], None) {
            if vip.reaches.as_deref() == Some(id.as_str()) {
                vip.consecutive_self += 1;
                vip.consecutive_other = 0;
            } else {
                vip.consecutive_other += 1;
                vip.consecutive_self = 0;
            }
        }
    }
}

fn find_entry<'a>(list: &'a Value, key: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|e| key_of(e).is_some_and(|(_, k)| k == key))
}

fn advance_remote(r: &mut Remote, patch: Option<&Value>) {
    let own = patch.unwrap_or(&Value::Null);
    let set_counters = own.get("consecutive_failures").is_some() || own.get("consecutive_successes").is_some();
    // Paths drive reachability when the step did not say: reachable if any path is up.
    if !r.paths.is_empty() && own.get("reachable").is_none() && own.get("paths").is_some() {
        r.reachable = r.paths.iter().any(|p| p.ok);
    }
    if !set_counters {
        let reachable = r.reachable;
        r.record(reachable);
    }
    if own.get("last_seen_ago_ms").is_none() {
        r.last_seen_ago_ms = if r.reachable { Some(0) } else { r.last_seen_ago_ms };
    }
    for (checks, field) in [(&mut r.paths, "paths"), (&mut r.services, "services")] {
        for c in checks.iter_mut() {
            if !patched_counters(own, &[field], Some(&c.name)) {
                let ok = c.ok;
                c.record(ok);
            }
        }
    }
}

/// The mode the host gives a node after a decision: a first tick never leaves it `starting`.
fn host_mode(mode: Mode) -> Mode {
    if mode == Mode::Starting {
        Mode::Standby
    } else {
        mode
    }
}

fn compare(expect: &Expect, result: &Result<Decision, Fault>, before: Mode) -> Vec<String> {
    let mut problems = Vec::new();
    let faulted = result.is_err();
    match (expect.fault, result) {
        (Some(true), Ok(_)) => problems.push("expected a fault, the plugin decided normally".to_string()),
        (Some(false) | None, Err(fault)) => problems.push(format!("unexpected fault: {fault}")),
        _ => {}
    }
    if faulted {
        return problems;
    }
    let d = result.as_ref().expect("not faulted");
    if let Some(mode) = expect.mode {
        let got = host_mode(d.mode.unwrap_or(before));
        if got != mode {
            problems.push(format!("mode: expected {mode}, got {got}"));
        }
    }
    let show = |a: &[Action]| format!("[{}]", a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    if let Some(actions) = &expect.actions {
        if actions != &d.actions {
            problems.push(format!("actions: expected {}, got {}", show(actions), show(&d.actions)));
        }
    }
    if let Some(include) = &expect.actions_include {
        let mut rest = d.actions.iter();
        if !include.iter().all(|want| rest.any(|a| a == want)) {
            problems.push(format!("actions: expected to include {} in order, got {}", show(include), show(&d.actions)));
        }
    }
    if let Some(exclude) = &expect.actions_exclude {
        let found: Vec<Action> = d.actions.iter().filter(|a| exclude.contains(a)).cloned().collect();
        if !found.is_empty() {
            problems.push(format!("actions: expected none of {}, got {}", show(exclude), show(&found)));
        }
    }
    if let Some(reason) = &expect.reason {
        if !d.reason.contains(reason.as_str()) {
            problems.push(format!("reason: expected to contain {reason:?}, got {:?}", d.reason));
        }
    }
    if let Some(state) = &expect.state {
        let want = serde_json::to_value(state).unwrap_or_default();
        match serde_json::from_slice::<Value>(&d.state) {
            Ok(got) if is_subset(&want, &got) => {}
            Ok(got) => problems.push(format!("state: expected to contain {want}, got {got}")),
            Err(_) => problems.push(format!("state: expected JSON containing {want}, got {} bytes of something else", d.state.len())),
        }
    }
    problems
}

fn is_subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w.iter().all(|(k, v)| g.get(k).is_some_and(|gv| is_subset(v, gv))),
        (w, g) => w == g,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unset_returns_a_field_to_its_default() {
        let mut v = json!({"arbiter": {"holder": "a", "held": false}, "n": 1});
        unset(&mut v, "arbiter.holder").unwrap();
        unset(&mut v, "vip.reaches").unwrap();
        assert_eq!(v, json!({"arbiter": {"held": false}, "n": 1}));
        assert!(unset(&mut v, "n.x").unwrap_err().contains("n is not a table"));
        assert!(unset(&mut v, "arbiter.").is_err());
    }

    #[test]
    fn merge_by_id_and_replace_scalars() {
        let mut base = json!({"peers": [{"id": "a", "reachable": true, "x": 1}, {"id": "b", "reachable": true}], "n": 1});
        merge(&mut base, &json!({"peers": [{"id": "b", "reachable": false}, {"id": "c"}], "n": 2}));
        assert_eq!(
            base,
            json!({"peers": [{"id": "a", "reachable": true, "x": 1}, {"id": "b", "reachable": false}, {"id": "c"}], "n": 2})
        );
    }

    #[test]
    fn counters_advance_unless_set() {
        let mut tick = Tick { peers: vec![Remote { id: "a".into(), reachable: false, ..Remote::default() }], ..Tick::default() };
        advance_counters(&mut tick, &json!({}));
        advance_counters(&mut tick, &json!({}));
        assert_eq!(tick.peers[0].consecutive_failures, 2);
        advance_counters(&mut tick, &json!({"peers": [{"id": "a", "consecutive_failures": 7}]}));
        assert_eq!(tick.peers[0].consecutive_failures, 2, "explicit counters are left as set");
    }

    #[test]
    fn subset_matching() {
        assert!(is_subset(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!is_subset(&json!({"a": 2}), &json!({"a": 1})));
    }
}
