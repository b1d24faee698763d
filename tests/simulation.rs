//! A deterministic simulation of a hot-standby pair: two `NodeCore`s running the real hot-standby
//! plugin, a simulated link, simulated services and seeded fault schedules (link cuts, crashes with
//! services left running, operator requests). No sockets, no sleeps, no clock: a schedule of a
//! hundred ticks runs in milliseconds, so hundreds of them run on every test run.
//!
//! The property: once the faults are over and the link has been healthy for `SETTLE_WITHIN` ticks,
//! exactly one node is active — the primary, since the policy sets `first_server_auto_active` — the
//! other is standby, only the active one runs the service, and it stays that way. (Before that, a
//! handover such as the primary's rollback is allowed.)
//! A failing seed prints its schedule and the timeline, and replays exactly.

use vigil::heartbeat::{CheckResult, RemoteRound, Round, Targets, Tracker};
use vigil::config::{Probe, ProbeKind};
use vigil::model::{Action, Mode, OperatorRequest, PeerCommand, ReceivedCommand, Report, Role, Service, ServiceState};
use vigil::node::{NodeCore, Observations};
use vigil::policy::{load, LoadedPolicy};
use vigil_tests::{dirs, runtime, write_file, Rng};

const INTERVAL: u64 = 1000;
const FAILURES: u32 = 3;
/// Schedules per test run (`VIGIL_SIM_SCHEDULES` to run more).
const SCHEDULES: u64 = 300;
/// Ticks with faults, then ticks of calm in which the pair must settle.
const FAULT_TICKS: u64 = 60;
const CALM_TICKS: u64 = 30;
/// The pair must be settled this many ticks into the calm, and stay settled.
const SETTLE_WITHIN: u64 = 15;

/// One simulated node: its core, its view of the peer, its service, its inbox.
struct SimNode {
    id: &'static str,
    role: Role,
    core: NodeCore,
    tracker: Tracker,
    service_running: bool,
    up: bool,
    inbox: Vec<ReceivedCommand>,
    operator: Option<OperatorRequest>,
    results: Vec<vigil::model::ActionResult>,
}

impl SimNode {
    fn new(id: &'static str, role: Role, peer: &str, now: u64) -> SimNode {
        let probe = Probe { name: "main".into(), kind: ProbeKind::Vigil, target: String::new(), expect_status: 200, expect_body: None, count: 1 };
        let targets = Targets { peers: vec![(peer.to_string(), vec![probe], vec![])], watched: vec![], lan: None, vip_url: None };
        SimNode {
            id,
            role,
            core: NodeCore::new(id, role, now),
            tracker: Tracker::new(id, &targets),
            service_running: false,
            up: true,
            inbox: Vec::new(),
            operator: None,
            results: Vec::new(),
        }
    }

    /// A crash and restart: a new daemon, the service left as it was (kill -9 stops nothing).
    fn restart(&mut self, peer: &str, now: u64) {
        let running = self.service_running;
        *self = SimNode::new(self.id, self.role, peer, now);
        self.service_running = running;
    }
}

fn policy(dir: &std::path::Path) -> LoadedPolicy {
    let path = write_file(
        dir,
        "hot-standby.toml",
        "plugin = \"hot-standby\"\n[params]\nfirst_server_auto_active = true\n[services.app]\nstart = \"true\"\nstop = \"true\"\nwatchdog = true\napp_check = true\n",
    );
    load(&runtime(), &dirs(), &path).expect("the hot-standby policy loads")
}

