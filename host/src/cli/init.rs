//! `vigil init DEPLOYMENT --node ID=ADDR --node ID=ADDR [--out DIR]`: a starting configuration for
//! every node of a deployment.
//!
//! Writes one directory per node under `DIR` (default `./vigil-DEPLOYMENT`): a commented
//! `node.toml`, the deployment's policy file for that node's role (the one shipped in `policies/`,
//! carried in the binary, with the addresses filled in where the policy names them), one shared peer
//! key (pair deployments; the same random bytes in every node's directory) and a distinct admin token
//! per node, both mode 0600; and a `README.md` with the next steps, also printed.
//!
//! Plugins: the policies name their plugin (`plugin = "hot-standby"`), which the node looks up by
//! name (`policy::PluginDirs::standard`): `node.plugin_dirs` (from `--plugin-dir`), then
//! `$VIGIL_PLUGIN_DIR`, then `plugins/` beside the executable's directory (`target/plugins` in a
//! checkout), then `/usr/lib/vigil/plugins` (the Debian package). No plugin is copied: an upgrade of
//! the package upgrades the plugins of every policy. `init` says when a plugin is not found where
//! the node will look.
//!
//! Every node's directory is self-contained (relative paths are relative to `node.toml`): copy it to
//! `/etc/vigil/` on its server (`/etc/vigil-xds/`, data in `/var/lib/vigil-xds`, for an xds node,
//! which runs beside its XiVO's own vigil on the same host). Nothing is written before every argument has been checked.

use super::CliError;
use crate::config::NodeConfig;
use crate::model::Role;
use crate::policy::{PluginDirs, PolicyFile};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// What `vigil init` was asked for.
#[derive(Debug, Clone)]
pub struct InitArgs {
    pub deployment: String,
    pub nodes: Vec<String>,
    pub out: Option<PathBuf>,
    pub force: bool,
    pub data_dir: Option<PathBuf>,
    pub plugin_dirs: Vec<PathBuf>,
}

/// A deployment `init` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deployment {
    HotStandby,
    Xivo,
    XivoCc,
    Xds,
    Edge,
    MailGateway,
    Voice,
}

/// Every deployment, with its one-line description (for the refusal of an unknown one).
const DEPLOYMENTS: &[(&str, Deployment, &str)] = &[
    ("hot-standby", Deployment::HotStandby, "two servers behind a load balancer: primary, then secondary"),
    ("xivo", Deployment::Xivo, "XiVO telephony pair: main, then standby"),
    ("xivo-cc", Deployment::XivoCc, "the CC beside the main XiVO, then the CC beside the standby XiVO"),
    ("xds", Deployment::Xds, "the media-server (MDS) node beside the main XiVO, then beside the standby XiVO"),
    ("edge", Deployment::Edge, "one Edge relay; the two --node are the stacks it relays to: main, then standby"),
    ("mail-gateway", Deployment::MailGateway, "mail gateway, active-passive: primary, then secondary"),
    ("voice", Deployment::Voice, "voice (PBX) pair: primary, then secondary"),
];

/// The shipped policies, carried in the binary.
mod shipped {
    pub const HOT_STANDBY: &str = include_str!("../../../policies/hot-standby.toml");
    pub const XIVO_MAIN: &str = include_str!("../../../policies/xivo-main.toml");
    pub const XIVO_STANDBY: &str = include_str!("../../../policies/xivo-standby.toml");
    pub const CC_MAIN: &str = include_str!("../../../policies/cc-main.toml");
    pub const CC_STANDBY: &str = include_str!("../../../policies/cc-standby.toml");
    pub const XDS: &str = include_str!("../../../policies/xds.toml");
    pub const EDGE: &str = include_str!("../../../policies/edge.toml");
    pub const MAIL_PRIMARY: &str = include_str!("../../../policies/mail-primary.toml");
    pub const MAIL_SECONDARY: &str = include_str!("../../../policies/mail-secondary.toml");
    pub const VOICE_PRIMARY: &str = include_str!("../../../policies/voice-primary.toml");
    pub const VOICE_SECONDARY: &str = include_str!("../../../policies/voice-secondary.toml");
}

