//! A restart of the vigil daemon is invisible to users (issue 16), through the real binary.
//!
//! `kill -9` of a node's daemon and an immediate restart, its services still running: the restarted
//! node answers `STARTING` until its first tick (never `STANDBY`), resumes ACTIVE on that tick with
//! its services untouched, and nobody around it moves — no service stopped or started anywhere, no
//! alarm, no registration changed, no decision changed in the watchers' event logs.
//!
//! - (a) the main XiVO's daemon, with its CC and an XDS node watching it;
//! - (b) the standby XiVO's daemon while it is the active one (the main dead);
//! - (c) a hot-standby active node's daemon;
//! - and the safety rule: a node never resumes ACTIVE over a role its peer took meanwhile.
//!
//! Services and hooks are shell commands that append to a log in the node's directory and keep a
//! marker file while they run, so every start, stop and hook shows.

use std::path::Path;
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, NodeSpec, PairSpec, Timing};
use vigil::model::{Mode, Role};
use vigil_tests::{plugin, plugins_dir, vigil_bin};

const INTERVAL: u64 = 200;

/// The interval. A restart is invisible only if the daemon answers again before its peers and
/// watchers count it lost (`failures` × interval): unloaded it answers within ~150 ms, on a CI
/// machine running other suites beside this one it took up to ~650 ms, hence 5 (a second).
fn timing() -> Timing {
    Timing { interval_ms: INTERVAL, timeout_ms: 150, failures: 5, successes: 3 }
}

