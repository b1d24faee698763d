//! The replication chaos test's model: seeded schedules of writes and faults, what a run records,
//! and the checker that judges a run from the stores and directories it left behind.
//!
//! Owns only pure data and pure judgement: generating a schedule, printing and parsing it (a printed
//! schedule can be fed back with `VIGIL_CHAOS_SCHEDULE`), and checking a finished run. It never
//! starts a process or touches a file; `tests/chaos.rs` drives the real nodes.
//!
//! Every value the test writes is unique (`v<seed>.<op>` for keys, `w<seed>.<op>` for files), so a
//! value seen in any store names the operation that wrote it, and a version `(hlc, origin)` seen in
//! any store at any time is a write some node recorded. The checker's invariants:
//!
//! - **converged**: every store holds the same entries (tombstones included), and every replicated
//!   directory holds exactly its store's live files (no temporary file left behind);
//! - **nothing recorded is lost**: for every version of a key any store ever recorded (or an admin
//!   `PUT` acknowledged), the final version is the same or later (by HLC, then origin), and a final
//!   version that was seen holds the value it was seen with — so a deleted entry cannot come back
//!   with an older value;
//! - **nothing is invented**: every recorded value was written by an operation on its origin node,
//!   and every tombstone of node N is one delete operation on N (a failed write, a crash or a missing
//!   directory must not turn into a delete);
//! - **the later write wins** (issue 18): when the last operation on a key came at least
//!   [`REALTIME_GAP_MS`] after the one before it (all nodes share this machine's clock), the final
//!   state is that operation's.

use crate::Rng;
use std::collections::BTreeMap;
use std::fmt;

/// Node ids, in cluster order.
pub const NODES: [&str; 3] = ["a", "b", "c"];
/// Configuration keys the schedules write.
pub const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
/// Plain files of the replicated directory any node writes, edits and deletes.
pub const FILES: [&str; 3] = ["f0", "f1", "sub/f2"];
/// The name one node (the owner) turns from file to directory and back.
pub const SHAPE: &str = "x";
/// The files of [`SHAPE`] when it is a directory.
pub const NESTED: [&str; 2] = ["x/n", "x/d/m"];
/// The replicated directory's name (its store scope).
pub const DIR_SCOPE: &str = "shared";
/// The store scope of configuration keys.
pub const CONFIG_SCOPE: &str = "config";
/// The later-write-wins check applies to a key whose last operation began this long after the
/// previous one ended: versions are milliseconds, and file times come from a coarse kernel clock.
pub const REALTIME_GAP_MS: u64 = 25;
/// A delete is dated when its node records it: a node killed within this long after a delete may
/// record it only at its restart, so the later-write-wins check leaves such a key out.
pub const KILL_GRACE_MS: u64 = 1_000;
/// A local write younger than this may not be scanned yet (see `later_wins`).
pub const UNSCANNED_MS: u64 = 300;
/// A tombstone may carry a time a little before the delete began: millisecond truncation, and a
/// delete is dated no later than its directory's modification time, which the kernel takes from a
/// coarse clock behind the one the test reads: by up to a tick in theory (4 ms at 250 Hz), by 6–7 ms
/// seen on a loaded 2-core machine at 250 Hz (chaos seed 16: a delete begun at …607 dated …600, and
/// a write begun at …582 carrying the modification time …576). File writes are dated the same way.
const TOMBSTONE_SLACK_MS: u64 = 15;

