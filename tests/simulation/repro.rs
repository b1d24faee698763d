//! Each named exception of the simulation, replayed as a short script that must still show the
//! violation. These tests pass while the defect is there; when a fix lands, the one that fails names
//! the exception to delete (in the deployment's module), and the script stays as a regression test
//! of the fix.

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

/// Was `XIVO_MANUAL_RESTORE_KEEPS_STANDBY_ACTIVE`: in manual mode, `restore` on a standby an operator
/// had made active left it ACTIVE beside the main. It now stops its telephony, break-before-make.
#[test]
fn xivo_manual_restore_stops_the_standby_the_operator_made_active() {
    let d = Site::load();
    let mut sim = d.sim(3, true, true);
    let (actives, _) = play(&d, &mut sim, 30, &[0, 1], |sim| match sim.t {
        10 => sim.operator(1, OperatorRequest::Active),
        14 => sim.operator(1, OperatorRequest::Restore),
        _ => {}
    });
    // A couple of ticks for the stops, then only the main.
    let (one, two) = count(&sim, &actives, 20);
    assert!(one == 10 && two == 0, "exactly one active {one} ticks, two {two}\n{}", sim.timeline);
    assert!(sim.active(0) && !sim.active(1), "the main serves, the standby does not\n{}", sim.timeline);
}

/// Was `EDGE_ROUTE_HOOK_TARGET_FORGOTTEN_ON_RESTART`: a restarted Edge daemon believed `initial`
/// while nginx still sent traffic where the last hook put it, and left traffic on a dead stack. The
/// host now starts from the last hook's target.
#[test]
fn a_restarted_edge_knows_where_its_route_hook_sent_traffic() {
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
    let now = (sim.world.to.as_deref(), sim.nodes[0].route.as_deref());
    assert_eq!(now, (Some("main"), Some("main")), "traffic back on the working main, and the daemon knows it\n{}", sim.timeline);
    assert!(exceptions.is_empty(), "{exceptions:?}");
}

/// Was `CONFIG_ONLY_STARTUP_GRACE_DELAYS_SERVING`: the start-up grace held a config-only node whose
/// peer was down. Its policy now says `exclusive = false`, and the grace spares it.
#[test]
fn config_only_nodes_serve_from_their_first_tick_even_with_a_silent_peer() {
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
    assert_eq!(&modes[6..8], [Mode::Active, Mode::Active], "{}", sim.timeline);
    assert!(exceptions.is_empty(), "{exceptions:?}");
}
