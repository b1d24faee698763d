//! Plugins built against an older `vigil:policy` keep working (issues 16 and 11): the host loads
//! `vigil:policy@0.3.0` (the current `wit/policy.wit`), `@0.2.0` (`wit/v0.2.0/policy.wit`) and
//! `@0.1.0` (`wit/v0.1.0/policy.wit`).
//!
//! The 0.1.0 fixture (`plugins/policy-v0-1`) says in its reason what it saw: a 0.1.0 plugin never
//! sees `starting` (its own node reads `standby`, a remote node that reports `starting` comes
//! without a report) and never sees restart information.
//!
//! Committed binaries prove that plugins built in the past still run, whatever the source tree says
//! today: `tests/fixtures/plugins/policy-v0-1.wasm` (0.1.0, built from `plugins/policy-v0-1`) and
//! `tests/fixtures/plugins/hot-standby-v0-2.wasm` (the hot-standby plugin as built against 0.2.0,
//! before the arbiter). They are loaded, checked and replayed through the real binary; the 0.2.0
//! plugin does not see the arbiter, so it fails over where today's plugin waits for the role key.

use std::time::Duration;
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::model::{Action, Mode, Report, RestartInfo, Role};
use vigil_tests::{load, plugin, plugins_dir, runtime, tick, vigil_bin, write_file};

fn v01_policy(dir: &std::path::Path) -> std::path::PathBuf {
    let _ = plugin("policy-v0-1");
    write_file(
        dir,
        "v01.toml",
        "plugin = \"policy-v0-1\"\n\n[params]\n\n[services.app]\nstart = \"touch '{dir}/app.running'\"\nstop = \"rm -f '{dir}/app.running'\"\nstatus = \"test -f '{dir}/app.running'\"\n",
    )
}

#[test]
fn a_plugin_built_against_0_1_0_loads_and_decides() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = load(&runtime, &v01_policy(dir.path())).expect("a 0.1.0 plugin loads");
    assert_eq!(policy.plugin.interface_version(), "0.1.0");
    let current = load(&runtime, &vigil_tests::testkit_policy(dir.path(), "tk.toml", "mode = \"standby\"", "")).unwrap();
    assert_eq!(current.plugin.interface_version(), "0.3.0", "plugins built with today's SDK are 0.3.0");

    // A starting node whose peer starts too, after a restart: the 0.1.0 plugin sees neither.
    let mut t = tick(10_000, Vec::new());
    t.node.mode = Mode::Starting;
    t.node.tick_count = 0;
    t.node.restart = Some(RestartInfo { downtime_ms: 100, mode: Mode::Active, mode_since_ms: 5, state: b"{}".to_vec() });
    t.peers[0].report = Some(Report { mode: Mode::Starting, ..Report::default() });
    let d = policy.decide(&t, &["a".into()]).expect("decides");
    assert!(d.reason.contains("sees itself standby") && d.reason.contains("a=unknown"), "{}", d.reason);
    assert_eq!(d.mode, None);

    // Its rules work as they did: the peer lost for the failure threshold → active, start.
    let mut t = tick(11_000, b"kept".to_vec());
    t.peers[0].reachable = false;
    t.peers[0].consecutive_failures = 3;
    t.services.retain(|s| s.name == "app");
    let d = policy.decide(&t, &["a".into()]).expect("decides");
    assert_eq!(d.mode, Some(Mode::Active));
    assert_eq!(d.state, b"kept", "state bytes travel as before");
    assert!(d.actions.contains(&Action::Start("app".into())), "{:?}", d.actions);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_0_1_0_plugin_runs_a_node_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(v01_policy(dir.path())).unwrap();
    let timing = Timing { interval_ms: 100, timeout_ms: 80, failures: 3, successes: 3 };
    let mut cluster = Cluster::new(vigil_bin(), dir.path(), timing, vec![plugins_dir()]).unwrap();
    let mut node = NodeSpec::new("old", Role::Secondary, &text);
    // A peer nobody runs: lost after three checks, so the 0.1.0 rule takes over.
    node.peer_paths = vec![("ghost".into(), vec![("lan".into(), "http://127.0.0.1:9".into())])];
    cluster.add(node).unwrap();
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(20), |m| (m[0] == Some(Mode::Active)).then_some(())).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs(30)));
    let marker = cluster.nodes[0].dir.join("app.running");
    assert!(vigil::cluster::eventually(Duration::from_secs(5), || marker.exists()).await, "the 0.1.0 plugin's start ran");
    let (code, status) = cluster.admin(0, hyper::Method::GET, "/events").await.unwrap();
    assert_eq!(code, 200);
    assert!(status.contains("v0.1.0 sees itself standby, tick 0"), "the first tick showed standby to the 0.1.0 plugin: {status}");
}

