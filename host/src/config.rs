//! The node configuration file (`vigil run --config FILE`).
//!
//! ```toml
//! [node]
//! id = "a"                        # required
//! role = "primary"                # primary | secondary
//! listen = "0.0.0.0:7400"
//! data_dir = "/var/lib/vigil"     # event log, plugin cache, replicated store
//! policy = "/etc/vigil/policies/hot-standby.toml"
//! plugin_dirs = []                # extra plugin directories, searched first
//!
//! [heartbeat]
//! interval_ms = 1000
//! timeout_ms = 500                # per probe; at most interval_ms
//! failures = 3                    # consecutive failed checks to switch
//! successes = 3                   # consecutive good checks to switch back
//! startup_grace_ms = 5000         # after a start, no ACTIVE before every peer answered or this passed
//! udp_listen = "0.0.0.0:7402"     # the UDP fast path's socket (needed with `kind = "udp"` paths)
//! http_interval_ms = 200          # pace of the other probes (HTTP heartbeat, services, watched, LAN,
//!                                 # VIP) when interval_ms is a fast UDP pace; default: interval_ms
//!
//! [[peer]]                        # the pair peer(s)
//! id = "b"
//! url = "http://10.0.0.2:7400"    # shorthand for one signed vigil heartbeat path
//! paths = [                       # or several paths (links), each a probe
//!   { name = "lan", url = "http://10.0.0.2:7400" },
//!   { name = "crossover", url = "http://192.168.99.2:7400" },
//!   { name = "fast", kind = "udp", address = "10.0.0.2:7402" },   # see `udp_listen`
//! ]
//! services = [ { name = "smtp", kind = "tcp", address = "10.0.0.2:25" } ]  # remote services as heartbeat
//!
//! [[watch]]                       # nodes followed without being their pair peer
//! id = "xivo"
//! url = "http://10.0.0.5:7400"    # polled at /role unless `kind` says otherwise
//!
//! [lan]                           # is this node still on its LAN?
//! kind = "ping"
//! address = "10.0.0.254"
//!
//! [vip]
//! url = "http://10.0.0.100:7400"  # which node answers on the VIP (read from its /status)
//! test = true
//!
//! [security]
//! peer_keys = ["/etc/vigil/peer.key"]   # one or two (during a rotation) shared HMAC keys
//! admin_token_file = "/etc/vigil/admin.token"
//! admin_insecure_remote = false   # without [tls], admin requests are answered only from loopback
//!
//! [tls]                           # HTTPS for peers, admin and clients (see docs/operator-guide.md)
//! cert = "/etc/vigil/tls/node.crt"  # this node's certificate chain (PEM), reloaded when it changes
//! key = "/etc/vigil/tls/node.key"   # its private key (PEM), reloaded with it
//! ca = "/etc/vigil/tls/ca.crt"      # checks the certificates of https:// peers and watched nodes
//! client_ca = "/etc/vigil/tls/ca.crt"  # mutual TLS: clients must show a certificate signed by it
//! min_version = "1.2"             # "1.2" or "1.3"
//! peer_names = false              # a peer's certificate must name its node id (DNS SAN)
//! plain_listen = "0.0.0.0:7401"   # optional plain HTTP for the public endpoints only
//!
//! [events]
//! retention = 10000
//!
//! [recorder]                      # the flight recorder: every decided tick, in data_dir/recorder
//! enabled = true
//! max_bytes = 67108864            # the ring's size cap (64 MiB); the oldest ticks go first
//!
//! [restart]                       # a daemon restarted (crash, upgrade) resumes its mode
//! max_downtime_ms = 60000         # down longer than this (or stopped cleanly): start fresh
//!
//! [sync]                          # configuration replication
//! interval_ms = 30000             # full pull from every peer at least this often
//! local_only = ["ha.*", "net.*"]  # keys never sent nor accepted (added to the policy's)
//! max_clock_skew_ms = 2000        # warn (event, status, metrics) above this peer clock skew
//! tombstone_days = 30             # how long deletes are remembered
//!
//! [[sync.directory]]              # a replicated directory
//! name = "templates"
//! path = "/etc/app/templates"
//! include = ["*"]                 # patterns on the relative path; `*` matches anything
//! exclude = ["*.swp"]
//! interval_ms = 10000             # rescan period (file events also trigger a scan)
//! max_file_mib = 8
//! max_delete_percent = 50         # a scan deleting more than this share of the files is held (100: off)
//! max_delete_files = 100          # ... or more files than this (`vigil sync --confirm-deletes`)
//! ```
//!
//! A probe (`paths`, `services`, `[lan]`, a `[[watch]]` entry) has a `kind`: `vigil` (the signed peer
//! heartbeat at `url`), `role` (GET `url`/role, unauthenticated: any vigil node or monitor that
//! answers ACTIVE/STANDBY/…), `http` (GET `url`, `expect_status`, optional `expect_body` substring),
//! `tcp` (connect to `address`) or `ping` (a TCP "ping" of `address`: any answer, even a refused
//! connection, proves the host is up; needs no privileges). `count` probes make one check, which
//! fails only when every one of them fails. A peer path may also be `udp` (the fast path, see
//! `udp`): signed datagrams sent every `interval_ms` to the peer's `udp_listen` at `address`; a
//! peer with udp paths is judged reachable on those alone, and still needs a `url` (the HTTP
//! heartbeat: clock, replication, commands, at `http_interval_ms`).
//!
//! Every field has a default except `node.id` and, when there are peers, `security.peer_keys`;
//! unknown keys are errors.

