//! Policies: a policy file naming a WebAssembly plugin, loaded, checked and kept up to date.
//!
//! Owns: reading policy files ([`file`]), the sandboxed plugin runtime ([`runtime`]), the load
//! pipeline (parse → resolve the plugin → compile → `validate(params)` → one dry `decide` → only then
//! usable), checking every decision against what the policy declares, and hot reload ([`reload`]).
//!
//! Never: executes actions, keeps node state, or lets a plugin name a service, hook or peer its
//! policy did not declare.

pub(crate) mod convert;
pub mod file;
pub mod reload;
pub mod runtime;

use crate::model::{Action, Decision, Heartbeat, LocalNode, Service, Tick};
use crate::toml_file::TomlError;
pub use file::PolicyFile;
pub use runtime::{Fault, LoadError, Plugin, Runtime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a policy could not be loaded. Every variant names the file (and key) at fault.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file itself is unreadable or malformed.
    #[error(transparent)]
    File(#[from] TomlError),
    /// The `plugin` key names nothing that exists.
    #[error("{policy}: key `plugin`: no plugin {name:?} (looked for {})", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    PluginNotFound { policy: PathBuf, name: String, searched: Vec<PathBuf> },
    /// The plugin file exists but is not a usable vigil plugin.
    #[error("{policy}: key `plugin`: {source}")]
    Plugin { policy: PathBuf, source: LoadError },
    /// The plugin's `validate` refused the parameters.
    #[error("{policy}: key `params`: refused by plugin {plugin}: {message}")]
    ParamsRejected { policy: PathBuf, plugin: String, message: String },
    /// The plugin faulted while validating or on the dry-run tick.
    #[error("{policy}: plugin {plugin} {stage}: {fault}")]
    Faulted { policy: PathBuf, plugin: String, stage: &'static str, fault: Fault },
}

/// Where plugin names are looked up, in order.
#[derive(Debug, Clone, Default)]
pub struct PluginDirs(pub Vec<PathBuf>);

impl PluginDirs {
    /// Explicit directories first, then `$VIGIL_PLUGIN_DIR`, then `plugins/` beside the directory of
    /// the `vigil` executable (`target/plugins` in a checkout), then `/usr/lib/vigil/plugins`.
    pub fn standard(explicit: impl IntoIterator<Item = PathBuf>) -> PluginDirs {
        let mut dirs: Vec<PathBuf> = explicit.into_iter().collect();
        if let Some(dir) = std::env::var_os("VIGIL_PLUGIN_DIR") {
            dirs.push(dir.into());
        }
        if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
            if let Some(parent) = exe_dir.parent() {
                dirs.push(parent.join("plugins"));
            }
        }
        dirs.push("/usr/lib/vigil/plugins".into());
        PluginDirs(dirs)
    }

    /// Resolve a policy's `plugin` value: a path (anything with a `/` or ending in `.wasm`, relative
    /// to the policy file), or a name looked up as `NAME.wasm` in each directory.
    pub fn resolve(&self, policy_path: &Path, plugin: &str) -> Result<PathBuf, PolicyError> {
        let base = policy_path.parent().unwrap_or(Path::new("."));
        let searched: Vec<PathBuf> = if plugin.contains('/') || plugin.ends_with(".wasm") {
            vec![base.join(plugin)]
        } else {
            self.0.iter().map(|d| d.join(format!("{plugin}.wasm"))).collect()
        };
        searched.iter().find(|p| p.is_file()).cloned().ok_or_else(|| PolicyError::PluginNotFound {
            policy: policy_path.to_path_buf(),
            name: plugin.to_string(),
            searched,
        })
    }
}

/// A policy ready to decide: its file, its compiled plugin and its parameters.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The policy file's path.
    pub path: PathBuf,
    /// Its parsed content.
    pub file: PolicyFile,
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// `[params]` as JSON, as the plugin receives them.
    pub params_json: String,
    /// When it was loaded (ms since the Unix epoch).
    pub loaded_at_ms: u64,
}

