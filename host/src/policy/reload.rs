//! Hot reload: the current policy behind a handle, swapped atomically when its files change.
//!
//! A reload is diff-free and all-or-nothing, like Vector's config reload: build the new policy with
//! the full load pipeline (parse, compile, validate, dry run) off to the side; only if that succeeds
//! replace the `Arc` the node loop takes at the start of each tick. A tick therefore always runs
//! entirely on one policy, the plugin's state bytes (kept by the node, not the policy) carry over,
//! and a failed reload leaves the old policy deciding, with the error recorded for status and the
//! event log.
//!
//! File events are debounced: editors and deploy tools write in bursts (truncate, write, rename,
//! chmod), and a burst must cause one reload, of the final content.

use super::{load, LoadedPolicy, PluginDirs, PolicyError, Runtime};
use notify::{RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// What became of one reload attempt.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    /// The new policy decides from the next tick on.
    Reloaded { policy: String, plugin_sha256: String, took_ms: u64 },
    /// The old policy keeps deciding.
    Failed { error: String },
}

/// Counters and the latest error, for `/status` and metrics.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub reloads: u64,
    pub failures: u64,
    /// The error of the latest attempt, cleared by a successful one.
    pub last_error: Option<String>,
}

/// Shared access to the policy currently deciding.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    current: RwLock<Arc<LoadedPolicy>>,
    generation: AtomicU64,
    status: Mutex<ReloadStatus>,
    /// Serializes reloads (watcher and `/admin/reload`).
    reloading: Mutex<()>,
}

impl PolicyHandle {
    /// A handle on an already loaded policy.
    pub fn new(policy: LoadedPolicy) -> PolicyHandle {
        PolicyHandle {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(policy)),
                generation: AtomicU64::new(1),
                status: Mutex::new(ReloadStatus::default()),
                reloading: Mutex::new(()),
            }),
        }
    }

    /// The policy deciding now. Take it once per tick.
    pub fn current(&self) -> Arc<LoadedPolicy> {
        self.inner.current.read().expect("policy lock").clone()
    }

    /// Increases by one at every successful swap.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Reload counters and the latest error.
    pub fn status(&self) -> ReloadStatus {
        self.inner.status.lock().expect("status lock").clone()
    }

    /// Swap in a policy loaded elsewhere (a promoted shadow, already through the full load pipeline).
    pub fn replace(&self, policy: Arc<LoadedPolicy>) {
        let _one_at_a_time = self.inner.reloading.lock().expect("reload lock");
        *self.inner.current.write().expect("policy lock") = policy;
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.status.lock().expect("status lock").last_error = None;
    }

    /// Load the policy file again and swap it in if, and only if, it loads.
    pub fn reload(&self, runtime: &Runtime, dirs: &PluginDirs) -> ReloadOutcome {
        let _one_at_a_time = self.inner.reloading.lock().expect("reload lock");
        let path = self.current().path.clone();
        let started = Instant::now();
        let result: Result<LoadedPolicy, PolicyError> = load(runtime, dirs, &path);
        let mut status = self.inner.status.lock().expect("status lock");
        match result {
            Ok(policy) => {
                let outcome = ReloadOutcome::Reloaded {
                    policy: policy.name(),
                    plugin_sha256: policy.plugin.sha256().to_string(),
                    took_ms: started.elapsed().as_millis() as u64,
                };
                *self.inner.current.write().expect("policy lock") = Arc::new(policy);
                self.inner.generation.fetch_add(1, Ordering::AcqRel);
                status.reloads += 1;
                status.last_error = None;
                tracing::info!(policy = %path.display(), ?outcome, "policy reloaded");
                outcome
            }
            Err(error) => {
                let error = error.to_string();
                status.failures += 1;
                status.last_error = Some(error.clone());
                tracing::warn!(policy = %path.display(), %error, "policy reload failed; the previous policy keeps deciding");
                ReloadOutcome::Failed { error }
            }
        }
    }
}

/// Watches the current policy's file and plugin and reloads on change, until dropped.
pub struct Watcher {
    /// Dropping this closes the channel the watch thread polls, which ends the thread.
    _stop: mpsc::Sender<()>,
}

/// Start watching. `on_reload` hears every attempt (for the event log).
pub fn watch(
    handle: PolicyHandle,
    runtime: Arc<Runtime>,
    dirs: PluginDirs,
    debounce: Duration,
    on_reload: impl Fn(ReloadOutcome) + Send + 'static,
) -> notify::Result<Watcher> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    let mut watched_dirs = BTreeSet::new();
    let mut targets = watch_targets(&handle.current(), &dirs);
    update_watches(&mut watcher, &mut watched_dirs, &targets);
    let (stop, stopped) = mpsc::channel::<()>();
    let mut generation = handle.generation();
    std::thread::Builder::new()
        .name("vigil-policy-watch".into())
        .spawn(move || loop {
            if let Err(mpsc::TryRecvError::Disconnected) = stopped.try_recv() {
                return;
            }
            // A policy swapped in from elsewhere (a promoted shadow) has files of its own.
            if handle.generation() != generation {
                generation = handle.generation();
                targets = watch_targets(&handle.current(), &dirs);
                update_watches(&mut watcher, &mut watched_dirs, &targets);
            }
            let event = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(event) => event,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if !touches(&event, &targets) {
                continue;
            }
            // Quiet period: the burst is over when nothing relevant arrives for `debounce`.
            let mut deadline = Instant::now() + debounce;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(event) if touches(&event, &targets) => deadline = Instant::now() + debounce,
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            on_reload(handle.reload(&runtime, &dirs));
            // The policy may now name another plugin file.
            generation = handle.generation();
            targets = watch_targets(&handle.current(), &dirs);
            update_watches(&mut watcher, &mut watched_dirs, &targets);
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(Watcher { _stop: stop })
}

/// The files whose change triggers a reload: the policy file and its plugin.
fn watch_targets(policy: &LoadedPolicy, dirs: &PluginDirs) -> Vec<PathBuf> {
    let mut targets = vec![absolute(&policy.path)];
    if let Ok(plugin) = dirs.resolve(&policy.path, &policy.file.plugin) {
        targets.push(absolute(&plugin));
    }
    targets.push(absolute(policy.plugin.path()));
    targets.sort();
    targets.dedup();
    targets
}

/// The absolute path with its directory canonicalized (the file itself may be replaced at any time).
fn absolute(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

fn update_watches(watcher: &mut notify::RecommendedWatcher, watched: &mut BTreeSet<PathBuf>, targets: &[PathBuf]) {
    let wanted: BTreeSet<PathBuf> = targets.iter().filter_map(|t| t.parent().map(Path::to_path_buf)).collect();
    for dir in watched.difference(&wanted) {
        let _ = watcher.unwatch(dir);
    }
    for dir in wanted.difference(watched) {
        // Directories, not files: deploy tools replace files by rename, which ends a file watch.
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch policy directory; hot reload is off for it");
        }
    }
    *watched = wanted;
}

fn touches(event: &notify::Result<notify::Event>, targets: &[PathBuf]) -> bool {
    match event {
        Ok(event) if !event.kind.is_access() => event.paths.iter().any(|p| targets.iter().any(|t| t == &absolute(p))),
        _ => false,
    }
}
