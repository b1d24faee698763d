//! The sandbox holds: a plugin that loops, allocates without bound, traps, returns an oversized state
//! or an undeclared action is stopped within its policy's limits with the right [`Fault`], and the very
//! next tick of the same loaded policy decides normally.
//!
//! Also: the on-disk compile cache (hit, identical behaviour, corruption survived) and the plugin's
//! view of the world (no clock, environment, filesystem, network; fixed randomness).
//!
//! Faults come from the `testkit` plugin, which misbehaves only on ticks whose time lies in
//! `[fault_from_ms, fault_until_ms)`: the load's dry run (at the real time) passes, tick 1_500 faults,
//! tick 2_500 does not.

use std::path::Path;
use std::time::{Duration, Instant};
use vigil::model::{Decision, Mode};
use vigil::policy::{Fault, LoadedPolicy, Runtime};
use vigil_tests::{load, plugin, runtime, state_json, testkit_policy, tick};

const IN_WINDOW_MS: u64 = 1_500;
const AFTER_WINDOW_MS: u64 = 2_500;
/// Slack over the time limit for a fault to come back: instantiation, unwinding, a loaded CI machine.
const MARGIN: Duration = Duration::from_millis(400);

/// A testkit policy deciding `active` that misbehaves with `fault` in [1000, 2000).
fn faulty(runtime: &Runtime, dir: &Path, fault: &str, limits: &str) -> LoadedPolicy {
    let params = format!("mode = \"active\"\nfault = \"{fault}\"\nfault_from_ms = 1000\nfault_until_ms = 2000");
    let policy = testkit_policy(dir, &format!("{fault}.toml"), &params, limits);
    load(runtime, &policy).unwrap_or_else(|e| panic!("load {fault}: {e}"))
}

/// Decide the in-window tick, expecting a fault; returns it with the time it took.
fn fault_of(policy: &LoadedPolicy) -> (Fault, Duration) {
    let started = Instant::now();
    let result = policy.decide(&tick(IN_WINDOW_MS, Vec::new()), &["a".to_string()]);
    let took = started.elapsed();
    match result {
        Err(fault) => (fault, took),
        Ok(d) => panic!("expected a fault, got a decision {d:?}"),
    }
}

/// After a fault, the same policy decides the next (out-of-window) tick as if nothing happened, and
/// the state it returns starts from the caller's bytes (nothing of the faulted call survives).
fn next_tick_is_normal(policy: &LoadedPolicy) {
    let state = br#"{"ticks":41}"#.to_vec();
    let d: Decision = policy.decide(&tick(AFTER_WINDOW_MS, state), &["a".to_string()]).expect("the tick after a fault decides");
    assert_eq!(d.mode, Some(Mode::Active));
    assert_eq!(state_json(&d.state)["ticks"], 42, "state carried by the caller");
}

fn assert_within(what: &str, took: Duration, limit_ms: u64) {
    let bound = Duration::from_millis(limit_ms) + MARGIN;
    println!("{what}: fault returned after {:.1} ms (limit {limit_ms} ms, bound {} ms)", took.as_secs_f64() * 1e3, bound.as_millis());
    assert!(took <= bound, "{what}: took {took:?}, over {bound:?}");
}

/// An endless loop is interrupted at the policy's `limits.time_ms` (20 ms): not before, and not much
/// after.
#[test]
fn loop_is_stopped_at_a_20ms_limit() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = faulty(&runtime, dir.path(), "loop", "[limits]\ntime_ms = 20");
    let (fault, took) = fault_of(&policy);
    assert_eq!(fault, Fault::Timeout { limit_ms: 20 });
    assert!(took >= Duration::from_millis(19), "interrupted after {took:?}, before its 20 ms");
    assert_within("loop, 20 ms", took, 20);
    next_tick_is_normal(&policy);
}

/// Sleeping in a loop blocks in host calls (WASI clock subscriptions), where an epoch deadline cannot
/// interrupt: the runtime makes every subscription ready at once, so the loop spins in wasm and is
/// stopped at its limit like any other.
#[test]
fn a_sleeping_loop_is_stopped_at_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = faulty(&runtime, dir.path(), "sleep-loop", "[limits]\ntime_ms = 20");
    let (fault, took) = fault_of(&policy);
    assert_eq!(fault, Fault::Timeout { limit_ms: 20 });
    assert_within("sleep loop, 20 ms", took, 20);
    next_tick_is_normal(&policy);
}

