//! The ring on disk: segment files of length-prefixed, checksummed frames, each frame one record.
//!
//! A segment (`NNNNNNNNNN.rec`, numbered in the order written) starts with [`MAGIC`] and holds one raw
//! deflate stream cut into frames: `[length u32 LE][crc32 u32 LE][deflate bytes]`, each frame ending on
//! a sync flush, so that it decompresses to exactly one record given the frames before it in its
//! segment (records share the compression window: a steady node's ticks cost a few bytes each). A
//! record is JSON: `{"f": RECORD}` (a full record, the first of a segment) or `{"d": OPS}` (the changes
//! from the previous record: `[PATH, VALUE]` sets, `[PATH]` removes, PATH a list of object keys and
//! array indexes), so consecutive ticks that differ only in time are stored as two numbers.
//!
//! Bounded: a segment is closed at an eighth of the cap, and whole segments go, oldest first, when the
//! ring holds more than the cap. Crash-safe: a torn or corrupt frame ends its segment for the reader
//! (the records before it stay readable), and a write that failed closes the segment for the writer
//! (the next record starts a new one).
//!
//! Never: blocks the node loop (only the recorder's writer thread calls this), or reads a segment it
//! did not write with [`MAGIC`].

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"VIGILRC1";
/// Segments per ring: the cap is enforced a segment at a time.
const SEGMENTS: u64 = 8;
/// A frame longer than this is corrupt (a record is a few KiB).
const MAX_FRAME: usize = 16 << 20;

/// The segments of `dir`, oldest first, with their sizes.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf, u64)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_suffix(".rec")).and_then(|n| n.parse::<u64>().ok()) else { continue };
        found.push((number, entry.path(), entry.metadata().map(|m| m.len()).unwrap_or(0)));
    }
    found.sort_by_key(|(n, _, _)| *n);
    Ok(found)
}

/// Appends records to the ring in `dir`, keeping it under its cap.
pub struct RingWriter {
    dir: PathBuf,
    max_bytes: u64,
    /// Oldest first; the last one is being written when `file` is open.
    segments: VecDeque<(u64, u64)>,
    file: Option<File>,
    compress: Compress,
    previous: Option<Value>,
    total: u64,
}

impl RingWriter {
    /// A writer for the ring in `dir` (created on the first record), holding at most `max_bytes`. It
    /// continues an existing ring in a new segment.
    pub fn open(dir: &Path, max_bytes: u64) -> RingWriter {
        let existing = segments(dir).unwrap_or_default();
        let total = existing.iter().map(|(_, _, size)| size).sum();
        RingWriter {
            dir: dir.to_path_buf(),
            max_bytes,
            segments: existing.into_iter().map(|(n, _, size)| (n, size)).collect(),
            file: None,
            compress: Compress::new(Compression::fast(), false),
            previous: None,
            total,
        }
    }

    /// The ring's size on disk.
    pub fn size(&self) -> u64 {
        self.total
    }

    fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:010}.rec"))
    }

    /// Append one record; returns the bytes written. After an error the current segment is closed:
    /// the next record starts a new one.
    pub fn append(&mut self, record: &Value) -> io::Result<u64> {
        let result = self.try_append(record);
        if result.is_err() {
            self.file = None;
        }
        result
    }

    fn try_append(&mut self, record: &Value) -> io::Result<u64> {
        let cap = (self.max_bytes / SEGMENTS).max(1);
        if self.file.is_none() || self.segments.back().is_some_and(|(_, size)| *size >= cap) {
            self.start_segment()?;
        }
        let payload = match &self.previous {
            Some(previous) => {
                let mut ops = Vec::new();
                diff(previous, record, &mut Vec::new(), &mut ops);
                serde_json::json!({ "d": ops })
            }
            None => serde_json::json!({ "f": record }),
        };
        let bytes = serde_json::to_vec(&payload).map_err(io::Error::other)?;
        let chunk = deflate(&mut self.compress, &bytes)?;
        let mut frame = Vec::with_capacity(chunk.len() + 8);
        frame.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&chunk).to_le_bytes());
        frame.extend_from_slice(&chunk);
        // One write per frame: a crash tears at most this one.
        self.file.as_mut().expect("segment open").write_all(&frame)?;
        self.previous = Some(record.clone());
        let n = frame.len() as u64;
        if let Some((_, size)) = self.segments.back_mut() {
            *size += n;
        }
        self.total += n;
        self.trim();
        Ok(n)
    }

    fn start_segment(&mut self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let number = self.segments.back().map_or(1, |(n, _)| n + 1);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(self.path(number))?;
        file.write_all(MAGIC)?;
        self.segments.push_back((number, MAGIC.len() as u64));
        self.total += MAGIC.len() as u64;
        self.file = Some(file);
        self.compress.reset();
        self.previous = None;
        Ok(())
    }

    /// Drop whole segments, oldest first, while the ring is over its cap (never the one being written).
    fn trim(&mut self) {
        while self.total > self.max_bytes && self.segments.len() > 1 {
            let (number, size) = self.segments.pop_front().expect("more than one");
            match std::fs::remove_file(self.path(number)) {
                Ok(()) => self.total -= size,
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.total -= size,
                Err(e) => {
                    tracing::warn!(file = %self.path(number).display(), error = %e, "flight recorder: cannot remove an old segment");
                    self.segments.push_front((number, size));
                    return;
                }
            }
        }
    }
}

