//! Heartbeats: probing peers, watched nodes, the LAN and the VIP, and counting the results.
//!
//! Two halves. [`Prober`] does the I/O of one round: every probe of every target at once, each ended
//! by the heartbeat timeout, so a round never outlasts `timeout_ms` however many peers are slow.
//! [`Tracker`] is pure bookkeeping: it turns rounds into the consecutive failure and success counts,
//! reported modes, last-seen ages and clock skews that the plugin and `/status` see. Keeping the
//! counting free of I/O lets the simulation drive it with made-up rounds.
//!
//! Detection is deadline-based. Rounds go out every `interval_ms`; a round's probe waits at most
//! `timeout_ms`, except the one whose failure would bring a remote to `failures` in a row: that one
//! also ends at [`Tracker::deadlines`], `failures × interval_ms` after the remote's last good answer.
//! So a silent peer is counted failed that long after it last answered, the way a VRRP backup's
//! master-down timer runs, instead of after `failures` whole timeouts. With rounds every interval
//! the deadline falls about when the `failures`-th round goes out, so that probe still gets a short
//! grace (a tenth of the timeout) to be answered; so does one sent after this node itself stalled.

use crate::config::{NodeConfig, Probe, ProbeKind};
use crate::http_client::HttpClient;
use crate::model::{self, Check, Mode, Remote, Report, VipView};
use crate::peer::client::{Heartbeat, PeerClient};
use futures_util::future::join_all;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The result of one check (one or more probe attempts).
#[derive(Debug, Clone, Default)]
pub struct CheckResult {
    pub ok: bool,
    /// What the target said about itself, when the probe asks (vigil, role).
    pub report: Option<Report>,
    /// The signed heartbeat, for vigil probes.
    pub heartbeat: Option<Heartbeat>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long the attempt that answered took (`/metrics`: the heartbeat round trip).
    pub rtt: Option<Duration>,
    /// Not probed this round (a probe paced by `heartbeat.http_interval_ms` between its runs):
    /// counts for nothing.
    pub skipped: bool,
    /// A udp path: how many datagrams it has missed since its last one (0: on time), and when that
    /// one came (monotonic ms; `None`: never).
    pub udp: Option<(u32, Option<u64>)>,
}

impl CheckResult {
    /// The result of a probe that did not run this round.
    pub fn skipped() -> CheckResult {
        CheckResult { skipped: true, ..CheckResult::default() }
    }
}

/// One round for one remote: a result per path and per remote service.
#[derive(Debug, Clone, Default)]
pub struct RemoteRound {
    pub paths: Vec<CheckResult>,
    pub services: Vec<CheckResult>,
}

/// One heartbeat round.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub peers: Vec<RemoteRound>,
    pub watched: Vec<RemoteRound>,
    pub lan: Option<bool>,
    /// `Some(answering node)` when the VIP test is on (`Some(None)`: nobody answered).
    pub vip: Option<Option<String>>,
}

/// What to probe each round, resolved from the node configuration.
#[derive(Debug, Clone)]
pub struct Targets {
    pub peers: Vec<(String, Vec<Probe>, Vec<Probe>)>,
    pub watched: Vec<(String, Probe)>,
    pub lan: Option<Probe>,
    pub vip_url: Option<String>,
}

impl Targets {
    pub fn from_config(config: &NodeConfig) -> Targets {
        Targets {
            peers: (0..config.peers.len())
                .map(|i| (config.peers[i].id.clone(), config.peer_paths(i).unwrap_or_default(), config.peer_services(i)))
                .collect(),
            watched: (0..config.watched.len())
                .filter_map(|i| config.watch_probe(i).ok().map(|p| (config.watched[i].id.clone(), p)))
                .collect(),
            lan: config.lan_probe(),
            vip_url: config.vip.as_ref().filter(|v| v.test).map(|v| v.url.trim_end_matches('/').to_string()),
        }
    }
}

