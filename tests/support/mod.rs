//! Shared helpers of the integration tests (and the benchmarks): where things are, how to run the real
//! `vigil` binary, temporary policy files, and a realistic tick.
//!
//! Nothing here fakes the product: plugins are the real components built by `cargo xtask plugins`,
//! the binary is the real `target/debug/vigil`, files are real files in temporary directories.

pub mod chaos;
pub mod etcd;
pub mod faketime;
pub mod netns;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::SystemTime;
use vigil::model::{Check, Heartbeat, LocalNode, Mode, Remote, Report, Role, Service, ServiceState, SyncView, Tick};
use vigil::policy::{LoadedPolicy, PluginDirs, PolicyError, Runtime};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// `target/plugins`, where `cargo xtask plugins` puts the components. Panics with what to do when
/// they are missing.
pub fn plugins_dir() -> PathBuf {
    let dir = root().join("target/plugins");
    for name in ["testkit", "wrong-world"] {
        let file = dir.join(format!("{name}.wasm"));
        assert!(file.is_file(), "{} is missing: run `cargo xtask plugins` first", file.display());
    }
    dir
}

/// The path of plugin `name` in [`plugins_dir`], which must exist.
pub fn plugin(name: &str) -> PathBuf {
    let file = plugins_dir().join(format!("{name}.wasm"));
    assert!(file.is_file(), "{} is missing: run `cargo xtask plugins` first", file.display());
    file
}

/// The `vigil` binary (`$CARGO_TARGET_DIR/debug/vigil`, else `target/debug/vigil`). It is built once
/// per test process when missing or older than a host source file, so the tests never exercise a
/// stale binary.
pub fn vigil_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
        let bin = target.join("debug/vigil");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let stale = match built {
            None => true,
            Some(built) => newest_mtime(&root().join("host")).is_some_and(|src| src > built),
        };
        if stale {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(root())
                .args(["build", "--quiet", "-p", "vigil", "--bin", "vigil"])
                .status()
                .expect("run cargo build -p vigil");
            assert!(status.success(), "cargo build -p vigil failed");
        }
        assert!(bin.is_file(), "{} is missing after cargo build -p vigil", bin.display());
        bin
    })
}

/// The newest modification time of the host crate's sources and manifest.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
                let modified = entry.metadata().and_then(|m| m.modified()).ok();
                newest = newest.max(modified);
            }
        }
    }
    newest
}

/// Run `vigil ARGS…` with a clean plugin environment and `RUST_BACKTRACE=1` (so a panic could not hide).
pub fn vigil(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(vigil_bin())
        .args(args)
        .env_remove("VIGIL_PLUGIN_DIR")
        .env("RUST_BACKTRACE", "1")
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil")
}

/// The Python port of the hot-standby rules (`plugins/hot-standby-py`) built as an author builds a
/// Python policy, with the `vigil` binary `exe`: `vigil policy new --lang python` into `dir`, the
/// port's `app.py` and `policy.toml` copied in, `vigil policy build`. Returns the project directory
/// (its component is `build/hot-standby-py.wasm`).
pub fn build_python_port(exe: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let project = dir.join("hot-standby-py");
    let run = |args: &[&std::ffi::OsStr]| -> anyhow::Result<()> {
        let out = Command::new(exe).args(args).env_remove("VIGIL_PLUGIN_DIR").output()?;
        anyhow::ensure!(out.status.success(), "vigil {args:?}: {}", describe(&out));
        Ok(())
    };
    let os = std::ffi::OsStr::new;
    run(&[os("policy"), os("new"), os("hot-standby-py"), os("--lang"), os("python"), os("--dir"), project.as_os_str()])?;
    let port = root().join("plugins/hot-standby-py");
    for file in ["app.py", "policy.toml"] {
        std::fs::copy(port.join(file), project.join(file))?;
    }
    run(&[os("policy"), os("build"), project.as_os_str()])?;
    Ok(project)
}

/// A process's output as text, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Write `text` to `dir/name` and return the path.
pub fn write_file(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A policy file for the testkit plugin (found by name in `target/plugins`) with these `[params]`
/// lines and anything after them (`[limits]`, `[services.…]`).
pub fn testkit_policy(dir: &Path, name: &str, params: &str, rest: &str) -> PathBuf {
    write_file(dir, name, format!("plugin = \"testkit\"\n\n[params]\n{params}\n\n{rest}\n"))
}

/// Plugin directories for library loads: only `target/plugins`.
pub fn dirs() -> PluginDirs {
    PluginDirs(vec![plugins_dir()])
}

/// A runtime without a compile cache.
pub fn runtime() -> Runtime {
    Runtime::new(None).expect("create the plugin runtime")
}

/// Load a policy through the full pipeline with [`dirs`].
pub fn load(runtime: &Runtime, policy: &Path) -> Result<LoadedPolicy, PolicyError> {
    vigil::policy::load(runtime, &dirs(), policy)
}

/// A plausible tick of a secondary node `b` in standby at `now_ms`: its peer `a` (active, two heartbeat
/// paths) answers, three services are stopped, and `state` is the plugin's previous state.
pub fn tick(now_ms: u64, state: Vec<u8>) -> Tick {
    let check = |name: &str| Check { name: name.into(), ok: true, consecutive_failures: 0, consecutive_successes: 42 };
    let service = |name: &str, app_check: bool| Service {
        name: name.into(),
        state: ServiceState::Stopped,
        app_check,
        watchdog: true,
        ..Service::default()
    };
    Tick {
        now_ms,
        node: LocalNode {
            id: "b".into(),
            configured_role: Role::Secondary,
            mode: Mode::Standby,
            mode_since_ms: now_ms.saturating_sub(3_600_000),
            started_ms: now_ms.saturating_sub(7_200_000),
            tick_count: 7_200,
            restart: None,
        },
        heartbeat: Heartbeat::default(),
        peers: vec![Remote {
            id: "a".into(),
            reachable: true,
            consecutive_failures: 0,
            consecutive_successes: 42,
            paths: vec![check("eth0"), check("eth1")],
            services: vec![],
            report: Some(Report {
                mode: Mode::Active,
                configured_role: Some(Role::Primary),
                app_healthy: Some(true),
                mode_since_ms: Some(now_ms.saturating_sub(3_600_000)),
            }),
            last_seen_ago_ms: Some(120),
        }],
        services: vec![service("app", true), service("db", true), service("cron", false)],
        sync: SyncView { last_ok_ms: Some(now_ms.saturating_sub(30_000)), ..SyncView::default() },
        state,
        ..Tick::default()
    }
}

/// The testkit's state (JSON) as a value.
pub fn state_json(state: &[u8]) -> serde_json::Value {
    serde_json::from_slice(state).unwrap_or_else(|e| panic!("state is not JSON ({e}): {:?}", String::from_utf8_lossy(state)))
}

/// xorshift64*: a small seeded generator, the same sequence everywhere for a seed (the simulation's
/// fault schedules, the parsers' mutants). A zero seed is replaced by one, as xorshift needs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}
