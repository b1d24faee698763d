//! Translation between the host's model (`crate::model`) and the generated WIT bindings.
//!
//! Mechanical on purpose: one function per type, field by field, so the compiler points here whenever
//! the WIT file and the model drift apart.

use super::runtime::bindings::vigil::policy::types as wit;
use crate::model as m;

macro_rules! map_enum {
    ($fn_to:ident, $fn_from:ident, $m:ty, $w:ty, [$($v:ident),+]) => {
        fn $fn_to(v: $m) -> $w {
            match v { $(<$m>::$v => <$w>::$v),+ }
        }
        #[allow(dead_code)]
        fn $fn_from(v: $w) -> $m {
            match v { $(<$w>::$v => <$m>::$v),+ }
        }
    };
}

map_enum!(mode_to, mode_from, m::Mode, wit::Mode, [Active, Standby, Off, Failed, HoldOff]);
map_enum!(role_to, role_from, m::Role, wit::Role, [Primary, Secondary]);
map_enum!(level_to, level_from, m::Level, wit::Level, [Trace, Debug, Info, Warn, Error]);
map_enum!(service_state_to, service_state_from, m::ServiceState, wit::ServiceState, [Running, Stopped, Unknown]);
map_enum!(initial_to, initial_from, m::InitialSync, wit::InitialSync, [NotNeeded, Pending, Done, Failed]);
map_enum!(operator_to, operator_from, m::OperatorRequest, wit::OperatorRequest, [Standby, Active, Restore, RestartHa, PlannedReboot]);
map_enum!(command_to, command_from, m::PeerCommand, wit::PeerCommand, [GoStandby, GoActive, PlannedReboot]);

fn check_to(c: &m::Check) -> wit::Check {
    wit::Check {
        name: c.name.clone(),
        ok: c.ok,
        consecutive_failures: c.consecutive_failures,
        consecutive_successes: c.consecutive_successes,
    }
}

fn remote_to(r: &m::Remote) -> wit::Remote {
    wit::Remote {
        id: r.id.clone(),
        reachable: r.reachable,
        consecutive_failures: r.consecutive_failures,
        consecutive_successes: r.consecutive_successes,
        paths: r.paths.iter().map(check_to).collect(),
        services: r.services.iter().map(check_to).collect(),
        report: r.report.as_ref().map(|p| wit::Report {
            mode: mode_to(p.mode),
            configured_role: p.configured_role.map(role_to),
            app_healthy: p.app_healthy,
            mode_since_ms: p.mode_since_ms,
        }),
        last_seen_ago_ms: r.last_seen_ago_ms,
    }
}

fn action_to(a: &m::Action) -> wit::Action {
    match a {
        m::Action::Start(s) => wit::Action::Start(s.clone()),
        m::Action::Stop(s) => wit::Action::Stop(s.clone()),
        m::Action::Restart(s) => wit::Action::Restart(s.clone()),
        m::Action::Hook { name, args } => wit::Action::Hook(wit::HookCall { name: name.clone(), args: args.clone() }),
        m::Action::ClaimVip => wit::Action::ClaimVip,
        m::Action::ReleaseVip => wit::Action::ReleaseVip,
        m::Action::Route(t) => wit::Action::Route(t.clone()),
        m::Action::Command { peer, command } => {
            wit::Action::Command(wit::PeerMessage { peer: peer.clone(), command: command_to(*command) })
        }
        m::Action::Sync => wit::Action::Sync,
        m::Action::Alarm { severity, message } => {
            wit::Action::Alarm(wit::Alarm { severity: level_to(*severity), message: message.clone() })
        }
    }
}

fn action_from(a: wit::Action) -> m::Action {
    match a {
        wit::Action::Start(s) => m::Action::Start(s),
        wit::Action::Stop(s) => m::Action::Stop(s),
        wit::Action::Restart(s) => m::Action::Restart(s),
        wit::Action::Hook(h) => m::Action::Hook { name: h.name, args: h.args },
        wit::Action::ClaimVip => m::Action::ClaimVip,
        wit::Action::ReleaseVip => m::Action::ReleaseVip,
        wit::Action::Route(t) => m::Action::Route(t),
        wit::Action::Command(p) => m::Action::Command { peer: p.peer, command: command_from(p.command) },
        wit::Action::Sync => m::Action::Sync,
        wit::Action::Alarm(a) => m::Action::Alarm { severity: level_from(a.severity), message: a.message },
    }
}

/// The tick as the plugin receives it.
pub(crate) fn tick_to_wit(t: &m::Tick) -> wit::Tick {
    wit::Tick {
        now_ms: t.now_ms,
        node: wit::LocalNode {
            id: t.node.id.clone(),
            configured_role: role_to(t.node.configured_role),
            mode: mode_to(t.node.mode),
            mode_since_ms: t.node.mode_since_ms,
            started_ms: t.node.started_ms,
            tick_count: t.node.tick_count,
        },
        heartbeat: wit::Heartbeat {
            interval_ms: t.heartbeat.interval_ms,
            timeout_ms: t.heartbeat.timeout_ms,
            failures: t.heartbeat.failures,
            successes: t.heartbeat.successes,
        },
        peers: t.peers.iter().map(remote_to).collect(),
        watched: t.watched.iter().map(remote_to).collect(),
        lan: t.lan.as_ref().map(check_to),
        monitors: t.monitors.iter().map(check_to).collect(),
        vip: t.vip.as_ref().map(|v| wit::VipView {
            reaches: v.reaches.clone(),
            consecutive_self: v.consecutive_self,
            consecutive_other: v.consecutive_other,
        }),
        route: t.route.clone(),
        services: t
            .services
            .iter()
            .map(|s| wit::Service {
                name: s.name.clone(),
                state: service_state_to(s.state),
                app_check: s.app_check,
                watchdog: s.watchdog,
                restart_due: s.restart_due,
                recent_restarts: s.recent_restarts,
            })
            .collect(),
        sync: wit::SyncView {
            initial: initial_to(t.sync.initial),
            consecutive_failures: t.sync.consecutive_failures,
            last_ok_ms: t.sync.last_ok_ms,
        },
        operator: t.operator.map(operator_to),
        commands: t
            .commands
            .iter()
            .map(|c| wit::ReceivedCommand { from: c.from.clone(), command: command_to(c.command) })
            .collect(),
        results: t
            .results
            .iter()
            .map(|r| wit::ActionResult {
                action: action_to(&r.action),
                ok: r.ok,
                message: r.message.clone(),
                finished_ms: r.finished_ms,
                duration_ms: r.duration_ms,
            })
            .collect(),
        pending_actions: t.pending_actions,
        state: t.state.clone(),
    }
}

/// The plugin's decision in the host's terms.
pub(crate) fn decision_from_wit(d: wit::Decision) -> m::Decision {
    m::Decision {
        mode: d.mode.map(mode_from),
        actions: d.actions.into_iter().map(action_from).collect(),
        state: d.state,
        reason: d.reason,
    }
}
