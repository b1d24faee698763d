//! Local services: running their commands, knowing their state, and the watchdog's limits.
//!
//! Owns: running any external command ([`run_command`]: own process group, no stdin, a timeout that
//! kills the whole group, a bounded tail of its output); the observed [`ServiceState`] of every declared
//! service, its last start and its restart history ([`Services`]); idempotent start / stop / restart;
//! the watchdog's mechanics (exponential backoff and a cap per hour); the service part of a tick
//! ([`Services::view`]) and of `/app` ([`Services::app_healthy`]).
//!
//! Never: decides to start, stop or restart anything (the plugin does, through the executor); runs a
//! command through a shell the policy did not ask for; blocks a thread while a command runs; reads the
//! system clock for anything a test must control (time comes from a [`Clock`]'s wall time or a
//! `now_ms` argument).
//!
//! ## How state is observed
//!
//! With a `status` command: exit 0 is `running`; any other exit code (LSB's 3 "not running", 1, 4 …) is
//! `stopped`; a status command that cannot be run, times out or dies of a signal gives `unknown`.
//! [`Services::poll`] runs every status command concurrently, each with the service's `timeout_ms`.
//!
//! Without one, the state is what vigil's own commands left it in: a successful start means
//! `running`, a successful stop `stopped`, a failed start `stopped`, a failed stop `unknown`. Every
//! service is `unknown` until first observed, so a first start or stop always runs its command.
//!
//! ## Watchdog limits
//!
//! A start or restart of a `watchdog = true` service runs its start command only when
//! - fewer than [`WatchdogLimits::max_per_hour`] restarts happened in the last hour (a restart is any run
//!   of the start command after the first one by this daemon, and any `restart`), and
//! - the backoff since the last run has passed: 1 s after the first run of a streak, then 2 s, 4 s …
//!   up to 60 s; a streak ends after 10 minutes without a run.
//!
//! A refused action changes nothing (a restart is refused before its stop) and its message says why
//! and when to try again. The plugin only decides to restart; these limits are the host's.

use crate::clock::{Clock, SystemClock};
use crate::model::{self, ServiceState};
use crate::policy::file::{parse_hhmm, ServiceSpec};
use chrono::{Duration as ChronoDuration, Local, NaiveDateTime, TimeZone};
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a start or stop command did not bring its service where it should ([`Services::drive`]).
enum Drive {
    /// The command failed: its summary.
    Failed(String),
    /// The command succeeded but the status command kept saying this.
    Unconfirmed(ServiceState),
}

/// How much of a command's output (stdout and stderr, interleaved as it arrives) is kept.
pub const OUTPUT_TAIL_BYTES: usize = 2048;

/// After a command exits, how long its pipes are still read. A command that leaves a background
/// process holding its stdout would otherwise keep us waiting; that process's output is drained in
/// the background (never into a closed pipe, so it gets no SIGPIPE) and discarded.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// How often a start or stop is confirmed with the status command, until the service's `timeout_ms`.
const CONFIRM_EVERY: Duration = Duration::from_millis(100);

const HOUR_MS: u64 = 3_600_000;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It outlived its timeout; its whole process group was killed.
    TimedOut,
    /// It could not be started (or waited for); the text says why.
    NotRun(String),
}

/// The result of [`run_command`].
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// Exited with code 0.
    pub success: bool,
    /// How it ended.
    pub exit: Exit,
    /// Wall time from spawn to exit (or to the kill).
    pub duration: Duration,
    /// The last [`OUTPUT_TAIL_BYTES`] of stdout and stderr, lossily decoded, trimmed.
    pub output: String,
}

impl CommandOutcome {
    /// The exit code, when it exited by itself.
    pub fn code(&self) -> Option<i32> {
        match self.exit {
            Exit::Code(code) => Some(code),
            _ => None,
        }
    }

    /// One line for logs and action results: how it ended, how long it took, and the last line of
    /// its output.
    pub fn summary(&self) -> String {
        let ms = self.duration.as_millis();
        let mut line = match &self.exit {
            Exit::Code(code) => format!("exit {code} in {ms} ms"),
            Exit::Signal(sig) => format!("killed by signal {sig} after {ms} ms"),
            Exit::TimedOut => format!("timed out after {ms} ms (process group killed)"),
            Exit::NotRun(why) => format!("could not run: {why}"),
        };
        if let Some(last) = self.output.lines().rev().find(|l| !l.trim().is_empty()) {
            line.push_str(": ");
            line.push_str(last.trim());
        }
        line
    }
}

