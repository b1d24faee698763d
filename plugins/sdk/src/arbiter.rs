//! The group's arbiter (`tick.arbiter`, interface 0.3.0) and the priority order of a group of N nodes:
//! the pieces every plugin that learns the arbiter shares.
//!
//! With an arbiter configured (`[arbiter]` in the node configuration) one role key in etcd says which
//! node may be active. With fencing (the default) the host refuses a decision to become or stay active
//! unless this node holds the key, demotes an active node that loses it, and campaigns for the key
//! while the decision asks for active. So a plugin's part is to ask for active only when it should,
//! and never to fight the holder:
//!
//! - a standby asks for active only when its own failover rule says so **and** no other node holds
//!   the key ([`held_elsewhere`]);
//! - an active node that sees another holder goes standby;
//! - in a group of more than two nodes, only the first node of the priority order ([`Priority`]) that
//!   still can serve asks; the others stay standby and see the holder.
//!
//! Without an arbiter (`tick.arbiter` is `none`) every helper here answers as if nothing stood in the
//! way, so a plugin that uses them behaves as it did before.

use crate::{ArbiterView, Mode, Remote, Role, Tick};

/// The arbiter's view, when the node has an arbiter.
pub fn view(tick: &Tick) -> Option<&ArbiterView> {
    tick.arbiter.as_ref()
}

/// The node holding the role key, when an arbiter is configured and the key is held.
pub fn holder(tick: &Tick) -> Option<&str> {
    tick.arbiter.as_ref().and_then(|a| a.holder.as_deref())
}

/// The id of **another** node that holds the role key, if one does: this node must not ask for the
/// active role while it does (the host would refuse it anyway). `None` without an arbiter, when the
/// key is free, or when this node holds it.
pub fn held_elsewhere(tick: &Tick) -> Option<&str> {
    holder(tick).filter(|h| *h != tick.node.id)
}

/// Whether this node holds the role key. Without an arbiter, true: nothing stands in the way.
pub fn held_here(tick: &Tick) -> bool {
    tick.arbiter.as_ref().is_none_or(|a| a.held)
}

/// `role key held by node b (revision 7, arbiter reachable)`: the arbiter in a reason.
pub fn describe(tick: &Tick) -> String {
    let Some(a) = &tick.arbiter else { return "no arbiter".into() };
    let reach = if a.reachable { "arbiter reachable" } else { "arbiter NOT reachable" };
    match a.holder.as_deref() {
        Some(h) if h == tick.node.id => format!("role key held by this node ({h}, lease {} ms left, {reach})", a.lease_left_ms),
        Some(h) => format!("role key held by node {h} (revision {}, {reach})", a.revision),
        None => format!("role key free ({reach})"),
    }
}

/// The priority order of a group: which node asks for the active role first when nobody serves.
///
/// The order is the policy's `priority` parameter (node ids, highest first) when given; nodes it does
/// not list come after the listed ones. Without the parameter: the configured role primary first, then
/// the secondaries; a peer that never said its role counts as a secondary; ties by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priority<'a> {
    order: &'a [String],
}

impl<'a> Priority<'a> {
    /// The order given by the parameter (empty: the default order).
    pub fn new(order: &'a [String]) -> Priority<'a> {
        Priority { order }
    }

    /// Check a `priority` parameter: node ids, none empty, none twice. The message names the parameter.
    pub fn validate(param: &str, order: &[String]) -> Result<(), String> {
        crate::check_names(param, order)
    }

    /// A sort key: lower sorts first.
    fn rank(&self, id: &str, role: Option<Role>) -> (usize, u8, String) {
        let listed = self.order.iter().position(|n| n == id).unwrap_or(self.order.len());
        let role = match role {
            Some(Role::Primary) => 0,
            _ => 1,
        };
        // With a list, only the list and then the id decide; without one, the configured role.
        if self.order.is_empty() {
            (0, role, id.to_string())
        } else {
            (listed, 0, id.to_string())
        }
    }

    /// Whether `peer` comes before this node.
    pub fn ahead(&self, tick: &Tick, peer: &Remote) -> bool {
        let theirs = peer.report.as_ref().and_then(|r| r.configured_role);
        self.rank(&peer.id, theirs) < self.rank(&tick.node.id, Some(tick.node.configured_role))
    }

    /// The first peer ahead of this node that can still serve: not `down` (the plugin's own verdict,
    /// usually "lost for the failure threshold") and not reporting `off` or `failed`. While there is
    /// one, this node does not ask for the role by itself.
    pub fn first_ahead<'t>(&self, tick: &'t Tick, down: impl Fn(&Remote) -> bool) -> Option<&'t Remote> {
        let mut ahead: Vec<&Remote> = tick.peers.iter().filter(|p| self.ahead(tick, p) && !down(p) && !out(p)).collect();
        ahead.sort_by_key(|p| self.rank(&p.id, p.report.as_ref().and_then(|r| r.configured_role)));
        ahead.into_iter().next()
    }

    /// The ids the parameter names that are neither this node nor a peer, and the group members it
    /// leaves out: configuration mistakes worth one warning (both empty without the parameter).
    pub fn mismatches(&self, tick: &Tick) -> (Vec<String>, Vec<String>) {
        if self.order.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let members: Vec<&str> = std::iter::once(tick.node.id.as_str()).chain(tick.peers.iter().map(|p| p.id.as_str())).collect();
        let unknown = self.order.iter().filter(|n| !members.contains(&n.as_str())).cloned().collect();
        let missing = members.iter().filter(|m| !self.order.iter().any(|n| n == *m)).map(|m| m.to_string()).collect();
        (unknown, missing)
    }
}