impl Round {
    /// This round's udp path results over a round of everything else (`slow`, or nothing probed).
    pub fn merge(udp: Round, slow: Option<Round>) -> Round {
        let Some(mut slow) = slow else { return udp };
        for (s, u) in slow.peers.iter_mut().zip(udp.peers) {
            for (s, u) in s.paths.iter_mut().zip(u.paths) {
                if u.udp.is_some() {
                    *s = u;
                }
            }
        }
        slow
    }
}

/// What [`Prober::round`] probes: everything, only the udp paths (a fast round between paced
/// ones), or everything but them (a paced round running beside the fast ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probes {
    All,
    UdpOnly,
    AllButUdp,
}

/// Runs probes.
#[derive(Debug, Clone)]
pub struct Prober {
    peer: PeerClient,
    http: HttpClient,
    timeout: Duration,
    /// The udp fast path's receiver, and the datagram interval and lateness allowed (ms).
    udp: Option<(std::sync::Arc<crate::udp::Board>, u64, u64)>,
}

impl Prober {
    pub fn new(peer: PeerClient, http: HttpClient, timeout: Duration) -> Prober {
        Prober { peer, http, timeout, udp: None }
    }

    /// Read udp paths from `board`, datagrams due every `interval_ms`, each `slack_ms` late at most.
    pub fn with_udp(mut self, board: std::sync::Arc<crate::udp::Board>, interval_ms: u64, slack_ms: u64) -> Prober {
        self.udp = Some((board, interval_ms, slack_ms));
        self
    }

    /// A udp path now (no I/O: what the receiver took).
    fn udp_check(&self, remote: &str, probe: &Probe, mono_ms: u64) -> CheckResult {
        let Some((board, interval, slack)) = &self.udp else {
            return CheckResult { ok: false, error: Some("no udp_listen: the udp path is not running".into()), udp: Some((0, None)), ..CheckResult::default() };
        };
        let heard = board.heard(remote, &probe.target);
        match heard.last_mono_ms {
            None => CheckResult { ok: false, error: Some(format!("{}: no udp heartbeat taken yet", probe.target)), udp: Some((0, None)), ..CheckResult::default() },
            Some(at) => {
                let missed = crate::udp::missed(mono_ms.saturating_sub(at), *interval, *slack);
                let error = (missed > 0).then(|| format!("{}: {missed} udp heartbeats missed", probe.target));
                CheckResult { ok: missed == 0, report: heard.report, error, udp: Some((missed, Some(at))), ..CheckResult::default() }
            }
        }
    }

    /// The signed client, for peer commands.
    pub fn peer_client(&self) -> &PeerClient {
        &self.peer
    }

    /// Probe everything once, concurrently. A remote's paths end at its deadline, if it has one
    /// (`deadlines` in monotonic ms of the clock that read `mono_ms`, now).
    pub async fn round(&self, targets: &Targets, deadlines: &Deadlines, mono_ms: u64, which: Probes) -> Round {
        if which == Probes::UdpOnly {
            return self.udp_round(targets, mono_ms);
        }
        let start = Instant::now();
        let cut = |at: Option<u64>| at.map(|at| start + Duration::from_millis(at.saturating_sub(mono_ms)));
        let peers = join_all(targets.peers.iter().enumerate().map(|(i, (id, paths, services))| async move {
            let until = cut(deadlines.peers.get(i).copied().flatten());
            let (paths, services) = tokio::join!(
                join_all(paths.iter().map(|p| async move {
                    match (p.kind, which) {
                        (ProbeKind::Udp, Probes::AllButUdp) => CheckResult::skipped(),
                        (ProbeKind::Udp, _) => self.udp_check(id, p, mono_ms),
                        _ => self.check_until(id, p, until).await,
                    }
                })),
                join_all(services.iter().map(|p| self.check(id, p)))
            );
            RemoteRound { paths, services }
        }));
        let watched = join_all(targets.watched.iter().enumerate().map(|(i, (id, probe))| async move {
            let until = cut(deadlines.watched.get(i).copied().flatten());
            RemoteRound { paths: vec![self.check_until(id, probe, until).await], services: Vec::new() }
        }));
        let lan = async {
            match &targets.lan {
                Some(p) => Some(self.check("lan", p).await.ok),
                None => None,
            }
        };
        let vip = async {
            match &targets.vip_url {
                Some(url) => Some(self.vip_answerer(url).await),
                None => None,
            }
        };
        let (peers, watched, lan, vip) = tokio::join!(peers, watched, lan, vip);
        Round { peers, watched, lan, vip }
    }

