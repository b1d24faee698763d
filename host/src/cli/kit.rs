//! The policy author kit: `vigil policy new`, `vigil policy build` and `vigil policy wit`.
//!
//! `new` writes a complete plugin project into a fresh directory, in Rust or Python, that needs
//! nothing from vigil's repository: the interface (WIT) and the SDK are embedded in this binary and
//! written into the project. The Rust SDK is vendored (`vendor/vigil-sdk`) rather than fetched by
//! version: it is not published on a registry, and a vendored copy is exactly the one that matches
//! the interface this vigil was built with. The Python SDK is one module, `vigil_policy.py`.
//!
//! `build` compiles a project into a component (cargo for `wasm32-wasip2`, or `componentize-py`
//! from PyPI) at the path its `policy.toml` names, then checks it as `vigil policy check` does.

use super::CliError;
use anyhow::{anyhow, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The interface this binary runs natively, as the WIT text (`vigil policy wit`).
pub const WIT: &str = include_str!("../../../wit/policy.wit");
/// The interface version of [`WIT`].
pub const INTERFACE_VERSION: &str = "0.3.0";
/// The `wit-bindgen` the vendored Rust SDK builds with: the workspace's (a unit test checks).
const WIT_BINDGEN: &str = "0.46.0";
/// The `componentize-py` the Python kit was written and tested against; its bindings' layout
/// (`wit_world`) changes between releases, so `build` installs exactly this one.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The Rust SDK's sources, written to `vendor/vigil-sdk/src/`.
const SDK_SOURCES: &[(&str, &str)] = &[
    ("lib.rs", include_str!("../../../plugins/sdk/src/lib.rs")),
    ("arbiter.rs", include_str!("../../../plugins/sdk/src/arbiter.rs")),
    ("decision.rs", include_str!("../../../plugins/sdk/src/decision.rs")),
    ("handover.rs", include_str!("../../../plugins/sdk/src/handover.rs")),
    ("restart.rs", include_str!("../../../plugins/sdk/src/restart.rs")),
    ("tickext.rs", include_str!("../../../plugins/sdk/src/tickext.rs")),
];
/// Where the SDK finds the WIT in vigil's repository, and in a vendored copy.
const SDK_WIT_PATH: (&str, &str) = ("path: \"../../wit\"", "path: \"wit\"");

const PYTHON_SDK: &str = include_str!("../../../plugins/sdk-python/vigil_policy.py");

mod template {
    pub const CARGO_TOML: &str = include_str!("../../kit/rust/Cargo.toml");
    pub const SDK_CARGO_TOML: &str = include_str!("../../kit/rust/sdk-Cargo.toml");
    pub const LIB_RS: &str = include_str!("../../kit/rust/src/lib.rs");
    pub const RUST_README: &str = include_str!("../../kit/rust/README.md");
    pub const APP_PY: &str = include_str!("../../kit/python/app.py");
    pub const PYTHON_README: &str = include_str!("../../kit/python/README.md");
    pub const POLICY_TOML: &str = include_str!("../../kit/policy.toml");
    pub const SCENARIOS: &[(&str, &str)] = &[
        ("failover.toml", include_str!("../../kit/scenarios/failover.toml")),
        ("startup.toml", include_str!("../../kit/scenarios/startup.toml")),
    ];
    pub const GITIGNORE: &str = include_str!("../../kit/gitignore");
}

/// A plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

/// The sandbox limits a new project's policy file sets, by language. A Python component carries its
/// interpreter: each call instantiates it afresh (bench/README.md, "Python policies").
fn limits(lang: Lang) -> (u64, u64, &'static str) {
    match lang {
        Lang::Rust => (50, 32, "The defaults, ample for a Rust plugin."),
        Lang::Python => (
            500,
            48,
            "A Python plugin carries its interpreter: a call takes milliseconds, not microseconds, and needs 13-16 MiB.",
        ),
    }
}

/// `vigil policy wit`: the interface, for bindings in any language.
pub fn wit() -> Result<(), CliError> {
    print!("{WIT}");
    Ok(())
}

/// A plugin name: lower-case letters, digits and `-`, starting with a letter (it names the crate,
/// the component file and the plugin in logs).
fn check_name(name: &str) -> Result<(), CliError> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CliError::Config(anyhow!(
            "{name:?}: a policy name is lower-case letters, digits and '-', starting with a letter, at most 64 characters (e.g. \"my-failover\")"
        )))
    }
}

fn render(template: &str, name: &str, lang: Lang) -> String {
    let (time_ms, memory_mib, note) = limits(lang);
    template
        .replace("{{name}}", name)
        .replace("{{interface}}", INTERFACE_VERSION)
        .replace("{{vigil}}", env!("CARGO_PKG_VERSION"))
        .replace("{{wit_bindgen}}", WIT_BINDGEN)
        .replace("{{componentize_py}}", COMPONENTIZE_PY)
        .replace("{{time_ms}}", &time_ms.to_string())
        .replace("{{memory_mib}}", &memory_mib.to_string())
        .replace("{{limits_note}}", note)
}

