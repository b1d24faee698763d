//! xivo-cc: a XiVO CC beside each XiVO, following it (`policies/cc-main.toml` beside the main,
//! `cc-standby.toml` beside the standby). Each CC watches its XiVO's `/role` over a link of its own;
//! the XiVO answers with its mode only while its daemon runs.
//!
//! Group `xivo-cc`: the two CCs. Active: the daemon runs and says ACTIVE. Faults: each CC's watch link
//! cut and healed, CC daemons killed (services left running) and restarted, operator requests on the
//! CCs (ignored by design). Settled: the CC beside the active XiVO active, running its services (the
//! plugin restarts one that stopped), the other running none. During the XiVO pair's exceptions both
//! CCs follow their XiVO, so the exceptions cover the CCs too.

use crate::sim::{Group, How, Rng, Sim, Target, WatchSpec, World};
use crate::xivo::Pair;
use vigil::model::{OperatorRequest, Role};

pub const MAIN: &str = "cc-main";
pub const STANDBY: &str = "cc-standby";

/// The two CCs and their watch links.
#[derive(Debug, Clone, Copy)]
pub struct Ccs {
    pub a: usize,
    pub b: usize,
    pub links: [usize; 2],
}

impl Ccs {
    /// Add a CC beside each XiVO of `pair`, with policies `main_policy` and `standby_policy`.
    pub fn add<W: World>(sim: &mut Sim<'_, W>, pair: Pair, main_policy: usize, standby_policy: usize) -> Ccs {
        // The policies name the watches "xivo-main" and "xivo-standby".
        let mut add = |id: &str, policy: usize, xivo: usize, watch: &str| {
            let link = sim.link(&format!("{id}/{}", sim.nodes[xivo].id));
            let cc = sim.node(id, Role::Primary, policy);
            sim.nodes[cc].watched.push(WatchSpec { id: watch.into(), target: Target::Node(xivo), link, how: How::Vigil });
            (cc, link)
        };
        let (a, la) = add("cc-a", main_policy, pair.main, "xivo-main");
        let (b, lb) = add("cc-b", standby_policy, pair.standby, "xivo-standby");
        Ccs { a, b, links: [la, lb] }
    }

    /// A CC reads `/role` every tick: one tick behind its XiVO, so the XiVO's bound plus one.
    pub fn group(&self) -> Group {
        Group { name: "xivo-cc", nodes: vec![self.a, self.b], bound: 10 }
    }

    pub fn inject<W: World>(&self, sim: &mut Sim<'_, W>, rng: &mut Rng) {
        for (cc, link) in [(self.a, self.links[0]), (self.b, self.links[1])] {
            if rng.chance(5) {
                let up = !sim.links[link].1;
                sim.set_link(link, up);
            }
            sim.crash_or_restart(rng, cc, 3);
            if rng.chance(1) {
                sim.operator(cc, [OperatorRequest::Standby, OperatorRequest::Active][rng.below(2)]);
            }
        }
    }

    /// Settled, once the pair is: the CC beside the main runs, the other does not.
    pub fn settled<W: World>(&self, sim: &Sim<'_, W>) -> Result<(), String> {
        let cc = sim.one_active(&[self.a, self.b])?;
        if cc != self.a {
            return Err("cc-b is active although xivo-a runs the telephony".into());
        }
        sim.runs(cc, &[])
    }
}
