//! Shadow policies (issue 12): a second policy that decides every live tick beside the live one, on
//! the same tick with its own state, and never acts.
//!
//! The loop hands each decided tick, with what the live policy decided, to [`Shadow::offer`], which
//! never waits nor makes a system call (the shadow's thread polls its queue): a thread of its own decides it with the shadow policy (inside the shadow policy's own
//! sandbox limits) and compares the mode and the actions. A full queue skips the tick and counts it, so
//! a slow or faulting shadow never touches the live decision or the loop's timing. Divergences are
//! counted (`/metrics`), kept (the latest [`RECENT`], both reasons, in `/status`, `vigil status` and the
//! status page) and told to the event log through [`Shadow::take_notes`], once per new divergence.
//!
//! The shadow's file is hot-reloaded like the live policy's (its own [`PolicyHandle`] and watcher);
//! a reload starts its count of clean ticks again. [`Shadow::promotable`] says whether it decided
//! `promote_after` ticks in a row without a fault, which `vigil policy promote` requires.
//!
//! Never: acts, changes the live policy's state, or blocks the loop.

use crate::model::{Decision, Mode, Tick};
use crate::policy::reload::{self, PolicyHandle, ReloadOutcome};
use crate::policy::{Fault, LoadedPolicy, PluginDirs, Runtime};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Divergences kept for the status.
pub const RECENT: usize = 10;

/// Ticks waiting for the shadow at most; more are skipped.
const QUEUE: usize = 16;

/// How often the shadow's thread looks for ticks. It polls rather than blocks so that handing it a
/// tick is never a system call on the loop's thread (a blocked receiver must be woken).
const POLL: Duration = Duration::from_millis(10);

/// One policy's answer to a tick: the mode it leads to, the actions, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub mode: Mode,
    pub actions: Vec<String>,
    pub reason: String,
}

impl Side {
    /// What `decided` means on `tick`: a decision without a mode keeps the node's.
    pub fn of(tick: &Tick, decided: &Decision) -> Side {
        Side { mode: decided.mode.unwrap_or(tick.node.mode), actions: decided.actions.iter().map(ToString::to_string).collect(), reason: decided.reason.clone() }
    }

    fn differs(&self, other: &Side) -> bool {
        self.mode != other.mode || self.actions != other.actions
    }
}

/// A tick where the shadow decided otherwise than the live policy.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    pub at_ms: u64,
    pub tick: u64,
    pub live: Side,
    pub shadow: Side,
}

/// The shadow's counters and latest divergences (`/status`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShadowStatus {
    pub policy: String,
    pub path: String,
    pub plugin_sha256: String,
    pub loaded_at_ms: u64,
    /// Ticks decided, and those that differed.
    pub ticks: u64,
    pub divergences: u64,
    /// Ticks decided in a row without a fault since the shadow was set or reloaded.
    pub clean_ticks: u64,
    pub faults: u64,
    pub last_fault: Option<String>,
    /// Ticks skipped because the shadow was still busy with earlier ones.
    pub skipped: u64,
    /// Time of the last and the slowest shadow call, and of all of them, microseconds.
    pub last_us: u64,
    pub max_us: u64,
    pub total_us: u64,
    /// Clean ticks `vigil policy promote` requires, and whether they are there.
    pub promote_after: u64,
    pub promotable: bool,
    /// The latest failed reload of the shadow's file (the previous shadow keeps deciding).
    pub reload_error: Option<String>,
    /// The latest divergences, newest first.
    pub recent: VecDeque<Divergence>,
}

/// The shadow's metrics, made once.
#[derive(Debug, Clone)]
pub struct ShadowMetrics {
    pub ticks: prometheus_client::metrics::counter::Counter,
    pub divergences: prometheus_client::metrics::counter::Counter,
    pub faults: prometheus_client::metrics::counter::Counter,
    pub skipped: prometheus_client::metrics::counter::Counter,
    pub decide: prometheus_client::metrics::histogram::Histogram,
}

impl ShadowMetrics {
    /// Handles not yet registered anywhere, the decide time in `buckets` (seconds).
    pub fn new(buckets: &[f64]) -> ShadowMetrics {
        ShadowMetrics {
            ticks: Default::default(),
            divergences: Default::default(),
            faults: Default::default(),
            skipped: Default::default(),
            decide: prometheus_client::metrics::histogram::Histogram::new(buckets.iter().copied()),
        }
    }
}

