//! Replicated directories: files follow the store's rules (HLC versions, last writer wins, deletes as
//! tombstones), with the store's scope named after the directory and the relative path as key.
//!
//! A scan compares the directory with the store and records local changes; files changed since the
//! previous scan are found by size and modification time, so a rescan of an unchanged tree reads
//! only metadata. A changed file is versioned by its modification time (an HLC never goes back, so
//! at worst just after the latest version this node has seen): the file written last wins, whichever
//! node happened to scan first. A change from a peer is written atomically (a temporary file in the same
//! directory, then a rename) with its permissions. Temporary files are never replicated.

use super::store::{Change, Patterns, Store};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

const TMP_PREFIX: &str = ".vigil-tmp-";

/// One replicated directory.
#[derive(Debug)]
pub struct DirSync {
    /// The store scope (the directory's name in the configuration).
    pub name: String,
    pub root: PathBuf,
    include: Patterns,
    exclude: Patterns,
    /// Largest file replicated, in bytes.
    pub max_file: usize,
    /// `(size, mtime)` of each file at the previous scan.
    seen: Mutex<HashMap<String, (u64, SystemTime)>>,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub written: Vec<Change>,
    /// Files left out, with why (over the size limit, unreadable).
    pub skipped: Vec<String>,
}

impl DirSync {
    pub fn new(name: &str, root: &Path, include: Vec<String>, exclude: Vec<String>, max_file: usize) -> DirSync {
        let include = if include.is_empty() { vec!["*".to_string()] } else { include };
        DirSync {
            name: name.to_string(),
            root: root.to_path_buf(),
            include: Patterns::new(include),
            exclude: Patterns::new(exclude),
            max_file,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn wanted(&self, rel: &str) -> bool {
        let file_name = rel.rsplit('/').next().unwrap_or(rel);
        !file_name.starts_with(TMP_PREFIX) && self.include.matches(rel) && !self.exclude.matches(rel)
    }

    /// Record local changes: new and modified files become writes, vanished files deletes.
    pub fn scan(&self, store: &Store, wall_ms: u64) -> Result<ScanReport, String> {
        std::fs::create_dir_all(&self.root).map_err(|e| format!("{}: {e}", self.root.display()))?;
        let mut files = Vec::new();
        walk(&self.root, &self.root, &mut files).map_err(|e| format!("{}: {e}", self.root.display()))?;
        let mut report = ScanReport::default();
        let mut seen = self.seen.lock().expect("seen lock");
        let mut present = HashMap::new();
        for (rel, meta) in files {
            if !self.wanted(&rel) {
                continue;
            }
            let stamp = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            present.insert(rel.clone(), stamp);
            if seen.get(&rel) == Some(&stamp) {
                continue;
            }
            if meta.len() as usize > self.max_file {
                report.skipped.push(format!(
                    "{}: {} bytes, over the per-file limit of {} bytes (sync.directory.max_file_mib)",
                    self.root.join(&rel).display(),
                    meta.len(),
                    self.max_file
                ));
                continue;
            }
            let content = match std::fs::read(self.root.join(&rel)) {
                Ok(c) => c,
                Err(e) => {
                    report.skipped.push(format!("{}: {e}", self.root.join(&rel).display()));
                    continue;
                }
            };
            let mode = meta.permissions().mode() & 0o7777;
            let stored = store.get(&self.name, &rel).map_err(|e| e.to_string())?;
            let same = stored.as_ref().is_some_and(|e| e.value.as_deref() == Some(&content[..]) && e.mode == Some(mode));
            if !same {
                // The version is the file's modification time (never later than now), so between two
                // nodes the file written last wins, not the one scanned last.
                let modified = stamp.1.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(wall_ms);
                let version = modified.min(wall_ms);
                report.written.push(store.put(&self.name, &rel, content, Some(mode), version).map_err(|e| e.to_string())?);
            }
        }
        for entry in store.list(&self.name, "").map_err(|e| e.to_string())? {
            if !present.contains_key(&entry.key) && self.wanted(&entry.key) {
                if let Some(change) = store.delete(&self.name, &entry.key, wall_ms).map_err(|e| e.to_string())? {
                    report.written.push(change);
                }
            }
        }
        *seen = present;
        Ok(report)
    }

    /// Write a change from a peer to disk. Names this node excludes are left alone; permissions are
    /// limited to read/write/execute bits (no setuid, setgid or sticky bit from a peer); a path that
    /// would go through a symbolic link is refused.
    pub fn write_out(&self, change: &Change) -> Result<(), String> {
        if !self.wanted(&change.key) {
            return Ok(());
        }
        let path = self.root.join(&change.key);
        let shown = path.display().to_string();
        let mut below = self.root.clone();
        for part in Path::new(&change.key).parent().into_iter().flat_map(|p| p.components()) {
            below.push(part);
            if std::fs::symlink_metadata(&below).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(format!("{shown}: refused, {} is a symbolic link", below.display()));
            }
        }
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!("{shown}: refused, it is a symbolic link"));
        }
        match &change.value {
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{shown}: {e}")),
            },
            Some(content) => {
                let dir = path.parent().ok_or_else(|| format!("{shown}: no parent directory"))?;
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let tmp = dir.join(format!("{TMP_PREFIX}{file_name}"));
                std::fs::write(&tmp, content).map_err(|e| format!("{}: {e}", tmp.display()))?;
                if let Some(mode) = change.mode {
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777)).map_err(|e| format!("{}: {e}", tmp.display()))?;
                }
                std::fs::rename(&tmp, &path).map_err(|e| format!("{shown}: {e}"))?;
            }
        }
        // What we just wrote is not a local change: remember it as seen.
        let mut seen = self.seen.lock().expect("seen lock");
        match std::fs::metadata(&path) {
            Ok(meta) => {
                seen.insert(change.key.clone(), (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
            Err(_) => {
                seen.remove(&change.key);
            }
        }
        Ok(())
    }
}

/// Regular files below `dir`, as paths relative to `root` with `/` separators.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, std::fs::Metadata)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let path = entry.path();
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).expect("below root").to_string_lossy().replace('\\', "/");
            out.push((rel, meta));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::store::Scopes;

    fn setup(dir: &Path, node: &str) -> (Store, DirSync) {
        let scopes = Scopes { sizes: vec![("config".into(), 1 << 20), ("mail".into(), 1024)] };
        let store = Store::open(&dir.join(format!("{node}.sqlite")), node, Patterns::default(), scopes).unwrap();
        let sync = DirSync::new("mail", &dir.join(node).join("mail"), vec![], vec!["*.lock".into()], 1024);
        (store, sync)
    }

    fn exchange(from: (&Store, &DirSync), to: (&Store, &DirSync), now: u64) {
        let since = to.0.watermark(from.0.node()).unwrap();
        let (changes, next) = from.0.changes_since(since, 1000, 1 << 20).unwrap();
        for c in to.0.apply(&changes, now).unwrap().written {
            to.1.write_out(&c).unwrap();
        }
        to.0.set_watermark(from.0.node(), next).unwrap();
    }

    #[test]
    fn files_replicate_with_permissions_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let (sa, da) = setup(dir.path(), "a");
        let (sb, db) = setup(dir.path(), "b");
        std::fs::create_dir_all(da.root.join("sub")).unwrap();
        std::fs::write(da.root.join("sub/one.txt"), "hello").unwrap();
        std::fs::set_permissions(da.root.join("sub/one.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(da.root.join("skip.lock"), "x").unwrap();
        std::fs::write(da.root.join("big.bin"), vec![0u8; 2048]).unwrap();
        let report = da.scan(&sa, 1000).unwrap();
        assert_eq!(report.written.len(), 1);
        assert!(report.skipped[0].contains("big.bin") && report.skipped[0].contains("over the per-file limit"), "{:?}", report.skipped);
        assert!(da.scan(&sa, 1001).unwrap().written.is_empty(), "an unchanged tree records nothing");

        db.scan(&sb, 1000).unwrap();
        exchange((&sa, &da), (&sb, &db), 2000);
        let copy = db.root.join("sub/one.txt");
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), "hello");
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(!db.root.join("skip.lock").exists());
        assert!(db.scan(&sb, 2001).unwrap().written.is_empty(), "a written copy is not a local change");

        std::fs::remove_file(da.root.join("sub/one.txt")).unwrap();
        assert_eq!(da.scan(&sa, 3000).unwrap().written.len(), 1);
        exchange((&sa, &da), (&sb, &db), 3000);
        assert!(!copy.exists(), "the delete replicated");
    }

    #[test]
    fn a_peer_cannot_set_special_bits_follow_links_or_write_excluded_names() {
        let dir = tempfile::tempdir().unwrap();
        let (_, d) = setup(dir.path(), "b");
        std::fs::create_dir_all(&d.root).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, d.root.join("link")).unwrap();
        let change = |key: &str, mode: u32| Change {
            scope: "mail".into(),
            key: key.into(),
            value: Some(b"x".to_vec()),
            mode: Some(mode),
            hlc: crate::replication::hlc::Hlc { wall_ms: 1, counter: 0 },
            origin: "a".into(),
            seq: 1,
        };
        d.write_out(&change("f", 0o4777)).unwrap();
        assert_eq!(std::fs::metadata(d.root.join("f")).unwrap().permissions().mode() & 0o7777, 0o777);
        assert!(d.write_out(&change("link/evil", 0o644)).unwrap_err().contains("symbolic link"));
        assert!(!outside.join("evil").exists());
        d.write_out(&change("x.lock", 0o644)).unwrap();
        assert!(!d.root.join("x.lock").exists(), "excluded here: not written");
    }

    #[test]
    fn the_later_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (sa, da) = setup(dir.path(), "a");
        let (sb, db) = setup(dir.path(), "b");
        std::fs::create_dir_all(&da.root).unwrap();
        std::fs::create_dir_all(&db.root).unwrap();
        std::fs::write(da.root.join("f"), "a-version").unwrap();
        da.scan(&sa, 1000).unwrap();
        std::fs::write(db.root.join("f"), "b-version").unwrap();
        db.scan(&sb, 2000).unwrap();
        exchange((&sa, &da), (&sb, &db), 3000);
        exchange((&sb, &db), (&sa, &da), 3000);
        for d in [&da, &db] {
            assert_eq!(std::fs::read_to_string(d.root.join("f")).unwrap(), "b-version");
        }
    }
}
