//! The signed side of the peer protocol: heartbeats and commands sent to peers.

use super::signing::{self, HEADER_NODE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use super::{CommandMessage, HeartbeatAnswer, COMMAND_PATH, HEARTBEAT_PATH};
use crate::clock::Clock;
use crate::http_client::HttpClient;
use crate::model::PeerCommand;
use bytes::Bytes;
use hyper::Method;
use std::sync::Arc;
use std::time::Duration;

/// One successful heartbeat, with the times needed to estimate the peer's clock skew.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub answer: HeartbeatAnswer,
    /// Our wall clock when the request left and when the answer came.
    pub sent_ms: u64,
    pub received_ms: u64,
}

impl Heartbeat {
    /// The peer's clock minus ours, assuming symmetric network delay.
    pub fn clock_skew_ms(&self) -> i64 {
        let midpoint = (self.sent_ms + self.received_ms) / 2;
        self.answer.now_ms as i64 - midpoint as i64
    }
}

/// Sends signed requests to peers.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: HttpClient,
    node_id: String,
    keys: Arc<Vec<Vec<u8>>>,
    clock: Arc<dyn Clock>,
}

impl PeerClient {
    /// `keys[0]` signs; answers may be signed with any of them.
    pub fn new(http: HttpClient, node_id: String, keys: Vec<Vec<u8>>, clock: Arc<dyn Clock>) -> PeerClient {
        PeerClient { http, node_id, keys: Arc::new(keys), clock }
    }

    /// A signed `GET base + path` (the path may carry a query; it is signed whole).
    pub async fn get_signed(&self, base: &str, path: &str, timeout: Duration) -> Result<Bytes, String> {
        self.signed(Method::GET, base, path, Bytes::new(), timeout).await
    }

    /// A signed `POST base + path` with a JSON body.
    pub async fn post_signed(&self, base: &str, path: &str, body: Bytes, timeout: Duration) -> Result<Bytes, String> {
        self.signed(Method::POST, base, path, body, timeout).await
    }

    async fn signed(&self, method: Method, base: &str, path: &str, body: Bytes, timeout: Duration) -> Result<Bytes, String> {
        let key = self.keys.first().ok_or("no peer key configured")?;
        let sent = self.clock.wall_ms();
        let h = signing::sign_request(key, method.as_str(), path, &self.node_id, &body, sent, signing::new_nonce());
        let headers = [
            (HEADER_NODE, h.node.clone()),
            (HEADER_TIMESTAMP, h.timestamp_ms.to_string()),
            (HEADER_NONCE, h.nonce.clone()),
            (HEADER_SIGNATURE, h.signature),
            ("content-type", "application/json".to_string()),
        ];
        let url = format!("{base}{path}");
        let answer = self.http.send(method, &url, &headers, body, timeout).await?;
        let signature = answer
            .headers
            .get(HEADER_SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("{url}: answer {} is not signed: {}", answer.status, String::from_utf8_lossy(&answer.body)))?;
        signing::verify_response(&self.keys, answer.status, &h.nonce, &answer.body, signature)
            .map_err(|e| format!("{url}: answer refused: {e}"))?;
        if answer.status != 200 {
            return Err(format!("{url}: {} {}", answer.status, String::from_utf8_lossy(&answer.body).trim()));
        }
        Ok(answer.body)
    }

    /// Heartbeat the peer at `base` (e.g. `http://10.0.0.2:7400`).
    pub async fn heartbeat(&self, base: &str, timeout: Duration) -> Result<Heartbeat, String> {
        let sent_ms = self.clock.wall_ms();
        let body = self.signed(Method::GET, base, HEARTBEAT_PATH, Bytes::new(), timeout).await?;
        let received_ms = self.clock.wall_ms();
        let answer: HeartbeatAnswer =
            serde_json::from_slice(&body).map_err(|e| format!("{base}{HEARTBEAT_PATH}: malformed answer: {e}"))?;
        Ok(Heartbeat { answer, sent_ms, received_ms })
    }

    /// Send a command to the peer at `base`.
    pub async fn command(&self, base: &str, command: PeerCommand, timeout: Duration) -> Result<(), String> {
        let body = serde_json::to_vec(&CommandMessage { command }).expect("serializes");
        self.signed(Method::POST, base, COMMAND_PATH, body.into(), timeout).await.map(|_| ())
    }
}