/// One step of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `PUT /config/KEY` on a node.
    Put { node: usize, key: usize },
    /// `DELETE /config/KEY` on a node.
    DelKey { node: usize, key: usize },
    /// Write a plain file (atomically, as editors do) in a node's directory, running or not.
    Write { node: usize, file: usize },
    /// Delete a plain file in a node's directory, when it is there.
    DelFile { node: usize, file: usize },
    /// On the owner node: [`SHAPE`] absent → file, file → directory holding [`NESTED`], directory → file.
    Shape { node: usize },
    /// Cut the link between two nodes, both ways or only `a → b`.
    Cut { a: usize, b: usize, both: bool },
    /// Heal the link between two nodes, both ways.
    Heal { a: usize, b: usize },
    /// SIGKILL a node.
    Kill { node: usize },
    /// Start a killed node again.
    Restart { node: usize },
    /// A volume that did not mount: SIGKILL a node, move its replicated directory away, start it.
    Unmount { node: usize },
    /// Put the directory moved away back (as a mount would: whatever the node left at the mount
    /// point is hidden under it), the node running.
    Remount { node: usize },
    /// Let time pass.
    Sleep { ms: u64 },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |i: &usize| NODES[*i];
        match self {
            Step::Put { node, key } => write!(f, "put {} {}", n(node), KEYS[*key]),
            Step::DelKey { node, key } => write!(f, "del {} {}", n(node), KEYS[*key]),
            Step::Write { node, file } => write!(f, "write {} {}", n(node), FILES[*file]),
            Step::DelFile { node, file } => write!(f, "rm {} {}", n(node), FILES[*file]),
            Step::Shape { node } => write!(f, "shape {}", n(node)),
            Step::Cut { a, b, both: true } => write!(f, "cut {}-{}", n(a), n(b)),
            Step::Cut { a, b, both: false } => write!(f, "cut {}>{}", n(a), n(b)),
            Step::Heal { a, b } => write!(f, "heal {}-{}", n(a), n(b)),
            Step::Kill { node } => write!(f, "kill {}", n(node)),
            Step::Restart { node } => write!(f, "restart {}", n(node)),
            Step::Unmount { node } => write!(f, "unmount {}", n(node)),
            Step::Remount { node } => write!(f, "remount {}", n(node)),
            Step::Sleep { ms } => write!(f, "sleep {ms}"),
        }
    }
}

impl std::str::FromStr for Step {
    type Err = String;

    /// The [`fmt::Display`] form back, e.g. `put a k1`, `cut a-b`, `cut b>c`, `sleep 40`.
    fn from_str(line: &str) -> Result<Step, String> {
        let node = |s: &str| NODES.iter().position(|n| *n == s).ok_or_else(|| format!("{line:?}: unknown node {s:?}"));
        let index = |list: &[&str], s: &str| list.iter().position(|n| *n == s).ok_or_else(|| format!("{line:?}: unknown name {s:?}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let link = |s: &str| -> Result<(usize, usize, bool), String> {
            let (both, (a, b)) = match (s.split_once('-'), s.split_once('>')) {
                (Some(p), _) => (true, p),
                (None, Some(p)) => (false, p),
                _ => return Err(format!("{line:?}: expected a link like a-b or a>b")),
            };
            Ok((node(a)?, node(b)?, both))
        };
        Ok(match words.as_slice() {
            ["put", n, k] => Step::Put { node: node(n)?, key: index(&KEYS, k)? },
            ["del", n, k] => Step::DelKey { node: node(n)?, key: index(&KEYS, k)? },
            ["write", n, f] => Step::Write { node: node(n)?, file: index(&FILES, f)? },
            ["rm", n, f] => Step::DelFile { node: node(n)?, file: index(&FILES, f)? },
            ["shape", n] => Step::Shape { node: node(n)? },
            ["cut", l] => {
                let (a, b, both) = link(l)?;
                Step::Cut { a, b, both }
            }
            ["heal", l] => {
                let (a, b, _) = link(l)?;
                Step::Heal { a, b }
            }
            ["kill", n] => Step::Kill { node: node(n)? },
            ["restart", n] => Step::Restart { node: node(n)? },
            ["unmount", n] => Step::Unmount { node: node(n)? },
            ["remount", n] => Step::Remount { node: node(n)? },
            ["sleep", ms] => Step::Sleep { ms: ms.parse().map_err(|e| format!("{line:?}: {e}"))? },
            _ => return Err(format!("{line:?}: expected put/del/write/rm NODE NAME, shape NODE, cut/heal LINK, kill/restart/unmount/remount NODE or sleep MS")),
        })
    }
}

/// A schedule as text, one step a line.
pub fn show(steps: &[Step]) -> String {
    steps.iter().enumerate().map(|(i, s)| format!("  {i:>3}  {s}\n")).collect()
}

/// Parse a schedule written one step a line or separated by `;` (step numbers allowed in front).
pub fn parse(text: &str) -> Result<Vec<Step>, String> {
    text.split(['\n', ';'])
        .map(|l| l.trim().trim_start_matches(|c: char| c.is_ascii_digit()).trim())
        .filter(|l| !l.is_empty())
        .map(str::parse)
        .collect()
}

/// Which kinds of fault a generated schedule may hold besides writes, link cuts and kills.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// The owner of [`SHAPE`] turns it from file to directory and back.
    pub file_dir: bool,
    /// A node restarts with its replicated directory gone, which comes back later.
    pub unmount: bool,
}

