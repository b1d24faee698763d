//! The host's own copy of the policy interface's data: modes, ticks, decisions, actions.
//!
//! These types mirror `wit/policy.wit` one to one (see that file for the meaning of every field), but
//! belong to the host: they carry serde (for scenario files, `/status` and the event log) and know
//! nothing of wasmtime. `policy::convert` translates them at the plugin boundary, so the node logic and
//! the scenario runner never touch generated bindings.
//!
//! Actions have a compact text form used in scenario files, logs and the event log:
//! `start:NAME`, `stop:NAME`, `restart:NAME`, `hook:NAME ARG…`, `claim-vip`, `release-vip`,
//! `route:TARGET`, `command:PEER:COMMAND` (`*` for every peer), `sync`, `alarm:LEVEL:MESSAGE`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The lowercase name used in files, URLs and logs.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "expected one of {}, got {s:?}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum!(
    /// A node's effective operating mode.
    Mode {
        Active = "active",
        Standby = "standby",
        Off = "off",
        Failed = "failed",
        HoldOff = "hold-off",
        /// The daemon started and its first tick has not decided yet (interface 0.2.0).
        Starting = "starting",
    }
);

impl Mode {
    /// The word `/role` answers with.
    pub fn role_word(self) -> &'static str {
        match self {
            Mode::Active => "ACTIVE",
            Mode::Standby => "STANDBY",
            Mode::Off => "OFF",
            Mode::Failed => "FAILED",
            Mode::HoldOff => "HOLD-OFF",
            Mode::Starting => "STARTING",
        }
    }

    /// Parse a `/role` answer (case-insensitive, surrounding white space ignored).
    pub fn from_role_word(text: &str) -> Option<Mode> {
        text.trim().to_ascii_lowercase().parse().ok()
    }
}

#[allow(clippy::derivable_impls)]
impl Default for Mode {
    fn default() -> Self {
        Mode::Standby
    }
}

text_enum!(
    /// The role a node is configured for.
    Role {
        Primary = "primary",
        Secondary = "secondary",
    }
);

#[allow(clippy::derivable_impls)]
impl Default for Role {
    fn default() -> Self {
        Role::Primary
    }
}

text_enum!(
    /// Severity of a plugin log line or an alarm.
    Level {
        Trace = "trace",
        Debug = "debug",
        Info = "info",
        Warn = "warn",
        Error = "error",
    }
);

text_enum!(
    /// A local service's observed state.
    ServiceState {
        Running = "running",
        Stopped = "stopped",
        Unknown = "unknown",
    }
);

#[allow(clippy::derivable_impls)]
impl Default for ServiceState {
    fn default() -> Self {
        ServiceState::Stopped
    }
}

text_enum!(
    /// Progress of the initial sync from an active peer.
    InitialSync {
        NotNeeded = "not-needed",
        Pending = "pending",
        Done = "done",
        Failed = "failed",
    }
);

#[allow(clippy::derivable_impls)]
impl Default for InitialSync {
    fn default() -> Self {
        InitialSync::NotNeeded
    }
}

text_enum!(
    /// An operator's request to the node.
    OperatorRequest {
        Standby = "standby",
        Active = "active",
        Restore = "restore",
        RestartHa = "restart-ha",
        PlannedReboot = "planned-reboot",
    }
);

text_enum!(
    /// A command from one node's plugin to another's.
    PeerCommand {
        GoStandby = "go-standby",
        GoActive = "go-active",
        PlannedReboot = "planned-reboot",
    }
);

/// The latest result of one repeated check, with its run lengths.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
}

impl Check {
    /// Count one more result.
    pub fn record(&mut self, ok: bool) {
        self.ok = ok;
        if ok {
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.consecutive_successes = 0;
        }
    }
}

/// What a remote node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Report {
    pub mode: Mode,
    pub configured_role: Option<Role>,
    pub app_healthy: Option<bool>,
    pub mode_since_ms: Option<u64>,
}

/// A pair peer or a watched node as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Remote {
    pub id: String,
    pub reachable: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub paths: Vec<Check>,
    pub services: Vec<Check>,
    pub report: Option<Report>,
    pub last_seen_ago_ms: Option<u64>,
}

impl Remote {
    /// Count one more heartbeat round.
    pub fn record(&mut self, reachable: bool) {
        self.reachable = reachable;
        if reachable {
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.consecutive_successes = 0;
        }
    }
}

/// This node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalNode {
    pub id: String,
    pub configured_role: Role,
    pub mode: Mode,
    pub mode_since_ms: u64,
    pub started_ms: u64,
    pub tick_count: u64,
    /// On the first tick after a restart: what the node was before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartInfo>,
}

