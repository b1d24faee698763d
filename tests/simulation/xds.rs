//! xds: media server (MDS) registrations follow the XiVO that carries the telephony. One xds node
//! beside each XiVO (`policies/xds.toml`: three MDS, a register and an unregister hook) watches that
//! XiVO's `/role` over a link of its own.
//!
//! The MDS side is modelled as a set of XiVOs per MDS: a register hook that succeeds adds the xds
//! node's XiVO, an unregister hook that succeeds removes it. Group `xds`: the two xds nodes (active =
//! the daemon runs and says ACTIVE: it holds the registrations). Extra property: no MDS is registered
//! with both XiVOs for more than [`DOUBLE_BOUND`] ticks in a row while every daemon and link is up.
//! Faults: watch links cut and healed, xds daemons killed and restarted (their plugin state is lost
//! with them), hooks that fail, slow hooks. Settled: the xds node beside the main active, the other
//! standby, and every MDS registered with the main XiVO only. During the XiVO pair's exceptions both
//! xds nodes register their XiVO, so the exceptions cover the registrations too.

use crate::sim::{Group, How, Rng, Run, Sim, Target, WatchSpec, World};
use crate::xivo::Pair;
use std::collections::{BTreeMap, BTreeSet};
use vigil::model::Role;

pub const POLICY: &str = "xds";
const MDS: [&str; 3] = ["mds1", "mds2", "mds3"];
/// An MDS may be registered with both XiVOs this many ticks in a row while the world is whole: the
/// XiVO pair's bound, one tick for each xds node to read `/role`, one for the hook to run.
pub const DOUBLE_BOUND: u64 = 11;

/// Which XiVOs (by node index) each MDS is registered with.
#[derive(Default)]
pub struct Registrations {
    /// xds node index → the index of the XiVO it serves.
    serves: BTreeMap<usize, usize>,
    with: BTreeMap<String, BTreeSet<usize>>,
    double: Run,
}

impl World for Registrations {
    fn hook(&mut self, node: usize, name: &str, args: &[String], ok: bool) {
        // The XiVOs' own hooks (configuration regeneration) touch no MDS.
        let (Some(&xivo), Some(mds), true) = (self.serves.get(&node), args.first(), ok) else { return };
        let set = self.with.entry(mds.clone()).or_default();
        match name {
            "register-mds" => set.insert(xivo),
            "unregister-mds" => set.remove(&xivo),
            other => panic!("xds ran an unexpected hook {other}"),
        };
    }
}

/// The two xds nodes and their watch links.
#[derive(Debug, Clone, Copy)]
pub struct Xds {
    pub a: usize,
    pub b: usize,
    pub links: [usize; 2],
}

impl Xds {
    /// Add an xds node beside each XiVO of `pair`, with policy `policy`.
    pub fn add(sim: &mut Sim<'_, Registrations>, pair: Pair, policy: usize) -> Xds {
        let mut add = |id: &str, xivo: usize| {
            let link = sim.link(&format!("{id}/{}", sim.nodes[xivo].id));
            let node = sim.node(id, Role::Primary, policy);
            // The policy names the watch "xivo".
            sim.nodes[node].watched.push(WatchSpec { id: "xivo".into(), target: Target::Node(xivo), link, how: How::Vigil });
            sim.world.serves.insert(node, xivo);
            (node, link)
        };
        let (a, la) = add("xds-a", pair.main);
        let (b, lb) = add("xds-b", pair.standby);
        Xds { a, b, links: [la, lb] }
    }

    /// An xds node reads `/role` every tick: one tick behind its XiVO.
    pub fn group(&self) -> Group {
        Group { name: "xds", nodes: vec![self.a, self.b], bound: 10 }
    }

    pub fn inject(&self, sim: &mut Sim<'_, Registrations>, rng: &mut Rng) {
        for (node, link) in [(self.a, self.links[0]), (self.b, self.links[1])] {
            if rng.chance(5) {
                let up = !sim.links[link].1;
                sim.set_link(link, up);
            }
            sim.crash_or_restart(rng, node, 3);
        }
    }

    /// Count double registrations (not while `excused`); the longest run so far.
    pub fn observe(&self, sim: &mut Sim<'_, Registrations>, excused: bool) -> Result<u64, String> {
        let double = sim.world.with.values().any(|set| set.len() > 1);
        let (whole, t) = (sim.whole() && !excused, sim.t);
        sim.world.double.count(whole && double, t);
        if sim.world.double.longest > DOUBLE_BOUND {
            let why = format!("an MDS registered with both XiVOs for {} ticks while the world is whole (bound {DOUBLE_BOUND}): {:?}", sim.world.double.longest, sim.world.with);
            return Err(why);
        }
        Ok(sim.world.double.longest)
    }

    /// Settled, once the pair is: the xds node beside the main holds every MDS, alone.
    pub fn settled(&self, sim: &Sim<'_, Registrations>, main: usize) -> Result<(), String> {
        if sim.one_active(&[self.a, self.b])? != self.a {
            return Err("xds-b holds the registrations although xivo-a runs the telephony".into());
        }
        for mds in MDS {
            let with: Vec<usize> = sim.world.with.get(mds).map(|s| s.iter().copied().collect()).unwrap_or_default();
            if with != [main] {
                return Err(format!("{mds} is registered with XiVO nodes {with:?}, expected only the main ({main})"));
            }
        }
        Ok(())
    }
}
