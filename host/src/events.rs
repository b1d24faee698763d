//! The failover event log: what happened to this node and why, kept in SQLite.
//!
//! Owns: the event log file (`events.sqlite` in the data directory): its schema and version, writing
//! one row per event, reading the newest events (`/status`, `GET /events`, `vigil events`) or those
//! after a known id (tailing), and keeping only the newest `retention` rows.
//!
//! Never: panics on a bad file or a failed write (both are errors the caller logs; the node keeps
//! running without its log rather than stopping); decides what is worth recording (the node does:
//! one event per decision that changed something, faults, operator requests, reloads, alarms, peer
//! commands, start and stop); holds its lock across anything but one short SQLite statement.
//!
//! ## Calling it from async code
//!
//! Calls are synchronous behind a `Mutex<Connection>`, and short enough to make inline from an async
//! task: WAL mode with `synchronous = FULL` fsyncs the WAL at each commit, so a recorded event
//! survives a power loss. Measured on the project machine (2 shared cores, virtual disk, dev build with
//! SQLite optimised) by the `insert_cost` test over 2,000 inserts: one `record` takes a median of
//! **about 0.2 ms**, 99th percentile about 4 ms, mean about 0.6 ms (the fsync; events are rare, a few
//! per decision); `latest(20)` about 50 µs.
//!
//! ## Retention
//!
//! Rows are pruned to the newest `retention` when the log is opened and every [`PRUNE_EVERY`]
//! inserts after that, so the table holds at most `retention + PRUNE_EVERY` rows. Ids come from
//! `AUTOINCREMENT`: they are never reused, so `since(id)` stays correct across pruning.

use crate::model::Mode;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The schema version this build reads and writes (SQLite's `user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// Inserts between two prunes.
pub const PRUNE_EVERY: u32 = 256;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The plugin decided something that changed the mode or ran actions.
    Decision,
    /// The plugin faulted (trap, timeout, memory, invalid decision).
    Fault,
    /// An action's result worth keeping.
    Action,
    /// An operator's request.
    Operator,
    /// A policy reload, applied or refused.
    Reload,
    /// An alarm raised by the plugin.
    Alarm,
    /// Something a peer did or said.
    Peer,
    /// The daemon started or stopped.
    Startup,
    /// The shadow policy: set, reloaded, cleared, promoted, or deciding otherwise than the live one.
    Shadow,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [EventKind] = &[
        EventKind::Decision,
        EventKind::Fault,
        EventKind::Action,
        EventKind::Operator,
        EventKind::Reload,
        EventKind::Alarm,
        EventKind::Peer,
        EventKind::Startup,
        EventKind::Shadow,
    ];

    /// The name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Decision => "decision",
            EventKind::Fault => "fault",
            EventKind::Action => "action",
            EventKind::Operator => "operator",
            EventKind::Reload => "reload",
            EventKind::Alarm => "alarm",
            EventKind::Peer => "peer",
            EventKind::Startup => "startup",
            EventKind::Shadow => "shadow",
        }
    }

    fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.iter().copied().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned by [`EventLog::record`], increasing, never reused; 0 before recording.
    pub id: u64,
    /// When it happened, ms since the Unix epoch.
    pub at_ms: u64,
    /// What kind of thing happened.
    pub kind: EventKind,
    /// The node's mode after it, where that matters.
    pub mode: Option<Mode>,
    /// One line for people.
    pub message: String,
    /// Structured particulars (actions, fault kind, peer …); `null` when there are none.
    pub detail: serde_json::Value,
}

impl Event {
    /// An event without mode or detail (set the public fields to add them).
    pub fn new(at_ms: u64, kind: EventKind, message: impl Into<String>) -> Event {
        Event { id: 0, at_ms, kind, mode: None, message: message.into(), detail: serde_json::Value::Null }
    }
}

/// Why the event log could not be opened, written or read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// The file could not be opened as an SQLite database (unreadable, corrupt, not a database).
    #[error("event log {}: cannot open: {source}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    /// The file was written by a vigil with another schema.
    #[error("event log {}: schema version {found}, this vigil reads version {SCHEMA_VERSION} (move the file aside to start a new log)", path.display())]
    Version { path: PathBuf, found: i64 },
    /// A write failed.
    #[error("event log {}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: rusqlite::Error },
    /// A read failed.
    #[error("event log {}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: rusqlite::Error },
}

struct Inner {
    conn: Connection,
    inserts_since_prune: u32,
}