/// An hour-long sleep does not hold the host: it returns at once and the plugin decides.
#[test]
fn a_long_sleep_returns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = faulty(&runtime, dir.path(), "nap", "");
    let started = Instant::now();
    let d = policy.decide(&tick(IN_WINDOW_MS, Vec::new()), &["a".to_string()]).expect("a nap is not a fault");
    assert_eq!(d.mode, Some(Mode::Active));
    assert_within("a one-hour sleep", started.elapsed(), 50);
}

/// With no `[limits]`, the default 50 ms applies.
#[test]
fn loop_is_stopped_at_the_default_50ms_limit() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = faulty(&runtime, dir.path(), "loop", "");
    let (fault, took) = fault_of(&policy);
    assert_eq!(fault, Fault::Timeout { limit_ms: 50 });
    assert!(took >= Duration::from_millis(49), "interrupted after {took:?}, before its 50 ms");
    assert_within("loop, default 50 ms", took, 50);
    next_tick_is_normal(&policy);
}

/// Allocating without bound stops at `limits.memory_mib` and is reported as a memory fault, not a
/// generic trap.
///
/// Filling 16 MiB takes ~10 ms, but on a loaded 2-core machine it can pass the default 50 ms and
/// become a timeout: the time limit is raised so that only the memory limit can stop it.
#[test]
fn unbounded_allocation_is_stopped_at_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = faulty(&runtime, dir.path(), "alloc", "[limits]\nmemory_mib = 16\ntime_ms = 1000");
    let (fault, took) = fault_of(&policy);
    assert_eq!(fault, Fault::Memory { limit_mib: 16 });
    assert_within("alloc, 16 MiB", took, policy.file.limits.time_ms);
    next_tick_is_normal(&policy);
}

/// A panic in the plugin is a trap fault.
#[test]
fn trap_is_a_fault() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = faulty(&runtime, dir.path(), "trap", "");
    let (fault, took) = fault_of(&policy);
    assert!(matches!(fault, Fault::Trap(_)), "{fault:?}");
    assert_eq!(fault.kind(), "trap");
    assert_within("trap", took, policy.file.limits.time_ms);
    next_tick_is_normal(&policy);
}

/// The trap fault carries the plugin's panic message, so an operator sees why it trapped.
///
/// Ignored until the host keeps the line after "panicked at …" (Rust ≥ 1.90 prints the message on
/// the next line): see the report of the Foundation tests.
#[test]
fn trap_fault_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = faulty(&runtime, dir.path(), "trap", "");
    let (fault, _) = fault_of(&policy);
    assert!(fault.to_string().contains("testkit: trapping on purpose"), "{fault}");
}

/// A decision whose state is over `limits.state_kib` is refused as an invalid decision.
#[test]
fn oversized_state_is_an_invalid_decision() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    // Serializing a 1 MiB state is slow enough to risk the 50 ms default on a loaded machine.
    let policy = faulty(&runtime, dir.path(), "huge-state", "[limits]\ntime_ms = 1000");
    let (fault, took) = fault_of(&policy);
    match &fault {
        Fault::InvalidDecision(message) => assert!(message.contains("over the policy's limit of 65536 bytes"), "{message}"),
        other => panic!("expected an invalid decision, got {other:?}"),
    }
    assert_within("huge-state", took, policy.file.limits.time_ms);
    next_tick_is_normal(&policy);
}

/// An action on a service the policy did not declare is refused, naming the service.
#[test]
fn undeclared_action_is_an_invalid_decision() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = faulty(&runtime, dir.path(), "undeclared-action", "[services.app]\nstart = \"true\"\nstop = \"true\"");
    let (fault, took) = fault_of(&policy);
    match &fault {
        Fault::InvalidDecision(message) => {
            assert!(message.contains("\"not-a-declared-service\" is not declared in the policy"), "{message}")
        }
        other => panic!("expected an invalid decision, got {other:?}"),
    }
    assert_within("undeclared-action", took, policy.file.limits.time_ms);
    next_tick_is_normal(&policy);
}

