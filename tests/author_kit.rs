//! The policy author kit (issue 15), through the real binary, from directories outside the workspace:
//! `vigil policy new` for Rust and for Python, `vigil policy build` (cargo for wasm32-wasip2;
//! componentize-py from PyPI), `vigil policy test` on the project's own scenarios; the Python port of
//! the hot-standby rules against the hot-standby scenario suite; and a live pair deciding with the
//! Python policy failing over on kill -9.
//!
//! Needs what a user needs: cargo with rustup, Python 3 with venv and pip, and the registries
//! (crates.io, PyPI). `.ci/run` makes sure of Python's venv.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vigil::cluster::{exactly_one_active, Cluster, PairSpec, Timing};
use vigil::model::Mode;
use vigil_tests::{describe, root, vigil};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn ok(args: &[&OsStr]) -> String {
    let out = vigil(args);
    assert!(out.status.success(), "vigil {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `vigil policy new NAME --lang LANG --dir DIR`, then `vigil policy build DIR`.
fn new_and_build(dir: &Path, name: &str, lang: &str) -> PathBuf {
    let project = dir.join(name);
    let said = ok(&[os("policy"), os("new"), os(name), os("--lang"), os(lang), os("--dir"), project.as_os_str()]);
    assert!(said.contains("vigil policy build"), "{said}");
    assert!(!project.starts_with(root()), "the project must live outside the workspace");
    let built = ok(&[os("policy"), os("build"), project.as_os_str()]);
    assert!(built.starts_with("ok: ") && built.contains(&format!("plugin {name} ")), "{built}");
    assert!(project.join(format!("build/{name}.wasm")).is_file());
    project
}

/// `vigil policy test POLICY SCENARIOS…`: the output, and whether it passed.
fn policy_test(policy: &Path, scenarios: &[PathBuf]) -> (bool, String) {
    let mut args = vec![os("policy"), os("test"), policy.as_os_str()];
    args.extend(scenarios.iter().map(|s| s.as_os_str()));
    let out = vigil(&args);
    (out.status.success(), describe(&out))
}

fn scenarios_of(project: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(project.join("scenarios")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// The project's scenarios pass; a changed rule (the standby waits for 5 failures, not 3) makes the
/// failover scenario fail at the step that switches, and a bad parameter is refused by name.
fn check_project(project: &Path, lang: &str) {
    let policy = project.join("policy.toml");
    let (passed, out) = policy_test(&policy, &scenarios_of(project));
    assert!(passed && out.contains("2 passed, 0 failed"), "{lang}: {out}");

    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("# failures = 3 ", "failures = 5 ")).unwrap();
    let (passed, out) = policy_test(&policy, &scenarios_of(project));
    assert!(!passed && out.contains("FAIL") && out.contains("failover.toml") && out.contains("1 passed, 1 failed"), "{lang}: {out}");

    std::fs::write(&policy, text.replace("failback = false", "failback = \"no\"")).unwrap();
    let out = vigil(&[os("policy"), os("check"), policy.as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "{lang}: {}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("params.failback"), "{lang}: the message names the parameter: {err}");
    std::fs::write(&policy, text).unwrap();
}

#[test]
fn a_rust_project_from_vigil_policy_new_builds_outside_the_workspace_and_passes_its_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let project = new_and_build(dir.path(), "my-failover", "rust");
    assert!(project.join("vendor/vigil-sdk/wit/policy.wit").is_file(), "the SDK and its WIT are vendored");
    check_project(&project, "rust");
}

#[test]
fn a_python_project_from_vigil_policy_new_builds_with_componentize_py_and_passes_the_same_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let project = new_and_build(dir.path(), "py-failover", "python");
    check_project(&project, "python");
    // The interface the project was built against is the one `vigil policy wit` prints.
    let wit = ok(&[os("policy"), os("wit")]);
    assert_eq!(std::fs::read_to_string(project.join("wit/policy.wit")).unwrap(), wit);
}

/// The Python port of the hot-standby rules, built once: `vigil policy new --lang python`, its
/// `app.py` replaced by the port.
fn python_hot_standby() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("hot-standby-py").tempdir().unwrap().keep();
        // The port's README says how it is built: this way.
        let readme = std::fs::read_to_string(root().join("plugins/hot-standby-py/README.md")).unwrap();
        assert!(readme.contains("vigil policy new hot-standby-py --lang python"), "plugins/hot-standby-py/README.md");
        vigil_tests::build_python_port(vigil_tests::vigil_bin(), &dir).unwrap()
    })
}

