//! XiVO on real `vigil run` processes on loopback: the main + standby pair (`xivo` plugin) and the CC
//! nodes that follow their XiVO (`xivo-cc` plugin).
//!
//! On loopback a "ping" probe cannot see a killed process (the host stays up and answers), so the
//! standby checks the main with the signed vigil heartbeat here; in production the policy's comment
//! shows the ping-like probe of the heartbeat link. The telephony services and the configuration
//! regeneration hook are harmless shell commands that append their name to a log in the node's
//! directory, which proves the order.

use std::path::Path;
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::model::{Mode, Role};
use vigil_tests::{plugin, plugins_dir, vigil_bin};

const INTERVAL: u64 = 100;
const FAILURES: u32 = 3;
const SERVICES: [&str; 4] = ["xivo-confgend", "asterisk", "xivo-agid", "xivo-ctid"];

fn timing() -> Timing {
    Timing { interval_ms: INTERVAL, timeout_ms: INTERVAL, failures: FAILURES, successes: 3 }
}

/// A XiVO policy whose services and hook only write to `{dir}/order.log` and a marker file.
fn xivo_policy(standby: bool) -> String {
    let mut p = String::from("plugin = \"xivo\"\n\n[params]\nservices = [\"xivo-confgend\", \"asterisk\", \"xivo-agid\", \"xivo-ctid\"]\n");
    if standby {
        p.push_str("config_hook = \"config-regen\"\n\n[hooks.config-regen]\ncommand = [\"/bin/sh\", \"-c\", \"echo config-regen >> '{dir}/order.log'\"]\n");
    }
    for name in SERVICES {
        p.push_str(&format!(
            "\n[services.{name}]\nstart = \"echo start {name} >> '{{dir}}/order.log'; touch '{{dir}}/{name}.running'\"\n\
             stop = \"echo stop {name} >> '{{dir}}/order.log'; rm -f '{{dir}}/{name}.running'\"\n\
             status = \"test -f '{{dir}}/{name}.running'\"\ntimeout_ms = 2000\n"
        ));
    }
    p
}

/// A CC policy whose services write marker files.
fn cc_policy(xivo: &str, other: &str) -> String {
    let mut p = format!("plugin = \"xivo-cc\"\n\n[params]\nxivo = \"{xivo}\"\nother_cc_address = \"{other}\"\nservices = [\"cc-db\", \"xuc\"]\n");
    for name in ["cc-db", "xuc"] {
        p.push_str(&format!(
            "\n[services.{name}]\nstart = \"touch '{{dir}}/{name}.running'\"\nstop = \"rm -f '{{dir}}/{name}.running'\"\n\
             status = \"test -f '{{dir}}/{name}.running'\"\ntimeout_ms = 2000\n"
        ));
    }
    p
}

/// XiVO main `xivo-a` (node 0) and standby `xivo-b` (node 1), each the other's peer.
fn xivo_pair(dir: &Path) -> Cluster {
    let _ = (plugin("xivo"), plugin("xivo-cc"));
    let mut cluster = Cluster::new(vigil_bin(), dir, timing(), vec![plugins_dir()]).unwrap();
    let mut main = NodeSpec::new("xivo-a", Role::Primary, &xivo_policy(false));
    main.peers = vec!["xivo-b".into()];
    let mut standby = NodeSpec::new("xivo-b", Role::Secondary, &xivo_policy(true));
    standby.peers = vec!["xivo-a".into()];
    cluster.add(main).unwrap();
    cluster.add(standby).unwrap();
    cluster
}

fn order_log(cluster: &Cluster, i: usize) -> Vec<String> {
    std::fs::read_to_string(cluster.nodes[i].dir.join("order.log")).unwrap_or_default().lines().map(str::to_string).collect()
}

fn running(cluster: &Cluster, i: usize, name: &str) -> bool {
    cluster.nodes[i].dir.join(format!("{name}.running")).exists()
}

