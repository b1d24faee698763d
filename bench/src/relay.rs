//! What the built-in traffic relay (`host/src/relay/`) adds to a connection: 1 KB request/response
//! round trips over one loopback connection, straight to a backend and through a [`Relay`] in front of
//! the same backend.
//!
//! The backend and the client use blocking std sockets on their own threads (the cheapest possible
//! ends, so the difference is the relay's); the relay accepts on a two-worker tokio runtime as in the
//! daemon and copies on its data-path thread, once with its default busy polling and once without.
//! Both legs have TCP_NODELAY. Loopback is the worst case for a relay in relative terms: the network
//! adds nothing, so the extra hop is all there is to see. nginx's stream proxy, when installed, is the
//! reference for what an established user-space proxy adds.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use vigil::policy::file::{RelaySpec, DEFAULT_BUSY_POLL_US};
use vigil::relay::Relay;

use crate::nginx::Nginx;
use crate::Sample;

const SIZE: usize = 1024;
const WARM_UP: usize = 500;
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

/// `n` timed round trips over one connection to `addr`, after a warm-up.
fn round_trips(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let request = [7u8; SIZE];
    let mut answer = [0u8; SIZE];
    let mut times = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
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

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One way to the backend.
struct Way {
    name: String,
    addr: SocketAddr,
    /// Its proxy, if any, runs in this process, so this process's CPU time includes it (not nginx's).
    in_process: bool,
    /// The way the target is about: the relay as configured by default.
    judged: bool,
}

/// CPU time used so far by this process (client, backend and relay threads alike).
fn process_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to fill; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A built-in relay in front of `target` with the given busy polling, on the daemon's kind of runtime.
fn relay(runtime: &tokio::runtime::Runtime, target: SocketAddr, busy_poll_us: u64) -> anyhow::Result<Relay> {
    let spec = RelaySpec {
        listen: Some("127.0.0.1:0".parse()?),
        targets: BTreeMap::from([("main".to_string(), target.to_string())]),
        initial: "main".into(),
        hook: None,
        busy_poll_us,
    };
    Ok(runtime.block_on(async { Relay::start(&spec) })?)
}

/// Run the benchmark; Markdown table rows (`| benchmark | figure |`) for `bench/README.md`.
pub fn run() -> anyhow::Result<String> {
    let target = backend()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let default = relay(&runtime, target, DEFAULT_BUSY_POLL_US)?;
    let sleeping = relay(&runtime, target, 0)?;
    let nginx = nginx_stream(target)?;

    let relay_addr = |r: &Relay| r.local_addr().expect("the relay listens");
    let mut ways = vec![
        Way { name: "direct to the backend".into(), addr: target, in_process: true, judged: false },
        Way { name: format!("built-in relay (default, busy_poll_us = {DEFAULT_BUSY_POLL_US})"), addr: relay_addr(&default), in_process: true, judged: true },
        Way { name: "built-in relay, busy_poll_us = 0".into(), addr: relay_addr(&sleeping), in_process: true, judged: false },
    ];
    if let Some(n) = &nginx {
        ways.push(Way { name: "nginx stream proxy (reference; 1 worker, tcp_nodelay)".into(), addr: n.addr, in_process: false, judged: false });
    }
    let mut out = String::new();
    // Sustained: two long blocks per way, as a client with steady traffic sees it. Alternating: forty
    // short blocks per way, taking turns, so that every way meets the scheduler's placements of the
    // threads alike (a direct round trip costs 4 µs when client and backend share a vCPU and 60 µs when
    // each must wake the other's halted vCPU, and which one happens changes from block to block).
    for (regime, blocks, per_block) in [("sustained", 2, ROUND_TRIPS), ("alternating", 40, ROUND_TRIPS / 20)] {
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); ways.len()];
        let mut cpu = vec![Duration::ZERO; ways.len()];
        // Take turns so that drift of the machine (other jobs, frequency) hits every way alike.
        for _ in 0..blocks {
            for (i, way) in ways.iter().enumerate() {
                let before = process_cpu();
                times[i].extend(round_trips(way.addr, per_block)?);
                cpu[i] += process_cpu().saturating_sub(before);
            }
        }
        // The CPU time covers each block's warm-up too.
        let round_trips_per_way = (blocks * (WARM_UP + per_block)) as u32;
        let samples: Vec<Sample> = times.into_iter().map(Sample::new).collect();
        let direct = us(samples[0].mean());
        for (i, (way, s)) in ways.iter().zip(&samples).enumerate() {
            let mean = us(s.mean());
            let added = (mean - direct) / direct * 100.0;
            let verdict = match way.judged {
                true if added < TARGET_PERCENT => format!(", within the {TARGET_PERCENT:.0} % target"),
                true => format!(", over the {TARGET_PERCENT:.0} % target"),
                false => String::new(),
            };
            let versus = if i == 0 { String::new() } else { format!(" — adds {:+.1} µs mean ({added:+.0} %{verdict})", mean - direct) };
            let cpu = if way.in_process { format!("; CPU of this process {:.1} µs per round trip", us(cpu[i] / round_trips_per_way)) } else { String::new() };
            out.push_str(&format!(
                "| relay, {regime} ({blocks} × {per_block}): {} | p50 {:.1} µs, p99 {:.1} µs, mean {mean:.1} µs{versus}{cpu} |\n",
                way.name,
                us(s.pct(50)),
                us(s.pct(99)),
            ));
        }
    }
    if nginx.is_none() {
        out.push_str("| relay: nginx reference | skipped: nginx with the stream module is not installed (apt-get install nginx libnginx-mod-stream) |\n");
    }
    for r in [&default, &sleeping] {
        let c = r.counters();
        anyhow::ensure!(c.failed == 0, "the relay failed {} connection(s)", c.failed);
    }
    Ok(out)
}

/// nginx's stream proxy in front of the backend, when nginx and its stream module are installed: what
/// an established user-space proxy adds on loopback.
fn nginx_stream(target: SocketAddr) -> anyhow::Result<Option<Nginx>> {
    let module = std::path::Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    if std::process::Command::new("nginx").arg("-v").output().is_err() || !module.exists() {
        return Ok(None);
    }
    let top = format!("load_module {};\n", module.display());
    Nginx::start(&top, |_, addr| format!("stream {{ server {{ listen {addr}; proxy_pass {target}; tcp_nodelay on; }} }}")).map(Some)
}
