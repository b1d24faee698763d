//! `vigil policy check`, `vigil policy test` and `vigil policy replay`.

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

/// The records of one recording: a `vigil record --records` file, or a data directory's (or recorder
/// directory's) whole ring.
fn read_recording(path: &Path) -> Result<Vec<crate::recorder::Record>, CliError> {
    use crate::recorder::{self, export};
    if path.is_dir() {
        let dir = if path.join("recorder").is_dir() { recorder::dir_of(path) } else { path.to_path_buf() };
        let (records, report) = recorder::read(&dir, |_| Some(true)).map_err(|e| CliError::Config(anyhow::anyhow!(e)))?;
        if report.torn > 0 {
            eprintln!("note: {}: {} segment(s) end in a torn or damaged frame; the records before it are read", dir.display(), report.torn);
        }
        return Ok(records);
    }
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Config(anyhow::anyhow!("{}: cannot read: {e}", path.display())))?;
    export::from_lines(&path.display().to_string(), &text).map_err(|e| CliError::Config(anyhow::anyhow!(e)))
}

/// Replay recordings through a candidate policy; exit 1 when it decides any tick otherwise.
pub fn replay(candidate: &Path, recordings: &[PathBuf], plugin_dirs: Vec<PathBuf>, json: bool) -> Result<(), CliError> {
    use crate::recorder::replay;
    let runtime = runtime()?;
    let loaded = policy::load(&runtime, &PluginDirs::standard(plugin_dirs), candidate).map_err(|e| CliError::Config(e.into()))?;
    let mut all = Vec::new();
    for path in recordings {
        let records = read_recording(path)?;
        if records.is_empty() {
            return Err(CliError::Config(anyhow::anyhow!("{}: no recorded tick", path.display())));
        }
        all.push(records);
    }
    let report = replay::replay(&loaded, &replay::merge(all));
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("a report serializes"));
    } else {
        print!("{}", replay::table(&report));
    }
    if !report.divergences.is_empty() {
        return Err(CliError::Failure(anyhow::anyhow!(
            "{} of {} recorded tick(s) decided otherwise by {}",
            report.divergences.len(),
            report.ticks,
            candidate.display()
        )));
    }
    Ok(())
}