/// What reading a ring found besides the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    pub segments: usize,
    pub records: u64,
    /// Segments whose tail was torn or corrupt (the records before the damage were read).
    pub torn: usize,
    /// Files skipped: not a segment of this format, or unreadable.
    pub skipped: Vec<String>,
}

/// Read every record of the ring in `dir`, oldest first, handing each to `visit` (which returns
/// `false` to stop).
pub fn read(dir: &Path, mut visit: impl FnMut(Value) -> bool) -> io::Result<ReadReport> {
    let mut report = ReadReport::default();
    if !dir.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{}: no flight recorder directory", dir.display())));
    }
    for (_, path, _) in segments(dir)? {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // Removed by the writer between the listing and the read: it was the oldest.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                report.skipped.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        if !bytes.starts_with(MAGIC) {
            report.skipped.push(format!("{}: not a flight recorder segment", path.display()));
            continue;
        }
        report.segments += 1;
        let mut decompress = Decompress::new(false);
        let mut previous: Option<Value> = None;
        let mut at = MAGIC.len();
        while at < bytes.len() {
            let Some(record) = next_frame(&bytes, &mut at, &mut decompress, previous.as_ref()) else {
                report.torn += 1;
                break;
            };
            previous = Some(record.clone());
            report.records += 1;
            if !visit(record) {
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// The record of the frame at `at` (advanced past it), or `None` when the frame is torn or corrupt.
fn next_frame(bytes: &[u8], at: &mut usize, decompress: &mut Decompress, previous: Option<&Value>) -> Option<Value> {
    let header = bytes.get(*at..*at + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_FRAME {
        return None;
    }
    let chunk = bytes.get(*at + 8..*at + 8 + len)?;
    if crc32fast::hash(chunk) != crc {
        return None;
    }
    *at += 8 + len;
    let text = inflate(decompress, chunk).ok()?;
    let mut payload: Value = serde_json::from_slice(&text).ok()?;
    if let Some(full) = payload.get_mut("f") {
        return Some(full.take());
    }
    let ops = payload.get("d")?.as_array()?;
    let mut record = previous?.clone();
    for op in ops {
        patch(&mut record, op)?;
    }
    Some(record)
}

fn deflate(compress: &mut Compress, input: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let start = compress.total_in();
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let consumed = (compress.total_in() - start) as usize;
        compress.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync).map_err(io::Error::other)?;
        // The flush is complete when all input is in and the output did not fill up.
        if (compress.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

fn inflate(decompress: &mut Decompress, input: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 4 + 256);
    let start = decompress.total_in();
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let (before_in, before_out) = (decompress.total_in(), out.len());
        let consumed = (before_in - start) as usize;
        decompress.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync).map_err(io::Error::other)?;
        if (decompress.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        if decompress.total_in() == before_in && out.len() == before_out {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "deflate stream stalled"));
        }
    }
}

/// The operations that turn `old` into `new` (see the module doc), appended to `ops`.
pub fn diff(old: &Value, new: &Value, path: &mut Vec<Value>, ops: &mut Vec<Value>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, vb) in b {
                path.push(Value::String(key.clone()));
                match a.get(key) {
                    Some(va) if va == vb => {}
                    Some(va) => diff(va, vb, path, ops),
                    None => ops.push(Value::Array(vec![Value::Array(path.clone()), vb.clone()])),
                }
                path.pop();
            }
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                path.push(Value::String(key.clone()));
                ops.push(Value::Array(vec![Value::Array(path.clone())]));
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                if va != vb {
                    path.push(Value::from(i));
                    diff(va, vb, path, ops);
                    path.pop();
                }
            }
        }
        (a, b) if a != b => ops.push(Value::Array(vec![Value::Array(path.clone()), b.clone()])),
        _ => {}
    }
}

