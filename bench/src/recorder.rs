//! The flight recorder's cost: a tick (`NodeCore::step` on the hot-standby plugin) with and without
//! the recorder, interleaved call by call so that the machine's noise falls on both; the writer
//! thread's time per record; and the bytes one hour of 1 s heartbeats takes in the ring. Both clocks
//! are shown: the wall clock (which on this shared 2-core machine includes being preempted) and the
//! loop thread's own CPU time. The same for a shadow policy (issue 12): what handing each tick to the
//! shadow costs the loop, and what the shadow's own thread spends per decision.

use super::{row, us, Sample, CALLS, WARM_UP};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vigil::model::{Role, Tick};
use vigil::node::{NodeCore, Observations};
use vigil::policy::{load, PluginDirs, Runtime};
use vigil::recorder::{self, Applied, Entry, Recorder, RecorderMetrics};

/// This thread's CPU time: what the loop's thread spends, without the time other threads (the
/// recorder's writer, other people's work on this shared machine) take the core from it.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for clock_gettime to fill.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn observations(t: &Tick) -> Observations {
    Observations {
        now_ms: t.now_ms,
        heartbeat: t.heartbeat,
        peers: t.peers.clone(),
        watched: t.watched.clone(),
        lan: t.lan.clone(),
        monitors: t.monitors.clone(),
        vip: t.vip.clone(),
        route: t.route.clone(),
        services: t.services.clone(),
        sync: t.sync.clone(),
        arbiter: t.arbiter.clone(),
        operator: t.operator,
        commands: t.commands.clone(),
        results: t.results.clone(),
        pending_actions: t.pending_actions,
    }
}

/// The world one heartbeat later: time, counters, and the jitter of the peer's last answer.
fn advance(t: &mut Tick, i: u64) {
    t.now_ms += 1_000;
    for peer in &mut t.peers {
        peer.record(true);
        peer.last_seen_ago_ms = Some(80 + (i * 37) % 90);
        for path in &mut peer.paths {
            path.record(true);
        }
    }
}

pub fn run() -> anyhow::Result<()> {
    let dirs = PluginDirs(vec![vigil_tests::plugins_dir()]);
    let runtime = Arc::new(Runtime::new(None)?);
    let policy = Arc::new(load(&runtime, &dirs, &vigil_tests::root().join("policies/hot-standby.toml")).map_err(|e| anyhow::anyhow!("{e}"))?);
    let peers = vec!["a".to_string()];
    let ring = tempfile::tempdir()?;
    let rec = Recorder::start(&recorder::dir_of(ring.path()), 64 << 20, "b", RecorderMetrics::default(), Box::new(|_| {}))?;

    let mut world = vigil_tests::tick(1_000_000, Vec::new());
    let mut plain = NodeCore::new("b", Role::Secondary, world.now_ms);
    let mut recording = NodeCore::new("b", Role::Secondary, world.now_ms);
    recording.recording = true;
    let (mut without, mut with) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    let (mut cpu_without, mut cpu_with) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    for i in 0..(WARM_UP + CALLS) as u64 {
        advance(&mut world, i);
        let (a, b) = (observations(&world), observations(&world));
        let mut timed = |recorded: bool, o: Observations| {
            let (started, cpu) = (Instant::now(), thread_cpu());
            if recorded {
                let outcome = recording.step(&policy, o, &peers);
                if let Some((tick, decided)) = recording.seen.take() {
                    let applied = Applied { mode: outcome.to, actions: outcome.actions.clone(), reason: outcome.reason.clone() };
                    rec.record(Entry { policy: rec.policy_id(&policy), tick, decided, applied });
                }
            } else {
                plain.step(&policy, o, &peers);
            }
            (started.elapsed(), thread_cpu() - cpu)
        };
        // Alternate which goes first: neither profits from a warm cache the other left.
        let (ta, tb) = if i % 2 == 0 { let ta = timed(false, a); (ta, timed(true, b)) } else { let tb = timed(true, b); (timed(false, a), tb) };
        if i >= WARM_UP as u64 {
            without.push(ta.0);
            with.push(tb.0);
            cpu_without.push(ta.1);
            cpu_with.push(tb.1);
        }
        // The writer polls every 50 ms; calls come far faster than ticks do, so let it catch up
        // (untimed) before its channel would overflow.
        while rec.status().records + 512 < i + 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let dropped = rec.status().dropped;
    drop(rec);
    let ratio = |a: Duration, b: Duration| (b.as_secs_f64() / a.as_secs_f64() - 1.0) * 100.0;
    for (clock, without, with) in [("wall clock", without, with), ("the loop thread's CPU time", cpu_without, cpu_with)] {
        let (without, with) = (Sample::new(without), Sample::new(with));
        row(
            &format!("tick, hot-standby, without the recorder ({CALLS} calls, interleaved; {clock})"),
            format!("p50 {} · p99 {} · mean {}", us(without.pct(50)), us(without.pct(99)), us(without.mean())),
        );
        row(
            &format!("tick, hot-standby, with the recorder (same run; {clock}; {dropped} dropped)"),
            format!(
                "p50 {} · p99 {} · mean {} — **{:+.1} % at p50, {:+.1} % in the mean**",
                us(with.pct(50)),
                us(with.pct(99)),
                us(with.mean()),
                ratio(without.pct(50), with.pct(50)),
                ratio(without.mean(), with.mean())
            ),
        );
    }

    shadow_cost(&runtime, &dirs, &policy, &peers)?;

    // One hour at 1 s heartbeats, through the real recorder; then the writer's own time per record.
    let hour = tempfile::tempdir()?;
    let dir = recorder::dir_of(hour.path());
    let rec = Recorder::start(&dir, 64 << 20, "b", RecorderMetrics::default(), Box::new(|_| {}))?;
    let mut world = vigil_tests::tick(1_000_000, Vec::new());
    let mut core = NodeCore::new("b", Role::Secondary, world.now_ms);
    core.recording = true;
    let mut values = Vec::with_capacity(3_600);
    for i in 0..3_600 {
        advance(&mut world, i);
        let outcome = core.step(&policy, observations(&world), &peers);
        let (tick, decided) = core.seen.take().expect("recording");
        let applied = Applied { mode: outcome.to, actions: outcome.actions.clone(), reason: outcome.reason.clone() };
        let entry = Entry { policy: rec.policy_id(&policy), tick, decided, applied };
        values.push(serde_json::json!({ "tick": entry.tick, "decided": entry.decided.as_ref().ok(), "applied": entry.applied }));
        rec.record(entry);
    }
    let status = rec.status();
    drop(rec);
    let bytes: u64 = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)).unwrap_or(0)).sum();
    let (records, _) = recorder::read(&dir, |_| Some(true)).map_err(|e| anyhow::anyhow!(e))?;
    anyhow::ensure!(records.len() == 3_600 && status.dropped == 0, "{} records read back, {} dropped", records.len(), status.dropped);
    let json_bytes: usize = records.iter().map(|r| serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0)).sum();
    row(
        "flight recorder, one hour at 1 s heartbeats (3600 steady ticks, hot-standby)",
        format!(
            "{:.1} KiB on disk ({:.1} B per tick; {:.1} MiB as plain JSON): 64 MiB hold {:.0} days",
            bytes as f64 / 1024.0,
            bytes as f64 / 3_600.0,
            json_bytes as f64 / (1 << 20) as f64,
            (64u64 << 20) as f64 / bytes as f64 / 24.0
        ),
    );
    let scratch = tempfile::tempdir()?;
    let mut writer = recorder::ring::RingWriter::open(scratch.path(), 64 << 20);
    let started = Instant::now();
    for v in &values {
        writer.append(v)?;
    }
    row("flight recorder writer thread, per record (serialize, delta, deflate, write; 3600 records)", us(started.elapsed() / 3_600));
    Ok(())
}

