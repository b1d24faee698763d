//! Small questions plugins ask of a tick, answered once here instead of in every plugin.

use crate::{Mode, Remote, Service, ServiceState, Tick};

/// Convenience queries on a [`Tick`].
pub trait TickExt {
    /// The peer with this id.
    fn peer(&self, id: &str) -> Option<&Remote>;
    /// The watched node with this id.
    fn watched_node(&self, id: &str) -> Option<&Remote>;
    /// The declared service with this name.
    fn service(&self, name: &str) -> Option<&Service>;
    /// Peers that report `mode` in their last answer and are reachable now.
    fn peers_in(&self, mode: Mode) -> Vec<&Remote>;
    /// Whether every service marked for application checks runs.
    fn app_healthy(&self) -> bool;
    /// Milliseconds this node has been in its current mode.
    fn in_mode_for_ms(&self) -> u64;
    /// The declared services in start order: those named in `order` first, as listed, then the rest
    /// in the policy's order; and the names in `order` the policy does not declare.
    fn services_in_order(&self, order: &[String]) -> (Vec<&Service>, Vec<String>);
    /// The node holding the arbiter's role key (`None` without an arbiter or when the key is free).
    fn role_holder(&self) -> Option<&str>;
    /// Another node holds the arbiter's role key: this node must not ask for the active role.
    fn role_held_elsewhere(&self) -> Option<&str>;
    /// This node holds the role key (always true without an arbiter).
    fn holds_role(&self) -> bool;
}

impl TickExt for Tick {
    fn peer(&self, id: &str) -> Option<&Remote> {
        self.peers.iter().find(|p| p.id == id)
    }

    fn watched_node(&self, id: &str) -> Option<&Remote> {
        self.watched.iter().find(|p| p.id == id)
    }

    fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    fn peers_in(&self, mode: Mode) -> Vec<&Remote> {
        self.peers
            .iter()
            .filter(|p| p.reachable && p.report.as_ref().is_some_and(|r| r.mode == mode))
            .collect()
    }

    fn app_healthy(&self) -> bool {
        self.services.iter().filter(|s| s.app_check).all(|s| s.state == ServiceState::Running)
    }

    fn in_mode_for_ms(&self) -> u64 {
        self.now_ms.saturating_sub(self.node.mode_since_ms)
    }

    fn services_in_order(&self, order: &[String]) -> (Vec<&Service>, Vec<String>) {
        let mut ordered: Vec<&Service> = Vec::new();
        let mut unknown = Vec::new();
        for name in order {
            match self.service(name) {
                Some(s) => ordered.push(s),
                None => unknown.push(name.clone()),
            }
        }
        ordered.extend(self.services.iter().filter(|s| !order.contains(&s.name)));
        (ordered, unknown)
    }

    fn role_holder(&self) -> Option<&str> {
        crate::arbiter::holder(self)
    }

    fn role_held_elsewhere(&self) -> Option<&str> {
        crate::arbiter::held_elsewhere(self)
    }

    fn holds_role(&self) -> bool {
        crate::arbiter::held_here(self)
    }
}
