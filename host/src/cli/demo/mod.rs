//! `vigil demo DEPLOYMENT`: a real group on loopback, a real failure, what the deployment does.
//!
//! Every demo starts `vigil run` processes (this same executable, see `cluster`) in a temporary
//! directory with its deployment's plugin; services are harmless shell commands writing marker files.
//! It shows the nodes' modes live while it injects the deployment's failure (a killed process, a
//! broken local monitor, a planned reboot, a dead backend behind the relay), checks that the expected
//! thing happens, prints the merged event timeline, cleans up and exits 0. When the expected thing
//! does not happen it stops with a message naming what was expected, exits non-zero and keeps the
//! directory (configurations, `vigil.log` of every node).
//!
//! One file per deployment; this module holds the common flow: [`Demo`] (the cluster, the live mode
//! line, waits that fail with a reason, the timeline) and the marker-file services.

mod edge;
mod hot_standby;
mod mail_gateway;
mod voice;
mod xivo;
mod xivo_cc;

use super::CliError;
use crate::cluster::{Cluster, ClusterNode, Timing};
use crate::model::Mode;
use hyper::Method;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// The deployments the demo can show, with one line each.
pub const DEPLOYMENTS: &[(&str, &str)] = &[
    ("hot-standby", "two servers behind a load balancer: kill -9 of the active, failover, automatic failback"),
    ("xivo", "XiVO main + standby: main killed, the standby starts its telephony, stops it when main is back"),
    ("xivo-cc", "two CC nodes following their XiVO pair: the CC services move with the telephony"),
    ("edge", "one Edge relay in front of main and standby: a client keeps connecting across two outages"),
    ("mail-gateway", "mail gateway master/slave: failover, restore, local monitoring failure → off"),
    ("voice", "PBX pair: planned reboot → hold-off; the primary returns, then one that does not"),
];

/// `println!` that ignores a closed stdout (`vigil demo | head`): the demo goes on and cleans up.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Failure(anyhow::anyhow!("{e}"))
}

/// Run the demo of `deployment` (default: hot-standby).
pub fn run(deployment: Option<&str>) -> Result<(), CliError> {
    let deployment = deployment.unwrap_or("hot-standby");
    if !DEPLOYMENTS.iter().any(|(name, _)| *name == deployment) {
        let list: Vec<&str> = DEPLOYMENTS.iter().map(|(name, _)| *name).collect();
        let lines: Vec<String> = DEPLOYMENTS.iter().map(|(name, what)| format!("  {name:<13} {what}")).collect();
        return Err(CliError::Config(anyhow::anyhow!("no demo for {deployment:?}; available: {}\n{}", list.join(", "), lines.join("\n"))));
    }
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find the vigil executable: {e}")))?;
    let dir = std::env::temp_dir().join(format!("vigil-demo-{deployment}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let result = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(fail).and_then(|rt| {
        rt.block_on(async {
            match deployment {
                "xivo" => xivo::run(&exe, &dir).await,
                "xivo-cc" => xivo_cc::run(&exe, &dir).await,
                "edge" => edge::run(&exe, &dir).await,
                "mail-gateway" => mail_gateway::run(&exe, &dir).await,
                "voice" => voice::run(&exe, &dir).await,
                _ => hot_standby::run(&exe, &dir).await,
            }
        })
    });
    match &result {
        Err(_) => eprintln!("vigil demo {deployment}: FAILED; configurations and logs kept in {}", dir.display()),
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    result
}

/// Seconds since the demo started, as printed at the start of every line.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn stamp(self) -> String {
        format!("{:>7.2}s", self.0.elapsed().as_secs_f64())
    }

    fn note(self, text: &str) {
        say!("{}  ── {text}", self.stamp());
    }
}

/// A running demo: its cluster and what is on the screen.
struct Demo {
    cluster: Cluster,
    clock: Clock,
    last: String,
    /// A node whose relay target is shown beside the modes (`/status` `relay.target`).
    relay: Option<usize>,
}

/// What a demo's wait or watch sees: every node's mode (`None`: not answering).
type Modes = [Option<Mode>];

