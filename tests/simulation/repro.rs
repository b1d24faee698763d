//! Each named exception of the simulation, replayed as a short script that must still show the
//! violation. These tests pass while the defect is there; when a fix lands, the one that fails names
//! the exception to delete (in the deployment's module) together with the test.

use crate::edge::Edge;
use crate::hot_standby::HotStandby;
use crate::mail_gateway::{ConfigOnly, MailGateway};
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
fn hot_standby_nobody_active_tie_still_cycles() {
    let d = HotStandby::load();
    let mut sim = d.sim(0, true);
    // a holds the role; the operator switches it to standby and its go-active to b is lost.
    let (actives, exceptions) = play(&d, &mut sim, 60, &[0, 1], |sim| match sim.t {
        5 => {
            sim.operator(0, OperatorRequest::Standby);
            sim.faults.command_loss = 100;
        }
        6 => sim.faults.command_loss = 0,
        _ => {}
    });
    let (one, two) = count(&sim, &actives, 8);
    assert!(one == 0 && two >= 3, "fixed? exactly one active {one} ticks, two {two}: remove HOT_STANDBY_NOBODY_ACTIVE_TIE\n{}", sim.timeline);
    assert_eq!(exceptions, ["HOT_STANDBY_NOBODY_ACTIVE_TIE"]);
}

#[test]
fn active_passive_nobody_active_tie_still_cycles() {
    let d = MailGateway::load();
    // Both nodes restore-slave-role. a fails locally and hands over to b; a recovers (standby);
    // b fails locally and hands back to a; a fails again (b is not active: a stays "yielded"); both
    // recover in the same tick.
    let mut sim = d.sim(2, true);
    let (actives, exceptions) = play(&d, &mut sim, 100, &[0, 1], |sim| {
        let set = |sim: &mut Sim<'_, ()>, node: usize, monitor: &str, healthy: bool| {
            sim.nodes[node].monitors.insert(monitor.into(), healthy);
        };
        match sim.t {
            8 => set(sim, 0, "spool", false),
            13 => set(sim, 0, "spool", true),
            18 => set(sim, 1, "smtp", false),
            22 => set(sim, 0, "spool", false),
            26 => {
                set(sim, 0, "spool", true);
                set(sim, 1, "smtp", true);
            }
            _ => {}
        }
    });
    let (one, two) = count(&sim, &actives, 30);
    assert!(one == 0 && two >= 2, "fixed? exactly one active {one} ticks, two {two}: remove ACTIVE_PASSIVE_NOBODY_ACTIVE_TIE\n{}", sim.timeline);
    assert_eq!(exceptions, ["ACTIVE_PASSIVE_NOBODY_ACTIVE_TIE"]);
}

#[test]
fn xivo_operator_active_on_the_standby_still_runs_two_telephony_servers() {
    let d = Site::load();
    let mut sim = d.sim(1, true);
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
    let mut sim = d.sim(3, true);
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
fn config_only_operator_request_on_the_first_tick_still_delays_serving() {
    let d = ConfigOnly::load();
    let mut sim = d.sim(true);
    let mut modes = Vec::new();
    let (_, exceptions) = play(&d, &mut sim, 10, &[0, 1], |sim| {
        match sim.t {
            4 => sim.crash(0),
            6 => {
                sim.restart(0);
                sim.operator(0, OperatorRequest::Standby);
            }
            _ => {}
        }
        modes.push(sim.nodes[0].core.mode);
    });
    // modes[t] is a's mode after tick t: its first tick after the restart is tick 7.
    assert_eq!((modes[7], modes[8]), (Mode::Standby, Mode::Active), "fixed? remove CONFIG_ONLY_OPERATOR_REQUEST_ON_FIRST_TICK\n{}", sim.timeline);
    assert_eq!(exceptions, ["CONFIG_ONLY_OPERATOR_REQUEST_ON_FIRST_TICK"]);
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
