//! xivo: the main XiVO (`policies/xivo-main.toml`) and the standby (`xivo-standby.toml`,
//! `xivo-standby-hysteresis.toml` or `xivo-standby-manual.toml`, one per schedule).
//!
//! Group `xivo`: main, standby. Active: the daemon runs and says ACTIVE (its telephony runs). In half
//! the schedules the XiVOs check each other with a ping-like probe (the product's setup: it sees the
//! host, not the daemon, so a killed main daemon with its telephony left running is no failover, and
//! it carries no mode), in the other half with the vigil heartbeat. Faults: the heartbeat link cut and healed,
//! daemons killed and restarted, operator `standby`/`active`/`restore`, slow actions, a failing config
//! hook, services that fail to start.
//! Settled: the main active, running every telephony service (the plugin restarts one that stopped),
//! the standby running none. Operator switches hold the automatic rules until `restore` (documented),
//! so the calm begins with the operator's `restore` on every node an operator switched.
//!
//! Exception (a known plugin violation, counted apart and not against the property):
//! `XIVO_OPERATOR_ACTIVE_BESIDE_MAIN`: with the product's ping probe, an operator `active` on the
//! standby starts a second telephony server while the main keeps its own: the plugin refuses the
//! request only when the main *reports* ACTIVE, which a ping never carries; the standby then holds
//! its failback until `restore`: two actives with every link up until an operator undoes it. (The
//! operator's own command; the docs say to switch the main to standby first.)
//!
//! The pair is simulated with its CCs and xds nodes in `site.rs`.

use crate::sim::{Group, How, PeerSpec, Rng, Sim, World};
use vigil::model::{Heartbeat, OperatorRequest, Role};

/// The XiVO policies: the main's, then the standby variants.
pub const MAIN: &str = "xivo-main";
pub const STANDBYS: [&str; 3] = ["xivo-standby", "xivo-standby-hysteresis", "xivo-standby-manual"];

/// The heartbeat settings of every XiVO-side node.
pub const HEARTBEAT: Heartbeat = Heartbeat { interval_ms: 1000, timeout_ms: 500, failures: 3, successes: 3 };

/// A XiVO pair inside a simulation.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub main: usize,
    pub standby: usize,
    pub link: usize,
    /// The XiVOs probe each other with a ping (the product's setup: no report of the peer's mode);
    /// otherwise with the vigil heartbeat (as `tests/xivo.rs` does).
    pub ping: bool,
}

impl Pair {
    /// Add the pair: the main with policy `main_policy`, the standby with `standby_policy`.
    pub fn add<W: World>(sim: &mut Sim<'_, W>, main_policy: usize, standby_policy: usize, ping: bool) -> Pair {
        let link = sim.link("xivo-a/xivo-b");
        let main = sim.node("xivo-a", Role::Primary, main_policy);
        let standby = sim.node("xivo-b", Role::Secondary, standby_policy);
        let how = if ping { How::Ping } else { How::Vigil };
        sim.nodes[main].peers.push(PeerSpec::new(standby, &[link], how));
        sim.nodes[standby].peers.push(PeerSpec::new(main, &[link], how));
        Pair { main, standby, link, ping }
    }

    /// The pair's group: the standby hands back after `failback_after` answered checks (1, or 5 with
    /// hysteresis), seen one tick late, and reports STANDBY once its telephony is stopped (one tick,
    /// three when the stops are slow): 5 + 1 + 3.
    pub fn group(&self) -> Group {
        Group { name: "xivo", nodes: vec![self.main, self.standby], bound: 9 }
    }

    /// One tick of the pair's faults.
    pub fn inject<W: World>(&self, sim: &mut Sim<'_, W>, rng: &mut Rng) {
        if rng.chance(8) {
            let up = !sim.links[self.link].1;
            sim.set_link(self.link, up);
        }
        for i in [self.main, self.standby] {
            sim.crash_or_restart(rng, i, 3);
            if rng.chance(2) {
                let requests = [OperatorRequest::Standby, OperatorRequest::Active, OperatorRequest::Restore];
                sim.operator(i, requests[rng.below(3)]);
            }
        }
    }

    /// The faults end (after [`Sim::heal`]): the operator restores every node it switched.
    pub fn calm<W: World>(&self, sim: &mut Sim<'_, W>) {
        for i in [self.main, self.standby] {
            if sim.nodes[i].operated {
                sim.operator(i, OperatorRequest::Restore);
            }
        }
    }

    /// Settled: the main runs the telephony, the standby does not.
    pub fn settled<W: World>(&self, sim: &Sim<'_, W>) -> Result<(), String> {
        let active = sim.one_active(&[self.main, self.standby])?;
        if active != self.main {
            return Err("the standby runs the telephony although the main is back".into());
        }
        sim.runs(active, &[])
    }

    /// The exceptions listed in the module doc.
    pub fn excused<W: World>(&self, sim: &Sim<'_, W>) -> Option<&'static str> {
        if !sim.active(self.standby) {
            return None;
        }
        match sim.nodes[self.standby].last_operator {
            Some(OperatorRequest::Active) if self.ping && sim.active(self.main) => Some("XIVO_OPERATOR_ACTIVE_BESIDE_MAIN"),
            _ => None,
        }
    }
}
