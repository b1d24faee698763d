//! Plugins built against an older `vigil:policy` keep working (issue 16): the host loads
//! `vigil:policy@0.2.0` (the current `wit/policy.wit`) and `@0.1.0` (`wit/v0.1.0/policy.wit`).
//!
//! The 0.1.0 fixture (`plugins/policy-v0-1`) says in its reason what it saw: a 0.1.0 plugin never
//! sees `starting` (its own node reads `standby`, a remote node that reports `starting` comes
//! without a report) and never sees restart information.

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
    assert_eq!(current.plugin.interface_version(), "0.2.0", "plugins built with today's SDK are 0.2.0");

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
