//! mail-gateway: a FortiMail-like HA group, active-passive or config-only (deployments.md §6, seeds
//! `001_…` and `002_…`).
//!
//! The rules live in the `active-passive` engine (`engine/`), which the voice plugin shares; this
//! crate is the mail gateway's parameters and its export. `docs/plugins/mail-gateway.md` has the
//! parameters table, the rule list and the mapping to the seed's configured/effective modes.

use active_passive::{Config, OnFailure, State};
use serde::Deserialize;
use vigil_sdk::prelude::*;

/// The policy file's `[params]`. The configured mode (primary/secondary) is the node's `[node] role`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// A config-only group ("config master"/"config slave"): sync only, every node serves.
    #[serde(default)]
    config_only: bool,
    /// How long the heartbeat must be lost on every path before failover (seed: 15 seconds); default
    /// the node's `[heartbeat] failures` checks.
    #[serde(default)]
    heartbeat_lost_threshold_ms: Option<u64>,
    /// The peer's service probes (SMTP, POP3, HTTP) count as heartbeat.
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
    /// The `[hooks.NAME]` that pushes the MTA queue to the active peer (run with the peer's id).
    #[serde(default)]
    push_queue_hook: Option<String>,
    /// Service names in start order; stopped in reverse.
    #[serde(default)]
    start_order: Vec<String>,
    /// Whether the policy declares `[[vip]]` entries to claim and release (default true).
    #[serde(default = "yes")]
    vip: bool,
    /// With an arbiter (`[arbiter]` in the node configuration): the group's node ids, highest priority
    /// first; a standby fails over by itself only when every node before it is lost or reports
    /// OFF/FAILED. Default: the configured role primary first, then the secondaries by id.
    #[serde(default)]
    priority: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Params {
    fn config(&self) -> Config {
        Config {
            plugin: "mail-gateway",
            config_only: self.config_only,
            heartbeat_lost_threshold_ms: self.heartbeat_lost_threshold_ms,
            remote_services_as_heartbeat: self.remote_services_as_heartbeat,
            local_failures: self.local_failures,
            recovery_successes: self.recovery_successes,
            on_failure: self.on_failure,
            push_queue_hook: self.push_queue_hook.clone(),
            // The mail gateway returns to the configured roles only through its on-failure option.
            failback: false,
            planned_reboot_hold_ms: None,
            takeover_alarm: None,
            start_order: self.start_order.clone(),
            vip: self.vip && !self.config_only,
            // The mail gateway follows the group's arbiter when the node has one.
            arbiter: true,
            priority: self.priority.clone(),
        }
    }
}

struct MailGateway;

impl Policy for MailGateway {
    type Params = Params;
    type State = State;

    fn validate(p: &Params) -> Result<(), String> {
        if p.config_only && !p.priority.is_empty() {
            return Err("priority: a config-only group has no active role to order; remove priority".into());
        }
        if p.config_only && (p.push_queue_hook.is_some() || p.on_failure != OnFailure::SwitchOff) {
            return Err("config_only: a config-only group has no failover; remove on_failure and push_queue_hook".into());
        }
        p.config().validate()
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        active_passive::decide(&params.config(), tick, state)
    }
}

vigil_sdk::export_policy!(MailGateway);
