//! Translation between the host's model (`crate::model`) and the generated WIT bindings, one module
//! per interface version the host loads ([`v0_3`], the current one, [`v0_2`] and [`v0_1`]).
//!
//! Mechanical on purpose: one function per type, field by field, so the compiler points here whenever
//! the WIT file and the model drift apart. The versions share every conversion (the macro
//! [`conversions`]) but the mode, the report and the local node, which 0.2.0 extended, and the tick's
//! fields a version added (0.3.0: the arbiter), which the macro takes as `field: function(&tick)`.

use crate::model as m;

macro_rules! map_enum {
    ($fn_to:ident, $fn_from:ident, $m:ty, $w:ty, [$($v:ident),+]) => {
        #[allow(dead_code)]
        fn $fn_to(v: $m) -> $w {
            match v { $(<$m>::$v => <$w>::$v),+ }
        }
        #[allow(dead_code)]
        fn $fn_from(v: $w) -> $m {
            match v { $(<$w>::$v => <$m>::$v),+ }
        }
    };
}

/// The conversions the interface versions share; expects `wit`, `mode_from`, `report_to` and
/// `local_node_to` in scope. `field: function` pairs fill the tick's fields only some versions have.
macro_rules! conversions {
    ($($field:ident: $conv:path),* $(,)?) => {
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
                report: r.report.as_ref().and_then(report_to),
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
        pub fn tick_to_wit(t: &m::Tick) -> wit::Tick {
            wit::Tick {
                now_ms: t.now_ms,
                node: local_node_to(&t.node),
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
                $($field: $conv(t),)*
            }
        }
        
        /// The plugin's decision in the host's terms.
        pub fn decision_from_wit(d: wit::Decision) -> m::Decision {
            m::Decision {
                mode: d.mode.map(mode_from),
                actions: d.actions.into_iter().map(action_from).collect(),
                state: d.state,
                reason: d.reason,
            }
        }
    };
}

/// `vigil:policy@0.3.0`: the model one to one.
pub mod v0_3 {
    use super::m;
    use crate::policy::runtime::bindings::vigil::policy::types as wit;

    map_enum!(mode_to, mode_from, m::Mode, wit::Mode, [Active, Standby, Off, Failed, HoldOff, Starting]);

    fn report_to(p: &m::Report) -> Option<wit::Report> {
        Some(wit::Report {
            mode: mode_to(p.mode),
            configured_role: p.configured_role.map(role_to),
            app_healthy: p.app_healthy,
            mode_since_ms: p.mode_since_ms,
        })
    }

    fn local_node_to(n: &m::LocalNode) -> wit::LocalNode {
        wit::LocalNode {
            id: n.id.clone(),
            configured_role: role_to(n.configured_role),
            mode: mode_to(n.mode),
            mode_since_ms: n.mode_since_ms,
            started_ms: n.started_ms,
            tick_count: n.tick_count,
            restart: n.restart.as_ref().map(|r| wit::RestartInfo {
                downtime_ms: r.downtime_ms,
                mode: mode_to(r.mode),
                mode_since_ms: r.mode_since_ms,
                state: r.state.clone(),
            }),
        }
    }

    fn arbiter_to(t: &m::Tick) -> Option<wit::ArbiterView> {
        t.arbiter.as_ref().map(|a| wit::ArbiterView {
            reachable: a.reachable,
            holder: a.holder.clone(),
            held: a.held,
            lease_left_ms: a.lease_left_ms,
            revision: a.revision,
        })
    }

    conversions!(arbiter: arbiter_to);
}

/// `vigil:policy@0.2.0`, for plugins built before 0.3.0: the model without the arbiter.
pub mod v0_2 {
    use super::m;
    use crate::policy::runtime::bindings_v0_2::vigil::policy::types as wit;

    map_enum!(mode_to, mode_from, m::Mode, wit::Mode, [Active, Standby, Off, Failed, HoldOff, Starting]);

    fn report_to(p: &m::Report) -> Option<wit::Report> {
        Some(wit::Report {
            mode: mode_to(p.mode),
            configured_role: p.configured_role.map(role_to),
            app_healthy: p.app_healthy,
            mode_since_ms: p.mode_since_ms,
        })
    }

    fn local_node_to(n: &m::LocalNode) -> wit::LocalNode {
        wit::LocalNode {
            id: n.id.clone(),
            configured_role: role_to(n.configured_role),
            mode: mode_to(n.mode),
            mode_since_ms: n.mode_since_ms,
            started_ms: n.started_ms,
            tick_count: n.tick_count,
            restart: n.restart.as_ref().map(|r| wit::RestartInfo {
                downtime_ms: r.downtime_ms,
                mode: mode_to(r.mode),
                mode_since_ms: r.mode_since_ms,
                state: r.state.clone(),
            }),
        }
    }

    conversions!();
}

/// `vigil:policy@0.1.0`, for plugins built before 0.2.0. They know no `starting`: their own node
/// reads `standby` until its first decision (what 0.1.0 showed), a remote node that reports
/// `starting` comes without a report (its mode is not known, which every plugin already handles as
/// "keep what you do"), and they get no restart information.
pub mod v0_1 {
    use super::m;
    use crate::policy::runtime::bindings_v0_1::vigil::policy::types as wit;

    fn mode_to(v: m::Mode) -> wit::Mode {
        match v {
            m::Mode::Active => wit::Mode::Active,
            m::Mode::Standby | m::Mode::Starting => wit::Mode::Standby,
            m::Mode::Off => wit::Mode::Off,
            m::Mode::Failed => wit::Mode::Failed,
            m::Mode::HoldOff => wit::Mode::HoldOff,
        }
    }

    fn mode_from(v: wit::Mode) -> m::Mode {
        match v {
            wit::Mode::Active => m::Mode::Active,
            wit::Mode::Standby => m::Mode::Standby,
            wit::Mode::Off => m::Mode::Off,
            wit::Mode::Failed => m::Mode::Failed,
            wit::Mode::HoldOff => m::Mode::HoldOff,
        }
    }

    fn report_to(p: &m::Report) -> Option<wit::Report> {
        (p.mode != m::Mode::Starting).then(|| wit::Report {
            mode: mode_to(p.mode),
            configured_role: p.configured_role.map(role_to),
            app_healthy: p.app_healthy,
            mode_since_ms: p.mode_since_ms,
        })
    }

    fn local_node_to(n: &m::LocalNode) -> wit::LocalNode {
        wit::LocalNode {
            id: n.id.clone(),
            configured_role: role_to(n.configured_role),
            mode: mode_to(n.mode),
            mode_since_ms: n.mode_since_ms,
            started_ms: n.started_ms,
            tick_count: n.tick_count,
        }
    }

    conversions!();
}
