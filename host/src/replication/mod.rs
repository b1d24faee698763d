//! Configuration replication: timestamp-based last-writer-wins for keys and files, in SQLite.
//!
//! Owns the replicated store ([`store`]), replicated directories ([`files`]), hybrid logical clocks
//! ([`hlc`]), and the [`Replicator`] that moves changes between nodes over the signed peer protocol:
//!
//! - every heartbeat answer carries the peer's latest change sequence; when it is past what this node
//!   has pulled (its *watermark* for that peer), the next tick pulls the difference, in pages, each
//!   applied in one transaction;
//! - every `sync.interval_ms` it pulls from every peer anyway, as a safety net;
//! - `vigil sync` / `POST /admin/sync` forces a full exchange: pull everything, push everything;
//! - a node that starts and finds an active peer pulls from it first; until that completes the
//!   plugin sees `sync.initial = pending` (and `failed` when it fails), so no policy leaves standby on
//!   stale configuration;
//! - peer clock skew above `sync.max_clock_skew_ms` is reported: timestamps assume NTP.
//!
//! Never: decides a mode, or blocks the node loop (pulls and scans run on their own tasks).

pub mod files;
pub mod hlc;
pub mod store;

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::model::{InitialSync, Mode, SyncView};
use crate::peer::client::PeerClient;
use crate::peer::HeartbeatAnswer;
use files::DirSync;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Change, Patterns, Scopes, Store, StoreError};

/// The peer path of the change feed.
pub const CHANGES_PATH: &str = "/peer/changes";
/// Changes per page.
pub const PAGE_CHANGES: usize = 2_000;
/// Value bytes per page (about; one change always fits).
pub const PAGE_BYTES: usize = 4 << 20;
/// Deadline of one page request.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// One page of the change feed. Unknown fields are ignored, so a newer node's pages still apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    pub changes: Vec<Change>,
    /// Ask from here next time.
    pub next: u64,
    /// The sender's latest sequence: the feed is exhausted when `next >= latest`.
    pub latest: u64,
    /// The sender's store incarnation (0: unknown): see `Store::incarnation`.
    #[serde(default)]
    pub incarnation: u64,
}

/// A pushed batch (`POST /peer/changes`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub changes: Vec<Change>,
}

/// `/status.sync`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    pub initial: InitialSync,
    pub consecutive_failures: u32,
    pub last_ok_ms: Option<u64>,
    pub next_at_ms: u64,
    pub last_error: Option<String>,
    /// Live entries in the store (keys and files).
    pub items: u64,
    /// Per peer: how many of its changes this node has not pulled yet (from its last heartbeat).
    pub lag: HashMap<String, u64>,
    /// Files a scan left out, with why.
    pub skipped: Vec<String>,
    /// File changes in the store that could not be written to disk yet (retried after every scan;
    /// never read as deletes).
    pub pending_files: u64,
    /// The first of them, with why (`scope/path: error`).
    pub pending: Vec<String>,
    /// Changes from peers refused by the checks (unknown scope, too large, bad timestamp) and skipped
    /// since the start: the rest of their batch applied and replication went on.
    pub refused_changes: u64,
    /// The latest of them, with why.
    pub last_refused: Option<String>,
    /// Replicated directories whose scan is held, with why (`vigil sync --confirm-deletes` releases
    /// a hold once the directory is right).
    pub held: Vec<String>,
    /// Per peer: its pulls (a good pull from one peer hides no failing pull from another).
    pub peers: std::collections::BTreeMap<String, PeerSync>,
    /// How far this node's clock is ahead of its peers' median beyond `max_clock_skew_ms`: new
    /// versions are dated that much earlier than its clock says (0: in tolerance).
    pub clock_held_back_ms: u64,
    /// Entries found at start dated ahead of this node's clock (it ran with a fast clock): peers
    /// refuse those over ten minutes ahead. See the operator guide, "After a wrong clock".
    pub future_entries: Option<String>,
}

