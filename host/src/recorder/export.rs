//! `vigil record`: a window of the recording, and its export as a scenario file.
//!
//! The export is exact: the scenario's `[tick]` is the first recorded tick, and each step sets what
//! differs between the tick the scenario runner would make (time advanced, counters counted, the
//! previous decision simulated) and the tick that was recorded, so that `vigil policy test` shows
//! the plugin the very ticks it saw. The recorded decisions are the expectations (mode, actions,
//! reason, or a fault). Each step is checked against the runner before the file is written: a tick
//! the format cannot express (a list entry that disappeared, a value that became empty) is an error
//! naming it, never a silently different scenario.

use super::{Record, ring::ReadReport};
use crate::model::{Decision, Tick};
use crate::scenario;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::path::Path;

/// Which recorded ticks to take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Ticks at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Ticks at or before this time.
    pub until_ms: Option<u64>,
    /// The tick at (or last before) this time, and this many ticks before and after it.
    pub around: Option<(u64, usize)>,
}

impl Window {
    /// The window of an admin query (`since`, `until` in ms; `around` an event's time, `ticks`).
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.since_ms {
            parts.push(format!("since={s}"));
        }
        if let Some(u) = self.until_ms {
            parts.push(format!("until={u}"));
        }
        if let Some((at, n)) = self.around {
            parts.push(format!("around_ms={at}&ticks={n}"));
        }
        parts.join("&")
    }

    /// Parse [`Window::query`]'s form; `around=EVENT_ID` is resolved by `event_time`.
    pub fn from_query(query: &str, event_time: impl Fn(u64) -> Option<u64>) -> Result<Window, String> {
        let mut w = Window::default();
        let (mut around, mut ticks, mut event) = (None, 10usize, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || value.parse::<u64>().map_err(|_| format!("{key}={value:?}: expected a number"));
            match key {
                "since" => w.since_ms = Some(number()?),
                "until" => w.until_ms = Some(number()?),
                "around_ms" => around = Some(number()?),
                "around" => event = Some(number()?),
                "ticks" => ticks = number()? as usize,
                _ => return Err(format!("{key}: unknown parameter (expected since, until, around, around_ms, ticks)")),
            }
        }
        if let Some(id) = event {
            around = Some(event_time(id).ok_or_else(|| format!("around={id}: no such event in the event log"))?);
        }
        w.around = around.map(|at| (at, ticks));
        Ok(w)
    }
}

/// The records of the ring in `dir` inside `window`, oldest first.
pub fn select(dir: &Path, window: &Window) -> Result<(Vec<Record>, ReadReport), String> {
    let in_range = |r: &Record| window.since_ms.is_none_or(|s| r.tick.now_ms >= s) && window.until_ms.is_none_or(|u| r.tick.now_ms <= u);
    let Some((at, n)) = window.around else {
        return super::read(dir, |r| Some(in_range(r)));
    };
    // The `n + 1` last ticks up to `at`, then `n` more.
    let mut before: VecDeque<Record> = VecDeque::new();
    let mut after = Vec::new();
    let (_, report) = super::read(dir, |r| {
        if !in_range(r) {
            return Some(false);
        }
        if r.tick.now_ms <= at {
            before.push_back(r.clone());
            if before.len() > n + 1 {
                before.pop_front();
            }
        } else if after.len() < n {
            after.push(r.clone());
        } else {
            return None;
        }
        Some(false)
    })?;
    let mut records: Vec<Record> = before.into();
    records.extend(after);
    Ok((records, report))
}

/// JSON lines: one record per line (`vigil record --records`, the admin API's answer).
pub fn to_lines(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&serde_json::to_string(r).expect("a record serializes"));
        out.push('\n');
    }
    out
}

/// Records from JSON lines; errors name the line.
pub fn from_lines(origin: &str, text: &str) -> Result<Vec<Record>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{origin}: line {}: not a flight recorder record: {e}", i + 1)))
        .collect()
}

fn time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).unwrap_or_else(|| ms.to_string())
}