/// The last `n` lines of a timeline.
fn tail(timeline: &str, n: usize) -> String {
    let lines: Vec<&str> = timeline.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run one seeded schedule; `Err` carries the timeline when the property fails.
fn run(policy: &LoadedPolicy, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut now = 1_800_000_000_000u64;
    let mut nodes = [SimNode::new("a", Role::Primary, "b", now), SimNode::new("b", Role::Secondary, "a", now)];
    let mut link_up = true;
    // An operator's standby holds the primary's rollback until restore or active (documented).
    let mut operator_used = false;
    let mut timeline = String::new();

    for t in 0..FAULT_TICKS + CALM_TICKS {
        now += INTERVAL;
        let faults = t < FAULT_TICKS;
        if faults {
            if rng.chance(8) {
                link_up = !link_up;
            }
            for (i, peer) in [(0, "b"), (1, "a")] {
                if rng.chance(3) {
                    nodes[i].up = !nodes[i].up;
                    if nodes[i].up {
                        nodes[i].restart(peer, now);
                    }
                }
                if rng.chance(2) {
                    operator_used = true;
                    let requests = [OperatorRequest::Standby, OperatorRequest::Active, OperatorRequest::Restore];
                    nodes[i].operator = Some(requests[(rng.next_u64() % 3) as usize]);
                }
            }
        } else if !link_up || nodes.iter().any(|n| !n.up) {
            link_up = true;
            for (i, peer) in [(0, "b"), (1, "a")] {
                if !nodes[i].up {
                    nodes[i].up = true;
                    nodes[i].restart(peer, now);
                }
            }
        }

        // Each node's heartbeat round sees the other's mode, if both are up and the link is.
        let modes = [nodes[0].core.mode, nodes[1].core.mode];
        let apps = [nodes[0].service_running, nodes[1].service_running];
        let mut sent: Vec<(usize, PeerCommand)> = Vec::new();
        for i in 0..2 {
            if !nodes[i].up {
                continue;
            }
            let other = 1 - i;
            let reachable = link_up && nodes[other].up;
            let result = CheckResult {
                ok: reachable,
                report: reachable.then(|| Report {
                    mode: modes[other],
                    configured_role: Some(nodes[other].role),
                    app_healthy: Some(apps[other]),
                    mode_since_ms: None,
                }),
                ..CheckResult::default()
            };
            let node = &mut nodes[i];
            node.tracker.record(&Round { peers: vec![RemoteRound { paths: vec![result], services: vec![] }], ..Round::default() }, now);
            let observations = Observations {
                now_ms: now,
                heartbeat: vigil::model::Heartbeat { interval_ms: INTERVAL as u32, timeout_ms: 500, failures: FAILURES, successes: 3 },
                peers: node.tracker.peers(now),
                services: vec![Service {
                    name: "app".into(),
                    state: if node.service_running { ServiceState::Running } else { ServiceState::Stopped },
                    app_check: true,
                    watchdog: true,
                    ..Service::default()
                }],
                operator: node.operator.take(),
                commands: std::mem::take(&mut node.inbox),
                results: std::mem::take(&mut node.results),
                ..Observations::default()
            };
            let peer = if i == 0 { "b" } else { "a" };
            let outcome = node.core.step(policy, observations, &[peer.to_string()]);
            if let Some(fault) = &outcome.fault {
                return Err(format!("seed {seed}, tick {t}: node {} faulted: {fault}\n{timeline}", node.id));
            }
            for action in &outcome.actions {
                let ok = match action {
                    Action::Start(_) | Action::Restart(_) => {
                        node.service_running = true;
                        true
                    }
                    Action::Stop(_) => {
                        node.service_running = false;
                        true
                    }
                    Action::Command { command, .. } => {
                        sent.push((other, *command));
                        reachable
                    }
                    _ => true,
                };
                node.results.push(vigil::model::ActionResult { action: action.clone(), ok, message: String::new(), finished_ms: now, duration_ms: 0 });
            }
            if outcome.from != outcome.to || !outcome.actions.is_empty() {
                timeline.push_str(&format!("  t{t:<3} {} {} → {} {:?}  {}\n", node.id, outcome.from, outcome.to, outcome.actions.iter().map(ToString::to_string).collect::<Vec<_>>(), outcome.reason));
            }
        }
        // Commands cross the link if it is up when they are sent.
        for (to, command) in sent {
            if link_up && nodes[to].up {
                let from = if to == 0 { "b" } else { "a" };
                nodes[to].inbox.push(ReceivedCommand { from: from.into(), command });
            }
        }
        timeline.push_str(&format!(
            "  t{t:<3} link {} | a {}{} {} | b {}{} {}\n",
            if link_up { "up  " } else { "DOWN" },
            if nodes[0].up { "" } else { "(down) " },
            nodes[0].core.mode,
            if nodes[0].service_running { "app" } else { "-" },
            if nodes[1].up { "" } else { "(down) " },
            nodes[1].core.mode,
            if nodes[1].service_running { "app" } else { "-" },
        ));

        if !faults {
            let settled = {
                let active: Vec<&SimNode> = nodes.iter().filter(|n| n.core.mode == Mode::Active).collect();
                active.len() == 1
                    && nodes.iter().all(|n| matches!(n.core.mode, Mode::Active | Mode::Standby))
                    && nodes.iter().all(|n| n.service_running == (n.core.mode == Mode::Active))
            };
            let calm_tick = t - FAULT_TICKS;
            if calm_tick >= SETTLE_WITHIN && !settled {
                return Err(format!("seed {seed}: not settled at calm tick {calm_tick}\n{}", tail(&timeline, 40)));
            }
            // With first_server_auto_active the primary ends up with the role, unless an operator
            // chose otherwise.
            if calm_tick >= SETTLE_WITHIN && !operator_used && nodes[0].core.mode != Mode::Active {
                return Err(format!("seed {seed}: the primary did not take its role back by calm tick {calm_tick}\n{}", tail(&timeline, 40)));
            }
        }
    }
    Ok(())
}

#[test]
fn a_hot_standby_pair_always_settles_with_exactly_one_active_node() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy(dir.path());
    let started = std::time::Instant::now();
    let schedules = std::env::var("VIGIL_SIM_SCHEDULES").ok().and_then(|v| v.parse().ok()).unwrap_or(SCHEDULES);
    let failures: Vec<String> = (0..schedules).filter_map(|seed| run(&policy, seed).err()).collect();
    println!(
        "{schedules} schedules of {} ticks in {:.1} s",
        FAULT_TICKS + CALM_TICKS,
        started.elapsed().as_secs_f64()
    );
    if let Some(first) = failures.first() {
        panic!("{} of {schedules} schedules failed; the first:\n{first}", failures.len());
    }
}
