//! The flight recorder: every tick a node decided, kept in a bounded ring in its data directory, and
//! what is made of it: scenario files (`vigil record`, [`export`]) and replays of a candidate policy
//! ([`replay`], `vigil policy replay`).
//!
//! A [`Record`] is one decided tick: the tick as the plugin saw it, the policy (name, plugin sha256,
//! params), what the plugin returned (a decision or a fault) and what the node did. The loop hands
//! an [`Entry`] to [`Recorder::record`], which only moves it into a bounded channel; a writer thread
//! of its own, polling the channel every 50 ms, serializes, delta-codes, compresses and writes it
//! ([`ring`]): a record reaches the disk (the page cache: a `kill -9` loses nothing written) within
//! 50 ms of its tick. A full channel or a
//! failing disk drops records: they are counted (`/metrics`, `/status`) and said in the event log.
//!
//! Never: blocks or slows the loop on the disk, or records anything but decided ticks.

pub mod export;
pub mod replay;
pub mod ring;

use crate::model::{Action, Decision, Mode, Tick};
use crate::policy::{Fault, LoadedPolicy};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The smallest ring `recorder.max_bytes` allows.
pub const MIN_BYTES: u64 = 64 * 1024;
/// Records waiting for the writer: minutes of ticks at any sane interval.
const CHANNEL: usize = 1024;
/// How often the writer looks for records. It polls rather than being woken: a send is then a few
/// atomic operations for the loop, never a system call, and the writer never preempts the loop it
/// would have been woken by.
const POLL: Duration = Duration::from_millis(50);
/// At most one event per this long about dropped records.
const NOTE_EVERY: Duration = Duration::from_secs(60);

/// The recorder's directory in a node's data directory.
pub fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("recorder")
}

/// The policy that decided a tick.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyId {
    /// The policy file's name without extension.
    pub name: String,
    /// The plugin's sha256.
    pub sha256: String,
    /// `[params]` as the JSON the plugin received.
    pub params: String,
}

/// What the node did after a decision.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    /// The mode after the tick.
    pub mode: Mode,
    /// The actions handed to the executor.
    pub actions: Vec<Action>,
    /// The decision's reason, or the host's (a fault, a fallback, the start-up grace).
    pub reason: String,
}

/// One decided tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The node that decided.
    pub node: String,
    pub policy: PolicyId,
    /// The tick as the plugin saw it.
    pub tick: Tick,
    /// What the plugin decided (`None` when it faulted).
    #[serde(default)]
    pub decision: Option<Decision>,
    /// The fault, when the plugin faulted.
    #[serde(default)]
    pub fault: Option<String>,
    pub applied: Applied,
}

impl Record {
    /// The mode the plugin's decision gives the node (what `vigil policy test` checks): the tick's
    /// mode when it keeps it; `None` when it faulted.
    pub fn decided_mode(&self) -> Option<Mode> {
        self.decision.as_ref().map(|d| host_mode(d.mode.unwrap_or(self.tick.node.mode)))
    }
}

/// A node never stays `starting` after a decision.
pub fn host_mode(mode: Mode) -> Mode {
    if mode == Mode::Starting {
        Mode::Standby
    } else {
        mode
    }
}

impl PolicyId {
    pub fn of(policy: &LoadedPolicy) -> PolicyId {
        PolicyId { name: policy.name(), sha256: policy.plugin.sha256().to_string(), params: policy.params_json.clone() }
    }
}

/// What the loop hands over after a tick (cheap to make: moves and an `Arc`).
#[derive(Debug)]
pub struct Entry {
    pub policy: Arc<PolicyId>,
    pub tick: Tick,
    pub decided: Result<Decision, Fault>,
    pub applied: Applied,
}

impl Entry {
    fn into_record(self, node: &str) -> Record {
        let (decision, fault) = match self.decided {
            Ok(d) => (Some(d), None),
            Err(f) => (None, Some(f.to_string())),
        };
        Record {
            node: node.to_string(),
            policy: Arc::unwrap_or_clone(self.policy),
            tick: self.tick,
            decision,
            fault,
            applied: self.applied,
        }
    }
}

/// The recorder's `/metrics` handles.
#[derive(Debug, Clone, Default)]
pub struct RecorderMetrics {
    pub records: prometheus_client::metrics::counter::Counter,
    pub dropped: prometheus_client::metrics::counter::Counter,
    pub bytes: prometheus_client::metrics::gauge::Gauge,
}

