//! Local monitors: the policy's `[monitors.NAME]` checks of this node itself (FortiMail's "local
//! service monitoring": ports, disks), probed once per heartbeat interval and handed to the plugin
//! as `tick.monitors` with their run lengths.
//!
//! Kinds:
//! - `tcp`: a TCP connect to `address` succeeds within the probe timeout (the service listens);
//! - `disk`: the filesystem holding `path` has at least `min_free_mib` MiB available to unprivileged
//!   users (`statvfs` `f_bavail`, what a mail queue can really use);
//! - `command`: the command exits 0 within its `timeout_ms`.
//!
//! Probes run concurrently and each ends by its timeout, so one hung check never delays the others
//! or the tick; the daemon runs them in a task of their own ([`poll`]) and the loop reads the latest
//! counts. This module only observes: what a failure means is the plugin's decision.

use crate::model::Check;
use crate::policy::file::MonitorSpec;
use crate::services::run_command;
use crate::state::NodeState;
use futures_util::future::join_all;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The outcome of one probe: ok, or why not.
pub type ProbeResult = Result<(), String>;

/// Probe one monitor. `timeout` bounds `tcp` and `disk` probes (a `command` has its own).
pub async fn probe(spec: &MonitorSpec, timeout: Duration) -> ProbeResult {
    match spec {
        MonitorSpec::Tcp { address } => match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address.as_str())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect {address}: {e}")),
            Err(_) => Err(format!("connect {address}: no answer within {} ms", timeout.as_millis())),
        },
        MonitorSpec::Disk { path, min_free_mib } => {
            // statvfs can block on a hung network filesystem: off the I/O threads, and bounded. A
            // probe still stuck from an earlier round is not joined by another blocking thread
            // every interval (that would exhaust the blocking pool): the check fails until it returns.
            static STUCK: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());
            {
                let mut stuck = STUCK.lock().unwrap_or_else(|e| e.into_inner());
                if stuck.contains(path) {
                    return Err(format!("{}: an earlier statvfs has still not answered", path.display()));
                }
                stuck.push(path.clone());
            }
            let owned = path.clone();
            let free = tokio::time::timeout(
                timeout,
                tokio::task::spawn_blocking(move || {
                    let free = free_mib(&owned);
                    STUCK.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p != &owned);
                    free
                }),
            )
            .await;
            match free {
                Ok(Ok(Ok(free))) => disk_verdict(path, free, *min_free_mib),
                Ok(Ok(Err(e))) => Err(format!("{}: {e}", path.display())),
                Ok(Err(e)) => Err(format!("{}: {e}", path.display())),
                Err(_) => Err(format!("{}: statvfs did not answer within {} ms", path.display(), timeout.as_millis())),
            }
        }
        MonitorSpec::Command { command, timeout_ms } => {
            let out = run_command(&command.argv(), Duration::from_millis(*timeout_ms)).await;
            if out.success {
                Ok(())
            } else {
                Err(out.summary())
            }
        }
    }
}

/// MiB available to unprivileged users on the filesystem holding `path`.
pub fn free_mib(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize) >> 20)
}

/// Whether `free` MiB is enough.
fn disk_verdict(path: &Path, free: u64, min: u64) -> ProbeResult {
    if free >= min {
        Ok(())
    } else {
        Err(format!("{}: {free} MiB free, below the {min} MiB minimum", path.display()))
    }
}

/// The run lengths of every monitor, by name.
#[derive(Debug, Default)]
pub struct Monitors {
    checks: Mutex<BTreeMap<String, (Check, Option<String>)>>,
}

impl Monitors {
    pub fn new() -> Monitors {
        Monitors::default()
    }

    /// Probe every monitor of `specs` concurrently and count the results. Monitors a reloaded policy
    /// no longer declares are forgotten; new ones start from zero.
    pub async fn probe_all(&self, specs: &BTreeMap<String, MonitorSpec>, timeout: Duration) {
        let results = join_all(specs.iter().map(|(name, spec)| async move { (name.clone(), probe(spec, timeout).await) })).await;
        self.record(results);
    }

    /// Count one round of results (in `specs` order).
    pub fn record(&self, results: Vec<(String, ProbeResult)>) {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = BTreeMap::new();
        for (name, result) in results {
            let (mut check, _) = checks.remove(&name).unwrap_or_else(|| (Check { name: name.clone(), ..Check::default() }, None));
            check.record(result.is_ok());
            if let Err(why) = &result {
                tracing::debug!(monitor = %name, error = %why, failures = check.consecutive_failures, "local monitor failed");
            }
            next.insert(name, (check, result.err()));
        }
        *checks = next;
    }