/// The event log of one node. Share it by reference or `Arc`; all methods take `&self`.
pub struct EventLog {
    path: PathBuf,
    retention: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("path", &self.path).field("retention", &self.retention).finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, at_ms, kind, mode, message, detail";

impl EventLog {
    /// Open (creating if missing) the log at `path`, keeping the newest `retention` events (at least 1).
    pub fn open(path: &Path, retention: usize) -> Result<EventLog, EventLogError> {
        let path = path.to_path_buf();
        let open_err = |source| EventLogError::Open { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(2)).map_err(open_err)?;
        // The first statement that reads the file: a corrupt or foreign file fails here.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0)).map_err(open_err)?;
        // FULL: an event that was recorded survives a power loss (events are rare; see the figure above).
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(open_err)?;
        match version {
            0 => conn
                .execute_batch(&format!(
                    "BEGIN;
                     CREATE TABLE IF NOT EXISTS events (
                         id INTEGER PRIMARY KEY AUTOINCREMENT,
                         at_ms INTEGER NOT NULL,
                         kind TEXT NOT NULL,
                         mode TEXT,
                         message TEXT NOT NULL,
                         detail TEXT NOT NULL
                     );
                     PRAGMA user_version = {SCHEMA_VERSION};
                     COMMIT;"
                ))
                .map_err(open_err)?,
            SCHEMA_VERSION => {}
            found => return Err(EventLogError::Version { path, found }),
        }
        let log = EventLog { path, retention: retention.max(1), inner: Mutex::new(Inner { conn, inserts_since_prune: 0 }) };
        {
            let inner = log.lock();
            log.prune(&inner.conn).map_err(|source| EventLogError::Open { path: log.path.clone(), source })?;
        }
        Ok(log)
    }

    /// The file this log writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `event` (its `id` is ignored) and return the id it got. A failure is logged and returned.
    pub fn record(&self, event: Event) -> Result<u64, EventLogError> {
        let mut inner = self.lock();
        let written = inner
            .conn
            .prepare_cached("INSERT INTO events (at_ms, kind, mode, message, detail) VALUES (?1, ?2, ?3, ?4, ?5)")
            .and_then(|mut insert| {
                insert.execute(params![
                    i64::try_from(event.at_ms).unwrap_or(i64::MAX),
                    event.kind.as_str(),
                    event.mode.map(Mode::as_str),
                    event.message,
                    event.detail.to_string(),
                ])
            })
            .map(|_| inner.conn.last_insert_rowid());
        let id = match written {
            Ok(id) => id,
            Err(source) => {
                let e = EventLogError::Write { path: self.path.clone(), source };
                tracing::warn!(error = %e, kind = %event.kind, "event not recorded");
                return Err(e);
            }
        };
        inner.inserts_since_prune += 1;
        if inner.inserts_since_prune >= PRUNE_EVERY {
            inner.inserts_since_prune = 0;
            if let Err(source) = self.prune(&inner.conn) {
                // The event itself is written; an oversized log is not worth failing the caller for.
                tracing::warn!(error = %EventLogError::Write { path: self.path.clone(), source }, "event log not pruned");
            }
        }
        Ok(id as u64)
    }

    /// The newest `limit` events, newest first.
    pub fn latest(&self, limit: usize) -> Result<Vec<Event>, EventLogError> {
        self.query(&format!("SELECT {COLUMNS} FROM events ORDER BY id DESC LIMIT ?1"), params![limit_param(limit)])
    }

    /// Up to `limit` events with an id above `after_id`, oldest first (to follow the log).
    pub fn since(&self, after_id: u64, limit: usize) -> Result<Vec<Event>, EventLogError> {
        self.query(
            &format!("SELECT {COLUMNS} FROM events WHERE id > ?1 ORDER BY id ASC LIMIT ?2"),
            params![i64::try_from(after_id).unwrap_or(i64::MAX), limit_param(limit)],
        )
    }

    /// How many events the log holds.
    pub fn count(&self) -> Result<u64, EventLogError> {
        let inner = self.lock();
        inner
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |row| row.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|source| EventLogError::Read { path: self.path.clone(), source })
    }