    /// The udp paths only; every other probe skipped.
    fn udp_round(&self, targets: &Targets, mono_ms: u64) -> Round {
        let skip = |n: usize| vec![CheckResult::skipped(); n];
        Round {
            peers: targets
                .peers
                .iter()
                .map(|(id, paths, services)| RemoteRound {
                    paths: paths.iter().map(|p| if p.kind == ProbeKind::Udp { self.udp_check(id, p, mono_ms) } else { CheckResult::skipped() }).collect(),
                    services: skip(services.len()),
                })
                .collect(),
            watched: targets.watched.iter().map(|_| RemoteRound { paths: skip(1), services: Vec::new() }).collect(),
            lan: None,
            vip: None,
        }
    }

    /// One check of remote `remote`: `count` attempts at once; it fails only if every attempt fails.
    /// A signed vigil heartbeat counts only when `remote` itself answers it.
    pub async fn check(&self, remote: &str, probe: &Probe) -> CheckResult {
        self.check_until(remote, probe, None).await
    }

    /// [`check`](Self::check), failed at `until` if no attempt has answered by then.
    async fn check_until(&self, remote: &str, probe: &Probe, until: Option<Instant>) -> CheckResult {
        let attempts = join_all((0..probe.count.max(1)).map(|_| self.attempt(remote, probe)));
        let attempts = match until {
            None => attempts.await,
            Some(at) => match tokio::time::timeout_at(at, attempts).await {
                Ok(attempts) => attempts,
                Err(_) => {
                    let error = format!("{}: no answer by the failure deadline (failures × interval after the last answer)", probe.target);
                    return CheckResult { ok: false, error: Some(error), ..CheckResult::default() };
                }
            },
        };
        let mut failed = CheckResult::default();
        for attempt in attempts {
            if attempt.ok {
                return attempt;
            }
            failed = attempt;
        }
        failed
    }

    /// One attempt, timed: an answer carries its round trip.
    async fn attempt(&self, remote: &str, probe: &Probe) -> CheckResult {
        let started = Instant::now();
        let mut result = self.attempt_untimed(remote, probe).await;
        if result.ok {
            result.rtt = Some(started.elapsed());
        }
        result
    }

    async fn attempt_untimed(&self, remote: &str, probe: &Probe) -> CheckResult {
        let fail = |error: String| CheckResult { ok: false, error: Some(error), ..CheckResult::default() };
        match probe.kind {
            // A signed refusal for our timestamp still proves the peer alive and says its mode: a
            // wrong clock makes a peer "reachable, skewed", never dead.
            ProbeKind::Vigil => match self.peer.heartbeat(remote, &probe.target, self.timeout).await {
                Ok(hb) => CheckResult { ok: true, report: Some(hb.answer.report()), heartbeat: Some(hb), ..CheckResult::default() },
                Err(e) => fail(e),
            },
            ProbeKind::Role => match self.http.get(&format!("{}/role", probe.target), self.timeout).await {
                Ok(a) if a.status == 200 => match Mode::from_role_word(&String::from_utf8_lossy(&a.body)) {
                    Some(mode) => CheckResult { ok: true, report: Some(Report { mode, ..Report::default() }), ..CheckResult::default() },
                    None => fail(format!("{}/role: not a role: {:?}", probe.target, String::from_utf8_lossy(&a.body))),
                },
                Ok(a) => fail(format!("{}/role: status {}", probe.target, a.status)),
                Err(e) => fail(e),
            },
            ProbeKind::Http => match self.http.get(&probe.target, self.timeout).await {
                Ok(a) if a.status == probe.expect_status => match &probe.expect_body {
                    Some(want) if !String::from_utf8_lossy(&a.body).contains(want.as_str()) => {
                        fail(format!("{}: answer lacks {want:?}", probe.target))
                    }
                    _ => CheckResult { ok: true, ..CheckResult::default() },
                },
                Ok(a) => fail(format!("{}: status {}, expected {}", probe.target, a.status, probe.expect_status)),
                Err(e) => fail(e),
            },
            ProbeKind::Tcp => match tokio::time::timeout(self.timeout, TcpStream::connect(&probe.target)).await {
                Ok(Ok(_)) => CheckResult { ok: true, ..CheckResult::default() },
                Ok(Err(e)) => fail(format!("{}: {e}", probe.target)),
                Err(_) => fail(format!("{}: no answer within {} ms", probe.target, self.timeout.as_millis())),
            },
            ProbeKind::Udp => fail(format!("{}: a udp path is read from the receiver, not probed", probe.target)),
            ProbeKind::Ping => {
                // A TCP "ping": a SYN to a port; an accept or a refusal both prove the host answered.
                let address = if probe.target.contains(':') { probe.target.clone() } else { format!("{}:7", probe.target) };
                match tokio::time::timeout(self.timeout, TcpStream::connect(&address)).await {
                    Ok(Ok(_)) => CheckResult { ok: true, ..CheckResult::default() },
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => CheckResult { ok: true, ..CheckResult::default() },
                    Ok(Err(e)) => fail(format!("{address}: {e}")),
                    Err(_) => fail(format!("{address}: no answer within {} ms", self.timeout.as_millis())),
                }
            }
        }
    }

