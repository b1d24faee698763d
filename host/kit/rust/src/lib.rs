//! {{name}}: a vigil failover policy for a pair of nodes.
//!
//! Once per heartbeat interval vigil gathers what it observed into a `Tick` and calls `decide`; the
//! `Decision` it returns says which mode this node should be in and what to do (start and stop
//! services, send the peer a command). The same tick always gives the same decision: what the policy
//! remembers between ticks is in `State`.
//!
//! The rules of this example:
//! - a standby takes the role when its peer has failed `failures` checks in a row (by default the
//!   node's `[heartbeat] failures`), starts `services` in order and tells the old active to stand by;
//! - when both nodes are up and neither is active, the primary takes the role;
//! - of two actives (a link that healed), the secondary steps down;
//! - with `failback = true`, a secondary holding the role hands it back to the primary once the
//!   primary has answered `failures` checks in a row;
//! - an operator's `vigil switch standby|active` and the peer's commands are obeyed.
//!
//! Change the rules, then `vigil policy build` and `vigil policy test policy.toml scenarios/*.toml`.

use serde::{Deserialize, Serialize};
use vigil_sdk::prelude::*;

/// The policy file's `[params]` table. A typo or a wrong type is refused when the policy is loaded,
/// with a message that names the parameter.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Failed checks in a row before the standby takes over (default: `[heartbeat] failures`).
    failures: Option<u32>,
    /// Whether the secondary hands the role back to a returning primary.
    #[serde(default)]
    failback: bool,
    /// The services this node runs while active, in start order (stopped in reverse).
    #[serde(default)]
    services: Vec<String>,
}

/// What the policy remembers between ticks (JSON, visible in scenario files as `state = {...}`).
#[derive(Default, Serialize, Deserialize)]
struct State {
    /// How many times this node took the role.
    takeovers: u32,
}

struct Example;

impl Policy for Example {
    type Params = Params;
    type State = State;

    fn validate(params: &Params) -> Result<(), String> {
        if params.failures == Some(0) {
            return Err("params.failures: expected at least 1".into());
        }
        check_names("services", &params.services)
    }

    fn decide(params: &Params, tick: &Tick, state: &mut State) -> Decision {
        let needed = params.failures.unwrap_or(tick.heartbeat.failures);
        let mode = tick.node.mode;
        let peer = tick.peers.first();
        let peer_id = peer.map(|p| p.id.as_str());

        // Off, failed, hold-off: the operator brings the node back (`vigil switch restore`).
        if !matches!(mode, Mode::Active | Mode::Standby) {
            return Decision::because(format!("{}: waiting for the operator", mode_word(mode)));
        }

        // The operator first, then the peer's commands.
        match (tick.operator, mode) {
            (Some(OperatorRequest::Standby), Mode::Active) => {
                let d = stop_all(Decision::to(Mode::Standby, "the operator asks for standby"), params);
                return match peer_id {
                    Some(id) => d.command_peer(Some(id), PeerCommand::GoActive),
                    None => d,
                };
            }
            (Some(OperatorRequest::Active), Mode::Standby) => {
                state.takeovers += 1;
                let d = start_all(Decision::to(Mode::Active, "the operator asks for active"), params);
                return match peer_id {
                    Some(id) => d.command_peer(Some(id), PeerCommand::GoStandby),
                    None => d,
                };
            }
            _ => {}
        }
        for c in &tick.commands {
            match (c.command, mode) {
                (PeerCommand::GoStandby, Mode::Active) => {
                    return stop_all(Decision::to(Mode::Standby, format!("peer {} asks for standby", c.from)), params);
                }
                (PeerCommand::GoActive, Mode::Standby) => {
                    state.takeovers += 1;
                    return start_all(Decision::to(Mode::Active, format!("peer {} asks for active", c.from)), params);
                }
                _ => {}
            }
        }

        let Some(peer) = peer else {
            return if mode == Mode::Active {
                Decision::because("ACTIVE, no peer")
            } else {
                state.takeovers += 1;
                start_all(Decision::to(Mode::Active, "no peer: this node takes the role"), params)
            };
        };
        let peer_mode = peer.report.as_ref().filter(|_| peer.reachable).map(|r| r.mode);
        let secondary = tick.node.configured_role == Role::Secondary;

        if mode == Mode::Active {
            if peer_mode == Some(Mode::Active) {
                return if secondary {
                    stop_all(Decision::to(Mode::Standby, format!("peer {} is ACTIVE too: the secondary steps down", peer.id)), params)
                } else {
                    Decision::because(format!("peer {} is ACTIVE too: the primary keeps the role", peer.id))
                };
            }
            let primary_back = peer_mode == Some(Mode::Standby)
                && peer.report.as_ref().and_then(|r| r.configured_role) == Some(Role::Primary)
                && peer.consecutive_successes >= needed;
            if params.failback && secondary && primary_back {
                let why = format!("primary {} is back ({} checks in a row): failing back", peer.id, peer.consecutive_successes);
                return stop_all(Decision::to(Mode::Standby, why), params).command_peer(Some(&peer.id), PeerCommand::GoActive);
            }
            return Decision::because(format!("ACTIVE; peer {} {}", peer.id, describe(peer)));
        }

        // Standby.
        if peer_mode == Some(Mode::Active) {
            return Decision::because(format!("peer {} is ACTIVE", peer.id));
        }
        if !peer.reachable {
            let failed = peer.consecutive_failures;
            if failed >= needed {
                state.takeovers += 1;
                let why = format!("peer {} failed {failed}/{needed} checks: taking over", peer.id);
                return start_all(Decision::to(Mode::Active, why), params).command_peer(Some(&peer.id), PeerCommand::GoStandby);
            }
            return Decision::because(format!("peer {} failed {failed}/{needed} checks", peer.id));
        }
        if !secondary {
            state.takeovers += 1;
            let why = format!("peer {} is {}: the primary takes the role", peer.id, describe(peer));
            return start_all(Decision::to(Mode::Active, why), params);
        }
        Decision::because(format!("peer {} is {}: waiting for the primary", peer.id, describe(peer)))
    }
}

/// `unreachable`, the mode it reports (`STANDBY`), or `reachable` before its first report.
fn describe(peer: &vigil_sdk::Remote) -> String {
    match &peer.report {
        _ if !peer.reachable => "unreachable".into(),
        Some(r) => mode_word(r.mode).into(),
        None => "reachable".into(),
    }
}

fn start_all(d: Decision, params: &Params) -> Decision {
    params.services.iter().fold(d, |d, s| d.start(s))
}

fn stop_all(d: Decision, params: &Params) -> Decision {
    params.services.iter().rev().fold(d, |d, s| d.stop(s))
}

vigil_sdk::export_policy!(Example);
