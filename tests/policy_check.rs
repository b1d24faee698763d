//! `vigil policy check` as an operator runs it: the real binary on real files.
//!
//! Proves the exit-code contract (0 for a good policy, 2 for any bad configuration) and that every
//! refusal is one message naming the policy file and the key at fault (and the line for syntax
//! errors), never a panic or a backtrace.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use vigil_tests::{describe, plugin, plugins_dir, testkit_policy, vigil, write_file};

/// `vigil policy check POLICY --plugin-dir target/plugins`.
fn check(policy: &Path) -> Output {
    let dir = plugins_dir();
    vigil(&[OsStr::new("policy"), OsStr::new("check"), policy.as_os_str(), OsStr::new("--plugin-dir"), dir.as_os_str()])
}

/// Asserts a refusal: exit 2, one stderr message naming the file and containing every `needle`, and
/// no panic or backtrace.
fn assert_refused(policy: &Path, out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(out));
    assert!(stderr.contains(&policy.display().to_string()), "stderr does not name {}:\n{}", policy.display(), describe(out));
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{}", describe(out));
    }
    assert_no_panic(out);
}

fn assert_no_panic(out: &Output) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for bad in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(!text.contains(bad), "output contains {bad:?}:\n{}", describe(out));
    }
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A good policy loads (parse, compile, validate, dry run): exit 0 and an `ok:` line naming the plugin.
#[test]
fn good_policy_is_ok() {
    let dir = temp();
    let policy = testkit_policy(dir.path(), "good.toml", "mode = \"standby\"\nstart = [\"app\"]", "[services.app]\nstart = \"true\"\nstop = \"true\"");
    let out = check(&policy);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok"), "{}", describe(&out));
    assert!(stdout.contains("testkit") && stdout.contains("1 service(s)"), "{}", describe(&out));
    assert_no_panic(&out);
}

/// A plugin name found in no plugin directory: the message names the key and where it looked.
#[test]
fn missing_plugin_is_refused() {
    let dir = temp();
    let policy = write_file(dir.path(), "p.toml", "plugin = \"no-such-plugin\"\n");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `plugin`", "no-such-plugin", &plugins_dir().join("no-such-plugin.wasm").display().to_string()]);
}

/// A `.wasm` path that does not exist beside the policy: same refusal, naming the resolved path.
#[test]
fn missing_plugin_path_is_refused() {
    let dir = temp();
    let policy = write_file(dir.path(), "p.toml", "plugin = \"gone.wasm\"\n");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `plugin`", &dir.path().join("gone.wasm").display().to_string()]);
}

/// A file that is not WebAssembly at all.
#[test]
fn non_wasm_file_is_refused() {
    let dir = temp();
    let wasm = write_file(dir.path(), "text.wasm", "this is not a plugin\n");
    let policy = write_file(dir.path(), "p.toml", "plugin = \"text.wasm\"\n");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `plugin`", &wasm.display().to_string(), "not a WebAssembly file"]);
}

/// A core module (the `\0asm` header, version 1, no sections) is not a component: the message says how
/// to build one.
#[test]
fn core_module_is_refused() {
    let dir = temp();
    let wasm = write_file(dir.path(), "core.wasm", b"\0asm\x01\0\0\0");
    let policy = write_file(dir.path(), "p.toml", "plugin = \"core.wasm\"\n");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `plugin`", &wasm.display().to_string(), "core WebAssembly module, not a component"]);
}

/// A component header followed by garbage: refused as an invalid component, not a crash.
#[test]
fn truncated_component_is_refused() {
    let dir = temp();
    let mut bytes = std::fs::read(plugin("testkit")).unwrap();
    bytes.truncate(bytes.len() / 2);
    let wasm = write_file(dir.path(), "half.wasm", bytes);
    let policy = write_file(dir.path(), "p.toml", "plugin = \"half.wasm\"\n");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `plugin`", &wasm.display().to_string(), "invalid component"]);
}

/// A component of another world (`plugins/wrong-world`) is refused by name of the expected world.
#[test]
fn component_of_another_world_is_refused() {
    let dir = temp();
    let policy = write_file(dir.path(), "p.toml", "plugin = \"wrong-world\"\n");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `plugin`", "wrong-world.wasm", "not a vigil:policy component"]);
}

/// Parameters the plugin's `validate` refuses: the plugin's own message, under key `params`.
#[test]
fn params_rejected_by_validate() {
    let dir = temp();
    let policy = testkit_policy(dir.path(), "p.toml", "mode = \"standby\"\nreject = \"threshold must be positive\"", "");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `params`", "refused by plugin testkit", "threshold must be positive"]);
}

/// A parameter of the wrong type is refused by the SDK's serde check, in `validate`.
#[test]
fn params_of_wrong_shape_are_refused() {
    let dir = temp();
    let policy = testkit_policy(dir.path(), "p.toml", "mode = 3", "");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `params`", "invalid type: integer `3`, expected a string"]);
}

