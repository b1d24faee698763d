//! The replicated store: entries in SQLite, versioned by hybrid logical clock, last writer wins.
//!
//! An entry is `(scope, key) → value` with a version `(hlc, origin)`; scope `config` holds the
//! configuration keys, and each replicated directory has a scope of its own (key = relative path).
//! A delete is a tombstone (no value) with a version like any write, so a deleted value cannot come
//! back from a node that missed the delete. Tombstones older than the retention are purged; the purge
//! raises a *horizon*, and a change older than the horizon for a key the store does not hold is
//! refused — it can only be a value deleted long ago.
//!
//! Every write, local or applied from a peer, takes the next local sequence number; peers pull "what
//! changed since sequence N" (their watermark) and so also receive what this node learned from a
//! third node. Local-only keys (patterns) are never sent and never accepted.
//!
//! A batch from a peer is applied in one transaction; each change is checked first, and one the
//! checks refuse (unknown scope, too large, a bad key or timestamp) is skipped and reported while the
//! rest applies: one bad change must not stop replication. An oversized batch changes nothing.
//!
//! A file change applied from a peer is *pending* until its file is on disk (a table committed with
//! the change): a scan never reads a pending file's absence as a delete, and a crash between the
//! commit and the write leaves it pending for the next retry. The store also keeps each replicated
//! file's *stamp* (size, modification time, inode) as this node last wrote or scanned it, so that a
//! restarted node tells an edit made while it was down from its own write.
//!
//! The store has an *incarnation*, a random id created with it: a peer that sees it change knows the
//! sequence numbers started again and pulls from zero.

use super::hlc::{newer, Hlc, HlcClock};
use base64::Engine as _;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The scope of configuration keys.
pub const CONFIG: &str = "config";
/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest configuration value.
pub const MAX_VALUE: usize = 1 << 20;
/// How far in the future a peer's timestamp may be: a far-future version would win every later
/// write, so it is refused as a sign of a broken clock.
pub use super::hlc::MAX_FUTURE_MS;
/// Most changes in one batch.
pub const MAX_BATCH: usize = 10_000;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("change {index} ({scope}/{key}): {message}")]
    BadChange { index: usize, scope: String, key: String, message: String },
    #[error("batch of {0} changes is over the limit of {MAX_BATCH}")]
    BatchTooLarge(usize),
    #[error("key {key:?}: {message}")]
    BadKey { key: String, message: String },
    #[error("local write refused: {0}; fix the clock (NTP)")]
    Clock(#[from] super::hlc::HlcError),
}

/// One versioned change, as replicated between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub scope: String,
    pub key: String,
    /// `None` for a delete.
    #[serde(with = "b64")]
    pub value: Option<Vec<u8>>,
    /// File permissions (directory scopes).
    #[serde(default)]
    pub mode: Option<u32>,
    pub hlc: Hlc,
    pub origin: String,
    /// The sender's local sequence number of this change.
    pub seq: u64,
}

