//! The udp fast path on real processes: a pair with `kind = "udp"` paths at a 20 ms interval and
//! its HTTP heartbeat paced at 200 ms.
//!
//! - kill -9 of the active node: the standby takes over, although a recorder on the dead node's
//!   udp link keeps playing its captured datagrams back (replays are refused, never counted alive);
//! - the HTTP heartbeat's link cut while the udp datagrams flow: nobody fails over (a udp-judged
//!   peer is reachable on its udp paths), and the HTTP heartbeat's failure shows on its own path.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, LinkProxy, NodeSpec, Timing};
use vigil::model::{Mode, Role};
use vigil_tests::{plugins_dir, vigil_bin};

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A one-way udp link that forwards every datagram to `target` and keeps a copy; `replay` plays the
/// copies back instead.
struct UdpTap {
    addr: SocketAddr,
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
    replaying: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl UdpTap {
    fn start(target: SocketAddr) -> UdpTap {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let addr = socket.local_addr().unwrap();
        let (captured, replaying, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (c, r, s) = (captured.clone(), replaying.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut next = 0usize;
            while !s.load(Ordering::Acquire) {
                if let Ok((n, _)) = socket.recv_from(&mut buf) {
                    if !r.load(Ordering::Acquire) {
                        c.lock().unwrap().push(buf[..n].to_vec());
                        let _ = socket.send_to(&buf[..n], target);
                    }
                }
                if r.load(Ordering::Acquire) {
                    // Every captured datagram again, one every few ms, round and round.
                    let copy = {
                        let captured = c.lock().unwrap();
                        captured.get(next % captured.len().max(1)).cloned()
                    };
                    if let Some(d) = copy {
                        let _ = socket.send_to(&d, target);
                        next += 1;
                    }
                }
            }
        });
        UdpTap { addr, captured, replaying, stop }
    }
}

impl Drop for UdpTap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

const POLICY: &str = "plugin = \"hot-standby\"\n\n[services.cti]\nstart = \"echo running > '{dir}/cti.running'\"\n\
                      stop = \"rm -f '{dir}/cti.running'\"\nstatus = \"test -f '{dir}/cti.running'\"\ntimeout_ms = 2000\n";

fn udp_ports() -> [SocketAddr; 2] {
    [0, 1].map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
}

/// A primary `a` and a secondary `b` receiving udp heartbeats on `udp`, sent every 20 ms (a's to b
/// at `a_sends_to`), with the HTTP heartbeat every 200 ms.
fn pair(dir: &std::path::Path, udp: [SocketAddr; 2], a_sends_to: SocketAddr) -> Cluster {
    let timing = Timing { interval_ms: 20, timeout_ms: 20, failures: 3, successes: 3 };
    let mut cluster = Cluster::new(vigil_bin(), dir, timing, vec![plugins_dir()]).unwrap();
    for (i, (id, role, peer)) in [("a", Role::Primary, "b"), ("b", Role::Secondary, "a")].into_iter().enumerate() {
        let mut node = NodeSpec::new(id, role, POLICY);
        node.peers = vec![peer.into()];
        node.heartbeat_extra = format!("udp_listen = \"{}\"\nhttp_interval_ms = 200\nstartup_grace_ms = 2000", udp[i]);
        node.udp_paths = vec![(peer.into(), if i == 0 { a_sends_to } else { udp[0] }.to_string())];
        cluster.add(node).unwrap();
    }
    cluster
}

/// `want` is the only active node (others may be down) for half a second, within `limit`.
async fn settled_on(cluster: &Cluster, want: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut since: Option<Instant> = None;
    loop {
        let modes = cluster.modes().await;
        let active: Vec<usize> = (0..modes.len()).filter(|&i| modes[i] == Some(Mode::Active)).collect();
        if active == [want] {
            if since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_millis(500) {
                return;
            }
        } else {
            since = None;
        }
        assert!(Instant::now() < deadline, "node {want} not the only active one within {limit:?}: {modes:?}\n{}", cluster.logs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(cluster: &Cluster, i: usize) -> serde_json::Value {
    let (code, body) = cluster.admin(i, hyper::Method::GET, "/status").await.unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_active_is_replaced_though_its_recorded_datagrams_are_played_back() {
    let dir = tempfile::tempdir().unwrap();
    let udp = udp_ports();
    let tap = UdpTap::start(udp[1]);
    let mut cluster = pair(dir.path(), udp, tap.addr);
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    settled_on(&cluster, 0, Duration::from_secs(20)).await;

    let b = status(&cluster, 1).await;
    assert_eq!(b["peers"][0]["reachable"], true, "{b}");
    assert!(b["udp"]["taken"].as_u64().unwrap() > 10, "b takes a's datagrams: {}", b["udp"]);
    assert!(tap.captured.lock().unwrap().len() > 10, "the tap saw them");

    // a dies; its datagrams keep coming, replayed from the recording.
    tap.replaying.store(true, Ordering::Release);
    cluster.kill(0);
    settled_on(&cluster, 1, Duration::from_secs(10)).await;
    let b = status(&cluster, 1).await;
    assert_eq!(b["peers"][0]["reachable"], false, "{b}");
    assert!(b["udp"]["refused"].as_u64().unwrap() > 0, "the replays were seen and refused: {}", b["udp"]);
    let why = b["udp"]["last_refusal"].as_str().unwrap_or_default();
    assert!(why.contains("replayed"), "{why}");
    let (_, metrics) = cluster.admin(1, hyper::Method::GET, "/metrics").await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("vigil_udp_datagrams_total{result=\"refused\"} ") && !l.ends_with(" 0")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_http_heartbeat_does_not_fail_over_a_peer_whose_datagrams_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let udp = udp_ports();
    let mut cluster = pair(dir.path(), udp, udp[1]);
    // b's HTTP heartbeat to a goes through a link the test cuts; its udp path does not.
    let http_link = LinkProxy::start(cluster.listen_addr(0)).await.unwrap();
    let b = cluster.spec_mut(1);
    b.peers = Vec::new();
    b.udp_paths = Vec::new();
    b.extra_config = format!(
        "\n[[peer]]\nid = \"a\"\nurl = \"{}\"\npaths = [{{ name = \"fast\", kind = \"udp\", address = \"{}\" }}]\n",
        http_link.url(),
        udp[0]
    );
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    settled_on(&cluster, 0, Duration::from_secs(20)).await;

    http_link.cut();
    // 2 s: ten paced HTTP heartbeats fail, a hundred udp intervals pass.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let modes = cluster.modes().await;
        assert_eq!(modes, vec![Some(Mode::Active), Some(Mode::Standby)], "{}", cluster.logs(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = status(&cluster, 1).await;
    let paths = &b["peers"][0]["paths"];
    assert_eq!(b["peers"][0]["reachable"], true, "{b}");
    assert!(paths[0]["consecutive_failures"].as_u64().unwrap() >= 3, "the HTTP path failed: {paths}");
    assert_eq!(paths[1]["ok"], true, "the udp path is fine: {paths}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_sees_its_peers_datagrams_before_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let udp = udp_ports();
    let mut cluster = pair(dir.path(), udp, udp[1]);
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    settled_on(&cluster, 0, Duration::from_secs(20)).await;
    let state = cluster.nodes[0].dir.join("data/node-state.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&state).unwrap_or_default().contains("\"active\"") {
        assert!(Instant::now() < deadline, "a persisted ACTIVE");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a is killed, b takes the role; a comes back within max_downtime_ms, persisted ACTIVE. Its first
    // tick must see b's datagrams (b ACTIVE) and not resume.
    cluster.kill(0);
    settled_on(&cluster, 1, Duration::from_secs(10)).await;
    cluster.start(0).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while Instant::now() < until {
        let modes = cluster.modes().await;
        assert_ne!(modes[0], Some(Mode::Active), "the restarted node resumed ACTIVE over its peer's role: {seen:?}\n{}", cluster.logs(20));
        if seen.last() != Some(&modes[0]) {
            seen.push(modes[0]);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen.last(), Some(&Some(Mode::Standby)), "{seen:?}");
    let (_, events) = cluster.admin(0, hyper::Method::GET, "/events?limit=50").await.unwrap();
    assert!(events.contains("reports ACTIVE: not resuming"), "its event log says why: {events}");
}