#[derive(Debug, Default)]
struct Stats {
    records: AtomicU64,
    /// Dropped because the writer fell behind (the channel was full).
    dropped_full: AtomicU64,
    /// Dropped because the disk refused them.
    dropped_disk: AtomicU64,
    bytes: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The recorder as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecorderStatus {
    pub dir: String,
    /// The ring's size on disk, and its cap.
    pub bytes: u64,
    pub max_bytes: u64,
    /// Records written since the daemon started.
    pub records: u64,
    /// Records dropped since the daemon started (writer behind, or disk failing).
    pub dropped: u64,
    /// The last write error, until a write succeeds.
    pub last_error: Option<String>,
}

/// The loop's handle on the recorder. Dropping it lets the writer finish what it was handed.
pub struct Recorder {
    tx: Option<SyncSender<Entry>>,
    stats: Arc<Stats>,
    metrics: RecorderMetrics,
    dir: PathBuf,
    max_bytes: u64,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The policy of the last entry and its id (made again only after a reload).
    policy: Mutex<Option<(Arc<LoadedPolicy>, Arc<PolicyId>)>>,
}

impl Recorder {
    /// Start recording `node`'s ticks into the ring in `dir`. `note` writes an event-log entry (called
    /// from the writer thread).
    pub fn start(dir: &Path, max_bytes: u64, node: &str, metrics: RecorderMetrics, note: Box<dyn Fn(String) + Send>) -> std::io::Result<Recorder> {
        let (tx, rx) = sync_channel(CHANNEL);
        let stats = Arc::new(Stats::default());
        let writer = Writer { ring: ring::RingWriter::open(dir, max_bytes), node: node.to_string(), stats: stats.clone(), metrics: metrics.clone(), note, dir: dir.to_path_buf() };
        writer.publish_size();
        let thread = std::thread::Builder::new().name("vigil-recorder".into()).spawn(move || writer.run(rx))?;
        Ok(Recorder { tx: Some(tx), stats, metrics, dir: dir.to_path_buf(), max_bytes, thread: Some(thread), policy: Mutex::new(None) })
    }

    /// The id of `policy` for an [`Entry`]: the same `Arc` while the policy is not reloaded.
    pub fn policy_id(&self, policy: &Arc<LoadedPolicy>) -> Arc<PolicyId> {
        let mut cached = self.policy.lock().expect("recorder policy lock");
        match &*cached {
            Some((p, id)) if Arc::ptr_eq(p, policy) => id.clone(),
            _ => {
                let id = Arc::new(PolicyId::of(policy));
                *cached = Some((policy.clone(), id.clone()));
                id
            }
        }
    }

