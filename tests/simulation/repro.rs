//! Each named exception of the simulation, replayed as a short script that must still show the
//! violation. These tests pass while the defect is there; when a fix lands, the one that fails names
//! the exception to delete (in the deployment's module) together with the test.

use crate::edge::Edge;
use crate::mail_gateway::ConfigOnly;
use crate::sim::{Deployment, Faults, Sim, World};
use crate::site::Site;
use vigil::model::{Mode, OperatorRequest};

/// Play `ticks` ticks without random faults, `script(sim)` before each (`sim.t` is the tick just
/// played); returns how many of `group` were active after each tick, and every exception `excused`
/// reported.
fn play<D: Deployment>(
    d: &D,
    sim: &mut Sim<'_, D::W>,
    ticks: u64,
    group: &[usize],
    mut script: impl FnMut(&mut Sim<'_, D::W>),
) -> (Vec<usize>, Vec<&'static str>) {
    sim.faults = Faults::default();
    let mut rng = crate::sim::Rng::new(1);
    let (mut actives, mut exceptions) = (Vec::new(), Vec::new());
    for _ in 0..ticks {
        script(sim);
        if let Err(fault) = sim.tick(&mut rng) {
            panic!("{fault:?}\n{}", sim.timeline);
        }
        actives.push(sim.actives(group));
        if let Some(name) = d.excused(sim) {
            if !exceptions.contains(&name) {
                exceptions.push(name);
            }
        }
    }
    (actives, exceptions)
}

/// After tick `from`: how many ticks had exactly one active, how many two.
fn count<W: World>(sim: &Sim<'_, W>, actives: &[usize], from: usize) -> (usize, usize) {
    let after = &actives[from..];
    let (one, two) = (after.iter().filter(|n| **n == 1).count(), after.iter().filter(|n| **n >= 2).count());
    assert!(sim.whole(), "the script leaves every daemon and link up");
    (one, two)
}

#[test]
fn xivo_operator_active_on_the_standby_still_runs_two_telephony_servers() {
    let d = Site::load();
    let mut sim = d.sim(1, true, true);
    let (actives, exceptions) = play(&d, &mut sim, 30, &[0, 1], |sim| {
        if sim.t == 10 {
            sim.operator(1, OperatorRequest::Active);
        }
    });
    let (one, two) = count(&sim, &actives, 12);
    assert!(one == 0 && two == 18, "fixed? exactly one active {one} ticks: remove XIVO_OPERATOR_ACTIVE_BESIDE_MAIN\n{}", sim.timeline);
    assert_eq!((sim.actives(&[2, 3]), sim.actives(&[4, 5])), (2, 2), "both CCs and both xds nodes follow their XiVO");
    assert_eq!(exceptions, ["XIVO_OPERATOR_ACTIVE_BESIDE_MAIN"]);
}

#[test]
fn xivo_manual_restore_still_leaves_the_standby_active() {
    let d = Site::load();
    let mut sim = d.sim(3, true, true);
    let (actives, exceptions) = play(&d, &mut sim, 30, &[0, 1], |sim| match sim.t {
        10 => sim.operator(1, OperatorRequest::Active),
        14 => sim.operator(1, OperatorRequest::Restore),
        _ => {}
    });
    let (one, two) = count(&sim, &actives, 16);
    assert!(one == 0 && two == 14, "fixed? exactly one active {one} ticks: remove XIVO_MANUAL_RESTORE_KEEPS_STANDBY_ACTIVE\n{}", sim.timeline);
    assert_eq!(exceptions, ["XIVO_OPERATOR_ACTIVE_BESIDE_MAIN", "XIVO_MANUAL_RESTORE_KEEPS_STANDBY_ACTIVE"]);
}

#[test]
fn edge_route_hook_target_is_still_forgotten_on_restart() {
    let d = Edge::load();
    // edge-nginx, stacks checked by TCP.
    let mut sim = d.sim(1, false, None, true);
    let (_, exceptions) = play(&d, &mut sim, 40, &[], |sim| match sim.t {
        3 => sim.externals[0].answers = false,
        10 => sim.crash(0),
        11 => sim.restart(0),
        13 => {
            sim.externals[0].answers = true;
            sim.externals[1].answers = false;
        }
        _ => {}
    });
    let stuck = (sim.world.to.as_deref(), sim.nodes[0].route.as_deref());
    assert_eq!(stuck, (Some("standby"), Some("main")), "fixed? remove EDGE_ROUTE_HOOK_TARGET_FORGOTTEN_ON_RESTART\n{}", sim.timeline);
    assert!(!sim.externals[1].answers && sim.externals[0].answers, "traffic stays on the dead standby while main works");
    assert_eq!(exceptions, ["EDGE_ROUTE_HOOK_TARGET_FORGOTTEN_ON_RESTART"]);
}

#[test]
fn config_only_nodes_still_wait_the_start_up_grace_for_a_silent_peer() {
    let d = ConfigOnly::load();
    let mut sim = d.sim(true);
    let mut modes = Vec::new();
    let (_, exceptions) = play(&d, &mut sim, 10, &[0, 1], |sim| {
        match sim.t {
            3 => sim.crash(1),
            4 => sim.crash(0),
            5 => sim.restart(0),
            _ => {}
        }
        modes.push(sim.nodes[0].core.mode);
    });
    // a restarts before tick 6 with b down: the 5 s grace holds its first tick (3 s after the start);
    // config-only nodes otherwise serve from their first tick.
    assert_eq!(&modes[6..8], [Mode::Standby, Mode::Active], "fixed? remove CONFIG_ONLY_STARTUP_GRACE_DELAYS_SERVING\n{}", sim.timeline);
    assert_eq!(exceptions, ["CONFIG_ONLY_STARTUP_GRACE_DELAYS_SERVING"]);
}
