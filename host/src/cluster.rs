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
/// The shared peer key of every cluster node.
pub const PEER_KEY: &str = "cluster-peer-key-0123456789abcdef0123456789";

/// Heartbeat settings shared by the nodes of a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failures: u32,
    pub successes: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { interval_ms: 200, timeout_ms: 150, failures: 3, successes: 3 }
    }
}

/// How to build a hot-standby pair.
#[derive(Debug, Clone, Default)]
pub struct PairSpec {
    pub timing: Timing,
    /// The `[params]` lines of the hot-standby policy.
    pub params: String,
    /// Extra plugin directories.
    pub plugin_dirs: Vec<PathBuf>,
}

/// One node to add to a cluster.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: String,
    pub role: crate::model::Role,
    /// The policy file's text; `{dir}` stands for the node's directory.
    pub policy: String,
    /// Ids of cluster nodes that are this node's pair peers (signed heartbeat on their loopback URL),
    /// unless `peer_paths` names the paths explicitly.
    pub peers: Vec<String>,
    /// Explicit heartbeat paths per peer id: `(peer id, [(path name, base URL)])`.
    pub peer_paths: Vec<(String, Vec<(String, String)>)>,
    /// Watched nodes: `(id, base URL)`; a cluster node id as URL means that node's URL.
    pub watched: Vec<(String, String)>,
    /// Where the node listens (default: a free loopback port).
    pub listen: Option<std::net::SocketAddr>,
    /// A command prefix, e.g. `ip netns exec ns1`, to run the node inside a namespace.
    pub prefix: Vec<String>,
    /// Extra TOML appended to the node configuration (e.g. a `[lan]` table).
    pub extra_config: String,
    /// Extra environment of the process (e.g. libfaketime's, to skew its clock).
    pub env: Vec<(String, String)>,
    /// Extra lines of the `[security]` table (e.g. `admin_insecure_remote = true`).
    pub security_extra: String,
    /// Extra lines of the `[heartbeat]` table (e.g. `udp_listen`, `http_interval_ms`).
    pub heartbeat_extra: String,
    /// A udp fast path to a peer (of `peers` or `peer_paths`): `(peer id, the address its datagrams go to)`.
    pub udp_paths: Vec<(String, String)>,
}

