//! `testkit`: a policy plugin that exists to test the host, in the spirit of Spin's test guests.
//!
//! It decides the mode named by its `mode` parameter, counts its ticks in its state, and — inside a
//! window of tick times — misbehaves in the way its `fault` parameter names: loop forever, allocate
//! without bound, trap, return an oversized state, or return actions its policy never declared. The
//! host tests prove that each misbehaviour is harmless.

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
            "none" | "loop" | "alloc" | "trap" | "huge-state" | "undeclared-action" => Ok(()),
            other => Err(format!("fault: unknown fault {other:?}")),
        }
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        state.ticks += 1;
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