use crate::model::{Heartbeat, Role};
use crate::toml_file::{self, TomlError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A parsed and checked node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    #[serde(default)]
    pub heartbeat: HeartbeatSection,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    #[serde(default, rename = "watch")]
    pub watched: Vec<WatchConfig>,
    #[serde(default)]
    pub lan: Option<ProbeConfig>,
    #[serde(default)]
    pub vip: Option<VipConfig>,
    #[serde(default)]
    pub security: SecuritySection,
    #[serde(default)]
    pub events: EventsSection,
    #[serde(default)]
    pub sync: SyncSection,
    #[serde(default)]
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub restart: RestartSection,
    /// The etcd arbiter (issue 11): who may be active is granted by a lease-bound key.
    #[serde(default)]
    pub arbiter: Option<ArbiterSection>,
    #[serde(default)]
    pub recorder: RecorderSection,
    /// A shadow policy (issue 12): decides every tick beside the live one, never acts.
    #[serde(default)]
    pub shadow: ShadowSection,
    /// The file this was read from (for messages and relative paths).
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub id: String,
    #[serde(default)]
    pub role: Role,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_policy")]
    pub policy: PathBuf,
    #[serde(default)]
    pub plugin_dirs: Vec<PathBuf>,
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:7400".parse().expect("valid")
}

fn default_data_dir() -> PathBuf {
    "/var/lib/vigil".into()
}

fn default_policy() -> PathBuf {
    "/etc/vigil/policy.toml".into()
}

/// `[heartbeat]`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSection {
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub failures: u32,
    pub successes: u32,
    /// After a start, how long a node whose peers have not answered yet holds back from becoming
    /// active: a peer started a little later (a slower disk, a cold plugin compile) gets the time to
    /// answer before it is counted as dead.
    pub startup_grace_ms: u32,
    /// The UDP fast path's socket (`kind = "udp"` peer paths send to the peers' ones).
    pub udp_listen: Option<SocketAddr>,
    /// How often the probes other than udp paths go out; `None`: every round.
    pub http_interval_ms: Option<u32>,
}

/// Default of `heartbeat.startup_grace_ms`.
pub const DEFAULT_STARTUP_GRACE_MS: u32 = 5_000;

impl Default for HeartbeatSection {
    fn default() -> Self {
        let h = Heartbeat::default();
        HeartbeatSection {
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            failures: h.failures,
            successes: h.successes,
            startup_grace_ms: DEFAULT_STARTUP_GRACE_MS,
            udp_listen: None,
            http_interval_ms: None,
        }
    }
}

impl HeartbeatSection {
    /// As the plugin sees it.
    pub fn model(&self) -> Heartbeat {
        Heartbeat { interval_ms: self.interval_ms, timeout_ms: self.timeout_ms, failures: self.failures, successes: self.successes }
    }
}

/// How a probe checks something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// The signed vigil peer heartbeat.
    #[default]
    Vigil,
    /// `GET url/role`.
    Role,
    /// `GET url` with an expected status (and body substring).
    Http,
    /// TCP connect.
    Tcp,
    /// TCP "ping": any answer, even a refusal, means the host is up.
    Ping,
    /// The UDP fast path: signed one-way datagrams (peer paths only).
    Udp,
}

/// One probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: Option<ProbeKind>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub expect_status: Option<u16>,
    #[serde(default)]
    pub expect_body: Option<String>,
    /// Probes per check; the check fails only when all fail.
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// `[[peer]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: String,
    /// Shorthand for one vigil path named `main`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub paths: Vec<ProbeConfig>,
    #[serde(default)]
    pub services: Vec<ProbeConfig>,
}

/// `[[watch]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    pub id: String,
    pub url: Option<String>,
    #[serde(default)]
    pub kind: Option<ProbeKind>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub expect_status: Option<u16>,
    #[serde(default)]
    pub expect_body: Option<String>,
}

/// `[vip]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// A vigil URL on the virtual address; the answering node's id is read from its `/status`.
    pub url: String,
    #[serde(default)]
    pub test: bool,
}

/// `[security]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// Files holding the shared peer keys; the first signs, all verify (key rotation).
    #[serde(default)]
    pub peer_keys: Vec<PathBuf>,
    /// A file holding the admin bearer token; without it the admin endpoints are disabled.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Without `[tls]`, admin requests from other than loopback addresses are refused (the token
    /// would cross the network in clear text) unless this is set.
    #[serde(default)]
    pub admin_insecure_remote: bool,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// This node's certificate chain (PEM): served, and shown to peers as a client certificate.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA (PEM) that signed the certificates of `https://` peers and watched nodes.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Mutual TLS: every client must show a certificate signed by this CA (PEM).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The oldest TLS version accepted: "1.2" or "1.3".
    #[serde(default = "default_min_version")]
    pub min_version: String,
    /// A peer's certificate must name the peer's node id (a DNS subject alternative name), whatever
    /// the address in its URL; with `client_ca`, a peer's client certificate must name the node id
    /// its signed requests come from.
    #[serde(default)]
    pub peer_names: bool,
    /// A plain-HTTP address for the public endpoints only (load balancers that check health without
    /// TLS); admin and peer requests are refused there.
    #[serde(default)]
    pub plain_listen: Option<SocketAddr>,
}

fn default_min_version() -> String {
    "1.2".into()
}

/// `[arbiter]`: an etcd cluster grants the active role to one node at a time (see `crate::arbiter`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArbiterSection {
    /// The arbiter's kind: only "etcd".
    pub kind: String,
    /// The etcd members' client URLs (`http://host:2379`, or `https://` with `ca_file`).
    pub endpoints: Vec<String>,
    /// The group's key space: the role key is `PREFIX/leader`.
    pub prefix: String,
    /// The lease's time to live.
    #[serde(default = "default_arbiter_ttl")]
    pub ttl_ms: u64,
    /// How long before the lease would expire (by this node's clock, from its last renewal) the node
    /// counts the role as lost; default `ttl_ms / 4`.
    #[serde(default)]
    pub safety_margin_ms: Option<u64>,
    /// The host refuses active without the role key, and demotes when it is lost.
    #[serde(default = "default_true")]
    pub fencing: bool,
    /// TLS: the CA that signed the etcd members' certificates, and a client certificate and key.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd authentication: a user and its password (inline or, better, in a root-only file).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_arbiter_ttl() -> u64 {
    10_000
}

fn default_true() -> bool {
    true
}

impl ArbiterSection {
    /// The margin in force (`safety_margin_ms`, or a quarter of the ttl).
    pub fn margin_ms(&self) -> u64 {
        self.safety_margin_ms.unwrap_or(self.ttl_ms / 4)
    }

