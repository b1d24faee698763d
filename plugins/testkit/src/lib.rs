//! `testkit`: a policy plugin that exists to test the host, in the spirit of Spin's test guests.
//!
//! It decides the mode named by its `mode` parameter, counts its ticks in its state, and — inside a
//! window of tick times — misbehaves in the way its `fault` parameter names: loop forever, allocate
//! without bound, trap, return an oversized state, or return actions its policy never declared. The
//! host tests prove that each misbehaviour is harmless.
//!
//! Two switches make the host's side visible in the state, for scenario files and tests to check:
//! `echo` records what the plugin saw of its tick (clock, peers and their counters, services, results
//! of the previous actions), and `probe` records what the sandbox lets it see of the real world
//! (clock, environment, filesystem, randomness), which must be nothing.

use serde::{Deserialize, Serialize};
use vigil_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The mode every tick decides.
    mode: String,
    /// `none`, `loop`, `alloc`, `trap`, `huge-state`, `undeclared-action`.
    #[serde(default = "none")]
    fault: String,
    /// The fault happens on ticks whose time is in `[fault_from_ms, fault_until_ms)`.
    #[serde(default)]
    fault_from_ms: u64,
    #[serde(default = "forever")]
    fault_until_ms: u64,
    /// When set, `validate` refuses the params with this message.
    #[serde(default)]
    reject: Option<String>,
    /// Services to start on every tick (to exercise actions).
    #[serde(default)]
    start: Vec<String>,
    /// Record what the plugin saw of each tick in `state.seen`.
    #[serde(default)]
    echo: bool,
    /// Record what the sandbox lets the plugin see in `state.probe`.
    #[serde(default)]
    probe: bool,
}

fn none() -> String {
    "none".into()
}

fn forever() -> u64 {
    u64::MAX
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    ticks: u64,
    #[serde(default)]
    padding: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seen: Option<Seen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    probe: Option<Probe>,
}

/// What the plugin saw of its tick (param `echo`).
#[derive(Serialize, Deserialize)]
struct Seen {
    now_ms: u64,
    mode: String,
    tick_count: u64,
    peers: Vec<SeenPeer>,
    /// Service name → state.
    services: std::collections::BTreeMap<String, String>,
    /// The previous actions' results, as `ACTION ok` or `ACTION failed`.
    results: Vec<String>,
    /// The pending operator request, `""` when none (TOML has no null to expect).
    operator: String,
}

#[derive(Serialize, Deserialize)]
struct SeenPeer {
    id: String,
    reachable: bool,
    failures: u32,
    successes: u32,
}

/// What the sandbox lets a plugin observe (param `probe`): everything here must be empty or fixed.
#[derive(Serialize, Deserialize)]
struct Probe {
    /// `SystemTime::now()` in ms since the Unix epoch.
    clock_ms: u64,
    /// How many environment variables the plugin sees.
    env_vars: usize,
    /// Whether it can list `/`.
    fs_root: bool,
    /// Whether it can open a TCP connection to 127.0.0.1:22.
    net: bool,
    /// A hash keyed by std's random seed: identical on every call when randomness is fixed.
    random: u64,
    /// Calls this instance has served, counted in a global of its linear memory: 1 when every call
    /// gets a fresh instance whose memory was reset to the plugin's initial image.
    instance_calls: u32,
}

/// Counts `probe` calls in this instance (a global in linear memory).
static INSTANCE_CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn probe() -> Probe {
    use std::hash::BuildHasher;
    Probe {
        clock_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(u64::MAX),
        env_vars: std::env::vars_os().count(),
        fs_root: std::fs::read_dir("/").is_ok(),
        net: std::net::TcpStream::connect(("127.0.0.1", 22)).is_ok(),
        random: std::collections::hash_map::RandomState::new().hash_one(0u8),
        instance_calls: INSTANCE_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Active => "active",
        Mode::Standby => "standby",
        Mode::Off => "off",
        Mode::Failed => "failed",
        Mode::HoldOff => "hold-off",
        Mode::Starting => "starting",
    }
}

