//! Resuming after a restart of the daemon, the same for every plugin built with the SDK.
//!
//! Services outlive their supervisor: when `vigil` crashes or is upgraded and restarted at once, the
//! services it ran keep running. The host then starts the node in `starting` and tells the first
//! tick what the node was (`tick.node.restart`: its mode, since when, its state bytes, how long the
//! daemon was down). [`run_decide`](crate::run_decide) uses [`resume`] to turn that first tick into
//! an ordinary one:
//!
//! - the policy's state comes back from `restart.state`;
//! - the node looks to the policy as it was before the restart (`tick.node.mode` is the old mode, and
//!   so is the mode a "keep" decision keeps), so the policy's own rules for that mode run — an
//!   active node keeps its running services, an `off` node stays out of the group;
//! - **except** that a node that was ACTIVE never resumes it over a role taken meanwhile: a reachable
//!   peer that reports ACTIVE, another node holding the arbiter's role key, an operator `standby`
//!   request or a peer's `go-standby` command, and the node starts as after a fresh start (standby;
//!   the policy stops what it should not run).
//!
//! Without a restart (first start, a clean stop, a downtime over the node's
//! `[restart] max_downtime_ms`), the first tick shows `standby`, as before `starting` existed.
//!
//! A plugin that wants other rules reads `tick.node.restart` itself (the SDK leaves it in the tick).

use crate::{Mode, OperatorRequest, PeerCommand, Tick};

/// What the first tick after a start is, as the SDK presents it to the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Not the first tick (the node is not starting): nothing to do.
    Running,
    /// A start without a restart to resume from (or not allowed to): the policy sees `standby` and
    /// the state it would have on a first start (its saved state, when there was a restart).
    Fresh { why: String },
    /// Resume `mode`: the policy sees the node in it, and a decision that keeps the mode keeps it.
    Resume { mode: Mode, why: String },
}

/// Whether a peer has the role: reachable and reporting ACTIVE.
fn peer_active(tick: &Tick) -> Option<&str> {
    tick.peers
        .iter()
        .find(|p| p.reachable && p.report.as_ref().is_some_and(|r| r.mode == Mode::Active))
        .map(|p| p.id.as_str())
}

/// What this tick means for a node that starts; see the module documentation.
pub fn resume(tick: &Tick) -> Resume {
    if tick.node.mode != Mode::Starting {
        return Resume::Running;
    }
    let Some(restart) = &tick.node.restart else {
        return Resume::Fresh { why: "first start (no restart to resume)".into() };
    };
    let down = restart.downtime_ms;
    if restart.mode == Mode::Active {
        if let Some(peer) = peer_active(tick) {
            return Resume::Fresh { why: format!("restarted after {down} ms, was ACTIVE, but peer {peer} reports ACTIVE: not resuming") };
        }
        if let Some(holder) = crate::arbiter::held_elsewhere(tick) {
            return Resume::Fresh { why: format!("restarted after {down} ms, was ACTIVE, but node {holder} holds the role key: not resuming") };
        }
        if tick.operator == Some(OperatorRequest::Standby) {
            return Resume::Fresh { why: format!("restarted after {down} ms, was ACTIVE, but the operator asks for standby: not resuming") };
        }
        if let Some(c) = tick.commands.iter().find(|c| c.command == PeerCommand::GoStandby) {
            return Resume::Fresh { why: format!("restarted after {down} ms, was ACTIVE, but peer {} asks for standby: not resuming", c.from) };
        }
    }
    if restart.mode == Mode::Starting {
        return Resume::Fresh { why: format!("restarted after {down} ms before the first decision") };
    }
    Resume::Resume { mode: restart.mode, why: format!("restarted after {down} ms: resuming {}", crate::mode_word(restart.mode)) }
}

/// The tick the policy decides on, and the mode a "keep" decision keeps (`None` when the tick is
/// shown as it is). Also restores the state bytes from the restart record.
pub fn present(mut tick: Tick) -> (Tick, Option<Mode>, Option<String>) {
    match resume(&tick) {
        Resume::Running => (tick, None, None),
        Resume::Fresh { why } => {
            if let Some(r) = &tick.node.restart {
                if tick.state.is_empty() {
                    tick.state = r.state.clone();
                }
            }
            tick.node.mode = Mode::Standby;
            (tick, None, Some(why))
        }
        Resume::Resume { mode, why } => {
            if let Some(r) = &tick.node.restart {
                if tick.state.is_empty() {
                    tick.state = r.state.clone();
                }
                tick.node.mode_since_ms = r.mode_since_ms;
            }
            tick.node.mode = mode;
            (tick, Some(mode), Some(why))
        }
    }
}