/// The files of a new project, by path relative to its directory.
pub fn project_files(name: &str, lang: Lang) -> Vec<(PathBuf, String)> {
    let r = |t: &str| render(t, name, lang);
    let mut files = vec![
        (PathBuf::from("policy.toml"), r(template::POLICY_TOML)),
        (PathBuf::from(".gitignore"), template::GITIGNORE.to_string()),
    ];
    for (file, text) in template::SCENARIOS {
        files.push((Path::new("scenarios").join(file), text.to_string()));
    }
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), r(template::CARGO_TOML)));
            files.push(("src/lib.rs".into(), r(template::LIB_RS)));
            files.push(("README.md".into(), r(template::RUST_README)));
            let sdk = Path::new("vendor/vigil-sdk");
            files.push((sdk.join("Cargo.toml"), r(template::SDK_CARGO_TOML)));
            files.push((sdk.join("wit/policy.wit"), WIT.to_string()));
            for (file, text) in SDK_SOURCES {
                let text = if *file == "lib.rs" { text.replace(SDK_WIT_PATH.0, SDK_WIT_PATH.1) } else { text.to_string() };
                files.push((sdk.join("src").join(file), text));
            }
        }
        Lang::Python => {
            files.push(("app.py".into(), r(template::APP_PY)));
            files.push(("vigil_policy.py".into(), PYTHON_SDK.to_string()));
            files.push(("README.md".into(), r(template::PYTHON_README)));
            files.push(("wit/policy.wit".into(), WIT.to_string()));
        }
    }
    files
}

/// `vigil policy new NAME [--lang rust|python] [--dir DIR]`.
pub fn new(name: &str, lang: Lang, dir: Option<&Path>) -> Result<(), CliError> {
    check_name(name)?;
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(name));
    if let Ok(mut entries) = std::fs::read_dir(&dir) {
        if entries.next().is_some() {
            return Err(CliError::Config(anyhow!("{}: exists and is not empty; give a new directory with --dir", dir.display())));
        }
    } else if dir.exists() {
        return Err(CliError::Config(anyhow!("{}: exists and is not a directory", dir.display())));
    }
    for (path, text) in project_files(name, lang) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    let lang_word = match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
    };
    println!("created {} ({lang_word} policy {name:?}, vigil:policy@{INTERFACE_VERSION}). Next:", dir.display());
    println!("  cd {}", dir.display());
    println!("  vigil policy build                                # compile to build/{name}.wasm and check it");
    println!("  vigil policy test policy.toml scenarios/*.toml    # replay the scenarios");
    Ok(())
}

/// `vigil policy build [DIR]`: compile the project in `dir` and check the result.
pub fn build(dir: &Path) -> Result<(), CliError> {
    let policy = dir.join("policy.toml");
    let text = std::fs::read_to_string(&policy).map_err(|e| {
        CliError::Config(anyhow!("{}: cannot read ({e}): not a policy project? `vigil policy new NAME` makes one", policy.display()))
    })?;
    let file = crate::policy::file::PolicyFile::parse(&policy, &text).map_err(|e| CliError::Config(e.into()))?;
    if !(file.plugin.contains('/') || file.plugin.ends_with(".wasm")) {
        return Err(CliError::Config(anyhow!(
            "{}: plugin = {:?} is a name looked up in the plugin directories; `vigil policy build` needs a path to write to, such as \"build/{}.wasm\"",
            policy.display(),
            file.plugin,
            file.plugin
        )));
    }
    let out = dir.join(&file.plugin);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    if dir.join("Cargo.toml").is_file() {
        build_rust(dir, &out)?;
    } else if dir.join("app.py").is_file() {
        build_python(dir, &out)?;
    } else {
        return Err(CliError::Config(anyhow!(
            "{}: neither Cargo.toml (a Rust policy) nor app.py (a Python policy) is here",
            dir.display()
        )));
    }
    super::policy_cmd::check(&policy, Vec::new())
}

/// Run a build tool; what it prints goes to stderr, so that stdout says only what was built.
fn run(cmd: &mut Command) -> Result<(), CliError> {
    let status = cmd.stdout(std::io::stderr()).status().map_err(|e| CliError::Failure(anyhow!("cannot run {:?}: {e}", cmd.get_program())))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::Failure(anyhow!("{:?} failed ({status})", cmd.get_program())))
    }
}

fn build_rust(dir: &Path, out: &Path) -> Result<(), CliError> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("{}: cannot read", manifest.display()))?;
    let value: toml::Value = toml::from_str(&text).map_err(|e| CliError::Config(anyhow!("{}: {e}", manifest.display())))?;
    let package = value
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| CliError::Config(anyhow!("{}: no [package] name", manifest.display())))?;
    ensure_wasm_target()?;
    let target_dir = dir.join("target");
    eprintln!("vigil: cargo build --release --target wasm32-wasip2 in {}", dir.display());
    run(Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir))?;
    let built = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", package.replace('-', "_")));
    std::fs::copy(&built, out).with_context(|| format!("cannot copy {} to {}", built.display(), out.display()))?;
    Ok(())
}