    /// Which node answers on the VIP: public answers carry the node id in `x-vigil-node`.
    async fn vip_answerer(&self, url: &str) -> Option<String> {
        let answer = self.http.get(&format!("{url}/health"), self.timeout).await.ok()?;
        answer.headers.get("x-vigil-node").and_then(|v| v.to_str().ok()).map(str::to_string)
    }
}

/// Bookkeeping for one remote beyond what the plugin sees.
#[derive(Debug, Clone, Default)]
pub struct RemoteTrack {
    pub remote: Remote,
    pub last_seen_mono_ms: Option<u64>,
    pub clock_skew_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Why the peer refused our requests in its last answer (a clock outside its signature window):
    /// it is reachable, but acts on none of our commands or replication requests.
    pub refused: Option<String>,
    /// Each path's round trip in its latest round, in microseconds (`None`: it failed), in the order
    /// of `remote.paths` (the operator console shows them).
    pub path_rtt_us: Vec<Option<u64>>,
    /// The remote has udp paths: its reachability is theirs alone (see `udp`).
    pub by_udp: bool,
}

/// When each remote's probes of the next round end at the latest, in monotonic ms (see the module
/// docs); `None`: at the heartbeat timeout, as every other probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deadlines {
    pub peers: Vec<Option<u64>>,
    pub watched: Vec<Option<u64>>,
}

/// Consecutive counts and last reports, from rounds. Pure.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    pub peers: Vec<RemoteTrack>,
    pub watched: Vec<RemoteTrack>,
    pub lan: Option<Check>,
    pub vip: Option<VipView>,
    self_id: String,
}

impl Tracker {
    pub fn new(self_id: &str, targets: &Targets) -> Tracker {
        let track = |id: &str, paths: &[Probe], services: &[Probe]| RemoteTrack {
            remote: Remote {
                id: id.to_string(),
                paths: paths.iter().map(|p| Check { name: p.name.clone(), ..Check::default() }).collect(),
                services: services.iter().map(|p| Check { name: p.name.clone(), ..Check::default() }).collect(),
                ..Remote::default()
            },
            by_udp: paths.iter().any(|p| p.kind == ProbeKind::Udp),
            ..RemoteTrack::default()
        };
        Tracker {
            peers: targets.peers.iter().map(|(id, paths, services)| track(id, paths, services)).collect(),
            watched: targets.watched.iter().map(|(id, probe)| track(id, std::slice::from_ref(probe), &[])).collect(),
            lan: targets.lan.as_ref().map(|p| Check { name: if p.name.is_empty() { "lan".into() } else { p.name.clone() }, ..Check::default() }),
            vip: targets.vip_url.as_ref().map(|_| VipView::default()),
            self_id: self_id.to_string(),
        }
    }