impl Demo {
    /// A demo of `cluster` (configured, not started); prints the title and the nodes.
    fn new(cluster: Cluster, title: &str) -> Demo {
        say!("vigil demo: {title}");
        for node in &cluster.nodes {
            say!("  node {:<12} {}", node.id, node.url);
        }
        say!("  files in {}\n", cluster.dir.display());
        Demo { cluster, clock: Clock(Instant::now()), last: String::new(), relay: None }
    }

    fn note(&self, text: &str) {
        self.clock.note(text);
    }

    fn id(&self, i: usize) -> &str {
        &self.cluster.nodes[i].id
    }

    fn node(&self, i: usize) -> &ClusterNode {
        &self.cluster.nodes[i]
    }

    /// Print the modes (and the relay's target) when they changed.
    fn show(&mut self, modes: &Modes, target: Option<String>) {
        let mut text = String::new();
        for (node, mode) in self.cluster.nodes.iter().zip(modes) {
            let _ = write!(text, "  {} {:<9}", node.id, mode.map_or("(down)", |m| m.role_word()));
        }
        if let Some(target) = target {
            let _ = write!(text, "  relay → {target}");
        }
        if text != self.last {
            say!("{}{text}", self.clock.stamp());
            self.last = text;
        }
    }

    /// A failure naming what was expected, with the modes and the last log lines of every node.
    fn failed(&self, what: &str, detail: &str) -> CliError {
        fail(format!("expected {what}, but {detail}\n{}", self.cluster.logs(8)))
    }

    fn start(&mut self, i: usize) -> Result<(), CliError> {
        self.cluster.start(i).map_err(fail)?;
        self.note(&format!("start node {}", self.id(i)));
        Ok(())
    }

    /// SIGKILL node `i`.
    fn kill(&mut self, i: usize) {
        self.note(&format!("kill -9 node {}", self.id(i)));
        self.cluster.kill(i);
    }

    /// SIGTERM node `i` and wait until it exited (a clean shutdown, as before a reboot).
    fn stop(&mut self, i: usize) {
        self.note(&format!("stop node {} (SIGTERM)", self.id(i)));
        self.cluster.stop(i);
    }

    /// Fail naming `what` if a node's process exited by itself (a configuration it refused, a crash).
    fn check_processes(&mut self, what: &str) -> Result<(), CliError> {
        for i in 0..self.cluster.nodes.len() {
            if let Some(status) = self.cluster.exited(i) {
                return Err(self.failed(what, &format!("node {} exited by itself ({status})", self.id(i))));
            }
        }
        Ok(())
    }

    /// Every node's mode, shown; fails naming `what` if a node's process exited by itself.
    async fn poll(&mut self, what: &str) -> Result<Vec<Option<Mode>>, CliError> {
        self.check_processes(what)?;
        let modes = self.cluster.modes().await;
        let target = match self.relay {
            Some(i) => self.relay_target(i).await,
            None => None,
        };
        self.show(&modes, target);
        Ok(modes)
    }

    /// Node `i`'s relay target, from its `/status`.
    async fn relay_target(&self, i: usize) -> Option<String> {
        let Ok((200, body)) = self.cluster.admin(i, Method::GET, "/status").await else { return None };
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        status["relay"]["target"].as_str().map(str::to_string)
    }