/// Faults are per call: two policies faulting at the same time on two threads do not disturb a third
/// deciding normally, and each gets its own fault.
#[test]
fn faults_on_other_threads_do_not_disturb_a_healthy_policy() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let looping = faulty(&runtime, dir.path(), "loop", "[limits]\ntime_ms = 30");
    let hoarding = faulty(&runtime, dir.path(), "alloc", "[limits]\nmemory_mib = 16\ntime_ms = 1000");
    let healthy = testkit_policy(dir.path(), "healthy.toml", "mode = \"standby\"", "[limits]\ntime_ms = 1000");
    let healthy = load(&runtime, &healthy).unwrap();
    std::thread::scope(|s| {
        let a = s.spawn(|| fault_of(&looping).0);
        let b = s.spawn(|| fault_of(&hoarding).0);
        let mut state = Vec::new();
        for n in 1..=20u64 {
            let d = healthy.decide(&tick(IN_WINDOW_MS + n, state), &[]).expect("healthy decides");
            assert_eq!(d.mode, Some(Mode::Standby));
            state = d.state;
        }
        assert_eq!(state_json(&state)["ticks"], 20);
        assert_eq!(a.join().unwrap(), Fault::Timeout { limit_ms: 30 });
        assert_eq!(b.join().unwrap(), Fault::Memory { limit_mib: 16 });
    });
}

/// The compile cache: a second runtime on the same directory takes the compiled plugin from disk and
/// decides exactly as the first; a corrupted cache file is discarded and recompiled, never fatal.
#[test]
fn compile_cache_hits_and_survives_corruption() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = plugin("testkit");
    let params = r#"{"mode":"active","start":["app"]}"#;
    let limits = vigil::policy::file::Limits::default();
    let the_tick = tick(AFTER_WINDOW_MS, br#"{"ticks":1}"#.to_vec());
    let decide = |runtime: &Runtime| {
        let started = Instant::now();
        let plugin = runtime.load(&wasm).expect("load testkit");
        let took = started.elapsed();
        let decision = plugin.decide(params, &the_tick, &limits).expect("decide");
        (plugin.from_cache(), took, decision)
    };

    let (hit, cold, first) = decide(&Runtime::new(Some(cache.path().to_path_buf())).unwrap());
    assert!(!hit, "an empty cache cannot hit");
    let files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(files.len(), 1, "one artifact cached: {files:?}");
    assert!(files[0].extension().is_some_and(|e| e == "cwasm"), "{files:?}");

    let (hit, warm, second) = decide(&Runtime::new(Some(cache.path().to_path_buf())).unwrap());
    assert!(hit, "the second runtime loads from the cache");
    assert_eq!(first, second, "a cached plugin decides identically");
    println!("testkit load: compile {:.1} ms, cache hit {:.1} ms", cold.as_secs_f64() * 1e3, warm.as_secs_f64() * 1e3);

    for (what, bytes) in [("garbage", b"definitely not an ELF file".to_vec()), ("truncated", {
        let full = std::fs::read(&files[0]).unwrap();
        full[..full.len() / 3].to_vec()
    })] {
        std::fs::write(&files[0], &bytes).unwrap();
        let (hit, _, third) = decide(&Runtime::new(Some(cache.path().to_path_buf())).unwrap());
        assert!(!hit, "{what}: a corrupted artifact must not be used");
        assert_eq!(first, third, "{what}: the recompiled plugin decides identically");
        let (hit, _, _) = decide(&Runtime::new(Some(cache.path().to_path_buf())).unwrap());
        assert!(hit, "{what}: the recompiled artifact was cached again");
    }
}

/// A plugin sees no real clock (the Unix epoch), no environment, no filesystem, no network, and the
/// same "random" numbers on every call: the same tick gives the same decision.
#[test]
fn plugin_cannot_see_the_world() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let policy = testkit_policy(dir.path(), "probe.toml", "mode = \"standby\"\nprobe = true", "");
    let policy = load(&runtime, &policy).unwrap();
    let t = tick(AFTER_WINDOW_MS, Vec::new());
    let first = policy.decide(&t, &[]).unwrap();
    let probe = state_json(&first.state)["probe"].clone();
    println!("probe: {probe}");
    assert_eq!(probe["clock_ms"], 0, "the wall clock is frozen at the epoch: {probe}");
    assert_eq!(probe["env_vars"], 0, "{probe}");
    assert_eq!(probe["fs_root"], false, "{probe}");
    assert_eq!(probe["net"], false, "{probe}");
    assert_eq!(probe["instance_calls"], 1, "a fresh instance per call: {probe}");
    std::thread::sleep(Duration::from_millis(5));
    let second = policy.decide(&t, &[]).unwrap();
    assert_eq!(first, second, "same tick, same decision (randomness included)");
}