/// The scenario file of `records` (one node's, one policy's, oldest first).
pub fn to_scenario(records: &[Record]) -> Result<String, String> {
    let first = records.first().ok_or("the window holds no recorded tick")?;
    for r in records {
        if r.node != first.node {
            return Err(format!("the recording mixes nodes {} and {}: export one node's recording", first.node, r.node));
        }
        if r.policy != first.policy {
            return Err(format!(
                "the policy changed at {} (plugin sha256 {} → {}, or its params): a scenario tests one policy; narrow the window with --since/--until",
                time(r.tick.now_ms),
                &first.policy.sha256[..12.min(first.policy.sha256.len())],
                &r.policy.sha256[..12.min(r.policy.sha256.len())]
            ));
        }
    }
    let mut steps = Vec::new();
    let mut base = first.tick.clone();
    let mut last: Option<&Decision> = None;
    for (i, r) in records.iter().enumerate() {
        let first_step = i == 0;
        let advance = if first_step { 0 } else { r.tick.now_ms.checked_sub(base.now_ms).ok_or_else(|| format!("tick at {}: time goes backwards", time(r.tick.now_ms)))? };
        let predicted = scenario::step_tick(&base, first_step, last, &toml::Table::new(), advance)?;
        let set = patch(&json(&predicted), &json(&r.tick));
        let set = toml_table(&Value::Object(set))?;
        let made = scenario::step_tick(&base, first_step, last, &set, advance)?;
        if made != r.tick {
            let (got, want) = (json(&made), json(&r.tick));
            let field = want.as_object().expect("a tick").keys().find(|k| got.get(*k) != want.get(*k)).cloned().unwrap_or_default();
            return Err(format!(
                "tick {} of node {} at {}: the scenario format cannot express it (`{field}` was recorded as {}, a step can only make it {}): export a window without it",
                r.tick.node.tick_count,
                r.node,
                time(r.tick.now_ms),
                want.get(&field).unwrap_or(&Value::Null),
                got.get(&field).unwrap_or(&Value::Null),
            ));
        }
        let mut step = toml::Table::new();
        step.insert("note".into(), format!("recorded at {}", time(r.tick.now_ms)).into());
        if advance != u64::from(base.heartbeat.interval_ms) {
            step.insert("advance_ms".into(), toml::Value::Integer(advance as i64));
        }
        if !set.is_empty() {
            step.insert("set".into(), toml::Value::Table(set));
        }
        step.insert("expect".into(), toml::Value::Table(expect(r)));
        steps.push(toml::Value::Table(step));
        base = r.tick.clone();
        scenario::apply_decision(&mut base, r.decision.as_ref());
        last = r.decision.as_ref();
    }
    let last_tick = &records[records.len() - 1].tick;
    // In three parts: a table's keys are written in sorted order, and `[tick]` reads best first.
    let mut head = toml::Table::new();
    head.insert(
        "description".into(),
        format!(
            "recorded on node {} from {} to {} ({} ticks): policy {}, plugin sha256 {}",
            first.node,
            time(first.tick.now_ms),
            time(last_tick.now_ms),
            records.len(),
            first.policy.name,
            &first.policy.sha256[..16.min(first.policy.sha256.len())]
        )
        .into(),
    );
    let mut tick = toml::Table::new();
    tick.insert("tick".into(), toml::Value::Table(toml_table(&strip_nulls(json(&first.tick)))?));
    let mut step = toml::Table::new();
    step.insert("step".into(), toml::Value::Array(steps));
    let write = |t: &toml::Table| toml::to_string(t).map_err(|e| format!("cannot write the scenario: {e}"));
    Ok(format!(
        "# Exported by `vigil record` from the flight recorder of node {}: each step is one recorded tick,\n\
         # its expectations the recorded decision. Params of the recording policy: {}\n{}\n{}\n{}",
        first.node,
        first.policy.params,
        write(&head)?,
        write(&tick)?,
        write(&step)?
    ))
}

fn expect(r: &Record) -> toml::Table {
    let mut t = toml::Table::new();
    match (&r.decision, r.decided_mode()) {
        (Some(d), Some(mode)) => {
            t.insert("mode".into(), mode.as_str().into());
            t.insert("actions".into(), toml::Value::Array(d.actions.iter().map(|a| a.to_string().into()).collect()));
            if !d.reason.is_empty() {
                t.insert("reason".into(), d.reason.clone().into());
            }
        }
        _ => {
            t.insert("fault".into(), true.into());
        }
    }
    t
}

fn json(tick: &Tick) -> Value {
    serde_json::to_value(tick).expect("a tick serializes")
}

fn toml_table(value: &Value) -> Result<toml::Table, String> {
    toml::Table::try_from(value).map_err(|e| format!("cannot write {value} as TOML: {e}"))
}