    /// Wait until `done` holds on the modes (showing them), or fail naming `what`.
    async fn wait<T>(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&Modes) -> Option<T>) -> Result<T, CliError> {
        let deadline = Instant::now() + limit;
        loop {
            let modes = self.poll(what).await?;
            if let Some(found) = done(&modes) {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(self.failed(what, &format!("not within {} ms; modes {modes:?}", limit.as_millis())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every node is in the given mode (`None`: down).
    async fn wait_modes(&mut self, what: &str, limit: Duration, want: &[Option<Mode>]) -> Result<(), CliError> {
        self.wait(what, limit, |m| (m == want).then_some(())).await
    }

    /// Wait until `condition` holds (marker files, a client's count), showing the modes meanwhile.
    async fn wait_until(&mut self, what: &str, limit: Duration, mut condition: impl FnMut(&Demo) -> bool) -> Result<(), CliError> {
        let deadline = Instant::now() + limit;
        loop {
            let modes = self.poll(what).await?;
            if condition(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failed(what, &format!("not within {} ms; modes {modes:?}", limit.as_millis())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Show the modes for `how_long`; fail naming `what` as soon as `holds` is false.
    async fn keep(&mut self, what: &str, how_long: Duration, holds: impl Fn(&Modes) -> bool) -> Result<(), CliError> {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            let modes = self.poll(what).await?;
            if !holds(&modes) {
                return Err(self.failed(what, &format!("the modes became {modes:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Show the modes for `how_long` (failing only if a node's process exits by itself).
    async fn watch(&mut self, how_long: Duration) -> Result<(), CliError> {
        self.keep("every node running", how_long, |_| true).await
    }

    /// An operator request through the admin API (`vigil switch REQUEST` does the same).
    async fn switch(&self, i: usize, request: &str) -> Result<(), CliError> {
        self.note(&format!("operator on node {}: vigil switch {request}", self.id(i)));
        match self.cluster.admin(i, Method::POST, &format!("/admin/switch/{request}")).await {
            Ok((202, _)) => Ok(()),
            Ok((code, body)) => Err(self.failed(&format!("switch {request} accepted by node {}", self.id(i)), &format!("it answered {code}: {body}"))),
            Err(e) => Err(self.failed(&format!("switch {request} accepted by node {}", self.id(i)), &e.to_string())),
        }
    }

    /// Node `i`'s event log (JSON).
    async fn events(&self, i: usize) -> Result<String, CliError> {
        match self.cluster.admin(i, Method::GET, "/events?limit=500").await {
            Ok((200, body)) => Ok(body),
            other => Err(self.failed(&format!("node {}'s event log", self.id(i)), &format!("GET /events gave {other:?}"))),
        }
    }

    /// Fail unless node `i`'s event log contains `needle`.
    async fn expect_event(&self, i: usize, needle: &str) -> Result<(), CliError> {
        if self.events(i).await?.contains(needle) {
            Ok(())
        } else {
            Err(self.failed(&format!("{needle:?} in node {}'s event log", self.id(i)), "it is not there"))
        }
    }

    /// Print the merged event timeline and the summary, stop every node.
    async fn finish(mut self, summary: &[String]) -> Result<(), CliError> {
        say!("\nEvent timeline (every node's event log, merged):");
        say!("{}", self.merged_events().await.trim_end());
        say!("");
        for line in summary {
            say!("{line}");
        }
        for i in 0..self.cluster.nodes.len() {
            self.cluster.stop(i);
        }
        say!("vigil demo: done, cleaned up.");
        Ok(())
    }

    async fn merged_events(&self) -> String {
        let origin_ms = crate::policy::wall_ms().saturating_sub(self.clock.0.elapsed().as_millis() as u64);
        let mut all: Vec<(u64, String, String, String)> = Vec::new();
        for (i, node) in self.cluster.nodes.iter().enumerate() {
            let Ok((200, body)) = self.cluster.admin(i, Method::GET, "/events?limit=500").await else { continue };
            let events: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
            // Newest first from the API; oldest first here, keeping each node's own order within a millisecond.
            let mine: Vec<(u64, String, String)> = events
                .iter()
                .rev()
                .map(|e| (e["at_ms"].as_u64().unwrap_or(0), e["kind"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
                .collect();
            all.extend(collapse(mine).into_iter().map(|(at, kind, message)| (at, node.id.clone(), kind, message)));
        }
        all.sort_by_key(|(at, _, _, _)| *at);
        let width = self.cluster.nodes.iter().map(|n| n.id.len()).max().unwrap_or(1);
        let mut out = String::new();
        for (at, id, kind, message) in all {
            let t = at.saturating_sub(origin_ms) as f64 / 1000.0;
            let _ = writeln!(out, "{t:>7.2}s  {id:<width$}  {kind:<8} {message}");
        }
        out
    }
}

/// One node's events (oldest first) with every run of three or more alike decisions that change no
/// mode ("STANDBY; main answers (5 checks in a row)", the same with 6, 7 …) shown as its first, a
/// count and its last.
fn collapse(events: Vec<(u64, String, String)>) -> Vec<(u64, String, String)> {
    let key = |kind: &str, message: &str| -> Option<String> {
        (kind == "decision" && !message.contains('→')).then(|| message.chars().filter(|c| !c.is_ascii_digit()).collect())
    };
    let mut out = Vec::new();
    let mut run: Vec<(u64, String, String)> = Vec::new();
    let flush = |run: &mut Vec<(u64, String, String)>, out: &mut Vec<(u64, String, String)>| {
        if run.len() >= 3 {
            let last = run.pop().expect("three or more");
            let hidden = run.len() - 1;
            let second_at = run[1].0;
            out.push(run.swap_remove(0));
            out.push((second_at, String::new(), format!("… {hidden} more alike")));
            out.push(last);
        } else {
            out.append(run);
        }
        run.clear();
    };
    for event in events {
        let k = key(&event.1, &event.2);
        let same = k.is_some() && run.first().and_then(|f| key(&f.1, &f.2)) == k;
        if !same {
            flush(&mut run, &mut out);
        }
        if k.is_some() {
            run.push(event);
        } else {
            out.push(event);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A new cluster in `dir` with the plugins beside this executable.
fn cluster(exe: &Path, dir: &Path, timing: Timing) -> Result<Cluster, CliError> {
    Cluster::new(exe, dir, timing, Vec::new()).map_err(fail)
}

/// `[services.NAME]` tables whose commands append `start NAME` / `stop NAME` to `{dir}/order.log` and
/// keep the marker file `{dir}/NAME.running` while the service runs.
fn marker_services(names: &[&str]) -> String {
    let mut p = String::new();
    for name in names {
        let _ = write!(
            p,
            "\n[services.{name}]\nstart = \"echo start {name} >> '{{dir}}/order.log'; touch '{{dir}}/{name}.running'\"\n\
             stop = \"echo stop {name} >> '{{dir}}/order.log'; rm -f '{{dir}}/{name}.running'\"\n\
             status = \"test -f '{{dir}}/{name}.running'\"\ntimeout_ms = 2000\n"
        );
    }
    p
}

/// Whether node's marker-file service `name` runs.
fn running(node: &ClusterNode, name: &str) -> bool {
    node.dir.join(format!("{name}.running")).exists()
}

/// Whether every one of `names` runs on `node` (`true`) or none does (`false`), as `want` says.
fn all_running(node: &ClusterNode, names: &[&str], want: bool) -> bool {
    names.iter().all(|name| running(node, name) == want)
}

/// The lines of a node's `order.log`.
fn order_log(node: &ClusterNode) -> Vec<String> {
    std::fs::read_to_string(node.dir.join("order.log")).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Give nodes 0 and 1 each other as peers over two heartbeat paths, `hb1` and `hb2` (on loopback both
/// reach the same listener; in production they are two links).
fn two_paths(cluster: &mut Cluster) {
    for i in 0..2 {
        let (peer, url) = (cluster.nodes[1 - i].id.clone(), cluster.nodes[1 - i].url.clone());
        cluster.spec_mut(i).peer_paths = vec![(peer, vec![("hb1".into(), url.clone()), ("hb2".into(), url)])];
    }
}

#[cfg(test)]
mod tests {
    use super::collapse;

    fn event(at: u64, kind: &str, message: &str) -> (u64, String, String) {
        (at, kind.to_string(), message.to_string())
    }

    #[test]
    fn runs_of_alike_decisions_keep_their_first_a_count_and_their_last() {
        let mut events = vec![event(0, "decision", "starting → standby: first tick")];
        for n in 1..=6 {
            events.push(event(n * 100, "decision", &format!("standby: main answers ({n} checks in a row)")));
        }
        events.push(event(700, "decision", "standby: main lost 1/3 checks"));
        events.push(event(800, "decision", "standby: main lost 2/3 checks"));
        events.push(event(900, "action", "start:asterisk ok"));
        events.push(event(1000, "decision", "standby → active: main lost 3/3 checks"));
        let out = collapse(events);
        let messages: Vec<&str> = out.iter().map(|(_, _, m)| m.as_str()).collect();
        assert_eq!(
            messages,
            [
                "starting → standby: first tick",
                "standby: main answers (1 checks in a row)",
                "… 4 more alike",
                "standby: main answers (6 checks in a row)",
                // A run of two is shown whole; transitions and other kinds are never collapsed.
                "standby: main lost 1/3 checks",
                "standby: main lost 2/3 checks",
                "start:asterisk ok",
                "standby → active: main lost 3/3 checks",
            ]
        );
        assert_eq!(out[2].0, 200, "the count stands where the hidden run began");
    }
}
