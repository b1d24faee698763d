//! `vigil init`: what it writes for every deployment (configurations vigil reads, policies that pass
//! `vigil policy check` with the plugins found where the node looks, one shared peer key, a token
//! per node, both private), what it refuses, and a hot-standby pair run from its output, changed
//! only where a user must change it (the service commands), that fails over when the active node is
//! killed.
//!
//! Needs `cargo xtask plugins`; runs the real `target/debug/vigil`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vigil::config::NodeConfig;
use vigil::http_client::HttpClient;
use vigil::model::Mode;
use vigil_tests::{describe, plugins_dir, vigil, vigil_bin};

const DEPLOYMENTS: &[&str] = &["hot-standby", "xivo", "xivo-cc", "xds", "edge", "mail-gateway", "voice"];

fn init(args: &[&str], out: &Path) -> std::process::Output {
    let mut all: Vec<&std::ffi::OsStr> = vec!["init".as_ref()];
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    all.extend(["--out".as_ref(), out.as_os_str()]);
    vigil(&all)
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The node directories `init` wrote under `out`.
fn node_dirs(out: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}

#[test]
fn every_deployment_gets_configurations_that_load_and_policies_that_check() {
    plugins_dir();
    let tmp = tempfile::tempdir().unwrap();
    for deployment in DEPLOYMENTS {
        let out = tmp.path().join(deployment);
        let o = init(&[deployment, "--node", "main=10.0.0.1", "--node", "standby=10.0.0.2"], &out);
        assert!(o.status.success(), "{deployment}: {}", describe(&o));
        let printed = String::from_utf8_lossy(&o.stdout);
        assert!(printed.contains("Next steps") && printed.contains("vigil policy check"), "{deployment}: {printed}");
        assert_eq!(read(&out.join("README.md")), printed, "{deployment}: the README is what was printed");
        let dirs = node_dirs(&out);
        let expected: Vec<PathBuf> =
            if *deployment == "edge" { vec![out.join("edge")] } else { vec![out.join("main"), out.join("standby")] };
        assert_eq!(dirs, expected, "{deployment}");
        let mut tokens = Vec::new();
        let mut keys = Vec::new();
        for dir in &dirs {
            let config = NodeConfig::read(&dir.join("node.toml")).unwrap_or_else(|e| panic!("{deployment}: {e}"));
            assert!(config.node.policy.starts_with(dir), "{deployment}: the policy sits beside node.toml");
            assert!(read(&dir.join("node.toml")).contains("# Before the first start, edit:"), "{deployment}");
            // No --plugin-dir: the plugin is found where the installed or built binary looks.
            let o = vigil(&["policy".as_ref(), "check".as_ref(), config.node.policy.as_os_str()]);
            assert!(o.status.success(), "{deployment}: {}", describe(&o));
            let token = dir.join("admin.token");
            assert_eq!(mode_of(&token), 0o600, "{}", token.display());
            assert_eq!(config.read_admin_token().unwrap().map(|t| t.len()), Some(64), "{deployment}");
            tokens.push(read(&token));
            if config.peers.is_empty() {
                assert!(!dir.join("peer.key").exists(), "{deployment}: no peers, no peer key");
            } else {
                assert_eq!(mode_of(&dir.join("peer.key")), 0o600, "{deployment}");
                keys.push(config.read_peer_keys().unwrap());
            }
        }
        tokens.dedup();
        assert_eq!(tokens.len(), dirs.len(), "{deployment}: every node has its own admin token");
        if !keys.is_empty() {
            assert_eq!(keys.len(), 2, "{deployment}: both nodes of a pair are peers");
            assert_eq!(keys[0], keys[1], "{deployment}: one shared peer key");
            assert_eq!(keys[0][0].len(), 64);
        }
    }
    // Two runs draw different secrets.
    let again = tmp.path().join("again");
    assert!(init(&["hot-standby", "--node", "main=10.0.0.1", "--node", "standby=10.0.0.2"], &again).status.success());
    assert_ne!(read(&again.join("main/peer.key")), read(&tmp.path().join("hot-standby/main/peer.key")));
}

#[test]
fn addresses_and_names_go_where_the_deployment_needs_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cc");
    assert!(init(&["xivo-cc", "--node", "cc1=cc-main.example.com:7400", "--node", "cc2=10.0.0.12"], &out).status.success());
    let cc1 = read(&out.join("cc1/cc-main.toml"));
    assert!(cc1.contains("own_address = \"https://cc-main.example.com\"") && cc1.contains("other_cc_address = \"https://10.0.0.12\""), "{cc1}");
    let config = NodeConfig::read(&out.join("cc1/node.toml")).unwrap();
    assert_eq!(config.node.listen.to_string(), "0.0.0.0:7400", "a host name listens on every address");
    assert_eq!(config.watched[0].id, "xivo-main");

    // An xds node shares its XiVO's host: files and data of its own.
    let out = tmp.path().join("xds");
    assert!(init(&["xds", "--node", "m=10.0.0.1", "--node", "s=10.0.0.2"], &out).status.success());
    let config = NodeConfig::read(&out.join("m/node.toml")).unwrap();
    assert_eq!((config.node.data_dir.to_str(), config.node.listen.port()), (Some("/var/lib/vigil-xds"), 7401));
    assert!(read(&out.join("README.md")).contains("/etc/vigil-xds/xds.toml"));

    let out = tmp.path().join("edge");
    assert!(init(&["edge", "--node", "blue=10.0.0.1", "--node", "green.2=10.0.0.2:8443"], &out).status.success());
    let edge = read(&out.join("edge/edge.toml"));
    for line in ["main = \"blue\"", "standby = \"green.2\"", "targets = { \"blue\" = \"10.0.0.1:443\", \"green.2\" = \"10.0.0.2:8443\" }", "initial = \"blue\""] {
        assert!(edge.lines().any(|l| l == line), "{line}\n{edge}");
    }
    let config = NodeConfig::read(&out.join("edge/node.toml")).unwrap();
    assert_eq!(config.watched.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["blue", "green.2"]);
    let o = vigil(&["policy".as_ref(), "check".as_ref(), config.node.policy.as_os_str()]);
    assert!(o.status.success(), "{}", describe(&o));

    let out = tmp.path().join("pair");
    let o = init(&["hot-standby", "--node", "a=[fd00::1]", "--node", "b=10.0.0.2:7500", "--data-dir", "state", "--plugin-dir", "/opt/plugins"], &out);
    assert!(o.status.success(), "{}", describe(&o));
    let a = NodeConfig::read(&out.join("a/node.toml")).unwrap();
    assert_eq!(a.peers[0].url.as_deref(), Some("http://10.0.0.2:7500"));
    assert_eq!(a.node.data_dir, out.join("a/state"));
    assert_eq!(a.node.plugin_dirs, [PathBuf::from("/opt/plugins")]);
    let b = NodeConfig::read(&out.join("b/node.toml")).unwrap();
    assert_eq!(b.peers[0].url.as_deref(), Some("http://[fd00::1]:7400"));
    assert_eq!((a.node.role.to_string(), b.node.role.to_string()), ("primary".to_string(), "secondary".to_string()));
}

