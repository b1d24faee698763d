//! Heartbeats: probing peers, watched nodes, the LAN and the VIP, and counting the results.
//!
//! Two halves. [`Prober`] does the I/O of one round: every probe of every target at once, each ended
//! by the heartbeat timeout, so a round never outlasts `timeout_ms` however many peers are slow.
//! [`Tracker`] is pure bookkeeping: it turns rounds into the consecutive failure and success counts,
//! reported modes, last-seen ages and clock skews that the plugin and `/status` see. Keeping the
//! counting free of I/O lets the simulation drive it with made-up rounds.

use crate::config::{NodeConfig, Probe, ProbeKind};
use crate::http_client::HttpClient;
use crate::model::{Check, Mode, Remote, Report, VipView};
use crate::peer::client::{Heartbeat, PeerClient};
use futures_util::future::join_all;
use std::time::Duration;
use tokio::net::TcpStream;

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

/// Runs probes.
#[derive(Debug, Clone)]
pub struct Prober {
    peer: PeerClient,
    http: HttpClient,
    timeout: Duration,
}

impl Prober {
    pub fn new(peer: PeerClient, http: HttpClient, timeout: Duration) -> Prober {
        Prober { peer, http, timeout }
    }

    /// The signed client, for peer commands.
    pub fn peer_client(&self) -> &PeerClient {
        &self.peer
    }

    /// Probe everything once, concurrently.
    pub async fn round(&self, targets: &Targets) -> Round {
        let peers = join_all(targets.peers.iter().map(|(id, paths, services)| async move {
            let (paths, services) =
                tokio::join!(join_all(paths.iter().map(|p| self.check(id, p))), join_all(services.iter().map(|p| self.check(id, p))));
            RemoteRound { paths, services }
        }));
        let watched = join_all(targets.watched.iter().map(|(id, probe)| async move {
            RemoteRound { paths: vec![self.check(id, probe).await], services: Vec::new() }
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

    /// One check of remote `remote`: `count` attempts at once; it fails only if every attempt fails.
    /// A signed vigil heartbeat counts only when `remote` itself answers it.
    pub async fn check(&self, remote: &str, probe: &Probe) -> CheckResult {
        let attempts = join_all((0..probe.count.max(1)).map(|_| self.attempt(remote, probe))).await;
        let mut failed = CheckResult::default();
        for attempt in attempts {
            if attempt.ok {
                return attempt;
            }
            failed = attempt;
        }
        failed
    }

    async fn attempt(&self, remote: &str, probe: &Probe) -> CheckResult {
        let fail = |error: String| CheckResult { ok: false, error: Some(error), ..CheckResult::default() };
        match probe.kind {
            // A signed refusal for our timestamp still proves the peer alive and says its mode: a
            // wrong clock makes a peer "reachable, skewed", never dead.
            ProbeKind::Vigil => match self.peer.heartbeat(remote, &probe.target, self.timeout).await {
                Ok(hb) => CheckResult { ok: true, report: Some(hb.answer.report()), heartbeat: Some(hb), error: None },
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

fn record_remote(track: &mut RemoteTrack, round: &RemoteRound, mono_ms: u64) {
    for (check, result) in track.remote.paths.iter_mut().zip(&round.paths) {
        check.record(result.ok);
    }
    for (check, result) in track.remote.services.iter_mut().zip(&round.services) {
        check.record(result.ok);
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
            if let Some(hb) = &result.heartbeat {
                track.clock_skew_ms = Some(hb.clock_skew_ms());
                track.refused = hb.refused.clone();
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
        t.record(&round(false, true), 100);
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
        assert!(prober.check("b", &probe).await.ok);
        let tcp = Probe { kind: ProbeKind::Tcp, ..probe };
        let r = prober.check("b", &tcp).await;
        assert!(!r.ok && r.error.unwrap().contains("refused"));
    }
}
