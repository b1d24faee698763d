//! Break-before-make hand-over through the real binary (issue 10, item 11): pairs of `vigil run`
//! processes on loopback whose services are marker files (their stop takes a moment, as real services'
//! do). A sampler reads both nodes' `/active` and both markers every few milliseconds, and no sample
//! may show both nodes answering `/active` 200 or both services running:
//!
//! - hot-standby: through an automatic failback (server #1 restarted, `first_server_auto_active`), an
//!   operator `vigil switch standby` on the active node and a `vigil switch active` on the standby;
//! - xivo: through the automatic failback of the standby when the main comes back;
//! - mail-gateway (the engine the voice plugin shares): through the failback of a restarted primary
//!   (`restore-original-role`) and both `vigil switch` directions.
//!
//! A sample reads node a, then b, then a again, and counts "both" only when both reads of a agree
//! with b: two sequential reads can never then invent an overlap that a hand-over between them
//! would otherwise look like.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::http_client::HttpClient;
use vigil::model::{Mode, Role};
use vigil_tests::{describe, plugins_dir, vigil, vigil_bin};

/// The hot-standby service writes a marker file; its stop takes 250 ms before the marker goes, the window in which
/// a node that reported STANDBY too early still runs its service.
const POLICY: &str = r#"plugin = "hot-standby"

[params]
first_server_auto_active = true

[services.app]
start = "echo running > '{dir}/app.running'"
stop = "sleep 0.25; rm -f '{dir}/app.running'"
status = "test -f '{dir}/app.running'"
app_check = true
timeout_ms = 3000
"#;

/// Fast heartbeats, but a failure threshold of 10 rounds (1.5 s): on a loaded machine a few late
/// heartbeat answers must not pass for a dead peer, whose takeover would be a real two-actives case
/// rather than a hand-over.
fn timing() -> Timing {
    Timing { interval_ms: 150, timeout_ms: 120, failures: 10, successes: 3 }
}

fn pair(dir: &std::path::Path) -> Cluster {
    let timing = timing();
    let mut cluster = Cluster::new(vigil_bin(), dir, timing, vec![plugins_dir()]).expect("configure the pair");
    for (id, role, peer) in [("a", Role::Primary, "b"), ("b", Role::Secondary, "a")] {
        let mut spec = NodeSpec::new(id, role, POLICY);
        spec.peers = vec![peer.into()];
        cluster.add(spec).unwrap();
    }
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    cluster
}

fn marker(cluster: &Cluster, i: usize) -> PathBuf {
    cluster.nodes[i].dir.join("app.running")
}

/// What the sampler saw.
#[derive(Debug, Default)]
struct Samples {
    count: usize,
    /// Samples in which only a (resp. b) answered `/active` 200.
    only: [usize; 2],
    /// Samples in which only a (resp. b) ran the service.
    only_running: [usize; 2],
    /// Milliseconds since the start of sampling at which both answered `/active` 200.
    both_active: Vec<u128>,
    /// … at which both services ran.
    both_running: Vec<u128>,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Samples>,
}

