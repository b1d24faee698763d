//! Network namespaces for the multi-host suites (`tests/netns.rs`, `tests/netns_faults.rs`): creating
//! and always deleting them, `ip` inside them, and asking a node inside one for its status.
//!
//! Everything here needs root and iproute2; [`runs_as_root`] lets a suite pass with a note
//! elsewhere (CI runs as root).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::model::Role;

/// The port every node of a namespace suite listens on (each namespace has its own ports).
pub const PORT: u16 = 7400;

/// True when the suite may run; otherwise prints why it is skipped.
pub fn runs_as_root(suite: &str) -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        println!("SKIPPED: {suite} needs root (CI runs it as root)");
        return false;
    }
    assert!(on_path("ip"), "`ip` (iproute2) is required for {suite}");
    true
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Run a command that must succeed.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A test's namespaces; deleted on drop (also on panic), which destroys their links too.
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// `PREFIX-a`, `PREFIX-b`, … one per suffix, each with its loopback up.
    pub fn create(prefix: &str, suffixes: &[&str]) -> Namespaces {
        let ns = Namespaces { names: suffixes.iter().map(|s| format!("{prefix}-{s}")).collect() };
        for name in &ns.names {
            run(&["ip", "netns", "add", name]);
            run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        }
        ns
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// `ip -n NS …`, which must succeed.
pub fn ip(ns: &str, args: &str) {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend(args.split_whitespace());
    run(&argv);
}

/// `vigil status --json` run inside `ns` against `url`: (node id, mode), or `None` if no answer.
pub fn status_in(ns: &str, url: &str) -> Option<(String, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "2"])
        .arg(crate::vigil_bin())
        .args(["status", "--json", "--url", url])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["node"]["id"].as_str()?.to_string(), v["node"]["mode"].as_str()?.to_string()))
}

/// Poll `done` every 100 ms until it holds, or fail after `limit` with `what` and `context()`.
pub fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not reached within {} s; {}", limit.as_secs(), context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A primary `a` in namespace `ns_a` and a secondary `b` in `ns_b`, both running `policy` and
/// listening on [`PORT`] on every address of their namespace; `paths(other)` lists the heartbeat
/// paths `(name, base URL)` to the node whose host number is `other` (1 for a, 2 for b). Not started.
pub fn pair_in(dir: &Path, ns_a: &str, ns_b: &str, policy: &str, paths: impl Fn(u8) -> Vec<(String, String)>) -> Cluster {
    let timing = Timing { interval_ms: 200, timeout_ms: 150, failures: 3, successes: 3 };
    let mut cluster = Cluster::new(crate::vigil_bin(), dir, timing, vec![crate::plugins_dir()]).unwrap();
    for (id, role, netns, peer, other) in [("a", Role::Primary, ns_a, "b", 2), ("b", Role::Secondary, ns_b, "a", 1)] {
        let mut spec = NodeSpec::new(id, role, policy);
        spec.listen = Some(([0, 0, 0, 0], PORT).into());
        spec.prefix = vec!["ip".into(), "netns".into(), "exec".into(), netns.to_string()];
        spec.peer_paths = vec![(peer.into(), paths(other))];
        cluster.add(spec).unwrap();
    }
    cluster
}
