//! The UDP fast path: signed one-way heartbeats for BFD-class failure detection.
//!
//! With `kind = "udp"` paths (`[[peer]].paths`) and `heartbeat.udp_listen`, every node sends each
//! peer one datagram per `heartbeat.interval_ms` on each of those paths, and receives theirs on its
//! own socket. Nobody answers: a path is alive while datagrams keep arriving, so detection is not
//! held up by a round trip, and 20 ms intervals cost a few microseconds of CPU per datagram. The
//! signed HTTP heartbeat (the peer's `url`) still runs, at `heartbeat.http_interval_ms`: it carries
//! the clock, the replication watermarks and the commands; with UDP paths, a peer's reachability is
//! judged on its UDP paths alone (one per link, as BFD runs one session per link).
//!
//! A datagram (all integers big-endian):
//!
//! ```text
//! "VGU1" | len FROM | len TO | len BOOT | SEQ u64 | WALL_MS u64 | len MODE | len ROLE | APP u8 |
//! MODE_SINCE_MS u64 | HMAC-SHA256(key, "vigil-udp-v1\n" ‖ everything before it)
//! ```
//!
//! where `len X` is one length byte and the bytes of X. The receiver refuses a datagram whose MAC
//! matches none of its peer keys, addressed to another node, from a node that is not a peer with a
//! UDP path, or that is not newer than the last one it took from the sender's run (BOOT, SEQ): a
//! captured datagram played back, late or reordered, never counts. A datagram of a run it has not
//! seen yet counts when the signed HTTP heartbeat has already named that run, or when its WALL_MS is
//! within the signature window of this node's clock; one of an older run is refused.
//!
//! Codec and acceptance are pure ([`encode`], [`decode`], [`Board::accept`]); [`FastPath`] owns the
//! socket, a sending thread of its own (a busy runtime never delays a heartbeat) and a receiving task
//! on the node loop's runtime, which the loop also drains before it judges the udp paths: a
//! datagram that has arrived counts, however late the receiver got to it.

use crate::clock::Clock;
use crate::model::{Mode, Report, Role};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"VGU1";
const DOMAIN: &[u8] = b"vigil-udp-v1\n";
const MAC_LEN: usize = 32;
/// Larger than any datagram we send (ids and boots are short): reads of more are refused.
pub const MAX_DATAGRAM: usize = 1024;
/// The most datagrams one [`FastPath::drain`] reads.
const DRAIN_MAX: usize = 256;

/// What one datagram says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from: String,
    pub to: String,
    /// The sender's run (its `boot`, as its HTTP heartbeat answers name it).
    pub boot: String,
    /// Per run, one more for every datagram sent.
    pub seq: u64,
    pub wall_ms: u64,
    pub report: Report,
}

/// Why a datagram was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("malformed datagram: {0}")]
    Malformed(&'static str),
    #[error("bad signature (no peer key matches)")]
    Signature,
    #[error("addressed to {0:?}, not this node")]
    NotForMe(String),
    #[error("from {0:?}, which is not a peer with a udp path")]
    Stranger(String),
    #[error("from {peer:?} at {from_ip}, which is none of its udp paths' addresses")]
    UnknownPath { peer: String, from_ip: IpAddr },
    #[error("from {peer:?}: sequence {seq} not after {last} (replayed, late or reordered)")]
    Replay { peer: String, seq: u64, last: u64 },
    #[error("from {peer:?}: a run not seen yet, with a timestamp {skew_ms} ms away from this node's clock")]
    Stale { peer: String, skew_ms: i64 },
}

