//! What a node remembers across a restart of its daemon: `node-state.json` in the data directory.
//!
//! Services outlive their supervisor: when `vigil` crashes or is upgraded and restarted, the
//! telephony, the CTI server or the MTA keep running. So the node writes its mode, the time it
//! entered it and the plugin's state bytes whenever one of them changes (and refreshes the time it
//! was last alive about once a second), and a daemon that starts within `[restart] max_downtime_ms`
//! of the last write hands them to the plugin in its first tick (`tick.node.restart`), so the policy
//! can resume instead of starting over. A clean stop (SIGTERM, SIGINT: the daemon stops its services
//! on the way out) is written too, and the next start after it is fresh, as is one after a longer
//! downtime.
//!
//! Every write is atomic: a temporary file, fsync, rename over the old one, fsync of the directory.
//! A crash at any point leaves either the old file or the new one; a file that does not parse is
//! reported and ignored (the node starts fresh).
//!
//! Never: decides anything. What a restart means is the policy's business.

use crate::model::{Mode, RestartInfo};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name in the data directory.
pub const FILE_NAME: &str = "node-state.json";

/// How often an unchanged state is written again, so that the downtime of a crash is known to
/// about this much.
pub const REFRESH_MS: u64 = 1_000;

/// The content of `node-state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persisted {
    /// The node this was written by (a data directory copied to another node is not resumed).
    pub node: String,
    pub mode: Mode,
    pub mode_since_ms: u64,
    /// The plugin's state bytes of its last good decision, as text when they are UTF-8 (JSON for
    /// plugins built with the SDK).
    #[serde(with = "crate::model::state_bytes")]
    pub state: Vec<u8>,
    /// When the daemon last wrote this (milliseconds since the Unix epoch): the start of its downtime.
    pub alive_ms: u64,
    /// The daemon stopped cleanly (its services were stopped on the way out).
    pub clean_stop: bool,
}

/// Why a persisted state is not resumed, or what it resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No file: the node's first start in this data directory.
    First,
    /// A fresh start, and why (said in the event log).
    Fresh(String),
    /// A restart the plugin is told about.
    Restart(RestartInfo),
}

impl Start {
    /// The restart information for the first tick, if any.
    pub fn info(&self) -> Option<RestartInfo> {
        match self {
            Start::Restart(info) => Some(info.clone()),
            _ => None,
        }
    }
}

/// Reads and writes one node's `node-state.json`.
#[derive(Debug)]
pub struct NodeStateFile {
    path: PathBuf,
    node: String,
    /// The last content written, to write only on a change (or a due refresh).
    last: Option<Persisted>,
}

impl NodeStateFile {
    pub fn new(data_dir: &Path, node: &str) -> NodeStateFile {
        NodeStateFile { path: data_dir.join(FILE_NAME), node: node.to_string(), last: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the previous daemon left, judged at `now_ms` against `max_downtime_ms`.
    pub fn read_start(&self, now_ms: u64, max_downtime_ms: u64) -> Start {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Start::First,
            Err(e) => return Start::Fresh(format!("{}: cannot read ({e}); starting fresh", self.path.display())),
        };
        judge(&self.path, &text, &self.node, now_ms, max_downtime_ms)
    }

    /// Write the node's current mode and state when they changed, or when the last write is
    /// [`REFRESH_MS`] old. Errors are returned for the caller to log; the loop goes on.
    pub fn save(&mut self, mode: Mode, mode_since_ms: u64, state: &[u8], now_ms: u64) -> std::io::Result<bool> {
        if mode == Mode::Starting {
            return Ok(false);
        }
        let due = match &self.last {
            Some(last) => {
                last.mode != mode
                    || last.mode_since_ms != mode_since_ms
                    || last.state != state
                    || now_ms.saturating_sub(last.alive_ms) >= REFRESH_MS
            }
            None => true,
        };
        if !due {
            return Ok(false);
        }
        let content = Persisted {
            node: self.node.clone(),
            mode,
            mode_since_ms,
            state: state.to_vec(),
            alive_ms: now_ms,
            clean_stop: false,
        };
        self.write(&content)?;
        self.last = Some(content);
        Ok(true)
    }

    /// Record a clean stop: the next start is fresh.
    pub fn save_clean_stop(&mut self, now_ms: u64) -> std::io::Result<()> {
        let mut content = self.last.clone().unwrap_or(Persisted {
            node: self.node.clone(),
            mode: Mode::Standby,
            mode_since_ms: now_ms,
            state: Vec::new(),
            alive_ms: now_ms,
            clean_stop: true,
        });
        content.alive_ms = now_ms;
        content.clean_stop = true;
        self.write(&content)?;
        self.last = Some(content);
        Ok(())
    }

    fn write(&self, content: &Persisted) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(content).map_err(std::io::Error::other)?;
        write_atomically(&self.path, &text)
    }
}

