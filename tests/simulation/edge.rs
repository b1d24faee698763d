//! edge: one Edge node relays client traffic to the main or the standby stack
//! (`policies/edge.toml`: the built-in relay; `edge-nginx.toml`: a route hook rewriting nginx's
//! upstream, with `return_to_main`). The stacks are outside systems the Edge watches over a link each:
//! a TCP check (answers or not) or, in some schedules, a vigil `/role` that may answer OFF.
//!
//! No pair: the property is about the route. Where new connections actually go is modelled apart from
//! what the daemon believes: the built-in relay lives in the daemon (down with it, back at `initial`
//! when it restarts); an nginx upstream stays wherever the last successful hook put it.
//! Faults: stacks failing and recovering, a stack answering OFF, watch links cut and healed, the Edge
//! daemon killed and restarted, route changes that fail (a failing hook, retried), slow route changes.
//! Settled (after the faults, with one stack possibly left dead for good): traffic goes to a stack
//! that works, the daemon knows where traffic goes, and it stays. Figure: the longest run of ticks
//! traffic went to a failed stack while the other worked and the Edge could see both.
//!
//! A restarted daemon with a route hook starts from the target of the last successful hook (the host
//! keeps it in its data directory), as nginx still sends traffic there.

use crate::sim::{Deployment, External, Faults, Group, How, Rng, Run, Sim, Target, WatchSpec, World};
use vigil::model::{Heartbeat, Mode, Role};
use vigil::policy::LoadedPolicy;

pub struct Edge {
    policies: Vec<LoadedPolicy>,
}

const NAMES: [&str; 2] = ["edge", "edge-nginx"];
const STACKS: [&str; 2] = ["main", "standby"];

/// Where new connections go, and for how long they went to a dead stack.
#[derive(Default)]
pub struct Traffic {
    /// `None` while the built-in relay is down with its daemon.
    pub to: Option<String>,
    pub hook: bool,
    pub dead: Run,
    /// The stack that stays dead after the faults, if any (drawn with the schedule).
    pub dead_for_good: Option<usize>,
}

impl World for Traffic {
    fn route(&mut self, _node: usize, target: &str, ok: bool) {
        if ok {
            self.to = Some(target.to_string());
        }
    }
}

impl Edge {
    pub fn load() -> Edge {
        let runtime = vigil_tests::runtime();
        Edge { policies: NAMES.iter().map(|n| crate::policy(&runtime, n, &[])).collect() }
    }
}

fn healthy(e: &External) -> bool {
    e.answers && !matches!(e.mode, Some(Mode::Off | Mode::Failed))
}

fn stack<'a>(sim: &'a Sim<'_, Traffic>, id: &str) -> Option<&'a External> {
    sim.externals.iter().find(|e| e.name == id)
}

impl Edge {
    /// The Edge with `NAMES[variant]`, its stacks checked by `/role` (`role`) or TCP, `dead_for_good`
    /// the stack left dead after the faults, and this deployment's fault rates.
    pub fn sim(&self, variant: usize, role: bool, dead_for_good: Option<usize>, trace: bool) -> Sim<'_, Traffic> {
        let heartbeat = Heartbeat { interval_ms: 1000, timeout_ms: 500, failures: 3, successes: 3 };
        let traffic = Traffic { to: Some("main".into()), hook: NAMES[variant] == "edge-nginx", dead: Run::default(), dead_for_good };
        let mut sim = Sim::new(self.policies.iter().collect(), heartbeat, traffic, trace);
        let edge = sim.node("edge", Role::Primary, variant);
        for (k, name) in STACKS.iter().enumerate() {
            sim.externals.push(External { name: (*name).into(), answers: true, mode: role.then_some(Mode::Active) });
            let link = sim.link(&format!("edge/{name}"));
            sim.nodes[edge].watched.push(WatchSpec { id: (*name).into(), target: Target::External(k), link, how: How::Vigil });
        }
        sim.start();
        sim.note(|| format!("policy {}, stacks checked by {}", NAMES[variant], if role { "/role" } else { "TCP" }));
        sim.faults = Faults { command_loss: 0, slow_action: 15, hook_failure: 15, start_failure: 0, sync_failure: 0 };
        sim
    }
}

impl Deployment for Edge {
    type W = Traffic;
    const NAME: &'static str = "edge";
    const SETTLE_WITHIN: u64 = 10;

    /// One node: no failover group; the property is the route's.
    fn groups(&self) -> Vec<Group> {
        Vec::new()
    }

    fn build(&self, rng: &mut Rng, trace: bool) -> Sim<'_, Traffic> {
        let variant = rng.below(NAMES.len());
        let role = rng.chance(40);
        self.sim(variant, role, [None, None, Some(0), Some(1)][rng.below(4)], trace)
    }

    fn inject(&self, sim: &mut Sim<'_, Traffic>, rng: &mut Rng) {
        for k in 0..2 {
            if rng.chance(7) {
                let e = &mut sim.externals[k];
                e.answers = !e.answers;
                let (name, answers) = (e.name.clone(), e.answers);
                sim.note(|| format!("stack {name} {}", if answers { "answers again" } else { "DOWN" }));
            }
            if sim.externals[k].mode.is_some() && rng.chance(3) {
                let e = &mut sim.externals[k];
                e.mode = Some(if e.mode == Some(Mode::Active) { Mode::Off } else { Mode::Active });
                let (name, mode) = (e.name.clone(), e.mode);
                sim.note(|| format!("stack {name} reports {mode:?}"));
            }
        }
        sim.flip_links(rng, 4);
        if rng.chance(3) {
            if sim.nodes[0].up {
                sim.crash(0);
                if !sim.world.hook {
                    sim.world.to = None;
                }
            } else {
                sim.restart(0);
                if !sim.world.hook {
                    sim.world.to = sim.nodes[0].route.clone();
                }
            }
        }
    }

    fn calm(&self, sim: &mut Sim<'_, Traffic>) {
        let down = !sim.nodes[0].up;
        sim.heal();
        if down && !sim.world.hook {
            sim.world.to = sim.nodes[0].route.clone();
        }
        // One stack may stay dead for good: the Edge must end on the other.
        let dead = sim.world.dead_for_good;
        for k in 0..2 {
            let e = &mut sim.externals[k];
            e.answers = dead != Some(k);
            if e.mode.is_some() {
                e.mode = Some(Mode::Active);
            }
        }
        let dead_name = dead.map(|k| STACKS[k]);
        sim.note(|| format!("stacks: {} dead for good", dead_name.unwrap_or("none")));
    }

    fn observe(&self, sim: &mut Sim<'_, Traffic>) -> Result<u64, String> {
        let to = sim.world.to.clone();
        let dead = to.as_deref().is_some_and(|to| {
            let other = if to == "main" { "standby" } else { "main" };
            !stack(sim, to).is_some_and(healthy) && stack(sim, other).is_some_and(healthy)
        });
        let (counted, t) = (sim.whole() && self.excused(sim).is_none(), sim.t);
        sim.world.dead.count(counted && dead, t);
        Ok(sim.world.dead.longest)
    }

    fn settled(&self, sim: &Sim<'_, Traffic>) -> Result<(), String> {
        let Some(to) = sim.world.to.as_deref() else { return Err("the relay is down".into()) };
        if !stack(sim, to).is_some_and(healthy) {
            return Err(format!("traffic goes to {to}, which does not work"));
        }
        if sim.nodes[0].route.as_deref() != Some(to) {
            return Err(format!("traffic goes to {to} but the Edge daemon believes {:?}", sim.nodes[0].route));
        }
        Ok(())
    }
}