/// A `--node` address: what peers put in their URL, and what the node listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Addr {
    /// Host as it goes in a URL (`10.0.0.1`, `[fd00::1]`, `ha-a.example.com`).
    host: String,
    port: u16,
    /// The node's `listen`: every address of the server (of the address's family), or the loopback
    /// address given. Not the address itself: without `[tls]` admin requests are answered from
    /// loopback only, and the CLI on the server reaches a node that listens everywhere at 127.0.0.1.
    listen: SocketAddr,
}

impl Addr {
    fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn usage(message: impl std::fmt::Display) -> CliError {
    CliError::Config(anyhow::anyhow!("vigil init: {message}"))
}

/// Parse `ADDR` of `--node ID=ADDR`: `IP`, `IP:PORT`, `[IPv6]:PORT`, `HOST` or `HOST:PORT`.
fn parse_addr(text: &str, default_port: u16) -> Result<Addr, String> {
    if text.contains("://") || text.contains('/') {
        return Err("expected HOST or HOST:PORT (an address, not a URL)".into());
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err("port 0 is not a port a peer can reach".into());
        }
        return Ok(Addr { host: url_host(sa.ip()), port: sa.port(), listen: listen_for(sa.ip(), sa.port()) });
    }
    if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(Addr { host: url_host(ip), port: default_port, listen: listen_for(ip, default_port) });
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("bad port {port:?} (expected 1 to 65535)"))?;
            (host, port)
        }
        None => (text, default_port),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !valid {
        return Err(format!("{host:?} is neither an IP address nor a host name"));
    }
    Ok(Addr { host: host.to_string(), port, listen: SocketAddr::from(([0, 0, 0, 0], port)) })
}

fn listen_for(ip: IpAddr, port: u16) -> SocketAddr {
    match ip {
        ip if ip.is_loopback() => SocketAddr::new(ip, port),
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port),
    }
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A node id that is also a directory name.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.starts_with('.') && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The `--node` values, checked: exactly two, distinct ids, valid addresses.
fn parse_nodes(nodes: &[String], default_port: u16) -> Result<Vec<(String, Addr)>, CliError> {
    let mut out: Vec<(String, Addr)> = Vec::new();
    for text in nodes {
        let (id, addr) = text
            .split_once('=')
            .ok_or_else(|| usage(format!("--node {text:?}: expected ID=ADDRESS, e.g. --node a=10.0.0.1:7400")))?;
        if !valid_id(id) {
            return Err(usage(format!("--node {text:?}: bad id {id:?}: expected letters, digits, '-', '_' or '.' (not first), at most 64")));
        }
        if out.iter().any(|(seen, _)| seen == id) {
            return Err(usage(format!("--node {text:?}: node id {id:?} is given twice; every node needs its own id")));
        }
        let addr = parse_addr(addr, default_port).map_err(|e| usage(format!("--node {text:?}: {e}")))?;
        out.push((id.to_string(), addr));
    }
    if out.len() != 2 {
        return Err(usage(format!(
            "{} --node given; a deployment takes two nodes, the first then the second, e.g. --node a=10.0.0.1:7400 --node b=10.0.0.2:7400",
            out.len()
        )));
    }
    if out[0].1.host_port() == out[1].1.host_port() {
        return Err(usage(format!("--node {0} and --node {1}: both at {2}; each node needs its own address (or port)", out[0].0, out[1].0, out[0].1.host_port())));
    }
    Ok(out)
}

/// One node's files, before they are written.
#[derive(Debug)]
struct NodePlan {
    id: String,
    /// What the node is in the deployment ("primary (server #1)").
    title: String,
    policy_name: &'static str,
    policy_text: String,
    node_toml: String,
    /// Whether the node gets the shared peer key.
    peer_key: bool,
    /// Plugin name, for the lookup check.
    plugin: String,
}

/// The data that every node.toml shares.
struct Common<'a> {
    deployment: &'a str,
    /// Where the node's files go on its server.
    etc: &'a str,
    data_dir: String,
    plugin_dirs: &'a [PathBuf],
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