/// A peer that answers and says it is out of the group (`off`, `failed`): it will not serve.
fn out(peer: &Remote) -> bool {
    peer.reachable && peer.report.as_ref().is_some_and(|r| matches!(r.mode, Mode::Off | Mode::Failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Heartbeat, LocalNode, Report, SyncView};

    fn remote(id: &str, role: Option<Role>, reachable: bool, mode: Mode) -> Remote {
        Remote {
            id: id.into(),
            reachable,
            consecutive_failures: if reachable { 0 } else { 5 },
            consecutive_successes: if reachable { 5 } else { 0 },
            paths: Vec::new(),
            services: Vec::new(),
            report: Some(Report { mode, configured_role: role, app_healthy: None, mode_since_ms: None }),
            last_seen_ago_ms: None,
        }
    }

    fn tick(me: &str, role: Role, peers: Vec<Remote>, arbiter: Option<ArbiterView>) -> Tick {
        Tick {
            now_ms: 0,
            node: LocalNode { id: me.into(), configured_role: role, mode: Mode::Standby, mode_since_ms: 0, started_ms: 0, tick_count: 1, restart: None },
            heartbeat: Heartbeat { interval_ms: 1000, timeout_ms: 500, failures: 3, successes: 3 },
            peers,
            watched: Vec::new(),
            lan: None,
            monitors: Vec::new(),
            vip: None,
            route: None,
            services: Vec::new(),
            sync: SyncView { initial: crate::InitialSync::NotNeeded, consecutive_failures: 0, last_ok_ms: None },
            arbiter,
            operator: None,
            commands: Vec::new(),
            results: Vec::new(),
            pending_actions: 0,
            state: Vec::new(),
        }
    }

    #[test]
    fn holder_elsewhere_only_with_an_arbiter_and_another_holder() {
        let view = |holder: Option<&str>| Some(ArbiterView { reachable: true, holder: holder.map(Into::into), held: holder == Some("b"), lease_left_ms: 0, revision: 3 });
        assert_eq!(held_elsewhere(&tick("b", Role::Secondary, Vec::new(), None)), None);
        assert!(held_here(&tick("b", Role::Secondary, Vec::new(), None)));
        assert_eq!(held_elsewhere(&tick("b", Role::Secondary, Vec::new(), view(None))), None);
        assert_eq!(held_elsewhere(&tick("b", Role::Secondary, Vec::new(), view(Some("b")))), None);
        assert_eq!(held_elsewhere(&tick("b", Role::Secondary, Vec::new(), view(Some("a")))), Some("a"));
        assert!(describe(&tick("b", Role::Secondary, Vec::new(), view(Some("a")))).contains("held by node a"));
    }

    #[test]
    fn default_priority_is_the_configured_primary_then_ids() {
        let peers = vec![remote("a", Some(Role::Secondary), true, Mode::Standby), remote("c", Some(Role::Primary), true, Mode::Standby)];
        let t = tick("b", Role::Secondary, peers, None);
        let p = Priority::new(&[]);
        assert_eq!(p.first_ahead(&t, |_| false).map(|r| r.id.as_str()), Some("c"), "the primary first");
        assert!(p.ahead(&t, &t.peers[0]), "a secondary with a smaller id comes before b");
        // c down, a left: a is next.
        assert_eq!(p.first_ahead(&t, |r| r.id == "c").map(|r| r.id.as_str()), Some("a"));
        assert_eq!(p.first_ahead(&t, |_| true), None);
    }

    #[test]
    fn explicit_priority_overrides_roles_and_off_nodes_do_not_count() {
        let peers = vec![remote("a", Some(Role::Primary), true, Mode::Off), remote("c", Some(Role::Secondary), true, Mode::Standby)];
        let t = tick("b", Role::Secondary, peers, None);
        let order = vec!["c".to_string(), "a".to_string(), "b".to_string()];
        let p = Priority::new(&order);
        assert_eq!(p.first_ahead(&t, |_| false).map(|r| r.id.as_str()), Some("c"));
        assert_eq!(p.first_ahead(&t, |r| r.id == "c").map(|r| r.id.as_str()), None, "a reports OFF: it does not count");
        let order = vec!["b".to_string(), "x".to_string()];
        let (unknown, missing) = Priority::new(&order).mismatches(&t);
        assert_eq!(unknown, vec!["x".to_string()]);
        assert_eq!(missing, vec!["a".to_string(), "c".to_string()]);
        assert!(Priority::validate("priority", &["a".into(), "a".into()]).unwrap_err().contains("listed twice"));
    }
}