/// Every hot-standby policy variant, its plugin replaced by the Python port (with the Python limits),
/// against its whole scenario directory, unchanged.
#[test]
fn the_python_port_of_hot_standby_passes_every_hot_standby_scenario() {
    let project = python_hot_standby();
    let wasm = project.join("build/hot-standby-py.wasm");
    let mut total = 0;
    for variant in ["hot-standby", "hot-standby-app-error", "hot-standby-autofailback", "hot-standby-group", "hot-standby-vip"] {
        let rust = std::fs::read_to_string(root().join(format!("policies/{variant}.toml"))).unwrap();
        let python = rust
            .replacen("plugin = \"hot-standby\"", &format!("plugin = {:?}", wasm.display().to_string()), 1)
            .replacen("\ntime_ms = 50\n", "\ntime_ms = 500\nmemory_mib = 48\n", 1);
        assert!(python.contains("hot-standby-py.wasm") && python.contains("memory_mib = 48"), "{variant}: the policy file changed shape");
        let policy = project.join(format!("{variant}.toml"));
        std::fs::write(&policy, python).unwrap();
        let dir = root().join("tests/scenarios").join(variant);
        let mut scenarios: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        scenarios.sort();
        let (passed, out) = policy_test(&policy, &scenarios);
        assert!(passed && out.contains(&format!("{} passed, 0 failed", scenarios.len())), "{variant}: {out}");
        total += scenarios.len();
    }
    assert!(total >= 63, "{total} scenarios");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_pair_deciding_with_the_python_policy_fails_over_on_kill_9() {
    let project = python_hot_standby();
    let wasm = project.join("build/hot-standby-py.wasm");
    let dir = tempfile::tempdir().unwrap();
    // The interval leaves room for a Python call (milliseconds; bench/README.md).
    let timing = Timing { interval_ms: 200, timeout_ms: 200, failures: 3, successes: 3 };
    let spec = PairSpec { timing, params: String::new(), plugin_dirs: Vec::new() };
    let limits = "\n[limits]\ntime_ms = 500\nmemory_mib = 48\n";
    let mut cluster = Cluster::hot_standby_pair_with(vigil_tests::vigil_bin(), dir.path(), &spec, &wasm.display().to_string(), limits).unwrap();
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    // The first start compiles the 18 MB component (cached in the data directory afterwards).
    let first = cluster.wait_for(Duration::from_secs(120), exactly_one_active).await.expect("the pair settles with one active node");
    assert_eq!(first, 0, "the primary takes the role");
    assert!(vigil::cluster::eventually(Duration::from_secs(10), || cluster.nodes[0].service_marker().exists()).await);

    let killed = Instant::now();
    cluster.kill(0);
    cluster.wait_for(Duration::from_secs(10), |m| (m[1] == Some(Mode::Active)).then_some(())).await.expect("b takes over");
    let failover = killed.elapsed();
    println!("python policy: failover after kill -9 in {} ms (3 x 200 ms heartbeats)", failover.as_millis());
    // The Rust pair's bound (failures x interval + timeout + interval), with room for a loaded machine.
    assert!(failover <= Duration::from_millis(3 * 200 + 200 + 200 + 1000), "failover took {failover:?}");
    assert!(vigil::cluster::eventually(Duration::from_secs(10), || cluster.nodes[1].service_marker().exists()).await, "b started its service");

    // The killed primary returns and stays standby (no automatic failback), as with the Rust plugin.
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(60), |m| (m[0] == Some(Mode::Standby)).then_some(())).await.expect("a returns standby");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.modes().await, vec![Some(Mode::Standby), Some(Mode::Active)]);
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        assert!(!log.contains("plugin fault"), "node {}: no plugin faults: {log}", node.id);
    }
}
