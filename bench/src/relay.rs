//! What the built-in traffic relay (`host/src/relay.rs`) adds to a connection: 1 KB request/response
//! round trips over one loopback connection, straight to a backend and through a [`Relay`] in front of
//! the same backend.
//!
//! The backend and the client use blocking std sockets on their own threads (the cheapest possible
//! ends, so the difference is the relay's); the relay runs on a two-worker tokio runtime as in the
//! daemon. Both legs have TCP_NODELAY. Loopback is the worst case for a relay in relative terms: the
//! network adds nothing, so the extra hop is all there is to see.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use vigil::policy::file::RelaySpec;
use vigil::relay::Relay;

const SIZE: usize = 1024;
const WARM_UP: usize = 1_000;
const ROUND_TRIPS: usize = 20_000;
/// The target for the relay's added mean latency.
const TARGET_PERCENT: f64 = 20.0;

/// A backend that answers every 1 KB request with 1 KB, one thread per connection.
fn backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; SIZE];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// `ROUND_TRIPS` timed round trips over one connection to `addr`, after a warm-up.
fn round_trips(addr: SocketAddr) -> anyhow::Result<Vec<Duration>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let request = [7u8; SIZE];
    let mut answer = [0u8; SIZE];
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..WARM_UP + ROUND_TRIPS {
        let t = Instant::now();
        s.write_all(&request)?;
        s.read_exact(&mut answer)?;
        if i >= WARM_UP {
            times.push(t.elapsed());
        }
    }
    anyhow::ensure!(answer == request, "the backend answered something else");
    Ok(times)
}

struct Summary {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn summarize(mut d: Vec<Duration>) -> Summary {
    d.sort();
    let pct = |p: usize| d[(d.len() * p / 100).min(d.len() - 1)];
    let mean = d.iter().sum::<Duration>() / d.len() as u32;
    Summary { p50: pct(50), p99: pct(99), mean }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Run the benchmark; Markdown table rows (`| benchmark | figure |`) for `bench/README.md`.
pub fn run() -> anyhow::Result<String> {
    let target = backend()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let spec = RelaySpec {
        listen: Some("127.0.0.1:0".parse()?),
        targets: BTreeMap::from([("main".to_string(), target.to_string())]),
        initial: "main".into(),
        hook: None,
    };
    let relay = runtime.block_on(async { Relay::start(&spec) })?;
    let through = relay.local_addr().expect("the relay listens");

    // Alternate so that drift of the machine (other jobs, frequency) hits both sides alike.
    let mut direct = Vec::new();
    let mut relayed = Vec::new();
    for _ in 0..2 {
        direct.extend(round_trips(target)?);
        relayed.extend(round_trips(through)?);
    }
    let (d, r) = (summarize(direct), summarize(relayed));
    let added = (us(r.mean) - us(d.mean)) / us(d.mean) * 100.0;
    let verdict = if added < TARGET_PERCENT { "within" } else { "over" };
    let row = |name: &str, s: &Summary| {
        format!("| relay: {name}, 1 KB request/response, {} round trips | p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs |\n", 2 * ROUND_TRIPS, us(s.p50), us(s.p99), us(s.mean))
    };
    let mut out = row("direct to the backend", &d);
    out.push_str(&row("through the built-in relay", &r));
    out.push_str(&format!(
        "| relay: added per round trip | +{:.1} µs mean (+{added:.0} %), +{:.1} µs p50 — {verdict} the {TARGET_PERCENT:.0} % target |\n",
        us(r.mean) - us(d.mean),
        us(r.p50) - us(d.p50)
    ));
    let c = relay.counters();
    anyhow::ensure!(c.failed == 0, "the relay failed {} connection(s)", c.failed);
    drop(relay);
    match nginx_reference(target)? {
        Some(n) => {
            let n = summarize(n);
            let nginx_added = (us(n.mean) - us(d.mean)) / us(d.mean) * 100.0;
            out.push_str(&row("through nginx's stream proxy (reference; 1 worker, tcp_nodelay)", &n));
            out.push_str(&format!("| relay: nginx stream proxy adds | +{:.1} µs mean (+{nginx_added:.0} %) |\n", us(n.mean) - us(d.mean)));
        }
        None => out.push_str("| relay: nginx reference | skipped: nginx with the stream module is not installed (apt-get install nginx libnginx-mod-stream) |\n"),
    }
    Ok(out)
}

/// The same round trips through nginx's stream proxy in front of the same backend, when nginx and
/// its stream module are installed: what an established user-space proxy adds on loopback.
fn nginx_reference(target: SocketAddr) -> anyhow::Result<Option<Vec<Duration>>> {
    let module = std::path::Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    if std::process::Command::new("nginx").arg("-v").output().is_err() || !module.exists() {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {};\nmaster_process off;\nworker_processes 1;\npid {}/nginx.pid;\nerror_log {}/error.log;\nevents {{ worker_connections 64; }}\n\
             stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass {target}; tcp_nodelay on; }} }}\n",
            module.display(),
            dir.path().display(),
            dir.path().display()
        ),
    )?;
    let mut nginx = std::process::Command::new("nginx")
        .args(["-p", &dir.path().display().to_string(), "-c", &conf.display().to_string(), "-g", "daemon off;"])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut times = round_trips(addr)?;
    times.extend(round_trips(addr)?);
    let _ = nginx.kill();
    let _ = nginx.wait();
    Ok(Some(times))
}