/// `text` with the line that starts with `prefix` replaced by `line` (the shipped policies are
/// carried in the binary; the tests run `init` for every deployment, so a renamed key is caught).
fn set_line(text: &str, prefix: &str, line: &str) -> String {
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if !found && l.starts_with(prefix) {
                found = true;
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "shipped policy has no line starting with {prefix:?}");
    out.join("\n") + "\n"
}

fn header(c: &Common, id: &str, title: &str, policy: &str, edits: &[String]) -> String {
    let mut s = format!(
        "# vigil node configuration: node {id:?}, the {title}\n# (deployment: {deployment}).\n\
         # Written by `vigil init`. Relative paths are relative to this file: keep this directory's files\n\
         # together (on the server, all of them in {etc}/, this file as {etc}/node.toml).\n\
         # Every key is described in docs/operator-guide.md and at the top of host/src/config.rs.\n#\n\
         # Before the first start, edit:\n",
        deployment = c.deployment,
        etc = c.etc,
    );
    for e in edits {
        let _ = writeln!(s, "#   - {e}");
    }
    let _ = write!(
        s,
        "#\n# Then check and start:\n#   vigil policy check {policy}\n#   vigil run --config node.toml        (or: systemctl start vigil)\n\n"
    );
    s
}

fn node_section(c: &Common, id: &str, role: Role, listen: SocketAddr, policy: &str, plugin: &str, role_note: &str) -> String {
    let dirs: Vec<String> = c.plugin_dirs.iter().map(|d| toml_str(&d.display().to_string())).collect();
    format!(
        "[node]\nid = {id}\n# {role_note}\nrole = \"{role}\"\n\
         # Peers, load balancers (/health, /active, /app, /role) and admin commands reach this node here.\n\
         # To listen on one address only, put it here; the CLI on this server (`vigil switch ... --config\n\
         # node.toml`) then needs [tls] or security.admin_insecure_remote: without TLS, admin requests are\n\
         # answered from loopback only.\nlisten = \"{listen}\"\n\
         # The event log, the replicated store and the compiled-plugin cache: one per node, never shared.\n\
         data_dir = {data_dir}\n\
         # The policy: which plugin decides, its parameters, the services and hooks it may run.\n\
         policy = {policy}\n\
         # The policy names its plugin ({plugin:?}): it is looked up as {plugin}.wasm in these directories\n\
         # first, then $VIGIL_PLUGIN_DIR, then plugins/ beside the vigil executable's directory\n\
         # (target/plugins in a source checkout), then /usr/lib/vigil/plugins (the Debian package).\n\
         plugin_dirs = [{dirs}]\n\n",
        id = toml_str(id),
        data_dir = toml_str(&c.data_dir),
        policy = toml_str(policy),
        dirs = dirs.join(", "),
    )
}

const HEARTBEAT: &str = "[heartbeat]\n\
# A check every interval_ms; a check fails when the other side does not answer within timeout_ms.\n\
# `failures` failed checks in a row make the switch (about failures x interval_ms after a crash);\n\
# `successes` good checks count it back. Lower values switch faster and risk switching on a short\n\
# network hiccup. Use the same values on every node.\n\
interval_ms = 1000\ntimeout_ms = 500\nfailures = 3\nsuccesses = 3\n\
# After a start, no ACTIVE before the peer answered or this passed (a peer that starts a little later).\n\
startup_grace_ms = 5000\n\n";

fn security(peer_key: bool) -> String {
    let mut s = String::from("[security]\n");
    if peer_key {
        s.push_str(
            "# The shared key that signs heartbeats and peer commands: the same file on every node (mode 0600).\n\
             # Rotation: add the new key second on every node, then put it first, then drop the old one.\n\
             peer_keys = [\"peer.key\"]\n",
        );
    }
    s.push_str(
        "# This node's admin token (vigil switch, sync, config, policy reload; the console's controls).\n\
         # Without [tls], admin requests are answered from loopback only: run `vigil ... --config node.toml`\n\
         # on the server itself. See docs/operator-guide.md for [tls].\n\
         admin_token_file = \"admin.token\"\n",
    );
    s
}

