//! mail-gateway: an active-passive pair with two heartbeat links, remote services as heartbeat and
//! local monitors; and the config-only group, which never switches.
//!
//! Active-passive: the primary runs one of `policies/mail-primary.toml` (switch-off),
//! `mail-primary-restore-original.toml`, `mail-primary-restore-slave.toml` (one per schedule), the
//! secondary `mail-secondary.toml` (remote services as heartbeat: it probes the primary's MTA over the
//! LAN). Heartbeat threshold 15 s at a 3 s interval: 5 checks. Group: a, b. Active: the daemon runs and
//! says ACTIVE. Faults: each heartbeat link and the LAN cut and healed (one or every path), daemons
//! killed (services and VIPs left as they are) and restarted, local monitors failing and recovering,
//! operator `standby`/`active`/`restore`/`restart-ha`, peer commands lost, slow actions, a failing
//! queue-push hook, services that fail to start, failed initial syncs.
//! Settled: exactly one active; the other standby, off or failed, running no service. (An active node
//! whose service failed to start keeps it stopped: the plugin has no watchdog.)
//!
//! Slowest settling seen: both nodes recover from FAILED in the same tick, both wait the slow
//! "nobody active" count (2 + 2 × 5), claim in the same tick (two actives for two ticks, within the
//! bound), both obey the other's `go-standby`, and the primary then claims on its fast path.
//!
//! Config-only (`mail-config-only.toml` on both nodes): every node that runs serves (ACTIVE) from
//! its first tick and never changes mode or acts, whatever the faults.
//! (The policy says `exclusive = false`: the host's start-up grace does not hold its nodes.)

use crate::sim::{Deployment, Faults, Group, How, PeerSpec, Rng, Sim};
use vigil::model::{Heartbeat, Mode, OperatorRequest, Role};
use vigil::policy::LoadedPolicy;

const NAMES: [&str; 4] = ["mail-primary", "mail-primary-restore-original", "mail-primary-restore-slave", "mail-secondary"];
const SECONDARY: usize = 3;
const HEARTBEAT: Heartbeat = Heartbeat { interval_ms: 3000, timeout_ms: 1000, failures: 3, successes: 3 };
const REQUESTS: [OperatorRequest; 4] = [OperatorRequest::Standby, OperatorRequest::Active, OperatorRequest::Restore, OperatorRequest::RestartHa];

pub struct MailGateway {
    policies: Vec<LoadedPolicy>,
}

impl MailGateway {
    pub fn load() -> MailGateway {
        let runtime = vigil_tests::runtime();
        MailGateway { policies: NAMES.iter().map(|n| crate::policy(&runtime, n, &[])).collect() }
    }
}

/// Two nodes with two heartbeat links (and the LAN for service probes): `(a, b)`.
pub fn pair<W: crate::sim::World>(sim: &mut Sim<'_, W>, a_policy: usize, b_policy: usize, services: &[&str]) -> (usize, usize) {
    let hb1 = sim.link("hb1");
    let hb2 = sim.link("hb2");
    let lan = sim.link("lan");
    let a = sim.node("a", Role::Primary, a_policy);
    let b = sim.node("b", Role::Secondary, b_policy);
    sim.nodes[a].peers.push(PeerSpec::new(b, &[hb1, hb2], How::Vigil));
    let mut to_a = PeerSpec::new(a, &[hb1, hb2], How::Vigil);
    to_a.services = services.iter().map(|s| s.to_string()).collect();
    to_a.service_link = Some(lan);
    sim.nodes[b].peers.push(to_a);
    (a, b)
}

impl MailGateway {
    /// The pair with `NAMES[primary]` on the primary, and this deployment's fault rates.
    pub fn sim(&self, primary: usize, trace: bool) -> Sim<'_, ()> {
        let mut sim = Sim::new(self.policies.iter().collect(), HEARTBEAT, (), trace);
        pair(&mut sim, primary, SECONDARY, &["mta"]);
        sim.start();
        sim.note(|| format!("primary policy {}", NAMES[primary]));
        sim.faults = Faults { command_loss: 10, slow_action: 10, hook_failure: 10, start_failure: 5, sync_failure: 30 };
        sim
    }
}