/// `/status.sync.peers.ID`: pulls from one peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerSync {
    /// Wall time of the last good pull.
    pub last_ok_ms: Option<u64>,
    pub consecutive_failures: u32,
    /// Why the last pull failed, while it keeps failing.
    pub last_error: Option<String>,
    /// Its changes this node refused and skipped (a timestamp too far ahead: its clock is fast),
    /// since the start, and the latest with why.
    pub refused_changes: u64,
    pub last_refused: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    status: SyncStatus,
    running: HashSet<String>,
    peer_seq: HashMap<String, u64>,
    skew_warned: HashSet<String>,
    /// Events for the event log, drained by the node loop.
    notes: Vec<String>,
    first_round_seen: bool,
    next_scan_ms: HashMap<String, u64>,
    /// `scope/path` of file changes whose last write failed (one note when it starts, one when it ends).
    failing: HashSet<String>,
    /// Directories whose hold was reported (one note per hold).
    held: HashMap<String, String>,
    /// Each peer's store incarnation as last pulled from (cache of the store's `incarnation:PEER`).
    incarnations: HashMap<String, Option<u64>>,
}

/// Pending files listed in `/status` (the count has them all).
const PENDING_SHOWN: usize = 20;

/// A peer to replicate with.
#[derive(Debug, Clone)]
struct PeerLink {
    id: String,
    /// Base URLs of its vigil heartbeat paths.
    urls: Vec<String>,
}

/// Moves changes between this node and its peers.
#[derive(Debug)]
pub struct Replicator {
    pub store: Arc<Store>,
    dirs: Arc<Vec<(DirSync, u64)>>,
    /// Held while a batch is applied and its files written, and while directories are scanned: a
    /// scan must not see a file the store already has but the disk not yet (it would record a
    /// delete), and two batches must not write the same file out of order.
    files: Arc<Mutex<()>>,
    peers: Vec<PeerLink>,
    client: PeerClient,
    clock: Arc<dyn Clock>,
    interval_ms: u64,
    max_skew_ms: u64,
    tombstone_ms: u64,
    state: Mutex<State>,
    /// `/metrics`: bytes and changes per peer, in and out.
    metrics: crate::metrics::SyncMetrics,
}

