//! voice: an active-passive PBX pair (`policies/voice-primary.toml`, switch-off and local monitors;
//! `voice-secondary.toml`, restore-slave-role), with planned reboots of the primary.
//!
//! The secondary's hold-off after a planned-reboot announcement is shortened from 300 s to 30 s (10
//! ticks at the 3 s interval) so that a schedule sees it end; the heartbeat threshold of 9 s is 3
//! checks. Group: a, b. Active: the daemon runs and says ACTIVE. Faults: those of the mail gateway
//! (both links, crashes, monitors, operator requests, lost commands, slow actions, failed syncs), plus
//! planned reboots: the operator announces one on the primary, which (most of the time) then goes
//! down — daemon, services and VIP — for a few ticks and comes back.
//! Settled: exactly one active; the other standby, off, failed or holding off, running no service.
//! Slowest settling: as the mail gateway's (see `mail_gateway.rs`), with a threshold of 3.

use crate::mail_gateway::pair;
use crate::sim::{Deployment, Faults, Group, Rng, Sim, World};
use vigil::model::{Heartbeat, OperatorRequest};
use vigil::policy::LoadedPolicy;

const HEARTBEAT: Heartbeat = Heartbeat { interval_ms: 3000, timeout_ms: 1000, failures: 3, successes: 3 };

pub struct Voice {
    policies: Vec<LoadedPolicy>,
}

/// A planned reboot of the primary under way: it goes down at `down`, comes back at `up`.
#[derive(Default)]
pub struct Reboot {
    down: Option<u64>,
    up: Option<u64>,
}

impl World for Reboot {}

impl Voice {
    pub fn load() -> Voice {
        let runtime = vigil_tests::runtime();
        Voice {
            policies: vec![
                crate::policy(&runtime, "voice-primary", &[]),
                crate::policy(&runtime, "voice-secondary", &[("planned_reboot_hold_ms = 300000", "planned_reboot_hold_ms = 30000")]),
            ],
        }
    }
}

impl Deployment for Voice {
    type W = Reboot;
    const NAME: &'static str = "voice";
    const SETTLE_WITHIN: u64 = 20;

    /// As the mail gateway, with a threshold of 3 checks: 9 + 1 + 3.
    fn groups(&self) -> Vec<Group> {
        vec![Group { name: "voice", nodes: vec![0, 1], bound: 13 }]
    }

    fn build(&self, _rng: &mut Rng, trace: bool) -> Sim<'_, Reboot> {
        let mut sim = Sim::new(self.policies.iter().collect(), HEARTBEAT, Reboot::default(), trace);
        pair(&mut sim, 0, 1, &[]);
        sim.start();
        sim.faults = Faults { command_loss: 10, slow_action: 10, hook_failure: 10, start_failure: 5, sync_failure: 30 };
        sim
    }

    fn inject(&self, sim: &mut Sim<'_, Reboot>, rng: &mut Rng) {
        let next = sim.t + 1;
        if sim.world.down == Some(next) {
            sim.crash(0);
            for running in sim.nodes[0].services.values_mut() {
                *running = false;
            }
            sim.nodes[0].vip = false;
            sim.note(|| "a reboots (planned)".into());
            sim.world.down = None;
        }
        if sim.world.up == Some(next) {
            sim.restart(0);
            sim.world.up = None;
        }
        let rebooting = sim.world.down.is_some() || sim.world.up.is_some();
        if !rebooting && sim.active(0) && rng.chance(3) {
            sim.operator(0, OperatorRequest::PlannedReboot);
            if rng.chance(80) {
                let down = next + 1 + rng.below(3) as u64;
                sim.world.down = Some(down);
                sim.world.up = Some(down + 2 + rng.below(9) as u64);
            }
        }
        sim.flip_links(rng, 6);
        for i in 0..2 {
            if i == 0 && rebooting {
                continue;
            }
            sim.crash_or_restart(rng, i, 3);
            sim.flip_monitors(rng, i, 2);
            if rng.chance(2) {
                let requests = [OperatorRequest::Standby, OperatorRequest::Active, OperatorRequest::Restore, OperatorRequest::RestartHa];
                sim.operator(i, requests[rng.below(requests.len())]);
            }
        }
    }

    fn calm(&self, sim: &mut Sim<'_, Reboot>) {
        sim.world = Reboot::default();
        sim.heal();
    }

    fn settled(&self, sim: &Sim<'_, Reboot>) -> Result<(), String> {
        sim.one_active(&[0, 1]).map(|_| ())
    }
}