fn put(out: &mut Vec<u8>, text: &str) -> Result<(), String> {
    let len = u8::try_from(text.len()).map_err(|_| format!("{text:?}: longer than 255 bytes"))?;
    out.push(len);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// The signed bytes of `d`, with `key`.
pub fn encode(d: &Datagram, key: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(MAGIC);
    put(&mut out, &d.from)?;
    put(&mut out, &d.to)?;
    put(&mut out, &d.boot)?;
    out.extend_from_slice(&d.seq.to_be_bytes());
    out.extend_from_slice(&d.wall_ms.to_be_bytes());
    put(&mut out, d.report.mode.as_str())?;
    put(&mut out, d.report.configured_role.map_or("", Role::as_str))?;
    out.push(match d.report.app_healthy {
        None => 2,
        Some(true) => 1,
        Some(false) => 0,
    });
    out.extend_from_slice(&d.report.mode_since_ms.unwrap_or(0).to_be_bytes());
    let mac = mac(key, &out);
    out.extend_from_slice(&mac);
    Ok(out)
}

/// `body` with its MAC appended: what [`encode`] sends, for any bytes (the parser behind the
/// signature can be fed hostile bodies that pass it).
pub fn seal(body: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(&mac(key, body));
    out
}

fn mac(key: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(DOMAIN);
    m.update(body);
    m.finalize().into_bytes().into()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Refused> {
        if self.0.len() < n {
            return Err(Refused::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn text(&mut self, what: &'static str) -> Result<&'a str, Refused> {
        let len = self.take(1, what)?[0] as usize;
        std::str::from_utf8(self.take(len, what)?).map_err(|_| Refused::Malformed(what))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, Refused> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
}

/// Check the MAC of `bytes` with any of `keys`, then parse it.
pub fn decode(bytes: &[u8], keys: &[Vec<u8>]) -> Result<Datagram, Refused> {
    if bytes.len() < MAGIC.len() + MAC_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Refused::Malformed("not a vigil udp heartbeat"));
    }
    let (body, tag) = bytes.split_at(bytes.len() - MAC_LEN);
    let authentic = keys.iter().any(|key| {
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        m.update(DOMAIN);
        m.update(body);
        m.verify_slice(tag).is_ok()
    });
    if !authentic {
        return Err(Refused::Signature);
    }
    let mut r = Reader(&body[MAGIC.len()..]);
    let from = r.text("from")?.to_string();
    let to = r.text("to")?.to_string();
    let boot = r.text("boot")?.to_string();
    let seq = r.u64("seq")?;
    let wall_ms = r.u64("wall_ms")?;
    let mode: Mode = r.text("mode")?.parse().map_err(|_| Refused::Malformed("mode"))?;
    let role = match r.text("role")? {
        "" => None,
        word => Some(word.parse::<Role>().map_err(|_| Refused::Malformed("role"))?),
    };
    let app_healthy = match r.take(1, "app")?[0] {
        0 => Some(false),
        1 => Some(true),
        2 => None,
        _ => return Err(Refused::Malformed("app")),
    };
    let mode_since_ms = r.u64("mode_since_ms")?;
    if !r.0.is_empty() {
        return Err(Refused::Malformed("trailing bytes"));
    }
    let report = Report { mode, configured_role: role, app_healthy, mode_since_ms: Some(mode_since_ms) };
    Ok(Datagram { from, to, boot, seq, wall_ms, report })
}

/// What the receiver last took on one UDP path.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    /// Monotonic ms of the last datagram taken on this path.
    pub last_mono_ms: Option<u64>,
    pub report: Option<Report>,
}

#[derive(Debug, Default)]
struct PeerSlot {
    /// The UDP paths' addresses, in the order of the peer's paths.
    paths: Vec<(String, SocketAddr)>,
    heard: Vec<Heard>,
    /// The sender run taken last and its highest sequence.
    run: Option<(String, u64)>,
}

/// The receiver's bookkeeping: who was heard when, on which path. Shared between the receiving
/// thread and the heartbeat rounds.
#[derive(Debug)]
pub struct Board {
    me: String,
    window_ms: u64,
    peers: Mutex<HashMap<String, PeerSlot>>,
    taken: AtomicU64,
    refused: AtomicU64,
    last_refusal: Mutex<Option<String>>,
}

/// Counts for `/status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BoardCounts {
    pub taken: u64,
    pub refused: u64,
    pub last_refusal: Option<String>,
}

impl Board {
    /// `paths`: each peer's UDP paths (name, address), in their configured order.
    pub fn new(me: &str, window_ms: u64, paths: &[(String, Vec<(String, SocketAddr)>)]) -> Board {
        let peers = paths
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(id, p)| (id.clone(), PeerSlot { heard: vec![Heard::default(); p.len()], paths: p.clone(), run: None }))
            .collect();
        Board {
            me: me.to_string(),
            window_ms,
            peers: Mutex::new(peers),
            taken: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
        }
    }

    /// Take one datagram received from `source` at `mono_ms` (`wall_ms` on this node's clock), if it
    /// is authentic, for this node, from a peer's UDP path and newer than the sender's last one.
    /// `known_boot`: the sender's run as its signed HTTP heartbeat named it last.
    pub fn accept(&self, d: &Datagram, source: IpAddr, mono_ms: u64, wall_ms: u64, known_boot: Option<&str>) -> Result<(), Refused> {
        if d.to != self.me {
            return Err(Refused::NotForMe(d.to.clone()));
        }
        let mut peers = self.peers.lock().expect("board lock");
        let slot = peers.get_mut(&d.from).ok_or_else(|| Refused::Stranger(d.from.clone()))?;
        let path = match slot.paths.iter().position(|(_, a)| same_ip(a.ip(), source)) {
            Some(i) => i,
            None if slot.paths.len() == 1 => 0, // one path: behind a NAT, the source says nothing
            None => return Err(Refused::UnknownPath { peer: d.from.clone(), from_ip: source }),
        };
        match &slot.run {
            Some((boot, last)) if *boot == d.boot => {
                if d.seq <= *last {
                    return Err(Refused::Replay { peer: d.from.clone(), seq: d.seq, last: *last });
                }
            }
            _ => {
                let skew_ms = d.wall_ms as i64 - wall_ms as i64;
                if known_boot != Some(d.boot.as_str()) && skew_ms.unsigned_abs() > self.window_ms {
                    return Err(Refused::Stale { peer: d.from.clone(), skew_ms });
                }
            }
        }
        slot.run = Some((d.boot.clone(), d.seq));
        slot.heard[path] = Heard { last_mono_ms: Some(mono_ms), report: Some(d.report.clone()) };
        Ok(())
    }

    /// What was heard from `peer` on its UDP path to `address` (the probe's target).
    pub fn heard(&self, peer: &str, address: &str) -> Heard {
        // Parsed once, before the lock: no allocation per path on the tick's path.
        let Ok(address) = address.parse::<std::net::SocketAddr>() else { return Heard::default() };
        let peers = self.peers.lock().expect("board lock");
        peers
            .get(peer)
            .and_then(|slot| slot.paths.iter().position(|(_, a)| *a == address).map(|i| slot.heard[i].clone()))
            .unwrap_or_default()
    }

    fn count(&self, result: &Result<(), Refused>) {
        match result {
            Ok(()) => {
                self.taken.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                if self.refused.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    tracing::warn!(refused = %why, "udp heartbeat refused (logged for the first and every 1000th)");
                }
                *self.last_refusal.lock().expect("board lock") = Some(why.to_string());
            }
        }
    }

    pub fn counts(&self) -> BoardCounts {
        BoardCounts {
            taken: self.taken.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            last_refusal: self.last_refusal.lock().expect("board lock").clone(),
        }
    }
}