    /// Count one round.
    pub fn record(&mut self, round: &Round, mono_ms: u64) {
        for (track, r) in self.peers.iter_mut().zip(&round.peers) {
            record_remote(track, r, mono_ms);
        }
        for (track, r) in self.watched.iter_mut().zip(&round.watched) {
            record_remote(track, r, mono_ms);
        }
        if let (Some(check), Some(ok)) = (self.lan.as_mut(), round.lan) {
            check.record(ok);
        }
        if let (Some(vip), Some(answerer)) = (self.vip.as_mut(), &round.vip) {
            if answerer.as_deref() == Some(self.self_id.as_str()) {
                vip.consecutive_self += 1;
                vip.consecutive_other = 0;
            } else {
                vip.consecutive_other += 1;
                vip.consecutive_self = 0;
            }
            vip.reaches = answerer.clone();
        }
    }

    /// The deadlines of the round about to start at `mono_ms`: for a remote whose failure in this
    /// round would be its `failures`-th (or later) in a row, `n × interval_ms` after its last good
    /// answer for the `n`-th failure, but never less than a tenth of the timeout from now (the probe's
    /// grace). Never for a remote not seen yet (the start-up grace covers those) nor before
    /// `failures - 1` whole probes have failed, so a single lost answer never shortens the next probe.
    pub fn deadlines(&self, mono_ms: u64, heartbeat: &model::Heartbeat) -> Deadlines {
        let grace = (u64::from(heartbeat.timeout_ms) / 10).max(1);
        let deadline = |t: &RemoteTrack| {
            if t.by_udp {
                return None; // its udp paths decide; its HTTP heartbeat keeps its whole timeout
            }
            let seen = t.last_seen_mono_ms?;
            let nth = t.remote.consecutive_failures.saturating_add(1);
            if nth < heartbeat.failures.max(1) {
                return None;
            }
            let at = seen.saturating_add(u64::from(nth).saturating_mul(u64::from(heartbeat.interval_ms)));
            Some(at.max(mono_ms.saturating_add(grace)))
        };
        Deadlines { peers: self.peers.iter().map(deadline).collect(), watched: self.watched.iter().map(deadline).collect() }
    }

    /// When the next udp-judged peer that is still reachable will have missed `failures`
    /// datagrams if none comes (monotonic ms): the loop runs a round then, so that detection is not
    /// late by up to an interval. `None`: no such peer.
    pub fn udp_deadline(&self, heartbeat: &model::Heartbeat, slack_ms: u64) -> Option<u64> {
        let span = u64::from(heartbeat.failures.max(1)) * u64::from(heartbeat.interval_ms);
        self.peers
            .iter()
            .filter(|t| t.by_udp && t.remote.consecutive_failures < heartbeat.failures.max(1))
            .filter_map(|t| t.last_seen_mono_ms)
            .map(|seen| seen + slack_ms + span)
            .min()
    }

    /// The peers as the plugin sees them now.
    pub fn peers(&self, mono_ms: u64) -> Vec<Remote> {
        self.peers.iter().map(|t| view(t, mono_ms)).collect()
    }

    /// The watched nodes as the plugin sees them now.
    pub fn watched(&self, mono_ms: u64) -> Vec<Remote> {
        self.watched.iter().map(|t| view(t, mono_ms)).collect()
    }
}

fn view(t: &RemoteTrack, mono_ms: u64) -> Remote {
    let mut r = t.remote.clone();
    r.last_seen_ago_ms = t.last_seen_mono_ms.map(|seen| mono_ms.saturating_sub(seen));
    r
}

/// Count one result: a udp path's failures are the datagrams it missed, so that a round run at its
/// deadline sees all of them (rounds need not line up with the sender's schedule).
fn record_check(check: &mut Check, result: &CheckResult) {
    match result.udp {
        _ if result.skipped => {}
        Some((missed, Some(_))) if missed > 0 => {
            check.ok = false;
            check.consecutive_successes = 0;
            check.consecutive_failures = check.consecutive_failures.max(missed);
        }
        _ => check.record(result.ok),
    }
}