impl LoadedPolicy {
    /// The policy's name: its file name without extension.
    pub fn name(&self) -> String {
        self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Ask the plugin to decide `tick`, and check the decision against the policy. `peers` are the
    /// peer ids the node knows (commands to anyone else are refused).
    pub fn decide(&self, tick: &Tick, peers: &[String]) -> Result<Decision, Fault> {
        let mut decision = self.plugin.decide(&self.params_json, tick, &self.file.limits)?;
        self.check_decision(&decision, peers).map_err(Fault::InvalidDecision)?;
        decision.reason = one_line(&decision.reason);
        Ok(decision)
    }

    /// Make the next `decide`'s fresh instance now (see [`Plugin::prepare`]): the node loop calls this
    /// between ticks, so a tick's decision waits for the call alone.
    pub fn prepare(&self) {
        self.plugin.prepare(&self.file.limits);
    }

    fn check_decision(&self, d: &Decision, peers: &[String]) -> Result<(), String> {
        let limit = self.file.limits.state_bytes();
        if d.state.len() > limit {
            return Err(format!("state is {} bytes, over the policy's limit of {limit} bytes (limits.state_kib)", d.state.len()));
        }
        if d.mode == Some(crate::model::Mode::Starting) {
            return Err("mode starting: the host's word for \"not decided yet\"; decide a mode, or none to keep it".into());
        }
        if d.actions.len() > 256 {
            return Err(format!("{} actions in one decision; at most 256", d.actions.len()));
        }
        for action in &d.actions {
            let undeclared = |what: &str, name: &str| Err(format!("action {action}: {what} {name:?} is not declared in the policy"));
            match action {
                Action::Start(s) | Action::Stop(s) | Action::Restart(s) if !self.file.services.contains_key(s) => {
                    return undeclared("service", s)
                }
                Action::Hook { name, args } => {
                    let Some(hook) = self.file.hooks.get(name) else { return undeclared("hook", name) };
                    if args.iter().map(String::len).sum::<usize>() > 64 * 1024 {
                        return Err(format!("action hook:{name}: arguments over 64 KiB"));
                    }
                    let wanted = hook_arity(&hook.command);
                    if args.len() < wanted {
                        return Err(format!("action {action}: hook {name:?} takes {wanted} argument(s), got {}", args.len()));
                    }
                }
                Action::Alarm { message, .. } if message.len() > 2000 => {
                    return Err(format!("an alarm of {} bytes; at most 2000", message.len()))
                }
                Action::ClaimVip | Action::ReleaseVip if self.file.vip.is_empty() => {
                    return Err(format!("action {action}: the policy declares no [[vip]]"))
                }
                Action::Route(target) if !self.file.relay.as_ref().is_some_and(|r| r.targets.contains_key(target)) => {
                    return undeclared("relay target", target)
                }
                Action::Command { peer: Some(p), .. } if !peers.contains(p) => {
                    return Err(format!("action {action}: no peer {p:?} in the node configuration"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// How many `{N}` arguments a hook template uses (the highest N + 1).
pub fn hook_arity(command: &[String]) -> usize {
    let mut n = 0;
    for word in command {
        let mut rest = word.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) => {
                    if let Ok(i) = after[..close].parse::<usize>() {
                        n = n.max(i + 1);
                    }
                    rest = &after[close + 1..];
                }
                None => break,
            }
        }
    }
    n
}

/// Collapse a plugin's reason to one bounded line.
fn one_line(text: &str) -> String {
    let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 300 {
        let mut cut = 300;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Load a policy: parse, resolve, compile, validate, dry-run. Nothing is swapped in by this function;
/// a caller replaces its current policy only with an `Ok`.
pub fn load(runtime: &Runtime, dirs: &PluginDirs, path: &Path) -> Result<LoadedPolicy, PolicyError> {
    let file = PolicyFile::read(path)?;
    let wasm = dirs.resolve(path, &file.plugin)?;
    let plugin = runtime.load(&wasm).map_err(|source| PolicyError::Plugin { policy: path.to_path_buf(), source })?;
    let params_json = file.params_json();
    let plugin_name = plugin.name().to_string();
    let faulted = |stage, fault| PolicyError::Faulted { policy: path.to_path_buf(), plugin: plugin_name.clone(), stage, fault };

    match plugin.validate(&params_json, &file.limits) {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            return Err(PolicyError::ParamsRejected { policy: path.to_path_buf(), plugin: plugin_name, message })
        }
        Err(fault) => return Err(faulted("faulted in validate", fault)),
    }
    let loaded = LoadedPolicy { path: path.to_path_buf(), file, plugin: Arc::new(plugin), params_json, loaded_at_ms: wall_ms() };
    loaded.decide(&dry_run_tick(&loaded.file), &[]).map_err(|fault| faulted("failed its dry-run tick", fault))?;
    Ok(loaded)
}

/// The synthetic tick of the dry run: a fresh standby node that has seen nothing yet, with the
/// policy's services, all stopped.
pub fn dry_run_tick(file: &PolicyFile) -> Tick {
    let now = wall_ms();
    Tick {
        now_ms: now,
        node: LocalNode { id: "dry-run".into(), mode_since_ms: now, started_ms: now, ..LocalNode::default() },
        heartbeat: Heartbeat::default(),
        services: file
            .services
            .iter()
            .map(|(name, spec)| Service {
                name: name.clone(),
                app_check: spec.app_check,
                watchdog: spec.watchdog,
                ..Service::default()
            })
            .collect(),
        ..Tick::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_arity_counts_highest_placeholder() {
        let cmd = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(hook_arity(&cmd(&["ip", "addr", "add", "{0}/24", "dev", "{1}"])), 2);
        assert_eq!(hook_arity(&cmd(&["x", "{2}"])), 3);
        assert_eq!(hook_arity(&cmd(&["x", "{json}", "{"])), 0);
    }

    #[test]
    fn reasons_become_one_bounded_line() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        assert!(one_line(&"é".repeat(400)).chars().count() <= 301);
    }

    #[test]
    fn plugin_names_resolve_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("p.wasm"), b"").unwrap();
        let dirs = PluginDirs(vec![a.clone(), b.clone()]);
        let policy = dir.path().join("policy.toml");
        assert_eq!(dirs.resolve(&policy, "p").unwrap(), b.join("p.wasm"));
        std::fs::write(dir.path().join("local.wasm"), b"").unwrap();
        assert_eq!(dirs.resolve(&policy, "local.wasm").unwrap(), dir.path().join("local.wasm"));
        let e = dirs.resolve(&policy, "missing").unwrap_err().to_string();
        assert!(e.contains("key `plugin`") && e.contains("missing.wasm"), "{e}");
    }
}