/// The peer table of a pair node.
fn peer_table(peer_id: &str, peer: &Addr, link_note: &str) -> String {
    format!(
        "[[peer]]\nid = {id}\n{link_note}url = \"{url}\"\n\
         # A second link (a crossover cable) keeps one lost link from looking like a dead peer: replace\n\
         # `url` by\n\
         # paths = [{{ name = \"lan\", url = \"{url}\" }}, {{ name = \"crossover\", url = \"http://192.168.99.2:{port}\" }}]\n\n",
        id = toml_str(peer_id),
        url = peer.url(),
        port = peer.port,
    )
}

const LAN: &str = "# Is this node still on its LAN? An active node that loses the LAN steps down; without [lan] a\n\
# node cut off from its LAN cannot tell and keeps its role. Recommended: the default gateway.\n\
# [lan]\n# kind = \"ping\"\n# address = \"10.0.0.254\"\n\n";

fn plan(deployment: Deployment, nodes: &[(String, Addr)], c: &Common) -> Vec<NodePlan> {
    let (a, b) = (&nodes[0], &nodes[1]);
    match deployment {
        Deployment::HotStandby => [(a, b, Role::Primary, "primary (server #1)"), (b, a, Role::Secondary, "secondary (server #2)")]
            .into_iter()
            .map(|(me, peer, role, title)| {
                let policy = "hot-standby.toml";
                let edits = [
                    format!("{policy}: the [services.*] start/stop/status commands (run by `sh -c` as vigil's user) and `start_order`"),
                    "[lan] below: the gateway this node must reach to keep the role".to_string(),
                    "the load balancer: poll /active on both nodes (http://ADDRESS/active), failover count and interval as in [heartbeat]".to_string(),
                    format!("{policy}: the options (automatic failback, VIP destination test, switch on application error: see /usr/share/vigil/policies or policies/ for the variants)"),
                ];
                let mut t = header(c, &me.0, title, policy, &edits);
                t += &node_section(c, &me.0, role, me.1.listen, policy, "hot-standby", "primary: the server that runs the services when both are up; secondary: the backup.");
                t += HEARTBEAT;
                t += &peer_table(&peer.0, &peer.1, "# The other server's vigil: the signed heartbeat and peer commands.\n");
                t += LAN;
                t += "# With test_vip_destination = true in the policy: a vigil URL on the load balancer's VIP.\n# [vip]\n# url = \"http://10.0.0.100:7400\"\n# test = true\n\n";
                t += &security(true);
                NodePlan {
                    id: me.0.clone(),
                    title: title.into(),
                    policy_name: policy,
                    policy_text: shipped::HOT_STANDBY.into(),
                    node_toml: t,
                    peer_key: true,
                    plugin: "hot-standby".into(),
                }
            })
            .collect(),
        Deployment::Xivo => [
            (a, b, Role::Primary, "main XiVO", "xivo-main.toml", shipped::XIVO_MAIN),
            (b, a, Role::Secondary, "standby XiVO", "xivo-standby.toml", shipped::XIVO_STANDBY),
        ]
        .into_iter()
        .map(|(me, peer, role, title, policy, text)| {
            let mut edits = vec![format!("{policy}: the [services.*] commands of the telephony services, in `services` order")];
            let link = if role == Role::Primary {
                "# The standby: shown in /status, reachable by operator commands (the main runs the telephony\n# whatever the standby does).\n"
            } else {
                edits.push(format!("{policy}: [hooks.config-regen], the command that rebuilds the configuration from the replicated database"));
                "# The main over the heartbeat link. Instead of the vigil heartbeat, a ping-like probe of the\n# main host (several per check, a check fails only when all are lost):\n# paths = [{ name = \"ha-link\", kind = \"ping\", address = \"10.0.0.1\", count = 3 }]\n"
            };
            let mut t = header(c, &me.0, title, policy, &edits);
            t += &node_section(c, &me.0, role, me.1.listen, policy, "xivo", "primary: the main XiVO; secondary: the standby XiVO.");
            t += HEARTBEAT;
            t += &peer_table(&peer.0, &peer.1, link);
            t += &security(true);
            NodePlan { id: me.0.clone(), title: title.into(), policy_name: policy, policy_text: text.into(), node_toml: t, peer_key: true, plugin: "xivo".into() }
        })
        .collect(),
        Deployment::MailGateway | Deployment::Voice => {
            let (plugin, files) = if deployment == Deployment::MailGateway {
                ("mail-gateway", [("mail-primary.toml", shipped::MAIL_PRIMARY), ("mail-secondary.toml", shipped::MAIL_SECONDARY)])
            } else {
                ("voice", [("voice-primary.toml", shipped::VOICE_PRIMARY), ("voice-secondary.toml", shipped::VOICE_SECONDARY)])
            };
            [(a, b, Role::Primary, "primary", files[0]), (b, a, Role::Secondary, "secondary", files[1])]
                .into_iter()
                .map(|(me, peer, role, title, (policy, text))| {
                    let mut edits = vec![
                        format!("{policy}: the [services.*] commands and `start_order`"),
                        format!("{policy}: the [[vip]] interfaces and addresses this node claims when it takes over (eth0 ...)"),
                    ];
                    if text.contains("[monitors.") {
                        edits.push(format!("{policy}: the [monitors.*] local checks (ports, spool disk)"));
                    }
                    if text.contains("[hooks.") {
                        edits.push(format!("{policy}: the [hooks.*] scripts (e.g. pushing the mail queue to the peer)"));
                    }
                    edits.push("[[peer]] below: a second heartbeat link, if the servers have one".into());
                    let mut t = header(c, &me.0, title, policy, &edits);
                    t += &node_section(c, &me.0, role, me.1.listen, policy, plugin, "primary (\"master\") or secondary (\"slave\"): the configured role.");
                    t += HEARTBEAT;
                    t += &peer_table(&peer.0, &peer.1, "# The peer's vigil: the signed heartbeat, peer commands and configuration sync.\n");
                    if text.contains("remote_services_as_heartbeat = true") {
                        // Inside the [[peer]] table: insert before its blank line.
                        let port = if plugin == "voice" { 5060 } else { 25 };
                        let svc = if plugin == "voice" { "sip" } else { "smtp" };
                        t = t.trim_end().to_string()
                            + &format!(
                                "\n# remote_services_as_heartbeat = true in {policy}: the peer's services count as heartbeat too.\nservices = [{{ name = \"{svc}\", kind = \"tcp\", address = \"{}:{port}\" }}]\n\n",
                                peer.1.host
                            );
                    }
                    t += "# Replicated directories (mail data, queues) and their interval: see [[sync.directory]] in\n# docs/operator-guide.md.\n\n";
                    t += &security(true);
                    NodePlan { id: me.0.clone(), title: title.into(), policy_name: policy, policy_text: text.into(), node_toml: t, peer_key: true, plugin: plugin.into() }
                })
                .collect()
        }
        Deployment::XivoCc => [
            (a, b, Role::Primary, "CC beside the main XiVO", "cc-main.toml", shipped::CC_MAIN, "xivo-main"),
            (b, a, Role::Secondary, "CC beside the standby XiVO", "cc-standby.toml", shipped::CC_STANDBY, "xivo-standby"),
        ]
        .into_iter()
        .map(|(me, other, role, title, policy, text, xivo)| {
            let edits = [
                format!("[[watch]] below: the URL of the {xivo} vigil (the placeholder host does not resolve)"),
                format!("{policy}: own_address / other_cc_address, the CC addresses as agents type them (set from --node: https://{} and https://{})", me.1.host, other.1.host),
                format!("{policy}: the [services.*] commands of the CC services"),
            ];
            let policy_text = set_line(text, "own_address =", &format!("own_address = \"https://{}\"", me.1.host));
            let policy_text = set_line(&policy_text, "other_cc_address =", &format!("other_cc_address = \"https://{}\"", other.1.host));
            let mut t = header(c, &me.0, title, policy, &edits);
            t += &node_section(c, &me.0, role, me.1.listen, policy, "xivo-cc", "A CC node has no pair peer: it mirrors its XiVO. Its plugin ignores the role; /status shows it.");
            t += HEARTBEAT;
            t += &format!(
                "# This CC's XiVO: its vigil's /role is read every interval. EDIT the URL.\n[[watch]]\nid = \"{xivo}\"\nurl = \"http://{xivo}.invalid:7400\"\n\n"
            );
            t += &security(false);
            NodePlan { id: me.0.clone(), title: title.into(), policy_name: policy, policy_text, node_toml: t, peer_key: false, plugin: "xivo-cc".into() }
        })
        .collect(),
        Deployment::Xds => [(a, Role::Primary, "xds node beside the main XiVO"), (b, Role::Secondary, "xds node beside the standby XiVO")]
            .into_iter()
            .map(|(me, role, title)| {
                let policy = "xds.toml";
                let edits = [
                    format!("{policy}: `mds`, the media servers, and the [hooks.*] commands that register this XiVO to one of them"),
                    "[[watch]] below: the URL of this XiVO's vigil (default: on this host, port 7400)".to_string(),
                ];
                let mut t = header(c, &me.0, title, policy, &edits);
                t += &node_section(c, &me.0, role, me.1.listen, policy, "xds", "An xds node has no pair peer: it follows its XiVO. Its plugin ignores the role; /status shows it.");
                t += HEARTBEAT;
                t += "# This node's XiVO: its vigil's /role is read every interval (usually the same host, port 7400,\n# which is why this node listens on another port).\n[[watch]]\nid = \"xivo\"\nurl = \"http://127.0.0.1:7400\"\n\n";
                t += &security(false);
                NodePlan { id: me.0.clone(), title: title.into(), policy_name: policy, policy_text: shipped::XDS.into(), node_toml: t, peer_key: false, plugin: "xds".into() }
            })
            .collect(),
        Deployment::Edge => {
            let policy = "edge.toml";
            let mut text = set_line(shipped::EDGE, "main =", &format!("main = {}", toml_str(&a.0)));
            text = set_line(&text, "standby =", &format!("standby = {}", toml_str(&b.0)));
            text = set_line(&text, "targets =", &format!("targets = {{ {} = \"{}\", {} = \"{}\" }}", toml_str(&a.0), a.1.host_port(), toml_str(&b.0), b.1.host_port()));
            text = set_line(&text, "initial =", &format!("initial = {}", toml_str(&a.0)));
            let edits = [
                format!("{policy}: [relay] listen, where clients connect (port 443 needs CAP_NET_BIND_SERVICE)"),
                format!("[[watch]] below: how each stack is checked (a TCP connect to {} and {}; or their vigil /role)", a.1.host_port(), b.1.host_port()),
                "for an existing nginx instead of the built-in relay: policies/edge-nginx.toml (docs/relay.md)".into(),
            ];
            let title = format!("Edge relay in front of {} (main) and {} (standby)", a.0, b.0);
            let mut t = header(c, "edge", &title, policy, &edits);
            t += &node_section(c, "edge", Role::Primary, SocketAddr::from(([0, 0, 0, 0], 7400)), policy, "edge", "The Edge has no pair peer. Its plugin ignores the role; /status shows it.");
            t += HEARTBEAT;
            for (id, addr) in [a, b] {
                t += &format!("[[watch]]\nid = {}\nkind = \"tcp\"\naddress = \"{}\"\n\n", toml_str(id), addr.host_port());
            }
            t += &security(false);
            vec![NodePlan { id: "edge".into(), title, policy_name: policy, policy_text: text, node_toml: t, peer_key: false, plugin: "edge".into() }]
        }
    }
}

