//! voice: a FortiVoice-like PBX pair (deployments.md §7, seed `000_…`): active-passive like the mail
//! gateway (the shared `active-passive` engine), plus
//!
//! - a planned reboot: the primary's operator `planned-reboot` tells the secondary to hold off
//!   (`hold-off`, default 5 minutes) instead of taking over;
//! - an alarm on every automatic takeover: active calls were interrupted (registered idle extensions
//!   keep working);
//! - no automatic failback: a restarted primary that finds the secondary active stays standby unless
//!   `auto_failback` is set; an operator `restore` brings it back.
//!
//! `docs/plugins/voice.md` has the parameters and the rules.

use active_passive::{Config, OnFailure, State};
use serde::Deserialize;
use vigil_sdk::prelude::*;

/// Five minutes, the deployment's default hold-off.
const DEFAULT_HOLD_MS: u64 = 300_000;

/// The policy file's `[params]`. The configured mode is the node's `[node] role`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// How long the heartbeat must be lost on every path before failover; default the node's
    /// `[heartbeat] failures` checks.
    #[serde(default)]
    heartbeat_lost_threshold_ms: Option<u64>,
    /// The peer's service probes (SIP, HTTP) count as heartbeat.
    #[serde(default)]
    remote_services_as_heartbeat: bool,
    /// Consecutive failed local monitor checks before the on-failure option applies.
    #[serde(default)]
    local_failures: Option<u32>,
    /// Consecutive good local checks to recover from `failed`, and before a failback.
    #[serde(default)]
    recovery_successes: Option<u32>,
    /// `switch-off` (default), `restore-original-role` or `restore-slave-role`.
    #[serde(default)]
    on_failure: OnFailure,
    /// A restarted primary takes the role back from the active secondary once healthy.
    #[serde(default)]
    auto_failback: bool,
    /// How long the secondary holds off when the primary announces a planned reboot.
    #[serde(default = "default_hold")]
    planned_reboot_hold_ms: u64,
    /// Service names in start order; stopped in reverse.
    #[serde(default)]
    start_order: Vec<String>,
    /// Whether the policy declares `[[vip]]` entries to claim and release (default true).
    #[serde(default = "yes")]
    vip: bool,
}

fn yes() -> bool {
    true
}

fn default_hold() -> u64 {
    DEFAULT_HOLD_MS
}

impl Params {
    fn config(&self) -> Config {
        Config {
            plugin: "voice",
            config_only: false,
            heartbeat_lost_threshold_ms: self.heartbeat_lost_threshold_ms,
            remote_services_as_heartbeat: self.remote_services_as_heartbeat,
            local_failures: self.local_failures,
            recovery_successes: self.recovery_successes,
            on_failure: self.on_failure,
            // A PBX has no mail queue to hand over.
            push_queue_hook: None,
            failback: self.auto_failback,
            planned_reboot_hold_ms: Some(self.planned_reboot_hold_ms),
            takeover_alarm: Some(
                "voice failover: active calls on the failed unit were interrupted and must be re-dialled; registered idle extensions keep working".into(),
            ),
            start_order: self.start_order.clone(),
            vip: self.vip,
            // The voice pair keeps its pair rules unchanged; with fencing the host still enforces the
            // arbiter's key.
            arbiter: false,
            priority: Vec::new(),
        }
    }
}

struct Voice;

impl Policy for Voice {
    type Params = Params;
    type State = State;

    fn validate(p: &Params) -> Result<(), String> {
        p.config().validate()
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        active_passive::decide(&params.config(), tick, state)
    }
}

vigil_sdk::export_policy!(Voice);
