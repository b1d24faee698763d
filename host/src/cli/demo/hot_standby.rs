//! `vigil demo hot-standby`: the hot-standby pair (`first_server_auto_active`), its active node killed
//! with SIGKILL, the failover, the killed node restarted and taking its role back.

use super::{fail, CliError, Demo};
use crate::cluster::{exactly_one_active, Cluster, PairSpec};
use crate::model::Mode;
use std::path::Path;
use std::time::{Duration, Instant};

pub(super) async fn run(exe: &Path, dir: &Path) -> Result<(), CliError> {
    let spec = PairSpec { params: "first_server_auto_active = true".into(), ..PairSpec::default() };
    let cluster = Cluster::hot_standby_pair(exe, dir, &spec).map_err(fail)?;
    let title = format!(
        "a hot-standby pair on loopback, a primary and a secondary (heartbeat every {} ms, {} failed checks to switch)",
        spec.timing.interval_ms, spec.timing.failures
    );
    let mut demo = Demo::new(cluster, &title);
    demo.start(0)?;
    demo.start(1)?;
    let active = demo.wait("one active node", Duration::from_secs(20), exactly_one_active).await?;
    demo.note(&format!("pair stable: {} is active", demo.id(active)));
    demo.watch(Duration::from_secs(1)).await?;

    let (victim, survivor) = (active, 1 - active);
    let killed_at = Instant::now();
    demo.kill(victim);
    demo.wait("the standby to take over", Duration::from_secs(10), |m| (m[survivor] == Some(Mode::Active)).then_some(())).await?;
    let failover = killed_at.elapsed();
    demo.note(&format!("failover: node {} is active {} ms after the kill", demo.id(survivor), failover.as_millis()));
    demo.watch(Duration::from_secs(1)).await?;

    demo.start(victim)?;
    demo.wait("the restarted node to rejoin", Duration::from_secs(20), |m| m[victim].and(exactly_one_active(m))).await?;
    // The primary takes its role back after `successes` good checks (first_server_auto_active).
    demo.wait("the primary a to take its role back (first_server_auto_active)", Duration::from_secs(10), |m| {
        (m == [Some(Mode::Active), Some(Mode::Standby)]).then_some(())
    })
    .await?;
    demo.note("after the restart: node a is active (first_server_auto_active = true gives the primary its role back)");
    demo.keep("exactly one active node", Duration::from_secs(1), |m| exactly_one_active(m).is_some()).await?;
    demo.wait_until("the service running on a only (its marker file)", Duration::from_secs(5), |d| {
        d.node(0).service_marker().exists() && !d.node(1).service_marker().exists()
    })
    .await?;
    demo.finish(&[format!("Failover time (kill -9 of the active node → the standby active): {} ms", failover.as_millis())]).await
}
