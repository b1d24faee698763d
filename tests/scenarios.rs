//! Scenario suites through `vigil policy test`, the real binary, as a plugin author runs them.
//!
//! - Every deployment policy `policies/NAME.toml` with a suite `tests/scenarios/NAME/*.toml` passes.
//! - The testkit suite (`tests/scenarios/testkit/`, policy `tests/fixtures/policies/testkit.toml`)
//!   proves the runner itself: deltas, counters, repeats, simulated action results, state and fault
//!   expectations.
//! - A deliberately wrong scenario fails with exit 1 and points at the step's line with
//!   "expected … got …", so a failing suite is actionable.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Output;
use vigil_tests::{describe, plugins_dir, root, vigil};

/// The `*.toml` files of `dir`, sorted.
fn tomls(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    files
}

/// `vigil policy test POLICY SCENARIOS… --plugin-dir target/plugins [-v]` (failing scenarios show their
/// timeline either way).
fn policy_test_with(policy: &Path, scenarios: &[PathBuf], verbose: bool) -> Output {
    let dir = plugins_dir();
    let mut args: Vec<OsString> = vec!["policy".into(), "test".into(), policy.into()];
    args.extend(scenarios.iter().map(|s| s.as_os_str().to_owned()));
    args.extend(["--plugin-dir".into(), dir.into_os_string()]);
    if verbose {
        args.push("-v".into());
    }
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    vigil(&args)
}

fn policy_test(policy: &Path, scenarios: &[PathBuf]) -> Output {
    policy_test_with(policy, scenarios, true)
}

/// Each deployment policy's suite passes (suites appear as policies get them; none is not an error).
#[test]
fn deployment_suites_pass() {
    let root = root();
    let mut ran = 0;
    for policy in tomls(&root.join("policies")) {
        let stem = policy.file_stem().unwrap().to_string_lossy().into_owned();
        let scenarios = tomls(&root.join("tests/scenarios").join(&stem));
        if scenarios.is_empty() {
            println!("{stem}: no suite in tests/scenarios/{stem}/");
            continue;
        }
        let out = policy_test_with(&policy, &scenarios, false);
        println!("{}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(0), "suite {stem} failed:\n{}", describe(&out));
        let summary = format!("{} passed, 0 failed", scenarios.len());
        assert!(String::from_utf8_lossy(&out.stdout).contains(&summary), "{}", describe(&out));
        ran += 1;
    }
    println!("{ran} deployment suite(s) ran");
}

/// The testkit suite passes against the fixture policy: the runner's bookkeeping reaches the plugin
/// as documented.
#[test]
fn testkit_suite_passes() {
    let root = root();
    let scenarios = tomls(&root.join("tests/scenarios/testkit"));
    assert!(!scenarios.is_empty(), "no scenario in tests/scenarios/testkit/");
    let out = policy_test(&root.join("tests/fixtures/policies/testkit.toml"), &scenarios);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout.contains(&format!("{} passed, 0 failed", scenarios.len())), "{}", describe(&out));
    // The fault window shows in the timeline as faults, not as decisions.
    assert!(stdout.contains("FAULT: ran past its time limit of 20 ms"), "{}", describe(&out));
}

/// A wrong expectation fails the run with exit 1, and the report names the step's line and what was
/// expected and got.
#[test]
fn wrong_scenario_fails_and_points_at_the_step() {
    let root = root();
    let scenario = root.join("tests/fixtures/scenarios/wrong.toml");
    let text = std::fs::read_to_string(&scenario).unwrap();
    // The `[[step]]` header of the step holding the marker note.
    let marker = text.lines().position(|l| l.contains("WRONG-STEP")).expect("marker in the fixture");
    let line = text.lines().take(marker).collect::<Vec<_>>().iter().rposition(|l| l.trim() == "[[step]]").unwrap() + 1;

    let out = policy_test(&root.join("tests/fixtures/policies/testkit.toml"), std::slice::from_ref(&scenario));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stdout.contains("FAIL"), "{}", describe(&out));
    assert!(stdout.contains(&format!("line {line}: mode: expected standby, got active")), "{}", describe(&out));
    assert!(
        stdout.contains(&format!("line {line}: actions: expected [start:app], got [start:app, start:db]")),
        "{}",
        describe(&out)
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 scenario(s) failed"), "{}", describe(&out));
}

/// A scenario file that is itself malformed is a configuration error (exit 2) naming file and line.
#[test]
fn malformed_scenario_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("bad.toml");
    std::fs::write(&scenario, "description = \"x\"\n\n[[step]]\nexpect = { mode = \"sideways\" }\n").unwrap();
    let out = policy_test(&root().join("tests/fixtures/policies/testkit.toml"), std::slice::from_ref(&scenario));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:4", scenario.display())) && stderr.contains("sideways"), "{}", describe(&out));
}
