//! A Python policy beside the Rust one (issue 15): the hot-standby rules as the Rust plugin and as
//! their Python port (`plugins/hot-standby-py`, built with `vigil policy new --lang python` and
//! `vigil policy build`), each call on a fresh instance as the daemon makes it. Per-tick p50/p99 and
//! the load time, cold (compile) and from the compile cache.

use crate::{bench_decide_n, load_times, row};
use std::path::Path;
use std::process::Command;
use vigil::policy::{load, PluginDirs, Runtime};

fn vigil(exe: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let out = Command::new(exe).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "vigil {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

pub(crate) fn run() -> anyhow::Result<()> {
    let exe = crate::cluster::exe()?;
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("hot-standby-py");
    let os = std::ffi::OsStr::new;
    vigil(&exe, &[os("policy"), os("new"), os("hot-standby-py"), os("--lang"), os("python"), os("--dir"), project.as_os_str()])?;
    let port = vigil_tests::root().join("plugins/hot-standby-py");
    for file in ["app.py", "policy.toml"] {
        std::fs::copy(port.join(file), project.join(file))?;
    }
    let started = std::time::Instant::now();
    vigil(&exe, &[os("policy"), os("build"), project.as_os_str()])?;
    row("`vigil policy build` of the Python port (componentize-py, then a check)", format!("{:.1} s", started.elapsed().as_secs_f64()));

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