/// Judge the text of a `node-state.json` (pure, for tests).
pub fn judge(path: &Path, text: &str, node: &str, now_ms: u64, max_downtime_ms: u64) -> Start {
    let p: Persisted = match serde_json::from_str(text) {
        Ok(p) => p,
        Err(e) => return Start::Fresh(format!("{}: unreadable ({e}); starting fresh", path.display())),
    };
    if p.node != node {
        return Start::Fresh(format!("{}: written by node {:?}, not {node:?}; starting fresh", path.display(), p.node));
    }
    if p.clean_stop {
        return Start::Fresh("the previous daemon stopped cleanly (its services stopped); starting fresh".into());
    }
    let downtime_ms = now_ms.saturating_sub(p.alive_ms);
    if max_downtime_ms == 0 {
        return Start::Fresh("restart.max_downtime_ms is 0: never resuming; starting fresh".into());
    }
    if downtime_ms > max_downtime_ms {
        return Start::Fresh(format!(
            "down {downtime_ms} ms, longer than restart.max_downtime_ms ({max_downtime_ms} ms); starting fresh"
        ));
    }
    Start::Restart(RestartInfo { downtime_ms, mode: p.mode, mode_since_ms: p.mode_since_ms, state: p.state })
}

/// Temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_within_the_downtime_resumes_and_a_clean_stop_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = NodeStateFile::new(dir.path(), "a");
        assert_eq!(file.read_start(1_000, 60_000), Start::First);
        assert!(file.save(Mode::Active, 500, b"{\"n\":1}", 1_000).unwrap());
        assert!(!file.save(Mode::Active, 500, b"{\"n\":1}", 1_200).unwrap(), "unchanged and fresh: not written");
        assert!(file.save(Mode::Active, 500, b"{\"n\":2}", 1_300).unwrap(), "a state change is written");
        assert!(!file.save(Mode::Starting, 0, b"", 1_400).unwrap(), "starting is never persisted");
        let reader = NodeStateFile::new(dir.path(), "a");
        match reader.read_start(3_300, 60_000) {
            Start::Restart(info) => {
                assert_eq!((info.mode, info.mode_since_ms, info.downtime_ms), (Mode::Active, 500, 2_000));
                assert_eq!(info.state, b"{\"n\":2}");
            }
            other => panic!("expected a restart, got {other:?}"),
        }
        assert!(matches!(reader.read_start(100_000, 60_000), Start::Fresh(why) if why.contains("longer than restart.max_downtime_ms")));
        assert!(matches!(NodeStateFile::new(dir.path(), "b").read_start(3_300, 60_000), Start::Fresh(why) if why.contains("not \"b\"")));
        file.save_clean_stop(4_000).unwrap();
        assert!(matches!(reader.read_start(4_100, 60_000), Start::Fresh(why) if why.contains("cleanly")));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(FILE_NAME)], "no temporary file left behind");
    }

    #[test]
    fn a_damaged_file_starts_fresh_and_says_why() {
        let why = match judge(Path::new("/d/node-state.json"), "{\"mode\": \"act", "a", 0, 60_000) {
            Start::Fresh(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(why.contains("/d/node-state.json") && why.contains("unreadable"), "{why}");
    }
}
