//! A Python policy beside the Rust one (issue 15): the hot-standby rules as the Rust plugin and as
//! their Python port (`plugins/hot-standby-py`, built with `vigil policy new --lang python` and
//! `vigil policy build`), each call on a fresh instance as the daemon makes it. Per-tick p50/p99 and
//! the load time, cold (compile) and from the compile cache.

use crate::{bench_decide_n, load_times, row};
use vigil::policy::{load, PluginDirs, Runtime};

pub(crate) fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let started = std::time::Instant::now();
    let project = vigil_tests::build_python_port(&crate::cluster::exe()?, dir.path())?;
    row("`vigil policy new` + `vigil policy build` of the Python port (componentize-py, then a check)", format!("{:.1} s", started.elapsed().as_secs_f64()));

    let runtime = Runtime::new(None)?;
    let dirs = PluginDirs(vec![vigil_tests::plugins_dir()]);
    let rust = load(&runtime, &dirs, &vigil_tests::root().join("policies/hot-standby.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    bench_decide_n("hot-standby, Rust", &rust, Vec::new(), 200, 5_000)?;
    let python = load(&runtime, &dirs, &project.join("policy.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    bench_decide_n("hot-standby-py, Python", &python, Vec::new(), 20, 500)?;

    load_times("hot-standby", &vigil_tests::plugins_dir().join("hot-standby.wasm"), 3)?;
    load_times("hot-standby-py", &project.join("build/hot-standby-py.wasm"), 3)?;
    Ok(())
}