/// The mode node `i` last persisted (`node-state.json`), if any.
fn persisted_mode(cluster: &Cluster, i: usize) -> Option<String> {
    let text = std::fs::read_to_string(cluster.nodes[i].dir.join("data/node-state.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["mode"].as_str().map(str::to_string)
}

/// Services (and hooks) that log to `{dir}/actions.log` and keep a marker while running.
fn services(names: &[&str]) -> String {
    let mut p = String::new();
    for name in names {
        p.push_str(&format!(
            "\n[services.{name}]\nstart = \"echo start {name} >> '{{dir}}/actions.log'; touch '{{dir}}/{name}.running'\"\n\
             stop = \"echo stop {name} >> '{{dir}}/actions.log'; rm -f '{{dir}}/{name}.running'\"\n\
             status = \"test -f '{{dir}}/{name}.running'\"\ntimeout_ms = 2000\n"
        ));
    }
    p
}

const TELEPHONY: [&str; 2] = ["asterisk", "xivo-ctid"];

fn xivo_policy(standby: bool) -> String {
    let mut p = String::from("plugin = \"xivo\"\n\n[params]\nservices = [\"asterisk\", \"xivo-ctid\"]\n");
    if standby {
        p.push_str("config_hook = \"config-regen\"\n\n[hooks.config-regen]\ncommand = [\"/bin/sh\", \"-c\", \"echo config-regen >> '{dir}/actions.log'\"]\n");
    }
    p + &services(&TELEPHONY)
}

fn cc_policy(xivo: &str, other: &str) -> String {
    format!("plugin = \"xivo-cc\"\n\n[params]\nxivo = \"{xivo}\"\nother_cc_address = \"{other}\"\nservices = [\"xuc\"]\n") + &services(&["xuc"])
}

fn xds_policy(xivo: &str) -> String {
    format!(
        "plugin = \"xds\"\n\n[params]\nxivo = \"{xivo}\"\nmds = [\"mds1\", \"mds2\"]\nregister_hook = \"register-mds\"\nunregister_hook = \"unregister-mds\"\n\n\
         [hooks.register-mds]\ncommand = [\"/bin/sh\", \"-c\", \"echo register {{0}} >> '{{dir}}/actions.log'\"]\n\n\
         [hooks.unregister-mds]\ncommand = [\"/bin/sh\", \"-c\", \"echo unregister {{0}} >> '{{dir}}/actions.log'\"]\n"
    )
}

fn actions(cluster: &Cluster, i: usize) -> Vec<String> {
    std::fs::read_to_string(cluster.nodes[i].dir.join("actions.log")).unwrap_or_default().lines().map(str::to_string).collect()
}

fn every_log(cluster: &Cluster) -> Vec<Vec<String>> {
    (0..cluster.nodes.len()).map(|i| actions(cluster, i)).collect()
}

fn running(cluster: &Cluster, i: usize, name: &str) -> bool {
    cluster.nodes[i].dir.join(format!("{name}.running")).exists()
}

async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The events of node `i` as JSON.
async fn events(cluster: &Cluster, i: usize) -> Vec<serde_json::Value> {
    let (code, body) = cluster.admin(i, hyper::Method::GET, "/events?limit=1000").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("events are JSON ({e}): {body}"));
    let list = value.get("events").cloned().unwrap_or(value);
    list.as_array().cloned().unwrap_or_default()
}

fn id_of(event: &serde_json::Value) -> u64 {
    event["id"].as_u64().unwrap_or(0)
}

/// What a watcher did after event `after`: alarms, and decisions that changed its mode or acted.
async fn moves_since(cluster: &Cluster, i: usize, after: u64) -> Vec<String> {
    events(cluster, i)
        .await
        .into_iter()
        .filter(|e| id_of(e) > after)
        .filter(|e| {
            let kind = e["kind"].as_str().unwrap_or_default();
            let changed = e["detail"]["from"] != e["detail"]["to"] || e["detail"]["actions"].as_array().is_some_and(|a| !a.is_empty());
            kind == "alarm" || kind == "action" || (kind == "decision" && changed)
        })
        .map(|e| format!("{} {}", e["kind"], e["message"]))
        .collect()
}

async fn last_event(cluster: &Cluster, i: usize) -> u64 {
    events(cluster, i).await.iter().map(id_of).max().unwrap_or(0)
}

/// The words `/role` of node `i` answers from now until it answers ACTIVE again, how long it did
/// not answer at all, and how long its `/active` answered 503 (from its first answer to ACTIVE).
async fn watch_restart(cluster: &Cluster, i: usize) -> (Vec<String>, Duration, Duration) {
    let started = Instant::now();
    let http = vigil::http_client::HttpClient::new();
    let url = cluster.nodes[i].url.clone();
    let mut words: Vec<String> = Vec::new();
    let mut first_answer = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "node {i} never answered ACTIVE again; saw {words:?}\n{}", cluster.logs(40));
        if let Ok(a) = http.get(&format!("{url}/active"), Duration::from_millis(300)).await {
            let at = *first_answer.get_or_insert_with(Instant::now);
            if a.status == 200 {
                words.push("ACTIVE".into());
                return (words, at.duration_since(started), at.elapsed());
            }
            let word = match http.get(&format!("{url}/role"), Duration::from_millis(300)).await {
                Ok(r) => String::from_utf8_lossy(&r.body).trim().to_string(),
                Err(_) => "(no answer)".into(),
            };
            if words.last() != Some(&word) {
                words.push(word);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Kill node `i` and start it again at once; what its `/role` said until ACTIVE.
async fn kill_and_restart(cluster: &mut Cluster, i: usize) -> (Vec<String>, Duration) {
    cluster.kill(i);
    cluster.start(i).unwrap();
    let (words, silent, window) = watch_restart(cluster, i).await;
    println!(
        "node {} restarted: no answer for {} ms, then /role said {words:?}; /active answered 503 for {} ms after the first answer",
        cluster.nodes[i].id,
        silent.as_millis(),
        window.as_millis()
    );
    (words, window)
}

/// The restarted node resumed: only STARTING before ACTIVE, and its event log says it resumed.
async fn assert_resumed(cluster: &Cluster, i: usize, words: &[String]) {
    assert!(words.iter().all(|w| w == "STARTING" || w == "ACTIVE"), "the restarted node answered only STARTING then ACTIVE: {words:?}");
    let resumed = events(cluster, i).await.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("resuming ACTIVE")));
    assert!(resumed, "the restarted node's event log says it resumed ACTIVE:\n{}", cluster.logs(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_of_the_main_xivo_daemon_moves_nothing_for_its_cc_and_xds() {
    let _ = (plugin("xivo"), plugin("xivo-cc"), plugin("xds"));
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(vigil_bin(), dir.path(), timing(), vec![plugins_dir()]).unwrap();
    let mut main = NodeSpec::new("xivo-a", Role::Primary, &xivo_policy(false));
    main.peers = vec!["xivo-b".into()];
    let mut standby = NodeSpec::new("xivo-b", Role::Secondary, &xivo_policy(true));
    standby.peers = vec!["xivo-a".into()];
    let mut cc = NodeSpec::new("cc-a", Role::Primary, &cc_policy("xivo-a", "cc-b.example.com"));
    cc.watched = vec![("xivo-a".into(), "xivo-a".into())];
    let mut xds = NodeSpec::new("xds-a", Role::Primary, &xds_policy("xivo-a"));
    xds.watched = vec![("xivo-a".into(), "xivo-a".into())];
    let mut xds_b = NodeSpec::new("xds-b", Role::Secondary, &xds_policy("xivo-b"));
    xds_b.watched = vec![("xivo-b".into(), "xivo-b".into())];
    for spec in [main, standby, cc, xds, xds_b] {
        cluster.add(spec).unwrap();
    }
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(20), |m| (m[0] == Some(Mode::Active)).then_some(())).await.unwrap();
    for i in 1..5 {
        cluster.start(i).unwrap();
    }
    let (a, s) = (Some(Mode::Active), Some(Mode::Standby));
    cluster.wait_for(Duration::from_secs(20), |m| (m == [a, s, a, a, s]).then_some(())).await.expect("main side active, standby side standby");
    until(Duration::from_secs(5), "the main side's services and registrations", || {
        TELEPHONY.iter().all(|s| running(&cluster, 0, s)) && running(&cluster, 2, "xuc") && actions(&cluster, 3).len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(INTERVAL * 4)).await;
    // Item 4: nobody moved at the first start: no reconnect alarm on the CC, no unregister on the
    // standby side's XDS node.
    let cc_events = events(&cluster, 2).await;
    assert!(!cc_events.iter().any(|e| e["kind"] == "alarm"), "no alarm at the CC's first start: {cc_events:?}");
    assert!(actions(&cluster, 4).is_empty(), "the standby-side XDS node unregisters nothing it never registered: {:?}", actions(&cluster, 4));

    let before = every_log(&cluster);
    let marks = [last_event(&cluster, 1).await, last_event(&cluster, 2).await, last_event(&cluster, 3).await, last_event(&cluster, 4).await];
    let (words, _) = kill_and_restart(&mut cluster, 0).await;
    tokio::time::sleep(Duration::from_millis(INTERVAL * 8)).await;
    assert_resumed(&cluster, 0, &words).await;
    assert_eq!(every_log(&cluster), before, "no service started or stopped, no hook run, anywhere");
    for (i, mark) in (1..5).zip(marks) {
        let moves = moves_since(&cluster, i, mark).await;
        assert!(moves.is_empty(), "watcher {} changed nothing during the restart: {moves:?}", cluster.nodes[i].id);
    }
    assert_eq!(cluster.modes().await, [a, s, a, a, s]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_of_the_active_standby_xivo_daemon_keeps_its_telephony() {
    let _ = plugin("xivo");
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(vigil_bin(), dir.path(), timing(), vec![plugins_dir()]).unwrap();
    let mut main = NodeSpec::new("xivo-a", Role::Primary, &xivo_policy(false));
    main.peers = vec!["xivo-b".into()];
    let mut standby = NodeSpec::new("xivo-b", Role::Secondary, &xivo_policy(true));
    standby.peers = vec!["xivo-a".into()];
    let mut xds_b = NodeSpec::new("xds-b", Role::Secondary, &xds_policy("xivo-b"));
    xds_b.watched = vec![("xivo-b".into(), "xivo-b".into())];
    for spec in [main, standby, xds_b] {
        cluster.add(spec).unwrap();
    }
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(20), |m| (m[0] == Some(Mode::Active)).then_some(())).await.unwrap();
    cluster.start(1).unwrap();
    cluster.start(2).unwrap();
    cluster.wait_for(Duration::from_secs(20), |m| (m[..2] == [Some(Mode::Active), Some(Mode::Standby)]).then_some(())).await.unwrap();
    // The main dies: the standby takes the telephony, its XDS node registers.
    cluster.kill(0);
    cluster.wait_for(Duration::from_secs(10), |m| (m[1..] == [Some(Mode::Active), Some(Mode::Active)]).then_some(())).await.unwrap();
    until(Duration::from_secs(5), "the standby's telephony and registrations", || {
        TELEPHONY.iter().all(|s| running(&cluster, 1, s)) && actions(&cluster, 2).len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(INTERVAL * 4)).await;

    let before = every_log(&cluster);
    let mark = last_event(&cluster, 2).await;
    let (words, _) = kill_and_restart(&mut cluster, 1).await;
    tokio::time::sleep(Duration::from_millis(INTERVAL * 8)).await;
    assert_resumed(&cluster, 1, &words).await;
    assert_eq!(every_log(&cluster), before, "the telephony was neither stopped nor started again, no registration moved");
    let moves = moves_since(&cluster, 2, mark).await;
    assert!(moves.is_empty(), "the XDS node changed nothing: {moves:?}");
    assert_eq!(cluster.modes().await[1..], [Some(Mode::Active), Some(Mode::Active)]);
}

fn hot_standby(dir: &Path) -> Cluster {
    let _ = plugin("hot-standby");
    let spec = PairSpec { timing: timing(), params: String::new(), plugin_dirs: vec![plugins_dir()] };
    Cluster::hot_standby_pair(vigil_bin(), dir, &spec).expect("configure the pair")
}

/// The one active node, once every node answers.
async fn one_active_of_all_answering(cluster: &Cluster) -> usize {
    cluster
        .wait_for(Duration::from_secs(30), |m| vigil::cluster::exactly_one_active(m).filter(|_| m.iter().all(Option::is_some)))
        .await
        .unwrap_or_else(|e| panic!("one active node: {e}\n{}", cluster.logs(40)))
}

fn cti_log(cluster: &Cluster, i: usize) -> bool {
    cluster.nodes[i].service_marker().exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_of_a_hot_standby_active_daemon_keeps_its_service_and_its_peer_standby() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = hot_standby(dir.path());
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let active = one_active_of_all_answering(&cluster).await;
    let other = 1 - active;
    until(Duration::from_secs(5), "the active node's service", || cti_log(&cluster, active) && !cti_log(&cluster, other)).await;
    tokio::time::sleep(Duration::from_millis(INTERVAL * 4)).await;
    // The marker's content is written once by `start`: a restart of the service would rewrite it.
    let marker = cluster.nodes[active].service_marker();
    let written = std::fs::metadata(&marker).unwrap().modified().unwrap();
    let mark = last_event(&cluster, other).await;

    let (words, _) = kill_and_restart(&mut cluster, active).await;
    tokio::time::sleep(Duration::from_millis(INTERVAL * 8)).await;
    assert_resumed(&cluster, active, &words).await;
    assert_eq!(std::fs::metadata(&marker).unwrap().modified().unwrap(), written, "the service was neither stopped nor started again");
    assert!(!cti_log(&cluster, other), "the peer started nothing");
    let moves = moves_since(&cluster, other, mark).await;
    assert!(moves.is_empty(), "the standby peer changed nothing: {moves:?}");
    let modes = cluster.modes().await;
    assert_eq!((modes[active], modes[other]), (Some(Mode::Active), Some(Mode::Standby)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_never_resumes_active_over_a_role_its_peer_took_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = hot_standby(dir.path());
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let active = one_active_of_all_answering(&cluster).await;
    let other = 1 - active;
    until(Duration::from_secs(5), "the active node's service", || cti_log(&cluster, active)).await;
    until(Duration::from_secs(5), "the active node persisted ACTIVE", || persisted_mode(&cluster, active).as_deref() == Some("active")).await;
    // Down long enough for the peer to take over, but within the default max_downtime_ms: the
    // persisted mode says ACTIVE and the service still runs.
    cluster.kill(active);
    cluster.wait_for(Duration::from_secs(10), |m| (m[other] == Some(Mode::Active)).then_some(())).await.expect("the peer takes over");
    until(Duration::from_secs(5), "the peer's service", || cti_log(&cluster, other)).await;
    cluster.start(active).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let modes = cluster.modes().await;
        assert_ne!(modes[active], Some(Mode::Active), "the restarted node resumed ACTIVE over its peer's role: {seen:?}");
        if seen.last() != Some(&modes[active]) {
            seen.push(modes[active]);
        }
        if modes[active] == Some(Mode::Standby) && !cti_log(&cluster, active) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.last(), Some(&Some(Mode::Standby)), "the restarted node ends STANDBY with its service stopped: {seen:?}\n{}", cluster.logs(30));
    assert!(!cti_log(&cluster, active), "its leftover service is stopped");
    let messages: Vec<String> = events(&cluster, active).await.iter().filter_map(|e| e["message"].as_str().map(str::to_string)).collect();
    assert!(messages.iter().any(|m| m.contains("reports ACTIVE: not resuming")), "its event log says why it did not resume: {messages:#?}");
    assert_eq!(cluster.modes().await[other], Some(Mode::Active));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_is_remembered_and_the_next_start_is_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = hot_standby(dir.path());
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let active = one_active_of_all_answering(&cluster).await;
    until(Duration::from_secs(5), "the active node persisted ACTIVE", || persisted_mode(&cluster, active).as_deref() == Some("active")).await;
    // SIGTERM: the daemon stops its services on the way out and records the clean stop.
    cluster.stop(active);
    let text = std::fs::read_to_string(cluster.nodes[active].dir.join("data/node-state.json")).unwrap();
    assert!(text.contains("\"clean_stop\": true"), "node-state.json records the clean stop: {text}");
    assert!(!cti_log(&cluster, active), "a clean stop stops the services");
    cluster.start(active).unwrap();
    let modes = cluster.wait_for(Duration::from_secs(10), |m| m[active].filter(|m| *m != Mode::Starting).map(|_| m.to_vec())).await.unwrap();
    assert_ne!(modes[active], Some(Mode::Active), "no resume after a clean stop: {modes:?}");
    let messages: Vec<String> = events(&cluster, active).await.iter().filter_map(|e| e["message"].as_str().map(str::to_string)).collect();
    assert!(messages.iter().any(|m| m.contains("fresh start: the previous daemon stopped cleanly")), "{messages:#?}");
}