/// A live entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub scope: String,
    pub key: String,
    #[serde(with = "b64")]
    pub value: Option<Vec<u8>>,
    pub mode: Option<u32>,
    pub hlc: Hlc,
    pub origin: String,
    pub seq: u64,
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_some(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => STANDARD.decode(text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// Key patterns where `*` matches any run of characters.
#[derive(Debug, Clone, Default)]
pub struct Patterns(Vec<String>);

impl Patterns {
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Patterns {
        Patterns(patterns.into_iter().collect())
    }

    pub fn matches(&self, key: &str) -> bool {
        self.0.iter().any(|p| glob(p.as_bytes(), key.as_bytes()))
    }
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

/// Per-scope limits: the configuration scope and each replicated directory.
#[derive(Debug, Clone)]
pub struct Scopes {
    /// `(scope name, largest value)`; `config` is always there.
    pub sizes: Vec<(String, usize)>,
}

impl Default for Scopes {
    fn default() -> Self {
        Scopes { sizes: vec![(CONFIG.to_string(), MAX_VALUE)] }
    }
}

impl Scopes {
    fn limit(&self, scope: &str) -> Option<usize> {
        self.sizes.iter().find(|(s, _)| s == scope).map(|(_, l)| *l)
    }
}

/// How a local change is dated.
#[derive(Debug, Clone, Copy)]
enum Dating {
    /// Now, after the key's own current version (a write through the API). Other keys' versions do
    /// not bound it: a version from a clock that ran fast dates only writes of its own key after it
    /// (see `HlcClock::stamp_after`), never the node's every write.
    Now,
    /// When it happened on disk (a file's modification time, the file event that saw it go): after
    /// the key's own current version only.
    At(u64),
}

/// What applying a batch did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Changes that won and were written.
    pub written: Vec<Change>,
    /// Changes that lost to what the store had, or were local-only.
    pub ignored: usize,
    /// Changes refused by the checks (unknown scope, too large, bad key or timestamp), with why:
    /// skipped, the rest of the batch applies.
    pub refused: Vec<String>,
}

impl From<Entry> for Change {
    fn from(e: Entry) -> Change {
        Change { scope: e.scope, key: e.key, value: e.value, mode: e.mode, hlc: e.hlc, origin: e.origin, seq: e.seq }
    }
}

/// The store of one node.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    node: String,
    clock: HlcClock,
    local_only: Patterns,
    scopes: Scopes,
    /// Live entries, kept up to date by every write (a count(*) per status read would scan the table).
    items: std::sync::atomic::AtomicU64,
    /// The latest local sequence and the peers' watermarks, kept beside the database: heartbeat
    /// answers and the node loop read them, and must not wait while a large batch holds the
    /// connection.
    latest: std::sync::atomic::AtomicU64,
    watermarks: Mutex<std::collections::HashMap<String, u64>>,
    /// Random, created with the store: see [`Store::incarnation`].
    incarnation: u64,
}

impl Store {
    /// Open (or create) the store at `path` for node `node`.
    pub fn open(path: &Path, node: &str, local_only: Patterns, scopes: Scopes) -> Result<Store, StoreError> {
        let db = |e: rusqlite::Error| StoreError::Db { path: path.to_path_buf(), message: e.to_string() };
        let conn = Connection::open(path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS entries (
                 scope TEXT NOT NULL, key TEXT NOT NULL, value BLOB, mode INTEGER,
                 wall INTEGER NOT NULL, counter INTEGER NOT NULL, origin TEXT NOT NULL,
                 seq INTEGER NOT NULL, PRIMARY KEY (scope, key));
             CREATE INDEX IF NOT EXISTS entries_seq ON entries (seq);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS peers (id TEXT PRIMARY KEY, watermark INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS pending (scope TEXT NOT NULL, key TEXT NOT NULL, reason TEXT, PRIMARY KEY (scope, key));
             CREATE TABLE IF NOT EXISTS stamps (
                 scope TEXT NOT NULL, key TEXT NOT NULL, size INTEGER, mtime_ns INTEGER, ino INTEGER,
                 next_size INTEGER, next_mtime_ns INTEGER, next_ino INTEGER, PRIMARY KEY (scope, key));",
        )
        .map_err(db)?;
        // FULL: a write that was acknowledged (`PUT /config`, a scanned file, a pulled page and its
        // watermark) survives a power loss, not only a crash; writes are rare.
        let integrity: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(db)?;
        if integrity != "ok" {
            return Err(StoreError::Db { path: path.to_path_buf(), message: format!("integrity check failed: {integrity}") });
        }
        let last: Option<(u64, u32)> = conn
            .query_row("SELECT wall, counter FROM entries ORDER BY wall DESC, counter DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db)?;
        let last = last.map(|(wall_ms, counter)| Hlc { wall_ms, counter }).unwrap_or_default();
        let items: u64 = conn.query_row("SELECT count(*) FROM entries WHERE value IS NOT NULL", [], |r| r.get(0)).map_err(db)?;
        let latest: u64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM entries", [], |r| r.get(0)).map_err(db)?;
        // The store's identity: created with it, so a peer can tell a reset or replaced store
        // (whose sequence numbers start again) from the one it pulled from.
        let incarnation = match meta(&conn, "incarnation").map_err(db)? {
            Some(i) => i,
            None => {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).map_err(|e| StoreError::Db { path: path.to_path_buf(), message: format!("no random source: {e}") })?;
                // 63 bits (SQLite integers are signed), never 0 (0 means "unknown" on the wire).
                let i = (u64::from_le_bytes(bytes) >> 1).max(1);
                set_meta(&conn, "incarnation", i).map_err(db)?;
                i
            }
        };
        let watermarks = conn
            .prepare("SELECT id, watermark FROM peers")
            .and_then(|mut st| st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?.collect::<Result<_, _>>())
            .map_err(db)?;
        Ok(Store {
            incarnation,
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            node: node.to_string(),
            clock: HlcClock::new(last),
            local_only,
            scopes,
            items: items.into(),
            latest: latest.into(),
            watermarks: Mutex::new(watermarks),
        })
    }

    fn db(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Db { path: self.path.clone(), message: e.to_string() }
    }

    /// The store's incarnation: a random id created with the store and kept with it. A peer that
    /// sees it change knows the sequence numbers started again (a reset or replaced store).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether `key` of `scope` is local-only.
    pub fn is_local_only(&self, scope: &str, key: &str) -> bool {
        self.local_only.matches(&full_key(scope, key))
    }

    fn check_key(&self, key: &str) -> Result<(), StoreError> {
        let bad = |message: &str| Err(StoreError::BadKey { key: key.chars().take(80).collect(), message: message.into() });
        if key.is_empty() {
            return bad("empty");
        }
        if key.len() > MAX_KEY {
            return bad("longer than 1024 bytes");
        }
        if key.chars().any(char::is_control) {
            return bad("contains control characters");
        }
        Ok(())
    }

    /// Write a value locally at wall time `wall_ms`.
    pub fn put(&self, scope: &str, key: &str, value: Vec<u8>, mode: Option<u32>, wall_ms: u64) -> Result<Change, StoreError> {
        self.check_key(key)?;
        let limit = self.scopes.limit(scope).ok_or_else(|| StoreError::BadKey { key: key.into(), message: format!("no scope {scope:?}") })?;
        if value.len() > limit {
            return Err(StoreError::BadKey { key: key.into(), message: format!("value of {} bytes is over the limit of {limit}", value.len()) });
        }
        self.write_local(scope, key, Some(value), mode, Dating::Now, wall_ms)
    }

    /// Write a value locally, versioned as of `at_ms` (a file's modification time) at wall time
    /// `now_ms`: the version is later than every one this node has seen, as close to `at_ms` as that
    /// allows.
    pub fn put_at(&self, scope: &str, key: &str, value: Vec<u8>, mode: Option<u32>, at_ms: u64, now_ms: u64) -> Result<Change, StoreError> {
        self.check_key(key)?;
        let limit = self.scopes.limit(scope).ok_or_else(|| StoreError::BadKey { key: key.into(), message: format!("no scope {scope:?}") })?;
        if value.len() > limit {
            return Err(StoreError::BadKey { key: key.into(), message: format!("value of {} bytes is over the limit of {limit}", value.len()) });
        }
        self.write_local(scope, key, Some(value), mode, Dating::At(at_ms), now_ms)
    }

    /// Delete locally (a tombstone). `None` when there was nothing to delete.
    pub fn delete(&self, scope: &str, key: &str, wall_ms: u64) -> Result<Option<Change>, StoreError> {
        self.check_key(key)?;
        match self.get(scope, key)? {
            Some(e) if e.value.is_some() => self.write_local(scope, key, None, None, Dating::Now, wall_ms).map(Some),
            _ => Ok(None),
        }
    }

    /// Delete locally, versioned as of `at_ms` (when a file event saw the file go) at wall time
    /// `now_ms`, as [`Store::put_at`] does for writes.
    pub fn delete_at(&self, scope: &str, key: &str, at_ms: u64, now_ms: u64) -> Result<Option<Change>, StoreError> {
        self.check_key(key)?;
        match self.get(scope, key)? {
            Some(e) if e.value.is_some() => self.write_local(scope, key, None, None, Dating::At(at_ms), now_ms).map(Some),
            _ => Ok(None),
        }
    }

    fn write_local(&self, scope: &str, key: &str, value: Option<Vec<u8>>, mode: Option<u32>, dating: Dating, now_ms: u64) -> Result<Change, StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        let current: Option<(bool, Hlc)> = tx
            .prepare_cached("SELECT value IS NOT NULL, wall, counter FROM entries WHERE scope = ?1 AND key = ?2")
            .and_then(|mut st| st.query_row(params![scope, key], |r| Ok((r.get(0)?, Hlc { wall_ms: r.get(1)?, counter: r.get(2)? }))).optional())
            .map_err(|e| self.db(e))?;
        let was_live = current.is_some_and(|(live, _)| live);
        let seq = next_seq(&tx).map_err(|e| self.db(e))?;
        let hlc = match dating {
            Dating::Now => self.clock.stamp_after(now_ms, now_ms, current.map(|(_, h)| h))?,
            Dating::At(at_ms) => self.clock.stamp_after(at_ms, now_ms, current.map(|(_, h)| h))?,
        };
        let change = Change { scope: scope.into(), key: key.into(), value, mode, hlc, origin: self.node.clone(), seq };
        upsert(&tx, &change, seq).map_err(|e| self.db(e))?;
        // A local change is what the disk holds now: a peer's change pending for this file is
        // superseded, not to be written over it.
        tx.execute("DELETE FROM pending WHERE scope = ?1 AND key = ?2", params![scope, key]).map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))?;
        self.latest.fetch_max(seq, std::sync::atomic::Ordering::AcqRel);
        self.adjust_items(i64::from(change.value.is_some()) - i64::from(was_live));
        Ok(change)
    }

    /// The entry for a key, tombstones included.
    pub fn get(&self, scope: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.query_row(
            "SELECT scope, key, value, mode, wall, counter, origin, seq FROM entries WHERE scope = ?1 AND key = ?2",
            params![scope, key],
            entry_of,
        )
        .optional()
        .map_err(|e| self.db(e))
    }

    /// Live entries of a scope whose key starts with `prefix`, in key order.
    pub fn list(&self, scope: &str, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut stmt = conn
            .prepare(
                "SELECT scope, key, value, mode, wall, counter, origin, seq FROM entries
                 WHERE scope = ?1 AND value IS NOT NULL AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
            )
            .map_err(|e| self.db(e))?;
        let rows = stmt.query_map(params![scope, prefix], entry_of).map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db(e))
    }

    /// Number of live entries (keys and files).
    pub fn items(&self) -> Result<u64, StoreError> {
        Ok(self.items.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Entries dated after `wall_ms` (a clock that ran fast wrote them): how many, and the latest.
    pub fn dated_after(&self, wall_ms: u64) -> Result<(u64, Option<u64>), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.query_row("SELECT count(*), max(wall) FROM entries WHERE wall > ?1", params![wall_ms], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.db(e))
    }

    /// The latest local sequence number (0 for an empty store).
    pub fn latest_seq(&self) -> Result<u64, StoreError> {
        Ok(self.latest.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Changes after sequence `since`, oldest first, at most `limit` of them or about `max_bytes` of
    /// values; local-only keys are left out. Also returns the sequence to ask from next time.
    pub fn changes_since(&self, since: u64, limit: usize, max_bytes: usize) -> Result<(Vec<Change>, u64), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut stmt = conn
            .prepare("SELECT scope, key, value, mode, wall, counter, origin, seq FROM entries WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| self.db(e))?;
        let rows = stmt.query_map(params![since, limit as i64], entry_of).map_err(|e| self.db(e))?;
        let (mut changes, mut next, mut bytes) = (Vec::new(), since, 0usize);
        for row in rows {
            let e = row.map_err(|e| self.db(e))?;
            let size = e.value.as_ref().map_or(0, Vec::len);
            if bytes + size > max_bytes && !changes.is_empty() {
                break;
            }
            next = e.seq;
            if self.is_local_only(&e.scope, &e.key) {
                continue;
            }
            bytes += size;
            changes.push(Change { scope: e.scope, key: e.key, value: e.value, mode: e.mode, hlc: e.hlc, origin: e.origin, seq: e.seq });
        }
        Ok((changes, next))
    }

    /// Check one change from a peer at wall time `now_ms`.
    pub fn check_change(&self, index: usize, c: &Change, now_ms: u64) -> Result<(), StoreError> {
        let bad = |message: String| StoreError::BadChange { index, scope: c.scope.clone(), key: c.key.chars().take(80).collect(), message };
        self.check_key(&c.key).map_err(|e| bad(e.to_string()))?;
        let limit = self.scopes.limit(&c.scope).ok_or_else(|| bad(format!("no scope {:?} on this node", c.scope)))?;
        if c.value.as_ref().is_some_and(|v| v.len() > limit) {
            return Err(bad(format!("value over the scope's limit of {limit} bytes")));
        }
        super::hlc::check(c.hlc, now_ms).map_err(|e| bad(e.to_string()))?;
        if c.origin.is_empty() || c.origin.len() > 64 {
            return Err(bad("origin must be a node id".into()));
        }
        if c.scope != CONFIG && (c.key.starts_with('/') || c.key.split('/').any(|part| part == ".." || part == "." || part.is_empty())) {
            return Err(bad("a file key must be a relative path without '..'".into()));
        }
        Ok(())
    }

    /// Check a batch from a peer without writing anything: the first refused change.
    pub fn check_batch(&self, changes: &[Change], now_ms: u64) -> Result<(), StoreError> {
        if changes.len() > MAX_BATCH {
            return Err(StoreError::BatchTooLarge(changes.len()));
        }
        changes.iter().enumerate().try_for_each(|(index, c)| self.check_change(index, c, now_ms))
    }

    /// Apply a batch from a peer in one transaction: the winners are written; a change the checks
    /// refuse is skipped and reported in [`Applied::refused`] (one bad change must not stop every
    /// later one from replicating). Only a batch over [`MAX_BATCH`] is refused whole.
    pub fn apply(&self, changes: &[Change], now_ms: u64) -> Result<Applied, StoreError> {
        if changes.len() > MAX_BATCH {
            return Err(StoreError::BatchTooLarge(changes.len()));
        }
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        let horizon = meta(&tx, "horizon_wall").map_err(|e| self.db(e))?.unwrap_or(0);
        let mut seq = meta(&tx, "next_seq").map_err(|e| self.db(e))?.unwrap_or(1);
        let mut applied = Applied::default();
        let mut live_delta: i64 = 0;
        {
            let mut current_of = tx
                .prepare_cached("SELECT wall, counter, origin, value IS NOT NULL FROM entries WHERE scope = ?1 AND key = ?2")
                .map_err(|e| self.db(e))?;
            for (index, c) in changes.iter().enumerate() {
                if let Err(e) = self.check_change(index, c, now_ms) {
                    applied.refused.push(e.to_string());
                    continue;
                }
                if let Err(e) = self.clock.observe(c.hlc, now_ms) {
                    applied.refused.push(e.to_string());
                    continue;
                }
                if self.is_local_only(&c.scope, &c.key) {
                    applied.ignored += 1;
                    continue;
                }
                let current: Option<(u64, u32, String, bool)> = current_of
                    .query_row(params![c.scope, c.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .optional()
                    .map_err(|e| self.db(e))?;
                let wins = match &current {
                    Some((wall, counter, origin, _)) => newer((c.hlc, &c.origin), (Hlc { wall_ms: *wall, counter: *counter }, origin)),
                    // Unknown key: older than the purge horizon means deleted long ago.
                    None => c.hlc.wall_ms >= horizon,
                };
                if !wins {
                    applied.ignored += 1;
                    continue;
                }
                upsert(&tx, c, seq).map_err(|e| self.db(e))?;
                if c.scope != CONFIG {
                    // Committed here, not yet on disk: until the file is written (or removed), a scan
                    // must not read its absence as a local delete.
                    tx.prepare_cached("INSERT OR REPLACE INTO pending (scope, key, reason) VALUES (?1, ?2, NULL)")
                        .and_then(|mut st| st.execute(params![c.scope, c.key]))
                        .map_err(|e| self.db(e))?;
                }
                seq += 1;
                live_delta += i64::from(c.value.is_some()) - i64::from(current.is_some_and(|(_, _, _, live)| live));
                applied.written.push(c.clone());
            }
        }
        set_meta(&tx, "next_seq", seq).map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))?;
        self.latest.fetch_max(seq - 1, std::sync::atomic::Ordering::AcqRel);
        self.adjust_items(live_delta);
        Ok(applied)
    }

    fn adjust_items(&self, delta: i64) {
        if delta >= 0 {
            self.items.fetch_add(delta as u64, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.items.fetch_sub(delta.unsigned_abs(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Purge tombstones older than `before_wall_ms`. The horizon rises to the newest purged one: only
    /// changes older than a delete this node has forgotten are refused for unknown keys, so a node
    /// that never purged anything (a new one) accepts every old key.
    pub fn purge_tombstones(&self, before_wall_ms: u64) -> Result<usize, StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        let newest: Option<u64> = tx
            .query_row("SELECT max(wall) FROM entries WHERE value IS NULL AND wall < ?1", params![before_wall_ms], |r| r.get(0))
            .map_err(|e| self.db(e))?;
        let Some(newest) = newest else { return Ok(0) };
        let n = tx.execute("DELETE FROM entries WHERE value IS NULL AND wall < ?1", params![before_wall_ms]).map_err(|e| self.db(e))?;
        let horizon = meta(&tx, "horizon_wall").map_err(|e| self.db(e))?.unwrap_or(0).max(newest + 1);
        set_meta(&tx, "horizon_wall", horizon).map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))?;
        Ok(n)
    }

    /// The sequence number of `peer` this node has pulled up to.
    pub fn watermark(&self, peer: &str) -> Result<u64, StoreError> {
        Ok(self.watermarks.lock().expect("watermark lock").get(peer).copied().unwrap_or(0))
    }

    /// Record that everything of `peer` up to `seq` is applied.
    pub fn set_watermark(&self, peer: &str, seq: u64) -> Result<(), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.execute("INSERT OR REPLACE INTO peers (id, watermark) VALUES (?1, ?2)", params![peer, seq]).map_err(|e| self.db(e))?;
        self.watermarks.lock().expect("watermark lock").insert(peer.to_string(), seq);
        Ok(())
    }

    /// File changes committed to the store but not yet written to disk, with why the last attempt
    /// failed (`None`: not tried yet), in key order.
    pub fn pending(&self, scope: &str) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut stmt = conn.prepare("SELECT key, reason FROM pending WHERE scope = ?1 ORDER BY key").map_err(|e| self.db(e))?;
        let rows = stmt.query_map(params![scope], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db(e))
    }

    /// The file change of `scope`/`key` is on disk now.
    pub fn clear_pending(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.execute("DELETE FROM pending WHERE scope = ?1 AND key = ?2", params![scope, key]).map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The file change of `scope`/`key` is on disk now, as `stamp` (`None`: removed), in one
    /// transaction: the next process knows the file as written, so an edit made while it was down
    /// is told from its own write.
    pub fn written(&self, scope: &str, key: &str, stamp: Option<DiskStamp>) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        tx.execute("DELETE FROM pending WHERE scope = ?1 AND key = ?2", params![scope, key]).map_err(|e| self.db(e))?;
        save_stamp(&tx, scope, key, stamp).map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))
    }

    /// Each file of `scope` as this node last knew it on disk (its last scan or write), and the
    /// stamp of a write about to land over it (set before the rename, cleared once it is recorded):
    /// a crash between the two leaves either on disk, both known.
    pub fn stamps(&self, scope: &str) -> Result<HashMap<String, KeptStamps>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut stmt = conn
            .prepare("SELECT key, size, mtime_ns, ino, next_size, next_mtime_ns, next_ino FROM stamps WHERE scope = ?1")
            .map_err(|e| self.db(e))?;
        let stamp_at = |r: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<Option<DiskStamp>> {
            Ok(match (r.get(i)?, r.get(i + 1)?, r.get(i + 2)?) {
                (Some(size), Some(mtime_ns), Some(ino)) => Some(DiskStamp { size, mtime_ns, ino }),
                _ => None,
            })
        };
        let rows = stmt.query_map(params![scope], |r| Ok((r.get(0)?, (stamp_at(r, 1)?, stamp_at(r, 4)?)))).map_err(|e| self.db(e))?;
        rows.collect::<Result<HashMap<_, _>, _>>().map_err(|e| self.db(e))
    }

    /// Forget the stamps of `scope` (its directory is not the one they describe).
    pub fn clear_stamps(&self, scope: &str) -> Result<(), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.execute("DELETE FROM stamps WHERE scope = ?1", params![scope]).map_err(|e| self.db(e))?;
        Ok(())
    }

    /// A write of `scope`/`key` is about to be renamed into place as `stamp` (see [`Store::stamps`]).
    pub fn landing(&self, scope: &str, key: &str, stamp: DiskStamp) -> Result<(), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.prepare_cached(
            "INSERT INTO stamps (scope, key, next_size, next_mtime_ns, next_ino) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (scope, key) DO UPDATE SET next_size = ?3, next_mtime_ns = ?4, next_ino = ?5",
        )
        .and_then(|mut st| st.execute(params![scope, key, stamp.size, stamp.mtime_ns, stamp.ino]))
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Record what a scan found changed since the stamps kept: new or changed files (`Some`) and
    /// files gone (`None`), in one transaction.
    pub fn save_stamps(&self, scope: &str, changed: &[(&str, Option<DiskStamp>)]) -> Result<(), StoreError> {
        if changed.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        for (key, stamp) in changed {
            save_stamp(&tx, scope, key, *stamp).map_err(|e| self.db(e))?;
        }
        tx.commit().map_err(|e| self.db(e))
    }

    /// Writing the file change of `scope`/`key` failed: it stays pending, with why.
    pub fn fail_pending(&self, scope: &str, key: &str, reason: &str) -> Result<(), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.execute("INSERT OR REPLACE INTO pending (scope, key, reason) VALUES (?1, ?2, ?3)", params![scope, key, reason])
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Live entries of `scope` that are on disk (not pending): the files a scan expects to find.
    pub fn settled_files(&self, scope: &str) -> Result<u64, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.query_row(
            "SELECT count(*) FROM entries e WHERE e.scope = ?1 AND e.value IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.scope = e.scope AND p.key = e.key)",
            params![scope],
            |r| r.get(0),
        )
        .map_err(|e| self.db(e))
    }

    /// A named number kept with the store (e.g. the device a replicated directory was found on).
    pub fn meta_value(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        meta(&conn, name).map_err(|e| self.db(e))
    }

    /// Set a named number kept with the store.
    pub fn set_meta_value(&self, name: &str, value: u64) -> Result<(), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        set_meta(&conn, name, value).map_err(|e| self.db(e))
    }

    /// The timestamp clock (for tests and diagnostics).
    pub fn clock(&self) -> &HlcClock {
        &self.clock
    }
}