/// An IPv4 address and its IPv4-mapped IPv6 form are the same sender.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

/// How many datagrams a path has missed `age_ms` after its last one, with datagrams due every
/// `interval_ms` and each allowed `slack_ms` of lateness: 0 until the next one is overdue.
pub fn missed(age_ms: u64, interval_ms: u64, slack_ms: u64) -> u32 {
    let interval = interval_ms.max(1);
    let late = age_ms.saturating_sub(slack_ms);
    u32::try_from(late / interval).unwrap_or(u32::MAX)
}

/// A peer's run as its signed HTTP heartbeat last named it.
pub type KnownBoot = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What the sender needs each interval.
pub struct Sending {
    pub me: String,
    /// This node's run, as its HTTP heartbeat answers name it.
    pub boot: String,
    pub key: Vec<u8>,
    /// (peer id, address) for every UDP path of every peer.
    pub targets: Vec<(String, SocketAddr)>,
    pub interval: Duration,
    /// The report to send now, or `None` to stay silent (a loop that stopped ticking).
    pub report: Box<dyn Fn() -> Option<Report> + Send>,
}

/// The fast path: its socket, the sending thread and the receiving task; stopped when dropped.
pub struct FastPath {
    pub board: Arc<Board>,
    pub local: SocketAddr,
    receiver: Arc<Receiver>,
    receiving: tokio::task::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    sender: Option<std::thread::JoinHandle<()>>,
}

