//! The mail gateway's operator commands end to end (deployments.md §6): two real `vigil run`
//! processes with the mail-gateway policy on loopback; "switch to slave mode", "restore configured
//! mode", "restart the HA system" from `off`, and "start a configuration/data sync", over the admin
//! HTTP API and the `vigil` CLI; `/status` and `vigil status` show the configured and the effective
//! mode side by side.

use hyper::Method;
use std::ffi::OsStr;
use std::time::Duration;
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::model::{Mode, Role};
use vigil_tests::{describe, plugins_dir, vigil, vigil_bin};

/// Mail services write marker files; a local monitor (a command) fails while `{dir}/broken` exists,
/// which is how the test breaks the primary's "local service".
const POLICY: &str = r#"plugin = "mail-gateway"

[params]
on_failure = "switch-off"
local_failures = 2
# The loopback pair has no interface to move an address on.
vip = false

[services.mta]
start = "echo running > '{dir}/mta.running'"
stop = "rm -f '{dir}/mta.running'"
status = "test -f '{dir}/mta.running'"
timeout_ms = 2000

[monitors.mta-port]
kind = "command"
command = "test ! -f '{dir}/broken'"
timeout_ms = 1000
"#;

/// A primary `a` and a secondary `b`, each with two heartbeat paths to the other (on loopback both
/// reach the same listener), started.
fn pair(dir: &std::path::Path) -> Cluster {
    let timing = Timing { interval_ms: 150, timeout_ms: 120, failures: 3, successes: 3 };
    let mut cluster = Cluster::new(vigil_bin(), dir, timing, vec![plugins_dir()]).expect("configure the pair");
    let ports: Vec<u16> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    for (i, (id, role, peer)) in [("a", Role::Primary, "b"), ("b", Role::Secondary, "a")].into_iter().enumerate() {
        let mut spec = NodeSpec::new(id, role, POLICY);
        spec.listen = Some(([127, 0, 0, 1], ports[i]).into());
        let url = format!("http://127.0.0.1:{}", ports[1 - i]);
        spec.peer_paths = vec![(peer.into(), vec![("hb1".into(), url.clone()), ("hb2".into(), url)])];
        cluster.add(spec).unwrap();
    }
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    cluster
}