    /// The latest counts, for the tick (in name order, like the policy's table).
    pub fn latest(&self) -> Vec<Check> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).values().map(|(c, _)| c.clone()).collect()
    }

    /// The latest failure message per failing monitor (for logs and status).
    pub fn errors(&self) -> Vec<(String, String)> {
        let checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        checks.iter().filter_map(|(name, (_, err))| err.clone().map(|e| (name.clone(), e))).collect()
    }
}

/// Probe the current policy's monitors every `interval` until `stop`, off the node loop. The probe
/// timeout is the heartbeat timeout: a local port that answers slower than a peer would be seen as
/// failing by the clients too.
pub async fn poll(state: Arc<NodeState>, monitors: Arc<Monitors>, interval: Duration, stop: watch::Receiver<bool>) {
    let timeout = Duration::from_millis(u64::from(state.config.heartbeat.timeout_ms));
    crate::clock::every(interval, stop, || async {
        let policy = state.policy.current();
        if !(policy.file.monitors.is_empty() && monitors.latest().is_empty()) {
            monitors.probe_all(&policy.file.monitors, timeout).await;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::file::CommandSpec;

    const T: Duration = Duration::from_millis(500);

    #[tokio::test]
    async fn tcp_ok_when_listening_and_fails_when_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        assert_eq!(probe(&MonitorSpec::Tcp { address: address.clone() }, T).await, Ok(()));
        // A port bound but not listening refuses, and stays ours while the probe runs (a port merely
        // closed could be taken by another test's listener in between).
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = held.local_addr().unwrap().to_string();
        let err = probe(&MonitorSpec::Tcp { address: address.clone() }, T).await.unwrap_err();
        assert!(err.starts_with(&format!("connect {address}:")), "{err}");
    }

    #[tokio::test]
    async fn disk_compares_free_space_with_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_mib(dir.path()).unwrap();
        let ok = MonitorSpec::Disk { path: dir.path().into(), min_free_mib: 0 };
        assert_eq!(probe(&ok, T).await, Ok(()));
        let too_much = MonitorSpec::Disk { path: dir.path().into(), min_free_mib: free + 1_000_000 };
        let err = probe(&too_much, T).await.unwrap_err();
        assert!(err.contains("MiB free, below the"), "{err}");
        let missing = MonitorSpec::Disk { path: dir.path().join("nope"), min_free_mib: 0 };
        assert!(probe(&missing, T).await.is_err(), "a missing path is a failed check");
    }

    #[test]
    fn disk_verdict_at_the_boundary() {
        assert!(disk_verdict(Path::new("/q"), 100, 100).is_ok());
        assert_eq!(disk_verdict(Path::new("/q"), 99, 100), Err("/q: 99 MiB free, below the 100 MiB minimum".into()));
    }

    #[tokio::test]
    async fn command_exit_code_and_timeout() {
        let cmd = |line: &str, timeout_ms| MonitorSpec::Command { command: CommandSpec::Shell(line.into()), timeout_ms };
        assert_eq!(probe(&cmd("exit 0", 2000), T).await, Ok(()));
        assert!(probe(&cmd("echo queue stuck; exit 3", 2000), T).await.unwrap_err().contains("exit 3"));
        assert!(probe(&cmd("sleep 5", 100), T).await.unwrap_err().contains("timed out"));
    }

    #[test]
    fn counts_run_lengths_and_forgets_removed_monitors() {
        let m = Monitors::new();
        m.record(vec![("smtp".into(), Ok(())), ("disk".into(), Err("full".into()))]);
        m.record(vec![("smtp".into(), Ok(())), ("disk".into(), Err("full".into()))]);
        let got = m.latest();
        assert_eq!(got[0], Check { name: "disk".into(), ok: false, consecutive_failures: 2, consecutive_successes: 0 });
        assert_eq!(got[1], Check { name: "smtp".into(), ok: true, consecutive_failures: 0, consecutive_successes: 2 });
        assert_eq!(m.errors(), vec![("disk".to_string(), "full".to_string())]);
        m.record(vec![("disk".into(), Ok(()))]);
        assert_eq!(m.latest(), vec![Check { name: "disk".into(), ok: true, consecutive_failures: 0, consecutive_successes: 1 }]);
    }
}