/// What takes datagrams in: the socket (non-blocking, on the node loop's runtime) and what checking
/// them needs.
struct Receiver {
    socket: tokio::net::UdpSocket,
    board: Arc<Board>,
    keys: Vec<Vec<u8>>,
    clock: Arc<dyn Clock>,
    known_boot: KnownBoot,
}

impl Receiver {
    fn take(&self, bytes: &[u8], source: SocketAddr) {
        let result = if bytes.len() > MAX_DATAGRAM {
            Err(Refused::Malformed("too long"))
        } else {
            decode(bytes, &self.keys)
                .and_then(|d| self.board.accept(&d, source.ip(), self.clock.mono_ms(), self.clock.wall_ms(), (self.known_boot)(&d.from).as_deref()))
        };
        self.board.count(&result);
    }
}

impl FastPath {
    /// Start sending and receiving on `socket` (bound to `heartbeat.udp_listen`); needs a tokio
    /// runtime (the node loop's). `known_boot(peer)`: the peer's run as its signed HTTP heartbeat
    /// last named it.
    pub fn start(
        socket: UdpSocket,
        board: Arc<Board>,
        keys: Vec<Vec<u8>>,
        clock: Arc<dyn Clock>,
        known_boot: KnownBoot,
        sending: Sending,
    ) -> std::io::Result<FastPath> {
        let local = socket.local_addr()?;
        // The sender shares the socket (datagrams leave from udp_listen's port); a send that would
        // block (a full buffer) drops that datagram, as a lost one.
        let sender = socket.try_clone()?;
        socket.set_nonblocking(true)?;
        let receiver = Arc::new(Receiver { socket: tokio::net::UdpSocket::from_std(socket)?, board: board.clone(), keys, clock, known_boot });
        let receiving = tokio::spawn({
            let receiver = receiver.clone();
            async move {
                let mut buf = vec![0u8; MAX_DATAGRAM + 1];
                loop {
                    match receiver.socket.recv_from(&mut buf).await {
                        Ok((n, source)) => receiver.take(&buf[..n], source),
                        // ICMP errors of earlier sends (a peer not listening yet) surface here on Linux.
                        Err(e) => tracing::debug!(error = %e, "udp heartbeat socket"),
                    }
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let send = {
            let stop = stop.clone();
            std::thread::Builder::new().name("vigil-udp-tx".into()).spawn(move || send_loop(&sender, &sending, &stop))?
        };
        Ok(FastPath { board, local, receiver, receiving, stop, sender: Some(send) })
    }

    /// Take every datagram already queued on the socket. The loop calls it before it judges the udp
    /// paths: a datagram that arrived but was not read yet (the receiving task waiting behind a
    /// tick on a busy machine) must not count as missed.
    pub fn drain(&self) {
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        // Bounded: a flood (or an error that repeats) costs a tick at most this many reads.
        for _ in 0..DRAIN_MAX {
            match self.receiver.socket.try_recv_from(&mut buf) {
                Ok((n, source)) => self.receiver.take(&buf[..n], source),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => tracing::debug!(error = %e, "udp heartbeat socket"),
            }
        }
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        self.receiving.abort();
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
    }
}

fn send_loop(socket: &UdpSocket, s: &Sending, stop: &AtomicBool) {
    let mut seq = 0u64;
    let mut next = Instant::now();
    let wall = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    while !stop.load(Ordering::Acquire) {
        if let Some(report) = (s.report)() {
            for (peer, address) in &s.targets {
                seq += 1;
                let d = Datagram { from: s.me.clone(), to: peer.clone(), boot: s.boot.clone(), seq, wall_ms: wall(), report: report.clone() };
                match encode(&d, &s.key) {
                    Ok(bytes) => {
                        if let Err(e) = socket.send_to(&bytes, address) {
                            tracing::debug!(%peer, %address, error = %e, "udp heartbeat not sent");
                        }
                    }
                    Err(e) => tracing::error!(%peer, error = %e, "udp heartbeat cannot be encoded"),
                }
            }
        }
        // A fixed schedule; after a stall (a suspended VM) start again from now rather than burst.
        next += s.interval;
        let now = Instant::now();
        if next <= now {
            next = now + s.interval;
        }
        std::thread::sleep(next - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn datagram(seq: u64) -> Datagram {
        Datagram {
            from: "b".into(),
            to: "a".into(),
            boot: "run1".into(),
            seq,
            wall_ms: 1_000_000,
            report: Report { mode: Mode::Active, configured_role: Some(Role::Secondary), app_healthy: Some(true), mode_since_ms: Some(7) },
        }
    }

    fn board() -> Board {
        Board::new("a", 30_000, &[("b".into(), vec![("lan".into(), "10.0.0.2:7402".parse().unwrap()), ("x".into(), "192.168.9.2:7402".parse().unwrap())])])
    }

    const LAN: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_datagram_round_trips_and_any_change_breaks_its_signature() {
        let bytes = encode(&datagram(5), KEY).unwrap();
        assert_eq!(decode(&bytes, &[b"other key is here".to_vec(), KEY.to_vec()]).unwrap(), datagram(5));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, &[KEY.to_vec()]).is_err(), "byte {i} flipped");
        }
        assert_eq!(decode(&bytes, &[b"another key entirely".to_vec()]), Err(Refused::Signature));
        assert!(matches!(decode(&bytes[..10], &[KEY.to_vec()]), Err(Refused::Malformed(_))));
    }

    #[test]
    fn the_board_takes_a_run_in_order_and_refuses_replays_strangers_and_old_runs() {
        let b = board();
        assert_eq!(b.accept(&datagram(1), LAN, 10, 1_000_000, None), Ok(()));
        assert_eq!(b.heard("b", "10.0.0.2:7402").last_mono_ms, Some(10));
        assert_eq!(b.heard("b", "192.168.9.2:7402").last_mono_ms, None, "on the other path");
        assert!(matches!(b.accept(&datagram(1), LAN, 20, 1_000_000, None), Err(Refused::Replay { .. })));
        assert_eq!(b.accept(&datagram(2), LAN, 30, 1_000_000, None), Ok(()));
        let mut other = datagram(3);
        other.to = "c".into();
        assert!(matches!(b.accept(&other, LAN, 40, 1_000_000, None), Err(Refused::NotForMe(_))));
        let mut stranger = datagram(3);
        stranger.from = "z".into();
        assert!(matches!(b.accept(&stranger, LAN, 40, 1_000_000, None), Err(Refused::Stranger(_))));
        assert!(matches!(b.accept(&datagram(3), "10.9.9.9".parse().unwrap(), 40, 1_000_000, None), Err(Refused::UnknownPath { .. })));
        // A datagram of another run, dated 15 minutes ago: a recording played back. Refused unless the
        // HTTP heartbeat names that run.
        let mut old = datagram(900);
        old.boot = "run0".into();
        old.wall_ms = 1_000_000 - 900_000;
        assert!(matches!(b.accept(&old, LAN, 50, 1_000_000, None), Err(Refused::Stale { .. })));
        assert_eq!(b.accept(&old, LAN, 50, 1_000_000, Some("run0")), Ok(()), "a run the signed heartbeat named");
        // A restarted sender: a new run with a good clock is taken at once, its sequence from 1.
        let mut new = datagram(1);
        new.boot = "run2".into();
        assert_eq!(b.accept(&new, LAN, 60, 1_000_000, None), Ok(()));
        assert_eq!(b.heard("b", "10.0.0.2:7402").last_mono_ms, Some(60));
    }

    #[test]
    fn missed_counts_overdue_datagrams() {
        assert_eq!(missed(0, 20, 10), 0);
        assert_eq!(missed(29, 20, 10), 0);
        assert_eq!(missed(30, 20, 10), 1);
        assert_eq!(missed(69, 20, 10), 2);
        assert_eq!(missed(70, 20, 10), 3);
        assert_eq!(missed(u64::MAX, 1, 0), u32::MAX);
    }
}