async fn settle(cluster: &Cluster, want: [Mode; 2], what: &str) {
    cluster
        .wait_for(Duration::from_secs(10), |m| (m == [Some(want[0]), Some(want[1])]).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn cli(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let token = cluster.dir.join("admin.token");
    let url = cluster.nodes[i].url.clone();
    let mut argv: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    argv.extend([OsStr::new("--url"), OsStr::new(&url), OsStr::new("--token-file"), token.as_os_str()]);
    let out = vigil(&argv);
    assert_eq!(out.status.code(), Some(0), "vigil {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_commands_over_http_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = pair(dir.path());
    settle(&cluster, [Mode::Active, Mode::Standby], "the primary takes the role").await;
    assert!(
        vigil::cluster::eventually(Duration::from_secs(5), || cluster.nodes[0].dir.join("mta.running").exists()).await,
        "the active node runs the mail service"
    );

    // Configured and effective mode side by side, in JSON and for humans.
    let (code, body) = cluster.admin(0, Method::GET, "/status").await.unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status["node"]["configured_role"].as_str(), status["node"]["mode"].as_str()), (Some("primary"), Some("active")));
    let text = cli(&cluster, 1, &["status"]);
    assert!(text.contains("configured secondary, mode STANDBY"), "{text}");

    // "switch to slave mode" over HTTP: the roles swap.
    let (code, body) = cluster.admin(0, Method::POST, "/admin/switch/standby").await.unwrap();
    assert_eq!(code, 202, "{body}");
    settle(&cluster, [Mode::Standby, Mode::Active], "a hands the role to b").await;
    let text = cli(&cluster, 0, &["status"]);
    assert!(text.contains("configured primary, mode STANDBY"), "configured and effective differ now: {text}");

    // "restore configured mode" through the CLI.
    let out = cli(&cluster, 0, &["switch", "restore"]);
    assert!(out.contains("restore: accepted"), "{out}");
    settle(&cluster, [Mode::Active, Mode::Standby], "restore gives a its configured role back").await;

    // Local monitoring fails on a: switch-off takes it OFF, b takes over.
    std::fs::write(cluster.nodes[0].dir.join("broken"), "").unwrap();
    settle(&cluster, [Mode::Off, Mode::Active], "a goes OFF, b takes over").await;
    std::fs::remove_file(cluster.nodes[0].dir.join("broken")).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(cluster.modes().await, [Some(Mode::Off), Some(Mode::Active)], "OFF waits for the operator even once healthy");
    assert!(
        vigil::cluster::eventually(Duration::from_secs(5), || !cluster.nodes[0].dir.join("mta.running").exists()).await,
        "an OFF node runs no mail service"
    );

    // "restart the HA system" over HTTP: a rejoins as standby; b keeps the role.
    let (code, body) = cluster.admin(0, Method::POST, "/admin/switch/restart-ha").await.unwrap();
    assert_eq!(code, 202, "{body}");
    settle(&cluster, [Mode::Standby, Mode::Active], "restart-ha: a rejoins in standby").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(cluster.modes().await, [Some(Mode::Standby), Some(Mode::Active)], "no failback without restore");

    // Restore over HTTP puts the configured roles back.
    let (code, body) = cluster.admin(0, Method::POST, "/admin/switch/restore").await.unwrap();
    assert_eq!(code, 202, "{body}");
    settle(&cluster, [Mode::Active, Mode::Standby], "restore after restart-ha").await;

    // "start a configuration/data sync": over HTTP on the secondary, then through the CLI.
    let (code, body) = cluster.admin(1, Method::POST, "/admin/sync").await.unwrap();
    assert_eq!(code, 200, "POST /admin/sync: {body}");
    let out = cli(&cluster, 1, &["sync"]);
    assert!(!out.trim().is_empty(), "vigil sync says what it did");

    // Every operator request is in the event log, with the decisions it caused.
    let (code, events) = cluster.admin(0, Method::GET, "/events?limit=500").await.unwrap();
    assert_eq!(code, 200);
    for needle in ["operator requested standby", "operator requested restore", "operator requested restart-ha", "local monitoring: mta-port failed 2/2 checks"] {
        assert!(events.contains(needle), "{needle:?} missing from a's event log: {events}");
    }
}

/// A fault discards the plugin's decision, so the operator request of a faulting tick was never acted
/// on (a click in the console on a loaded machine whose plugin ran past its time limit): the node
/// delivers it again on the next tick, and drops it, saying so, after three faulting ticks.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_request_the_plugin_faulted_on_is_delivered_again_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let timing = Timing { interval_ms: 100, timeout_ms: 80, failures: 3, successes: 3 };
    let mut cluster = Cluster::new(vigil_bin(), dir.path(), timing, vec![plugins_dir()]).unwrap();
    // The plugin traps on every tick from 5 s on: after its load's dry-run tick and the node's start.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let policy = format!("plugin = \"testkit\"\n\n[params]\nmode = \"standby\"\nfault = \"trap\"\nfault_from_ms = {}\n", now_ms + 5_000);
    let i = cluster.add(NodeSpec::new("a", Role::Primary, &policy)).unwrap();
    cluster.start(i).unwrap();
    cluster.wait_for(Duration::from_secs(20), |m| m[0].map(|_| ())).await.unwrap_or_else(|e| panic!("the node answers: {e}\n{}", cluster.logs(30)));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, events) = cluster.admin(i, Method::GET, "/events?limit=1000").await.unwrap();
        if events.contains("\"kind\": \"fault\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the plugin never faulted:\n{events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (code, body) = cluster.admin(i, Method::POST, "/admin/switch/active").await.unwrap();
    assert_eq!(code, 202, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let (code, events) = cluster.admin(i, Method::GET, "/events?limit=1000").await.unwrap();
        assert_eq!(code, 200, "{events}");
        if events.contains("operator request active dropped") {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "no drop within 10 s:\n{events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(events.matches("operator request active: the plugin faulted on its tick (trap); delivered again").count(), 2, "{events}");
    assert_eq!(events.matches("dropped: the plugin faulted on the 3 ticks that carried it (trap); ask again").count(), 1, "{events}");
}
