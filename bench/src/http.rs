//! The load balancer's view, side by side with nginx: requests per second and latency of `/active`
//! on the active node of a real pair (release `vigil run`), against nginx answering `return 200` on
//! one worker, both driven by `wrk` (1 thread, 32 connections, 5 s) in alternating rounds. Also the
//! footprint of an idle daemon (resident memory and threads) beside an idle nginx worker's.
//! `wrk` and `nginx` are installed with apt when missing (root).

use crate::nginx::Nginx;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vigil::cluster::{exactly_one_active, Cluster, PairSpec, Timing};

const ROUNDS: usize = 3;

/// nginx with one worker answering 200 to every request.
fn nginx_http() -> anyhow::Result<Nginx> {
    Nginx::start("", |d, addr| {
        format!(
            "http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen {addr}; location / {{ return 200 \"ACTIVE\\n\"; }} }} }}"
        )
    })
}

/// One `wrk` run: requests per second and the 99th percentile latency in ms.
fn wrk(url: &str) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("wrk").args(["-t1", "-c32", "-d5s", "--latency", url]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "wrk {url}: {text}");
    anyhow::ensure!(!text.contains("Non-2xx"), "wrk {url}: answers other than 200:\n{text}");
    let field = |prefix: &str| text.lines().map(str::trim).find_map(|l| l.strip_prefix(prefix)).map(str::trim);
    let rps: f64 = field("Requests/sec:").ok_or_else(|| anyhow::anyhow!("wrk: no Requests/sec in\n{text}"))?.parse()?;
    let p99 = field("99%").ok_or_else(|| anyhow::anyhow!("wrk: no 99% line in\n{text}"))?;
    Ok((rps, millis(p99)?))
}

/// wrk's durations: `812.00us`, `1.20ms`, `1.01s`.
fn millis(s: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else {
        anyhow::bail!("wrk: unknown duration {s:?}")
    };
    Ok(number.parse::<f64>()? * factor)
}

/// Resident memory (MiB) and threads of a process, from `/proc/PID/status`.
fn footprint(pid: u32) -> anyhow::Result<(f64, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<u64>().ok())
    };
    let rss_kib = field("VmRSS:").ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status: no VmRSS"))?;
    let threads = field("Threads:").ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status: no Threads"))?;
    Ok((rss_kib as f64 / 1024.0, threads as u32))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(exe: &Path) -> anyhow::Result<()> {
    crate::vip::install("wrk", "wrk")?;
    crate::vip::install("nginx", "nginx")?;
    let dir = tempfile::tempdir()?;
    // The shipped default heartbeat: an idle pair, as a load balancer finds it.
    let timing = Timing { interval_ms: 1000, timeout_ms: 500, failures: 3, successes: 3 };
    let spec = PairSpec { timing, params: String::new(), plugin_dirs: vec![vigil_tests::plugins_dir()] };
    let mut c = Cluster::hot_standby_pair(exe, dir.path(), &spec)?;
    c.start(0)?;
    c.start(1)?;
    let active = c.wait_for(Duration::from_secs(30), exactly_one_active).await?;
    let nginx = nginx_http()?;
    let nginx_url = format!("http://{}/active", nginx.addr);
    // Idle for a few ticks, past start-up (its code is released 3 s after the loop starts), before
    // the footprint is read.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pid = c.nodes[active].pid().ok_or_else(|| anyhow::anyhow!("the active node is not running"))?;
    let (rss, threads) = footprint(pid)?;
    let (nginx_rss, nginx_threads) = footprint(nginx.child.id())?;
    crate::row(
        "idle footprint, the active node of a pair (interval 1000 ms), its plugin compiled at start",
        format!("vigil {rss:.1} MiB RSS, {threads} threads · nginx (1 worker, no master) {nginx_rss:.1} MiB, {nginx_threads} thread(s)"),
    );
    // The standby restarted: its plugin now comes from the compile cache, as on every start but the
    // first of a node.
    let standby = 1 - active;
    c.kill(standby);
    c.start(standby)?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pid = c.nodes[standby].pid().ok_or_else(|| anyhow::anyhow!("the restarted node is not running"))?;
    let (rss, threads) = footprint(pid)?;
    crate::row(
        "idle footprint, the standby restarted (plugin from the compile cache)",
        format!("vigil {rss:.1} MiB RSS, {threads} threads · nginx (1 worker, no master) {nginx_rss:.1} MiB, {nginx_threads} thread(s)"),
    );

    let vigil_url = format!("{}/active", c.nodes[active].url);
    let (mut v, mut n) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        n.push(tokio::task::block_in_place(|| wrk(&nginx_url))?);
        v.push(tokio::task::block_in_place(|| wrk(&vigil_url))?);
    }
    let summary = |runs: &[(f64, f64)]| {
        format!("{:.0} req/s, p99 {:.2} ms", median(runs.iter().map(|r| r.0).collect()), median(runs.iter().map(|r| r.1).collect()))
    };
    let ratio = median(v.iter().map(|r| r.0).collect()) / median(n.iter().map(|r| r.0).collect());
    crate::row(
        &format!("`GET /active`, wrk 1 thread 32 connections 5 s, median of {ROUNDS} alternating rounds"),
        format!("vigil {} · nginx 1 worker `return 200` {} · vigil/nginx {:.0} %", summary(&v), summary(&n), ratio * 100.0),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_durations_are_read_in_milliseconds() {
        assert_eq!(super::millis("812.00us").unwrap(), 0.812);
        assert_eq!(super::millis("1.20ms").unwrap(), 1.2);
        assert_eq!(super::millis("1.01s").unwrap(), 1010.0);
        assert!(super::millis("3m").is_err());
    }
}