/// A tick with and without a shadow policy (the same hot-standby policy, as its own shadow), interleaved;
/// the loop's side is the tick kept and handed over. The shadow's thread is let catch up, untimed.
fn shadow_cost(runtime: &Arc<Runtime>, dirs: &PluginDirs, policy: &Arc<vigil::policy::LoadedPolicy>, peers: &[String]) -> anyhow::Result<()> {
    use vigil::node::shadow::{Shadow, ShadowMetrics, Side};
    let shadow = Shadow::start(runtime, dirs, &vigil_tests::root().join("policies/hot-standby.toml"), 0, ShadowMetrics::new(&[0.001])).map_err(|e| anyhow::anyhow!(e))?;
    let peers_arc: Arc<[String]> = peers.into();
    let mut world = vigil_tests::tick(1_000_000, Vec::new());
    let mut plain = NodeCore::new("b", Role::Secondary, world.now_ms);
    let mut shadowed = NodeCore::new("b", Role::Secondary, world.now_ms);
    shadowed.recording = true;
    let (mut cpu_without, mut cpu_with) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    for i in 0..(WARM_UP + CALLS) as u64 {
        advance(&mut world, i);
        let (a, b) = (observations(&world), observations(&world));
        let mut timed = |with: bool, o: Observations| {
            let cpu = thread_cpu();
            if with {
                let outcome = shadowed.step(policy, o, peers);
                if let Some((tick, decided)) = shadowed.seen.take() {
                    let live = match &decided {
                        Ok(d) => Side::of(&tick, d),
                        Err(_) => Side { mode: outcome.to, actions: Vec::new(), reason: outcome.reason.clone() },
                    };
                    shadow.offer(tick, live, peers_arc.clone());
                }
            } else {
                plain.step(policy, o, peers);
            }
            thread_cpu() - cpu
        };
        let (ta, tb) = if i % 2 == 0 { let ta = timed(false, a); (ta, timed(true, b)) } else { let tb = timed(true, b); (timed(false, a), tb) };
        if i >= WARM_UP as u64 {
            cpu_without.push(ta);
            cpu_with.push(tb);
        }
        // Calls come far faster than ticks: let the shadow catch up (untimed) before its queue of
        // 16 would overflow.
        while { let s = shadow.status(); s.ticks + s.skipped + 8 < i + 1 } {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let status = shadow.status();
    let (without, with) = (Sample::new(cpu_without), Sample::new(cpu_with));
    let ratio = |a: Duration, b: Duration| (b.as_secs_f64() / a.as_secs_f64() - 1.0) * 100.0;
    row(
        &format!("tick, hot-standby, without a shadow ({CALLS} calls, interleaved; the loop thread's CPU time)"),
        format!("p50 {} · p99 {} · mean {}", us(without.pct(50)), us(without.pct(99)), us(without.mean())),
    );
    row(
        &format!("tick, hot-standby, with a shadow policy (same run; the loop thread's CPU time; {} skipped, {} divergences)", status.skipped, status.divergences),
        format!(
            "p50 {} · p99 {} · mean {} — **{:+.1} % at p50, {:+.1} % in the mean**",
            us(with.pct(50)),
            us(with.pct(99)),
            us(with.mean()),
            ratio(without.pct(50), with.pct(50)),
            ratio(without.mean(), with.mean())
        ),
    );
    row(
        "shadow thread, per decision (off the loop; `/status.shadow` time figures)",
        format!("mean {:.1} µs · max {} µs over {} decisions", status.total_us as f64 / status.ticks.max(1) as f64, status.max_us, status.ticks),
    );
    Ok(())
}
