//! A builder for decisions, so a rule reads as one expression:
//! `Decision::to(Mode::Active, "peer lost").start("app").command_peer(None, PeerCommand::GoStandby)`.

use crate::bindings::vigil::policy::types as wit;
use crate::{Action, Level, Mode, PeerCommand};

/// A decision under construction. The state bytes are added by the SDK from the policy's state.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// The new mode, or `None` to keep the current one.
    pub mode: Option<Mode>,
    /// Actions, in the order the host runs them.
    pub actions: Vec<Action>,
    /// One line for the event log.
    pub reason: String,
}

impl Decision {
    /// Keep the mode, do nothing.
    pub fn keep() -> Self {
        Self::default()
    }

    /// Switch to `mode`, saying why.
    pub fn to(mode: Mode, reason: impl Into<String>) -> Self {
        Self { mode: Some(mode), actions: Vec::new(), reason: reason.into() }
    }

    /// Keep the mode but say why (for decisions that only act).
    pub fn because(reason: impl Into<String>) -> Self {
        Self { mode: None, actions: Vec::new(), reason: reason.into() }
    }

    /// Add an action.
    pub fn then(mut self, action: Action) -> Self {
        self.actions.push(action);
        self
    }

    /// Add several actions.
    pub fn then_all(mut self, actions: impl IntoIterator<Item = Action>) -> Self {
        self.actions.extend(actions);
        self
    }

    /// Start a service.
    pub fn start(self, service: &str) -> Self {
        self.then(Action::Start(service.to_string()))
    }

    /// Stop a service.
    pub fn stop(self, service: &str) -> Self {
        self.then(Action::Stop(service.to_string()))
    }

    /// Restart a service.
    pub fn restart(self, service: &str) -> Self {
        self.then(Action::Restart(service.to_string()))
    }

    /// Run a hook with arguments.
    pub fn hook(self, name: &str, args: &[&str]) -> Self {
        self.then(Action::Hook(wit::HookCall {
            name: name.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }))
    }

    /// Send a command to one peer (`Some(id)`) or to all (`None`).
    pub fn command_peer(self, peer: Option<&str>, command: PeerCommand) -> Self {
        self.then(Action::Command(wit::PeerMessage { peer: peer.map(str::to_string), command }))
    }

    /// Raise an alarm for operators.
    pub fn alarm(self, severity: Level, message: impl Into<String>) -> Self {
        self.then(Action::Alarm(wit::Alarm { severity, message: message.into() }))
    }

    /// Append to the reason (joined with "; ").
    pub fn and_because(mut self, more: &str) -> Self {
        if !self.reason.is_empty() {
            self.reason.push_str("; ");
        }
        self.reason.push_str(more);
        self
    }

    pub(crate) fn into_wit(self, state: Vec<u8>) -> wit::Decision {
        wit::Decision { mode: self.mode, actions: self.actions, state, reason: self.reason }
    }
}