#[test]
fn bad_requests_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    for (args, wanted) in [
        (&["keepalived", "--node", "a=10.0.0.1", "--node", "b=10.0.0.2"][..], "unknown deployment \"keepalived\""),
        (&["hot-standby", "--node", "a=10.0.0.1"][..], "1 --node given"),
        (&["hot-standby"][..], "0 --node given"),
        (&["hot-standby", "--node", "a=10.0.0.1", "--node", "b=10.0.0.2", "--node", "c=10.0.0.3"][..], "3 --node given"),
        (&["hot-standby", "--node", "a=10.0.0.1", "--node", "a=10.0.0.2"][..], "node id \"a\" is given twice"),
        (&["hot-standby", "--node", "a:10.0.0.1", "--node", "b=10.0.0.2"][..], "expected ID=ADDRESS"),
        (&["hot-standby", "--node", "a=http://10.0.0.1:7400", "--node", "b=10.0.0.2"][..], "not a URL"),
        (&["hot-standby", "--node", "a=10.0.0.1:99999", "--node", "b=10.0.0.2"][..], "bad port"),
        (&["hot-standby", "--node", "a b=10.0.0.1", "--node", "b=10.0.0.2"][..], "bad id"),
        (&["edge", "--node", "edge=10.0.0.1", "--node", "b=10.0.0.2"][..], "the Edge node's own id"),
    ] {
        let o = init(args, &out);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", describe(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(wanted), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: nothing written");
    }
    let o = init(&["nope", "--node", "a=10.0.0.1", "--node", "b=10.0.0.2"], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    for name in DEPLOYMENTS {
        assert!(err.contains(name), "the known deployments are listed: {err}");
    }

    // An existing non-empty directory is left alone unless --force.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let args = ["hot-standby", "--node", "a=10.0.0.1", "--node", "b=10.0.0.2"];
    let o = init(&args, &out);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not empty"), "{}", describe(&o));
    assert!(!out.join("a").exists());
    let mut forced = args.to_vec();
    forced.push("--force");
    let o = init(&forced, &out);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(read(&out.join("notes.txt")), "mine", "--force overwrites only what init writes");
    assert!(out.join("a/node.toml").is_file() && out.join("b/peer.key").is_file());
}

