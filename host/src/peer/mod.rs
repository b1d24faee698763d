//! The peer protocol: what vigil nodes say to each other, signed (see [`signing`]).
//!
//! - `GET /peer/heartbeat` → [`HeartbeatAnswer`]: who I am, my mode, my application health, my clock.
//! - `POST /peer/command` with [`CommandMessage`]: a plugin's command to its peer's plugin.
//! - `GET /peer/changes?since=N&limit=M` → a page of the replication feed; `POST /peer/changes` pushes a
//!   batch (see `replication`).
//!
//! Owns the message types and the signed HTTP client ([`client`]); the server side lives in `http`.

pub mod client;
pub mod signing;

use crate::model::{Mode, PeerCommand, Report, Role};
use serde::{Deserialize, Serialize};

/// The heartbeat path.
pub const HEARTBEAT_PATH: &str = "/peer/heartbeat";
/// The command path.
pub const COMMAND_PATH: &str = "/peer/command";
/// On a signed refusal (409 to a heartbeat, 401 or 421 otherwise): why the request was refused.
pub const HEADER_REFUSED: &str = "x-vigil-refused";

/// A node's answer to a heartbeat. Unknown fields are ignored (not refused): a field a newer node
/// adds must not make this node count it as failed during a rolling upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub id: String,
    pub mode: Mode,
    pub configured_role: Role,
    pub app_healthy: bool,
    pub mode_since_ms: u64,
    /// The answering node's wall clock when it answered (for clock-skew measurement).
    pub now_ms: u64,
    /// The answering node's latest replication sequence: a peer behind it pulls the difference.
    pub seq: u64,
    /// The answering node's run: every other request to it must name it (see `signing`).
    #[serde(default)]
    pub boot: String,
    /// The answering node's store incarnation (0: unknown, an older node): when it changes, its
    /// sequence numbers started again and a peer pulls everything from it.
    #[serde(default)]
    pub incarnation: u64,
}

impl HeartbeatAnswer {
    /// What the plugin sees of it.
    pub fn report(&self) -> Report {
        Report {
            mode: self.mode,
            configured_role: Some(self.configured_role),
            app_healthy: Some(self.app_healthy),
            mode_since_ms: Some(self.mode_since_ms),
        }
    }
}

/// A command from one node's plugin to another's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMessage {
    pub command: PeerCommand,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_answer_from_an_older_or_newer_node_is_understood() {
        let older = r#"{"id":"b","mode":"standby","configured_role":"secondary","app_healthy":true,"mode_since_ms":1,"now_ms":2,"seq":3}"#;
        let answer: HeartbeatAnswer = serde_json::from_str(older).unwrap();
        assert_eq!(answer.incarnation, 0, "unknown");
        let newer = r#"{"id":"b","mode":"standby","configured_role":"secondary","app_healthy":true,"mode_since_ms":1,"now_ms":2,"seq":3,"incarnation":9,"later":true}"#;
        assert_eq!(serde_json::from_str::<HeartbeatAnswer>(newer).unwrap().incarnation, 9);
    }
}