/// `scope:key` for configuration keys is just the key; files are `scope/path`.
fn full_key(scope: &str, key: &str) -> String {
    if scope == CONFIG {
        key.to_string()
    } else {
        format!("{scope}/{key}")
    }
}

fn entry_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        scope: r.get(0)?,
        key: r.get(1)?,
        value: r.get(2)?,
        mode: r.get(3)?,
        hlc: Hlc { wall_ms: r.get(4)?, counter: r.get(5)? },
        origin: r.get(6)?,
        seq: r.get(7)?,
    })
}


/// A file as found on disk: size, modification time (ns since the epoch) and inode. Two equal stamps
/// mean the file was not rewritten in between (an edit, or a rename over it, changes one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskStamp {
    pub size: i64,
    pub mtime_ns: i64,
    pub ino: i64,
}

/// A file's stamps kept by the store: as last known, and of a write about to land over it.
pub type KeptStamps = (Option<DiskStamp>, Option<DiskStamp>);

fn save_stamp(tx: &rusqlite::Transaction<'_>, scope: &str, key: &str, stamp: Option<DiskStamp>) -> rusqlite::Result<()> {
    match stamp {
        Some(s) => tx
            .prepare_cached("INSERT OR REPLACE INTO stamps (scope, key, size, mtime_ns, ino) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![scope, key, s.size, s.mtime_ns, s.ino])
            .map(drop),
        None => tx.prepare_cached("DELETE FROM stamps WHERE scope = ?1 AND key = ?2")?.execute(params![scope, key]).map(drop),
    }
}

fn meta(conn: &Connection, name: &str) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?.query_row(params![name], |r| r.get(0)).optional()
}

