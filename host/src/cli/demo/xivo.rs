//! `vigil demo xivo`: the XiVO main + standby pair. The main is killed; the standby regenerates its
//! configuration and starts its telephony in order; the main comes back and the standby stops its
//! telephony by itself (automatic failback, no manual action).
//!
//! On one machine a ping cannot see a killed process, so the standby checks the main with the vigil
//! heartbeat (as `tests/xivo.rs`); `policies/xivo-standby.toml` shows the production probe.

use super::{all_running, cluster, marker_services, order_log, CliError, Demo};
use crate::cluster::{Cluster, NodeSpec, Timing};
use crate::model::{Mode, Role};
use std::path::Path;
use std::time::{Duration, Instant};

/// The telephony services, in start order.
pub(super) const SERVICES: [&str; 4] = ["xivo-confgend", "asterisk", "xivo-agid", "xivo-ctid"];

pub(super) const TIMING: Timing = Timing { interval_ms: 100, timeout_ms: 100, failures: 3, successes: 3 };

/// The XiVO policy of the main (`standby` false) or the standby: marker-file services, and on the
/// standby the configuration regeneration hook, which only writes to `order.log`.
fn policy(standby: bool) -> String {
    let mut p = format!("plugin = \"xivo\"\n\n[params]\nservices = {SERVICES:?}\n");
    if standby {
        p.push_str("config_hook = \"config-regen\"\n\n[hooks.config-regen]\ncommand = [\"/bin/sh\", \"-c\", \"echo config-regen >> '{dir}/order.log'\"]\n");
    }
    p + &marker_services(&SERVICES)
}

/// Add the main `xivo-a` and the standby `xivo-b` (the next two node indexes), each the other's peer.
pub(super) fn add_pair(cluster: &mut Cluster) -> Result<(), CliError> {
    let mut main = NodeSpec::new("xivo-a", Role::Primary, &policy(false));
    main.peers = vec!["xivo-b".into()];
    let mut standby = NodeSpec::new("xivo-b", Role::Secondary, &policy(true));
    standby.peers = vec!["xivo-a".into()];
    cluster.add(main).map_err(super::fail)?;
    cluster.add(standby).map_err(super::fail)?;
    Ok(())
}

pub(super) async fn run(exe: &Path, dir: &Path) -> Result<(), CliError> {
    let mut c = cluster(exe, dir, TIMING)?;
    add_pair(&mut c)?;
    let title = format!(
        "a XiVO main (xivo-a) and standby (xivo-b) on loopback; the standby checks the main every {} ms, {} lost checks to take over",
        TIMING.interval_ms, TIMING.failures
    );
    let mut demo = Demo::new(c, &title);
    let (a, s) = (Some(Mode::Active), Some(Mode::Standby));
    demo.start(0)?;
    demo.start(1)?;
    demo.wait_modes("main active, standby standby", Duration::from_secs(20), &[a, s]).await?;
    demo.wait_until("the main's telephony running", Duration::from_secs(5), |d| all_running(d.node(0), &SERVICES, true)).await?;
    demo.note("the main runs the telephony; the standby runs nothing");
    demo.keep("the standby to stay standby while the main answers", Duration::from_secs(1), |m| m == [a, s]).await?;

    let killed = Instant::now();
    demo.kill(0);
    demo.wait("the standby to take over", Duration::from_secs(10), |m| (m[1] == a).then_some(())).await?;
    let failover = killed.elapsed();
    demo.wait_until("the standby's telephony running", Duration::from_secs(5), |d| all_running(d.node(1), &SERVICES, true)).await?;
    let started = order_log(demo.node(1));
    let want = ["config-regen", "start xivo-confgend", "start asterisk", "start xivo-agid", "start xivo-ctid"];
    if started != want {
        return Err(demo.failed(&format!("the standby to regenerate its configuration, then start {want:?}"), &format!("its order.log says {started:?}")));
    }
    demo.note(&format!("failover: xivo-b active {} ms after the kill; order.log: {}", failover.as_millis(), started.join(", ")));
    demo.watch(Duration::from_millis(500)).await?;

    let back = Instant::now();
    demo.start(0)?;
    demo.wait_modes("the main back active and the standby back to standby, by themselves", Duration::from_secs(10), &[a, s]).await?;
    demo.wait_until("the standby's telephony stopped, the main's running", Duration::from_secs(5), |d| {
        all_running(d.node(1), &SERVICES, false) && all_running(d.node(0), &SERVICES, true)
    })
    .await?;
    let failback = back.elapsed();
    let stopped: Vec<String> = order_log(demo.node(1)).split_off(want.len()).iter().map(|l| l.trim_start_matches("stop ").to_string()).collect();
    demo.note(&format!("failback: xivo-b stopped {} (reverse order); the main serves again", stopped.join(", ")));
    demo.keep("main active, standby standby", Duration::from_secs(1), |m| m == [a, s]).await?;
    demo.finish(&[
        format!("Failover (kill -9 of the main → the standby active): {} ms", failover.as_millis()),
        format!("Failback (main restarted → main serving, standby stopped): {} ms, no manual action", failback.as_millis()),
    ])
    .await
}