/// Run `argv` (program, then arguments; no shell) with stdin from `/dev/null`, in a process group of
/// its own. On timeout the whole group gets SIGKILL, so children it forked die with it. If the returned
/// future is dropped before the command ends, the group is killed too. A command that exits normally
/// leaves its background children alone (a start command may legitimately launch a daemon).
pub async fn run_command(argv: &[String], timeout: Duration) -> CommandOutcome {
    run_command_keeping(argv, timeout, OUTPUT_TAIL_BYTES).await
}

/// [`run_command`] keeping the last `keep` bytes of output instead of [`OUTPUT_TAIL_BYTES`]: for
/// commands whose output is read, not just shown (`ip -o addr show`).
pub async fn run_command_keeping(argv: &[String], timeout: Duration, keep: usize) -> CommandOutcome {
    let started = Instant::now();
    let not_run = |why: String| CommandOutcome {
        success: false,
        exit: Exit::NotRun(why),
        duration: started.elapsed(),
        output: String::new(),
    };
    let Some((program, args)) = argv.split_first() else {
        return not_run("empty command".into());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return not_run(format!("{program}: {e}")),
    };
    let mut group = GroupGuard(child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)));

    let tail = Arc::new(Mutex::new(Tail { bytes: Vec::new(), keep }));
    let mut readers = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(drain(out, tail.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(drain(err, tail.clone())));
    }

    let exit = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::NotRun(format!("{program}: ended with {status}")),
        },
        Ok(Err(e)) => Exit::NotRun(format!("{program}: waiting for it failed: {e}")),
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            Exit::TimedOut
        }
    };
    let duration = started.elapsed();
    group.disarm();

    let grace = tokio::time::Instant::now() + DRAIN_GRACE;
    for reader in readers {
        // Dropping the handle on timeout detaches the reader; it drains until EOF on its own.
        let _ = tokio::time::timeout_at(grace, reader).await;
    }
    let output = lock(&tail).text();
    CommandOutcome { success: exit == Exit::Code(0), exit, duration, output }
}

/// Kills a process group when dropped, unless disarmed.
struct GroupGuard(Option<rustix::process::Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `keep` bytes a command wrote.
struct Tail {
    bytes: Vec<u8>,
    keep: usize,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() > 2 * self.keep {
            let cut = self.bytes.len() - self.keep;
            self.bytes.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let start = self.bytes.len().saturating_sub(self.keep);
        String::from_utf8_lossy(&self.bytes[start..]).trim().to_string()
    }
}

async fn drain(mut pipe: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lock(&tail).push(&buf[..n]),
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update; our data stays usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The watchdog's restart limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogLimits {
    /// The backoff after the first start of a streak; it doubles with every further start.
    pub first_backoff_ms: u64,
    /// The longest backoff.
    pub max_backoff_ms: u64,
    /// A streak ends after this long without a start.
    pub reset_after_ms: u64,
    /// Restarts allowed in any hour.
    pub max_per_hour: u32,
}

impl Default for WatchdogLimits {
    fn default() -> Self {
        WatchdogLimits { first_backoff_ms: 1_000, max_backoff_ms: 60_000, reset_after_ms: 600_000, max_per_hour: 5 }
    }
}

impl WatchdogLimits {
    fn backoff_ms(&self, streak: u32) -> u64 {
        let doublings = streak.saturating_sub(1).min(32);
        self.first_backoff_ms.saturating_mul(1u64 << doublings).min(self.max_backoff_ms)
    }
}

/// What vigil knows of one service.
#[derive(Debug, Clone)]
struct Entry {
    state: ServiceState,
    /// Bumped whenever a start or stop sets the state, so a poll that began before it cannot
    /// overwrite the newer state with an older observation.
    generation: u64,
    /// The last successful run of the start command.
    last_start_ms: Option<u64>,
    /// The last run of the start command, successful or not.
    last_run_ms: Option<u64>,
    /// Runs of the start command in the current backoff streak.
    streak: u32,
    /// When restarts happened (pruned to the last hour).
    restarts: VecDeque<u64>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            state: ServiceState::Unknown,
            generation: 0,
            last_start_ms: None,
            last_run_ms: None,
            streak: 0,
            restarts: VecDeque::new(),
        }
    }
}

impl Entry {
    fn recent_restarts(&self, now_ms: u64) -> u32 {
        self.restarts.iter().filter(|&&t| now_ms.saturating_sub(t) < HOUR_MS).count() as u32
    }
}