/// A misspelt key is an error naming the dotted key and its line, not silently ignored.
#[test]
fn unknown_key_is_refused() {
    let dir = temp();
    let policy = testkit_policy(dir.path(), "p.toml", "mode = \"standby\"", "[limits]\ntime_ms = 20\nmemory_mb = 16");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `limits.memory_mb`", "unknown key", "p.toml:8"]);

    let top = write_file(dir.path(), "top.toml", "plugin = \"testkit\"\nplugins = \"testkit\"\n");
    let out = check(&top);
    assert_refused(&top, &out, &["key `plugins`", "unknown key", "top.toml:2"]);
}

/// A value out of range names its key and the accepted range.
#[test]
fn bad_limit_is_refused() {
    let dir = temp();
    let policy = testkit_policy(dir.path(), "p.toml", "mode = \"standby\"", "[limits]\ntime_ms = 0");
    let out = check(&policy);
    assert_refused(&policy, &out, &["key `limits.time_ms`", "expected 1 to 10000, got 0"]);
}

/// A TOML syntax error is reported with its line.
#[test]
fn syntax_error_names_the_line() {
    let dir = temp();
    let policy = write_file(dir.path(), "p.toml", "plugin = \"testkit\"\n\n[params]\nmode = \"standby\n");
    let out = check(&policy);
    assert_refused(&policy, &out, &[&format!("{}:4", policy.display())]);
}

/// A policy file that does not exist: exit 2 naming it.
#[test]
fn missing_policy_file_is_refused() {
    let dir = temp();
    let policy: PathBuf = dir.path().join("absent.toml");
    let out = check(&policy);
    assert_refused(&policy, &out, &["cannot read"]);
}

/// A plugin that faults on its dry-run tick is refused at load (a plugin that cannot decide a quiet
/// tick must never replace a working one).
#[test]
fn plugin_faulting_on_dry_run_is_refused() {
    let dir = temp();
    let policy = testkit_policy(dir.path(), "p.toml", "mode = \"standby\"\nfault = \"trap\"", "[limits]\ntime_ms = 20");
    let out = check(&policy);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let message = stderr.lines().find(|l| l.starts_with("vigil: ")).unwrap_or_else(|| panic!("no vigil: line\n{}", describe(&out)));
    assert!(message.contains(&policy.display().to_string()), "{}", describe(&out));
    assert!(message.contains("plugin testkit failed its dry-run tick: trapped"), "{}", describe(&out));
    // The plugin's own panic is part of the message; the host must not add a backtrace of its own.
    assert!(!stderr.contains("stack backtrace"), "{}", describe(&out));
}

/// Without `--plugin-dir`, plugin names resolve in `plugins/` beside the executable's directory
/// (`target/plugins` for `target/debug/vigil`), so a checkout works with no set-up.
#[test]
fn plugin_names_resolve_beside_the_executable() {
    let dir = temp();
    let policy = testkit_policy(dir.path(), "p.toml", "mode = \"standby\"", "");
    let out = vigil(&[OsStr::new("policy"), OsStr::new("check"), policy.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// `$VIGIL_PLUGIN_DIR` is searched for plugin names.
#[test]
fn plugin_names_resolve_in_vigil_plugin_dir() {
    let dir = temp();
    let plugins = dir.path().join("my-plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(plugin("testkit"), plugins.join("renamed-kit.wasm")).unwrap();
    let policy = write_file(dir.path(), "p.toml", "plugin = \"renamed-kit\"\n[params]\nmode = \"active\"\n");
    let out = std::process::Command::new(vigil_tests::vigil_bin())
        .args([OsStr::new("policy"), OsStr::new("check"), policy.as_os_str()])
        .env("VIGIL_PLUGIN_DIR", &plugins)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugin renamed-kit"), "{}", describe(&out));
}

/// The arbiter's `priority` parameter of hot-standby and mail-gateway: a repeated or empty id, or a
/// priority in a config-only group, is refused with the parameter's name.
#[test]
fn bad_priority_is_refused() {
    let dir = temp();
    let root = vigil_tests::root();
    let cases = [
        ("hot-standby", "priority = [\"cti1\", \"cti2\", \"cti1\"]", "priority: \"cti1\" is listed twice"),
        ("hot-standby", "priority = [\"cti1\", \" \"]", "priority: expected names, got an empty one"),
        ("mail-primary", "priority = [\"a\", \"a\"]", "priority: \"a\" is listed twice"),
        ("mail-config-only", "priority = [\"a\", \"b\"]", "priority: a config-only group has no active role to order"),
    ];
    for (name, line, needle) in cases {
        let text = std::fs::read_to_string(root.join("policies").join(format!("{name}.toml"))).unwrap();
        let text = text.replacen("[params]\n", &format!("[params]\n{line}\n"), 1);
        let policy = write_file(dir.path(), &format!("{name}.toml"), text);
        let out = check(&policy);
        assert_refused(&policy, &out, &["key `params`", needle]);
    }
    // A good order loads, and the group's example policy too.
    let out = check(&root.join("policies/hot-standby-group.toml"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}