impl Deployment for MailGateway {
    type W = ();
    const NAME: &'static str = "mail-gateway";
    /// Recovery (3) + the slow idle count (12) + the simultaneous claim resolved (about 6).
    const SETTLE_WITHIN: u64 = 25;

    /// Two actives after a healed outage: the primary resolves after the threshold (5 checks) — goes
    /// off or standby, or keeps the role and commands `go-standby` every threshold; the secondary
    /// gives way after 3 × the threshold at the latest, seen one tick late, STANDBY once its stops
    /// are done (one tick, three when slow): 15 + 1 + 3.
    fn groups(&self) -> Vec<Group> {
        vec![Group { name: "mail-gateway", nodes: vec![0, 1], bound: 19 }]
    }

    fn build(&self, rng: &mut Rng, trace: bool) -> Sim<'_, ()> {
        self.sim(rng.below(3), trace)
    }

    fn inject(&self, sim: &mut Sim<'_, ()>, rng: &mut Rng) {
        sim.flip_links(rng, 6);
        for i in 0..2 {
            sim.crash_or_restart(rng, i, 3);
            sim.flip_monitors(rng, i, 2);
            if rng.chance(2) {
                sim.operator(i, REQUESTS[rng.below(REQUESTS.len())]);
            }
        }
    }

    fn calm(&self, sim: &mut Sim<'_, ()>) {
        sim.heal();
    }

    fn settled(&self, sim: &Sim<'_, ()>) -> Result<(), String> {
        sim.one_active(&[0, 1]).map(|_| ())
    }
}

pub struct ConfigOnly {
    policies: Vec<LoadedPolicy>,
}

impl ConfigOnly {
    pub fn load() -> ConfigOnly {
        ConfigOnly { policies: vec![crate::policy(&vigil_tests::runtime(), "mail-config-only", &[])] }
    }
}

impl ConfigOnly {
    /// The config-only pair, and this deployment's fault rates.
    pub fn sim(&self, trace: bool) -> Sim<'_, ()> {
        let mut sim = Sim::new(self.policies.iter().collect(), HEARTBEAT, (), trace);
        pair(&mut sim, 0, 0, &[]);
        sim.start();
        sim.faults = Faults { command_loss: 10, slow_action: 10, hook_failure: 10, start_failure: 5, sync_failure: 30 };
        sim
    }
}

impl Deployment for ConfigOnly {
    type W = ();
    const NAME: &'static str = "mail-gateway config-only";
    const SETTLE_WITHIN: u64 = 1;

    /// The config-only rule is one line of the plugin: fewer schedules than the failover pair.
    fn schedules(&self) -> u64 {
        500
    }

    /// Every node serves by design: not a failover group.
    fn groups(&self) -> Vec<Group> {
        Vec::new()
    }

    fn build(&self, _rng: &mut Rng, trace: bool) -> Sim<'_, ()> {
        self.sim(trace)
    }

    fn inject(&self, sim: &mut Sim<'_, ()>, rng: &mut Rng) {
        sim.flip_links(rng, 6);
        for i in 0..2 {
            sim.crash_or_restart(rng, i, 3);
            if rng.chance(3) {
                let requests = [REQUESTS[0], REQUESTS[1], REQUESTS[2], REQUESTS[3], OperatorRequest::PlannedReboot];
                sim.operator(i, requests[rng.below(requests.len())]);
            }
        }
    }

    fn calm(&self, sim: &mut Sim<'_, ()>) {
        sim.heal();
    }

    fn observe(&self, sim: &mut Sim<'_, ()>) -> Result<u64, String> {
        if sim.actions_run > 0 {
            return Err(format!("a config-only node acted ({} actions)", sim.actions_run));
        }
        for n in sim.nodes.iter().filter(|n| n.up && n.core.tick_count > 0) {
            if n.core.mode != Mode::Active {
                return Err(format!("config-only node {} is {} after its first tick", n.id, n.core.mode));
            }
        }
        Ok(0)
    }

    fn settled(&self, sim: &Sim<'_, ()>) -> Result<(), String> {
        match sim.nodes.iter().find(|n| !n.up || n.core.mode != Mode::Active) {
            Some(n) => Err(format!("{} is not serving", n.id)),
            None => Ok(()),
        }
    }
}
