//! `cargo xtask package [--profile PROFILE]`: the Debian package, built with `cargo-deb` from the
//! `[package.metadata.deb]` of `host/Cargo.toml`.
//!
//! 1. builds the plugins (`target/plugins/`) and the host with PROFILE (`release` by default), or
//!    takes the host binary already built at `--host-binary PATH` (CI: the test run's dev build);
//! 2. stages what is not a Cargo artifact in `target/PROFILE_DIR/deb/`, where the metadata's
//!    `target/release/deb/...` assets point (cargo-deb maps `target/release/` to the profile's
//!    directory): the deployment plugins (every plugin crate except those marked
//!    `[package.metadata.vigil] test-only = true`), and the man pages and completions written by the
//!    built binary itself (`vigil generate-assets`, man pages gzipped as Debian wants them);
//! 3. checks that every policy in `policies/` (shipped as examples) names a shipped plugin;
//! 4. runs `cargo deb --no-build` (installing cargo-deb with `cargo install --locked` when missing) and
//!    prints the `.deb` path on stdout (the only line written there).

use crate::{build_plugins, cargo, run};
use std::path::{Path, PathBuf};
use std::process::Command;

const USAGE: &str = "usage: cargo xtask package [--profile PROFILE] [--host-binary PATH]";

/// The cargo-deb release series the metadata is written for.
const CARGO_DEB_VERSION: &str = "^3.8";

pub fn build(root: &Path, args: &[String]) -> Result<(), String> {
    let (mut profile, mut prebuilt) = ("release".to_string(), None);
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("package: {flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--profile" => profile = value.clone(),
            "--host-binary" => prebuilt = Some(root.join(value)),
            _ => return Err(format!("package: unexpected argument {flag:?}; {USAGE}")),
        }
    }
    // Cargo's `dev` profile builds in target/debug, which cargo-deb refuses; any other profile works.
    if profile == "dev" || profile == "debug" {
        return Err("package: the dev profile cannot be packaged (cargo-deb refuses it); use release or a profile inheriting it".into());
    }
    let profile_dir = root.join("target").join(&profile);

    let plugins = build_plugins(root)?;
    match prebuilt {
        // CI's test run has just built the host (dev profile): package that binary rather than
        // building the whole dependency tree a second time with another profile. cargo-deb strips it.
        Some(binary) => {
            eprintln!("xtask: packaging the host binary {}", binary.display());
            std::fs::create_dir_all(&profile_dir).map_err(|e| format!("{}: {e}", profile_dir.display()))?;
            std::fs::copy(&binary, profile_dir.join("vigil")).map_err(|e| format!("{}: {e} (build it first)", binary.display()))?;
        }
        None => {
            eprintln!("xtask: building vigil (profile {profile})");
            run(cargo().current_dir(root).args(["build", "-p", "vigil", "--profile", &profile]))?;
        }
    }

    let stage = profile_dir.join("deb");
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    }
    let stage_plugins = stage.join("plugins");
    std::fs::create_dir_all(&stage_plugins).map_err(|e| format!("{}: {e}", stage_plugins.display()))?;
    let shipped = deployment_plugins(root)?;
    for name in &shipped {
        let from = plugins.join(format!("{name}.wasm"));
        std::fs::copy(&from, stage_plugins.join(format!("{name}.wasm"))).map_err(|e| format!("{}: {e}", from.display()))?;
    }
    check_policies_name_shipped_plugins(root, &shipped)?;
    eprintln!("xtask: shipping plugins {}", shipped.join(", "));

    run(Command::new(profile_dir.join("vigil")).arg("generate-assets").arg("--out").arg(&stage))?;
    // Debian installs man pages compressed; cargo-deb compresses only files it did not find under
    // the target directory, so compress them here (`-n`: no name or time stamp, a reproducible file).
    let man = stage.join("man");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man).map_err(|e| format!("{}: {e}", man.display()))?.flatten().map(|e| e.path()).collect();
    pages.sort();
    run(Command::new("gzip").args(["-9n", "--"]).args(&pages))?;

    ensure_cargo_deb(root)?;
    eprintln!("xtask: running cargo deb");
    let out = cargo()
        .current_dir(root)
        .args(["deb", "-p", "vigil", "--no-build", "--profile", &profile, "--output"])
        .arg(root.join("target/debian"))
        .output()
        .map_err(|e| format!("cargo deb: {e}"))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("cargo deb failed with {}", out.status));
    }
    // cargo-deb prints the path of the package it wrote as its last line on stdout.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout.lines().rev().map(str::trim).find(|l| l.ends_with(".deb")).map(PathBuf::from);
    match deb {
        Some(deb) if deb.is_file() => {
            println!("{}", deb.display());
            Ok(())
        }
        _ => Err(format!("cargo deb did not say where the package is; its output:\n{stdout}")),
    }
}

/// Every plugin crate under `plugins/` that users deploy: a `cdylib` not marked
/// `[package.metadata.vigil] test-only = true` (the host's test fixtures), by package name.
fn deployment_plugins(root: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for name in crate::plugin_packages(root) {
        let manifest = root.join("plugins").join(&name).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e} (plugin directories are named after their package)", manifest.display()))?;
        let test_only = text
            .split("[package.metadata.vigil]")
            .nth(1)
            .is_some_and(|section| section.lines().take_while(|l| !l.trim_start().starts_with('[')).any(|l| l.replace(' ', "") == "test-only=true"));
        if !test_only {
            names.push(name);
        }
    }
    Ok(names)
}

/// Every example policy must load from the installed plugins: its `plugin` is a shipped name.
fn check_policies_name_shipped_plugins(root: &Path, shipped: &[String]) -> Result<(), String> {
    let dir = root.join("policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten().map(|e| e.path()).collect();
    files.sort();
    for file in files.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let plugin = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("plugin").map(str::trim).and_then(|r| r.strip_prefix('=')).map(|v| v.trim().trim_matches('"').to_string()))
            .ok_or_else(|| format!("{}: no `plugin =` line", file.display()))?;
        if !shipped.contains(&plugin) {
            return Err(format!(
                "{}: plugin {plugin:?} is not a shipped plugin ({}): the installed example would not load",
                file.display(),
                shipped.join(", ")
            ));
        }
    }
    Ok(())
}

fn ensure_cargo_deb(root: &Path) -> Result<(), String> {
    let present = cargo().current_dir(root).args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (cargo install --locked; a few minutes)");
        run(cargo().args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB_VERSION]))?;
    }
    Ok(())
}
