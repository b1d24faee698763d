//! `vigil demo mail-gateway`: a master (`a`, configured primary) and a slave (`b`) with two heartbeat
//! paths each, `on_failure = "switch-off"`. The master is killed: the slave takes over once the
//! heartbeat is lost on both paths. The master restarts and stays slave (configured primary, mode
//! STANDBY) until the operator restores the configured mode. Then its local monitoring fails: it
//! goes OFF and the slave takes over; OFF waits for the operator even once healthy; `restore` again.
//!
//! The mail services and the local monitor are shell commands on marker files (the monitor fails
//! while `smtp-broken` exists); no virtual IP is moved (`vip = false`: loopback has no interface to
//! move one on).

use super::{all_running, cluster, marker_services, two_paths, CliError, Demo};
use crate::cluster::{NodeSpec, Timing};
use crate::model::{Mode, Role};
use hyper::Method;
use std::path::Path;
use std::time::{Duration, Instant};

const SERVICES: [&str; 2] = ["mta", "webmail"];
const TIMING: Timing = Timing { interval_ms: 150, timeout_ms: 120, failures: 3, successes: 3 };

fn policy() -> String {
    format!(
        "plugin = \"mail-gateway\"\n\n[params]\non_failure = \"switch-off\"\nlocal_failures = 2\nstart_order = {SERVICES:?}\n\
         # The loopback pair has no interface to move an address on.\nvip = false\n\n\
         [monitors.smtp]\nkind = \"command\"\ncommand = \"test ! -f '{{dir}}/smtp-broken'\"\ntimeout_ms = 1000\n{}",
        marker_services(&SERVICES)
    )
}

/// "configured primary, mode STANDBY", from the node's `/status`.
async fn configured_and_effective(demo: &Demo, i: usize) -> String {
    let Ok((200, body)) = demo.cluster.admin(i, Method::GET, "/status").await else { return "(no status)".into() };
    let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let word = |k: &str| status["node"][k].as_str().unwrap_or("?").to_string();
    format!("configured {}, mode {}", word("configured_role"), word("mode").to_uppercase())
}

async fn serving(demo: &mut Demo, i: usize, what: &str) -> Result<(), CliError> {
    let other = 1 - i;
    demo.wait_until(what, Duration::from_secs(5), |d| all_running(d.node(i), &SERVICES, true) && all_running(d.node(other), &SERVICES, false)).await
}

pub(super) async fn run(exe: &Path, dir: &Path) -> Result<(), CliError> {
    let mut c = cluster(exe, dir, TIMING)?;
    c.add(NodeSpec::new("a", Role::Primary, &policy())).map_err(super::fail)?;
    c.add(NodeSpec::new("b", Role::Secondary, &policy())).map_err(super::fail)?;
    two_paths(&mut c);
    let title = format!(
        "a mail gateway master (a) and slave (b), heartbeat on two paths (hb1, hb2) every {} ms, lost threshold {} checks, on failure switch-off",
        TIMING.interval_ms, TIMING.failures
    );
    let mut demo = Demo::new(c, &title);
    let (a, s, off) = (Some(Mode::Active), Some(Mode::Standby), Some(Mode::Off));
    demo.start(0)?;
    demo.start(1)?;
    demo.wait_modes("the master active, the slave standby", Duration::from_secs(20), &[a, s]).await?;
    serving(&mut demo, 0, "the mail services on a only").await?;
    demo.note("a serves mail (mta, webmail)");
    demo.watch(Duration::from_millis(500)).await?;

    // 1. The master dies.
    let killed = Instant::now();
    demo.kill(0);
    demo.wait("the slave to take over once the heartbeat is lost on both paths", Duration::from_secs(10), |m| (m[1] == a).then_some(())).await?;
    let failover = killed.elapsed();
    // a's marker files stay behind: a SIGKILL of the daemon leaves its services as they were.
    demo.wait_until("the mail services on b", Duration::from_secs(5), |d| all_running(d.node(1), &SERVICES, true)).await?;
    demo.expect_event(1, "heartbeat lost on every path").await?;
    demo.note(&format!("failover: b active {} ms after the kill (heartbeat lost on hb1 and hb2), serving mail", failover.as_millis()));

    // 2. It restarts: it finds b active and stays slave until the operator restores it.
    demo.start(0)?;
    demo.wait_modes("the restarted master in standby beside the active slave", Duration::from_secs(10), &[s, a]).await?;
    serving(&mut demo, 1, "the mail services on b only (the restarted a stops what its killed daemon left running)").await?;
    demo.keep("no automatic failback with switch-off", Duration::from_secs(1), |m| m == [s, a]).await?;
    demo.note(&format!("a: {}", configured_and_effective(&demo, 0).await));
    demo.switch(0, "restore").await?;
    demo.wait_modes("restore to give a its configured role back", Duration::from_secs(10), &[a, s]).await?;
    serving(&mut demo, 0, "the mail services back on a only").await?;
    demo.note(&format!("a: {}", configured_and_effective(&demo, 0).await));

    // 3. Local monitoring fails on the master.
    demo.note("break a's SMTP monitor (touch smtp-broken)");
    let broken = demo.node(0).dir.join("smtp-broken");
    std::fs::write(&broken, "").map_err(super::fail)?;
    let broke = Instant::now();
    demo.wait_modes("a OFF (switch-off), b active", Duration::from_secs(10), &[off, a]).await?;
    serving(&mut demo, 1, "the mail services on b only").await?;
    let switched_off = broke.elapsed();
    demo.expect_event(0, "local monitoring: smtp failed").await?;
    demo.note(&format!("a switched itself off {} ms after its monitor broke; b serves mail", switched_off.as_millis()));
    std::fs::remove_file(&broken).map_err(super::fail)?;
    demo.note("repair a's SMTP monitor (rm smtp-broken)");
    demo.keep("OFF to wait for the operator even once healthy", Duration::from_secs(1), |m| m == [off, a]).await?;
    demo.switch(0, "restore").await?;
    demo.wait_modes("restore to bring a back from OFF to its configured role", Duration::from_secs(10), &[a, s]).await?;
    serving(&mut demo, 0, "the mail services back on a only").await?;
    demo.finish(&[
        format!("Failover (kill -9 of the master → the slave active): {} ms", failover.as_millis()),
        format!("Local monitoring failure (monitor broken → master OFF, slave active): {} ms", switched_off.as_millis()),
    ])
    .await
}
