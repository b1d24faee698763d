//! `vigil demo voice`: a PBX pair (primary `a`, secondary `b`, two heartbeat paths). Twice the
//! operator announces a planned reboot of the active primary (`vigil switch planned-reboot`) and
//! stops it: the secondary enters HOLD-OFF instead of taking over.
//!
//! 1. The primary returns within the hold-off: it takes the role again, the secondary resumes
//!    standby; no failover happened (no calls interrupted).
//! 2. The primary does not return: when the hold-off runs out the secondary takes over (the calls
//!    alarm says active calls were interrupted). The primary, restarted later, finds it active and
//!    stays standby (no automatic failback) until the operator's `restore`.
//!
//! The PBX services are shell commands on marker files; no virtual IP is moved (`vip = false`).

use super::{all_running, cluster, marker_services, two_paths, CliError, Demo};
use crate::cluster::{NodeSpec, Timing};
use crate::model::{Mode, Role};
use std::path::Path;
use std::time::{Duration, Instant};

const SERVICES: [&str; 2] = ["pbx", "provisioning"];
const TIMING: Timing = Timing { interval_ms: 150, timeout_ms: 120, failures: 3, successes: 3 };
/// `planned_reboot_hold_ms` (the product's default is 5 minutes).
const HOLD_MS: u64 = 5000;
/// Part of the calls alarm a takeover raises.
const CALLS_ALARM: &str = "active calls on the failed unit were interrupted";

fn policy(on_failure: &str) -> String {
    format!(
        "plugin = \"voice\"\n\n[params]\non_failure = \"{on_failure}\"\nplanned_reboot_hold_ms = {HOLD_MS}\nstart_order = {SERVICES:?}\n\
         # The loopback pair has no interface to move an address on.\nvip = false\n{}",
        marker_services(&SERVICES)
    )
}

async fn serving(demo: &mut Demo, i: usize, what: &str) -> Result<(), CliError> {
    let other = 1 - i;
    demo.wait_until(what, Duration::from_secs(5), |d| all_running(d.node(i), &SERVICES, true) && all_running(d.node(other), &SERVICES, false)).await
}

/// The operator announces a's planned reboot; b enters hold-off. Returns when it was announced.
async fn announce(demo: &mut Demo) -> Result<Instant, CliError> {
    let at = Instant::now();
    demo.switch(0, "planned-reboot").await?;
    demo.wait_modes("b in HOLD-OFF, a still serving", Duration::from_secs(5), &[Some(Mode::Active), Some(Mode::HoldOff)]).await?;
    Ok(at)
}

pub(super) async fn run(exe: &Path, dir: &Path) -> Result<(), CliError> {
    let mut c = cluster(exe, dir, TIMING)?;
    c.add(NodeSpec::new("a", Role::Primary, &policy("switch-off"))).map_err(super::fail)?;
    c.add(NodeSpec::new("b", Role::Secondary, &policy("restore-slave-role"))).map_err(super::fail)?;
    two_paths(&mut c);
    let title = format!(
        "a PBX pair, primary a and secondary b, heartbeat on two paths every {} ms; planned-reboot hold-off {} ms",
        TIMING.interval_ms, HOLD_MS
    );
    let mut demo = Demo::new(c, &title);
    let (a, s, hold) = (Some(Mode::Active), Some(Mode::Standby), Some(Mode::HoldOff));
    demo.start(0)?;
    demo.start(1)?;
    demo.wait_modes("the primary active, the secondary standby", Duration::from_secs(20), &[a, s]).await?;
    serving(&mut demo, 0, "the PBX services on a only").await?;
    demo.note("a runs the PBX");
    demo.watch(Duration::from_millis(500)).await?;

    // 1. A planned reboot from which the primary returns in time.
    announce(&mut demo).await?;
    demo.stop(0);
    demo.keep("b to hold off while a reboots", Duration::from_millis(500), |m| m[1] == hold).await?;
    demo.start(0)?;
    demo.wait_modes("a back active, b back to standby", Duration::from_secs(10), &[a, s]).await?;
    serving(&mut demo, 0, "the PBX services on a only").await?;
    if demo.events(1).await?.contains(CALLS_ALARM) {
        return Err(demo.failed("no takeover by b while the primary reboots", "b raised the calls alarm of a takeover"));
    }
    demo.note("the primary returned within the hold-off: b resumed standby, no failover");
    demo.watch(Duration::from_millis(500)).await?;

    // 2. A planned reboot from which the primary does not return.
    let announced = announce(&mut demo).await?;
    demo.stop(0);
    let hold_limit = Duration::from_millis(HOLD_MS) + Duration::from_secs(5);
    demo.wait("b to take over when the hold-off runs out", hold_limit, |m| (m[1] == a).then_some(())).await?;
    let took_over = announced.elapsed();
    if took_over < Duration::from_millis(HOLD_MS) {
        return Err(demo.failed("b to hold off for the whole planned_reboot_hold_ms", &format!("it took over after {} ms", took_over.as_millis())));
    }
    serving(&mut demo, 1, "the PBX services on b only").await?;
    demo.expect_event(1, CALLS_ALARM).await?;
    demo.note(&format!("the hold-off ran out: b active {} ms after the announcement (calls alarm raised)", took_over.as_millis()));
    demo.watch(Duration::from_millis(500)).await?;

    demo.start(0)?;
    demo.wait_modes("the restarted primary in standby beside the active secondary", Duration::from_secs(10), &[s, a]).await?;
    demo.keep("no automatic failback", Duration::from_secs(1), |m| m == [s, a]).await?;
    demo.switch(0, "restore").await?;
    demo.wait_modes("restore to give a its configured role back", Duration::from_secs(10), &[a, s]).await?;
    serving(&mut demo, 0, "the PBX services on a only").await?;
    demo.finish(&[
        "Planned reboot 1: the primary returned within the hold-off; the secondary never took over".to_string(),
        format!(
            "Planned reboot 2: the primary did not return; the secondary took over {} ms after the announcement (hold-off {HOLD_MS} ms)",
            took_over.as_millis()
        ),
    ])
    .await
}
