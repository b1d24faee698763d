//! Fault suite on real processes: a frozen node (SIGSTOP: alive, holding its sockets, answering
//! nothing) and a flapping link. After each fault the pair must settle with exactly one active node.

use std::time::{Duration, Instant};
use vigil::cluster::{exactly_one_active, Cluster, LinkProxy, PairSpec, Timing};
use vigil::model::Mode;
use vigil_tests::{plugins_dir, vigil_bin};

const INTERVAL: u64 = 100;

fn spec() -> PairSpec {
    PairSpec {
        timing: Timing { interval_ms: INTERVAL, timeout_ms: INTERVAL, failures: 3, successes: 3 },
        params: String::new(),
        plugin_dirs: vec![plugins_dir()],
    }
}

/// Exactly one node active for `hold` in a row (sampled every 20 ms), within `limit`.
async fn settles(cluster: &Cluster, limit: Duration, hold: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut since: Option<(Instant, usize)> = None;
    loop {
        let modes = cluster.modes().await;
        match (exactly_one_active(&modes), since) {
            (Some(i), Some((t, j))) if i == j => {
                if t.elapsed() >= hold {
                    return i;
                }
            }
            (Some(i), _) => since = Some((Instant::now(), i)),
            (None, _) => since = None,
        }
        assert!(Instant::now() < deadline, "no stable single active node within {limit:?}; modes {modes:?}\n{}", cluster.logs(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_active_node_is_replaced_and_the_pair_settles_when_it_thaws() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec()).unwrap();
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    assert_eq!(settles(&cluster, Duration::from_secs(20), Duration::from_millis(500)).await, 0);

    cluster.freeze(0);
    let frozen = Instant::now();
    cluster
        .wait_for(Duration::from_secs(5), |m| (m[1] == Some(Mode::Active)).then_some(()))
        .await
        .expect("the standby takes over from a frozen active node");
    println!("takeover from a frozen node after {} ms", frozen.elapsed().as_millis());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Thawed, `a` still believes it is active: two actives, resolved by the policy's rules.
    cluster.thaw(0);
    let active = settles(&cluster, Duration::from_secs(10), Duration::from_secs(1)).await;
    println!("after the thaw, {} keeps the role", cluster.nodes[active].id);
    assert!(
        vigil::cluster::eventually(Duration::from_secs(5), || !cluster.nodes[1 - active].service_marker().exists()).await,
        "the node that stepped down stopped its service"
    );
}

/// A standby VM paused and resumed (SIGSTOP for 3 s, 30 heartbeat intervals): on resume its last
/// answer from the active node is seconds old, but it sent no probe meanwhile, so deadline-based
/// detection has nothing to cut short: its first rounds reach the active node and it stays standby.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_standby_resumes_as_standby() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec()).unwrap();
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    assert_eq!(settles(&cluster, Duration::from_secs(20), Duration::from_millis(500)).await, 0);

    cluster.freeze(1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.thaw(1);
    // Sampled for 2 s (20 intervals): a is the only active node throughout.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let modes = cluster.modes().await;
        assert_ne!(modes[1], Some(Mode::Active), "the resumed standby took the role from a live active node: {modes:?}");
        assert_eq!(modes[0], Some(Mode::Active), "{modes:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!cluster.nodes[1].service_marker().exists(), "the standby started nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_link_ends_with_exactly_one_active_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec()).unwrap();
    let a_to_b = LinkProxy::start(cluster.listen_addr(1)).await.unwrap();
    let b_to_a = LinkProxy::start(cluster.listen_addr(0)).await.unwrap();
    cluster.spec_mut(0).peer_paths = vec![("b".into(), vec![("link".into(), a_to_b.url())])];
    cluster.spec_mut(1).peer_paths = vec![("a".into(), vec![("link".into(), b_to_a.url())])];
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    settles(&cluster, Duration::from_secs(20), Duration::from_millis(500)).await;

    // 4 s of a link that flaps at irregular periods around the failure threshold.
    let periods = [120u64, 380, 90, 450, 200, 310, 60, 520, 150, 260, 410, 180, 330, 240];
    for (n, ms) in periods.iter().enumerate() {
        if n % 2 == 0 {
            a_to_b.cut();
            b_to_a.cut();
        } else {
            a_to_b.heal();
            b_to_a.heal();
        }
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
    a_to_b.heal();
    b_to_a.heal();
    let active = settles(&cluster, Duration::from_secs(10), Duration::from_secs(1)).await;
    assert!(cluster.nodes[active].service_marker().exists(), "the active node runs its service");
    assert!(
        vigil::cluster::eventually(Duration::from_secs(5), || !cluster.nodes[1 - active].service_marker().exists()).await,
        "the standby node runs none"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skewed_peer_clock_is_measured_and_reported() {
    // b's wall clock runs 5 s ahead: within the 30 s signature window, over the default 2 s warning
    // threshold.
    let Some(skewed) = vigil_tests::faketime::skewed_clock("+5s") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec()).unwrap();
    cluster.spec_mut(1).env = skewed;
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    settles(&cluster, Duration::from_secs(20), Duration::from_millis(300)).await;

    let http = vigil::http_client::HttpClient::new();
    let status = http.get(&format!("{}/status", cluster.nodes[0].url), Duration::from_secs(2)).await.unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let skew = status["peers"][0]["clock_skew_ms"].as_i64().expect("a measures b's clock");
    println!("a sees b's clock {skew} ms ahead");
    assert!((4_000..=6_000).contains(&skew), "skew {skew} ms, expected about +5000");

    let metrics = http.get(&format!("{}/metrics", cluster.nodes[0].url), Duration::from_secs(2)).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let skew_s: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vigil_peer_clock_skew_seconds{peer=\"b\"} ")?.parse().ok())
        .unwrap_or_else(|| panic!("no skew of b in {metrics}"));
    assert!((4.0..=6.0).contains(&skew_s), "skew {skew_s} s in /metrics, expected about +5");
    let (code, events) = cluster.admin(0, hyper::Method::GET, "/events").await.unwrap();
    assert_eq!(code, 200);
    assert!(events.contains("clock skew with b is"), "an event tells the operator: {events}");
    assert!(events.contains("NTP"), "and says what to fix: {events}");
}
