//! `VIGIL_LOG_FORMAT` through the real binary (issue 13 item 6): `json` makes every log line of
//! `vigil run` a JSON object with `level`, `fields` and `target`; an unknown value is refused at
//! start, naming the variable and the accepted values.

use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::model::Role;
use vigil_tests::{plugins_dir, vigil_bin};

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(vigil_bin(), dir.path(), Timing::default(), vec![plugins_dir()]).unwrap();
    let mut spec = NodeSpec::new("a", Role::Primary, "plugin = \"testkit\"\n\n[params]\nmode = \"standby\"\n");
    spec.env.push(("VIGIL_LOG_FORMAT".into(), "json".into()));
    let i = cluster.add(spec).unwrap();
    cluster.start(i).unwrap();
    // The daemon logs its start; a few ticks later SIGTERM logs the shutdown.
    let log = cluster.nodes[i].log.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && std::fs::read_to_string(&log).unwrap_or_default().trim().is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    cluster.stop(i);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "too few log lines:\n{text}");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["level", "fields", "target", "timestamp"] {
            assert!(value.get(key).is_some(), "no `{key}` in {line}");
        }
        assert!(value["fields"].is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"stopping\"")), "the shutdown is logged:\n{text}");
}

#[test]
fn unknown_log_format_is_refused() {
    let output = std::process::Command::new(vigil_bin())
        .args(["run", "--config", "/nonexistent/node.toml"])
        .env("VIGIL_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("VIGIL_LOG_FORMAT=yaml") && stderr.contains("text, json"), "{stderr}");
    assert!(!stderr.contains("node.toml"), "refused before the configuration is read: {stderr}");
}