/// Wait until `done` holds (polling every 20 ms) or fail with `what`.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_main_starts_the_standby_telephony_in_order_and_main_back_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = xivo_pair(dir.path());
    // Main first: a standby started alone would (rightly) take over after `failures` checks.
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(20), |m| (m[0] == Some(Mode::Active)).then_some(())).await.unwrap();
    cluster.start(1).unwrap();
    cluster.wait_for(Duration::from_secs(20), |m| (m == [Some(Mode::Active), Some(Mode::Standby)]).then_some(())).await.unwrap();
    assert!(order_log(&cluster, 1).is_empty(), "the standby runs no telephony while main answers");

    let killed = Instant::now();
    cluster.kill(0);
    cluster.wait_for(Duration::from_secs(5), |m| (m[1] == Some(Mode::Active)).then_some(())).await.unwrap();
    println!("standby ACTIVE {} ms after kill -9 of main", killed.elapsed().as_millis());
    until(Duration::from_secs(5), "the standby starts every telephony service", || SERVICES.iter().all(|s| running(&cluster, 1, s))).await;
    assert_eq!(
        order_log(&cluster, 1),
        ["config-regen", "start xivo-confgend", "start asterisk", "start xivo-agid", "start xivo-ctid"],
        "configuration regenerated first, then the services in the configured order"
    );

    // Main back: the standby stops its telephony by itself, in reverse order.
    cluster.start(0).unwrap();
    cluster
        .wait_for(Duration::from_secs(10), |m| (m == [Some(Mode::Active), Some(Mode::Standby)]).then_some(()))
        .await
        .expect("main active and the standby back in standby without a manual step");
    until(Duration::from_secs(5), "the standby stops its telephony", || SERVICES.iter().all(|s| !running(&cluster, 1, s))).await;
    assert_eq!(&order_log(&cluster, 1)[5..], ["stop xivo-ctid", "stop xivo-agid", "stop asterisk", "stop xivo-confgend"]);
    // Break-before-make: the main starts only once the standby reports STANDBY, its telephony stopped.
    until(Duration::from_secs(5), "main runs its telephony", || SERVICES.iter().all(|s| running(&cluster, 0, s))).await;

    // Stable afterwards: nothing restarts on the standby.
    tokio::time::sleep(Duration::from_millis(INTERVAL * 8)).await;
    assert_eq!(order_log(&cluster, 1).len(), 9, "no action after the failback: {:?}", order_log(&cluster, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn cc_nodes_follow_their_xivo_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = xivo_pair(dir.path());
    let mut cc_main = NodeSpec::new("cc-a", Role::Primary, &cc_policy("xivo-a", "cc-b.example.com"));
    cc_main.watched = vec![("xivo-a".into(), "xivo-a".into())];
    let mut cc_standby = NodeSpec::new("cc-b", Role::Secondary, &cc_policy("xivo-b", "cc-a.example.com"));
    cc_standby.watched = vec![("xivo-b".into(), "xivo-b".into())];
    cluster.add(cc_main).unwrap();
    cluster.add(cc_standby).unwrap();
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(20), |m| (m[0] == Some(Mode::Active)).then_some(())).await.unwrap();
    for i in 1..4 {
        cluster.start(i).unwrap();
    }
    let (a, s) = (Some(Mode::Active), Some(Mode::Standby));
    if let Err(e) = cluster.wait_for(Duration::from_secs(20), |m| (m == [a, s, a, s]).then_some(())).await {
        panic!("the main side active, the standby side standby: {e}\n{}", std::fs::read_to_string(&cluster.nodes[2].log).unwrap_or_default());
    }
    until(Duration::from_secs(5), "the main CC runs its services", || running(&cluster, 2, "xuc") && !running(&cluster, 3, "xuc")).await;

    // Failover: main XiVO killed. The standby CC follows its XiVO to ACTIVE; the main CC sees its
    // XiVO gone and stops.
    cluster.kill(0);
    cluster.wait_for(Duration::from_secs(10), |m| (m[1..] == [a, s, a]).then_some(())).await.expect("CC roles swapped");
    until(Duration::from_secs(5), "CC services moved", || running(&cluster, 3, "cc-db") && running(&cluster, 3, "xuc") && !running(&cluster, 2, "xuc")).await;
    let (code, events) = cluster.admin(3, hyper::Method::GET, "/events").await.unwrap();
    assert_eq!(code, 200);
    assert!(events.contains("users logged in to the other CC (cc-a.example.com) must reconnect to this CC"), "reconnect notice in the standby CC's events: {events}");
    let (_, events) = cluster.admin(2, hyper::Method::GET, "/events").await.unwrap();
    assert!(events.contains("users must reconnect to the other CC at cc-b.example.com"), "reconnect notice in the main CC's events: {events}");

    // Failback: main XiVO back. Both CCs follow again.
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(10), |m| (m == [a, s, a, s]).then_some(())).await.expect("CC roles back");
    until(Duration::from_secs(5), "CC services back", || running(&cluster, 2, "xuc") && !running(&cluster, 3, "xuc") && !running(&cluster, 3, "cc-db")).await;
}