/// A committed plugin binary under `tests/fixtures/plugins/`.
fn fixture(name: &str) -> std::path::PathBuf {
    let path = vigil_tests::root().join("tests/fixtures/plugins").join(name);
    assert!(path.is_file(), "{} is missing (a committed fixture)", path.display());
    path
}

/// A policy file naming `plugin` by path, with the hot-standby plugin's services.
fn policy_for(dir: &std::path::Path, name: &str, plugin: &std::path::Path, params: &str) -> std::path::PathBuf {
    write_file(
        dir,
        name,
        format!(
            "plugin = {:?}\n\n[params]\n{params}\n\n[services.app]\nstart = \"true\"\nstop = \"true\"\nstatus = \"true\"\n",
            plugin.display().to_string()
        ),
    )
}

/// Peer `a` is lost while the arbiter says `a` still holds the role key: a plugin that sees the
/// arbiter waits, one built before 0.3.0 fails over (and the host's fencing stops it).
const LOST_PEER_HOLDS_KEY: &str = r#"description = "peer a lost while it still holds the role key"

[tick]
node = { id = "b", configured_role = "secondary", mode = "standby" }
heartbeat = { interval_ms = 1000, failures = 3, successes = 3 }
peers = [{ id = "a", reachable = true, report = { mode = "active", configured_role = "primary" } }]
services = [{ name = "app" }]
arbiter = { reachable = true, holder = "a", held = false, lease_left_ms = 0, revision = 7 }

[[step]]
expect = { mode = "standby", actions = [] }

[[step]]
set = { peers = [{ id = "a", reachable = false }] }
repeat = 2
expect = { mode = "standby", actions = [] }

[[step]]
expect = { mode = "MODE", reason = "REASON" }
"#;

fn lost_peer_scenario(dir: &std::path::Path, name: &str, mode: &str, reason: &str) -> std::path::PathBuf {
    write_file(dir, name, LOST_PEER_HOLDS_KEY.replace("MODE", mode).replace("REASON", reason))
}