/// What a node was before its daemon restarted (the `restart-info` record of the interface).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartInfo {
    pub downtime_ms: u64,
    pub mode: Mode,
    pub mode_since_ms: u64,
    #[serde(with = "state_bytes")]
    pub state: Vec<u8>,
}

/// The heartbeat settings of the node configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Heartbeat {
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub failures: u32,
    pub successes: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { interval_ms: 1000, timeout_ms: 500, failures: 3, successes: 3 }
    }
}

/// A declared service as the plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub state: ServiceState,
    pub app_check: bool,
    pub watchdog: bool,
    pub restart_due: bool,
    pub recent_restarts: u32,
}

/// Where the VIP sends requests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VipView {
    pub reaches: Option<String>,
    pub consecutive_self: u32,
    pub consecutive_other: u32,
}

/// Configuration replication, as decisions need it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncView {
    pub initial: InitialSync,
    pub consecutive_failures: u32,
    pub last_ok_ms: Option<u64>,
}

/// A peer command received since the previous tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceivedCommand {
    pub from: String,
    pub command: PeerCommand,
}

/// One thing the host does for the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    Start(String),
    Stop(String),
    Restart(String),
    Hook { name: String, args: Vec<String> },
    ClaimVip,
    ReleaseVip,
    Route(String),
    /// `peer: None` sends to every peer.
    Command { peer: Option<String>, command: PeerCommand },
    Sync,
    Alarm { severity: Level, message: String },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Start(s) => write!(f, "start:{s}"),
            Action::Stop(s) => write!(f, "stop:{s}"),
            Action::Restart(s) => write!(f, "restart:{s}"),
            Action::Hook { name, args } => {
                write!(f, "hook:{name}")?;
                for arg in args {
                    if arg.is_empty() || arg.contains(char::is_whitespace) || arg.contains('"') {
                        write!(f, " {arg:?}")?;
                    } else {
                        write!(f, " {arg}")?;
                    }
                }
                Ok(())
            }
            Action::ClaimVip => f.write_str("claim-vip"),
            Action::ReleaseVip => f.write_str("release-vip"),
            Action::Route(t) => write!(f, "route:{t}"),
            Action::Command { peer, command } => {
                write!(f, "command:{}:{command}", peer.as_deref().unwrap_or("*"))
            }
            Action::Sync => f.write_str("sync"),
            Action::Alarm { severity, message } => write!(f, "alarm:{severity}:{message}"),
        }
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (verb, rest) = match text.split_once(':') {
            Some((verb, rest)) => (verb, Some(rest)),
            None => (text, None),
        };
        let need = |what: &str| -> Result<String, String> {
            match rest {
                Some(r) if !r.is_empty() => Ok(r.to_string()),
                _ => Err(format!("action {text:?}: expected {verb}:{what}")),
            }
        };
        let action = match verb {
            "start" => Action::Start(need("SERVICE")?),
            "stop" => Action::Stop(need("SERVICE")?),
            "restart" => Action::Restart(need("SERVICE")?),
            "route" => Action::Route(need("TARGET")?),
            "claim-vip" if rest.is_none() => Action::ClaimVip,
            "release-vip" if rest.is_none() => Action::ReleaseVip,
            "sync" if rest.is_none() => Action::Sync,
            "hook" => {
                let words = split_words(&need("NAME ARG…")?)
                    .map_err(|e| format!("action {text:?}: {e}"))?;
                let mut words = words.into_iter();
                let name = words.next().ok_or_else(|| format!("action {text:?}: expected hook:NAME"))?;
                Action::Hook { name, args: words.collect() }
            }
            "command" => {
                let body = need("PEER:COMMAND")?;
                let (peer, command) = body
                    .split_once(':')
                    .ok_or_else(|| format!("action {text:?}: expected command:PEER:COMMAND"))?;
                let command = command.parse().map_err(|e| format!("action {text:?}: command {e}"))?;
                let peer = (peer != "*").then(|| peer.to_string());
                Action::Command { peer, command }
            }
            "alarm" => {
                let body = need("LEVEL:MESSAGE")?;
                let (severity, message) = body
                    .split_once(':')
                    .ok_or_else(|| format!("action {text:?}: expected alarm:LEVEL:MESSAGE"))?;
                let severity = severity.parse().map_err(|e| format!("action {text:?}: level {e}"))?;
                Action::Alarm { severity, message: message.to_string() }
            }
            _ => {
                return Err(format!(
                    "action {text:?}: expected start:, stop:, restart:, hook:, claim-vip, release-vip, route:, command:, sync or alarm:"
                ))
            }
        };
        Ok(action)
    }
}