/// The node's local services. One per node; share it in an `Arc` (all methods take `&self`).
///
/// Start, stop and restart are serialised with one another (the executor runs them one at a time
/// anyway); [`Services::poll`] runs beside them.
pub struct Services {
    clock: Arc<dyn Clock>,
    limits: WatchdogLimits,
    entries: Mutex<BTreeMap<String, Entry>>,
    ops: tokio::sync::Mutex<()>,
}

impl Default for Services {
    fn default() -> Self {
        Services::new()
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("limits", &self.limits).field("entries", &*lock(&self.entries)).finish()
    }
}

impl Services {
    /// Services on the system clock with the default watchdog limits.
    pub fn new() -> Services {
        Services::with_clock(SystemClock::new(), WatchdogLimits::default())
    }

    /// Services on the given clock and limits (tests use a manual clock).
    pub fn with_clock(clock: Arc<dyn Clock>, limits: WatchdogLimits) -> Services {
        Services { clock, limits, entries: Mutex::new(BTreeMap::new()), ops: tokio::sync::Mutex::new(()) }
    }

    /// The clock these services read.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The last observed state of a service (`unknown` before any observation).
    pub fn state(&self, name: &str) -> ServiceState {
        lock(&self.entries).get(name).map_or(ServiceState::Unknown, |e| e.state)
    }

    /// Start `name` unless it already runs. With a status command, the start is confirmed by it
    /// (polled until the service's `timeout_ms`). `Ok` carries a message for the action result.
    pub async fn start(&self, name: &str, spec: &ServiceSpec) -> Result<String, String> {
        let _op = self.ops.lock().await;
        match self.observe(name, spec).await {
            ServiceState::Running if spec.status.is_some() => return Ok("already running".into()),
            ServiceState::Running => return Ok("already running (as vigil started it; no status command)".into()),
            _ => {}
        }
        self.gate(name, spec)?;
        self.run_start(name, spec, false).await
    }

    /// Stop `name` unless it is already stopped, confirming with the status command when there is one.
    pub async fn stop(&self, name: &str, spec: &ServiceSpec) -> Result<String, String> {
        let _op = self.ops.lock().await;
        self.stop_locked(name, spec).await
    }

    /// Stop, then start. Refused by the watchdog limits before anything is stopped.
    pub async fn restart(&self, name: &str, spec: &ServiceSpec) -> Result<String, String> {
        let _op = self.ops.lock().await;
        self.gate(name, spec)?;
        let stopped = self.stop_locked(name, spec).await.map_err(|e| format!("restart: {e}"))?;
        let started = self.run_start(name, spec, true).await.map_err(|e| format!("restart: stopped ({stopped}), then {e}"))?;
        Ok(format!("restarted: {stopped}; {started}"))
    }

    /// Run every status command at once (each with its service's timeout) and record the states.
    /// Services without a status command keep their tracked state.
    pub async fn poll(&self, specs: &BTreeMap<String, ServiceSpec>) {
        let mut set = tokio::task::JoinSet::new();
        for (name, spec) in specs {
            let Some(status) = &spec.status else { continue };
            let generation = lock(&self.entries).entry(name.clone()).or_default().generation;
            let (name, argv, timeout) = (name.clone(), status.argv(), Duration::from_millis(spec.timeout_ms));
            set.spawn(async move {
                let outcome = run_command(&argv, timeout).await;
                (name, generation, outcome)
            });
        }
        while let Some(joined) = set.join_next().await {
            let Ok((name, generation, outcome)) = joined else { continue };
            let mut entries = lock(&self.entries);
            let entry = entries.entry(name.clone()).or_default();
            if entry.generation == generation {
                let state = status_state(&outcome);
                if entry.state != state {
                    tracing::info!(service = %name, from = %entry.state, to = %state, status = %outcome.summary(), "service state changed");
                }
                entry.state = state;
            }
        }
    }

    /// The services of a tick, in the order of `specs`. `now_ms` is the tick's time.
    pub fn view(&self, specs: &BTreeMap<String, ServiceSpec>, now_ms: u64) -> Vec<model::Service> {
        let entries = lock(&self.entries);
        specs
            .iter()
            .map(|(name, spec)| {
                let entry = entries.get(name);
                let restart_due = match (&spec.daily_restart, entry.and_then(|e| e.last_start_ms)) {
                    (Some(hhmm), Some(last_start)) => {
                        parse_hhmm(hhmm).is_ok_and(|minutes| daily_restart_due(minutes, last_start, now_ms))
                    }
                    _ => false,
                };
                model::Service {
                    name: name.clone(),
                    state: entry.map_or(ServiceState::Unknown, |e| e.state),
                    app_check: spec.app_check,
                    watchdog: spec.watchdog,
                    restart_due,
                    recent_restarts: entry.map_or(0, |e| e.recent_restarts(now_ms)),
                }
            })
            .collect()
    }