/// The schedule of `seed`: 24 to 36 operations with short pauses between them (a few seconds in
/// all). One node, chosen by the seed, owns [`SHAPE`]: two nodes changing one name to a file and to
/// a directory concurrently would leave both entries live, which no disk can hold. No file is
/// written in a directory while it is unmounted (the mount would hide it).
pub fn generate(seed: u64, faults: Faults) -> Vec<Step> {
    let file_dir = faults.file_dir;
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xC4A0_5EED);
    let owner = rng.below(3);
    let mut alive = [true; 3];
    let mut mounted = [true; 3];
    let mut steps = Vec::new();
    let operations = 24 + rng.below(13);
    for _ in 0..operations {
        let live: Vec<usize> = (0..3).filter(|&i| alive[i]).collect();
        let editable: Vec<usize> = (0..3).filter(|&i| alive[i] && mounted[i]).collect();
        let dead: Vec<usize> = (0..3).filter(|&i| !alive[i]).collect();
        let some_live = live[rng.below(live.len())];
        let (a, b) = {
            let a = rng.below(3);
            (a, (a + 1 + rng.below(2)) % 3)
        };
        match rng.below(100) {
            0..=16 => steps.push(Step::Put { node: some_live, key: rng.below(KEYS.len()) }),
            17..=23 => steps.push(Step::DelKey { node: some_live, key: rng.below(KEYS.len()) }),
            24..=39 => {
                let (node, file) = (rng.below(3), rng.below(FILES.len()));
                if mounted[node] {
                    steps.push(Step::Write { node, file });
                }
            }
            40..=47 => {
                let file = rng.below(FILES.len());
                if mounted[some_live] {
                    steps.push(Step::DelFile { node: some_live, file });
                }
            }
            48..=57 if file_dir && alive[owner] && mounted[owner] => steps.push(Step::Shape { node: owner }),
            // Edits of one file on several nodes within one heartbeat interval (issue 18).
            58..=65 if editable.len() >= 2 => {
                let file = rng.below(FILES.len());
                let first = rng.below(editable.len());
                let count = 2 + rng.below(editable.len() - 1);
                for k in 0..count {
                    steps.push(Step::Write { node: editable[(first + k) % editable.len()], file });
                    if k + 1 < count {
                        steps.push(Step::Sleep { ms: 30 + rng.below(61) as u64 });
                    }
                }
            }
            66..=72 => steps.push(Step::Cut { a, b, both: rng.chance(75) }),
            73..=78 => steps.push(Step::Heal { a, b }),
            79..=83 if live.len() >= 2 => {
                steps.push(Step::Kill { node: some_live });
                alive[some_live] = false;
            }
            84..=90 if !dead.is_empty() => {
                let node = dead[rng.below(dead.len())];
                steps.push(Step::Restart { node });
                alive[node] = true;
            }
            91..=93 if faults.unmount && mounted[some_live] => {
                steps.push(Step::Unmount { node: some_live });
                mounted[some_live] = false;
            }
            94..=97 if mounted.contains(&false) => {
                let node = (0..3).find(|&i| !mounted[i]).expect("one is unmounted");
                steps.push(Step::Remount { node });
                mounted[node] = true;
            }
            _ => steps.push(Step::Sleep { ms: 30 + rng.below(170) as u64 }),
        }
        steps.push(Step::Sleep { ms: 3 + rng.below(33) as u64 });
    }
    steps
}

/// A version as the store orders them: HLC, then origin for ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub wall: u64,
    pub counter: u32,
    pub origin: String,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall, self.counter, self.origin)
    }
}

/// One row of a store: a value or a tombstone, with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub version: Version,
    pub value: Option<Vec<u8>>,
    pub mode: Option<u32>,
}

/// `(scope, key)`.
pub type Key = (String, String);
/// A whole store.
pub type Snapshot = BTreeMap<Key, Row>;
/// A replicated directory: relative path → content (every regular file, temporary ones too).
pub type Tree = BTreeMap<String, Vec<u8>>;

/// What an operation did to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Write(Vec<u8>),
    Delete,
}

/// One operation a run performed on one key.
#[derive(Debug, Clone)]
pub struct Op {
    /// Index of the schedule step that did it.
    pub step: usize,
    pub node: usize,
    pub key: Key,
    pub effect: Effect,
    /// Wall-clock milliseconds when it began and ended.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Everything a run recorded besides the final stores.
#[derive(Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
    /// Every version any store was seen holding, with its value (polled during the run, plus the
    /// versions acknowledged by `PUT /config`).
    pub observed: BTreeMap<Key, BTreeMap<Version, Option<Vec<u8>>>>,
    /// `(node, wall ms)` of every kill.
    pub kills: Vec<(usize, u64)>,
}