    /// Hand one decided tick to the writer, never waiting: when it is behind, the record is dropped
    /// and counted.
    pub fn record(&self, entry: Entry) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
                self.metrics.dropped.inc();
            }
        }
    }

    /// For `/status`.
    pub fn status(&self) -> RecorderStatus {
        let s = &self.stats;
        RecorderStatus {
            dir: self.dir.display().to_string(),
            bytes: s.bytes.load(Ordering::Relaxed),
            max_bytes: self.max_bytes,
            records: s.records.load(Ordering::Relaxed),
            dropped: s.dropped_full.load(Ordering::Relaxed) + s.dropped_disk.load(Ordering::Relaxed),
            last_error: s.last_error.lock().expect("recorder stats lock").clone(),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Writer {
    ring: ring::RingWriter,
    node: String,
    stats: Arc<Stats>,
    metrics: RecorderMetrics,
    note: Box<dyn Fn(String) + Send>,
    dir: PathBuf,
}

impl Writer {
    fn run(mut self, rx: Receiver<Entry>) {
        let (mut noted_full, mut noted_disk) = (0, 0);
        let mut last_note: Option<Instant> = None;
        let mut failing = false;
        loop {
            let entry = match rx.try_recv() {
                Ok(entry) => entry,
                Err(TryRecvError::Empty) => {
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(TryRecvError::Disconnected) => return,
            };
            let record = entry.into_record(&self.node);
            let written = serde_json::to_value(&record).map_err(std::io::Error::other).and_then(|v| self.ring.append(&v));
            match written {
                Ok(_) => {
                    self.stats.records.fetch_add(1, Ordering::Relaxed);
                    self.metrics.records.inc();
                    if failing {
                        failing = false;
                        *self.stats.last_error.lock().expect("recorder stats lock") = None;
                        let dropped = self.stats.dropped_disk.load(Ordering::Relaxed) - noted_disk;
                        noted_disk += dropped;
                        (self.note)(format!("flight recorder writes to {} again, after dropping {dropped} tick(s)", self.dir.display()));
                    }
                }
                Err(e) => {
                    self.stats.dropped_disk.fetch_add(1, Ordering::Relaxed);
                    self.metrics.dropped.inc();
                    let message = format!("flight recorder: cannot write {}: {e}; ticks are dropped (and counted) until it can", self.dir.display());
                    // The lock is let go before the note: the event log may be slow (it is a disk
                    // too), and the loop reads this lock for its status every tick.
                    let new = {
                        let mut last = self.stats.last_error.lock().expect("recorder stats lock");
                        let new = !failing || last.as_deref() != Some(message.as_str());
                        *last = Some(message.clone());
                        new
                    };
                    if new {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "flight recorder cannot write");
                        (self.note)(message);
                        noted_disk = self.stats.dropped_disk.load(Ordering::Relaxed) - 1;
                    }
                    failing = true;
                }
            }
            self.publish_size();
            let full = self.stats.dropped_full.load(Ordering::Relaxed);
            if full > noted_full && last_note.is_none_or(|at| at.elapsed() >= NOTE_EVERY) {
                (self.note)(format!("flight recorder fell behind: {} tick(s) dropped (channel of {CHANNEL} full)", full - noted_full));
                noted_full = full;
                last_note = Some(Instant::now());
            }
        }
    }

    fn publish_size(&self) {
        self.stats.bytes.store(self.ring.size(), Ordering::Relaxed);
        self.metrics.bytes.set(i64::try_from(self.ring.size()).unwrap_or(i64::MAX));
    }
}

/// Read the records of the ring in `dir`, oldest first, keeping those `keep` accepts (which returns
/// `None` to stop reading).
pub fn read(dir: &Path, mut keep: impl FnMut(&Record) -> Option<bool>) -> Result<(Vec<Record>, ring::ReadReport), String> {
    let mut out = Vec::new();
    let mut bad = None;
    let report = ring::read(dir, |value| match serde_json::from_value::<Record>(value) {
        Ok(record) => match keep(&record) {
            Some(true) => {
                out.push(record);
                true
            }
            Some(false) => true,
            None => false,
        },
        Err(e) => {
            bad = Some(e.to_string());
            false
        }
    })
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(e) = bad {
        return Err(format!("{}: a record of another format ({e}): read it with the vigil that wrote it", dir.display()));
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        let tick = Tick { now_ms: 1_000 * n, ..Tick::default() };
        let policy = Arc::new(PolicyId { name: "testkit".into(), sha256: "00".into(), params: "{}".into() });
        Entry { policy, tick, decided: Ok(Decision::default()), applied: Applied::default() }
    }

    #[test]
    fn a_full_disk_drops_records_counts_them_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be: every write fails, as on a full or failed disk.
        let blocked = dir.path().join("recorder");
        std::fs::write(&blocked, b"").unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let sink = notes.clone();
        let metrics = RecorderMetrics::default();
        let recorder = Recorder::start(&blocked, 1 << 20, "a", metrics.clone(), Box::new(move |m| sink.lock().unwrap().push(m))).unwrap();
        for n in 0..5 {
            recorder.record(entry(n));
        }
        drop(recorder);
        assert_eq!(metrics.dropped.get(), 5);
        let notes = notes.lock().unwrap().clone();
        assert_eq!(notes.len(), 1, "one event for the failure, not one per tick: {notes:?}");
        assert!(notes[0].contains("cannot write") && notes[0].contains("recorder"), "{notes:?}");

        let good = dir.path().join("ok");
        let recorder = Recorder::start(&good, 1 << 20, "a", RecorderMetrics::default(), Box::new(|_| {})).unwrap();
        for n in 0..5 {
            recorder.record(entry(n));
        }
        drop(recorder);
        let (records, _) = read(&good, |_| Some(true)).unwrap();
        assert_eq!(records.iter().map(|r| r.tick.now_ms).collect::<Vec<_>>(), vec![0, 1_000, 2_000, 3_000, 4_000]);
        assert_eq!(records[0].policy.name, "testkit");
    }

    #[test]
    fn a_writer_that_falls_behind_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = RecorderMetrics::default();
        // The writer is held up by its first note (a slow event log stands in for a slow disk).
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let recorder = Recorder::start(&blocked, 1 << 20, "a", metrics.clone(), Box::new(move |_| {
            let _ = gate.lock().unwrap().recv();
        }))
        .unwrap();
        for n in 0..(CHANNEL as u64 + 50) {
            recorder.record(entry(n));
        }
        let status = recorder.status();
        assert!(status.dropped >= 49, "{status:?}");
        drop(release);
        drop(recorder);
        assert_eq!(metrics.dropped.get(), CHANNEL as u64 + 50, "every record dropped: full channel or failing disk");
    }
}