fn record_remote(track: &mut RemoteTrack, round: &RemoteRound, mono_ms: u64) {
    track.path_rtt_us.resize(round.paths.len(), None);
    for (rtt, r) in track.path_rtt_us.iter_mut().zip(&round.paths).filter(|(_, r)| !r.skipped) {
        *rtt = r.rtt.filter(|_| r.ok).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    for (check, result) in track.remote.paths.iter_mut().zip(&round.paths) {
        record_check(check, result);
    }
    for (check, result) in track.remote.services.iter_mut().zip(&round.services) {
        record_check(check, result);
    }
    // The HTTP heartbeat of a udp-judged remote still brings its clock and refusals.
    for hb in round.paths.iter().filter(|r| r.ok).filter_map(|r| r.heartbeat.as_ref()) {
        track.clock_skew_ms = Some(hb.clock_skew_ms());
        track.refused = hb.refused.clone();
    }
    if track.by_udp {
        let udp: Vec<&CheckResult> = round.paths.iter().filter(|r| r.udp.is_some()).collect();
        match udp.iter().find(|r| r.ok) {
            Some(result) => {
                track.remote.record(true);
                track.last_seen_mono_ms = result.udp.and_then(|(_, at)| at).or(Some(mono_ms));
                track.last_error = None;
                track.remote.report = result.report.clone().or(track.remote.report.take());
            }
            None => {
                // As many failures as the best path missed datagrams (never less than one a round).
                let missed = udp.iter().filter_map(|r| r.udp.filter(|(_, at)| at.is_some()).map(|(m, _)| m)).min();
                track.remote.record(false);
                if let Some(missed) = missed {
                    track.remote.consecutive_failures = track.remote.consecutive_failures.max(missed);
                }
                if let Some(at) = udp.iter().filter_map(|r| r.udp.and_then(|(_, at)| at)).max() {
                    track.last_seen_mono_ms = Some(at);
                }
                track.last_error = udp.iter().find_map(|r| r.error.clone());
            }
        }
        return;
    }
    if round.paths.iter().all(|r| r.skipped) {
        return; // a fast round: nothing was asked of this remote
    }
    let answered = round.paths.iter().find(|r| r.ok);
    track.remote.record(answered.is_some());
    match answered {
        Some(result) => {
            track.last_seen_mono_ms = Some(mono_ms);
            track.last_error = None;
            if let Some(report) = &result.report {
                track.remote.report = Some(report.clone());
            }
        }
        None => track.last_error = round.paths.iter().find_map(|r| r.error.clone()),
    }
}

/// A prober for a node configuration, signing with `peer` (shared with replication, so that both
/// know each peer's current run).
pub fn prober_for(config: &NodeConfig, peer: PeerClient, http: HttpClient) -> Prober {
    Prober::new(peer, http, Duration::from_millis(u64::from(config.heartbeat.timeout_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        let probe = |name: &str| Probe {
            name: name.into(),
            kind: ProbeKind::Tcp,
            target: "127.0.0.1:1".into(),
            expect_status: 200,
            expect_body: None,
            count: 1,
        };
        Targets { peers: vec![("b".into(), vec![probe("lan"), probe("link2")], vec![])], watched: vec![], lan: Some(probe("gw")), vip_url: Some("http://vip".into()) }
    }

    fn result(ok: bool) -> CheckResult {
        CheckResult { ok, report: ok.then(|| Report { mode: Mode::Active, ..Report::default() }), ..CheckResult::default() }
    }

    #[test]
    fn a_peer_is_reachable_while_any_path_answers() {
        let mut t = Tracker::new("a", &targets());
        let round = |a: bool, b: bool| Round { peers: vec![RemoteRound { paths: vec![result(a), result(b)], services: vec![] }], ..Round::default() };
        t.record(&round(true, true), 0);
        let mut slow = round(false, true);
        slow.peers[0].paths[1].rtt = Some(Duration::from_micros(1_500));
        t.record(&slow, 100);
        assert_eq!(t.peers[0].path_rtt_us, vec![None, Some(1_500)], "each path's latest round trip, none for a failed one");
        let p = &t.peers(100)[0];
        assert!(p.reachable);
        assert_eq!(p.consecutive_successes, 2);
        assert_eq!(p.paths[0].consecutive_failures, 1);
        t.record(&round(false, false), 200);
        t.record(&round(false, false), 300);
        let p = &t.peers(350)[0];
        assert!(!p.reachable);
        assert_eq!(p.consecutive_failures, 2);
        assert_eq!(p.last_seen_ago_ms, Some(250));
        assert_eq!(p.report.as_ref().map(|r| r.mode), Some(Mode::Active), "the last report is kept");
    }

    #[test]
    fn vip_and_lan_are_counted() {
        let mut t = Tracker::new("a", &targets());
        t.record(&Round { lan: Some(false), vip: Some(Some("a".into())), ..Round::default() }, 0);
        t.record(&Round { lan: Some(false), vip: Some(Some("a".into())), ..Round::default() }, 0);
        assert_eq!(t.lan.as_ref().unwrap().consecutive_failures, 2);
        assert_eq!(t.vip.as_ref().unwrap().consecutive_self, 2);
        t.record(&Round { lan: Some(true), vip: Some(None), ..Round::default() }, 0);
        assert_eq!(t.vip.as_ref().unwrap().consecutive_other, 1);
        assert_eq!(t.vip.as_ref().unwrap().reaches, None);
    }

    #[tokio::test]
    async fn tcp_ping_counts_a_refusal_as_alive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener); // the port now refuses: the host is up
        let clock = crate::clock::SystemClock::new();
        let prober = Prober::new(PeerClient::new(HttpClient::new(), "a".into(), vec![], clock), HttpClient::new(), Duration::from_millis(200));
        let probe = Probe { name: "p".into(), kind: ProbeKind::Ping, target: format!("127.0.0.1:{port}"), expect_status: 200, expect_body: None, count: 2 };
        let alive = prober.check("b", &probe).await;
        assert!(alive.ok && alive.rtt.is_some(), "an answer has its round trip: {alive:?}");
        let tcp = Probe { kind: ProbeKind::Tcp, ..probe };
        let r = prober.check("b", &tcp).await;
        assert!(!r.ok && r.rtt.is_none() && r.error.unwrap().contains("refused"));
    }

    #[test]
    fn a_silent_peer_fails_failures_times_interval_after_its_last_answer() {
        let hb = model::Heartbeat { interval_ms: 100, timeout_ms: 100, failures: 3, successes: 3 };
        let mut t = Tracker::new("a", &targets());
        let round = |ok: bool| Round { peers: vec![RemoteRound { paths: vec![result(ok), result(ok)], services: vec![] }], ..Round::default() };
        assert_eq!(t.deadlines(0, &hb).peers, vec![None], "never seen: the start-up grace decides");
        t.record(&round(true), 5);
        assert_eq!(t.deadlines(100, &hb).peers, vec![None], "the first probe after an answer gets its whole timeout");
        t.record(&round(false), 200);
        assert_eq!(t.deadlines(200, &hb).peers, vec![None], "so does the second");
        t.record(&round(false), 280);
        assert_eq!(t.deadlines(290, &hb).peers, vec![Some(305)], "the third fails 3 × 100 ms after the last answer");
        assert_eq!(t.deadlines(303, &hb).peers, vec![Some(313)], "but has a tenth of the timeout to be answered");
        t.record(&round(false), 305);
        assert_eq!(t.deadlines(305, &hb).peers, vec![Some(405)], "and each later one an interval on");
        assert_eq!(t.deadlines(900, &hb).peers, vec![Some(910)], "a probe sent after this node stalled has its grace too");
        t.record(&round(true), 1000);
        assert_eq!(t.deadlines(1100, &hb).peers, vec![None], "an answer starts over");
    }

    #[test]
    fn a_udp_peer_fails_by_missed_datagrams_and_ignores_its_paced_http_path() {
        let hb = model::Heartbeat { interval_ms: 20, timeout_ms: 20, failures: 3, successes: 3 };
        let udp = Probe { name: "fast".into(), kind: ProbeKind::Udp, target: "127.0.0.1:7402".into(), expect_status: 200, expect_body: None, count: 1 };
        let http = Probe { name: "main".into(), kind: ProbeKind::Vigil, ..udp.clone() };
        let targets = Targets { peers: vec![("b".into(), vec![http, udp], vec![])], watched: vec![], lan: None, vip_url: None };
        let mut t = Tracker::new("a", &targets);
        let heard = |missed: u32, at: u64| CheckResult {
            ok: missed == 0,
            udp: Some((missed, Some(at))),
            report: Some(Report { mode: Mode::Active, ..Report::default() }),
            ..CheckResult::default()
        };
        let round = |http: CheckResult, udp: CheckResult| Round { peers: vec![RemoteRound { paths: vec![http, udp], services: vec![] }], ..Round::default() };
        t.record(&round(result(true), heard(0, 100)), 105);
        assert!(t.peers(105)[0].reachable);
        assert_eq!(t.udp_deadline(&hb, 10), Some(100 + 10 + 60), "the third datagram overdue");
        // The datagrams stop; the HTTP heartbeat (paced) still answers: the udp path alone decides.
        t.record(&round(CheckResult::skipped(), heard(1, 100)), 130);
        t.record(&round(result(true), heard(3, 100)), 170);
        let p = &t.peers(170)[0];
        assert!(!p.reachable);
        assert_eq!(p.consecutive_failures, 3, "three datagrams missed, though only two rounds ran");
        assert_eq!(p.paths[0].consecutive_successes, 2, "the HTTP path's own count");
        assert_eq!(p.paths[1].consecutive_failures, 3);
        assert_eq!(p.last_seen_ago_ms, Some(70));
        assert_eq!(t.udp_deadline(&hb, 10), None, "already failed");
        assert_eq!(t.deadlines(170, &hb).peers, vec![None], "its HTTP probe is never cut short");
        t.record(&round(CheckResult::skipped(), heard(0, 180)), 181);
        assert!(t.peers(181)[0].reachable);
    }

    #[test]
    fn a_round_with_nothing_probed_counts_nothing() {
        let mut t = Tracker::new("a", &targets());
        t.record(&Round { peers: vec![RemoteRound { paths: vec![result(true), result(true)], services: vec![] }], ..Round::default() }, 0);
        let skipped = Round { peers: vec![RemoteRound { paths: vec![CheckResult::skipped(), CheckResult::skipped()], services: vec![] }], ..Round::default() };
        t.record(&skipped, 50);
        let p = &t.peers(50)[0];
        assert_eq!((p.consecutive_successes, p.paths[0].consecutive_successes), (1, 1));
    }

    #[tokio::test]
    async fn a_probe_waiting_at_its_deadline_fails_then_not_at_its_timeout() {
        // A peer that accepts connections and never answers: a check waits out its timeout (10 s
        // here), unless the remote's deadline comes first.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}/", silent.local_addr().unwrap());
        let clock = crate::clock::SystemClock::new();
        let prober = Prober::new(PeerClient::new(HttpClient::new(), "a".into(), vec![], clock), HttpClient::new(), Duration::from_secs(10));
        let probe = Probe { name: "p".into(), kind: ProbeKind::Http, target, expect_status: 200, expect_body: None, count: 1 };
        let targets = Targets { peers: vec![("b".into(), vec![probe], vec![])], watched: vec![], lan: None, vip_url: None };
        let round = tokio::time::timeout(
            Duration::from_secs(5),
            prober.round(&targets, &Deadlines { peers: vec![Some(1_050)], watched: vec![] }, 1_000, Probes::All),
        )
        .await
        .expect("the round ends at the deadline, not at the 10 s timeout");
        let error = round.peers[0].paths[0].error.clone().unwrap();
        assert!(!round.peers[0].paths[0].ok && error.contains("failure deadline"), "{error}");
    }
}