impl NodeSpec {
    /// A node with a policy and nothing else.
    pub fn new(id: &str, role: crate::model::Role, policy: &str) -> NodeSpec {
        NodeSpec {
            id: id.into(),
            role,
            policy: policy.into(),
            peers: Vec::new(),
            peer_paths: Vec::new(),
            watched: Vec::new(),
            listen: None,
            prefix: Vec::new(),
            extra_config: String::new(),
            env: Vec::new(),
            security_extra: String::new(),
            heartbeat_extra: String::new(),
            udp_paths: Vec::new(),
        }
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
    spec: NodeSpec,
    listen: std::net::SocketAddr,
    child: Option<Child>,
}

impl ClusterNode {
    /// The marker file the hot-standby pair's `cti` service writes while it runs.
    pub fn service_marker(&self) -> PathBuf {
        self.dir.join("cti.running")
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
    timing: Timing,
    plugin_dirs: Vec<PathBuf>,
    pub nodes: Vec<ClusterNode>,
    http: HttpClient,
    /// `http` or, after [`Cluster::use_https`], `https`.
    scheme: &'static str,
}

/// A free loopback port for a node to listen on later. Taken below the kernel's ephemeral range
/// (32768 and up by default): a port the kernel hands out to a client socket or a `bind(0)` (a
/// `LinkProxy`, another test's node) in the meantime can then never be this one.
pub fn free_port() -> std::io::Result<u16> {
    let mut random = [0u8; 2];
    for _ in 0..200 {
        getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
        let port = 20_000 + u16::from_le_bytes(random) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

impl Cluster {
    /// An empty cluster configured in `dir`, sharing a peer key and an admin token.
    pub fn new(exe: &Path, dir: &Path, timing: Timing, plugin_dirs: Vec<PathBuf>) -> anyhow::Result<Cluster> {
        write(&dir.join("peer.key"), PEER_KEY)?;
        write(&dir.join("admin.token"), ADMIN_TOKEN)?;
        Ok(Cluster { dir: dir.to_path_buf(), exe: exe.to_path_buf(), timing, plugin_dirs, nodes: Vec::new(), http: HttpClient::new(), scheme: "http" })
    }

    /// Add a node (configured when first started); returns its index.
    pub fn add(&mut self, spec: NodeSpec) -> anyhow::Result<usize> {
        let listen = match spec.listen {
            Some(addr) => addr,
            None => std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let dir = self.dir.join(&spec.id);
        std::fs::create_dir_all(&dir)?;
        self.nodes.push(ClusterNode {
            id: spec.id.clone(),
            url: format!("{}://{listen}", self.scheme),
            config: dir.join("node.toml"),
            log: dir.join("vigil.log"),
            dir,
            spec,
            listen,
            child: None,
        });
        Ok(self.nodes.len() - 1)
    }

    /// The nodes speak HTTPS (each node's `[tls]` goes in its `extra_config`): their URLs, as peers
    /// and as seen by the cluster's own calls, become `https://`, made through `http`.
    pub fn use_https(&mut self, http: HttpClient) {
        self.scheme = "https";
        self.http = http;
        for node in &mut self.nodes {
            node.url = format!("https://{}", node.listen);
        }
    }

    fn url_of(&self, id_or_url: &str) -> String {
        self.nodes.iter().find(|n| n.id == id_or_url).map_or_else(|| id_or_url.to_string(), |n| n.url.clone())
    }

    fn write_config(&self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let spec = &node.spec;
        let policy_file = node.dir.join("policy.toml");
        write(&policy_file, &spec.policy.replace("{dir}", &node.dir.display().to_string()))?;
        let t = self.timing;
        let plugin_dirs: Vec<String> = self.plugin_dirs.iter().map(|d| quoted(d)).collect();
        let mut config = format!(
            "[node]\nid = \"{id}\"\nrole = \"{role}\"\nlisten = \"{listen}\"\ndata_dir = {data}\npolicy = {policy}\nplugin_dirs = [{dirs}]\n\n\
             [heartbeat]\ninterval_ms = {}\ntimeout_ms = {}\nfailures = {}\nsuccesses = {}\n{heartbeat_extra}\n\n\
             [security]\npeer_keys = [{key}]\nadmin_token_file = {token}\n{security_extra}\n",
            t.interval_ms,
            t.timeout_ms,
            t.failures,
            t.successes,
            id = spec.id,
            role = spec.role,
            listen = node.listen,
            data = quoted(&node.dir.join("data")),
            policy = quoted(&policy_file),
            dirs = plugin_dirs.join(", "),
            key = quoted(&self.dir.join("peer.key")),
            token = quoted(&self.dir.join("admin.token")),
            security_extra = spec.security_extra,
            heartbeat_extra = spec.heartbeat_extra,
        );
        for (peer, paths) in &spec.peer_paths {
            let mut paths: Vec<String> = paths.iter().map(|(name, url)| format!("{{ name = \"{name}\", url = \"{url}\" }}")).collect();
            if let Some((_, address)) = spec.udp_paths.iter().find(|(id, _)| id == peer) {
                paths.push(format!("{{ name = \"fast\", kind = \"udp\", address = \"{address}\" }}"));
            }
            config.push_str(&format!("\n[[peer]]\nid = \"{peer}\"\npaths = [{}]\n", paths.join(", ")));
        }
        for peer in spec.peers.iter().filter(|p| !spec.peer_paths.iter().any(|(id, _)| id == *p)) {
            config.push_str(&format!("\n[[peer]]\nid = \"{peer}\"\nurl = \"{}\"\n", self.url_of(peer)));
            if let Some((_, address)) = spec.udp_paths.iter().find(|(id, _)| id == peer) {
                config.push_str(&format!("paths = [{{ name = \"fast\", kind = \"udp\", address = \"{address}\" }}]\n"));
            }
        }
        for (id, url) in &spec.watched {
            config.push_str(&format!("\n[[watch]]\nid = \"{id}\"\nurl = \"{}\"\n", self.url_of(url)));
        }
        config.push_str(&spec.extra_config);
        write(&node.config, &config)
    }

    /// A primary `a` and a secondary `b` running the hot-standby policy, configured in `dir` (not
    /// started). Each node's `cti` service writes a marker file in its own directory.
    pub fn hot_standby_pair(exe: &Path, dir: &Path, spec: &PairSpec) -> anyhow::Result<Cluster> {
        Cluster::hot_standby_pair_with(exe, dir, spec, "hot-standby", "")
    }

    /// [`Cluster::hot_standby_pair`] deciding with another build of the hot-standby rules: `plugin`
    /// (a name or a path), with `extra` lines at the end of the policy file (its `[limits]`, say).
    pub fn hot_standby_pair_with(exe: &Path, dir: &Path, spec: &PairSpec, plugin: &str, extra: &str) -> anyhow::Result<Cluster> {
        use crate::model::Role;
        let mut cluster = Cluster::new(exe, dir, spec.timing, spec.plugin_dirs.clone())?;
        let policy = format!(
            "# Hot standby: the service only writes a marker file.\nplugin = {plugin:?}\n\n[params]\n{params}\n\n\
             [services.cti]\nstart = \"echo running > '{{dir}}/cti.running'\"\nstop = \"rm -f '{{dir}}/cti.running'\"\n\
             status = \"test -f '{{dir}}/cti.running'\"\napp_check = true\nwatchdog = true\ntimeout_ms = 2000\n{extra}",
            params = spec.params,
        );
        for (id, role, peer) in [("a", Role::Primary, "b"), ("b", Role::Secondary, "a")] {
            let mut node = NodeSpec::new(id, role, &policy);
            node.peers = vec![peer.into()];
            cluster.add(node)?;
        }
        Ok(cluster)
    }

    /// Start node `i` (its log goes to `vigil.log` in its directory, appended).
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        self.write_config(i)?;
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let mut command = match node.spec.prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        let child = command
            .envs(node.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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

    /// SIGSTOP node `i`: a frozen process (a hung VM, a long GC pause) that still holds its sockets.
    pub fn freeze(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            let _ = Command::new("kill").arg("-STOP").arg(child.id().to_string()).status();
        }
    }

    /// SIGCONT node `i`.
    pub fn thaw(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
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

/// Poll `condition` every 20 ms until it holds (true) or `limit` passes (false). Actions run after
/// the decision that asks for them, so "the active node runs its service" is a matter of moments.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The index of the single active node, when exactly one node is active and all answer.
pub fn exactly_one_active(modes: &[Option<Mode>]) -> Option<usize> {
    let active: Vec<usize> = modes.iter().enumerate().filter(|(_, m)| **m == Some(Mode::Active)).map(|(i, _)| i).collect();
    (active.len() == 1 && modes.iter().all(Option::is_some)).then(|| active[0])
}

/// A TCP link between two loopback addresses that a test can cut and heal: a partition without
/// privileges. Cutting closes the open connections and refuses new ones (the peer sees its requests
/// fail at once, as with a dead host's refused port).
#[derive(Debug)]
pub struct LinkProxy {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    /// Forward a new loopback port to `target`. Needs a tokio runtime.
    pub async fn start(target: std::net::SocketAddr) -> std::io::Result<LinkProxy> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (flag, gen) = (open.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::Acquire) {
                    continue; // dropped: the connection is closed at once
                }
                let mut cut = gen.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(LinkProxy { addr, open, generation, task })
    }

    /// The proxy's base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cut the link: close every open connection, refuse new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::Release);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Heal the link.
    pub fn heal(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Cluster {
    /// Node `i`'s listen address.
    pub fn listen_addr(&self, i: usize) -> std::net::SocketAddr {
        self.nodes[i].listen
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} ({})\n", node.id, node.log.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Replace node `i`'s spec before it starts (e.g. to route its peer paths through proxies).
    pub fn spec_mut(&mut self, i: usize) -> &mut NodeSpec {
        &mut self.nodes[i].spec
    }
}

impl Cluster {
    /// How node `i`'s process ended, if it was started and has exited since (it is then no longer
    /// running); `None` while it runs or when it was not started.
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[i];
        let status = node.child.as_mut()?.try_wait().ok().flatten()?;
        node.child = None;
        Some(status)
    }
}
