//! A plugin built against `vigil:policy@0.1.0` (`wit/v0.1.0/policy.wit`), as every plugin was before
//! 0.2.0: the host must keep loading and ticking it (`tests/plugin_versions.rs`).
//!
//! Its rule is the smallest failover: standby, the first peer lost for `failures` checks → active and
//! start every service; its reason says the mode it saw itself in and what each peer reported, so a
//! test can read what the host showed a 0.1.0 plugin.

wit_bindgen::generate!({ path: "../../wit/v0.1.0", world: "policy" });

use vigil::policy::types::{Action, Mode};

struct V01;

fn word(mode: Mode) -> &'static str {
    match mode {
        Mode::Active => "active",
        Mode::Standby => "standby",
        Mode::Off => "off",
        Mode::Failed => "failed",
        Mode::HoldOff => "hold-off",
    }
}

impl Guest for V01 {
    fn validate(params: String) -> Result<(), String> {
        if params.contains("\"refuse\"") {
            return Err("refuse: asked to refuse".into());
        }
        Ok(())
    }

    fn decide(_params: String, tick: Tick) -> Decision {
        let peers: Vec<String> = tick
            .peers
            .iter()
            .chain(&tick.watched)
            .map(|p| format!("{}={}", p.id, p.report.as_ref().map(|r| word(r.mode)).unwrap_or("unknown")))
            .collect();
        let mut reason = format!("v0.1.0 sees itself {}, tick {}; {}", word(tick.node.mode), tick.node.tick_count, peers.join(" "));
        let lost = tick.peers.first().is_some_and(|p| !p.reachable && p.consecutive_failures >= tick.heartbeat.failures);
        if tick.node.mode == Mode::Standby && lost {
            reason.push_str("; peer lost: ACTIVE");
            let actions = tick.services.iter().map(|s| Action::Start(s.name.clone())).collect();
            return Decision { mode: Some(Mode::Active), actions, state: tick.state, reason };
        }
        Decision { mode: None, actions: Vec::new(), state: tick.state, reason }
    }
}

export!(V01);
