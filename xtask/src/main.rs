//! The project's own commands, run as `cargo xtask COMMAND` (see `.cargo/config.toml`):
//!
//! - `plugins`: build every plugin for `wasm32-wasip2` and copy the components to `target/plugins/`,
//!   where `vigil` finds plugin names by default (beside `target/debug/vigil`).
//! - `demo [DEPLOYMENT]`: build the plugins and the host, then run `vigil demo` (`cargo demo`).
//! - `test`: build the plugins, then run every test of the workspace, scenario suites included.
//! - `bench`: build the plugins and run the benchmarks in `bench/` (release build).
//! - `package [--profile PROFILE] [--host-binary PATH]`: build the Debian package with `cargo-deb` (installed when missing):
//!   the release host (or PROFILE's), the deployment plugins, the example policies, the systemd unit,
//!   man pages and shell completions; prints the `.deb` path. `dist/deb/check.sh DEB` tests it.
//!
//! Only `cargo` and `rustup` are needed; the wasm target is added when missing.

mod package;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Every plugin crate under `plugins/` except the SDK, by package name.
fn plugin_packages(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let dir = root.join("plugins");
    let mut entries: Vec<_> = std::fs::read_dir(&dir).expect("read plugins/").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
        if !text.contains("cdylib") {
            continue; // the SDK and other libraries
        }
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = ").map(|v| v.trim().trim_matches('"').to_string()))
            .expect("package name");
        names.push(name);
    }
    names
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn ensure_wasm_target() -> Result<(), String> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match out {
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") => Ok(()),
        Ok(_) => run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"])),
        // No rustup: hope the toolchain has the target; cargo will say clearly if not.
        Err(_) => Ok(()),
    }
}

/// Build all plugins and copy them to `target/plugins/NAME.wasm`.
fn build_plugins(root: &Path) -> Result<PathBuf, String> {
    ensure_wasm_target()?;
    let packages = plugin_packages(root);
    eprintln!("xtask: building the plugins for wasm32-wasip2 (the first build takes a few minutes)");
    let mut cmd = cargo();
    cmd.current_dir(root).args(["build", "--target", "wasm32-wasip2", "--profile", "plugin"]);
    for p in &packages {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)?;
    let out = root.join("target/plugins");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    for p in &packages {
        let file = p.replace('-', "_") + ".wasm";
        let built = root.join("target/wasm32-wasip2/plugin").join(&file);
        let dest = out.join(format!("{p}.wasm"));
        // Copy only when changed, so a running daemon's hot reload sees no needless event.
        let new = std::fs::read(&built).map_err(|e| format!("{}: {e}", built.display()))?;
        if std::fs::read(&dest).ok().as_deref() != Some(&new[..]) {
            let tmp = dest.with_extension("wasm.tmp");
            std::fs::write(&tmp, &new).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())?;
        }
    }
    eprintln!("xtask: {} plugin(s) in {}", packages.len(), out.display());
    Ok(out)
}

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("plugins") => build_plugins(&root).map(|_| ()),
        Some("demo") => build_plugins(&root).and_then(|_| {
            eprintln!("xtask: building vigil");
            run(cargo().current_dir(&root).args(["build", "-p", "vigil"]))?;
            run(Command::new(root.join("target/debug/vigil")).arg("demo").args(&args[1..]))
        }),
        Some("test") => build_plugins(&root).and_then(|_| {
            // The multi-process suites run the `vigil` binary itself.
            run(cargo().current_dir(&root).args(["build", "-p", "vigil"]))?;
            let mut test = cargo();
            test.current_dir(&root).args(["test", "--no-fail-fast", "--workspace", "--exclude", "vigil-sdk"]).args(excluded_plugins(&root)).args(&args[1..]);
            run_with_deadline(&mut test, test_deadline()?)
        }),
        Some("bench") => build_plugins(&root).and_then(|_| {
            // The cluster benchmarks run the release daemon.
            run(cargo().current_dir(&root).args(["build", "--release", "-p", "vigil"]))?;
            run(cargo().current_dir(&root).args(["run", "--release", "-p", "vigil-bench", "--"]).args(&args[1..]))
        }),
        Some("package") => package::build(&root, &args[1..]),
        _ => Err("usage: cargo xtask plugins | demo [DEPLOYMENT] | test [CARGO TEST ARGS] | bench [tick|python|recorder|reload|relay|failover|sync|vip|idle|http|tls|all] | package [--profile PROFILE] [--host-binary PATH]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long the test run may take before it is stopped as hung: `VIGIL_TEST_DEADLINE_MIN` minutes,
/// 60 by default (the suite takes about 20 on 2 cores). A deadlocked test would otherwise hold CI
/// until its own timeout, and say nothing about which test it was.
fn test_deadline() -> Result<std::time::Duration, String> {
    let minutes = match std::env::var("VIGIL_TEST_DEADLINE_MIN") {
        Ok(v) => v.parse::<u64>().map_err(|_| format!("VIGIL_TEST_DEADLINE_MIN={v:?}: expected a number of minutes"))?,
        Err(_) => 60,
    };
    Ok(std::time::Duration::from_secs(minutes * 60))
}

/// Run `cmd`; past `deadline`, kill it and every process under it (cargo, the test binary, what the
/// tests started) and fail, naming the deadline. libtest has already printed which tests have been
/// running for over 60 seconds.
fn run_with_deadline(cmd: &mut Command, deadline: std::time::Duration) -> Result<(), String> {
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed with {status}")) };
        }
        if started.elapsed() > deadline {
            let mut doomed = vec![child.id()];
            let mut i = 0;
            while i < doomed.len() {
                doomed.extend(children_of(doomed[i]));
                i += 1;
            }
            for pid in doomed.iter().rev() {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            let _ = child.wait();
            return Err(format!(
                "the tests did not finish within {} minutes (VIGIL_TEST_DEADLINE_MIN) and were stopped: a test is hung (see 'has been running for over 60 seconds' above)",
                deadline.as_secs() / 60
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The processes whose parent is `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // /proc/PID/stat: "PID (COMM) STATE PPID ..."; COMM may hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()))
                == Some(pid)
        })
        .collect()
}

/// `--exclude NAME` for each plugin: they are tested through the host, built for wasm only.
fn excluded_plugins(root: &Path) -> Vec<String> {
    plugin_packages(root).into_iter().flat_map(|p| ["--exclude".to_string(), p]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_past_its_deadline_is_stopped_with_everything_under_it() {
        let dir = std::env::temp_dir().join(format!("xtask-deadline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("grandchild");
        // A child that starts a grandchild and waits on it, as cargo waits on a hung test binary.
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let started = std::time::Instant::now();
        let e = run_with_deadline(Command::new("sh").args(["-c", &script]), std::time::Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        let grandchild = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z "), "the grandchild {grandchild} still runs: {state}");
        std::fs::remove_dir_all(&dir).unwrap();
        run_with_deadline(Command::new("true").arg(""), std::time::Duration::from_secs(5)).unwrap();
        assert!(run_with_deadline(&mut Command::new("false"), std::time::Duration::from_secs(5)).is_err());
    }
}