    /// The role key.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix.trim_end_matches('/'))
    }
}

/// `[events]`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    pub retention: usize,
}

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection { retention: 10_000 }
    }
}

/// `[recorder]`: the flight recorder (`crate::recorder`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderSection {
    /// Record every decided tick.
    pub enabled: bool,
    /// The ring's size cap on disk, in bytes: the oldest ticks are dropped first.
    pub max_bytes: u64,
}

impl Default for RecorderSection {
    fn default() -> Self {
        RecorderSection { enabled: true, max_bytes: 64 << 20 }
    }
}

/// `[shadow]`: a policy that decides every live tick beside the live one and never acts
/// (`node::shadow`); also set and cleared at run time with `POST`/`DELETE /admin/shadow`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowSection {
    /// The shadow policy file (relative to this file), hot-reloaded like the live one.
    pub policy: Option<PathBuf>,
    /// Ticks in a row without a fault the shadow must have decided before `vigil policy promote`.
    pub promote_after_ticks: u64,
}

impl Default for ShadowSection {
    fn default() -> Self {
        ShadowSection { policy: None, promote_after_ticks: 100 }
    }
}

/// `[restart]`: what a restarted daemon takes over from the one before it (`node::persist`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartSection {
    /// A daemon down longer than this starts fresh (standby, no plugin state), as one stopped
    /// cleanly always does; within it, the first tick tells the plugin what the node was. 0: never
    /// resume.
    pub max_downtime_ms: u64,
}

/// Default of `restart.max_downtime_ms`.
pub const DEFAULT_MAX_DOWNTIME_MS: u64 = 60_000;

impl Default for RestartSection {
    fn default() -> Self {
        RestartSection { max_downtime_ms: DEFAULT_MAX_DOWNTIME_MS }
    }
}

/// `[sync]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSection {
    pub interval_ms: u64,
    pub local_only: Vec<String>,
    pub max_clock_skew_ms: u64,
    pub tombstone_days: u64,
    #[serde(rename = "directory")]
    pub directories: Vec<DirectoryConfig>,
}

impl Default for SyncSection {
    fn default() -> Self {
        SyncSection { interval_ms: 30_000, local_only: Vec::new(), max_clock_skew_ms: 2_000, tombstone_days: 30, directories: Vec::new() }
    }
}

/// `[[sync.directory]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_dir_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_max_file_mib")]
    pub max_file_mib: u64,
    /// A scan that would delete more than this share of the directory's files (percent) is held
    /// until `vigil sync --confirm-deletes`; 100 turns the share check off (an emptied directory is
    /// then not held either: only the missing-root and other-filesystem checks remain).
    #[serde(default = "default_max_delete_percent")]
    pub max_delete_percent: u32,
    /// A scan that would delete more files than this is held likewise.
    #[serde(default = "default_max_delete_files")]
    pub max_delete_files: u64,
}

fn default_max_delete_percent() -> u32 {
    50
}

fn default_max_delete_files() -> u64 {
    100
}

fn default_dir_interval() -> u64 {
    10_000
}

fn default_max_file_mib() -> u64 {
    8
}

/// A probe with its kind and target resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub name: String,
    pub kind: ProbeKind,
    /// `url` for vigil/role/http, `address` (host:port) for tcp/ping.
    pub target: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub count: u32,
}

impl NodeConfig {
    /// Read and check a node configuration file. Relative paths in it are relative to the file.
    pub fn read(path: &Path) -> Result<NodeConfig, TomlError> {
        let config = Self::parse(path, &toml_file::read_text(path)?)?;
        // Again with symbolic links resolved, now that the filesystem is at hand: a replicated
        // directory that reaches vigil's own files through a link is refused too.
        for (i, d) in config.sync.directories.iter().enumerate() {
            config.check_sync_path(i, &d.path, resolved)?;
        }
        Ok(config)
    }

