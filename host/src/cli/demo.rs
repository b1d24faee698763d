//! `vigil demo`: a real pair on loopback, a real failure, a real failover.
//!
//! Starts two `vigil run` processes (this same executable, see `cluster`) in a temporary directory
//! with the hot-standby policy, whose service is a harmless shell command writing a marker file. It
//! shows both nodes' modes live, kills the active node with SIGKILL, shows the failover, restarts the
//! killed node, shows what the policy does next (with `first_server_auto_active` the primary takes
//! its role back), prints the merged event timeline with timings, cleans up and exits 0.

use super::CliError;
use crate::cluster::{exactly_one_active, Cluster, PairSpec};
use crate::model::Mode;
use hyper::Method;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// The deployments the demo can show.
pub const DEPLOYMENTS: &[&str] = &["hot-standby"];

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Failure(anyhow::anyhow!("{e}"))
}

/// Run the demo.
pub fn run(deployment: Option<&str>) -> Result<(), CliError> {
    let deployment = deployment.unwrap_or("hot-standby");
    if !DEPLOYMENTS.contains(&deployment) {
        return Err(CliError::Config(anyhow::anyhow!("no demo for {deployment:?}; available: {}", DEPLOYMENTS.join(", "))));
    }
    let dir = std::env::temp_dir().join(format!("vigil-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(fail)
        .and_then(|rt| rt.block_on(demo(&dir)));
    if result.is_err() {
        eprintln!("vigil demo: logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

struct Screen {
    started: Instant,
    last: String,
}

impl Screen {
    fn stamp(&self) -> String {
        format!("{:>7.2}s", self.started.elapsed().as_secs_f64())
    }

    fn note(&self, text: &str) {
        println!("{}  ── {text}", self.stamp());
    }

    /// Print the modes when they changed.
    fn modes(&mut self, cluster: &Cluster, modes: &[Option<Mode>]) {
        let mut text = String::new();
        for (node, mode) in cluster.nodes.iter().zip(modes) {
            let _ = write!(text, "  {} {:<9}", node.id, mode.map_or("(down)", |m| m.role_word()));
        }
        if text != self.last {
            println!("{}{text}", self.stamp());
            self.last = text;
        }
    }

    async fn wait<T>(&mut self, cluster: &Cluster, limit: Duration, done: impl Fn(&[Option<Mode>]) -> Option<T>) -> Result<T, CliError> {
        let mut found = None;
        cluster
            .wait_for(limit, |modes| {
                self.modes(cluster, modes);
                found = done(modes);
                found.as_ref().map(|_| ())
            })
            .await
            .map_err(fail)?;
        Ok(found.expect("wait_for returns once found"))
    }

    async fn watch(&mut self, cluster: &Cluster, how_long: Duration) {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            let modes = cluster.modes().await;
            self.modes(cluster, &modes);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn demo(dir: &Path) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find the vigil executable: {e}")))?;
    let spec = PairSpec { params: "first_server_auto_active = true".into(), ..PairSpec::default() };
    let mut cluster = Cluster::hot_standby_pair(&exe, dir, &spec).map_err(fail)?;
    let mut screen = Screen { started: Instant::now(), last: String::new() };
    println!(
        "vigil demo: a hot-standby pair on loopback (heartbeat every {} ms, {} failed checks to switch)",
        spec.timing.interval_ms, spec.timing.failures
    );
    println!("  node a (primary)   {}\n  node b (secondary) {}\n  files in {}\n", cluster.nodes[0].url, cluster.nodes[1].url, dir.display());
    cluster.start(0).map_err(fail)?;
    cluster.start(1).map_err(fail)?;
    screen.note("both nodes started");
    let active = screen.wait(&cluster, Duration::from_secs(20), exactly_one_active).await?;
    screen.note(&format!("pair stable: {} is active", cluster.nodes[active].id));
    screen.watch(&cluster, Duration::from_secs(1)).await;

    let (victim, survivor) = (active, 1 - active);
    screen.note(&format!("kill -9 node {} (the active node)", cluster.nodes[victim].id));
    let killed_at = Instant::now();
    cluster.kill(victim);
    screen.wait(&cluster, Duration::from_secs(10), |m| (m[survivor] == Some(Mode::Active)).then_some(())).await?;
    let failover = killed_at.elapsed();
    screen.note(&format!("failover: node {} is active {} ms after the kill", cluster.nodes[survivor].id, failover.as_millis()));
    screen.watch(&cluster, Duration::from_secs(1)).await;

    screen.note(&format!("restart node {}", cluster.nodes[victim].id));
    cluster.start(victim).map_err(fail)?;
    screen.wait(&cluster, Duration::from_secs(20), |m| m[victim].and(exactly_one_active(m))).await?;
    // The primary takes its role back after `successes` good checks (first_server_auto_active).
    screen.watch(&cluster, Duration::from_millis(spec.timing.interval_ms * 12)).await;
    let modes = cluster.modes().await;
    match exactly_one_active(&modes) {
        Some(i) => screen.note(&format!(
            "after the restart: node {} is active (first_server_auto_active = true gives the primary its role back)",
            cluster.nodes[i].id
        )),
        None => return Err(fail(format!("after the restart the pair did not settle: {modes:?}"))),
    }

    println!("\nEvent timeline (both nodes' event logs):");
    print!("{}", merged_events(&cluster, &screen).await);
    println!("\nFailover time (kill -9 of the active node → the standby active): {} ms", failover.as_millis());
    cluster.stop(0);
    cluster.stop(1);
    println!("vigil demo: done, cleaned up.");
    Ok(())
}

async fn merged_events(cluster: &Cluster, screen: &Screen) -> String {
    let origin_ms = crate::policy::wall_ms().saturating_sub(screen.started.elapsed().as_millis() as u64);
    let mut all: Vec<(u64, String, String, String)> = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let Ok((200, body)) = cluster.admin(i, Method::GET, "/events?limit=500").await else { continue };
        let events: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        // Newest first from the API; oldest first here, keeping each node's own order within a millisecond.
        for e in events.iter().rev() {
            let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
            all.push((e["at_ms"].as_u64().unwrap_or(0), node.id.clone(), text("kind"), text("message")));
        }
    }
    all.sort_by_key(|(at, _, _, _)| *at);
    let mut out = String::new();
    for (at, id, kind, message) in all {
        let t = at.saturating_sub(origin_ms) as f64 / 1000.0;
        let _ = writeln!(out, "{t:>7.2}s  {id}  {kind:<8} {message}");
    }
    out
}