    /// Whether every service marked `app_check` runs (true when none is marked), for `/app`.
    pub fn app_healthy(&self, specs: &BTreeMap<String, ServiceSpec>) -> bool {
        let entries = lock(&self.entries);
        specs
            .iter()
            .filter(|(_, spec)| spec.app_check)
            .all(|(name, _)| entries.get(name).is_some_and(|e| e.state == ServiceState::Running))
    }

    /// The state as a start or stop needs it: asked of the status command when there is one (and
    /// recorded), else the tracked state.
    async fn observe(&self, name: &str, spec: &ServiceSpec) -> ServiceState {
        match &spec.status {
            Some(status) => {
                let outcome = run_command(&status.argv(), Duration::from_millis(spec.timeout_ms)).await;
                let state = status_state(&outcome);
                self.set_state(name, state);
                state
            }
            None => self.state(name),
        }
    }

    /// Poll the status command until it reports `want` or the service's timeout passes.
    async fn confirm(&self, name: &str, spec: &ServiceSpec, want: ServiceState) -> Result<(), ServiceState> {
        let deadline = Instant::now() + Duration::from_millis(spec.timeout_ms);
        loop {
            let state = self.observe(name, spec).await;
            if state == want {
                return Ok(());
            }
            if Instant::now() + CONFIRM_EVERY > deadline {
                return Err(state);
            }
            tokio::time::sleep(CONFIRM_EVERY).await;
        }
    }

    async fn stop_locked(&self, name: &str, spec: &ServiceSpec) -> Result<String, String> {
        if self.observe(name, spec).await == ServiceState::Stopped {
            return Ok("already stopped".into());
        }
        match self.drive(name, spec, &spec.stop.argv(), ServiceState::Stopped, ServiceState::Unknown).await {
            Ok(summary) => Ok(format!("stopped ({summary})")),
            Err(Drive::Failed(summary)) => Err(format!("stop failed: {summary}")),
            Err(Drive::Unconfirmed(state)) => Err(format!("stop command succeeded but the status command still says {state}")),
        }
    }

    /// Run `argv` (a start or stop command) to bring `name` to `target`, then confirm with the status
    /// command or, without one, take the command's success as the new state. When the command fails,
    /// the state is read again, or set to `if_failed` without a status command. Returns the command's
    /// summary.
    async fn drive(&self, name: &str, spec: &ServiceSpec, argv: &[String], target: ServiceState, if_failed: ServiceState) -> Result<String, Drive> {
        let outcome = run_command(argv, Duration::from_millis(spec.timeout_ms)).await;
        let has_status = spec.status.is_some();
        if !outcome.success {
            if has_status {
                self.observe(name, spec).await;
            } else {
                self.set_state(name, if_failed);
            }
            return Err(Drive::Failed(outcome.summary()));
        }
        if has_status {
            self.confirm(name, spec, target).await.map_err(Drive::Unconfirmed)?;
        } else {
            self.set_state(name, target);
        }
        Ok(outcome.summary())
    }

    /// Run the start command (the caller checked idempotence and the watchdog limits).
    async fn run_start(&self, name: &str, spec: &ServiceSpec, is_restart: bool) -> Result<String, String> {
        self.note_start_run(name, is_restart);
        let summary = match self.drive(name, spec, &spec.start.argv(), ServiceState::Running, ServiceState::Stopped).await {
            Ok(summary) => summary,
            Err(Drive::Failed(summary)) => return Err(format!("start failed: {summary}")),
            Err(Drive::Unconfirmed(state)) => return Err(format!("start command succeeded but the status command says {state}")),
        };
        lock(&self.entries).entry(name.to_string()).or_default().last_start_ms = Some(self.clock.wall_ms());
        Ok(format!("started ({summary})"))
    }

