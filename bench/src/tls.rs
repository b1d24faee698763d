//! What TLS costs a pair (issue 17): heartbeat bytes and node CPU per heartbeat, plain and with
//! mutual TLS side by side, and the failover time with TLS next to the plain one. Release `vigil run`
//! processes on loopback, certificates from a test CA (`vigil_tests::tls`).
//!
//! Bytes: node a's heartbeats to b go through a counting TCP proxy (TLS passes through it untouched,
//! so the count is what crosses the wire, records and all); divided by a's ticks over the window
//! (one heartbeat round per tick), read from a's `/metrics`. The pooled connection stays open, so a
//! handshake is paid once, not per heartbeat. CPU: user + system time of both processes
//! (`/proc/PID/stat`) over the same window, per tick of a (each node ticks and answers the other's
//! heartbeat once per interval).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil::cluster::{exactly_one_active, Cluster, NodeSpec, PairSpec, Timing};
use vigil::http_client::HttpClient;
use vigil::model::{Mode, Role};
use vigil_tests::tls::{client, tls_table, Ca, Validity};

const TIMING: Timing = Timing { interval_ms: 100, timeout_ms: 100, failures: 3, successes: 3 };
/// How long the heartbeat traffic is measured.
const WINDOW: Duration = Duration::from_secs(20);

/// A TCP forwarder that counts the bytes it carries (both ways).
struct Counter {
    addr: std::net::SocketAddr,
    bytes: Arc<AtomicU64>,
}

impl Counter {
    async fn start(target: std::net::SocketAddr) -> anyhow::Result<Counter> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bytes = Arc::new(AtomicU64::new(0));
        let count = bytes.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pipe(ri, wo, count.clone()));
                tokio::spawn(pipe(ro, wi, count.clone()));
            }
        });
        Ok(Counter { addr, bytes })
    }
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, count: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// User + system CPU time of a process.
fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

async fn ticks(http: &HttpClient, url: &str) -> anyhow::Result<u64> {
    let a = http.get(&format!("{url}/metrics"), Duration::from_secs(2)).await.map_err(|e| anyhow::anyhow!(e))?;
    String::from_utf8_lossy(&a.body)
        .lines()
        .find_map(|l| l.strip_prefix("vigil_ticks_total ").and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| anyhow::anyhow!("{url}/metrics: no vigil_ticks_total"))
}

/// Per-node `[tls]` tables (mutual TLS, peer names) and the client that talks to such nodes.
struct Pki {
    tables: Vec<String>,
    client: HttpClient,
}

fn pki(dir: &Path) -> Pki {
    let ca = Ca::new(dir, "ca");
    let tables = ["a", "b"]
        .iter()
        .map(|id| {
            let (cert, key) = ca.write(dir, id, &[id, "127.0.0.1"], Validity::Now);
            tls_table(&cert, &key, &ca.cert, "peer_names = true\n")
        })
        .collect();
    let (cert, key) = ca.write(dir, "operator", &["operator"], Validity::Now);
    Pki { tables, client: client(&ca.cert, Some((&cert, &key))) }
}

/// (bytes per heartbeat, CPU per heartbeat of both nodes) of a standby pair over [`WINDOW`].
async fn heartbeats(exe: &Path, tls: bool) -> anyhow::Result<(f64, Duration)> {
    let dir = tempfile::tempdir()?;
    let mut c = Cluster::new(exe, dir.path(), TIMING, vec![vigil_tests::plugins_dir()])?;
    let policy = "plugin = \"testkit\"\n[params]\nmode = \"standby\"\n";
    for (id, peer) in [("a", "b"), ("b", "a")] {
        let mut spec = NodeSpec::new(id, if id == "a" { Role::Primary } else { Role::Secondary }, policy);
        spec.peers = vec![peer.into()];
        c.add(spec)?;
    }
    let pki = pki(dir.path());
    let scheme = if tls {
        c.use_https(pki.client.clone());
        "https"
    } else {
        "http"
    };
    // a reaches b through the counter.
    let counter = Counter::start(c.listen_addr(1)).await?;
    c.spec_mut(0).peers.clear();
    c.spec_mut(0).peer_paths = vec![("b".into(), vec![("main".into(), format!("{scheme}://{}", counter.addr))])];
    if tls {
        for i in 0..2 {
            c.spec_mut(i).extra_config = pki.tables[i].clone();
        }
    }
    c.start(0)?;
    c.start(1)?;
    let http = if tls { pki.client.clone() } else { HttpClient::new() };
    // Settled: b has heard a (and a b) for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a_url = c.nodes[0].url.clone();
    let (pid_a, pid_b) = (c.nodes[0].pid().expect("a runs"), c.nodes[1].pid().expect("b runs"));
    let (t0, b0, cpu0) = (ticks(&http, &a_url).await?, counter.bytes.load(Ordering::Relaxed), cpu(pid_a)? + cpu(pid_b)?);
    tokio::time::sleep(WINDOW).await;
    let (t1, b1, cpu1) = (ticks(&http, &a_url).await?, counter.bytes.load(Ordering::Relaxed), cpu(pid_a)? + cpu(pid_b)?);
    let n = (t1 - t0).max(1);
    anyhow::ensure!(b1 > b0, "no heartbeat traffic through the counter (logs in {})", dir.path().display());
    Ok(((b1 - b0) as f64 / n as f64, (cpu1 - cpu0) / n as u32))
}

/// Failover after kill -9 of the active node of a hot-standby pair, plain or with mutual TLS.
pub(crate) async fn failover(exe: &Path, tls: bool, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let spec = PairSpec { timing: TIMING, params: String::new(), plugin_dirs: vec![vigil_tests::plugins_dir()] };
        let mut c = Cluster::hot_standby_pair(exe, dir.path(), &spec)?;
        if tls {
            let pki = pki(dir.path());
            for i in 0..2 {
                c.spec_mut(i).extra_config = pki.tables[i].clone();
            }
            c.use_https(pki.client);
        }
        c.start(0)?;
        c.start(1)?;
        let active = c.wait_for(Duration::from_secs(20), exactly_one_active).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let survivor = 1 - active;
        let killed = Instant::now();
        c.kill(active);
        c.wait_for(Duration::from_secs(10), |m| (m[survivor] == Some(Mode::Active)).then_some(())).await?;
        times.push(killed.elapsed());
    }
    Ok(times)
}

/// `cargo xtask bench tls`.
pub async fn run(runs: usize) -> anyhow::Result<()> {
    let exe = crate::cluster::exe()?;
    for tls in [false, true] {
        let (bytes, cpu) = heartbeats(&exe, tls).await?;
        let label = if tls { "mutual TLS 1.3, peer names" } else { "plain HTTP" };
        crate::row(
            &format!("heartbeat, {label} (interval 100 ms, {} s, kept-alive connection)", WINDOW.as_secs()),
            format!("{bytes:.0} B per heartbeat (request + answer, on the wire) · {:.0} µs CPU per heartbeat (both nodes)", cpu.as_secs_f64() * 1e6),
        );
    }
    for tls in [false, true] {
        let mut times = failover(&exe, tls, runs).await?;
        times.sort();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        crate::row(
            &format!("failover after kill -9, {} (interval 100 ms, 3 failures, timeout 100 ms)", if tls { "mutual TLS" } else { "plain HTTP" }),
            format!("p50 {} · max {} · min {} ({} runs)", ms(times[times.len() / 2]), ms(times[times.len() - 1]), ms(times[0]), times.len()),
        );
    }
    Ok(())
}
