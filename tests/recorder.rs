//! The flight recorder on a real pair: a kill -9 failover is recorded on both nodes, exported with
//! `vigil record` from the survivor (admin API) and from the killed node's data directory, the
//! exports pass `vigil policy test` with the policy that decided, and `vigil policy replay` of a
//! candidate that waits for 5 lost heartbeats instead of 3 reports the takeover tick as diverging.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;
use vigil::cluster::{eventually, exactly_one_active, Cluster, PairSpec, Timing};
use vigil::model::Mode;
use vigil::recorder::Record;
use vigil_tests::{describe, plugins_dir, vigil, vigil_bin};

const INTERVAL: u64 = 100;

fn run(args: &[&OsStr]) -> std::process::Output {
    let out = vigil(args);
    println!("$ vigil {}\n{}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "), describe(&out));
    out
}

fn records(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Consecutive failures this node counted for its peer on a tick.
fn peer_failures(r: &Record) -> u32 {
    r.tick.peers[0].consecutive_failures
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_failover_exports_exactly_and_a_slower_candidate_diverges_at_the_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PairSpec {
        timing: Timing { interval_ms: INTERVAL, timeout_ms: INTERVAL, failures: 3, successes: 3 },
        params: String::new(),
        plugin_dirs: vec![plugins_dir()],
    };
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec).unwrap();
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let active = cluster.wait_for(Duration::from_secs(20), exactly_one_active).await.expect("the pair settles");
    assert_eq!(active, 0);
    assert!(eventually(Duration::from_secs(5), || cluster.nodes[0].service_marker().exists()).await);
    // A steady pair for a while: ticks that differ only in time and counters.
    tokio::time::sleep(Duration::from_millis(INTERVAL * 10)).await;
    cluster.kill(0);
    cluster.wait_for(Duration::from_secs(5), |m| (m[1] == Some(Mode::Active)).then_some(())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(INTERVAL * 8)).await;

    // The takeover's event on the survivor, and its /status showing the recorder.
    let (_, events) = cluster.admin(1, hyper::Method::GET, "/events?limit=100").await.unwrap();
    let events: Vec<serde_json::Value> = serde_json::from_str(&events).unwrap();
    let takeover = events.iter().find(|e| e["kind"] == "decision" && e["detail"]["from"] == "standby" && e["detail"]["to"] == "active").unwrap_or_else(|| panic!("{events:#?}"));
    let status: serde_json::Value = serde_json::from_str(&cluster.admin(1, hyper::Method::GET, "/status").await.unwrap().1).unwrap();
    assert!(status["recorder"]["records"].as_u64().unwrap() > 10 && status["recorder"]["dropped"] == 0, "{}", status["recorder"]);
    let (_, metrics) = cluster.admin(1, hyper::Method::GET, "/metrics").await.unwrap();
    assert!(metrics.contains("vigil_recorder_records_total") && metrics.contains("vigil_recorder_dropped_total 0"), "{metrics}");

    let out = dir.path();
    let (b, a) = (&cluster.nodes[1], &cluster.nodes[0]);
    let id = takeover["id"].to_string();
    let (b_toml, b_lines, a_toml, a_lines) = (out.join("b.toml"), out.join("b.jsonl"), out.join("a.toml"), out.join("a.jsonl"));
    // From the running survivor, through its admin API: the takeover and 8 ticks either side.
    for (extra, file) in [(None, &b_toml), (Some("--records"), &b_lines)] {
        let mut args: Vec<&OsStr> = vec![OsStr::new("record"), OsStr::new("--config"), b.config.as_os_str(), OsStr::new("--around"), OsStr::new(&id)];
        args.extend([OsStr::new("--ticks"), OsStr::new("8"), OsStr::new("-o"), file.as_os_str()]);
        args.extend(extra.map(OsStr::new));
        assert!(run(&args).status.success());
    }
    // From the killed node's data directory: its whole ring (a torn last frame is skipped).
    let a_data = a.dir.join("data");
    for (extra, file) in [(None, &a_toml), (Some("--records"), &a_lines)] {
        let mut args: Vec<&OsStr> = vec![OsStr::new("record"), OsStr::new("--data-dir"), a_data.as_os_str(), OsStr::new("-o"), file.as_os_str()];
        args.extend(extra.map(OsStr::new));
        assert!(run(&args).status.success());
    }

    // The exports pass against the policy that decided.
    let policy = b.dir.join("policy.toml");
    let plugin_dir = plugins_dir();
    for scenario in [&b_toml, &a_toml] {
        let test = run(&[OsStr::new("policy"), OsStr::new("test"), policy.as_os_str(), scenario.as_os_str(), OsStr::new("--plugin-dir"), plugin_dir.as_os_str()]);
        assert!(test.status.success(), "the export of {} is exact", scenario.display());
    }
    let b_records = records(&b_lines);
    assert_eq!(b_records.len(), 17);
    let a_records = records(&a_lines);
    assert!(a_records.iter().any(|r| r.applied.mode == Mode::Active), "a recorded its own active ticks");

    // The same policy replays both nodes' recordings, merged, without a divergence.
    let replay = |candidate: &Path| {
        run(&[
            OsStr::new("policy"),
            OsStr::new("replay"),
            candidate.as_os_str(),
            b_lines.as_os_str(),
            a_lines.as_os_str(),
            OsStr::new("--plugin-dir"),
            plugin_dir.as_os_str(),
            OsStr::new("--json"),
        ])
    };
    let same = replay(&policy);
    assert!(same.status.success());

    // A candidate waiting for 5 lost heartbeats: the takeover at the 3rd is where it differs.
    let text = std::fs::read_to_string(&policy).unwrap().replace("[params]\n", "[params]\nfailures = 5\n");
    let candidate = vigil_tests::write_file(out, "candidate.toml", text);
    let slower = replay(&candidate);
    assert_eq!(slower.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&slower.stdout).unwrap();
    let divergences = report["divergences"].as_array().unwrap();
    assert_eq!(report["ticks"].as_u64().unwrap() as usize, b_records.len() + a_records.len());
    let takeover_tick = b_records.iter().find(|r| r.decided_mode() == Some(Mode::Active) && r.tick.node.mode == Mode::Standby).expect("b's takeover is recorded");
    assert_eq!(peer_failures(takeover_tick), 3, "the recording policy took over at the 3rd lost heartbeat");
    let first = &divergences[0];
    assert_eq!((first["node"].as_str(), first["tick"].as_u64()), (Some("b"), Some(takeover_tick.tick.node.tick_count)), "{report:#}");
    assert_eq!((first["recorded"]["mode"].as_str(), first["candidate"]["mode"].as_str()), (Some("active"), Some("standby")));
    for d in divergences {
        let r = b_records.iter().find(|r| r.tick.node.tick_count == d["tick"].as_u64().unwrap()).unwrap();
        assert!(d["node"] == "b" && (3..5).contains(&peer_failures(r)), "only the ticks between the 3rd and the 5th lost heartbeat differ: {d}");
    }
    // The exported scenario, run against the candidate, fails at the takeover step too.
    let test = run(&[OsStr::new("policy"), OsStr::new("test"), candidate.as_os_str(), b_toml.as_os_str(), OsStr::new("--plugin-dir"), plugin_dir.as_os_str()]);
    assert_eq!(test.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&test.stdout).contains("mode: expected active, got standby"), "{}", describe(&test));
    let table = run(&[OsStr::new("policy"), OsStr::new("replay"), candidate.as_os_str(), b_lines.as_os_str(), OsStr::new("--plugin-dir"), plugin_dir.as_os_str()]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("RECORDED") && table.contains("candidate: ") && table.contains("diverge"), "{table}");
}