    /// Refuse a start of a watchdog service inside its backoff window or over its hourly cap.
    fn gate(&self, name: &str, spec: &ServiceSpec) -> Result<(), String> {
        if !spec.watchdog {
            return Ok(());
        }
        let now = self.clock.wall_ms();
        let entries = lock(&self.entries);
        let Some(entry) = entries.get(name) else { return Ok(()) };
        let Some(last_run) = entry.last_run_ms else { return Ok(()) };
        let recent = entry.recent_restarts(now);
        if recent >= self.limits.max_per_hour {
            return Err(format!("watchdog cap reached: {recent} restarts in the last hour"));
        }
        let since = now.saturating_sub(last_run);
        if since < self.limits.reset_after_ms {
            let wait = self.limits.backoff_ms(entry.streak).saturating_sub(since);
            if wait > 0 {
                return Err(format!("backoff: next restart allowed in {} s", wait.div_ceil(1000)));
            }
        }
        Ok(())
    }

    /// Record a run of the start command in the restart history and the backoff streak.
    fn note_start_run(&self, name: &str, is_restart: bool) {
        let now = self.clock.wall_ms();
        let mut entries = lock(&self.entries);
        let entry = entries.entry(name.to_string()).or_default();
        if is_restart || entry.last_run_ms.is_some() {
            entry.restarts.push_back(now);
        }
        while entry.restarts.front().is_some_and(|&t| now.saturating_sub(t) >= HOUR_MS) {
            entry.restarts.pop_front();
        }
        entry.streak = match entry.last_run_ms {
            Some(last) if now.saturating_sub(last) < self.limits.reset_after_ms => entry.streak.saturating_add(1),
            _ => 1,
        };
        entry.last_run_ms = Some(now);
    }

    fn set_state(&self, name: &str, state: ServiceState) {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(name.to_string()).or_default();
        if entry.state != state {
            tracing::info!(service = %name, from = %entry.state, to = %state, "service state changed");
        }
        entry.state = state;
        entry.generation += 1;
    }
}

/// What a status command's outcome says about the service.
fn status_state(outcome: &CommandOutcome) -> ServiceState {
    match outcome.exit {
        Exit::Code(0) => ServiceState::Running,
        Exit::Code(_) => ServiceState::Stopped,
        Exit::Signal(_) | Exit::TimedOut | Exit::NotRun(_) => ServiceState::Unknown,
    }
}

/// Whether a daily restart at `minutes` after local midnight is due: its most recent occurrence at or
/// before `now_ms` (local time of `now_ms`) is after `last_start_ms`.
pub fn daily_restart_due(minutes: u32, last_start_ms: u64, now_ms: u64) -> bool {
    last_daily_occurrence_ms(minutes, now_ms).is_some_and(|at| at > last_start_ms)
}