/// 32 random bytes from the OS, hex-encoded (64 characters).
fn random_secret() -> Result<String, CliError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| CliError::Failure(anyhow::anyhow!("no random source: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Write `text` to `path`, readable by the owner only (mode 0600 even when the file existed).
fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

/// Run `vigil init`.
pub fn run(args: &InitArgs) -> Result<(), CliError> {
    let Some(&(name, deployment, _)) = DEPLOYMENTS.iter().find(|(n, _, _)| *n == args.deployment) else {
        let list: Vec<String> = DEPLOYMENTS.iter().map(|(n, _, what)| format!("  {n:<13} {what}")).collect();
        return Err(usage(format!("unknown deployment {:?}; known deployments:\n{}", args.deployment, list.join("\n"))));
    };
    let default_port = match deployment {
        Deployment::Xds => 7401,
        Deployment::Edge => 443,
        _ => 7400,
    };
    let nodes = parse_nodes(&args.nodes, default_port)?;
    if deployment == Deployment::Edge && nodes.iter().any(|(id, _)| id == "edge") {
        return Err(usage("edge: the two --node are the stacks the Edge relays to; \"edge\" is the Edge node's own id, name them e.g. main and standby"));
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("vigil-{name}")));
    if let Ok(mut entries) = std::fs::read_dir(&out) {
        if entries.next().is_some() && !args.force {
            return Err(usage(format!("{} exists and is not empty; choose another --out, or --force to overwrite the files init writes (new keys and tokens)", out.display())));
        }
    } else if out.exists() {
        return Err(usage(format!("{} exists and is not a directory", out.display())));
    }
    // An xds node runs beside its XiVO's vigil, on the same host: its own files, its own data.
    let (etc, default_data) = match deployment {
        Deployment::Xds => ("/etc/vigil-xds", "/var/lib/vigil-xds"),
        _ => ("/etc/vigil", "/var/lib/vigil"),
    };
    let data_dir = args.data_dir.as_ref().map_or_else(|| default_data.to_string(), |d| d.display().to_string());
    let common = Common { deployment: name, etc, data_dir, plugin_dirs: &args.plugin_dirs };
    let plans = plan(deployment, &nodes, &common);

    let io = |path: &Path, e: std::io::Error| CliError::Failure(anyhow::anyhow!("{}: {e}", path.display()));
    let peer_key = random_secret()?;
    for p in &plans {
        let dir = out.join(&p.id);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        for (file, text) in [("node.toml", p.node_toml.as_str()), (p.policy_name, p.policy_text.as_str())] {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        }
        if p.peer_key {
            let path = dir.join("peer.key");
            write_secret(&path, &peer_key).map_err(|e| io(&path, e))?;
        }
        let path = dir.join("admin.token");
        write_secret(&path, &random_secret()?).map_err(|e| io(&path, e))?;
    }

    // What was written must read back: a node configuration that parses, a policy file that parses.
    let mut warnings = Vec::new();
    for p in &plans {
        let config_path = out.join(&p.id).join("node.toml");
        let config = NodeConfig::read(&config_path).map_err(|e| CliError::Failure(anyhow::anyhow!("init wrote a configuration vigil refuses (a bug): {e}")))?;
        PolicyFile::read(&config.node.policy).map_err(|e| CliError::Failure(anyhow::anyhow!("init wrote a policy vigil refuses (a bug): {e}")))?;
        let dirs = PluginDirs::standard(config.node.plugin_dirs.clone());
        if let Err(e) = dirs.resolve(&config.node.policy, &p.plugin) {
            warnings.push(format!("here: {e}; install the vigil package on the servers, or give --plugin-dir"));
        }
    }
    warnings.dedup();

    let readme = next_steps(name, etc, &out, &plans, &nodes, deployment);
    let path = out.join("README.md");
    std::fs::write(&path, &readme).map_err(|e| io(&path, e))?;
    print!("{readme}");
    for w in &warnings {
        eprintln!("vigil init: warning: {w}");
    }
    Ok(())
}

fn next_steps(name: &str, etc: &str, out: &Path, plans: &[NodePlan], nodes: &[(String, Addr)], deployment: Deployment) -> String {
    let mut s = format!("# vigil init {name}\n\nWritten to {}:\n\n", out.display());
    for p in plans {
        let mut files = vec!["node.toml", p.policy_name];
        if p.peer_key {
            files.push("peer.key");
        }
        files.push("admin.token");
        let _ = writeln!(s, "- `{}/`: the {} ({})", p.id, p.title, files.join(", "));
    }
    let _ = write!(s, "\nNext steps:\n\n");
    let _ = writeln!(s, "1. Edit each node's `node.toml` and policy: the list at the top of each `node.toml` says what\n   (service commands, VIP interfaces and addresses, ...).");
    match deployment {
        Deployment::Edge => {
            let _ = writeln!(s, "2. Copy `edge/` to the Edge server as `{etc}/`, keeping `admin.token` mode 0600.");
        }
        _ => {
            let servers: Vec<String> = nodes.iter().map(|(id, a)| format!("`{id}/` to {}", a.host)).collect();
            let _ = writeln!(s, "2. Copy each directory to its server as `{etc}/` ({}), keeping the\n   key and token files mode 0600.", servers.join(", "));
        }
    }
    if plans.iter().any(|p| p.peer_key) {
        let _ = writeln!(s, "   `peer.key` is the same in every directory: the nodes authenticate each other with it.");
    }
    let checks: Vec<String> = plans.iter().map(|p| format!("`vigil policy check {etc}/{}` on {}", p.policy_name, p.id)).collect();
    let _ = writeln!(s, "3. Check each policy and its plugin (from /usr/lib/vigil/plugins):\n   {}.", checks.join(", "));
    if deployment == Deployment::Xds {
        let _ = writeln!(s, "4. Start a second vigil beside the XiVO's: `vigil run --config {etc}/node.toml` (a copy of the\n   vigil systemd unit with this --config, e.g. vigil-xds.service).");
    } else {
        let _ = writeln!(s, "4. Start: `systemctl enable --now vigil` (or `vigil run --config {etc}/node.toml`).");
    }
    let _ = writeln!(s, "5. Watch: `vigil status --config {etc}/node.toml`, or the status page at http://ADDRESS/.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_default_ports() {
        let a = parse_addr("10.0.0.1", 7400).unwrap();
        assert_eq!((a.url(), a.listen.to_string()), ("http://10.0.0.1:7400".to_string(), "0.0.0.0:7400".to_string()));
        let a = parse_addr("[fd00::1]:7500", 7400).unwrap();
        assert_eq!((a.url(), a.listen.to_string()), ("http://[fd00::1]:7500".to_string(), "[::]:7500".to_string()));
        let a = parse_addr("ha-a.example.com:7402", 7400).unwrap();
        assert_eq!((a.url(), a.listen.to_string()), ("http://ha-a.example.com:7402".to_string(), "0.0.0.0:7402".to_string()));
        assert_eq!(parse_addr("127.0.0.1:7411", 7400).unwrap().listen.to_string(), "127.0.0.1:7411");
        for bad in ["http://10.0.0.1:7400", "10.0.0.1:0", "host:port", "bad_host", "", "a..b"] {
            assert!(parse_addr(bad, 7400).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_lists_are_checked() {
        let nodes = |v: &[&str]| parse_nodes(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 7400).map_err(|e| e.to_string());
        assert!(nodes(&["a=10.0.0.1", "b=10.0.0.2"]).is_ok());
        for (args, wanted) in [
            (&["a=10.0.0.1"][..], "1 --node given"),
            (&["a=10.0.0.1", "a=10.0.0.2"][..], "given twice"),
            (&["a10.0.0.1", "b=10.0.0.2"][..], "expected ID=ADDRESS"),
            (&["../a=10.0.0.1", "b=10.0.0.2"][..], "bad id"),
            (&["a=10.0.0.1", "b=10.0.0.1:7400"][..], "its own address"),
            (&["a=1", "b=2", "c=3"][..], "3 --node given"),
        ] {
            let e = nodes(args).unwrap_err();
            assert!(e.contains(wanted), "{args:?}: {e}");
        }
    }

    #[test]
    fn every_deployment_plans_configurations_that_parse() {
        let nodes = parse_nodes(&["main=10.0.0.1".into(), "standby=10.0.0.2".into()], 7400).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (name, deployment, _) in DEPLOYMENTS {
            let common = Common { deployment: name, etc: "/etc/vigil", data_dir: "/var/lib/vigil".into(), plugin_dirs: &[] };
            for p in plan(*deployment, &nodes, &common) {
                let path = dir.path().join("node.toml");
                NodeConfig::parse(&path, &p.node_toml).unwrap_or_else(|e| panic!("{name}/{}: {e}\n{}", p.id, p.node_toml));
                let policy = dir.path().join(p.policy_name);
                std::fs::write(&policy, &p.policy_text).unwrap();
                PolicyFile::read(&policy).unwrap_or_else(|e| panic!("{name}/{}: {e}", p.id));
            }
        }
    }
}
