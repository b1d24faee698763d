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

/// hot-standby with an etcd arbiter (issue 11): a pair (`policies/hot-standby.toml`, nodes a and b)
/// or a group of three (`policies/hot-standby-group.toml`, nodes cti1 — the configured primary —,
/// cti2 and cti3, `priority = ["cti2", "cti1", "cti3"]`), every node linked to every other by one
/// heartbeat link, and the model arbiter of `sim.rs` (lease 4 s at a 1 s interval, safety margin
/// 1.5 s); the nodes run with fencing.
///
/// Faults: heartbeat links cut and healed, partitions between a node and the arbiter, daemons
/// killed (services left running, their lease left to expire) and restarted, operator requests,
/// peer commands lost, slow actions, services that fail to start, failed initial syncs.
///
/// The property is stricter than the pairs': **never two actives at any instant**, partitions and
/// killed daemons included (`observe`) — the arbiter grants the role to one node at a time, the host
/// refuses the active role without the key and demotes a node whose lease runs out, and the plugin
/// asks for the role only when no other node holds the key. That last, plugin-level part is checked
/// on its own too: a node that is not active never asks for the role while the key it read is
/// another node's. Settled: exactly one active, running `cti-server`, holding the key.
pub struct HotStandbyArbiter<const N: usize> {
    policy: LoadedPolicy,
}

impl<const N: usize> HotStandbyArbiter<N> {
    pub fn load() -> HotStandbyArbiter<N> {
        let runtime = vigil_tests::runtime();
        let name = if N == 2 { "hot-standby" } else { "hot-standby-group" };
        HotStandbyArbiter { policy: crate::policy(&runtime, name, &[]) }
    }

    fn ids() -> &'static [&'static str] {
        if N == 2 {
            &["a", "b"]
        } else {
            &["cti1", "cti2", "cti3"]
        }
    }
}

impl<const N: usize> Deployment for HotStandbyArbiter<N> {
    type W = ();
    const NAME: &'static str = if N == 2 { "hot-standby pair with an arbiter" } else { "hot-standby group of three with an arbiter" };
    const SETTLE_WITHIN: u64 = 20;

    fn schedules(&self) -> u64 {
        200
    }

    /// Never two actives while whole either (and `observe` checks it at every instant).
    fn groups(&self) -> Vec<Group> {
        vec![Group { name: "hot-standby", nodes: (0..N).collect(), bound: 0 }]
    }

    fn build(&self, _rng: &mut Rng, trace: bool) -> Sim<'_, ()> {
        let heartbeat = Heartbeat { interval_ms: 1000, timeout_ms: 500, failures: 3, successes: 3 };
        let mut sim = Sim::new(vec![&self.policy], heartbeat, (), trace);
        let ids = Self::ids();
        let nodes: Vec<usize> = ids.iter().enumerate().map(|(k, id)| sim.node(id, if k == 0 { Role::Primary } else { Role::Secondary }, 0)).collect();
        for x in 0..N {
            for y in x + 1..N {
                let link = sim.link(&format!("{}-{}", ids[x], ids[y]));
                sim.nodes[nodes[x]].peers.push(PeerSpec::new(nodes[y], &[link], How::Vigil));
                sim.nodes[nodes[y]].peers.push(PeerSpec::new(nodes[x], &[link], How::Vigil));
            }
        }
        sim.start();
        sim.with_arbiter(4000, 1500);
        sim.faults = Faults { command_loss: 10, slow_action: 10, hook_failure: 0, start_failure: 5, sync_failure: 20 };
        sim
    }

    fn inject(&self, sim: &mut Sim<'_, ()>, rng: &mut Rng) {
        sim.flip_links(rng, 8);
        sim.flip_arbiter(rng, 5);
        for i in 0..N {
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

    fn observe(&self, sim: &mut Sim<'_, ()>) -> Result<u64, String> {
        // The plugin's part, whatever the host does: never ask for the role against another holder.
        if let Some(breach) = sim.arbiter.as_ref().and_then(|a| a.breaches.first()) {
            return Err(breach.clone());
        }
        let active: Vec<&str> = (0..N).filter(|i| sim.active(*i)).map(|i| sim.nodes[i].id.as_str()).collect();
        if active.len() >= 2 {
            return Err(format!("two actives {active:?} (the arbiter grants the role to one node at a time)"));
        }
        Ok(sim.arbiter.as_ref().map_or(0, |a| a.grants))
    }

    fn settled(&self, sim: &Sim<'_, ()>) -> Result<(), String> {
        let group: Vec<usize> = (0..N).collect();
        let active = sim.one_active(&group)?;
        sim.runs(active, &["cti-server"])?;
        match sim.arbiter.as_ref().and_then(|a| a.holder()) {
            Some(h) if h == active => Ok(()),
            other => Err(format!("{} is active but the key is held by {:?}", sim.nodes[active].id, other.map(|h| &sim.nodes[h].id))),
        }
    }
}
