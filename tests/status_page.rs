//! The status page (`/`) in a real headless Chromium: the page fetches `/status` itself and renders
//! the node, its mode, its peer and its events. `.ci/run` installs Debian's chromium; without it the
//! test says it skipped.

use std::process::Command;
use std::time::Duration;
use vigil::cluster::{exactly_one_active, Cluster, PairSpec, Timing};
use vigil_tests::{plugins_dir, vigil_bin};

/// The DOM after the page's scripts ran (virtual time lets its first refresh finish).
fn rendered(url: &str, profile: &std::path::Path) -> Option<String> {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_renders_the_live_status_in_chromium() {
    if Command::new("chromium").arg("--version").output().is_err() {
        println!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = PairSpec { timing: Timing { interval_ms: 200, timeout_ms: 150, failures: 3, successes: 3 }, params: String::new(), plugin_dirs: vec![plugins_dir()] };
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec).unwrap();
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let active = cluster.wait_for(Duration::from_secs(20), exactly_one_active).await.unwrap();
    let url = format!("{}/", cluster.nodes[active].url);
    let profile = dir.path().join("chromium-profile");
    let dom = tokio::task::spawn_blocking(move || rendered(&url, &profile)).await.unwrap().expect("chromium runs");

    let id = &cluster.nodes[active].id;
    let peer = &cluster.nodes[1 - active].id;
    assert!(dom.contains(&format!("<span id=\"node\">{id} (")), "the node's id is shown:\n{dom}");
    assert!(dom.contains("class=\"mode active\">ACTIVE</span>"), "the mode is shown, styled as active:\n{dom}");
    assert!(dom.contains(&format!("<td>{peer}</td><td>yes</td>")), "the peer is listed as reachable:\n{dom}");
    assert!(dom.contains("<td>cti</td><td>running</td>"), "the service is listed as running:\n{dom}");
    assert!(dom.contains("plugin hot-standby"), "the policy is shown:\n{dom}");
    assert!(dom.contains("<td>decision</td>"), "the event log is shown:\n{dom}");
}
