//! # vigil-sdk: write a vigil policy plugin in one file
//!
//! A plugin implements [`Policy`] — typed parameters, a typed state, and a pure `decide` — and exports
//! it with [`export_policy!`]. Build it with `cargo build --target wasm32-wasip2`; the `.wasm` it
//! produces is a component of the `vigil:policy` world (see `wit/policy.wit`).
//!
//! ```ignore
//! use vigil_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Params { failures: Option<u32> }
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct State { took_over: bool }
//!
//! struct MyPolicy;
//!
//! impl Policy for MyPolicy {
//!     type Params = Params;
//!     type State = State;
//!
//!     fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
//!         let needed = params.failures.unwrap_or(tick.heartbeat.failures);
//!         if tick.node.mode == Mode::Standby && tick.peers.iter().all(|p| p.consecutive_failures >= needed) {
//!             state.took_over = true;
//!             return Decision::to(Mode::Active, "peer lost").start("app");
//!         }
//!         Decision::keep()
//!     }
//! }
//!
//! vigil_sdk::export_policy!(MyPolicy);
//! ```
//!
//! Parameters arrive as the policy file's `[params]` table and are deserialized with serde, so a typo
//! or a wrong type is refused at load time with serde's message (add `#[serde(deny_unknown_fields)]`).
//! State is serialized as JSON between ticks: readable in scenario files and tolerant of new fields
//! with `#[serde(default)]`.
//!
//! The SDK builds against `vigil:policy@0.3.0` ([`INTERFACE_VERSION`]): a plugin sees the group's
//! arbiter in `tick.arbiter` (with [`TickExt::role_held_elsewhere`] and the [`arbiter`] module for the
//! usual questions).
// The generated bindings need `unsafe` for the canonical ABI; everything written by hand here is safe.
#![deny(unsafe_code)]

pub mod arbiter;
pub mod decision;
pub mod handover;
pub mod restart;
mod tickext;

/// The generated bindings of the `vigil:policy` world.
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "vigil_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::vigil::policy::types::{
    Action, ActionResult, Alarm, ArbiterView, Check, Heartbeat, HookCall, InitialSync, Level, LocalNode, Mode,
    OperatorRequest, PeerCommand, PeerMessage, ReceivedCommand, Remote, Report, RestartInfo, Role, Service,
    ServiceState, SyncView, Tick, VipView,
};
pub use decision::Decision;
pub use tickext::TickExt;

/// The `vigil:policy` version this SDK builds plugins against (`wit/policy.wit`).
pub const INTERFACE_VERSION: &str = "0.3.0";

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::{
        arbiter::Priority, check_names, log, mode_word, restart::Resume, Action, ArbiterView, Check, Decision, InitialSync, Level, Mode, OperatorRequest, PeerCommand, Policy,
        Remote, Role, ServiceState, Tick, TickExt,
    };
}

/// A policy: the rules of one deployment.
pub trait Policy {
    /// The policy file's `[params]` table.
    type Params: serde::de::DeserializeOwned;
    /// What the plugin remembers between ticks.
    type State: serde::Serialize + serde::de::DeserializeOwned + Default;

    /// Extra checks on the parameters beyond their types. The message names the parameter.
    fn validate(_params: &Self::Params) -> Result<(), String> {
        Ok(())
    }

    /// Decide one tick. `state` holds what the previous decision left (default on the first tick) and
    /// is handed back to the next one.
    fn decide(params: &Self::Params, tick: &Tick, state: &mut Self::State) -> Decision;
}

/// The word `/role` and operator logs use for a mode: `ACTIVE`, `STANDBY`, `OFF`, `FAILED`, `HOLD-OFF`,
/// `STARTING`.
pub fn mode_word(mode: Mode) -> &'static str {
    match mode {
        Mode::Active => "ACTIVE",
        Mode::Standby => "STANDBY",
        Mode::Off => "OFF",
        Mode::Failed => "FAILED",
        Mode::HoldOff => "HOLD-OFF",
        Mode::Starting => "STARTING",
    }
}

/// Check a parameter that lists names (services, servers): none empty, none twice. The message names
/// the parameter.
pub fn check_names(param: &str, names: &[String]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if name.trim().is_empty() {
            return Err(format!("{param}: expected names, got an empty one"));
        }
        if !seen.insert(name) {
            return Err(format!("{param}: {name:?} is listed twice"));
        }
    }
    Ok(())
}

/// Write a line to the host's log.
pub fn log(level: Level, message: &str) {
    bindings::vigil::policy::host::log(level, message);
}

fn parse_params<P: Policy>(params: &str) -> Result<P::Params, String> {
    // An empty table arrives as `{}`; the host never sends an empty string, but be lenient.
    let text = if params.trim().is_empty() { "{}" } else { params };
    // Name the parameter at fault; the JSON's line and column mean nothing to the author of the TOML.
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.split(" at line ").next().unwrap_or(&inner).to_string();
        if path == "." || path.is_empty() {
            format!("params: {inner}")
        } else {
            format!("params.{path}: {inner}")
        }
    })
}

/// The body of the exported `validate`; used by [`export_policy!`].
#[doc(hidden)]
pub fn run_validate<P: Policy>(params: &str) -> Result<(), String> {
    P::validate(&parse_params::<P>(params)?)
}

/// The body of the exported `decide`; used by [`export_policy!`].
///
/// State that does not parse (written by an older, incompatible version of the plugin) is replaced by
/// the default and logged: a plugin upgrade must never wedge the node.
///
/// The first tick of a starting node goes through [`restart::present`]: the policy sees the node as
/// it was before a restart of the daemon (or `standby` on a fresh start), never `starting`.
#[doc(hidden)]
pub fn run_decide<P: Policy>(params: &str, tick: Tick) -> bindings::vigil::policy::types::Decision {
    let (tick, keep, why) = restart::present(tick);
    let params = match parse_params::<P>(params) {
        Ok(p) => p,
        // validate() accepted these very params, so this is a host bug; trapping reports it as a fault.
        Err(e) => panic!("{e}"),
    };
    let mut state: P::State = if tick.state.is_empty() {
        P::State::default()
    } else {
        serde_json::from_slice(&tick.state).unwrap_or_else(|e| {
            log(Level::Warn, &format!("previous state unreadable ({e}); starting from defaults"));
            P::State::default()
        })
    };
    let mut decision = P::decide(&params, &tick, &mut state);
    if decision.mode.is_none() {
        decision.mode = keep;
    }
    if let Some(why) = why {
        decision.reason = if decision.reason.is_empty() { why } else { format!("{why}; {}", decision.reason) };
    }
    let state = serde_json::to_vec(&state).expect("plugin state serializes to JSON");
    decision.into_wit(state)
}

/// Export a [`Policy`] as the plugin's `vigil:policy` implementation.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        struct __VigilPolicyExport;

        impl $crate::bindings::Guest for __VigilPolicyExport {
            fn validate(params: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                $crate::run_validate::<$policy>(&params)
            }

            fn decide(
                params: ::std::string::String,
                tick: $crate::Tick,
            ) -> $crate::bindings::vigil::policy::types::Decision {
                $crate::run_decide::<$policy>(&params, tick)
            }
        }

        $crate::bindings::export_bindings!(__VigilPolicyExport with_types_in $crate::bindings);
    };
}