fn set_meta(conn: &Connection, name: &str, value: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")?.execute(params![name, value])?;
    Ok(())
}

fn next_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let next = meta(conn, "next_seq")?.unwrap_or(1);
    set_meta(conn, "next_seq", next + 1)?;
    Ok(next)
}

fn upsert(conn: &Connection, c: &Change, seq: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO entries (scope, key, value, mode, wall, counter, origin, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![c.scope, c.key, c.value, c.mode, c.hlc.wall_ms, c.hlc.counter, c.origin, seq])?;
    Ok(())
}

/// Encode bytes as the text the change feed uses (for tools and tests).
pub fn encode_value(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, node: &str) -> Store {
        Store::open(&dir.join(format!("{node}.sqlite")), node, Patterns::new(["ha.*".to_string()]), Scopes::default()).unwrap()
    }

    fn sync(from: &Store, to: &Store, now: u64) -> usize {
        let since = to.watermark(from.node()).unwrap();
        let (changes, next) = from.changes_since(since, 1000, 1 << 20).unwrap();
        let applied = to.apply(&changes, now).unwrap();
        to.set_watermark(from.node(), next).unwrap();
        applied.written.len()
    }

    fn value(s: &Store, key: &str) -> Option<String> {
        s.get(CONFIG, key).unwrap().and_then(|e| e.value).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn later_write_wins_and_both_converge() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(dir.path(), "a"), store(dir.path(), "b"));
        a.put(CONFIG, "x", b"from-a".to_vec(), None, 1000).unwrap();
        b.put(CONFIG, "x", b"from-b".to_vec(), None, 2000).unwrap();
        a.put(CONFIG, "only-a", b"1".to_vec(), None, 1500).unwrap();
        sync(&a, &b, 3000);
        sync(&b, &a, 3000);
        for s in [&a, &b] {
            assert_eq!(value(s, "x").as_deref(), Some("from-b"));
            assert_eq!(value(s, "only-a").as_deref(), Some("1"));
        }
        assert_eq!(sync(&a, &b, 3000), 0, "nothing new the second time");
        assert_eq!((a.items().unwrap(), b.items().unwrap()), (2, 2), "the live count follows every write");
        b.delete(CONFIG, "x", 4000).unwrap();
        sync(&b, &a, 5000);
        assert_eq!((a.items().unwrap(), b.items().unwrap()), (1, 1));
    }

    #[test]
    fn a_write_after_seeing_another_wins_despite_a_slow_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(dir.path(), "a"), store(dir.path(), "b"));
        a.put(CONFIG, "k", b"1".to_vec(), None, 10_000).unwrap(); // a's clock runs ahead
        sync(&a, &b, 10_000);
        b.put(CONFIG, "k", b"2".to_vec(), None, 5_000).unwrap(); // b has seen a's write
        sync(&b, &a, 10_000);
        assert_eq!(value(&a, "k").as_deref(), Some("2"));
    }

    #[test]
    fn deletes_do_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(dir.path(), "a"), store(dir.path(), "b"));
        a.put(CONFIG, "k", b"v".to_vec(), None, 1000).unwrap();
        sync(&a, &b, 1000);
        b.delete(CONFIG, "k", 2000).unwrap();
        sync(&a, &b, 3000); // a still has the value: it must not win
        sync(&b, &a, 3000);
        assert_eq!(value(&a, "k"), None);
        assert_eq!(value(&b, "k"), None);
        assert!(b.list(CONFIG, "").unwrap().is_empty());

        // After the tombstone is purged, the stale value is still refused (horizon).
        let stale = a.get(CONFIG, "k").unwrap().unwrap();
        assert!(stale.value.is_none());
        assert_eq!(b.purge_tombstones(5000).unwrap(), 1);
        let unrelated = Change { scope: CONFIG.into(), key: "never-seen".into(), value: Some(b"v".to_vec()), mode: None, hlc: Hlc { wall_ms: 900, counter: 0 }, origin: "a".into(), seq: 1 };
        let fresh = store(tempfile::tempdir().unwrap().path(), "c");
        fresh.purge_tombstones(5000).unwrap();
        assert_eq!(fresh.apply(&[unrelated], 6000).unwrap().written.len(), 1, "a node that purged nothing accepts old keys");
        let old = Change { scope: CONFIG.into(), key: "k".into(), value: Some(b"v".to_vec()), mode: None, hlc: Hlc { wall_ms: 1000, counter: 0 }, origin: "a".into(), seq: 1 };
        assert!(b.apply(&[old], 6000).unwrap().written.is_empty());
    }

    #[test]
    fn local_only_keys_are_never_sent_or_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(dir.path(), "a"), store(dir.path(), "b"));
        a.put(CONFIG, "ha.peer", b"a-setting".to_vec(), None, 1000).unwrap();
        b.put(CONFIG, "ha.peer", b"b-setting".to_vec(), None, 2000).unwrap();
        let (changes, next) = a.changes_since(0, 100, 1 << 20).unwrap();
        assert!(changes.is_empty(), "not sent");
        assert_eq!(next, 1, "but the watermark moves past it");
        let forced = Change { scope: CONFIG.into(), key: "ha.peer".into(), value: Some(b"x".to_vec()), mode: None, hlc: Hlc { wall_ms: 9000, counter: 0 }, origin: "a".into(), seq: 1 };
        assert!(b.apply(&[forced], 9000).unwrap().written.is_empty(), "not accepted");
        assert_eq!(value(&b, "ha.peer").as_deref(), Some("b-setting"));
    }

    #[test]
    fn a_bad_change_is_skipped_and_reported_and_the_rest_of_the_batch_applies() {
        let dir = tempfile::tempdir().unwrap();
        let b = store(dir.path(), "b");
        let good = Change { scope: CONFIG.into(), key: "ok".into(), value: Some(b"1".to_vec()), mode: None, hlc: Hlc { wall_ms: 1000, counter: 0 }, origin: "a".into(), seq: 1 };
        let cases = [
            (Change { key: "".into(), ..good.clone() }, "empty"),
            (Change { value: Some(vec![0; MAX_VALUE + 1]), ..good.clone() }, "over the scope's limit"),
            (Change { scope: "nowhere".into(), ..good.clone() }, "no scope \"nowhere\""),
            (Change { hlc: Hlc { wall_ms: 1000 + MAX_FUTURE_MS + 1_000_000, counter: 0 }, ..good.clone() }, "ahead of this node's clock"),
            (Change { hlc: Hlc { wall_ms: 1000, counter: u32::MAX }, ..good.clone() }, "absurd counter"),
        ];
        for (i, (bad, why)) in cases.into_iter().enumerate() {
            let after = Change { key: format!("after{i}"), ..good.clone() };
            let applied = b.apply(&[good.clone(), bad, after], 1000).unwrap();
            assert_eq!(applied.refused.len(), 1, "{why}");
            assert!(applied.refused[0].contains("change 1") && applied.refused[0].contains(why), "{:?}", applied.refused);
            assert_eq!(value(&b, &format!("after{i}")).as_deref(), Some("1"), "the change after the bad one applies");
        }
        assert!(b.clock().last().wall_ms <= 1000 + MAX_FUTURE_MS, "the refused stamps were not observed");
        assert!(matches!(b.apply(&vec![good; MAX_BATCH + 1], 1000), Err(StoreError::BatchTooLarge(_))));
    }

    #[test]
    fn changes_are_paged_by_count_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = store(dir.path(), "a");
        for i in 0..10 {
            a.put(CONFIG, &format!("k{i}"), vec![b'x'; 100], None, 1000 + i).unwrap();
        }
        let (page, next) = a.changes_since(0, 4, 1 << 20).unwrap();
        assert_eq!((page.len(), next), (4, 4));
        let (page, next) = a.changes_since(next, 100, 250).unwrap();
        assert_eq!((page.len(), next), (2, 6));
        let (page, _) = a.changes_since(0, 100, 1).unwrap();
        assert_eq!(page.len(), 1, "one change always fits");
    }

    #[test]
    fn the_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let a = store(dir.path(), "a");
            a.put(CONFIG, "k", b"v".to_vec(), None, 5000).unwrap();
            a.set_watermark("b", 42).unwrap();
        }
        let a = store(dir.path(), "a");
        assert_eq!(value(&a, "k").as_deref(), Some("v"));
        assert_eq!(a.watermark("b").unwrap(), 42);
        assert!(a.clock().last() >= Hlc { wall_ms: 5000, counter: 0 }, "the clock resumes after the newest entry");
        assert_eq!(a.latest_seq().unwrap(), 1);
        let incarnation = a.incarnation();
        drop(a);
        assert_eq!(store(dir.path(), "a").incarnation(), incarnation, "the incarnation is kept");
        std::fs::remove_file(dir.path().join("a.sqlite")).unwrap();
        assert_ne!(store(dir.path(), "a").incarnation(), incarnation, "a new store is a new incarnation");
    }

    #[test]
    fn acknowledged_writes_survive_power_loss() {
        let dir = tempfile::tempdir().unwrap();
        let a = store(dir.path(), "a");
        let conn = a.conn.lock().unwrap();
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous = FULL: the WAL is fsynced at every commit");
    }

    #[test]
    fn patterns() {
        let p = Patterns::new(["ha.*".into(), "net.*.addr".into(), "exact".into()]);
        assert!(p.matches("ha.peer") && p.matches("net.eth0.addr") && p.matches("exact"));
        assert!(!p.matches("hab") && !p.matches("net.eth0.mask") && !p.matches("exact2"));
    }
}
