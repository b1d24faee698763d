//! A XiVO site: the XiVO pair (`xivo.rs`), a CC beside each XiVO (`xivo_cc.rs`) and an xds node
//! beside each XiVO (`xds.rs`), in one simulated world, as they are deployed together. Every schedule
//! counts for the three plugins: xivo, xivo-cc and xds. Settled: the pair, then the CCs, then the
//! registrations, each as its module says, within `SETTLE_WITHIN` calm ticks.

use crate::sim::{Deployment, Faults, Group, Rng, Sim};
use crate::xds::{Registrations, Xds};
use crate::xivo::{Pair, HEARTBEAT};
use crate::xivo_cc::Ccs;
use vigil::policy::LoadedPolicy;

pub struct Site {
    policies: Vec<LoadedPolicy>,
}

/// Policy indices: the main XiVO, the three standby variants, the two CCs, xds.
const NAMES: [&str; 7] = [crate::xivo::MAIN, crate::xivo::STANDBYS[0], crate::xivo::STANDBYS[1], crate::xivo::STANDBYS[2], crate::xivo_cc::MAIN, crate::xivo_cc::STANDBY, crate::xds::POLICY];

/// Where `build` puts everything (the same in every schedule; only the standby's policy varies).
const PAIR: Pair = Pair { main: 0, standby: 1, link: 0, ping: true };
const CCS: Ccs = Ccs { a: 2, b: 3, links: [1, 2] };
const XDS: Xds = Xds { a: 4, b: 5, links: [3, 4] };

impl Site {
    pub fn load() -> Site {
        let runtime = vigil_tests::runtime();
        Site { policies: NAMES.iter().map(|n| crate::policy(&runtime, n, &[])).collect() }
    }

    /// The site with `NAMES[standby]` on the standby XiVO, the XiVOs probing each other by ping or
    /// by the vigil heartbeat, and this deployment's fault rates.
    pub fn sim(&self, standby: usize, ping: bool, trace: bool) -> Sim<'_, Registrations> {
        let mut sim = Sim::new(self.policies.iter().collect(), HEARTBEAT, Registrations::default(), trace);
        let pair = Pair::add(&mut sim, 0, standby, ping);
        let ccs = Ccs::add(&mut sim, pair, 4, 5);
        let xds = Xds::add(&mut sim, pair, 6);
        assert_eq!((pair.main, pair.standby, pair.link, ccs.a, ccs.b, xds.a, xds.b), (PAIR.main, PAIR.standby, PAIR.link, CCS.a, CCS.b, XDS.a, XDS.b));
        sim.start();
        sim.note(|| format!("standby XiVO policy {}, XiVOs probed by {}", NAMES[standby], if ping { "ping" } else { "vigil heartbeat" }));
        sim.faults = Faults { command_loss: 10, slow_action: 15, hook_failure: 20, start_failure: 5, sync_failure: 0 };
        sim
    }

    fn pair(sim: &Sim<'_, Registrations>) -> Pair {
        let ping = sim.nodes[PAIR.standby].peers[0].how == crate::sim::How::Ping;
        Pair { ping, ..PAIR }
    }
}

impl Deployment for Site {
    type W = Registrations;
    const NAME: &'static str = "xivo site (xivo, xivo-cc, xds)";
    const SETTLE_WITHIN: u64 = 14;

    fn build(&self, rng: &mut Rng, trace: bool) -> Sim<'_, Registrations> {
        let standby = 1 + rng.below(3);
        self.sim(standby, rng.chance(50), trace)
    }

    fn groups(&self) -> Vec<Group> {
        vec![PAIR.group(), CCS.group(), XDS.group()]
    }

    fn inject(&self, sim: &mut Sim<'_, Registrations>, rng: &mut Rng) {
        PAIR.inject(sim, rng);
        CCS.inject(sim, rng);
        XDS.inject(sim, rng);
    }

    fn calm(&self, sim: &mut Sim<'_, Registrations>) {
        sim.heal();
        PAIR.calm(sim);
    }

    fn observe(&self, sim: &mut Sim<'_, Registrations>) -> Result<u64, String> {
        let excused = self.excused(sim).is_some();
        XDS.observe(sim, excused)
    }

    fn settled(&self, sim: &Sim<'_, Registrations>) -> Result<(), String> {
        PAIR.settled(sim)?;
        CCS.settled(sim)?;
        XDS.settled(sim, PAIR.main)
    }

    fn excused(&self, sim: &Sim<'_, Registrations>) -> Option<&'static str> {
        Self::pair(sim).excused(sim)
    }
}
