//! The signed side of the peer protocol: heartbeats and commands sent to peers.

use super::signing::{self, HEADER_SIGNATURE};
use super::{CommandMessage, HeartbeatAnswer, COMMAND_PATH, HEADER_REFUSED, HEARTBEAT_PATH};
use crate::clock::Clock;
use crate::http_client::HttpClient;
use crate::model::PeerCommand;
use bytes::Bytes;
use hyper::Method;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One heartbeat answered by the peer, with the times needed to estimate its clock skew.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub answer: HeartbeatAnswer,
    /// Our wall clock when the request left and when the answer came.
    pub sent_ms: u64,
    pub received_ms: u64,
    /// Why the peer refused our request though it answered, signed (our clock is outside its
    /// signature window, or it restarted after we signed): the peer is reachable, but it will act
    /// on none of our commands or replication requests until that is fixed.
    pub refused: Option<String>,
}

impl Heartbeat {
    /// The peer's clock minus ours, assuming symmetric network delay.
    pub fn clock_skew_ms(&self) -> i64 {
        let midpoint = (self.sent_ms + self.received_ms) / 2;
        self.answer.now_ms as i64 - midpoint as i64
    }
}

/// An answer whose signature was checked.
struct Signed {
    url: String,
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

/// Sends signed requests to peers.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: HttpClient,
    node_id: String,
    keys: Arc<Vec<Vec<u8>>>,
    clock: Arc<dyn Clock>,
    /// Each peer's run, from its latest heartbeat answer: requests other than heartbeats name it.
    boots: Arc<Mutex<HashMap<String, String>>>,
}

impl PeerClient {
    /// `keys[0]` signs; answers may be signed with any of them.
    pub fn new(http: HttpClient, node_id: String, keys: Vec<Vec<u8>>, clock: Arc<dyn Clock>) -> PeerClient {
        PeerClient { http, node_id, keys: Arc::new(keys), clock, boots: Arc::default() }
    }

    /// Peer `to`'s run, as its latest signed heartbeat answer named it.
    pub fn known_boot(&self, to: &str) -> Option<String> {
        self.boots.lock().expect("boots lock").get(to).cloned()
    }

    /// A signed `GET base + path` to node `to` (the path may carry a query; it is signed whole).
    pub async fn get_signed(&self, to: &str, base: &str, path: &str, timeout: Duration) -> Result<Bytes, String> {
        self.signed(Method::GET, to, base, path, Bytes::new(), timeout).await.and_then(ok_body)
    }

    /// A signed `POST base + path` with a JSON body to node `to`.
    pub async fn post_signed(&self, to: &str, base: &str, path: &str, body: Bytes, timeout: Duration) -> Result<Bytes, String> {
        self.signed(Method::POST, to, base, path, body, timeout).await.and_then(ok_body)
    }

    /// Send a signed request and check the answer's signature (whatever its status). A request refused
    /// as meant for an earlier run of the peer (it restarted since its last heartbeat answer) is sent
    /// again once, after a heartbeat has said the peer's current run.
    async fn signed(&self, method: Method, to: &str, base: &str, path: &str, body: Bytes, timeout: Duration) -> Result<Signed, String> {
        let answer = self.signed_once(method.clone(), to, base, path, body.clone(), timeout).await?;
        let earlier_run = answer.status == 401
            && path != HEARTBEAT_PATH
            && answer.headers.get(HEADER_REFUSED).and_then(|v| v.to_str().ok()).is_some_and(|r| r.contains("restarted since"));
        if !earlier_run {
            return Ok(answer);
        }
        self.heartbeat(to, base, timeout).await?;
        self.signed_once(method, to, base, path, body, timeout).await
    }

    async fn signed_once(&self, method: Method, to: &str, base: &str, path: &str, body: Bytes, timeout: Duration) -> Result<Signed, String> {
        let key = self.keys.first().ok_or("no peer key configured")?;
        let boot = self.boots.lock().expect("boots lock").get(to).cloned().unwrap_or_default();
        let request = signing::Request { method: method.as_str(), path, from: &self.node_id, to, boot: &boot, body: &body };
        let h = signing::sign_request(key, request, self.clock.wall_ms(), signing::new_nonce());
        let mut headers = h.pairs().to_vec();
        headers.push(("content-type", "application/json".to_string()));
        let url = format!("{base}{path}");
        let answer = self.http.send(method, &url, &headers, body, timeout).await?;
        let signature = answer
            .headers
            .get(HEADER_SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("{url}: answer {} is not signed: {}", answer.status, String::from_utf8_lossy(&answer.body)))?;
        signing::verify_response(&self.keys, answer.status, &h.nonce, &answer.body, signature)
            .map_err(|e| format!("{url}: answer refused: {e}"))?;
        Ok(Signed { url, status: answer.status, headers: answer.headers, body: answer.body })
    }

    /// Heartbeat peer `to` at `base` (e.g. `http://10.0.0.2:7400`). An answer counts only when it
    /// is signed and comes from `to` itself.
    pub async fn heartbeat(&self, to: &str, base: &str, timeout: Duration) -> Result<Heartbeat, String> {
        let sent_ms = self.clock.wall_ms();
        let answer = self.signed_once(Method::GET, to, base, HEARTBEAT_PATH, Bytes::new(), timeout).await?;
        let received_ms = self.clock.wall_ms();
        // 409: the peer refused the request for its timestamp but answered, signed, with its state.
        let refused = match answer.status {
            200 => None,
            409 => Some(
                answer
                    .headers
                    .get(HEADER_REFUSED)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("refused for its timestamp")
                    .to_string(),
            ),
            _ => return Err(said(&answer)),
        };
        let url = &answer.url;
        let parsed: HeartbeatAnswer = serde_json::from_slice(&answer.body).map_err(|e| format!("{url}: malformed answer: {e}"))?;
        if parsed.id != to {
            return Err(format!("{url}: answered by node {:?}, not by {to:?}", parsed.id));
        }
        self.boots.lock().expect("boots lock").insert(to.to_string(), parsed.boot.clone());
        Ok(Heartbeat { answer: parsed, sent_ms, received_ms, refused })
    }

    /// Send a command to the peer at `base`.
    pub async fn command(&self, to: &str, base: &str, command: PeerCommand, timeout: Duration) -> Result<(), String> {
        let body = serde_json::to_vec(&CommandMessage { command }).expect("serializes");
        self.post_signed(to, base, COMMAND_PATH, body.into(), timeout).await.map(|_| ())
    }
}

/// The body of a 200 answer; any other status is an error that says what the peer said.
fn ok_body(answer: Signed) -> Result<Bytes, String> {
    if answer.status == 200 {
        Ok(answer.body)
    } else {
        Err(said(&answer))
    }
}

/// What a peer's non-200 answer said.
fn said(answer: &Signed) -> String {
    format!("{}: {} {}", answer.url, answer.status, String::from_utf8_lossy(&answer.body).trim())
}