impl Replicator {
    /// Open the store under `data_dir` with the node's and the policy's local-only patterns.
    pub fn open(config: &NodeConfig, policy_local_only: &[String], client: PeerClient, clock: Arc<dyn Clock>) -> Result<Replicator, StoreError> {
        let s = &config.sync;
        let local_only = Patterns::new(s.local_only.iter().chain(policy_local_only).cloned());
        let mut scopes = Scopes::default();
        let mut dirs = Vec::new();
        for d in &s.directories {
            let max = (d.max_file_mib as usize) << 20;
            scopes.sizes.push((d.name.clone(), max));
            let limits = files::DeleteLimits { max_percent: d.max_delete_percent, max_files: d.max_delete_files };
            dirs.push((DirSync::new(&d.name, &d.path, d.include.clone(), d.exclude.clone(), max).with_limits(limits), d.interval_ms));
        }
        let store = Store::open(&config.node.data_dir.join("store.sqlite"), &config.node.id, local_only, scopes)?;
        let peers = config
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| PeerLink {
                id: p.id.clone(),
                urls: config
                    .peer_paths(i)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| p.kind == crate::config::ProbeKind::Vigil)
                    .map(|p| p.target)
                    .collect(),
            })
            .collect();
        let now = clock.wall_ms();
        let mut state = State { status: SyncStatus { next_at_ms: now + s.interval_ms, ..SyncStatus::default() }, ..State::default() };
        // A node restarted after running with a fast clock: its store holds versions from the
        // future. They no longer date new writes (see HlcClock), but the operator must know.
        if let (n @ 1.., Some(latest)) = store.dated_after(now + s.max_clock_skew_ms)? {
            let note = format!(
                "{n} stored entries are dated up to {} s ahead of this node's clock (it ran with a fast clock?): new writes follow the clock; peers refuse entries over {} s ahead, and until the clock catches up those win over later writes (see the operator guide, \"After a wrong clock\")",
                (latest - now) / 1000,
                hlc::MAX_FUTURE_MS / 1000
            );
            tracing::warn!(entries = n, ahead_s = (latest - now) / 1000, "stored versions ahead of the clock");
            state.status.future_entries = Some(note.clone());
            state.notes.push(note);
        }
        Ok(Replicator {
            store: Arc::new(store),
            dirs: Arc::new(dirs),
            files: Arc::new(Mutex::new(())),
            peers,
            client,
            clock,
            interval_ms: s.interval_ms,
            max_skew_ms: s.max_clock_skew_ms,
            tombstone_ms: s.tombstone_days * 24 * 3600 * 1000,
            state: Mutex::new(state),
            metrics: crate::metrics::SyncMetrics::default(),
        })
    }

    /// Count replicated bytes and changes into the node's registry.
    pub fn set_metrics(&mut self, metrics: crate::metrics::SyncMetrics) {
        self.metrics = metrics;
    }

    /// The node's replication counters (the HTTP server counts the pages it serves).
    pub fn metrics(&self) -> &crate::metrics::SyncMetrics {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("replication state lock")
    }

    /// The signed client it pulls and pushes with.
    pub fn peer_client(&self) -> &PeerClient {
        &self.client
    }

    /// What the plugin sees.
    pub fn view(&self) -> SyncView {
        let s = &self.lock().status;
        SyncView { initial: s.initial, consecutive_failures: s.consecutive_failures, last_ok_ms: s.last_ok_ms }
    }

    /// What `/status` shows.
    pub fn status(&self) -> SyncStatus {
        let mut status = self.lock().status.clone();
        status.items = self.store.items().unwrap_or(0);
        status.clock_held_back_ms = self.store.clock().held_back_ms();
        status
    }

    /// The latest local sequence, carried by heartbeat answers.
    pub fn latest_seq(&self) -> u64 {
        self.store.latest_seq().unwrap_or(0)
    }

    /// Events to record (clock skew, sync failures), oldest first.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().notes)
    }

    /// Peers' clocks measured in a heartbeat round (each one's minus this node's; refusals for
    /// skew included, they carry the peer's time too): new versions are held back to the peers'
    /// median when this node's clock runs ahead of it (see [`hlc::HlcClock`]).
    pub fn peer_clocks(&self, offsets_ms: &[i64]) {
        self.store.clock().set_peer_clock(offsets_ms, self.max_skew_ms);
    }

    /// After a heartbeat round: `answers[i]` is peer `i`'s answer, if it answered, with its skew.
    /// Starts the pulls that are due, each on a task of its own.
    pub fn after_round(self: &Arc<Self>, answers: &[(String, Option<(HeartbeatAnswer, i64)>)]) {
        let now = self.clock.wall_ms();
        let mut due: Vec<(String, bool)> = Vec::new();
        {
            let mut st = self.lock();
            // "First" is the first round in which some peer answered: a node whose links come up a
            // little after it starts must still sync from an active peer before leaving standby.
            let first = !st.first_round_seen && answers.iter().any(|(_, a)| a.is_some());
            if first {
                st.first_round_seen = true;
            }
            let periodic = now >= st.status.next_at_ms;
            if periodic {
                st.status.next_at_ms = now + self.interval_ms;
            }
            for (peer, answer) in answers {
                let Some((answer, skew)) = answer else { continue };
                self.watch_skew(&mut st, peer, *skew);
                st.peer_seq.insert(peer.clone(), answer.seq);
                let watermark = self.store.watermark(peer).unwrap_or(0);
                st.status.lag.insert(peer.clone(), answer.seq.saturating_sub(watermark));
                // A peer whose sequence went back, or whose store is another one, was reset or
                // restored: the pull finds out which and starts again from zero.
                let known = self.known_incarnation(&mut st, peer);
                let reset = answer.seq < watermark || (answer.incarnation != 0 && known.is_some_and(|k| k != answer.incarnation));
                if first && answer.mode == Mode::Active {
                    st.status.initial = InitialSync::Pending;
                    due.push((peer.clone(), true));
                } else if answer.seq > watermark || periodic || reset {
                    due.push((peer.clone(), st.status.initial == InitialSync::Pending || st.status.initial == InitialSync::Failed));
                }
            }
            // A first sync that failed is retried from whichever peer is active now.
            if st.status.initial == InitialSync::Failed {
                for (peer, answer) in answers {
                    if answer.as_ref().is_some_and(|(a, _)| a.mode == Mode::Active) && !due.iter().any(|(p, _)| p == peer) {
                        due.push((peer.clone(), true));
                    }
                }
            }
            due.retain(|(peer, _)| st.running.insert(peer.clone()));
        }
        for (peer, initial) in due {
            let me = self.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let result = me.pull(&peer, false).await;
                if let Ok(n) = &result {
                    if *n > 0 {
                        tracing::info!(%peer, changes = n, ms = started.elapsed().as_millis() as u64, "pulled changes");
                    }
                }
                me.finish(&peer, initial, result);
            });
        }
    }

    fn watch_skew(&self, st: &mut State, peer: &str, skew: i64) {
        let over = skew.unsigned_abs() > self.max_skew_ms;
        if over && st.skew_warned.insert(peer.to_string()) {
            let note = format!(
                "clock skew with {peer} is {skew} ms (over sync.max_clock_skew_ms = {}): replication orders writes by timestamp and assumes synchronized clocks (NTP)",
                self.max_skew_ms
            );
            tracing::warn!(%peer, skew_ms = skew, "clock skew over the threshold");
            st.notes.push(note);
        } else if !over && st.skew_warned.remove(peer) {
            st.notes.push(format!("clock skew with {peer} back to {skew} ms"));
        }
    }

    fn finish(&self, peer: &str, initial: bool, result: Result<usize, String>) {
        let now = self.clock.wall_ms();
        let mut st = self.lock();
        st.running.remove(peer);
        let of_peer = st.status.peers.entry(peer.to_string()).or_default();
        match &result {
            Ok(_) => {
                of_peer.last_ok_ms = Some(now);
                of_peer.consecutive_failures = 0;
                of_peer.last_error = None;
            }
            Err(error) => {
                of_peer.consecutive_failures += 1;
                of_peer.last_error = Some(error.clone());
            }
        }
        match result {
            Ok(n) => {
                st.status.consecutive_failures = 0;
                st.status.last_ok_ms = Some(now);
                st.status.last_error = None;
                if initial && matches!(st.status.initial, InitialSync::Pending | InitialSync::Failed) {
                    st.status.initial = InitialSync::Done;
                    st.notes.push(format!("initial sync from {peer} done ({n} changes)"));
                }
                let watermark = self.store.watermark(peer).unwrap_or(0);
                let seq = st.peer_seq.get(peer).copied().unwrap_or(0);
                st.status.lag.insert(peer.to_string(), seq.saturating_sub(watermark));
            }
            Err(error) => {
                st.status.consecutive_failures += 1;
                st.status.last_error = Some(error.clone());
                if initial {
                    st.status.initial = InitialSync::Failed;
                }
                let failures = st.status.consecutive_failures;
                st.notes.push(format!("sync from {peer} failed ({failures} in a row): {error}"));
                tracing::warn!(%peer, %error, "sync failed");
            }
        }
    }

    /// `peer`'s store incarnation as last pulled from, if known.
    fn known_incarnation(&self, st: &mut State, peer: &str) -> Option<u64> {
        *st.incarnations.entry(peer.to_string()).or_insert_with(|| self.store.meta_value(&format!("incarnation:{peer}")).ok().flatten())
    }

    /// Pull `peer`'s changes since the watermark (or since 0 when `full`), page by page. A page
    /// from another store incarnation than before, or whose sequence is behind the watermark, means
    /// the peer's store was reset or restored: the watermark goes back to zero and the pull starts
    /// again from there (last writer wins, so nothing is lost by applying a change twice).
    pub async fn pull(&self, peer: &str, full: bool) -> Result<usize, String> {
        let link = self.peers.iter().find(|p| p.id == peer).ok_or_else(|| format!("no peer {peer:?}"))?;
        let mut since = if full { 0 } else { self.store.watermark(peer).map_err(|e| e.to_string())? };
        let mut total = 0;
        let mut restarted = false;
        loop {
            let path = format!("{CHANGES_PATH}?since={since}&limit={PAGE_CHANGES}");
            let body = self.on_any_path(link, |url| {
                let path = path.clone();
                async move { self.client.get_signed(&link.id, &url, &path, PAGE_TIMEOUT).await }
            }).await?;
            if let Some(m) = self.metrics.peer(peer) {
                m.bytes_in.inc_by(body.len() as u64);
            }
            let page: Page = serde_json::from_slice(&body).map_err(|e| format!("{peer}: malformed change page: {e}"))?;
            let known = {
                let mut st = self.lock();
                self.known_incarnation(&mut st, peer)
            };
            let new_store = page.incarnation != 0 && known.is_some_and(|k| k != page.incarnation);
            if (new_store || page.latest < since) && !restarted {
                let why = if new_store { "its store is another one (new incarnation)".to_string() } else { format!("its change sequence went back from {since} to {}", page.latest) };
                tracing::warn!(%peer, reason = %why, "peer store reset or restored: pulling everything again");
                self.lock().notes.push(format!("{peer} was reset or restored ({why}): pulling everything from it again"));
                self.remember_incarnation(peer, page.incarnation)?;
                self.store.set_watermark(peer, 0).map_err(|e| e.to_string())?;
                (since, restarted) = (0, true);
                continue;
            }
            if page.incarnation != 0 && known != Some(page.incarnation) {
                self.remember_incarnation(peer, page.incarnation)?;
            }
            if page.next < since {
                return Err(format!("{peer}: change page goes backwards ({} < {since})", page.next));
            }
            total += self.apply(peer, page.changes).await?;
            since = page.next;
            self.store.set_watermark(peer, since).map_err(|e| e.to_string())?;
            if page.next >= page.latest {
                return Ok(total);
            }
        }
    }

    fn remember_incarnation(&self, peer: &str, incarnation: u64) -> Result<(), String> {
        if incarnation != 0 {
            self.store.set_meta_value(&format!("incarnation:{peer}"), incarnation).map_err(|e| e.to_string())?;
            self.lock().incarnations.insert(peer.to_string(), Some(incarnation));
        }
        Ok(())
    }

    async fn on_any_path<F, Fut>(&self, link: &PeerLink, f: F) -> Result<bytes::Bytes, String>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<bytes::Bytes, String>>,
    {
        let mut errors = Vec::new();
        for url in &link.urls {
            match f(url.clone()).await {
                Ok(b) => return Ok(b),
                Err(e) => errors.push(e),
            }
        }
        Err(if errors.is_empty() { format!("{}: no vigil heartbeat path", link.id) } else { errors.join("; ") })
    }

    /// Apply a batch (from a pull or a push) and write replicated files, off the async threads.
    pub async fn apply(&self, from: &str, changes: Vec<Change>) -> Result<usize, String> {
        let (store, dirs, files, clock) = (self.store.clone(), self.dirs.clone(), self.files.clone(), self.clock.clone());
        let (written, refused, outcomes) = tokio::task::spawn_blocking(move || {
            let _files = files.lock().expect("files lock");
            // Scan before apply: a local edit not scanned yet is versioned first, with its own time,
            // so that the batch is ordered against it by the usual rule instead of renamed over it.
            // (A held directory records nothing; the batch's files then wait as pending.)
            for (dir, _) in dirs.iter().filter(|(d, _)| changes.iter().any(|c| c.scope == d.name)) {
                if let Err(files::ScanError::Failed(e)) = dir.scan(&store, || clock.wall_ms()) {
                    tracing::warn!(directory = %dir.name, error = %e, "scan before applying a peer's changes failed");
                }
            }
            let applied = store.apply(&changes, clock.wall_ms()).map_err(|e| e.to_string())?;
            let outcomes = files::write_changes(&store, &dirs.iter().map(|(d, _)| d).collect::<Vec<_>>(), applied.written.iter().filter(|c| c.scope != store::CONFIG).cloned().collect());
            Ok::<_, String>((applied.written.len(), applied.refused, outcomes))
        })
        .await
        .map_err(|e| e.to_string())??;
        self.note_writes(outcomes);
        if let Some(m) = self.metrics.peer(from) {
            m.changes_in.inc_by(written as u64);
        }
        if !refused.is_empty() {
            let mut st = self.lock();
            st.status.refused_changes += refused.len() as u64;
            st.status.last_refused = refused.last().cloned();
            let of_peer = st.status.peers.entry(from.to_string()).or_default();
            of_peer.refused_changes += refused.len() as u64;
            of_peer.last_refused = refused.last().cloned();
            for r in refused {
                tracing::warn!(peer = %from, reason = %r, "change from a peer refused and skipped");
                st.notes.push(format!("change from {from} refused and skipped (the rest applied): {r}"));
            }
        }
        Ok(written)
    }

    /// Write the pending file changes again (after a scan, which may have found the directory back).
    fn retry_pending(&self) {
        let mut changes = Vec::new();
        for (dir, _) in self.dirs.iter() {
            for (key, _) in self.store.pending(&dir.name).unwrap_or_default() {
                match self.store.get(&dir.name, &key) {
                    Ok(Some(entry)) => changes.push(Change::from(entry)),
                    // Purged meanwhile: nothing to write.
                    Ok(None) => {
                        let _ = self.store.clear_pending(&dir.name, &key);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read a pending change"),
                }
            }
        }
        let outcomes = files::write_changes(&self.store, &self.dirs.iter().map(|(d, _)| d).collect::<Vec<_>>(), changes);
        self.note_writes(outcomes);
    }

    /// Report write failures (once per file until it is written) and refresh the pending list.
    fn note_writes(&self, outcomes: Vec<(String, Result<(), String>)>) {
        let mut pending = Vec::new();
        let mut count = 0;
        for (dir, _) in self.dirs.iter() {
            for (key, reason) in self.store.pending(&dir.name).unwrap_or_default() {
                count += 1;
                if pending.len() < PENDING_SHOWN {
                    pending.push(format!("{}/{key}: {}", dir.name, reason.unwrap_or_else(|| "not written yet".into())));
                }
            }
        }
        let mut st = self.lock();
        for (what, outcome) in outcomes {
            match outcome {
                Ok(()) => {
                    if st.failing.remove(&what) {
                        st.notes.push(format!("replicated file {what} written after earlier failures"));
                    }
                }
                Err(e) => {
                    if st.failing.insert(what.clone()) {
                        tracing::error!(file = %what, error = %e, "cannot write a replicated file; kept pending and retried");
                        st.notes.push(format!("cannot write replicated file {what} (kept pending, retried): {e}"));
                    }
                }
            }
        }
        st.status.pending_files = count;
        st.status.pending = pending;
    }

    /// Push every local change to `peer` (part of a full exchange).
    async fn push(&self, peer: &str) -> Result<usize, String> {
        let link = self.peers.iter().find(|p| p.id == peer).ok_or_else(|| format!("no peer {peer:?}"))?;
        let mut since = 0;
        let mut total = 0;
        loop {
            let (changes, next) = self.store.changes_since(since, PAGE_CHANGES, PAGE_BYTES).map_err(|e| e.to_string())?;
            if changes.is_empty() && next == since {
                return Ok(total);
            }
            total += changes.len();
            let count = changes.len() as u64;
            let body = bytes::Bytes::from(serde_json::to_vec(&Batch { changes }).expect("serializes"));
            self.on_any_path(link, |url| {
                let body = body.clone();
                async move { self.client.post_signed(&link.id, &url, CHANGES_PATH, body, PAGE_TIMEOUT).await }
            })
            .await?;
            if let Some(m) = self.metrics.peer(peer) {
                m.bytes_out.inc_by(body.len() as u64);
                m.changes_out.inc_by(count);
            }
            since = next;
        }
    }

    /// `vigil sync`: pull everything from and push everything to every peer.
    pub async fn full_exchange(&self) -> Result<String, String> {
        let mut report = Vec::new();
        for link in &self.peers {
            let pulled = self.pull(&link.id, true).await?;
            let pushed = self.push(&link.id).await?;
            report.push(format!("{}: {pulled} applied, {pushed} sent", link.id));
        }
        let now = self.clock.wall_ms();
        let mut st = self.lock();
        st.status.last_ok_ms = Some(now);
        st.status.consecutive_failures = 0;
        Ok(report.join("; "))
    }

    /// Scan the replicated directories that are due (or all when `force`), then retry the pending
    /// writes; purge old tombstones.
    pub fn scan_due(&self, force: bool) {
        let now = self.clock.wall_ms();
        let mut skipped = Vec::new();
        let mut scanned = false;
        let _files = self.files.lock().expect("files lock");
        for (dir, interval) in self.dirs.iter() {
            let due = {
                let mut st = self.lock();
                let next = st.next_scan_ms.entry(dir.name.clone()).or_insert(0);
                let due = force || now >= *next;
                if due {
                    *next = now + interval;
                }
                due
            };
            if !due {
                continue;
            }
            scanned = true;
            let result = dir.scan(&self.store, || self.clock.wall_ms());
            let mut st = self.lock();
            match result {
                Ok(report) => {
                    skipped.extend(report.skipped);
                    for t in report.removed_temp {
                        st.notes.push(format!("removed {t}, left by an interrupted write"));
                    }
                    if st.held.remove(&dir.name).is_some() {
                        tracing::info!(dir = %dir.name, "replicated directory scanned again");
                        st.notes.push(format!("replicated directory {} ({}) scanned again", dir.name, dir.root.display()));
                    }
                }
                Err(files::ScanError::Held(hold)) => {
                    let message = hold.to_string();
                    if st.held.get(&dir.name) != Some(&message) {
                        tracing::error!(dir = %dir.name, reason = %message, "replicated directory not scanned");
                        st.notes.push(format!("replicated directory {} not scanned: {message}", dir.name));
                        st.held.insert(dir.name.clone(), message);
                    }
                }
                Err(files::ScanError::Failed(e)) => skipped.push(e),
            }
        }
        if !self.dirs.is_empty() {
            let mut st = self.lock();
            st.status.skipped = skipped;
            st.status.held = st.held.values().cloned().collect();
            st.status.held.sort();
        }
        // At the scan's pace (a file event or the directory's interval), not every tick: a write
        // that fails for want of space is not attempted again ten times a second.
        if scanned {
            self.retry_pending();
        }
        if let Err(e) = self.store.purge_tombstones(now.saturating_sub(self.tombstone_ms)) {
            tracing::warn!(error = %e, "cannot purge old tombstones");
        }
    }

    /// `vigil sync --confirm-deletes`: the next scan of every directory proceeds despite a hold.
    pub fn confirm_deletes(&self) {
        for (dir, _) in self.dirs.iter() {
            dir.confirm_deletes();
        }
    }

    /// Create the roots of new replicated directories (the store holds no file of them), so they can
    /// be watched. A root that held files is never recreated: see `DirSync::scan`.
    pub fn create_new_roots(&self) {
        for (dir, _) in self.dirs.iter() {
            if let Err(e) = dir.create_if_new(&self.store) {
                tracing::warn!(dir = %dir.name, error = %e, "cannot create a replicated directory");
            }
        }
    }

    /// A file event saw `path` go away at wall time `at_ms` (see [`DirSync::note_gone`]).
    pub fn note_gone(&self, path: &Path, at_ms: u64) {
        for (dir, _) in self.dirs.iter().filter(|(d, _)| path.starts_with(&d.root)) {
            dir.note_gone(path, at_ms);
        }
    }

    /// The replicated directories' roots (for file-event watching).
    pub fn directory_roots(&self) -> Vec<&Path> {
        self.dirs.iter().map(|(d, _)| d.root.as_path()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::http_client::HttpClient;

    fn replicator(dir: &Path) -> Arc<Replicator> {
        std::fs::write(dir.join("k"), "a-shared-key-0123456789").unwrap();
        std::fs::write(
            dir.join("node.toml"),
            "[node]\nid = \"a\"\ndata_dir = \"data\"\n[[peer]]\nid = \"b\"\nurl = \"http://127.0.0.1:1\"\n[security]\npeer_keys = [\"k\"]\n[sync]\nmax_clock_skew_ms = 1000\n",
        )
        .unwrap();
        let config = NodeConfig::read(&dir.join("node.toml")).unwrap();
        std::fs::create_dir_all(&config.node.data_dir).unwrap();
        let clock = ManualClock::new(1_800_000_000_000);
        let client = PeerClient::new(HttpClient::new(), "a".into(), vec![b"a-shared-key-0123456789".to_vec()], clock.clone());
        Arc::new(Replicator::open(&config, &[], client, clock).unwrap())
    }

    fn answer(mode: Mode, seq: u64) -> HeartbeatAnswer {
        HeartbeatAnswer { id: "b".into(), mode, configured_role: crate::model::Role::Secondary, app_healthy: true, mode_since_ms: 0, now_ms: 0, seq, boot: String::new(), incarnation: 7 }
    }

    #[tokio::test]
    async fn clock_skew_over_the_threshold_is_reported_once_and_its_end_too() {
        let dir = tempfile::tempdir().unwrap();
        let r = replicator(dir.path());
        r.after_round(&[("b".into(), Some((answer(Mode::Standby, 0), 5_000)))]);
        r.after_round(&[("b".into(), Some((answer(Mode::Standby, 0), 4_000)))]);
        let notes = r.take_notes();
        assert_eq!(notes.iter().filter(|n| n.contains("clock skew with b is 5000 ms")).count(), 1, "{notes:?}");
        assert!(notes.iter().all(|n| !n.contains("4000")), "reported once per crossing: {notes:?}");
        r.after_round(&[("b".into(), Some((answer(Mode::Standby, 0), 20)))]);
        assert!(r.take_notes().iter().any(|n| n.contains("back to 20 ms")));
    }

    #[tokio::test]
    async fn an_active_peer_that_answers_late_still_gates_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let r = replicator(dir.path());
        r.after_round(&[("b".into(), None)]);
        r.after_round(&[("b".into(), None)]);
        assert_eq!(r.view().initial, InitialSync::NotNeeded);
        r.after_round(&[("b".into(), Some((answer(Mode::Active, 3), 0)))]);
        assert_eq!(r.view().initial, InitialSync::Pending);
    }

    #[tokio::test]
    async fn an_active_peer_at_start_makes_the_initial_sync_pending_then_failed() {
        let dir = tempfile::tempdir().unwrap();
        let r = replicator(dir.path());
        assert_eq!(r.view().initial, InitialSync::NotNeeded);
        r.after_round(&[("b".into(), Some((answer(Mode::Active, 3), 0)))]);
        assert_eq!(r.view().initial, InitialSync::Pending, "no leaving standby on stale configuration");
        // The peer's address refuses connections: the pull fails and says so.
        for _ in 0..100 {
            if r.view().initial == InitialSync::Failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(r.view().initial, InitialSync::Failed);
        assert_eq!(r.view().consecutive_failures, 1);
        assert!(r.status().last_error.unwrap().contains("127.0.0.1:1"));
        let b = &r.status().peers["b"];
        assert_eq!(b.consecutive_failures, 1);
        assert!(b.last_error.as_deref().unwrap_or("").contains("127.0.0.1:1"));
    }

    #[tokio::test]
    async fn a_good_pull_from_one_peer_hides_no_failing_pull_from_another() {
        let dir = tempfile::tempdir().unwrap();
        let r = replicator(dir.path());
        r.finish("b", false, Err("b: answer refused: timestamp 891000 ms away".into()));
        r.finish("c", false, Ok(3));
        let peers = r.status().peers;
        assert_eq!((peers["b"].consecutive_failures, peers["c"].consecutive_failures), (1, 0));
        assert!(peers["b"].last_error.as_deref().unwrap().contains("891000 ms"), "b's failure stays visible");
        assert!(peers["c"].last_ok_ms.is_some() && peers["b"].last_ok_ms.is_none());
    }

    /// Scan before apply (the file-replication issue's edit race): a local edit the periodic scan has
    /// not seen yet is versioned, with its own time, before a peer's older change is applied, and wins.
    #[tokio::test]
    async fn a_local_edit_not_scanned_yet_is_not_overwritten_by_an_older_change() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(dir.path().join("k"), "a-shared-key-0123456789").unwrap();
        std::fs::write(
            dir.path().join("node.toml"),
            format!(
                "[node]\nid = \"a\"\ndata_dir = \"data\"\n[[peer]]\nid = \"b\"\nurl = \"http://127.0.0.1:1\"\n[security]\npeer_keys = [\"k\"]\n\
                 [[sync.directory]]\nname = \"shared\"\npath = \"{}\"\n",
                shared.display()
            ),
        )
        .unwrap();
        let config = NodeConfig::read(&dir.path().join("node.toml")).unwrap();
        std::fs::create_dir_all(&config.node.data_dir).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let clock = ManualClock::new(now);
        let client = PeerClient::new(HttpClient::new(), "a".into(), vec![b"a-shared-key-0123456789".to_vec()], clock.clone());
        let r = Replicator::open(&config, &[], client, clock).unwrap();
        r.scan_due(true);

        // a edits f now; b's change to f was made 5 s earlier and arrives before a's next scan.
        std::fs::write(shared.join("f"), "a's later edit").unwrap();
        let older = Change {
            scope: "shared".into(),
            key: "f".into(),
            value: Some(b"b's earlier edit".to_vec()),
            mode: Some(0o644),
            hlc: hlc::Hlc { wall_ms: now - 5_000, counter: 0 },
            origin: "b".into(),
            seq: 1,
        };
        r.apply("b", vec![older]).await.unwrap();
        assert_eq!(std::fs::read_to_string(shared.join("f")).unwrap(), "a's later edit", "the later local edit stays");
        let stored = r.store.get("shared", "f").unwrap().unwrap();
        assert_eq!((stored.value.as_deref(), stored.origin.as_str()), (Some(&b"a's later edit"[..]), "a"), "and is versioned, to reach b");
    }
}