impl History {
    /// Take note of every row of a store.
    pub fn observe(&mut self, store: &Snapshot) {
        for (key, row) in store {
            self.observed.entry(key.clone()).or_default().entry(row.version.clone()).or_insert_with(|| row.value.clone());
        }
    }
}

/// Every version seen of the keys `violations` name, oldest first, for a failure report.
pub fn versions_of(history: &History, violations: &[String]) -> String {
    let mut out = String::new();
    for (key, versions) in &history.observed {
        let shown = show_key(key);
        if !violations.iter().any(|v| v.contains(&format!("{shown} ")) || v.contains(&format!("{}/{} ", key.0, key.1))) {
            continue;
        }
        out.push_str(&format!("{shown}:"));
        for (version, value) in versions {
            out.push_str(&format!(" {version}={}", text(value)));
        }
        let ops: Vec<String> = history
            .ops
            .iter()
            .filter(|op| op.key == *key)
            .map(|op| format!("{}@{}:{}({}–{})", op.step, NODES[op.node], if op.effect == Effect::Delete { "del" } else { "put" }, op.start_ms, op.end_ms))
            .collect();
        out.push_str(&format!("\n    operations: {}\n", ops.join(" ")));
    }
    out
}

fn text(value: &Option<Vec<u8>>) -> String {
    match value {
        Some(v) => format!("{:?}", String::from_utf8_lossy(v).trim_end()),
        None => "(deleted)".into(),
    }
}

fn show_key(key: &Key) -> String {
    if key.0 == CONFIG_SCOPE { format!("key {}", key.1) } else { format!("file {}/{}", key.0, key.1) }
}

/// Judge a finished run: `stores[i]` and `trees[i]` are node `i`'s store and directory at the end;
/// `later_wins` off leaves out the real-time check of issue 18. Returns the violations, one line
/// each (empty when the run kept every promise).
pub fn check(history: &History, stores: &[Snapshot], trees: &[Tree], later_wins: bool) -> Vec<String> {
    let mut violations = Vec::new();
    converged(stores, trees, &mut violations);
    let mut writer: BTreeMap<&[u8], &Op> = BTreeMap::new();
    for op in &history.ops {
        if let Effect::Write(v) = &op.effect {
            writer.insert(v, op);
        }
    }
    invented(history, &writer, &mut violations);
    for (i, store) in stores.iter().enumerate() {
        // Once converged, one node's judgement is everyone's.
        if i > 0 && stores.iter().all(|s| s == &stores[0]) {
            break;
        }
        lost(history, store, NODES[i], &writer, &mut violations);
        if later_wins {
            later_wins_check(history, store, NODES[i], &mut violations);
        }
    }
    violations
}

/// Where the stores differ from each other, or a directory from its store (one line each).
pub fn divergence(stores: &[Snapshot], trees: &[Tree]) -> Vec<String> {
    let mut out = Vec::new();
    converged(stores, trees, &mut out);
    out
}

fn converged(stores: &[Snapshot], trees: &[Tree], out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&Key> = stores.iter().flat_map(BTreeMap::keys).collect();
    for key in keys {
        let rows: Vec<Option<&Row>> = stores.iter().map(|s| s.get(key)).collect();
        if rows.iter().any(|r| *r != rows[0]) {
            let each: Vec<String> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| match r {
                    Some(r) => format!("{}: {} {}", NODES[i], text(&r.value), r.version),
                    None => format!("{}: (none)", NODES[i]),
                })
                .collect();
            out.push(format!("not converged: {} differs between stores: {}", show_key(key), each.join(", ")));
        }
    }
    for (i, (store, tree)) in stores.iter().zip(trees).enumerate() {
        let live: Tree = store
            .iter()
            .filter(|((scope, _), row)| scope == DIR_SCOPE && row.value.is_some())
            .map(|((_, key), row)| (key.clone(), row.value.clone().unwrap_or_default()))
            .collect();
        let paths: std::collections::BTreeSet<&String> = live.keys().chain(tree.keys()).collect();
        for path in paths {
            let (stored, disk) = (live.get(path), tree.get(path));
            if stored != disk {
                out.push(format!(
                    "disk differs from store on {}: {DIR_SCOPE}/{path} is {} on disk, {} in the store",
                    NODES[i],
                    disk.map_or("absent".into(), |v| text(&Some(v.clone()))),
                    stored.map_or("absent".into(), |v| text(&Some(v.clone()))),
                ));
            }
        }
    }
}