fn action_text(action: &Action) -> String {
    match action {
        Action::Start(s) => format!("start:{s}"),
        Action::Stop(s) => format!("stop:{s}"),
        Action::Restart(s) => format!("restart:{s}"),
        other => format!("{other:?}"),
    }
}

fn seen(tick: &Tick) -> Seen {
    Seen {
        now_ms: tick.now_ms,
        mode: mode_name(tick.node.mode).into(),
        tick_count: tick.node.tick_count,
        peers: tick
            .peers
            .iter()
            .map(|p| SeenPeer {
                id: p.id.clone(),
                reachable: p.reachable,
                failures: p.consecutive_failures,
                successes: p.consecutive_successes,
            })
            .collect(),
        services: tick
            .services
            .iter()
            .map(|s| {
                let state = match s.state {
                    ServiceState::Running => "running",
                    ServiceState::Stopped => "stopped",
                    ServiceState::Unknown => "unknown",
                };
                (s.name.clone(), state.to_string())
            })
            .collect(),
        results: tick
            .results
            .iter()
            .map(|r| format!("{} {}", action_text(&r.action), if r.ok { "ok" } else { "failed" }))
            .collect(),
        operator: tick.operator.map_or(String::new(), |o| {
            match o {
                OperatorRequest::Standby => "standby",
                OperatorRequest::Active => "active",
                OperatorRequest::Restore => "restore",
                OperatorRequest::RestartHa => "restart-ha",
                OperatorRequest::PlannedReboot => "planned-reboot",
            }
            .to_string()
        }),
    }
}

fn parse_mode(name: &str) -> Option<Mode> {
    Some(match name {
        "active" => Mode::Active,
        "standby" => Mode::Standby,
        "off" => Mode::Off,
        "failed" => Mode::Failed,
        "hold-off" => Mode::HoldOff,
        _ => return None,
    })
}

struct Testkit;

impl Policy for Testkit {
    type Params = Params;
    type State = State;

    fn validate(params: &Params) -> Result<(), String> {
        if let Some(message) = &params.reject {
            return Err(message.clone());
        }
        if parse_mode(&params.mode).is_none() {
            return Err(format!("mode: expected active, standby, off, failed or hold-off, got {:?}", params.mode));
        }
        match params.fault.as_str() {
            "none" | "loop" | "sleep-loop" | "nap" | "alloc" | "trap" | "huge-state" | "undeclared-action" => Ok(()),
            other => Err(format!("fault: unknown fault {other:?}")),
        }
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        state.ticks += 1;
        state.seen = params.echo.then(|| seen(tick));
        state.probe = params.probe.then(probe);
        let faulting = (params.fault_from_ms..params.fault_until_ms).contains(&tick.now_ms);
        let mut decision = Decision::to(parse_mode(&params.mode).expect("validated"), format!("tick {}", state.ticks));
        if faulting {
            match params.fault.as_str() {
                "loop" => {
                    log(Level::Info, "looping forever");
                    let mut n: u64 = 0;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                "alloc" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "trap" => panic!("testkit: trapping on purpose"),
                // Blocking in the host instead of spinning in wasm: must still end at the deadline.
                "sleep-loop" => loop {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                },
                // One long sleep: a plugin's clock never blocks, so this returns at once.
                "nap" => std::thread::sleep(std::time::Duration::from_secs(3600)),
                // The state the SDK serializes is over the host's cap.
                "huge-state" => state.padding = "x".repeat(1 << 20),
                "undeclared-action" => decision = decision.start("not-a-declared-service"),
                _ => {}
            }
        }
        for service in &params.start {
            decision = decision.start(service);
        }
        decision
    }
}

vigil_sdk::export_policy!(Testkit);