/// Add the `wasm32-wasip2` target with rustup when it is missing (without rustup, cargo says what
/// is wrong).
fn ensure_wasm_target() -> Result<(), CliError> {
    let Ok(listed) = Command::new("rustup").args(["target", "list", "--installed"]).output() else { return Ok(()) };
    if String::from_utf8_lossy(&listed.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") {
        return Ok(());
    }
    eprintln!("vigil: adding the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))
}

fn build_python(dir: &Path, out: &Path) -> Result<(), CliError> {
    let tool = componentize_py(dir)?;
    let wit = dir.join("wit");
    let wit = if wit.is_dir() {
        wit
    } else {
        // A project without its WIT builds against this vigil's interface.
        let embedded = dir.join("build/wit");
        std::fs::create_dir_all(&embedded).with_context(|| format!("{}: cannot create", embedded.display()))?;
        std::fs::write(embedded.join("policy.wit"), WIT).with_context(|| format!("{}: cannot write", embedded.display()))?;
        embedded
    };
    eprintln!("vigil: {} componentize app in {}", tool.display(), dir.display());
    let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    run(Command::new(&tool)
        .arg("-d")
        .arg(std::path::absolute(&wit).unwrap_or(wit))
        .args(["-w", "policy", "componentize", "app", "-p", ".", "-o"])
        .arg(&out)
        .current_dir(dir))
}

/// The `componentize-py` to build with: the one on the `PATH` when it is [`COMPONENTIZE_PY`], else
/// the project's `.venv`, installed there from PyPI when missing.
fn componentize_py(dir: &Path) -> Result<PathBuf, CliError> {
    let version_of = |tool: &Path| {
        Command::new(tool)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let wanted = format!("componentize-py {COMPONENTIZE_PY}");
    let on_path = PathBuf::from("componentize-py");
    if version_of(&on_path).as_deref() == Some(wanted.as_str()) {
        return Ok(on_path);
    }
    let venv = std::path::absolute(dir.join(".venv")).unwrap_or_else(|_| dir.join(".venv"));
    let in_venv = venv.join("bin/componentize-py");
    if version_of(&in_venv).as_deref() == Some(wanted.as_str()) {
        return Ok(in_venv);
    }
    eprintln!("vigil: installing componentize-py {COMPONENTIZE_PY} from PyPI into {}", venv.display());
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .map_err(|e| CliError::Failure(anyhow!("{e}: Python 3 with its venv module is needed to build a Python policy")))?;
    run(Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("componentize-py=={COMPONENTIZE_PY}")))?;
    match version_of(&in_venv) {
        Some(v) if v == wanted => Ok(in_venv),
        other => Err(CliError::Failure(anyhow!("{}: expected {wanted}, got {other:?}", in_venv.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_interface_and_sdk_are_the_current_ones() {
        assert!(WIT.contains(&format!("package vigil:policy@{INTERFACE_VERSION};")), "INTERFACE_VERSION is not wit/policy.wit's");
        let sdk = SDK_SOURCES.iter().find(|(f, _)| *f == "lib.rs").unwrap().1;
        assert!(sdk.contains(SDK_WIT_PATH.0), "the SDK no longer finds its WIT at {}: update SDK_WIT_PATH", SDK_WIT_PATH.0);
        assert!(sdk.contains(&format!("INTERFACE_VERSION: &str = \"{INTERFACE_VERSION}\"")));
        // Every SDK module is vendored.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        on_disk.sort();
        let mut vendored: Vec<String> = SDK_SOURCES.iter().map(|(f, _)| f.to_string()).collect();
        vendored.sort();
        assert_eq!(on_disk, vendored, "SDK_SOURCES must list every file of plugins/sdk/src");
        // The vendored SDK pins the wit-bindgen the workspace builds plugins with.
        let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock")).unwrap();
        assert!(
            lock.contains(&format!("name = \"wit-bindgen\"\nversion = \"{WIT_BINDGEN}\"")),
            "WIT_BINDGEN {WIT_BINDGEN} is not in Cargo.lock"
        );
    }

    #[test]
    fn templates_leave_no_placeholder_and_names_are_checked() {
        for lang in [Lang::Rust, Lang::Python] {
            for (path, text) in project_files("my-policy", lang) {
                assert!(!text.contains("{{"), "{}: a placeholder is left", path.display());
            }
        }
        for bad in ["", "My", "1abc", "a b", "a_b", "abc-", &"a".repeat(65)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("lower-case"), "{bad:?}: {e}");
        }
        check_name("my-failover2").unwrap();
    }

    #[test]
    fn new_refuses_a_directory_that_is_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let e = new("p", Lang::Rust, Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(), "mine");
        let fresh = dir.path().join("p");
        new("p", Lang::Python, Some(&fresh)).unwrap();
        assert!(fresh.join("app.py").is_file() && fresh.join("vigil_policy.py").is_file() && fresh.join("wit/policy.wit").is_file());
    }
}