/// Apply one operation of [`diff`]; `None` when it does not fit the record.
pub fn patch(record: &mut Value, op: &Value) -> Option<()> {
    let op = op.as_array()?;
    let path = op.first()?.as_array()?;
    let Some((last, parents)) = path.split_last() else {
        *record = op.get(1)?.clone();
        return Some(());
    };
    let mut target = record;
    for step in parents {
        target = match step {
            Value::String(key) => target.get_mut(key.as_str())?,
            Value::Number(i) => target.get_mut(usize::try_from(i.as_u64()?).ok()?)?,
            _ => return None,
        };
    }
    match (last, op.get(1)) {
        (Value::String(key), Some(value)) => {
            target.as_object_mut()?.insert(key.clone(), value.clone());
        }
        (Value::String(key), None) => {
            target.as_object_mut()?.remove(key);
        }
        (Value::Number(i), Some(value)) => *target.get_mut(usize::try_from(i.as_u64()?).ok()?)? = value.clone(),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(n: u64) -> Value {
        json!({ "tick": { "now_ms": 1_000 * n, "node": { "tick_count": n, "mode": "standby" }, "peers": [{ "id": "a", "ok": n % 7 != 0 }] }, "reason": format!("tick {n} of a steady pair with enough text to fill a frame") })
    }

    fn read_all(dir: &Path) -> (Vec<Value>, ReadReport) {
        let mut out = Vec::new();
        let report = read(dir, |v| {
            out.push(v);
            true
        })
        .unwrap();
        (out, report)
    }

    #[test]
    fn diffs_round_trip() {
        let cases = [
            (json!({"a": 1, "b": [1, 2], "c": {"x": null}}), json!({"a": 2, "b": [1, 3], "c": {}, "d": "new"})),
            (json!({"l": [1]}), json!({"l": [1, 2]})),
            (json!([1]), json!({"now": 1})),
        ];
        for (old, new) in cases {
            let mut ops = Vec::new();
            diff(&old, &new, &mut Vec::new(), &mut ops);
            let mut patched = old.clone();
            for op in &ops {
                patch(&mut patched, op).unwrap();
            }
            assert_eq!(patched, new, "{ops:?}");
        }
        let mut ops = Vec::new();
        diff(&record(1), &record(2), &mut Vec::new(), &mut ops);
        assert_eq!(ops.len(), 3, "time, tick count and reason: {ops:?}");
    }

    #[test]
    fn records_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RingWriter::open(dir.path(), 1 << 20);
        for n in 0..50 {
            w.append(&record(n)).unwrap();
        }
        drop(w);
        let mut w = RingWriter::open(dir.path(), 1 << 20);
        for n in 50..60 {
            w.append(&record(n)).unwrap();
        }
        let (records, report) = read_all(dir.path());
        assert_eq!(records, (0..60).map(record).collect::<Vec<_>>());
        assert_eq!((report.segments, report.torn), (2, 0));
        assert!(w.size() < 60 * 60, "compressed and delta-coded: {} bytes for 60 records", w.size());
    }

    #[test]
    fn the_ring_wraps_around_dropping_the_oldest_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 8 * 1024;
        let mut w = RingWriter::open(dir.path(), cap);
        for n in 0..5_000 {
            w.append(&record(n)).unwrap();
            assert!(w.size() <= cap + 512, "{} bytes over a cap of {cap}", w.size());
        }
        let on_disk: u64 = segments(dir.path()).unwrap().iter().map(|(_, _, s)| s).sum();
        assert_eq!(on_disk, w.size());
        let (records, report) = read_all(dir.path());
        assert_eq!(report.torn, 0);
        assert!(records.len() > 100 && records.len() < 5_000, "{} records kept", records.len());
        let first = records[0]["tick"]["node"]["tick_count"].as_u64().unwrap();
        assert_eq!(records, (first..5_000).map(record).collect::<Vec<_>>(), "the newest records, contiguous");
    }

    #[test]
    fn a_torn_tail_is_skipped_and_the_writer_goes_on_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RingWriter::open(dir.path(), 1 << 20);
        for n in 0..10 {
            w.append(&record(n)).unwrap();
        }
        drop(w);
        let (_, path, size) = segments(dir.path()).unwrap().pop().unwrap();
        // A crash in the middle of the last frame.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(size - 3).unwrap();
        let (records, report) = read_all(dir.path());
        assert_eq!(records, (0..9).map(record).collect::<Vec<_>>());
        assert_eq!(report.torn, 1);
        // A flipped byte in a frame ends its segment there too.
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (records, _) = read_all(dir.path());
        assert!(records.len() < 9 && records == (0..records.len() as u64).map(record).collect::<Vec<_>>());
        let mut w = RingWriter::open(dir.path(), 1 << 20);
        w.append(&record(100)).unwrap();
        let (records, _) = read_all(dir.path());
        assert_eq!(records.last(), Some(&record(100)), "a restarted writer appends after the damage");
    }

    #[test]
    fn foreign_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0000000001.rec"), b"not a ring").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        let mut w = RingWriter::open(dir.path(), 1 << 20);
        w.append(&record(1)).unwrap();
        let (records, report) = read_all(dir.path());
        assert_eq!((records.len(), report.skipped.len()), (1, 1), "{report:?}");
    }
}
