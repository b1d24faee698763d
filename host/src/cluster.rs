//! A real local group: `vigil run` processes on loopback, configured in a directory of their own.
//!
//! Used by `vigil demo`, by the multi-process tests and by the failover benchmark, so all three
//! exercise the same thing an operator runs: separate processes, real sockets, signed heartbeats,
//! SQLite files, shell commands as services.

use crate::http_client::HttpClient;
use crate::model::Mode;
use bytes::Bytes;
use hyper::Method;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The admin token of every cluster node.
pub const ADMIN_TOKEN: &str = "cluster-admin-token-0123456789";
const PEER_KEY: &str = "cluster-peer-key-0123456789abcdef0123456789";

/// How to build a pair.
#[derive(Debug, Clone)]
pub struct PairSpec {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failures: u32,
    pub successes: u32,
    /// The `[params]` lines of the hot-standby policy.
    pub params: String,
    /// Extra plugin directories.
    pub plugin_dirs: Vec<PathBuf>,
}

impl Default for PairSpec {
    fn default() -> Self {
        PairSpec { interval_ms: 200, timeout_ms: 150, failures: 3, successes: 3, params: String::new(), plugin_dirs: Vec::new() }
    }
}

/// One node of the cluster.
#[derive(Debug)]
pub struct ClusterNode {
    pub id: String,
    pub url: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    /// The marker file the hot-standby policy's `cti` service writes while it runs.
    pub fn service_marker(&self) -> PathBuf {
        self.dir.join("cti.running")
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Nodes running `exe run --config …`.
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    exe: PathBuf,
    pub nodes: Vec<ClusterNode>,
    http: HttpClient,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

impl Cluster {
    /// A primary `a` and a secondary `b` running the hot-standby policy, configured in `dir` (not
    /// started). Each node's `cti` service writes a marker file in its own directory.
    pub fn hot_standby_pair(exe: &Path, dir: &Path, spec: &PairSpec) -> anyhow::Result<Cluster> {
        write(&dir.join("peer.key"), PEER_KEY)?;
        write(&dir.join("admin.token"), ADMIN_TOKEN)?;
        let ports = [free_port()?, free_port()?];
        let (ids, roles) = (["a", "b"], ["primary", "secondary"]);
        let plugin_dirs: Vec<String> = spec.plugin_dirs.iter().map(|d| format!("{:?}", d.display().to_string())).collect();
        let mut nodes = Vec::new();
        for i in 0..2 {
            let node_dir = dir.join(ids[i]);
            std::fs::create_dir_all(&node_dir)?;
            let marker = node_dir.join("cti.running").display().to_string();
            write(
                &node_dir.join("hot-standby.toml"),
                &format!(
                    "# Hot standby for node {id}: the service only writes a marker file.\nplugin = \"hot-standby\"\n\n[params]\n{params}\n\n\
                     [services.cti]\nstart = \"echo running > '{marker}'\"\nstop = \"rm -f '{marker}'\"\nstatus = \"test -f '{marker}'\"\n\
                     app_check = true\nwatchdog = true\ntimeout_ms = 2000\n",
                    id = ids[i],
                    params = spec.params,
                ),
            )?;
            let peer = 1 - i;
            let config = node_dir.join("node.toml");
            write(
                &config,
                &format!(
                    "[node]\nid = \"{id}\"\nrole = \"{role}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\npolicy = \"hot-standby.toml\"\n\
                     plugin_dirs = [{plugin_dirs}]\n\n\
                     [heartbeat]\ninterval_ms = {interval}\ntimeout_ms = {timeout}\nfailures = {failures}\nsuccesses = {successes}\n\n\
                     [[peer]]\nid = \"{peer_id}\"\nurl = \"http://127.0.0.1:{peer_port}\"\n\n\
                     [security]\npeer_keys = [\"../peer.key\"]\nadmin_token_file = \"../admin.token\"\n",
                    id = ids[i],
                    role = roles[i],
                    port = ports[i],
                    plugin_dirs = plugin_dirs.join(", "),
                    interval = spec.interval_ms,
                    timeout = spec.timeout_ms,
                    failures = spec.failures,
                    successes = spec.successes,
                    peer_id = ids[peer],
                    peer_port = ports[peer],
                ),
            )?;
            nodes.push(ClusterNode {
                id: ids[i].to_string(),
                url: format!("http://127.0.0.1:{}", ports[i]),
                log: node_dir.join("vigil.log"),
                dir: node_dir,
                config,
                child: None,
            });
        }
        Ok(Cluster { dir: dir.to_path_buf(), exe: exe.to_path_buf(), nodes, http: HttpClient::new() })
    }

    /// Start node `i` (its log goes to `vigil.log` in its directory, appended).
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = Command::new(&self.exe)
            .args(["run", "--config"])
            .arg(&node.config)
            .env("VIGIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {} for node {}: {e}", self.exe.display(), node.id))?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILL node `i`: no chance to stop its services or say goodbye.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM node `i` and wait (SIGKILL after 5 s).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Each node's `/role`, `None` when it does not answer.
    pub async fn modes(&self) -> Vec<Option<Mode>> {
        let mut modes = Vec::new();
        for node in &self.nodes {
            let mode = match self.http.get(&format!("{}/role", node.url), Duration::from_millis(300)).await {
                Ok(a) if a.status == 200 => Mode::from_role_word(&String::from_utf8_lossy(&a.body)),
                _ => None,
            };
            modes.push(mode);
        }
        modes
    }

    /// Each node's `/active` status code, `None` when it does not answer.
    pub async fn active_codes(&self) -> Vec<Option<u16>> {
        let mut codes = Vec::new();
        for node in &self.nodes {
            codes.push(self.http.get(&format!("{}/active", node.url), Duration::from_millis(300)).await.ok().map(|a| a.status));
        }
        codes
    }

    /// Poll the modes every 20 ms until `done` says yes, or fail after `limit`.
    pub async fn wait_for<T>(&self, limit: Duration, mut done: impl FnMut(&[Option<Mode>]) -> Option<T>) -> anyhow::Result<T> {
        let deadline = Instant::now() + limit;
        loop {
            let modes = self.modes().await;
            if let Some(found) = done(&modes) {
                return Ok(found);
            }
            if Instant::now() > deadline {
                anyhow::bail!("not reached within {} ms; modes {modes:?}; logs in {}", limit.as_millis(), self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An admin call (`POST /admin/switch/…`, `GET /events`, …) to node `i`.
    pub async fn admin(&self, i: usize, method: Method, path: &str) -> anyhow::Result<(u16, String)> {
        let headers = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
        let url = format!("{}{path}", self.nodes[i].url);
        let a = self.http.send(method, &url, &headers, Bytes::new(), Duration::from_secs(3)).await.map_err(|e| anyhow::anyhow!(e))?;
        Ok((a.status, String::from_utf8_lossy(&a.body).into_owned()))
    }
}

/// The index of the single active node, when exactly one node is active and all answer.
pub fn exactly_one_active(modes: &[Option<Mode>]) -> Option<usize> {
    let active: Vec<usize> = modes.iter().enumerate().filter(|(_, m)| **m == Some(Mode::Active)).map(|(i, _)| i).collect();
    (active.len() == 1 && modes.iter().all(Option::is_some)).then(|| active[0])
}