fn vigil_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = vigil_tests::vigil(args);
    assert_eq!(out.status.code(), Some(0), "{}", vigil_tests::describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn committed_0_1_0_and_0_2_0_plugins_check_and_replay_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = policy_for(d, "v01.toml", &fixture("policy-v0-1.wasm"), "");
    let v02 = policy_for(d, "v02.toml", &fixture("hot-standby-v0-2.wasm"), "failures = 3");

    // `vigil policy check` loads each (compile, validate, dry run) and names its interface.
    let out = vigil_ok(&["policy".as_ref(), "check".as_ref(), old.as_os_str()]);
    assert!(out.contains("vigil:policy@0.1.0"), "{out}");
    let out = vigil_ok(&["policy".as_ref(), "check".as_ref(), v02.as_os_str()]);
    assert!(out.contains("vigil:policy@0.2.0"), "{out}");

    // The 0.2.0 plugin still refuses bad parameters with its message.
    let bad = policy_for(d, "bad.toml", &fixture("hot-standby-v0-2.wasm"), "failures = 0");
    let out = vigil_tests::vigil(&["policy".as_ref(), "check".as_ref(), bad.as_os_str()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(vigil_tests::describe(&out).contains("failures: expected a count from 1 to"), "{}", vigil_tests::describe(&out));

    // `vigil policy test`: the deployment's own golden timeline still passes with the 0.2.0 binary
    // (the deployment policy, its plugin swapped for the fixture)…
    let deployment = std::fs::read_to_string(vigil_tests::root().join("policies/hot-standby.toml")).unwrap();
    let plugin_line = format!("plugin = {:?}", fixture("hot-standby-v0-2.wasm").display().to_string());
    let deployment = write_file(d, "deployment.toml", deployment.replace("plugin = \"hot-standby\"", &plugin_line));
    let suite = vigil_tests::root().join("tests/scenarios/hot-standby/failover-peer-unreachable.toml");
    let out = vigil_ok(&["policy".as_ref(), "test".as_ref(), deployment.as_os_str(), suite.as_os_str()]);
    assert!(out.contains("1 passed, 0 failed"), "{out}");
    // … and it does not see the arbiter: the lost peer's role key does not hold it back.
    let blind = lost_peer_scenario(d, "blind.toml", "active", "maximum heartbeat fails");
    let out = vigil_ok(&["policy".as_ref(), "test".as_ref(), v02.as_os_str(), blind.as_os_str()]);
    assert!(out.contains("1 passed, 0 failed"), "{out}");
    // The 0.1.0 plugin decides too (its own rule: the lost peer → active).
    let blind = lost_peer_scenario(d, "blind-v01.toml", "active", "peer lost: ACTIVE");
    let out = vigil_ok(&["policy".as_ref(), "test".as_ref(), old.as_os_str(), blind.as_os_str(), "-v".as_ref()]);
    assert!(out.contains("1 passed, 0 failed") && out.contains("v0.1.0 sees itself standby"), "{out}");

    // Today's hot-standby (0.3.0) sees the arbiter and waits for the key on the same timeline.
    let current = policy_for(d, "v03.toml", &plugin("hot-standby"), "failures = 3");
    let out = vigil_ok(&["policy".as_ref(), "check".as_ref(), current.as_os_str()]);
    assert!(out.contains("vigil:policy@0.3.0"), "{out}");
    let waits = lost_peer_scenario(d, "waits.toml", "standby", "role key held by node a");
    let out = vigil_ok(&["policy".as_ref(), "test".as_ref(), current.as_os_str(), waits.as_os_str()]);
    assert!(out.contains("1 passed, 0 failed"), "{out}");
}

#[test]
fn a_0_2_0_plugin_does_not_see_the_arbiter_and_a_0_3_0_plugin_does() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let old = load(&runtime, &policy_for(dir.path(), "v02.toml", &fixture("hot-standby-v0-2.wasm"), "")).expect("the 0.2.0 fixture loads");
    assert_eq!(old.plugin.interface_version(), "0.2.0");
    let new = load(&runtime, &policy_for(dir.path(), "v03.toml", &plugin("hot-standby"), "")).expect("today's plugin loads");
    assert_eq!(new.plugin.interface_version(), "0.3.0");

    let mut t = tick(20_000, Vec::new());
    t.services.retain(|s| s.name == "app");
    t.peers[0].reachable = false;
    t.peers[0].consecutive_failures = 3;
    t.arbiter = Some(vigil::model::ArbiterView { reachable: true, holder: Some("a".into()), held: false, lease_left_ms: 0, revision: 9 });
    let d = old.decide(&t, &["a".into()]).expect("decides");
    assert_eq!(d.mode, Some(Mode::Active), "0.2.0 sees no arbiter: {}", d.reason);
    let d = new.decide(&t, &["a".into()]).expect("decides");
    assert_eq!(d.mode, None, "0.3.0 waits for the key: {}", d.reason);
    assert!(d.reason.contains("role key held by node a"), "{}", d.reason);
    // The key free: today's plugin asks for the role too.
    t.arbiter = Some(vigil::model::ArbiterView { reachable: true, holder: None, held: false, lease_left_ms: 0, revision: 0 });
    let d = new.decide(&t, &["a".into()]).expect("decides");
    assert_eq!(d.mode, Some(Mode::Active), "{}", d.reason);
}