/// The latest instant at or before `now_ms` whose local time is `minutes` after midnight. A time that
/// falls in a daylight-saving gap counts at the first valid minute after it; an ambiguous one at its
/// earlier instant.
pub fn last_daily_occurrence_ms(minutes: u32, now_ms: u64) -> Option<u64> {
    let now = Local.timestamp_millis_opt(i64::try_from(now_ms).ok()?).single()?;
    let today = now.date_naive();
    let (hour, minute) = (minutes / 60, minutes % 60);
    for days_back in 0..=2 {
        let date = today - ChronoDuration::days(days_back);
        let wall: NaiveDateTime = date.and_hms_opt(hour, minute, 0)?;
        // Skip forward through a daylight-saving gap (at most a few hours anywhere).
        let Some(at) = (0..=240).find_map(|m| Local.from_local_datetime(&(wall + ChronoDuration::minutes(m))).earliest())
        else {
            continue;
        };
        let at_ms = at.timestamp_millis();
        if at_ms <= now_ms as i64 {
            return u64::try_from(at_ms).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::file::CommandSpec;
    use std::path::Path;
    use crate::clock::ManualClock;

    fn sh(script: &str) -> CommandSpec {
        CommandSpec::Shell(script.to_string())
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    /// A service whose "process" is a marker file: start creates it (and logs a line), stop removes
    /// it, status tests for it. `starts.log` counts how often the start command really ran.
    fn marker_service(dir: &Path, with_status: bool) -> ServiceSpec {
        let d = dir.display();
        ServiceSpec {
            start: sh(&format!("echo start >> {d}/starts.log; touch {d}/running")),
            stop: sh(&format!("echo stop >> {d}/stops.log; rm -f {d}/running")),
            status: with_status.then(|| sh(&format!("test -e {d}/running || exit 3"))),
            timeout_ms: 2_000,
            watchdog: false,
            app_check: true,
            daily_restart: None,
        }
    }

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
    }

    #[tokio::test]
    async fn command_reports_exit_code_and_output_tail() {
        let out = run_command(&argv(&["/bin/sh", "-c", "echo to-out; echo to-err >&2; exit 7"]), Duration::from_secs(5)).await;
        assert_eq!(out.exit, Exit::Code(7));
        assert!(!out.success);
        assert!(out.output.contains("to-out") && out.output.contains("to-err"), "{out:?}");
        assert!(out.summary().starts_with("exit 7 in "), "{}", out.summary());

        let big = run_command(&argv(&["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; echo END"]), Duration::from_secs(5)).await;
        assert!(big.success);
        assert!(big.output.len() <= OUTPUT_TAIL_BYTES && big.output.ends_with("END"), "{}", big.output.len());

        let missing = run_command(&argv(&["/nonexistent/program"]), Duration::from_secs(1)).await;
        assert!(matches!(&missing.exit, Exit::NotRun(why) if why.contains("/nonexistent/program")), "{missing:?}");
        assert!(matches!(run_command(&[], Duration::from_secs(1)).await.exit, Exit::NotRun(_)));
    }

    #[tokio::test]
    async fn stdin_is_null() {
        let out = run_command(&argv(&["/bin/sh", "-c", "cat; echo done"]), Duration::from_secs(5)).await;
        assert!(out.success && out.output == "done", "{out:?}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // The background child would write the marker after the timeout if it outlived its parent.
        let script = format!("(sleep 0.6; touch {}) & sleep 100 & wait", marker.display());
        let started = Instant::now();
        let out = run_command(&argv(&["/bin/sh", "-c", &script]), Duration::from_millis(200)).await;
        assert_eq!(out.exit, Exit::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!marker.exists(), "a child of the timed-out command outlived it");
    }

    #[tokio::test]
    async fn a_background_daemon_neither_blocks_nor_dies() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("daemon-ran");
        // The daemon keeps stdout open and writes to it after the command has exited.
        let script = format!("(sleep 1; echo late; touch {}) & echo launched", marker.display());
        let started = Instant::now();
        let out = run_command(&argv(&["/bin/sh", "-c", &script]), Duration::from_secs(5)).await;
        assert!(out.success && out.output.contains("launched"), "{out:?}");
        assert!(started.elapsed() < Duration::from_millis(800), "waited for the daemon: {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(marker.exists(), "the background process was killed or got SIGPIPE");
    }

    #[tokio::test]
    async fn start_and_stop_are_idempotent_with_a_status_command() {
        let dir = tempfile::tempdir().unwrap();
        let spec = marker_service(dir.path(), true);
        let services = Services::new();
        assert_eq!(services.state("app"), ServiceState::Unknown);

        let first = services.start("app", &spec).await.unwrap();
        assert!(first.starts_with("started"), "{first}");
        assert_eq!(services.start("app", &spec).await.unwrap(), "already running");
        assert_eq!(lines(&dir.path().join("starts.log")), 1);
        assert_eq!(services.state("app"), ServiceState::Running);

        assert!(services.stop("app", &spec).await.unwrap().starts_with("stopped"));
        assert_eq!(services.stop("app", &spec).await.unwrap(), "already stopped");
        assert_eq!(lines(&dir.path().join("stops.log")), 1);
        assert_eq!(services.state("app"), ServiceState::Stopped);

        // Something else started it behind vigil's back: start sees it and does nothing.
        std::fs::write(dir.path().join("running"), b"").unwrap();
        assert_eq!(services.start("app", &spec).await.unwrap(), "already running");
        assert_eq!(lines(&dir.path().join("starts.log")), 1);

        let restarted = services.restart("app", &spec).await.unwrap();
        assert!(restarted.starts_with("restarted"), "{restarted}");
        assert_eq!((lines(&dir.path().join("stops.log")), lines(&dir.path().join("starts.log"))), (2, 2));
        assert_eq!(services.state("app"), ServiceState::Running);
    }

    #[tokio::test]
    async fn without_a_status_command_the_state_is_tracked() {
        let dir = tempfile::tempdir().unwrap();
        let spec = marker_service(dir.path(), false);
        let services = Services::new();
        services.start("app", &spec).await.unwrap();
        assert_eq!(services.state("app"), ServiceState::Running);
        assert!(services.start("app", &spec).await.unwrap().starts_with("already running"));
        assert_eq!(lines(&dir.path().join("starts.log")), 1);
        services.stop("app", &spec).await.unwrap();
        assert_eq!(services.state("app"), ServiceState::Stopped);
        assert_eq!(services.stop("app", &spec).await.unwrap(), "already stopped");

        let failing = ServiceSpec { stop: sh("exit 1"), ..spec.clone() };
        services.start("app", &failing).await.unwrap();
        let e = services.stop("app", &failing).await.unwrap_err();
        assert!(e.starts_with("stop failed: exit 1"), "{e}");
        assert_eq!(services.state("app"), ServiceState::Unknown);
    }

    #[tokio::test]
    async fn a_start_the_status_command_denies_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ServiceSpec { start: sh("true"), timeout_ms: 300, ..marker_service(dir.path(), true) };
        let services = Services::new();
        let e = services.start("app", &spec).await.unwrap_err();
        assert!(e.contains("status command says stopped"), "{e}");
        assert_eq!(services.state("app"), ServiceState::Stopped);

        let failing = ServiceSpec { start: sh("echo no such unit >&2; exit 5"), ..spec };
        let e = services.start("app", &failing).await.unwrap_err();
        assert!(e.starts_with("start failed: exit 5") && e.ends_with("no such unit"), "{e}");
    }

    #[tokio::test]
    async fn poll_reads_every_status_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let mut specs = BTreeMap::new();
        let base = marker_service(dir.path(), true);
        specs.insert("up".to_string(), ServiceSpec { status: Some(sh("sleep 0.5; exit 0")), ..base.clone() });
        specs.insert("down".to_string(), ServiceSpec { status: Some(sh("sleep 0.5; exit 3")), ..base.clone() });
        specs.insert("hung".to_string(), ServiceSpec { status: Some(sh("sleep 5")), timeout_ms: 500, ..base.clone() });
        specs.insert("broken".to_string(), ServiceSpec { status: Some(CommandSpec::Argv(argv(&["/nonexistent"]))), ..base.clone() });
        specs.insert("untracked".to_string(), ServiceSpec { status: None, ..base.clone() });

        let services = Services::new();
        let started = Instant::now();
        services.poll(&specs).await;
        assert!(started.elapsed() < Duration::from_millis(1_400), "status commands ran one after another: {:?}", started.elapsed());
        let view = services.view(&specs, crate::policy::wall_ms());
        let states: Vec<(&str, ServiceState)> = view.iter().map(|s| (s.name.as_str(), s.state)).collect();
        assert_eq!(
            states,
            [
                ("broken", ServiceState::Unknown),
                ("down", ServiceState::Stopped),
                ("hung", ServiceState::Unknown),
                ("untracked", ServiceState::Unknown),
                ("up", ServiceState::Running),
            ]
        );
        assert!(!services.app_healthy(&specs));
        let only_up: BTreeMap<_, _> = specs.iter().filter(|(n, _)| *n == "up").map(|(n, s)| (n.clone(), s.clone())).collect();
        assert!(services.app_healthy(&only_up));
        assert!(services.app_healthy(&BTreeMap::new()));
    }

    #[tokio::test]
    async fn watchdog_backoff_doubles_and_the_hourly_cap_holds() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ServiceSpec { watchdog: true, ..marker_service(dir.path(), false) };
        let t0 = 1_700_000_000_000;
        let clock = ManualClock::new(t0);
        let services = Services::with_clock(clock.clone(), WatchdogLimits::default());

        services.start("app", &spec).await.unwrap();
        // Crash-restart loop: every restart must wait 1 s, 2 s, 4 s, 8 s, 16 s after the previous one.
        let specs: BTreeMap<String, ServiceSpec> = [("app".to_string(), spec.clone())].into();
        let mut backoff = 1_000;
        for restart in 1..=5u32 {
            clock.advance(backoff / 2);
            let e = services.restart("app", &spec).await.unwrap_err();
            assert_eq!(e, format!("backoff: next restart allowed in {} s", (backoff / 2).div_ceil(1000)), "restart {restart}");
            clock.advance(backoff / 2 - 1);
            let e = services.restart("app", &spec).await.unwrap_err();
            assert_eq!(e, "backoff: next restart allowed in 1 s", "restart {restart}");
            clock.advance(1);
            services.restart("app", &spec).await.unwrap();
            assert_eq!(services.view(&specs, clock.wall_ms())[0].recent_restarts, restart);
            backoff *= 2;
        }
        assert_eq!(lines(&dir.path().join("starts.log")), 6);

        // Five restarts in the hour: the sixth is refused whatever the backoff says, and a stopped
        // service cannot be started either.
        clock.advance(10 * 60_000);
        let e = services.restart("app", &spec).await.unwrap_err();
        assert_eq!(e, "watchdog cap reached: 5 restarts in the last hour");
        services.stop("app", &spec).await.unwrap();
        assert_eq!(services.start("app", &spec).await.unwrap_err(), e);
        assert_eq!(lines(&dir.path().join("starts.log")), 6);

        // An hour after the first restart, one slot frees, and is used up again.
        clock.set_wall(t0 + 1_000 + HOUR_MS);
        services.start("app", &spec).await.unwrap();
        assert_eq!(services.view(&specs, clock.wall_ms())[0].recent_restarts, 5);
        clock.advance(1_500);
        assert_eq!(services.restart("app", &spec).await.unwrap_err(), e);
    }

    #[tokio::test]
    async fn the_backoff_is_capped_at_a_minute_and_resets_after_ten_quiet_minutes() {
        let limits = WatchdogLimits { max_per_hour: 100, ..WatchdogLimits::default() };
        assert_eq!(limits.backoff_ms(1), 1_000);
        assert_eq!(limits.backoff_ms(6), 32_000);
        assert_eq!(limits.backoff_ms(7), 60_000);
        assert_eq!(limits.backoff_ms(1_000), 60_000);

        let dir = tempfile::tempdir().unwrap();
        let spec = ServiceSpec { watchdog: true, ..marker_service(dir.path(), false) };
        let clock = ManualClock::new(1_700_000_000_000);
        let services = Services::with_clock(clock.clone(), limits);
        for _ in 0..8 {
            services.restart("app", &spec).await.unwrap();
            clock.advance(60_000);
        }
        // 60 s after the eighth run: the ninth's backoff would be 128 s uncapped.
        clock.set_wall(clock.wall_ms() - 1_000);
        assert_eq!(services.restart("app", &spec).await.unwrap_err(), "backoff: next restart allowed in 1 s");
        clock.advance(10 * 60_000);
        services.restart("app", &spec).await.unwrap();
        clock.advance(1_000);
        services.restart("app", &spec).await.unwrap();

        // Services without the watchdog flag are never held back.
        let plain = ServiceSpec { watchdog: false, ..spec };
        for _ in 0..10 {
            services.restart("plain", &plain).await.unwrap();
        }
    }

    /// Local wall time → ms, for tests independent of the machine's time zone.
    fn local_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> u64 {
        Local.with_ymd_and_hms(y, mo, d, h, mi, 0).earliest().unwrap().timestamp_millis() as u64
    }

    #[test]
    fn daily_occurrence_is_the_latest_at_or_before_now() {
        let at_0430 = 4 * 60 + 30;
        assert_eq!(last_daily_occurrence_ms(at_0430, local_ms(2024, 1, 15, 4, 30)), Some(local_ms(2024, 1, 15, 4, 30)));
        assert_eq!(last_daily_occurrence_ms(at_0430, local_ms(2024, 1, 15, 4, 29)), Some(local_ms(2024, 1, 14, 4, 30)));
        assert_eq!(last_daily_occurrence_ms(at_0430, local_ms(2024, 1, 15, 23, 59)), Some(local_ms(2024, 1, 15, 4, 30)));
    }

    #[tokio::test]
    async fn restart_is_due_once_the_daily_time_passes_after_the_last_start() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ServiceSpec { daily_restart: Some("04:30".into()), ..marker_service(dir.path(), false) };
        let specs: BTreeMap<String, ServiceSpec> = [("app".to_string(), spec.clone())].into();
        let clock = ManualClock::new(local_ms(2024, 1, 15, 4, 0));
        let services = Services::with_clock(clock.clone(), WatchdogLimits::default());
        let due = |now| services.view(&specs, now)[0].restart_due;

        assert!(!due(local_ms(2024, 1, 16, 5, 0)), "never started: nothing to restart");
        services.start("app", &spec).await.unwrap();
        assert!(!due(local_ms(2024, 1, 15, 4, 29)));
        assert!(due(local_ms(2024, 1, 15, 4, 30)));
        assert!(due(local_ms(2024, 1, 16, 3, 0)));

        clock.set_wall(local_ms(2024, 1, 15, 4, 31));
        services.restart("app", &spec).await.unwrap();
        assert!(!due(local_ms(2024, 1, 15, 4, 31)));
        assert!(!due(local_ms(2024, 1, 16, 4, 29)));
        assert!(due(local_ms(2024, 1, 16, 4, 30)));
        assert_eq!(services.view(&specs, local_ms(2024, 1, 15, 5, 0))[0].recent_restarts, 1);
        assert_eq!(services.view(&specs, local_ms(2024, 1, 15, 5, 31))[0].recent_restarts, 0);
    }
}
