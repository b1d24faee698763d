//! vigil's benchmarks: what one plugin tick and one hot reload cost, measured on the real runtime with
//! the real plugins (`cargo xtask plugins` first).
//!
//! `cargo run --release -p vigil-bench -- [tick|reload|all]` prints the figures as Markdown table
//! rows for `bench/README.md`. Plain `Instant` timing over thousands of calls is enough here: the
//! questions are "is a tick far below a heartbeat interval" and "how soon does an edit take effect",
//! not nanosecond differences.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vigil::model::Tick;
use vigil::policy::reload::{self, PolicyHandle};
use vigil::policy::{load, LoadedPolicy, PluginDirs, Runtime};

const WARM_UP: usize = 200;
const CALLS: usize = 5_000;
const RELOAD_RUNS: usize = 20;
/// The debounce the daemon uses for policy file events.
const DEBOUNCE: Duration = Duration::from_millis(200);

mod cluster;
mod http;
mod nginx;
mod python;
mod recorder;
mod relay;
mod tls;
mod vip;

const USAGE: &str = "usage: vigil-bench [tick|python|recorder|reload|relay|failover|sync|vip|idle|http|tls|all]";

fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if !matches!(what.as_str(), "tick" | "python" | "recorder" | "reload" | "relay" | "failover" | "sync" | "vip" | "idle" | "http" | "tls" | "all") {
        anyhow::bail!(USAGE);
    }
    let wants = |name: &str| what == name || what == "all";
    println!("| benchmark | figure |");
    println!("|---|---|");
    if wants("tick") {
        ticks()?;
    }
    if wants("python") {
        python::run()?;
    }
    if wants("recorder") {
        recorder::run()?;
    }
    if wants("reload") {
        reloads()?;
    }
    if wants("relay") {
        print!("{}", relay::run()?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if wants("failover") {
        rt.block_on(cluster::failover(20))?;
    }
    if wants("http") {
        rt.block_on(http::run(&cluster::exe()?))?;
    }
    if wants("vip") {
        vip::run(&cluster::exe()?, 20)?;
    }
    if wants("idle") {
        vip::idle(&cluster::exe()?, 600)?;
    }
    if wants("tls") {
        rt.block_on(tls::run(20))?;
    }
    if wants("sync") {
        rt.block_on(cluster::initial_sync(100_000))?;
        rt.block_on(cluster::key_latency(20, 200))?;
        rt.block_on(cluster::key_latency(20, 1000))?;
    }
    Ok(())
}

/// Durations sorted, with the usual summaries.
pub(crate) struct Sample(Vec<Duration>);

impl Sample {
    pub(crate) fn new(mut d: Vec<Duration>) -> Sample {
        d.sort();
        Sample(d)
    }
    pub(crate) fn pct(&self, p: usize) -> Duration {
        self.0[(self.0.len() * p / 100).min(self.0.len() - 1)]
    }
    pub(crate) fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / self.0.len() as u32
    }
    fn max(&self) -> Duration {
        *self.0.last().expect("a non-empty sample")
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn row(name: &str, figure: String) {
    println!("| {name} | {figure} |");
}

/// A policy for `plugin` in `dir`, declaring the three services of the bench tick.
fn write_policy(dir: &Path, name: &str, plugin: &str, params: &str) -> anyhow::Result<PathBuf> {
    let mut text = format!("plugin = \"{plugin}\"\n\n[params]\n{params}\n");
    for service in ["app", "db", "cron"] {
        text.push_str(&format!("\n[services.{service}]\nstart = \"true\"\nstop = \"true\"\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `decide` on the realistic tick (1 peer, 2 paths, 3 services, 200 state bytes), carrying the state
/// from call to call as the node does. Every call decides in a fresh instance of the plugin: made
/// between calls, as the node loop does (`LoadedPolicy::prepare`, timed on its own), then made inside
/// the call, as scenario runs do.
fn bench_decide(label: &str, policy: &LoadedPolicy, state: Vec<u8>) -> anyhow::Result<()> {
    // `VIGIL_BENCH_CALLS=N`: more calls, for a profiler to sample.
    let calls = std::env::var("VIGIL_BENCH_CALLS").ok().and_then(|n| n.parse().ok()).unwrap_or(CALLS);
    bench_decide_n(label, policy, state, WARM_UP, calls)
}

fn bench_decide_n(label: &str, policy: &LoadedPolicy, state: Vec<u8>, warm_up: usize, calls: usize) -> anyhow::Result<()> {
    // As the node loop runs it: the next fresh instance prepared between ticks (timed on its own).
    let (tick_state, decide, prepare) = decide_loop(label, policy, state.clone(), warm_up, calls, true)?;
    row(
        &format!("tick, {label} ({calls} calls, state {} B)", tick_state),
        format!("p50 {} · p90 {} · p95 {} · p99 {} · max {}", us(decide.pct(50)), us(decide.pct(90)), us(decide.pct(95)), us(decide.pct(99)), us(decide.max())),
    );
    if let Some(prepare) = prepare {
        row(
            &format!("tick, {label}: the fresh instance made between ticks ({calls} calls)"),
            format!("p50 {} · p99 {} · max {}", us(prepare.pct(50)), us(prepare.pct(99)), us(prepare.max())),
        );
    }
    // Without preparing: the instance made inside the call, as scenario runs and replays do.
    let (_, whole, _) = decide_loop(label, policy, state, warm_up, calls, false)?;
    row(
        &format!("tick, {label}, instance made inside the call ({calls} calls)"),
        format!("p50 {} · p99 {} · max {}", us(whole.pct(50)), us(whole.pct(99)), us(whole.max())),
    );
    Ok(())
}

/// `calls` timed decisions after `warm_up` untimed ones: the state size at the end, the decisions'
/// times, and the preparations' times when `prepare`.
fn decide_loop(label: &str, policy: &LoadedPolicy, state: Vec<u8>, warm_up: usize, calls: usize, prepare: bool) -> anyhow::Result<(usize, Sample, Option<Sample>)> {
    let peers = vec!["a".to_string()];
    let mut tick: Tick = vigil_tests::tick(1_700_000_000_000, state);
    let (mut times, mut prepared) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for i in 0..warm_up + calls {
        tick.now_ms += 1000;
        tick.node.tick_count += 1;
        let started = Instant::now();
        let decision = policy.decide(&tick, &peers).map_err(|f| anyhow::anyhow!("{label}: fault {f}"))?;
        let took = started.elapsed();
        tick.state = decision.state;
        let started = Instant::now();
        if prepare {
            policy.prepare();
        }
        let preparing = started.elapsed();
        if i >= warm_up {
            times.push(took);
            prepared.push(preparing);
        }
    }
    Ok((tick.state.len(), Sample::new(times), prepare.then(|| Sample::new(prepared))))
}

fn ticks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dirs = PluginDirs(vec![vigil_tests::plugins_dir()]);
    let runtime = Runtime::new(None)?;

    // 200 bytes of state: {"ticks":N,"padding":"xxx…"}.
    let state = format!("{{\"ticks\":1,\"padding\":\"{}\"}}", "x".repeat(200 - 24)).into_bytes();
    let testkit = write_policy(dir.path(), "testkit.toml", "testkit", "mode = \"standby\"\nstart = [\"app\"]")?;
    let policy = load(&runtime, &dirs, &testkit).map_err(|e| anyhow::anyhow!("{e}"))?;
    bench_decide("testkit", &policy, state)?;

    let hot = vigil_tests::root().join("policies/hot-standby.toml");
    let hot = if hot.is_file() { hot } else { write_policy(dir.path(), "hot-standby.toml", "hot-standby", "")? };
    match load(&runtime, &dirs, &hot) {
        Ok(policy) => bench_decide("hot-standby", &policy, Vec::new())?,
        Err(e) => row("tick, hot-standby", format!("skipped: does not load yet ({e})")),
    }

    // Compile (cold, empty cache) against a cache hit, for each plugin: a fresh runtime every time, as
    // a daemon start would have.
    for name in ["testkit", "hot-standby"] {
        load_times(name, &vigil_tests::plugins_dir().join(format!("{name}.wasm")), 5)?;
    }
    Ok(())
}

/// Load `wasm` `runs` times with an empty compile cache and as many with a cache hit.
fn load_times(name: &str, wasm: &Path, runs: usize) -> anyhow::Result<()> {
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let cache = tempfile::tempdir()?;
        let rt = Runtime::new(Some(cache.path().to_path_buf()))?;
        let started = Instant::now();
        let plugin = rt.load(wasm)?;
        cold.push(started.elapsed());
        assert!(!plugin.from_cache());
        let rt = Runtime::new(Some(cache.path().to_path_buf()))?;
        let started = Instant::now();
        let plugin = rt.load(wasm)?;
        warm.push(started.elapsed());
        assert!(plugin.from_cache());
    }
    let (cold, warm) = (Sample::new(cold), Sample::new(warm));
    let size = std::fs::metadata(wasm)?.len() / 1024;
    row(&format!("load {name}.wasm ({size} KiB), compile (cold), {runs} runs"), format!("p50 {} · max {}", ms(cold.pct(50)), ms(cold.max())));
    row(&format!("load {name}.wasm, compile cache hit, {runs} runs"), format!("p50 {} · max {}", ms(warm.pct(50)), ms(warm.max())));
    Ok(())
}

fn reloads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let wasm = dir.path().join("testkit.wasm");
    std::fs::copy(vigil_tests::plugin("testkit"), &wasm)?;
    let text = |mode: &str| format!("plugin = \"testkit.wasm\"\n\n[params]\nmode = \"{mode}\"\n");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, text("standby"))?;
    // The daemon keeps a compile cache in its data directory: a params edit does not recompile.
    let runtime = Arc::new(Runtime::new(Some(cache.path().to_path_buf()))?);
    let dirs = PluginDirs(Vec::new());

    // The load pipeline alone (parse, resolve, cache hit, validate, dry run); the first load fills
    // the cache and is not counted.
    load(&runtime, &dirs, &path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut pipeline = Vec::new();
    for _ in 0..RELOAD_RUNS {
        let started = Instant::now();
        load(&runtime, &dirs, &path).map_err(|e| anyhow::anyhow!("{e}"))?;
        pipeline.push(started.elapsed());
    }
    let pipeline = Sample::new(pipeline);
    row(&format!("load pipeline alone, cached plugin, {RELOAD_RUNS} runs"), format!("p50 {} · max {}", ms(pipeline.pct(50)), ms(pipeline.max())));

    let handle = PolicyHandle::new(load(&runtime, &dirs, &path).map_err(|e| anyhow::anyhow!("{e}"))?);
    let _watcher = reload::watch(handle.clone(), runtime.clone(), dirs, DEBOUNCE, |_| {})?;
    let mut latencies = Vec::new();
    for run in 0..RELOAD_RUNS {
        let mode = if run % 2 == 0 { "active" } else { "standby" };
        let generation = handle.generation();
        let written = Instant::now();
        std::fs::write(&path, text(mode))?;
        loop {
            if handle.generation() != generation {
                let d = handle.current().decide(&vigil_tests::tick(1_000, Vec::new()), &[]).map_err(|f| anyhow::anyhow!("{f}"))?;
                anyhow::ensure!(d.mode.map(|m| m.as_str()) == Some(mode), "run {run}: the new params do not decide");
                break;
            }
            anyhow::ensure!(written.elapsed() < Duration::from_secs(10), "run {run}: no reload within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(written.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = Sample::new(latencies);
    row(
        &format!("reload: write → new params deciding, debounce {} ms, {RELOAD_RUNS} runs", DEBOUNCE.as_millis()),
        format!("p50 {} · max {}", ms(s.pct(50)), ms(s.max())),
    );
    Ok(())
}
