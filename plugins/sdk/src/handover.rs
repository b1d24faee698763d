//! Break-before-make hand-over of the active role, the pieces every pair plugin shares.
//!
//! The host sets a node's reported mode the moment a decision names it, and runs the decision's
//! actions afterwards on its queue. So a node that went `standby` in the same decision that stops its
//! services reports STANDBY while they still run, and a node that went `active` with its starts
//! reports ACTIVE before they ran. A hand-over between two live nodes therefore follows two rules:
//!
//! - **The node giving up the role** stops its services first and keeps its mode until the stops
//!   have finished and every service reads `stopped` ([`StepDown`], [`stopped`]): its peer reading
//!   STANDBY in a heartbeat answer is then the proof that nothing runs there any more.
//! - **The node taking the role** asks its peers to stand by and stays standby ([`Handover`]) until
//!   each answers STANDBY ([`confirms_standby`]) or has failed the full failure threshold (the
//!   ordinary failover rule), or the hand-over's deadline passes (it then gives up and stays standby).
//!
//! Real failures are not hand-overs: a peer that stopped answering is taken over from after the
//! failure threshold, without waiting for anything.

use crate::{Action, Decision, Mode, PeerCommand, Remote, Service, ServiceState, Tick};
use serde::{Deserialize, Serialize};

/// How long a node waits for its peers to confirm STANDBY when a policy does not say: services
/// may take many seconds to stop (a PBX), and giving up early only leaves the role where it was.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Stop attempts a node stepping down makes before it gives up and keeps the role.
pub const STOP_ATTEMPTS: u32 = 3;

/// A hand-over this node started as the taker: it asked its peers to stand by and waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// Why this node takes the role (the rule or request that started the hand-over).
    pub why: String,
    /// Tick time after which it gives up (ms since the epoch).
    pub deadline_ms: u64,
}

impl Handover {
    /// A hand-over started at `now_ms` that waits at most `timeout_ms`.
    pub fn new(why: impl Into<String>, now_ms: u64, timeout_ms: u64) -> Handover {
        Handover { why: why.into(), deadline_ms: now_ms.saturating_add(timeout_ms) }
    }

    /// Whole seconds left at `now_ms` (rounded up).
    pub fn seconds_left(&self, now_ms: u64) -> u64 {
        self.deadline_ms.saturating_sub(now_ms).div_ceil(1000)
    }

    /// Whether the deadline has passed at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.deadline_ms
    }
}

/// This node is giving up the active role: its stops are issued, it stays ACTIVE until they finished
/// and reports STANDBY then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDown {
    /// Why it steps down.
    pub why: String,
    /// Stop rounds that finished with a service still not stopped.
    #[serde(default)]
    pub attempts: u32,
}

/// Whether `peer` proves it serves nothing: it answered this round and reports STANDBY. Holds for a
/// peer that follows [`StepDown`] (it reports STANDBY only after its stops finished).
pub fn confirms_standby(peer: &Remote) -> bool {
    peer.reachable && peer.report.as_ref().is_some_and(|r| r.mode == Mode::Standby)
}

/// What still keeps a node stepping down from reporting its new mode: `Ok` when no action of its own
/// is queued or running and every service in `services` reads `stopped`; otherwise the names of the
/// services not yet stopped (empty while actions are still in flight).
pub fn stopped<'a>(tick: &Tick, services: &[&'a Service]) -> Result<(), Vec<&'a str>> {
    if tick.pending_actions > 0 {
        return Err(Vec::new());
    }
    let left: Vec<&str> = services.iter().filter(|s| s.state != ServiceState::Stopped).map(|s| s.name.as_str()).collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(left)
    }
}
/// A hand-over still waiting for `waiting` (the peers that have not confirmed STANDBY yet) at the
/// tick's time: `Err(why)` once past its deadline (the taker gives up and stays standby, with an
/// alarm saying `why`), else the waiting decision, which sends go-standby again to every waiting
/// peer whose last one did not arrive. `me` is this node's id, `peers_now` how the peers look now (for
/// the reason), `timeout_ms` the hand-over's timeout (for the message).
pub fn wait_for(h: &Handover, tick: &Tick, waiting: &[&Remote], timeout_ms: u64, me: &str, peers_now: &str) -> Result<Decision, String> {
    let names = waiting.iter().map(|p| format!("peer {}", p.id)).collect::<Vec<_>>().join(", ");
    if h.expired(tick.now_ms) {
        return Err(format!(
            "hand-over abandoned ({}): {names} did not report STANDBY within {} s; this node ({me}) stays STANDBY",
            h.why,
            timeout_ms.div_ceil(1000)
        ));
    }
    let mut d = Decision::because(format!(
        "hand-over ({}): waiting for {names} to report STANDBY with its services stopped, {} s left; {peers_now}",
        h.why,
        h.seconds_left(tick.now_ms)
    ));
    for p in waiting {
        let lost = tick.results.iter().any(|r| {
            !r.ok && matches!(&r.action, Action::Command(m) if m.peer.as_deref() == Some(p.id.as_str()) && m.command == PeerCommand::GoStandby)
        });
        if lost {
            d = d.command_peer(Some(&p.id), PeerCommand::GoStandby).and_because(&format!("go-standby to peer {} failed, sent again", p.id));
        }
    }
    Ok(d)
}

/// How many consecutive "nobody is active" checks a node waits before it claims the role, when every
/// node of the pair answers and none is active (both restarted together, a hand-over that did not
/// complete). The primary claims first (`IDLE_CHECKS` checks: one stale answer of a peer switching
/// right now is not enough); the backup after `threshold` twice more, as a safety net; a node that
/// just gave the role away later still, a yielded primary before a yielded backup. No two nodes wait
/// the same number (apart by at least two, since their counts may be a round apart): two that claimed
/// in the same tick would command each other to stand by, obey, and start over with nobody active.
pub fn nobody_active_wait(primary: bool, yielded: bool, threshold: u32) -> u32 {
    let slow = IDLE_CHECKS.saturating_add(threshold.saturating_mul(2));
    let gap = threshold.max(2);
    match (primary, yielded) {
        (true, false) => IDLE_CHECKS,
        (false, false) => slow,
        (true, true) => slow.saturating_add(gap),
        (false, true) => slow.saturating_add(gap.saturating_mul(2)),
    }
}

/// Checks the primary waits in [`nobody_active_wait`].
pub const IDLE_CHECKS: u32 = 2;

