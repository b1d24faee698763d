//! Benchmarks on real local groups of `vigil run` processes (release build): failover after kill -9,
//! initial sync of a large store, and how soon one changed key reaches the peer.

use hyper::Method;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vigil::cluster::{exactly_one_active, Cluster, PairSpec, Timing, ADMIN_TOKEN};
use vigil::http_client::HttpClient;
use vigil::model::Mode;
use vigil::replication::store::{Patterns, Scopes, Store, CONFIG};

/// The release `vigil`, built by `cargo xtask bench`.
pub(crate) fn exe() -> anyhow::Result<PathBuf> {
    let bin = vigil_tests::root().join("target/release/vigil");
    anyhow::ensure!(bin.is_file(), "{} is missing: run `cargo xtask bench` (it builds it)", bin.display());
    Ok(bin)
}

fn spec(timing: Timing) -> PairSpec {
    PairSpec { timing, params: String::new(), plugin_dirs: vec![vigil_tests::plugins_dir()] }
}

fn stats(mut d: Vec<Duration>) -> String {
    d.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    format!("p50 {} · max {} · min {} ({} runs)", ms(d[d.len() / 2]), ms(d[d.len() - 1]), ms(d[0]), d.len())
}

/// Failover time over `runs` kill -9 of the active node: interval 100 ms, 3 failures, timeout 100 ms.
pub async fn failover(runs: usize) -> anyhow::Result<()> {
    // The same runs as the TLS benchmark's plain rows.
    let times = crate::tls::failover(&exe()?, false, runs).await?;
    crate::row(
        "failover after kill -9 (interval 100 ms, 3 failures, timeout 100 ms; bound 500 ms)",
        stats(times),
    );
    let times = failover_arbiter(&exe()?, runs).await?;
    crate::row(
        "failover after kill -9 with the etcd arbiter (3 etcd members, lease 1 s, margin 250 ms; interval 100 ms, 3 failures)",
        stats(times),
    );
    Ok(())
}

/// Failover after kill -9 of the active node of a hot-standby pair fenced by the etcd arbiter: the
/// standby takes the role once the dead node's lease has ended. One 3-member etcd cluster (Debian's
/// `etcd-server`) for every run, a key prefix per run.
async fn failover_arbiter(exe: &Path, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let etcd_dir = tempfile::tempdir()?;
    let etcd = vigil_tests::etcd::Etcd::start(etcd_dir.path(), 3);
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let mut times = Vec::new();
    for run in 0..runs {
        let dir = tempfile::tempdir()?;
        let timing = Timing { interval_ms: 100, timeout_ms: 100, failures: 3, successes: 3 };
        let mut c = Cluster::hot_standby_pair(exe, dir.path(), &spec(timing))?;
        for i in 0..2 {
            c.spec_mut(i).extra_config = format!(
                "\n[arbiter]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"/vigil-bench/{run}\"\nttl_ms = 1000\nsafety_margin_ms = 250\n",
                endpoints.join(", ")
            );
        }
        c.start(0)?;
        c.start(1)?;
        let active = c.wait_for(Duration::from_secs(20), exactly_one_active).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let survivor = 1 - active;
        let killed = Instant::now();
        c.kill(active);
        c.wait_for(Duration::from_secs(10), |m| (m[survivor] == Some(Mode::Active)).then_some(())).await?;
        times.push(killed.elapsed());
    }
    drop(etcd);
    Ok(times)
}

async fn items(http: &HttpClient, url: &str) -> Option<(u64, String)> {
    let a = http.get(&format!("{url}/status"), Duration::from_secs(2)).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
    Some((v["sync"]["items"].as_u64()?, v["sync"]["initial"].as_str()?.to_string()))
}

fn fill(data: &Path, node: &str, keys: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(data)?;
    let store = Store::open(&data.join("store.sqlite"), node, Patterns::default(), Scopes::default())?;
    let value = vec![b'v'; 1024];
    let now = vigil::clock::Clock::wall_ms(&*vigil::clock::SystemClock::new());
    for i in 0..keys {
        store.put(CONFIG, &format!("key/{i:06}"), value.clone(), None, now + i as u64)?;
    }
    Ok(())
}

/// Initial sync of `keys` keys of 1 KB from an active node to a node that starts.
pub async fn initial_sync(keys: usize) -> anyhow::Result<()> {
    let exe = exe()?;
    let dir = tempfile::tempdir()?;
    let mut c = Cluster::hot_standby_pair(&exe, dir.path(), &spec(Timing { interval_ms: 200, timeout_ms: 200, failures: 3, successes: 3 }))?;
    let started = Instant::now();
    fill(&c.nodes[0].dir.join("data"), "a", keys)?;
    let filled = started.elapsed();
    c.start(0)?;
    c.wait_for(Duration::from_secs(20), |m| (m[0] == Some(Mode::Active)).then_some(())).await?;
    let http = HttpClient::new();
    let t0 = Instant::now();
    c.start(1)?;
    let mut answered = None;
    loop {
        if let Some((n, initial)) = items(&http, &c.nodes[1].url).await {
            answered.get_or_insert_with(|| t0.elapsed());
            if n == keys as u64 && initial == "done" {
                break;
            }
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(120), "no convergence in 120 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = t0.elapsed();
    let answered = answered.unwrap_or_default();
    crate::row(
        &format!("initial sync of {keys} keys of 1 KB, a → b on loopback (target < 5 s)"),
        format!(
            "{:.2} s from b's start to all keys applied ({:.2} s after b first answered); filling a's store took {:.1} s",
            total.as_secs_f64(),
            (total - answered).as_secs_f64(),
            filled.as_secs_f64()
        ),
    );
    Ok(())
}

/// How soon one key written on a is readable on b, `runs` times.
pub async fn key_latency(runs: usize, interval_ms: u64) -> anyhow::Result<()> {
    let exe = exe()?;
    let dir = tempfile::tempdir()?;
    let mut c = Cluster::hot_standby_pair(&exe, dir.path(), &spec(Timing { interval_ms, timeout_ms: interval_ms, failures: 3, successes: 3 }))?;
    c.start(0)?;
    c.start(1)?;
    c.wait_for(Duration::from_secs(20), exactly_one_active).await?;
    let http = HttpClient::new();
    let auth = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
    let mut times = Vec::new();
    for run in 0..runs {
        let value = format!("value-{run}");
        let url_a = format!("{}/config/bench-key", c.nodes[0].url);
        let url_b = format!("{}/config/bench-key", c.nodes[1].url);
        let t0 = Instant::now();
        let put = http.send(Method::PUT, &url_a, &auth, value.clone().into(), Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(put.status == 200, "PUT: {}", put.status);
        loop {
            let a = http.send(Method::GET, &url_b, &auth, Default::default(), Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
            if a.status == 200 && a.body == value.as_bytes() {
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "the key never arrived");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(t0.elapsed());
        // Start the next write at a random point of the heartbeat cycle.
        tokio::time::sleep(Duration::from_millis(37 + (run as u64 * 53) % interval_ms)).await;
    }
    crate::row(
        &format!("one changed key visible on the peer (interval {interval_ms} ms; target ≤ interval + 50 ms)"),
        stats(times),
    );
    Ok(())
}