    fn query(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Event>, EventLogError> {
        let inner = self.lock();
        let read_err = |source| EventLogError::Read { path: self.path.clone(), source };
        let mut statement = inner.conn.prepare_cached(sql).map_err(read_err)?;
        let rows = statement
            .query_map(params, |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .map_err(read_err)?;
        let mut events = Vec::new();
        for row in rows {
            let (id, at_ms, kind, mode, message, detail) = row.map_err(read_err)?;
            // A row this build cannot understand is skipped rather than hiding every other event.
            let Some(kind) = EventKind::parse(&kind) else {
                tracing::warn!(path = %self.path.display(), id, kind = %kind, "event of unknown kind skipped");
                continue;
            };
            events.push(Event {
                id: id as u64,
                at_ms: at_ms.max(0) as u64,
                kind,
                mode: mode.and_then(|m| m.parse().ok()),
                message,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            });
        }
        Ok(events)
    }

    /// Delete all but the newest `retention` rows.
    fn prune(&self, conn: &Connection) -> rusqlite::Result<()> {
        let keep = i64::try_from(self.retention).unwrap_or(i64::MAX);
        let cutoff: Option<i64> = conn
            .query_row("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1", [keep - 1], |row| row.get(0))
            .optional()?;
        if let Some(oldest_kept) = cutoff {
            conn.execute("DELETE FROM events WHERE id < ?1", [oldest_kept])?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn event(i: u64) -> Event {
        let mut e = Event::new(1_700_000_000_000 + i, EventKind::Decision, format!("event {i}"));
        e.mode = Some(Mode::Active);
        e.detail = serde_json::json!({ "n": i, "actions": ["start:app"] });
        e
    }

    #[test]
    fn events_round_trip_newest_first_and_since() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("events.sqlite"), 100).unwrap();
        assert!(log.latest(10).unwrap().is_empty());
        let ids: Vec<u64> = (0..5).map(|i| log.record(event(i)).unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        log.record(Event::new(5, EventKind::Startup, "vigil started")).unwrap();

        let latest = log.latest(3).unwrap();
        let messages: Vec<&str> = latest.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["vigil started", "event 4", "event 3"]);
        assert_eq!(latest[0].mode, None);
        assert_eq!(latest[0].detail, serde_json::Value::Null);
        assert_eq!(latest[1], Event { id: ids[4], ..event(4) });

        let after = log.since(ids[2], 2).unwrap();
        assert_eq!(after.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[3], ids[4]]);

        let json = serde_json::to_value(&latest[1]).unwrap();
        assert_eq!(json["kind"], "decision");
        assert_eq!(json["mode"], "active");
        assert_eq!(json["detail"]["n"], 4);
        assert_eq!(serde_json::to_value(EventKind::Startup).unwrap(), "startup");
    }

    #[test]
    fn retention_keeps_the_newest_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite");
        let retention = 10;
        let mut last = 0;
        {
            let log = EventLog::open(&path, retention).unwrap();
            for i in 0..(3 * PRUNE_EVERY as u64 + 7) {
                last = log.record(event(i)).unwrap();
                assert!(log.count().unwrap() <= (retention as u64) + u64::from(PRUNE_EVERY));
            }
        }
        let log = EventLog::open(&path, retention).unwrap();
        assert_eq!(log.count().unwrap(), retention as u64, "pruned on open");
        let latest = log.latest(100).unwrap();
        assert_eq!(latest.len(), retention);
        assert_eq!(latest[0].id, last);
        assert_eq!(latest[0].message, format!("event {}", 3 * PRUNE_EVERY + 6));
        // Ids keep increasing after pruning and reopening.
        assert!(log.record(event(0)).unwrap() > last);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let e = EventLog::open(&path, 100).unwrap_err();
        assert!(matches!(e, EventLogError::Open { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()) && text.contains("not a database"), "{text}");

        let dir_path = dir.path().join("a-directory");
        std::fs::create_dir(&dir_path).unwrap();
        let e = EventLog::open(&dir_path, 100).unwrap_err().to_string();
        assert!(e.contains("a-directory"), "{e}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 7).unwrap();
        let e = EventLog::open(&path, 100).unwrap_err();
        assert!(matches!(e, EventLogError::Version { found: 7, .. }), "{e:?}");
        assert!(e.to_string().contains("schema version 7"), "{e}");
    }

    #[test]
    fn a_failed_write_is_returned_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("events.sqlite"), 100).unwrap();
        log.lock().conn.execute_batch("DROP TABLE events").unwrap();
        let e = log.record(event(1)).unwrap_err();
        assert!(matches!(e, EventLogError::Write { .. }) && e.to_string().contains("events.sqlite"), "{e}");
        assert!(matches!(log.latest(1), Err(EventLogError::Read { .. })));
    }

    #[test]
    fn recorded_events_survive_power_loss() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("events.sqlite"), 1_000).unwrap();
        let sync: i64 = log.lock().conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous = FULL");
    }

    /// Prints the figure quoted in the module doc.
    #[test]
    fn insert_cost() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("events.sqlite"), 1_000).unwrap();
        let mut times: Vec<Duration> = (0..2_000)
            .map(|i| {
                let started = Instant::now();
                log.record(event(i)).unwrap();
                started.elapsed()
            })
            .collect();
        times.sort();
        let (median, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
        let per_insert = times.iter().sum::<Duration>() / times.len() as u32;
        let started = Instant::now();
        for _ in 0..100 {
            log.latest(20).unwrap();
        }
        let per_latest = started.elapsed() / 100;
        eprintln!("event log: record median {median:?}, p99 {p99:?}, mean {per_insert:?}; latest(20) {per_latest:?}");
        assert!(per_insert < Duration::from_millis(5), "{per_insert:?}");
    }
}