/// One tick for the shadow: the tick as the live policy saw it and what that policy decided.
struct Job {
    tick: Tick,
    live: Side,
    peers: Arc<[String]>,
}

#[derive(Debug, Default)]
struct Shared {
    status: Mutex<ShadowStatus>,
    /// For the event log, drained by the loop.
    notes: Mutex<Vec<String>>,
    /// The shadow policy's own state bytes, carried tick to tick.
    state: Mutex<Vec<u8>>,
}

/// A running shadow policy. Dropping it ends its thread and its watcher.
pub struct Shadow {
    handle: PolicyHandle,
    tx: SyncSender<Job>,
    shared: Arc<Shared>,
    metrics: ShadowMetrics,
    _watcher: Option<reload::Watcher>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow").field("policy", &self.handle.current().path).finish()
    }
}

impl Shadow {
    /// Load the shadow policy at `path` with the full load pipeline (the same checks as the live
    /// policy's), watch its files, and start its thread.
    pub fn start(runtime: &Arc<Runtime>, dirs: &PluginDirs, path: &Path, promote_after: u64, metrics: ShadowMetrics) -> Result<Shadow, String> {
        let policy = crate::policy::load(runtime, dirs, path).map_err(|e| format!("shadow policy {}: {e}", path.display()))?;
        let shared = Arc::new(Shared::default());
        describe(&mut shared.status.lock().expect("shadow status"), &policy, promote_after);
        let handle = PolicyHandle::new(policy);
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let (thread_shared, thread_handle, thread_metrics) = (shared.clone(), handle.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("vigil-shadow".into())
            .spawn(move || {
                let mut generation = thread_handle.generation();
                loop {
                    let job = match rx.try_recv() {
                        Ok(job) => job,
                        Err(mpsc::TryRecvError::Empty) => {
                            std::thread::sleep(POLL);
                            continue;
                        }
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    };
                    let policy = thread_handle.current();
                    if thread_handle.generation() != generation {
                        generation = thread_handle.generation();
                        describe(&mut thread_shared.status.lock().expect("shadow status"), &policy, promote_after);
                    }
                    decide(&thread_shared, &thread_metrics, &policy, job);
                }
            })
            .map_err(|e| format!("cannot start the shadow's thread: {e}"))?;
        let watched = shared.clone();
        let watcher = reload::watch(handle.clone(), runtime.clone(), dirs.clone(), Duration::from_millis(200), move |outcome| {
            let note = match outcome {
                ReloadOutcome::Reloaded { policy, plugin_sha256, took_ms } => {
                    watched.status.lock().expect("shadow status").reload_error = None;
                    format!("shadow policy {policy} reloaded (plugin {}, {took_ms} ms); its clean ticks count again", short(&plugin_sha256))
                }
                ReloadOutcome::Failed { error } => {
                    watched.status.lock().expect("shadow status").reload_error = Some(error.clone());
                    format!("shadow policy reload failed, the previous shadow keeps deciding: {error}")
                }
            };
            watched.notes.lock().expect("shadow notes").push(note);
        })
        .map_err(|e| tracing::warn!(error = %e, "shadow policy hot reload is off"))
        .ok();
        Ok(Shadow { handle, tx, shared, metrics, _watcher: watcher })
    }

    /// Give the shadow a decided tick (`live`: what the live policy decided on it). Never waits: a
    /// shadow still busy skips the tick.
    pub fn offer(&self, tick: Tick, live: Side, peers: Arc<[String]>) {
        match self.tx.try_send(Job { tick, live, peers }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.status.lock().expect("shadow status").skipped += 1;
                self.metrics.skipped.inc();
            }
        }
    }

    /// Counters and latest divergences.
    pub fn status(&self) -> ShadowStatus {
        self.shared.status.lock().expect("shadow status").clone()
    }

