//! `vigil policy replay`: a candidate policy decides every recorded tick, carrying its own state from
//! tick to tick (per node), and each tick where its mode or actions differ from the recorded decision
//! is reported with both reasons.
//!
//! The world stays as recorded: the candidate sees the modes, results and peers the recording policy
//! brought about, so a replay answers "what would the candidate have decided at each moment of this
//! incident", not "how would the incident have gone" (a scenario answers that).
//! Recordings of several nodes merge into one timeline, ordered by tick time.

use super::{host_mode, Record};
use crate::model::{Action, Mode};
use crate::policy::LoadedPolicy;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;

/// One side of a divergence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    /// The mode after the decision; `None` for a fault.
    pub mode: Option<Mode>,
    pub actions: Vec<Action>,
    /// The decision's reason, or the fault.
    pub reason: String,
}

/// A tick where the candidate decides otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub node: String,
    /// The tick's number on its node (`tick.node.tick_count`).
    pub tick: u64,
    pub now_ms: u64,
    /// The node's mode before the decision.
    pub before: Mode,
    pub recorded: Side,
    pub candidate: Side,
}

/// What a replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub candidate: String,
    pub nodes: Vec<String>,
    pub ticks: usize,
    pub divergences: Vec<Divergence>,
}

/// Merge the recordings of several nodes into one timeline (by time, then node; each node's own
/// order kept).
pub fn merge(recordings: Vec<Vec<Record>>) -> Vec<Record> {
    let mut all: Vec<Record> = recordings.into_iter().flatten().collect();
    all.sort_by(|a, b| (a.tick.now_ms, &a.node).cmp(&(b.tick.now_ms, &b.node)));
    all
}

/// Decide every record of `timeline` with `candidate`.
pub fn replay(candidate: &LoadedPolicy, timeline: &[Record]) -> Report {
    let mut states: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut report = Report { candidate: candidate.path.display().to_string(), ticks: timeline.len(), ..Report::default() };
    for r in timeline {
        if !report.nodes.contains(&r.node) {
            report.nodes.push(r.node.clone());
        }
        // The candidate starts from the recorded state, then carries its own.
        let state = states.entry(r.node.as_str()).or_insert_with(|| r.tick.state.clone());
        let mut tick = r.tick.clone();
        tick.state = state.clone();
        let peers: Vec<String> = tick.peers.iter().map(|p| p.id.clone()).collect();
        let candidate_side = match candidate.decide(&tick, &peers) {
            Ok(d) => {
                state.clone_from(&d.state);
                Side { mode: Some(host_mode(d.mode.unwrap_or(tick.node.mode))), actions: d.actions, reason: d.reason }
            }
            Err(fault) => Side { mode: None, actions: Vec::new(), reason: format!("fault: {fault}") },
        };
        let recorded = match &r.decision {
            Some(d) => Side { mode: r.decided_mode(), actions: d.actions.clone(), reason: d.reason.clone() },
            None => Side { mode: None, actions: Vec::new(), reason: format!("fault: {}", r.fault.as_deref().unwrap_or("?")) },
        };
        if recorded.mode != candidate_side.mode || recorded.actions != candidate_side.actions {
            report.divergences.push(Divergence {
                node: r.node.clone(),
                tick: r.tick.node.tick_count,
                now_ms: r.tick.now_ms,
                before: r.tick.node.mode,
                recorded,
                candidate: candidate_side,
            });
        }
    }
    report
}

fn show(side: &Side) -> String {
    let mode = side.mode.map_or("FAULT".to_string(), |m| m.to_string());
    let actions: Vec<String> = side.actions.iter().map(ToString::to_string).collect();
    format!("{mode} [{}]", actions.join(", "))
}

/// The report as a table: one row per divergent tick, the reasons under it.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "replayed {} tick(s) of node(s) {} with {}", report.ticks, report.nodes.join(", "), report.candidate);
    if report.divergences.is_empty() {
        let _ = writeln!(out, "no divergence: the candidate decides every recorded tick as recorded");
        return out;
    }
    let rows: Vec<[String; 6]> = report
        .divergences
        .iter()
        .map(|d| {
            let at = chrono::DateTime::from_timestamp_millis(d.now_ms as i64).map(|t| t.format("%H:%M:%S%.3f").to_string()).unwrap_or_default();
            [d.node.clone(), format!("#{}", d.tick), at, d.before.to_string(), show(&d.recorded), show(&d.candidate)]
        })
        .collect();
    let header = ["NODE", "TICK", "TIME (UTC)", "BEFORE", "RECORDED", "CANDIDATE"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 6]| {
        let mut l = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header));
    for (row, d) in rows.iter().zip(&report.divergences) {
        let _ = writeln!(out, "{}", line(row));
        let _ = writeln!(out, "    recorded:  {}", d.recorded.reason);
        let _ = writeln!(out, "    candidate: {}", d.candidate.reason);
    }
    let _ = writeln!(out, "{} of {} tick(s) diverge", report.divergences.len(), report.ticks);
    out
}