    /// Parse and check the text of the node configuration file at `path` (named in errors; relative
    /// paths in the text are relative to it). Touches no file.
    pub fn parse(path: &Path, text: &str) -> Result<NodeConfig, TomlError> {
        let mut config: NodeConfig = toml_file::parse(path, text)?;
        config.path = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.node.data_dir);
        resolve(&mut config.node.policy);
        if let Some(p) = &mut config.shadow.policy {
            resolve(p);
        }
        config.node.plugin_dirs.iter_mut().for_each(resolve);
        config.sync.directories.iter_mut().for_each(|d| resolve(&mut d.path));
        config.security.peer_keys.iter_mut().for_each(resolve);
        if let Some(t) = config.security.admin_token_file.as_mut() {
            resolve(t);
        }
        if let Some(a) = config.arbiter.as_mut() {
            a.ca_file.iter_mut().for_each(resolve);
            a.cert_file.iter_mut().for_each(resolve);
            a.key_file.iter_mut().for_each(resolve);
            a.password_file.iter_mut().for_each(resolve);
        }
        if let Some(tls) = config.tls.as_mut() {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            tls.ca.iter_mut().for_each(resolve);
            tls.client_ca.iter_mut().for_each(resolve);
        }
        config.check()?;
        Ok(config)
    }

    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> TomlError {
        TomlError::at(&self.path, key, message)
    }

    fn check(&self) -> Result<(), TomlError> {
        if !valid_id(&self.node.id) {
            return Err(self.err("node.id", "expected a non-empty id of letters, digits, '-', '_' or '.'"));
        }
        let h = &self.heartbeat;
        if !(10..=3_600_000).contains(&h.interval_ms) {
            return Err(self.err("heartbeat.interval_ms", format!("expected 10 to 3600000, got {}", h.interval_ms)));
        }
        if let Some(http) = h.http_interval_ms {
            if http < h.interval_ms || http > 3_600_000 {
                return Err(self.err(
                    "heartbeat.http_interval_ms",
                    format!("expected interval_ms ({}) to 3600000, got {http}", h.interval_ms),
                ));
            }
        }
        let pace = h.http_interval_ms.unwrap_or(h.interval_ms);
        if h.timeout_ms == 0 || h.timeout_ms > pace {
            let which = if h.http_interval_ms.is_some() { "http_interval_ms" } else { "interval_ms" };
            return Err(self.err(
                "heartbeat.timeout_ms",
                format!("expected 1 to {which} ({pace}), got {}: a check must end before the next begins", h.timeout_ms),
            ));
        }
        if h.failures == 0 {
            return Err(self.err("heartbeat.failures", "expected at least 1"));
        }
        if h.startup_grace_ms > 600_000 {
            return Err(self.err("heartbeat.startup_grace_ms", format!("expected 0 to 600000, got {}", h.startup_grace_ms)));
        }
        if h.successes == 0 {
            return Err(self.err("heartbeat.successes", "expected at least 1"));
        }
        if self.restart.max_downtime_ms > 86_400_000 {
            return Err(self.err("restart.max_downtime_ms", format!("expected 0 to 86400000 (a day), got {}", self.restart.max_downtime_ms)));
        }
        let mut ids = vec![self.node.id.as_str()];
        for (i, p) in self.peers.iter().enumerate() {
            if !valid_id(&p.id) {
                return Err(self.err(format!("peer[{i}].id"), "expected a non-empty id of letters, digits, '-', '_' or '.'"));
            }
            if ids.contains(&p.id.as_str()) {
                return Err(self.err(format!("peer[{i}].id"), format!("id {:?} is used twice", p.id)));
            }
            ids.push(&p.id);
            if p.url.is_none() && p.paths.is_empty() {
                return Err(self.err(format!("peer[{i}]"), "expected `url` or `paths` (at least one heartbeat path)"));
            }
            let paths = self.peer_paths(i)?;
            if paths.iter().any(|p| p.kind == ProbeKind::Udp) {
                if h.udp_listen.is_none() {
                    return Err(self.err("heartbeat.udp_listen", format!("peer[{i}] has a udp path: expected the address to receive udp heartbeats on")));
                }
                if !paths.iter().any(|p| p.kind == ProbeKind::Vigil) {
                    return Err(self.err(
                        format!("peer[{i}]"),
                        "a peer with udp paths also needs a vigil `url` (or vigil path): its clock, replication and commands go over HTTP",
                    ));
                }
                if p.id.len() > 255 || self.node.id.len() > 255 {
                    return Err(self.err(format!("peer[{i}].id"), "node ids of udp peers are at most 255 bytes"));
                }
            }
            for (j, s) in p.services.iter().enumerate() {
                self.probe(&format!("peer[{i}].services[{j}]"), s, ProbeKind::Tcp)?;
            }
        }
        for (i, w) in self.watched.iter().enumerate() {
            if !valid_id(&w.id) || ids.contains(&w.id.as_str()) {
                return Err(self.err(format!("watch[{i}].id"), format!("expected a unique id, got {:?}", w.id)));
            }
            ids.push(&w.id);
            self.watch_probe(i)?;
        }
        if let Some(lan) = &self.lan {
            self.probe("lan", lan, ProbeKind::Ping)?;
        }
        if let Some(vip) = &self.vip {
            check_url(&vip.url).map_err(|e| self.err("vip.url", e))?;
        }
        if !self.peers.is_empty() && self.security.peer_keys.is_empty() {
            return Err(self.err("security.peer_keys", "expected one or two key files: peers authenticate each other with a shared key"));
        }
        if self.security.peer_keys.len() > 2 {
            return Err(self.err("security.peer_keys", "expected at most two keys (the current one and, during a rotation, the next)"));
        }
        let s = &self.sync;
        if s.interval_ms < 100 {
            return Err(self.err("sync.interval_ms", "expected at least 100"));
        }
        if s.tombstone_days == 0 {
            return Err(self.err("sync.tombstone_days", "expected at least 1 day"));
        }
        let mut names: Vec<&str> = vec!["config"];
        for (i, d) in s.directories.iter().enumerate() {
            if !valid_id(&d.name) || names.contains(&d.name.as_str()) {
                return Err(self.err(format!("sync.directory[{i}].name"), format!("expected a unique name of letters, digits, '-', '_' (not \"config\"), got {:?}", d.name)));
            }
            names.push(&d.name);
            if d.interval_ms < 100 {
                return Err(self.err(format!("sync.directory[{i}].interval_ms"), "expected at least 100"));
            }
            // One change must fit one page of the change feed (`http_client::MAX_ANSWER`).
            if !(1..=16).contains(&d.max_file_mib) {
                return Err(self.err(format!("sync.directory[{i}].max_file_mib"), "expected 1 to 16 (larger files do not replicate)"));
            }
            if !(1..=100).contains(&d.max_delete_percent) {
                return Err(self.err(
                    format!("sync.directory[{i}].max_delete_percent"),
                    format!("expected 1 to 100 (percent of the directory's files one scan may delete), got {}", d.max_delete_percent),
                ));
            }
            if d.max_delete_files == 0 {
                return Err(self.err(format!("sync.directory[{i}].max_delete_files"), "expected at least 1 (files one scan may delete)"));
            }
            self.check_sync_path(i, &d.path, lexical)?;
        }
        if let Some(tls) = &self.tls {
            if !matches!(tls.min_version.as_str(), "1.2" | "1.3") {
                return Err(self.err("tls.min_version", format!("expected \"1.2\" or \"1.3\", got {:?}", tls.min_version)));
            }
            if tls.plain_listen == Some(self.node.listen) {
                return Err(self.err("tls.plain_listen", "must differ from node.listen (which serves HTTPS)"));
            }
            if tls.peer_names && tls.ca.is_none() {
                return Err(self.err("tls.peer_names", "needs tls.ca (the CA that vouches for the names)"));
            }
        }
        for (key, url) in self.probe_urls() {
            if url.starts_with("https://") && self.tls.as_ref().is_none_or(|t| t.ca.is_none()) {
                return Err(self.err(key, format!("{url}: an https:// URL needs tls.ca (the CA that signed its certificate)")));
            }
        }
        if self.events.retention < 100 {
            return Err(self.err("events.retention", "expected at least 100 events"));
        }
        if self.recorder.max_bytes < crate::recorder::MIN_BYTES {
            return Err(self.err("recorder.max_bytes", format!("expected at least {} bytes", crate::recorder::MIN_BYTES)));
        }
        if let Some(a) = &self.arbiter {
            self.check_arbiter(a)?;
        }
        Ok(())
    }

    fn check_arbiter(&self, a: &ArbiterSection) -> Result<(), TomlError> {
        if a.kind != "etcd" {
            return Err(self.err("arbiter.kind", format!("expected \"etcd\", got {:?}", a.kind)));
        }
        if a.endpoints.is_empty() {
            return Err(self.err("arbiter.endpoints", "expected at least one etcd client URL (three members: list the three)"));
        }
        for (i, e) in a.endpoints.iter().enumerate() {
            let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                return Err(self.err(format!("arbiter.endpoints[{i}]"), format!("expected http://HOST:PORT or https://HOST:PORT, got {e:?}")));
            }
            if e.starts_with("https://") && a.ca_file.is_none() {
                return Err(self.err(format!("arbiter.endpoints[{i}]"), format!("{e}: an https:// endpoint needs arbiter.ca_file")));
            }
        }
        if a.prefix.trim_matches('/').is_empty() || a.prefix.chars().any(char::is_whitespace) {
            return Err(self.err("arbiter.prefix", format!("expected the group's key prefix (e.g. \"/vigil/web\"), got {:?}", a.prefix)));
        }
        // etcd grants leases in whole seconds (at least its minimum ttl); a sub-second ttl is rounded up.
        if !(1_000..=3_600_000).contains(&a.ttl_ms) {
            return Err(self.err("arbiter.ttl_ms", format!("expected 1000 to 3600000 (etcd leases count whole seconds), got {}", a.ttl_ms)));
        }
        if a.margin_ms() >= a.ttl_ms {
            return Err(self.err("arbiter.safety_margin_ms", format!("expected less than ttl_ms ({}), got {}", a.ttl_ms, a.margin_ms())));
        }
        if a.ttl_ms - a.margin_ms() <= a.ttl_ms / 3 {
            return Err(self.err(
                "arbiter.safety_margin_ms",
                format!("expected at most two thirds of ttl_ms ({}): the lease is renewed every ttl/3, got {}", a.ttl_ms, a.margin_ms()),
            ));
        }
        if a.cert_file.is_some() != a.key_file.is_some() {
            return Err(self.err(if a.cert_file.is_some() { "arbiter.key_file" } else { "arbiter.cert_file" }, "a client certificate needs both cert_file and key_file"));
        }
        if (a.cert_file.is_some() || a.key_file.is_some()) && a.ca_file.is_none() {
            return Err(self.err("arbiter.ca_file", "a client certificate (cert_file, key_file) is for TLS: expected the CA of the etcd members too"));
        }
        if a.password.is_some() && a.password_file.is_some() {
            return Err(self.err("arbiter.password_file", "expected password or password_file, not both"));
        }
        if a.user.is_some() != (a.password.is_some() || a.password_file.is_some()) {
            return Err(self.err(
                if a.user.is_some() { "arbiter.password" } else { "arbiter.user" },
                "etcd authentication needs both user and password (or password_file)",
            ));
        }
        Ok(())
    }

    /// The arbiter's password, read from `password_file` when it is one (trimmed).
    pub fn read_arbiter_password(&self) -> Result<Option<String>, TomlError> {
        let Some(a) = &self.arbiter else { return Ok(None) };
        if let Some(path) = &a.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| self.err("arbiter.password_file", format!("{}: cannot read: {e}", path.display())))?;
            return Ok(Some(text.trim().to_string()));
        }
        Ok(a.password.clone())
    }

    /// A replicated directory must hold none of vigil's own files, nor be inside a directory vigil
    /// executes or loads from: any holder of the peer key can write replicated files on every node,
    /// so replicating the policy (its service commands), a plugin, the data directory (the store,
    /// the compiled-plugin cache) or a key would let it run commands or take over every node.
    /// Paths are compared after `resolve`: lexically when parsing, with links followed when reading.
    fn check_sync_path(&self, i: usize, path: &Path, resolve: fn(&Path) -> PathBuf) -> Result<(), TomlError> {
        let synced = resolve(path);
        // (key, path, whether a replicated directory inside it is refused too)
        let mut guarded: Vec<(String, &Path, bool)> = vec![
            ("node.data_dir".into(), &self.node.data_dir, true),
            ("node.policy".into(), &self.node.policy, false),
            ("the node configuration file".into(), &self.path, false),
            ("the standard plugin directory".into(), Path::new("/usr/lib/vigil/plugins"), true),
        ];
        guarded.extend(self.node.plugin_dirs.iter().enumerate().map(|(j, d)| (format!("node.plugin_dirs[{j}]"), d.as_path(), true)));
        guarded.extend(self.security.peer_keys.iter().enumerate().map(|(j, k)| (format!("security.peer_keys[{j}]"), k.as_path(), false)));
        if let Some(t) = &self.security.admin_token_file {
            guarded.push(("security.admin_token_file".into(), t.as_path(), false));
        }
        if let Some(tls) = &self.tls {
            guarded.push(("tls.cert".into(), tls.cert.as_path(), false));
            guarded.push(("tls.key".into(), tls.key.as_path(), false));
            guarded.extend(tls.ca.iter().map(|p| ("tls.ca".to_string(), p.as_path(), false)));
            guarded.extend(tls.client_ca.iter().map(|p| ("tls.client_ca".to_string(), p.as_path(), false)));
        }
        for (key, guarded_path, no_inside) in guarded {
            if guarded_path.as_os_str().is_empty() {
                continue;
            }
            let g = resolve(guarded_path);
            let why = "any holder of the peer key could change it on every node and run commands there; replicate a directory that holds none of vigil's own files";
            if g.starts_with(&synced) {
                return Err(self.err(
                    format!("sync.directory[{i}].path"),
                    format!("{} contains {key} ({}): {why}", path.display(), guarded_path.display()),
                ));
            }
            if no_inside && synced.starts_with(&g) {
                return Err(self.err(format!("sync.directory[{i}].path"), format!("{} is inside {key} ({}): {why}", path.display(), guarded_path.display())));
            }
        }
        Ok(())
    }

    /// Every configured URL, with its key.
    fn probe_urls(&self) -> Vec<(String, String)> {
        let mut urls = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            urls.extend(p.url.iter().map(|u| (format!("peer[{i}].url"), u.clone())));
            urls.extend(p.paths.iter().enumerate().filter_map(|(j, c)| Some((format!("peer[{i}].paths[{j}].url"), c.url.clone()?))));
        }
        urls.extend(self.watched.iter().enumerate().filter_map(|(i, w)| Some((format!("watch[{i}].url"), w.url.clone()?))));
        urls.extend(self.lan.iter().filter_map(|l| Some(("lan.url".to_string(), l.url.clone()?))));
        urls.extend(self.vip.iter().map(|v| ("vip.url".to_string(), v.url.clone())));
        urls
    }

    /// `authority` (host:port) of each peer heartbeat URL → the peer's node id: the name a peer's
    /// certificate must show with `tls.peer_names`.
    pub fn peer_authorities(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            for probe in self.peer_paths(i).unwrap_or_default() {
                if let Some(authority) = probe.target.split("://").nth(1).and_then(|rest| rest.split('/').next()) {
                    out.push((authority.to_string(), p.id.clone()));
                }
            }
        }
        out
    }

    /// The heartbeat paths of peer `i`, resolved.
    pub fn peer_paths(&self, i: usize) -> Result<Vec<Probe>, TomlError> {
        let p = &self.peers[i];
        let mut probes = Vec::new();
        if let Some(url) = &p.url {
            let c = ProbeConfig {
                name: "main".into(),
                kind: Some(ProbeKind::Vigil),
                url: Some(url.clone()),
                address: None,
                expect_status: None,
                expect_body: None,
                count: 1,
            };
            probes.push(self.probe(&format!("peer[{i}].url"), &c, ProbeKind::Vigil)?);
        }
        for (j, c) in p.paths.iter().enumerate() {
            let mut probe = self.probe(&format!("peer[{i}].paths[{j}]"), c, ProbeKind::Vigil)?;
            if probe.name.is_empty() {
                probe.name = format!("path{}", j + 1);
            }
            probes.push(probe);
        }
        Ok(probes)
    }

    /// The remote-service probes of peer `i`.
    pub fn peer_services(&self, i: usize) -> Vec<Probe> {
        let p = &self.peers[i];
        p.services
            .iter()
            .enumerate()
            .filter_map(|(j, s)| self.probe(&format!("peer[{i}].services[{j}]"), s, ProbeKind::Tcp).ok())
            .collect()
    }

    /// The probe of watched node `i`.
    pub fn watch_probe(&self, i: usize) -> Result<Probe, TomlError> {
        let w = &self.watched[i];
        let c = ProbeConfig {
            name: w.id.clone(),
            kind: w.kind,
            url: w.url.clone(),
            address: w.address.clone(),
            expect_status: w.expect_status,
            expect_body: w.expect_body.clone(),
            count: 1,
        };
        self.probe(&format!("watch[{i}]"), &c, ProbeKind::Role)
    }

    /// The LAN probe, resolved.
    pub fn lan_probe(&self) -> Option<Probe> {
        self.lan.as_ref().and_then(|l| self.probe("lan", l, ProbeKind::Ping).ok())
    }

    fn probe(&self, key: &str, c: &ProbeConfig, default: ProbeKind) -> Result<Probe, TomlError> {
        let kind = c.kind.unwrap_or(default);
        let target = match kind {
            ProbeKind::Vigil | ProbeKind::Role | ProbeKind::Http => {
                let url = c.url.clone().ok_or_else(|| self.err(format!("{key}.url"), format!("a {kind:?} probe needs a url")))?;
                check_url(&url).map_err(|e| self.err(format!("{key}.url"), e))?;
                url.trim_end_matches('/').to_string()
            }
            ProbeKind::Udp => {
                if !key.contains(".paths[") {
                    return Err(self.err(format!("{key}.kind"), "udp is a peer path kind (`[[peer]].paths`), not a probe"));
                }
                let address = c.address.clone().ok_or_else(|| self.err(format!("{key}.address"), "a udp path needs the peer's udp_listen address (ip:port)"))?;
                let parsed: SocketAddr = address
                    .parse()
                    .map_err(|_| self.err(format!("{key}.address"), format!("expected ip:port (a literal address), got {address:?}")))?;
                parsed.to_string()
            }
            ProbeKind::Tcp | ProbeKind::Ping => {
                let address = c.address.clone().ok_or_else(|| {
                    self.err(format!("{key}.address"), format!("a {kind:?} probe needs an address (host:port, or host for ping)"))
                })?;
                if kind == ProbeKind::Tcp && !address.contains(':') {
                    return Err(self.err(format!("{key}.address"), format!("expected host:port, got {address:?}")));
                }
                address
            }
        };
        if c.count == 0 || c.count > 10 {
            return Err(self.err(format!("{key}.count"), "expected 1 to 10 probes per check"));
        }
        Ok(Probe {
            name: c.name.clone(),
            kind,
            target,
            expect_status: c.expect_status.unwrap_or(200),
            expect_body: c.expect_body.clone(),
            count: c.count,
        })
    }

    /// The peer keys, read from their files (trimmed; at least 16 bytes each).
    pub fn read_peer_keys(&self) -> Result<Vec<Vec<u8>>, TomlError> {
        self.security
            .peer_keys
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let key = format!("security.peer_keys[{i}]");
                let text = std::fs::read(path).map_err(|e| self.err(&key, format!("{}: cannot read: {e}", path.display())))?;
                let trimmed = text.trim_ascii().to_vec();
                if trimmed.len() < 16 {
                    return Err(self.err(&key, format!("{}: a key needs at least 16 bytes", path.display())));
                }
                Ok(trimmed)
            })
            .collect()
    }

    /// The admin token, read from its file, if configured.
    pub fn read_admin_token(&self) -> Result<Option<String>, TomlError> {
        let Some(path) = &self.security.admin_token_file else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| self.err("security.admin_token_file", format!("{}: cannot read: {e}", path.display())))?;
        let token = text.trim().to_string();
        if token.len() < 16 {
            return Err(self.err("security.admin_token_file", format!("{}: a token needs at least 16 characters", path.display())));
        }
        Ok(Some(token))
    }
}

