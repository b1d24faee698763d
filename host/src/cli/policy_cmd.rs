//! `vigil policy check` and `vigil policy test`.

use super::CliError;
use crate::policy::{self, PluginDirs, Runtime};
use crate::scenario::{self, Scenario};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn runtime() -> Result<Runtime, CliError> {
    Runtime::new(None).map_err(CliError::Failure)
}

/// Load `path` fully (parse, compile, validate, dry run) and say what was loaded.
pub fn check(path: &Path, plugin_dirs: Vec<PathBuf>) -> Result<(), CliError> {
    let runtime = runtime()?;
    let started = Instant::now();
    let loaded = policy::load(&runtime, &PluginDirs::standard(plugin_dirs), path)
        .map_err(|e| CliError::Config(e.into()))?;
    println!(
        "ok: {} — plugin {} (vigil:policy@{}, {} bytes, sha256 {}), {} service(s), {} hook(s), limits {} ms / {} MiB, loaded in {} ms",
        path.display(),
        loaded.plugin.name(),
        loaded.plugin.interface_version(),
        loaded.plugin.size(),
        &loaded.plugin.sha256()[..16],
        loaded.file.services.len(),
        loaded.file.hooks.len(),
        loaded.file.limits.time_ms,
        loaded.file.limits.memory_mib,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Replay each scenario through the policy; exit 1 when any expectation fails.
pub fn test(path: &Path, scenarios: &[PathBuf], plugin_dirs: Vec<PathBuf>, verbose: bool) -> Result<(), CliError> {
    let runtime = runtime()?;
    let loaded = policy::load(&runtime, &PluginDirs::standard(plugin_dirs), path)
        .map_err(|e| CliError::Config(e.into()))?;
    let (mut passed, mut failed) = (0, 0);
    for file in scenarios {
        let scenario = Scenario::read(file).map_err(|e| CliError::Config(e.into()))?;
        let outcome = scenario::run(&loaded, &scenario).map_err(|e| CliError::Config(e.into()))?;
        let verdict = if outcome.passed() { "ok  " } else { "FAIL" };
        println!("{verdict} {} — {}", file.display(), scenario.description);
        if verbose || !outcome.passed() {
            print!("{}", outcome.timeline);
        }
        if outcome.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        return Err(CliError::Failure(anyhow::anyhow!("{failed} scenario(s) failed for {}", path.display())));
    }
    Ok(())
}