    /// What happened since the last call, for the event log.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.notes.lock().expect("shadow notes"))
    }

    /// The shadow policy file.
    pub fn path(&self) -> std::path::PathBuf {
        self.handle.current().path.clone()
    }

    /// Why the shadow may not be promoted yet (`None`: it may).
    pub fn promotable(&self) -> Result<(), String> {
        let s = self.status();
        if s.clean_ticks < s.promote_after {
            return Err(format!(
                "shadow policy {}: {} clean ticks in a row, promotion needs {} (shadow.promote_after_ticks){}",
                s.policy,
                s.clean_ticks,
                s.promote_after,
                s.last_fault.map(|f| format!("; last fault: {f}")).unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// The shadow policy's state bytes (handed to the live node on promotion).
    pub fn state(&self) -> Vec<u8> {
        self.shared.state.lock().expect("shadow state").clone()
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Reset the status for a newly loaded (or reloaded) shadow policy: the counts of clean ticks start
/// again, the history stays.
fn describe(status: &mut ShadowStatus, policy: &LoadedPolicy, promote_after: u64) {
    status.policy = policy.name();
    status.path = policy.path.display().to_string();
    status.plugin_sha256 = policy.plugin.sha256().to_string();
    status.loaded_at_ms = policy.loaded_at_ms;
    status.clean_ticks = 0;
    status.promote_after = promote_after;
    status.promotable = promote_after == 0;
}

/// Decide one tick with the shadow, on its own state, and compare.
fn decide(shared: &Shared, metrics: &ShadowMetrics, policy: &LoadedPolicy, job: Job) {
    let Job { mut tick, live, peers } = job;
    tick.state = shared.state.lock().expect("shadow state").clone();
    let started = Instant::now();
    let result: Result<Decision, Fault> = policy.decide(&tick, &peers);
    let took = started.elapsed();
    metrics.ticks.inc();
    metrics.decide.observe(took.as_secs_f64());
    let mut status = shared.status.lock().expect("shadow status");
    status.ticks += 1;
    status.last_us = took.as_micros() as u64;
    status.max_us = status.max_us.max(status.last_us);
    status.total_us += status.last_us;
    let decided = match result {
        Ok(d) => d,
        Err(fault) => {
            metrics.faults.inc();
            status.faults += 1;
            status.clean_ticks = 0;
            status.promotable = status.promote_after == 0;
            let first = status.last_fault.is_none();
            status.last_fault = Some(fault.to_string());
            if first || status.faults.is_power_of_two() {
                shared.notes.lock().expect("shadow notes").push(format!("shadow policy {} faulted ({} in all): {fault}; the live decision is unaffected", status.policy, status.faults));
            }
            return;
        }
    };
    *shared.state.lock().expect("shadow state") = decided.state.clone();
    status.clean_ticks += 1;
    status.promotable = status.clean_ticks >= status.promote_after;
    let shadow = Side::of(&tick, &decided);
    if !shadow.differs(&live) {
        return;
    }
    metrics.divergences.inc();
    status.divergences += 1;
    // One event per new divergence (not one per tick of a lasting one).
    let new = status.recent.front().is_none_or(|d| d.tick + 1 != tick.node.tick_count || d.live != live || d.shadow.mode != shadow.mode || d.shadow.actions != shadow.actions);
    if new {
        shared.notes.lock().expect("shadow notes").push(format!(
            "shadow policy {} diverges at tick {}: live {} [{}] ({}) · shadow {} [{}] ({})",
            status.policy,
            tick.node.tick_count,
            live.mode,
            live.actions.join(", "),
            live.reason,
            shadow.mode,
            shadow.actions.join(", "),
            shadow.reason
        ));
    }
    status.recent.push_front(Divergence { at_ms: tick.now_ms, tick: tick.node.tick_count, live, shadow });
    status.recent.truncate(RECENT);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Action;

    fn tick(mode: Mode) -> Tick {
        let mut t = Tick::default();
        t.node.mode = mode;
        t
    }

    #[test]
    fn a_decision_without_a_mode_keeps_the_nodes_and_actions_compare_in_order() {
        let keep = Decision { mode: None, actions: vec![Action::Start("a".into()), Action::Start("b".into())], state: vec![], reason: "x".into() };
        let side = Side::of(&tick(Mode::Active), &keep);
        assert_eq!((side.mode, side.actions.clone()), (Mode::Active, vec!["start:a".to_string(), "start:b".to_string()]));
        let other_order = Decision { actions: vec![Action::Start("b".into()), Action::Start("a".into())], ..keep.clone() };
        assert!(side.differs(&Side::of(&tick(Mode::Active), &other_order)));
        let other_reason = Decision { reason: "y".into(), ..keep.clone() };
        assert!(!side.differs(&Side::of(&tick(Mode::Active), &other_reason)), "a reason alone is not a divergence");
        let standby = Decision { mode: Some(Mode::Standby), ..keep };
        assert!(side.differs(&Side::of(&tick(Mode::Active), &standby)));
    }
}
