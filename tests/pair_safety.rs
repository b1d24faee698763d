//! The pair's promise — never two actives, no false failover — against the faults a real deployment
//! meets at the edges of the peer protocol, each through real `vigil run` processes on loopback:
//!
//! - a crowd of idle, half-open and non-reading clients on the active node (load balancers that open a
//!   connection per check must still get their answer, and so must the peer's heartbeats);
//! - an unauthenticated client announcing a huge body on a peer endpoint;
//! - a heartbeat path that leads back to the node itself (a VIP that moved);
//! - a command captured before a restart and played back after it;
//! - a peer whose wall clock runs 40 s ahead, beyond the signature window;
//! - two nodes started a second and a half apart, the secondary first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use vigil::clock::Clock as _;
use vigil::cluster::{exactly_one_active, Cluster, PairSpec, Timing, PEER_KEY};
use vigil::model::Mode;
use vigil::peer::signing;
use vigil_tests::{plugins_dir, vigil_bin};

const INTERVAL: u64 = 100;

fn spec() -> PairSpec {
    spec_at(INTERVAL)
}

fn spec_at(interval_ms: u64) -> PairSpec {
    PairSpec {
        timing: Timing { interval_ms, timeout_ms: interval_ms, failures: 3, successes: 3 },
        params: String::new(),
        plugin_dirs: vec![plugins_dir()],
    }
}

async fn started_pair(dir: &std::path::Path) -> Cluster {
    started_pair_with(dir, &spec()).await
}

async fn started_pair_with(dir: &std::path::Path, spec: &PairSpec) -> Cluster {
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir, spec).unwrap();
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let active = cluster.wait_for(Duration::from_secs(20), exactly_one_active).await.expect("the pair settles");
    assert_eq!(active, 0, "the primary takes the role");
    cluster
}

/// One load-balancer check on a connection of its own: the status code, or why there was none.
fn check_once(addr: SocketAddr, path: &str, limit: Duration) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).unwrap();
    s.set_write_timeout(Some(limit)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| format!("read: {e}"))?;
    let head = String::from_utf8_lossy(&answer);
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status line in {head:?}"))
}