/// A free loopback port below the kernel's ephemeral range (see `cluster::free_port`).
fn free_port(not: u16) -> u16 {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64 ^ u64::from(std::process::id());
    (0..500u64)
        .map(|i| 20_000 + ((seed.wrapping_mul(6364136223846793005).wrapping_add(i * 7919)) % 12_000) as u16)
        .find(|p| *p != not && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

/// A running `vigil run`, killed when dropped.
struct Node {
    id: &'static str,
    url: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(out: &Path, id: &'static str, port: u16) -> Node {
        let dir = out.join(id);
        let log = std::fs::File::create(dir.join("vigil.log")).unwrap();
        let child = Command::new(vigil_bin())
            .args(["run", "--config"])
            .arg(dir.join("node.toml"))
            .env_remove("VIGIL_PLUGIN_DIR")
            .env("VIGIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vigil run");
        Node { id, url: format!("http://127.0.0.1:{port}"), dir, child: Some(child) }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn runs_services(&self) -> bool {
        ["cti-framework", "cti-server"].iter().all(|s| self.dir.join(format!("{s}.running")).exists())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn modes(http: &HttpClient, nodes: &[Node]) -> Vec<Option<Mode>> {
    let mut modes = Vec::new();
    for node in nodes {
        let mode = match http.get(&format!("{}/role", node.url), Duration::from_millis(500)).await {
            Ok(a) if a.status == 200 => Mode::from_role_word(&String::from_utf8_lossy(&a.body)),
            _ => None,
        };
        modes.push(mode);
    }
    modes
}

fn logs(nodes: &[Node]) -> String {
    nodes.iter().map(|n| format!("--- {}\n{}", n.id, std::fs::read_to_string(n.dir.join("vigil.log")).unwrap_or_default())).collect()
}

async fn wait_for(http: &HttpClient, nodes: &[Node], limit: Duration, done: impl Fn(&[Option<Mode>]) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let m = modes(http, nodes).await;
        if done(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "not reached in {limit:?}: modes {m:?}\n{}", logs(nodes));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_written_by_vigil_init_fails_over() {
    plugins_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pair");
    let port_a = free_port(0);
    let port_b = free_port(port_a);
    let (node_a, node_b) = (format!("a=127.0.0.1:{port_a}"), format!("b=127.0.0.1:{port_b}"));
    // --data-dir: two nodes on one machine need two data directories (relative: beside node.toml).
    let o = init(&["hot-standby", "--node", &node_a, "--node", &node_b, "--data-dir", "data"], &out);
    assert!(o.status.success(), "{}", describe(&o));

    // The edit every user makes: the service commands (here harmless marker files instead of
    // systemctl). Nothing else in the generated files changes.
    for id in ["a", "b"] {
        let path = out.join(id).join("hot-standby.toml");
        let mut text = read(&path);
        for service in ["cti-framework", "cti-server"] {
            let marker = out.join(id).join(format!("{service}.running")).display().to_string();
            for (from, to) in [
                (format!("\"systemctl start {service}\""), format!("\"touch '{marker}'\"")),
                (format!("\"systemctl stop {service}\""), format!("\"rm -f '{marker}'\"")),
                (format!("\"systemctl is-active --quiet {service}\""), format!("\"test -f '{marker}'\"")),
            ] {
                assert!(text.contains(&from), "{from} in the generated policy");
                text = text.replace(&from, &to);
            }
        }
        assert!(!text.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("systemctl")), "{text}");
        std::fs::write(&path, text).unwrap();
        let o = vigil(&["policy".as_ref(), "check".as_ref(), path.as_os_str()]);
        assert!(o.status.success(), "{}", describe(&o));
    }

    let http = HttpClient::new();
    let mut nodes = vec![Node::start(&out, "a", port_a), Node::start(&out, "b", port_b)];
    let one_active = |m: &[Option<Mode>]| m.iter().all(Option::is_some) && m.iter().filter(|m| **m == Some(Mode::Active)).count() == 1;
    wait_for(&http, &nodes, Duration::from_secs(40), one_active).await;
    let m = modes(&http, &nodes).await;
    let active = m.iter().position(|m| *m == Some(Mode::Active)).unwrap();
    let survivor = 1 - active;
    assert_eq!(nodes[active].id, "a", "the primary runs when both start together: {m:?}");
    assert!(
        vigil::cluster::eventually(Duration::from_secs(20), || nodes[active].runs_services()).await,
        "the active node runs its services\n{}",
        logs(&nodes)
    );
    assert!(!nodes[survivor].runs_services(), "the standby does not");

    // kill -9 the active node: the standby takes over and starts its services.
    nodes[active].kill();
    wait_for(&http, &nodes, Duration::from_secs(40), |m| m[survivor] == Some(Mode::Active)).await;
    assert!(
        vigil::cluster::eventually(Duration::from_secs(20), || nodes[survivor].runs_services()).await,
        "the new active node runs its services\n{}",
        logs(&nodes)
    );
    // The CLI on the survivor's server reaches it with its generated node.toml and admin token.
    let config = nodes[survivor].dir.join("node.toml");
    let o = vigil(&["events".as_ref(), "--config".as_ref(), config.as_os_str(), "--json".as_ref()]);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("active"), "{}", describe(&o));
}