fn invented(history: &History, writer: &BTreeMap<&[u8], &Op>, out: &mut Vec<String>) {
    for (key, versions) in &history.observed {
        let mut tombstones: Vec<&Version> = Vec::new();
        for (version, value) in versions {
            match value {
                Some(v) => match writer.get(v.as_slice()) {
                    Some(op) if NODES[op.node] == version.origin && op.key == *key => {}
                    Some(op) => out.push(format!(
                        "invented: {} holds {} at {version}, written as {} by {} (step {})",
                        show_key(key),
                        text(value),
                        show_key(&op.key),
                        NODES[op.node],
                        op.step
                    )),
                    None => out.push(format!("invented: {} holds {} at {version}, which no operation wrote", show_key(key), text(value))),
                },
                None => tombstones.push(version),
            }
        }
        // Each delete operation accounts for at most one tombstone of its node: the earliest
        // unused one that began before the tombstone's time.
        let mut used = vec![false; history.ops.len()];
        for t in tombstones {
            let found = history.ops.iter().enumerate().find(|(i, op)| {
                !used[*i] && op.key == *key && op.effect == Effect::Delete && NODES[op.node] == t.origin && op.start_ms <= t.wall + TOMBSTONE_SLACK_MS
            });
            match found {
                Some((i, _)) => used[i] = true,
                None => out.push(format!(
                    "invented delete: {} has a tombstone {t} that no delete on {} accounts for (a failed write, a crash or a missing directory recorded as a delete)",
                    show_key(key),
                    t.origin
                )),
            }
        }
    }
}

fn lost(history: &History, store: &Snapshot, node: &str, writer: &BTreeMap<&[u8], &Op>, out: &mut Vec<String>) {
    for (key, versions) in &history.observed {
        let Some((newest, value)) = versions.iter().next_back() else { continue };
        let describe = |value: &Option<Vec<u8>>| match value.as_deref().and_then(|v| writer.get(v)) {
            Some(op) => format!("{} (step {} on {})", text(value), op.step, NODES[op.node]),
            None => text(value),
        };
        match store.get(key) {
            None => out.push(format!("lost on {node}: {} was recorded as {} at {newest}; the store has no entry", show_key(key), describe(value))),
            Some(row) if row.version < *newest => out.push(format!(
                "lost on {node}: {} was recorded as {} at {newest}; the store ends with {} at {} (older)",
                show_key(key),
                describe(value),
                text(&row.value),
                row.version
            )),
            Some(row) => {
                if let Some(seen) = versions.get(&row.version) {
                    if *seen != row.value {
                        out.push(format!(
                            "changed on {node}: {} at {} was {} and ends as {}",
                            show_key(key),
                            row.version,
                            text(seen),
                            text(&row.value)
                        ));
                    }
                }
            }
        }
    }
}

fn later_wins_check(history: &History, store: &Snapshot, node: &str, out: &mut Vec<String>) {
    let mut by_key: BTreeMap<&Key, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        let last = ops.iter().max_by_key(|op| op.start_ms).expect("one at least");
        let before = ops.iter().filter(|op| op.start_ms < last.start_ms).map(|op| op.end_ms).max();
        if before.is_some_and(|end| last.start_ms < end + REALTIME_GAP_MS) {
            continue;
        }
        let killed = history.kills.iter().any(|(n, at)| *n == last.node && *at >= last.start_ms && *at <= last.end_ms + KILL_GRACE_MS);
        // A file written and deleted again on one node between two scans is, to that node, nothing
        // that happened: whether the delete covers another node's write in between is not defined.
        let cancels = last.effect == Effect::Delete
            && ops.iter().any(|op| op.node == last.node && matches!(op.effect, Effect::Write(_)) && op.start_ms < last.start_ms && op.end_ms + UNSCANNED_MS > last.start_ms);
        if killed || cancels {
            continue;
        }
        let got = store.get(key).and_then(|r| r.value.clone());
        let want = match &last.effect {
            Effect::Write(v) => Some(v.clone()),
            Effect::Delete => None,
        };
        if got != want {
            out.push(format!(
                "later write lost on {node}: {} ends as {}, but its last operation was {} on {} (step {}, {} ms after the one before)",
                show_key(key),
                text(&got),
                text(&want),
                NODES[last.node],
                last.step,
                before.map_or("-".into(), |end| last.start_ms.saturating_sub(end).to_string()),
            ));
        }
    }
}
