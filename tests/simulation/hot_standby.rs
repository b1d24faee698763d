//! hot-standby: server #1 (primary) and #2 (secondary) behind a load balancer that follows `/active`.
//!
//! Group: a, b. Active: the daemon runs and says ACTIVE. Each schedule uses one of
//! `policies/hot-standby.toml`, `hot-standby-autofailback.toml`, `hot-standby-app-error.toml` on both
//! nodes. Faults: the heartbeat link cut and healed, daemons killed (services left running) and
//! restarted, operator `standby`/`active`/`restore`, peer commands lost, slow actions, services that
//! fail to start, failed initial syncs.
//! Settled: exactly one active, running its watchdog service (`cti-server`; a service without watchdog
//! that failed to start stays stopped, by design, and shows in `/app`); the other standby with none;
//! with automatic failback and no operator request in the schedule, the primary.


use crate::sim::{Deployment, Faults, Group, How, PeerSpec, Rng, Sim};
use vigil::model::{Heartbeat, OperatorRequest, Role};
use vigil::policy::LoadedPolicy;

pub struct HotStandby {
    policies: Vec<LoadedPolicy>,
}

const NAMES: [&str; 3] = ["hot-standby", "hot-standby-autofailback", "hot-standby-app-error"];

impl HotStandby {
    pub fn load() -> HotStandby {
        let runtime = vigil_tests::runtime();
        HotStandby { policies: NAMES.iter().map(|n| crate::policy(&runtime, n, &[])).collect() }
    }

    /// The pair with `NAMES[variant]` on both nodes, and this deployment's fault rates.
    pub fn sim(&self, variant: usize, trace: bool) -> Sim<'_, ()> {
        let heartbeat = Heartbeat { interval_ms: 1000, timeout_ms: 500, failures: 3, successes: 3 };
        let mut sim = Sim::new(self.policies.iter().collect(), heartbeat, (), trace);
        let link = sim.link("a-b");
        let a = sim.node("a", Role::Primary, variant);
        let b = sim.node("b", Role::Secondary, variant);
        sim.nodes[a].peers.push(PeerSpec::new(b, &[link], How::Vigil));
        sim.nodes[b].peers.push(PeerSpec::new(a, &[link], How::Vigil));
        sim.start();
        sim.note(|| format!("policy {} on both nodes", NAMES[variant]));
        sim.faults = Faults { command_loss: 10, slow_action: 10, hook_failure: 0, start_failure: 5, sync_failure: 20 };
        sim
    }
}

impl Deployment for HotStandby {
    type W = ();
    const NAME: &'static str = "hot-standby";
    const SETTLE_WITHIN: u64 = 15;

    /// Two actives once both see each other: the backup gives way after `failures` (3) checks of the
    /// other active, seen one tick late, and reports STANDBY once its stop actions' results are in
    /// (break-before-make: one tick, three when the stops are slow): 3 + 1 + 3.
    fn groups(&self) -> Vec<Group> {
        vec![Group { name: "hot-standby", nodes: vec![0, 1], bound: 7 }]
    }

    fn build(&self, rng: &mut Rng, trace: bool) -> Sim<'_, ()> {
        self.sim(rng.below(NAMES.len()), trace)
    }

    fn inject(&self, sim: &mut Sim<'_, ()>, rng: &mut Rng) {
        sim.flip_links(rng, 8);
        for i in 0..2 {
            sim.crash_or_restart(rng, i, 3);
            if rng.chance(2) {
                let requests = [OperatorRequest::Standby, OperatorRequest::Active, OperatorRequest::Restore];
                sim.operator(i, requests[rng.below(3)]);
            }
        }
    }

    fn calm(&self, sim: &mut Sim<'_, ()>) {
        sim.heal();
    }

    fn settled(&self, sim: &Sim<'_, ()>) -> Result<(), String> {
        let active = sim.one_active(&[0, 1])?;
        sim.runs(active, &["cti-server"])?;
        let autofailback = NAMES[sim.nodes[0].policy] == "hot-standby-autofailback";
        if autofailback && active != 0 && !sim.nodes.iter().any(|n| n.operated) {
            return Err("with first_server_auto_active and no operator request, the primary must hold the role".into());
        }
        Ok(())
    }
}