/// `path` with symbolic links resolved as far as it exists (the rest resolved lexically).
fn resolved(path: &Path) -> PathBuf {
    let lex = lexical(path);
    let mut existing = lex.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match existing.file_name() {
            Some(name) => {
                rest.push(name.to_owned());
                existing.pop();
            }
            None => return lex,
        }
    }
}

/// `path` with `.` and `..` resolved without touching the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, got {url:?}"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("expected http(s)://HOST:PORT, got {url:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, TomlError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        NodeConfig::read(&path).map_err(|mut e| {
            e.path = "node.toml".into();
            e
        })
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[node]\nid = \"a\"\n").unwrap();
        assert_eq!(c.node.role, Role::Primary);
        assert_eq!(c.heartbeat.interval_ms, 1000);
        assert_eq!(c.restart.max_downtime_ms, DEFAULT_MAX_DOWNTIME_MS);
        assert!(c.peers.is_empty());
    }

    #[test]
    fn peers_with_paths_and_services() {
        let c = parse(
            r#"[node]
id = "a"
[[peer]]
id = "b"
paths = [{ name = "lan", url = "http://127.0.0.1:1/" }, { url = "http://127.0.0.2:1" }]
services = [{ name = "smtp", address = "127.0.0.1:25" }]
[security]
peer_keys = ["k"]
"#,
        )
        .unwrap();
        let paths = c.peer_paths(0).unwrap();
        assert_eq!(paths[0].name, "lan");
        assert_eq!(paths[0].target, "http://127.0.0.1:1");
        assert_eq!(paths[1].name, "path2");
        assert_eq!(c.peer_services(0)[0].kind, ProbeKind::Tcp);
        assert!(c.security.peer_keys[0].is_absolute(), "relative to the config file");
    }

    #[test]
    fn mistakes_name_their_key() {
        // A node with a heartbeat section `h` and one peer `b` described by `peer`.
        fn udp(h: &str, peer: &str) -> &'static str {
            format!("[node]\nid = \"a\"\n[heartbeat]\n{h}\n[[peer]]\nid = \"b\"\n{peer}\n[security]\npeer_keys=[\"k\"]").leak()
        }
        let cases = [
            ("[node]\nid = \"a\"\nrole = \"leader\"", "node.role"),
            ("[node]\nid = \"a\"\n[restart]\nmax_downtime_ms = 90000000", "restart.max_downtime_ms"),
            ("[node]\nid = \"a\"\n[heartbeat]\ninterval_ms = 100\ntimeout_ms = 200", "heartbeat.timeout_ms"),
            ("[node]\nid = \"a\"\n[heartbeat]\nintervall_ms = 100", "heartbeat.intervall_ms"),
            ("[node]\nid = \"a\"\n[[peer]]\nid = \"b\"\nurl = \"http://x:1\"", "security.peer_keys"),
            ("[node]\nid = \"a\"\n[[peer]]\nid = \"a\"\nurl = \"http://x:1\"", "peer[0].id"),
            ("[node]\nid = \"a\"\n[[peer]]\nid = \"b\"\nurl = \"ftp://x\"\n[security]\npeer_keys=[\"k\"]", "peer[0].url.url"),
            ("[node]\nid = \"a\"\n[lan]\nkind = \"tcp\"\naddress = \"gw\"", "lan.address"),
            ("[node]\nid = \"\"", "node.id"),
            ("[node]\nid = \"a\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nmin_version = \"1.0\"", "tls.min_version"),
            ("[node]\nid = \"a\"\nlisten = \"127.0.0.1:7400\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nplain_listen = \"127.0.0.1:7400\"", "tls.plain_listen"),
            ("[node]\nid = \"a\"\n[tls]\ncert = \"c\"\nkey = \"k\"\npeer_names = true", "tls.peer_names"),
            ("[node]\nid = \"a\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nkey_file = \"k\"", "tls.key_file"),
            ("[node]\nid = \"a\"\n[[peer]]\nid = \"b\"\nurl = \"https://x:1\"\n[security]\npeer_keys=[\"k\"]", "peer[0].url"),
            ("[node]\nid = \"a\"\n[[watch]]\nid = \"w\"\nurl = \"https://x:1\"\n[tls]\ncert = \"c\"\nkey = \"k\"", "watch[0].url"),
            (udp("udp_listen = \"127.0.0.1:7402\"", "url = \"http://x:1\"\npaths = [{ kind = \"udp\", address = \"peer-b:7402\" }]"), "peer[0].paths[0].address"),
            (udp("", "url = \"http://x:1\"\npaths = [{ kind = \"udp\", address = \"10.0.0.2:7402\" }]"), "heartbeat.udp_listen"),
            (udp("udp_listen = \"127.0.0.1:7402\"", "paths = [{ kind = \"udp\", address = \"10.0.0.2:7402\" }]"), "peer[0]"),
            (udp("udp_listen = \"127.0.0.1:7402\"", "url = \"http://x:1\"\nservices = [{ kind = \"udp\", address = \"10.0.0.2:7402\" }]"), "peer[0].services[0].kind"),
            (udp("interval_ms = 20\nhttp_interval_ms = 10", "url = \"http://x:1\""), "heartbeat.http_interval_ms"),
            (udp("interval_ms = 20\nhttp_interval_ms = 200\ntimeout_ms = 300", "url = \"http://x:1\""), "heartbeat.timeout_ms"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}\n{e}");
        }
    }

    #[test]
    fn a_replicated_directory_may_not_hold_vigils_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().display().to_string();
        let config = |sync_path: &str| {
            format!(
                "[node]\nid = \"a\"\ndata_dir = \"{base}/data\"\npolicy = \"{base}/etc/policy.toml\"\nplugin_dirs = [\"{base}/plugins\"]\n\
                 [[peer]]\nid = \"b\"\nurl = \"http://127.0.0.1:1\"\n[security]\npeer_keys = [\"{base}/keys/peer.key\"]\nadmin_token_file = \"{base}/etc/admin.token\"\n\
                 [[sync.directory]]\nname = \"d\"\npath = \"{sync_path}\"\n"
            )
        };
        let path = dir.path().join("node.toml");
        let read = |sync_path: &str| {
            std::fs::write(&path, config(sync_path)).unwrap();
            NodeConfig::read(&path)
        };
        for (sync_path, names) in [
            (format!("{base}/etc"), "node.policy"),
            (format!("{base}/keys"), "security.peer_keys[0]"),
            (format!("{base}/data"), "node.data_dir"),
            (format!("{base}/data/sub"), "is inside node.data_dir"),
            (format!("{base}/plugins/x/.."), "node.plugin_dirs[0]"),
            (format!("{base}/plugins/own"), "is inside node.plugin_dirs[0]"),
            (base.clone(), "contains node.data_dir"),
            ("/".to_string(), "contains"),
            ("/usr/lib/vigil".to_string(), "the standard plugin directory"),
        ] {
            let e = read(&sync_path).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("sync.directory[0].path"), "{sync_path}: {e}");
            assert!(e.message.contains(names) && e.message.contains("run commands"), "{sync_path}: {e}");
        }
        read(&format!("{base}/templates")).unwrap();
        read(&format!("{base}/etc-app")).unwrap();
        // Through a link: refused once the file is read (the filesystem is then at hand).
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("etc"), dir.path().join("templates-link")).unwrap();
        let e = read(&format!("{base}/templates-link")).unwrap_err();
        assert!(e.message.contains("node.policy"), "{e}");
    }

    #[test]
    fn delete_limits_are_checked() {
        let e = parse("[node]\nid = \"a\"\n[[sync.directory]]\nname = \"d\"\npath = \"/srv/d\"\nmax_delete_percent = 0").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sync.directory[0].max_delete_percent"), "{e}");
        let e = parse("[node]\nid = \"a\"\n[[sync.directory]]\nname = \"d\"\npath = \"/srv/d\"\nmax_delete_files = 0").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sync.directory[0].max_delete_files"), "{e}");
        let c = parse("[node]\nid = \"a\"\n[[sync.directory]]\nname = \"d\"\npath = \"/srv/d\"").unwrap();
        assert_eq!((c.sync.directories[0].max_delete_percent, c.sync.directories[0].max_delete_files), (50, 100));
    }

    #[test]
    fn tls_paths_are_relative_to_the_file_and_https_peers_need_a_ca() {
        let c = parse(
            "[node]\nid = \"a\"\n[[peer]]\nid = \"b\"\nurl = \"https://127.0.0.1:1\"\n[security]\npeer_keys = [\"k\"]\n\
             [tls]\ncert = \"tls/a.crt\"\nkey = \"tls/a.key\"\nca = \"tls/ca.crt\"\npeer_names = true\n",
        )
        .unwrap();
        let tls = c.tls.as_ref().unwrap();
        assert!(tls.cert.is_absolute() && tls.key.is_absolute() && tls.ca.as_ref().unwrap().is_absolute());
        assert_eq!(tls.min_version, "1.2");
        assert_eq!(c.peer_authorities(), vec![("127.0.0.1:1".to_string(), "b".to_string())]);
    }

    #[test]
    fn missing_id_is_reported() {
        let e = parse("[node]\nrole = \"primary\"").unwrap_err();
        assert!(e.message.contains("id"), "{e}");
    }

    #[test]
    fn the_arbiter_section_is_checked_field_by_field() {
        let base = "[node]\nid = \"a\"\n[arbiter]\nkind = \"etcd\"\nprefix = \"/vigil/web\"\n";
        let c = parse(&format!("{base}endpoints = [\"http://127.0.0.1:2379\"]\nttl_ms = 2000\npassword_file = \"etcd.pw\"\nuser = \"vigil\"\n")).unwrap();
        let a = c.arbiter.as_ref().unwrap();
        assert_eq!((a.margin_ms(), a.fencing, a.leader_key().as_str()), (500, true, "/vigil/web/leader"));
        assert!(a.password_file.as_ref().unwrap().is_absolute(), "relative to the config file");
        let bad = |extra: &str, key: &str| {
            let e = parse(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
        };
        bad("endpoints = []", "arbiter.endpoints");
        bad("endpoints = [\"127.0.0.1:2379\"]", "arbiter.endpoints[0]");
        bad("endpoints = [\"https://127.0.0.1:2379\"]", "arbiter.endpoints[0]");
        bad("endpoints = [\"http://e:2379\"]\nttl_ms = 500", "arbiter.ttl_ms");
        bad("endpoints = [\"http://e:2379\"]\nttl_ms = 3000\nsafety_margin_ms = 3000", "arbiter.safety_margin_ms");
        bad("endpoints = [\"http://e:2379\"]\nttl_ms = 3000\nsafety_margin_ms = 2500", "arbiter.safety_margin_ms");
        bad("endpoints = [\"http://e:2379\"]\nuser = \"u\"", "arbiter.password");
        bad("endpoints = [\"http://e:2379\"]\ncert_file = \"c\"\nca_file = \"ca\"", "arbiter.key_file");
        let e = parse("[node]\nid = \"a\"\n[arbiter]\nkind = \"consul\"\nprefix = \"/p\"\nendpoints = [\"http://e:1\"]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("arbiter.kind"), "{e}");
        let e = parse("[node]\nid = \"a\"\n[arbiter]\nkind = \"etcd\"\nprefix = \"/\"\nendpoints = [\"http://e:1\"]").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("arbiter.prefix"), "{e}");
    }
}