/// `n` clients that connect and then misbehave in turn: silent, half a request head, or a pipeline of
/// requests whose answers they never read.
fn crowd(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { continue };
        s.set_write_timeout(Some(Duration::from_millis(50))).unwrap();
        let _ = match i % 3 {
            0 => Ok(()),
            1 => s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n"),
            _ => s.write_all(&b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200)),
        };
        clients.push(s);
    }
    clients
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crowd_of_idle_and_stalled_clients_locks_out_neither_load_balancers_nor_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    // 200 ms: the crowd and the test share this machine's two cores with both nodes.
    let mut cluster = started_pair_with(dir.path(), &spec_at(200)).await;
    let a = cluster.listen_addr(0);

    // More than the server's table and the kernel's accept queue hold together.
    let crowd = tokio::task::spawn_blocking(move || crowd(a, 1_600)).await.unwrap();
    println!("{} misbehaving clients connected", crowd.len());

    // The standby restarts meanwhile: it must find the active node, not take over.
    cluster.kill(1);
    cluster.start(1).unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    let (mut checks, mut worst, mut not_ok, mut in_a_row) = (0, Duration::ZERO, 0, 0);
    while Instant::now() < until {
        let started = Instant::now();
        let code = tokio::task::spawn_blocking(move || check_once(a, "/active", Duration::from_secs(2))).await.unwrap();
        // Every check is answered (nobody is locked out). On this shared machine a tick can be late
        // past the liveness rule (503 STALLED); a load balancer's usual `fall 3` must still never
        // see the active node down.
        let code = code.unwrap_or_else(|e| panic!("a load balancer's check got no answer, {checks} checks into the crowd: {e}\n{}", cluster.logs(20)));
        if code == 200 {
            in_a_row = 0;
        } else {
            not_ok += 1;
            in_a_row += 1;
            assert!(in_a_row < 3, "{in_a_row} checks in a row answered {code}, {checks} checks into the crowd\n{}", cluster.logs(20));
        }
        worst = worst.max(started.elapsed());
        checks += 1;
        let modes = cluster.modes().await;
        assert_ne!(modes, vec![Some(Mode::Active), Some(Mode::Active)], "two actives during the crowd\n{}", cluster.logs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{checks} checks on fresh connections, {not_ok} not 200, slowest {} ms", worst.as_millis());
    let modes = cluster.wait_for(Duration::from_secs(5), |m| (m[1] == Some(Mode::Standby)).then(|| m.to_vec())).await.unwrap();
    assert_eq!(modes, vec![Some(Mode::Active), Some(Mode::Standby)], "the restarted standby found the active node");
    let (_, metrics) = cluster.admin(0, hyper::Method::GET, "/metrics").await.unwrap();
    assert!(metrics.contains("vigil_http_connections_evicted_total"), "the evictions are counted: {metrics}");
    drop(crowd);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_huge_body_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = started_pair(dir.path()).await;
    let a = cluster.listen_addr(0);
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Headers that look signed and fresh, a 40 MiB body announced, none of it sent.
        let now = vigil::clock::SystemClock::new().wall_ms();
        let head = format!(
            "POST /peer/changes HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nx-vigil-node: b\r\nx-vigil-to: a\r\n\
             x-vigil-timestamp: {now}\r\nx-vigil-nonce: 00112233445566778899aabbccddeeff\r\n\
             x-vigil-content-sha256: {}\r\nx-vigil-signature: {}\r\n\r\n",
            40 << 20,
            "0".repeat(64),
            "ab".repeat(32)
        );
        let started = Instant::now();
        s.write_all(head.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        (String::from_utf8_lossy(&buf[..n]).into_owned(), started.elapsed())
    })
    .await
    .unwrap();
    let (answer, took) = answer;
    assert!(answer.starts_with("HTTP/1.1 401"), "refused at once, not waited for: {answer:?}");
    assert!(took < Duration::from_secs(3), "answered in {took:?}, without waiting for the body");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_heartbeat_path_that_leads_back_to_the_node_itself_is_not_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec()).unwrap();
    // a's only path to b leads to a itself, as through a VIP that moved to a.
    let own = cluster.nodes[0].url.clone();
    cluster.spec_mut(0).peer_paths = vec![("b".into(), vec![("via-vip".into(), own)])];
    cluster.start(0).unwrap();
    let http = vigil::http_client::HttpClient::new();
    let url = format!("{}/status", cluster.nodes[0].url);
    let deadline = Instant::now() + Duration::from_secs(20);
    let peer = loop {
        assert!(Instant::now() < deadline, "a never counted b as failed\n{}", cluster.logs(20));
        let Ok(answer) = http.get(&url, Duration::from_secs(2)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let status: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let peer = status["peers"][0].clone();
        if peer.is_null() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if peer["consecutive_failures"].as_u64().unwrap_or(0) >= 3 {
            break peer;
        }
        assert_eq!(peer["reachable"], false, "its own answer must not count as b's: {peer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(peer["last_error"].as_str().unwrap_or("").contains("addressed to \"b\""), "{peer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_captured_before_a_restart_is_refused_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = started_pair(dir.path()).await;
    // b's command to a, signed for a's current run (as b learns it from a's heartbeat answers).
    let clock = vigil::clock::SystemClock::new();
    let b = vigil::peer::client::PeerClient::new(vigil::http_client::HttpClient::new(), "b".into(), vec![PEER_KEY.as_bytes().to_vec()], clock.clone());
    let run = b.heartbeat("a", &cluster.nodes[0].url, Duration::from_secs(2)).await.unwrap().answer.boot;
    let body = serde_json::to_vec(&vigil::peer::CommandMessage { command: vigil::model::PeerCommand::GoStandby }).unwrap();
    let request = signing::Request { method: "POST", path: vigil::peer::COMMAND_PATH, from: "b", to: "a", boot: &run, body: &body };
    let captured = signing::sign_request(PEER_KEY.as_bytes(), request, clock.wall_ms(), signing::new_nonce());

    cluster.kill(0);
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(20), exactly_one_active).await.unwrap();
    let mut headers: Vec<(&str, String)> = captured.pairs().to_vec();
    headers.push(("content-type", "application/json".into()));
    let url = format!("{}{}", cluster.nodes[0].url, vigil::peer::COMMAND_PATH);
    let http = vigil::http_client::HttpClient::new();
    let answer = http.send(hyper::Method::POST, &url, &headers, body.into(), Duration::from_secs(2)).await.unwrap();
    let text = String::from_utf8_lossy(&answer.body);
    assert_eq!(answer.status, 401, "{text}");
    assert!(text.contains("restarted since"), "{text}");
    let (_, events) = cluster.admin(0, hyper::Method::GET, "/events").await.unwrap();
    assert!(!events.contains("command go-standby received"), "the replay was not delivered: {events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_clock_40_s_ahead_is_reachable_and_skewed_never_dead() {
    let Some(skewed) = vigil_tests::faketime::skewed_clock("+40s") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec()).unwrap();
    cluster.spec_mut(1).env = skewed;
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    cluster.wait_for(Duration::from_secs(20), exactly_one_active).await.expect("one active node despite the skew");
    // Held for 3 s: neither node takes the other for dead.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let modes = cluster.modes().await;
        assert_eq!(exactly_one_active(&modes), Some(0), "modes {modes:?}\n{}", cluster.logs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = vigil::http_client::HttpClient::new();
    let status = http.get(&format!("{}/status", cluster.nodes[0].url), Duration::from_secs(2)).await.unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let peer = &status["peers"][0];
    assert_eq!(peer["reachable"], true, "{peer}");
    let skew = peer["clock_skew_ms"].as_i64().unwrap();
    assert!((35_000..=45_000).contains(&skew), "skew {skew}");
    assert!(peer["refused"].as_str().unwrap_or("").contains("ms away"), "the refusal is visible: {peer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secondary_starting_first_does_not_take_the_role_from_a_primary_a_moment_late() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec()).unwrap();
    cluster.start(1).unwrap();
    // Well past failures × interval: without a grace, b counts a dead and takes the role for good.
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        assert_ne!(cluster.modes().await[1], Some(Mode::Active), "b took the role before a could answer\n{}", cluster.logs(20));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    cluster.start(0).unwrap();
    let active = cluster.wait_for(Duration::from_secs(20), exactly_one_active).await.unwrap();
    assert_eq!(active, 0, "the primary the policy prefers is active\n{}", cluster.logs(20));
    let (_, events) = cluster.admin(1, hyper::Method::GET, "/events").await.unwrap();
    assert!(!events.contains("STANDBY → ACTIVE"), "b was never active: {events}");
}
