//! `vigil record`: a window of a node's flight recorder, as a scenario file or raw records.

use super::client::{self, Target};
use super::CliError;
use crate::recorder::export::{self, Window};
use std::path::{Path, PathBuf};

/// The flags of `vigil record`.
#[derive(Debug)]
pub struct RecordArgs {
    pub target: Target,
    pub data_dir: Option<PathBuf>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub around: Option<u64>,
    pub ticks: usize,
    pub records: bool,
    pub output: Option<PathBuf>,
}

/// A time flag: RFC 3339 or ms since the Unix epoch.
fn parse_time(flag: &str, text: &str) -> Result<u64, CliError> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis().max(0) as u64)
        .map_err(|e| CliError::Config(anyhow::anyhow!("{flag} {text:?}: expected RFC 3339 (2026-12-07T06:00:00Z) or ms since the Unix epoch ({e})")))
}

/// The records of the window, from the data directory or the node's admin API.
fn fetch(args: &RecordArgs) -> Result<Vec<crate::recorder::Record>, CliError> {
    let since_ms = args.since.as_deref().map(|t| parse_time("--since", t)).transpose()?;
    let until_ms = args.until.as_deref().map(|t| parse_time("--until", t)).transpose()?;
    match &args.data_dir {
        Some(data_dir) => {
            let around = match args.around {
                Some(id) => Some((event_time(data_dir, id)?, args.ticks)),
                None => None,
            };
            let window = Window { since_ms, until_ms, around };
            let (records, report) = export::select(&crate::recorder::dir_of(data_dir), &window).map_err(|e| CliError::Failure(anyhow::anyhow!(e)))?;
            if report.torn > 0 {
                eprintln!("note: {} segment(s) end in a torn or damaged frame (a crash while writing): the records before it are read", report.torn);
            }
            for skipped in &report.skipped {
                eprintln!("note: skipped {skipped}");
            }
            Ok(records)
        }
        None => {
            let window = Window { since_ms, until_ms, around: None };
            let mut query = window.query();
            if let Some(id) = args.around {
                query = format!("{query}{}around={id}&ticks={}", if query.is_empty() { "" } else { "&" }, args.ticks);
            }
            let text = super::runtime()?.block_on(client::recording(&args.target, &query))?;
            export::from_lines("the node's answer", &text).map_err(|e| CliError::Failure(anyhow::anyhow!(e)))
        }
    }
}

/// The time of event `id` in the event log of `data_dir`.
fn event_time(data_dir: &Path, id: u64) -> Result<u64, CliError> {
    let path = data_dir.join("events.sqlite");
    if !path.is_file() {
        return Err(CliError::Config(anyhow::anyhow!("{}: no event log (is {} a node's data directory?)", path.display(), data_dir.display())));
    }
    let log = crate::events::EventLog::open(&path, usize::MAX).map_err(|e| CliError::Failure(e.into()))?;
    let found = log.since(id.saturating_sub(1), 1).map_err(|e| CliError::Failure(e.into()))?;
    found
        .into_iter()
        .find(|e| e.id == id)
        .map(|e| e.at_ms)
        .ok_or_else(|| CliError::Config(anyhow::anyhow!("--around {id}: no such event in {}", path.display())))
}

pub fn run(args: &RecordArgs) -> Result<(), CliError> {
    let records = fetch(args)?;
    if records.is_empty() {
        return Err(CliError::Failure(anyhow::anyhow!("no recorded tick in the window")));
    }
    let text = if args.records {
        export::to_lines(&records)
    } else {
        export::to_scenario(&records).map_err(|e| CliError::Failure(anyhow::anyhow!(e)))?
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| CliError::Failure(anyhow::anyhow!("{}: cannot write: {e}", path.display())))?;
            eprintln!("{} tick(s) of node {} written to {}", records.len(), records[0].node, path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