/// Split on white space, honouring double-quoted words with `\"` and `\\` escapes.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => word.push(chars.next().ok_or("unfinished escape")?),
                    Some(other) => word.push(other),
                    None => return Err("unclosed quote".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The outcome of one executed action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionResult {
    pub action: Action,
    pub ok: bool,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub finished_ms: u64,
    #[serde(default)]
    pub duration_ms: u32,
}

/// What the group's arbiter (a lease-bound role key in etcd) says, as this node last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArbiterView {
    /// At least one arbiter endpoint answered within the current lease period.
    pub reachable: bool,
    /// The node holding the role key, if any.
    pub holder: Option<String>,
    /// This node holds the role key, on a lease it still keeps alive.
    pub held: bool,
    /// Time left on this node's lease, in milliseconds (0 without a lease).
    pub lease_left_ms: u64,
    /// The role key's modification revision (0 when the key is absent).
    pub revision: i64,
}

/// Everything the host observed for one decision.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tick {
    pub now_ms: u64,
    pub node: LocalNode,
    pub heartbeat: Heartbeat,
    pub peers: Vec<Remote>,
    pub watched: Vec<Remote>,
    pub lan: Option<Check>,
    pub monitors: Vec<Check>,
    pub vip: Option<VipView>,
    pub route: Option<String>,
    pub services: Vec<Service>,
    pub sync: SyncView,
    /// The group's arbiter, when one is configured (`[arbiter]`); plugins of interfaces before the
    /// arbiter's do not see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arbiter: Option<ArbiterView>,
    pub operator: Option<OperatorRequest>,
    pub commands: Vec<ReceivedCommand>,
    pub results: Vec<ActionResult>,
    pub pending_actions: u32,
    /// Opaque to the host; shown as text in scenario files when it is UTF-8.
    #[serde(with = "state_bytes")]
    pub state: Vec<u8>,
}

/// What the plugin decided.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Decision {
    pub mode: Option<Mode>,
    pub actions: Vec<Action>,
    #[serde(with = "state_bytes")]
    pub state: Vec<u8>,
    pub reason: String,
}

impl Decision {
    /// The host's decision when a plugin faulted: keep everything, do nothing, keep the state.
    pub fn hold(state: Vec<u8>, reason: impl Into<String>) -> Self {
        Decision { mode: None, actions: Vec::new(), state, reason: reason.into() }
    }
}

/// State bytes as text (plugins built with the SDK use JSON), falling back to a byte array.
pub mod state_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(bytes),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Either::deserialize(d)? {
            Either::Text(t) => t.into_bytes(),
            Either::Bytes(b) => b,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_through_text() {
        let actions = [
            Action::Start("app".into()),
            Action::Stop("app".into()),
            Action::Restart("db".into()),
            Action::Hook { name: "register".into(), args: vec!["mds1".into(), "two words".into(), "".into()] },
            Action::ClaimVip,
            Action::ReleaseVip,
            Action::Route("standby".into()),
            Action::Command { peer: None, command: PeerCommand::GoStandby },
            Action::Command { peer: Some("b".into()), command: PeerCommand::PlannedReboot },
            Action::Sync,
            Action::Alarm { severity: Level::Warn, message: "users must reconnect: see x:y".into() },
        ];
        for action in actions {
            let text = action.to_string();
            assert_eq!(text.parse::<Action>().unwrap(), action, "{text}");
        }
    }

    #[test]
    fn bad_action_text_names_what_was_expected() {
        assert!("start".parse::<Action>().unwrap_err().contains("start:SERVICE"));
        assert!("command:b:go-home".parse::<Action>().unwrap_err().contains("go-standby"));
        assert!("fly:away".parse::<Action>().unwrap_err().contains("expected start:"));
        assert!("sync:now".parse::<Action>().is_err());
    }

    #[test]
    fn modes_parse_from_role_words() {
        for mode in Mode::ALL {
            assert_eq!(Mode::from_role_word(mode.role_word()), Some(*mode));
        }
        assert_eq!(Mode::from_role_word(" active\n"), Some(Mode::Active));
        assert_eq!(Mode::from_role_word("leader"), None);
    }

    #[test]
    fn check_counts_runs() {
        let mut c = Check::default();
        c.record(false);
        c.record(false);
        assert_eq!((c.consecutive_failures, c.consecutive_successes), (2, 0));
        c.record(true);
        assert_eq!((c.consecutive_failures, c.consecutive_successes, c.ok), (0, 1, true));
    }
}