impl Sampler {
    /// Sample the two nodes of `cluster`; node i runs its service while `markers[i]` exists.
    fn start(cluster: &Cluster, markers: [PathBuf; 2]) -> Sampler {
        let urls: Vec<String> = cluster.nodes.iter().map(|n| format!("{}/active", n.url)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let http = HttpClient::new();
            let active = |i: usize| {
                let (http, url) = (&http, &urls[i]);
                async move { http.get(url, Duration::from_millis(500)).await.is_ok_and(|a| a.status == 200) }
            };
            let mut s = Samples::default();
            let t0 = Instant::now();
            while !flag.load(Ordering::Acquire) {
                let (a1, b, a2) = (active(0).await, active(1).await, active(0).await);
                let (r1, rb, r2) = (markers[0].exists(), markers[1].exists(), markers[0].exists());
                let at = t0.elapsed().as_millis();
                s.count += 1;
                if a1 && b && a2 {
                    s.both_active.push(at);
                } else if a1 && a2 && !b {
                    s.only[0] += 1;
                } else if !a1 && !a2 && b {
                    s.only[1] += 1;
                }
                if r1 && rb && r2 {
                    s.both_running.push(at);
                } else if r1 && r2 && !rb {
                    s.only_running[0] += 1;
                } else if !r1 && !r2 && rb {
                    s.only_running[1] += 1;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            s
        });
        Sampler { stop, task }
    }

    /// Stop sampling and judge the hand-over `what`, which moved the role away from node `from`: the
    /// sampler must have seen both sides of it, and never two actives nor two running services. The
    /// problems found, if any.
    async fn finish(self, what: &str, from: usize) -> Vec<String> {
        self.stop.store(true, Ordering::Release);
        let s = self.task.await.expect("sampler");
        eprintln!("{what}: {s:?}");
        let to = 1 - from;
        let mut problems = Vec::new();
        if !(s.only[from] > 0 && s.only[to] > 0 && s.only_running[from] > 0 && s.only_running[to] > 0) {
            problems.push(format!("{what}: the sampler must see the role and the service on each side ({s:?})"));
        }
        if !s.both_active.is_empty() {
            problems.push(format!(
                "{what}: both nodes answered /active 200 in {} of {} samples, at {:?} ms",
                s.both_active.len(),
                s.count,
                s.both_active
            ));
        }
        if !s.both_running.is_empty() {
            problems.push(format!("{what}: both services ran in {} of {} samples, at {:?} ms", s.both_running.len(), s.count, s.both_running));
        }
        problems
    }
}

/// Node i runs the hot-standby service while `app_markers(cluster)[i]` exists.
fn app_markers(cluster: &Cluster) -> [PathBuf; 2] {
    [marker(cluster, 0), marker(cluster, 1)]
}

/// Wait until the modes are `want` and exactly the service of node `runs` runs (per `markers`).
async fn settle(cluster: &Cluster, markers: &[PathBuf; 2], want: [Mode; 2], runs: usize, what: &str) {
    cluster
        .wait_for(Duration::from_secs(15), |m| (m == [Some(want[0]), Some(want[1])]).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let done = vigil::cluster::eventually(Duration::from_secs(10), || markers[runs].exists() && !markers[1 - runs].exists()).await;
    assert!(done, "{what}: only node {runs}'s service should run; logs in {}", cluster.dir.display());
}

fn switch(cluster: &Cluster, i: usize, to: &str) {
    let token = cluster.dir.join("admin.token");
    let url = cluster.nodes[i].url.clone();
    let args = [OsStr::new("switch"), OsStr::new(to), OsStr::new("--url"), OsStr::new(&url), OsStr::new("--token-file"), token.as_os_str()];
    let out = vigil(&args);
    assert_eq!(out.status.code(), Some(0), "vigil switch {to}: {}", describe(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn failback_and_switches_never_run_two_actives() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = pair(dir.path());
    settle(&cluster, &app_markers(&cluster), [Mode::Active, Mode::Standby], 0, "the primary takes the role").await;

    // Server #1 goes down cleanly (its service stopped on shutdown); server #2 fails over.
    cluster.stop(0);
    cluster
        .wait_for(Duration::from_secs(15), |m| (m[1] == Some(Mode::Active)).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("b fails over: {e}"));
    assert!(vigil::cluster::eventually(Duration::from_secs(10), || marker(&cluster, 1).exists()).await, "b runs the service");

    // Automatic failback: server #1 comes back and takes the role back by itself.
    let mut problems = Vec::new();
    let sampler = Sampler::start(&cluster, app_markers(&cluster));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.start(0).unwrap();
    settle(&cluster, &app_markers(&cluster), [Mode::Active, Mode::Standby], 0, "automatic failback to a").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    problems.extend(sampler.finish("automatic failback", 1).await);

    // `vigil switch standby` on the active node: a hands the role to b.
    let sampler = Sampler::start(&cluster, app_markers(&cluster));
    tokio::time::sleep(Duration::from_millis(300)).await;
    switch(&cluster, 0, "standby");
    settle(&cluster, &app_markers(&cluster), [Mode::Standby, Mode::Active], 1, "switch standby on a").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    problems.extend(sampler.finish("vigil switch standby on the active node", 0).await);

    // `vigil switch active` on the standby node: a takes the role back from b.
    let sampler = Sampler::start(&cluster, app_markers(&cluster));
    tokio::time::sleep(Duration::from_millis(300)).await;
    switch(&cluster, 0, "active");
    settle(&cluster, &app_markers(&cluster), [Mode::Active, Mode::Standby], 0, "switch active on a").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    problems.extend(sampler.finish("vigil switch active on the standby node", 1).await);

    assert!(problems.is_empty(), "{}; logs in {}", problems.join("\n"), cluster.dir.display());
}

/// The XiVO telephony (one service here) writes a marker file; its stop takes 250 ms.
fn xivo_policy() -> String {
    r#"plugin = "xivo"

[params]
services = ["asterisk"]

[services.asterisk]
start = "echo running > '{dir}/asterisk.running'"
stop = "sleep 0.25; rm -f '{dir}/asterisk.running'"
status = "test -f '{dir}/asterisk.running'"
timeout_ms = 3000
"#
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn xivo_failback_never_runs_telephony_twice() {
    let dir = tempfile::tempdir().unwrap();
    let timing = timing();
    let mut cluster = Cluster::new(vigil_bin(), dir.path(), timing, vec![plugins_dir()]).expect("configure the pair");
    // The main sees the standby over the vigil heartbeat (a ping could not say its mode).
    for (id, role, peer) in [("xivo-a", Role::Primary, "xivo-b"), ("xivo-b", Role::Secondary, "xivo-a")] {
        let mut spec = NodeSpec::new(id, role, &xivo_policy());
        spec.peers = vec![peer.into()];
        cluster.add(spec).unwrap();
    }
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let (main, standby) = (cluster.nodes[0].dir.join("asterisk.running"), cluster.nodes[1].dir.join("asterisk.running"));
    cluster
        .wait_for(Duration::from_secs(15), |m| (m == [Some(Mode::Active), Some(Mode::Standby)]).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("the main runs the telephony: {e}"));

    // The main goes down cleanly (telephony stopped on shutdown); the standby takes over.
    cluster.stop(0);
    cluster
        .wait_for(Duration::from_secs(15), |m| (m[1] == Some(Mode::Active)).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("the standby takes over: {e}"));
    assert!(vigil::cluster::eventually(Duration::from_secs(10), || standby.exists() && !main.exists()).await, "only the standby runs telephony");

    // The main comes back: the standby fails back by itself, the main starts after it stopped.
    let sampler = Sampler::start(&cluster, [main.clone(), standby.clone()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.start(0).unwrap();
    cluster
        .wait_for(Duration::from_secs(15), |m| (m == [Some(Mode::Active), Some(Mode::Standby)]).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("automatic failback to the main: {e}"));
    assert!(vigil::cluster::eventually(Duration::from_secs(10), || main.exists() && !standby.exists()).await, "only the main runs telephony");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let problems = sampler.finish("xivo automatic failback", 1).await;
    assert!(problems.is_empty(), "{}; logs in {}", problems.join("\n"), cluster.dir.display());
}

/// A mail gateway whose primary takes its role back (restore original role); the mail service writes a
/// marker file and takes 250 ms to stop. No VIP: the loopback pair has no interface to move one on.
const MAIL_POLICY: &str = r#"plugin = "mail-gateway"

[params]
on_failure = "restore-original-role"
vip = false

[services.mta]
start = "echo running > '{dir}/mta.running'"
stop = "sleep 0.25; rm -f '{dir}/mta.running'"
status = "test -f '{dir}/mta.running'"
timeout_ms = 3000
"#;

#[tokio::test(flavor = "multi_thread")]
async fn mail_gateway_failback_and_switches_never_run_two_actives() {
    let dir = tempfile::tempdir().unwrap();
    let timing = timing();
    let mut cluster = Cluster::new(vigil_bin(), dir.path(), timing, vec![plugins_dir()]).expect("configure the pair");
    for (id, role, peer) in [("a", Role::Primary, "b"), ("b", Role::Secondary, "a")] {
        let mut spec = NodeSpec::new(id, role, MAIL_POLICY);
        spec.peers = vec![peer.into()];
        cluster.add(spec).unwrap();
    }
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let markers = [cluster.nodes[0].dir.join("mta.running"), cluster.nodes[1].dir.join("mta.running")];
    settle(&cluster, &markers, [Mode::Active, Mode::Standby], 0, "the primary takes the role").await;

    cluster.stop(0);
    cluster
        .wait_for(Duration::from_secs(15), |m| (m[1] == Some(Mode::Active)).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("b fails over: {e}"));
    assert!(vigil::cluster::eventually(Duration::from_secs(10), || markers[1].exists()).await, "b runs the mail service");

    // The primary restarts, finds b active and takes its role back once healthy.
    let mut problems = Vec::new();
    let sampler = Sampler::start(&cluster, markers.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.start(0).unwrap();
    settle(&cluster, &markers, [Mode::Active, Mode::Standby], 0, "failback to the primary").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    problems.extend(sampler.finish("mail-gateway failback (restore original role)", 1).await);

    let sampler = Sampler::start(&cluster, markers.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    switch(&cluster, 0, "standby");
    settle(&cluster, &markers, [Mode::Standby, Mode::Active], 1, "switch standby on a").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    problems.extend(sampler.finish("mail-gateway: vigil switch standby on the active node", 0).await);

    let sampler = Sampler::start(&cluster, markers.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    switch(&cluster, 0, "active");
    settle(&cluster, &markers, [Mode::Active, Mode::Standby], 0, "switch active on a").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    problems.extend(sampler.finish("mail-gateway: vigil switch active on the standby node", 1).await);

    assert!(problems.is_empty(), "{}; logs in {}", problems.join("\n"), cluster.dir.display());
}