/// TOML has no null: an absent key is the default (`None`) when a tick is read.
fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// What a step must `set` to turn the runner's `predicted` tick into the `recorded` one. Objects are
/// set key by key; list entries, `lan`, `vip` and `arbiter` whole (with their counters, which the
/// runner then leaves as set).
fn patch(predicted: &Value, recorded: &Value) -> Map<String, Value> {
    let mut set = Map::new();
    let (Some(p), Some(r)) = (predicted.as_object(), recorded.as_object()) else { return set };
    for (key, want) in r {
        let got = p.get(key).unwrap_or(&Value::Null);
        if got == want || want.is_null() {
            continue;
        }
        let value = match (key.as_str(), got, want) {
            ("node" | "heartbeat" | "sync", Value::Object(_), Value::Object(_)) => Value::Object(patch(got, want)),
            ("peers" | "watched" | "monitors" | "services", Value::Array(g), Value::Array(w)) => {
                let changed: Vec<Value> = w.iter().filter(|entry| !g.contains(entry)).cloned().map(strip_nulls).collect();
                if changed.is_empty() { want.clone() } else { Value::Array(changed) }
            }
            _ => strip_nulls(want.clone()),
        };
        set.insert(key.clone(), value);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Mode, Remote};
    use crate::recorder::{Applied, PolicyId};

    /// A standby node whose peer stops answering at tick 3 and which takes over at tick 5.
    fn records() -> Vec<Record> {
        let mut out = Vec::new();
        let mut tick = Tick { now_ms: 10_000, peers: vec![Remote { id: "a".into(), reachable: true, last_seen_ago_ms: Some(40), ..Remote::default() }], ..Tick::default() };
        tick.node.id = "b".into();
        tick.node.mode = Mode::Standby;
        for n in 0..8u64 {
            let reachable = n < 3;
            tick.peers[0].record(reachable);
            tick.peers[0].last_seen_ago_ms = Some(if reachable { 30 + n } else { 100 * n });
            let take = n == 5;
            let decision = Decision {
                mode: take.then_some(Mode::Active),
                actions: if take { vec![Action::Start("app".into())] } else { Vec::new() },
                state: format!("{{\"n\":{n}}}").into_bytes(),
                reason: format!("tick {n}"),
            };
            let applied = Applied { mode: if n >= 5 { Mode::Active } else { Mode::Standby }, actions: decision.actions.clone(), reason: decision.reason.clone() };
            let policy = PolicyId { name: "p".into(), sha256: "ab".repeat(32), params: "{}".into() };
            out.push(Record { node: "b".into(), policy, tick: tick.clone(), decision: Some(decision.clone()), fault: None, applied });
            tick.now_ms += 1_000 + n;
            tick.node.tick_count += 1;
            tick.state = decision.state.clone();
            if take {
                tick.node.mode = Mode::Active;
                tick.node.mode_since_ms = tick.now_ms - 1_000 - n;
                tick.results = vec![crate::model::ActionResult { action: Action::Start("app".into()), ok: true, message: "started".into(), finished_ms: tick.now_ms - 500, duration_ms: 12 }];
            } else {
                tick.results.clear();
            }
        }
        out
    }

    #[test]
    fn an_export_is_a_scenario_with_the_recorded_decisions() {
        let text = to_scenario(&records()).unwrap();
        let scenario = crate::scenario::Scenario::parse(Path::new("export.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(scenario.description.contains("8 ticks"), "{}", scenario.description);
        assert!(text.find("[tick]").unwrap() < text.find("[[step]]").unwrap(), "{text}");
        assert!(text.contains("mode = \"active\"") && text.contains("\"start:app\""), "{text}");
    }

    #[test]
    fn an_export_refuses_what_it_cannot_express() {
        let mut mixed = records();
        mixed[4].policy.params = "{\"failures\":5}".into();
        assert!(to_scenario(&mixed).unwrap_err().contains("the policy changed"));
        let mut gone = records();
        // A value that becomes empty: TOML has no null for a step to set.
        for (i, r) in gone.iter_mut().enumerate() {
            r.tick.route = (i < 6).then(|| "main".to_string());
        }
        let e = to_scenario(&gone).unwrap_err();
        assert!(e.contains("cannot express") && e.contains("`route`") && e.contains("tick 6 of node b"), "{e}");
        assert!(to_scenario(&[]).is_err());
    }

    #[test]
    fn windows_parse_from_queries() {
        let w = Window::from_query("since=5&until=9", |_| None).unwrap();
        assert_eq!((w.since_ms, w.until_ms, w.around), (Some(5), Some(9), None));
        let w = Window::from_query("around=7&ticks=3", |id| (id == 7).then_some(70)).unwrap();
        assert_eq!(w.around, Some((70, 3)));
        assert!(Window::from_query("around=8", |_| None).unwrap_err().contains("no such event"));
        assert!(Window::from_query("since=soon", |_| None).unwrap_err().contains("expected a number"));
        assert_eq!(Window::from_query(&Window { since_ms: Some(1), around: Some((2, 3)), ..Window::default() }.query(), |_| None).unwrap().around, Some((2, 3)));
    }
}