/// Instances come from a pool of reused slots (`policy::runtime::Pool`): every call must still see
/// the plugin's initial memory, whatever the calls before it did in the same slot (decided, trapped,
/// ran out of memory), and calls from several threads at once each get their own clean instance.
#[test]
fn every_call_sees_a_fresh_instance_in_a_reused_slot() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    assert!(runtime.pool().is_some(), "this machine reserves the instance pool");
    // A generous time limit: four threads on a loaded 2-core machine must not turn a slow call into
    // a timeout fault; what is checked here is the memory each call starts from.
    let probing = load(&runtime, &testkit_policy(dir.path(), "probe.toml", "mode = \"standby\"\nprobe = true", "[limits]\ntime_ms = 5000")).unwrap();
    let trapping = faulty(&runtime, dir.path(), "trap", "");
    let hungry = faulty(&runtime, dir.path(), "alloc", "[limits]\nmemory_mib = 8");
    let calls = |policy: &LoadedPolicy| {
        let decision = policy.decide(&tick(AFTER_WINDOW_MS, Vec::new()), &[]).unwrap_or_else(|fault| panic!("the probe faulted: {fault}"));
        state_json(&decision.state)["probe"]["instance_calls"].clone()
    };
    // Odd rounds decide in an instance made ahead by `prepare`, as the node loop does between ticks;
    // even rounds in one made inside the call. Both must be as fresh.
    for round in 0..200 {
        let ahead = round % 2 == 1;
        if ahead {
            for policy in [&probing, &trapping, &hungry] {
                policy.prepare();
            }
        }
        assert_eq!(calls(&probing), 1, "round {round} (prepared: {ahead}): a call saw a global left by an earlier call");
        if round % 10 < 2 {
            assert!(matches!(fault_of(&trapping).0, Fault::Trap(_)), "round {round} (prepared: {ahead})");
            assert!(matches!(fault_of(&hungry).0, Fault::Memory { .. }), "round {round} (prepared: {ahead})");
        }
    }
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (probing, calls) = (&probing, &calls);
            scope.spawn(move || {
                for round in 0..100 {
                    // Instances made ahead on one thread are taken by a call on another.
                    if (thread + round) % 3 == 0 {
                        probing.prepare();
                    }
                    assert_eq!(calls(probing), 1, "thread {thread}, round {round}");
                }
            });
        }
    });
}

/// An instance made ahead of a call (`LoadedPolicy::prepare`, between the loop's ticks) gets its time
/// limit from the call, not from when it was made: a plugin that spins decides a timeout fault after
/// its limit, and one prepared long before its call still has its whole limit.
#[test]
fn a_prepared_instance_has_its_whole_time_limit_from_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let probing = load(&runtime, &testkit_policy(dir.path(), "probe.toml", "mode = \"standby\"\nprobe = true", "[limits]\ntime_ms = 200")).unwrap();
    probing.prepare();
    // Longer than the limit: a deadline counted from `prepare` would have passed.
    std::thread::sleep(Duration::from_millis(400));
    let decision = probing.decide(&tick(AFTER_WINDOW_MS, Vec::new()), &[]).unwrap_or_else(|fault| panic!("prepared long before: {fault}"));
    assert_eq!(state_json(&decision.state)["probe"]["instance_calls"], 1);

    let spinning = faulty(&runtime, dir.path(), "loop", "[limits]\ntime_ms = 50");
    spinning.prepare();
    let started = std::time::Instant::now();
    let (fault, _) = fault_of(&spinning);
    assert_eq!(fault, Fault::Timeout { limit_ms: 50 }, "a prepared instance that spins");
    assert!(started.elapsed() >= Duration::from_millis(50), "stopped at its limit, not before: {:?}", started.elapsed());
}
