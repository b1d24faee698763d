//! Signing and verifying peer requests and responses (HMAC-SHA256 with a shared key).
//!
//! A request carries four headers: `x-vigil-node` (the sender's id), `x-vigil-timestamp` (ms since
//! the Unix epoch), `x-vigil-nonce` (16 random bytes, hex) and `x-vigil-signature`, the hex HMAC of
//!
//! ```text
//! "vigil-req-v1" \n METHOD \n PATH \n NODE \n TIMESTAMP \n NONCE \n hex(sha256(BODY))
//! ```
//!
//! The receiver refuses a timestamp outside its window, a nonce it has already seen inside the window
//! (replay), and a signature that matches none of its keys (two are accepted during a key rotation;
//! the first one signs). The answer is signed too, bound to the request's nonce, so a stale or forged
//! answer cannot make a node believe its peer is alive or in some mode:
//!
//! ```text
//! "vigil-res-v1" \n STATUS \n REQUEST_NONCE \n hex(sha256(BODY))
//! ```
//!
//! Pure functions and a small replay cache: time is an argument, so tests and the simulation control it.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_NODE: &str = "x-vigil-node";
pub const HEADER_TIMESTAMP: &str = "x-vigil-timestamp";
pub const HEADER_NONCE: &str = "x-vigil-nonce";
pub const HEADER_SIGNATURE: &str = "x-vigil-signature";

/// Why a signed request or answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("malformed header {0}")]
    Malformed(&'static str),
    #[error("timestamp {skew_ms} ms away from this node's clock (window ±{window_ms} ms)")]
    Stale { skew_ms: i64, window_ms: u64 },
    #[error("nonce already used (replay)")]
    Replay,
    #[error("bad signature")]
    BadSignature,
}

/// The signed headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub node: String,
    pub timestamp_ms: u64,
    pub nonce: String,
    pub signature: String,
}

impl SignedHeaders {
    /// The signature headers of a peer request, read but not yet verified; an error names the header
    /// that is missing or malformed.
    pub fn from_headers(headers: &hyper::HeaderMap) -> Result<SignedHeaders, AuthError> {
        let get = |name: &'static str| -> Result<&str, AuthError> {
            headers.get(name).ok_or(AuthError::Missing(name))?.to_str().map_err(|_| AuthError::Malformed(name))
        };
        Ok(SignedHeaders {
            node: get(HEADER_NODE)?.to_string(),
            timestamp_ms: get(HEADER_TIMESTAMP)?.parse().map_err(|_| AuthError::Malformed(HEADER_TIMESTAMP))?,
            nonce: get(HEADER_NONCE)?.to_string(),
            signature: get(HEADER_SIGNATURE)?.to_string(),
        })
    }
}

/// `timestamp_ms − now_ms`, computed in i128 and clamped: a hostile timestamp must not overflow
/// before the signature is even checked.
fn skew(timestamp_ms: u64, now_ms: u64) -> i64 {
    (i128::from(timestamp_ms) - i128::from(now_ms)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn request_mac(key: &[u8], method: &str, path: &str, node: &str, timestamp_ms: u64, nonce: &str, body: &[u8]) -> HmacSha256 {
    let mut m = mac(key);
    let text = format!("vigil-req-v1\n{method}\n{path}\n{node}\n{timestamp_ms}\n{nonce}\n{}", hex::encode(Sha256::digest(body)));
    m.update(text.as_bytes());
    m
}

fn response_mac(key: &[u8], status: u16, request_nonce: &str, body: &[u8]) -> HmacSha256 {
    let mut m = mac(key);
    let text = format!("vigil-res-v1\n{status}\n{request_nonce}\n{}", hex::encode(Sha256::digest(body)));
    m.update(text.as_bytes());
    m
}

/// A fresh random nonce.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

/// Sign a request with `key`.
pub fn sign_request(key: &[u8], method: &str, path: &str, node: &str, body: &[u8], timestamp_ms: u64, nonce: String) -> SignedHeaders {
    let signature = hex::encode(request_mac(key, method, path, node, timestamp_ms, &nonce, body).finalize().into_bytes());
    SignedHeaders { node: node.to_string(), timestamp_ms, nonce, signature }
}

/// Sign an answer to the request that carried `request_nonce`.
pub fn sign_response(key: &[u8], status: u16, request_nonce: &str, body: &[u8]) -> String {
    hex::encode(response_mac(key, status, request_nonce, body).finalize().into_bytes())
}

/// Check an answer's signature against any of `keys`.
pub fn verify_response(keys: &[Vec<u8>], status: u16, request_nonce: &str, body: &[u8], signature: &str) -> Result<(), AuthError> {
    let sig = hex::decode(signature).map_err(|_| AuthError::Malformed(HEADER_SIGNATURE))?;
    // `verify_slice` compares in constant time.
    if keys.iter().any(|k| response_mac(k, status, request_nonce, body).verify_slice(&sig).is_ok()) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

/// Verifies requests: keys, a timestamp window and a replay cache of the nonces seen in the window.
#[derive(Debug)]
pub struct Verifier {
    keys: Vec<Vec<u8>>,
    window_ms: u64,
    seen: Mutex<ReplayCache>,
}

#[derive(Debug, Default)]
struct ReplayCache {
    by_nonce: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

/// Most nonces remembered; beyond this the oldest are forgotten early and requests older than the
/// oldest remembered are refused as stale, so a flood cannot open a replay hole.
const REPLAY_CAPACITY: usize = 100_000;

impl Verifier {
    /// `window_ms`: how far a request's timestamp may be from this node's clock, either way.
    pub fn new(keys: Vec<Vec<u8>>, window_ms: u64) -> Verifier {
        Verifier { keys, window_ms, seen: Mutex::new(ReplayCache::default()) }
    }

    /// The key that signs this node's own requests and answers.
    pub fn signing_key(&self) -> Option<&[u8]> {
        self.keys.first().map(Vec::as_slice)
    }

    /// All keys (for checking answers).
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Whether a request stamped `timestamp_ms` is inside the window at `now_ms` (signature unchecked).
    pub fn is_fresh(&self, timestamp_ms: u64, now_ms: u64) -> bool {
        skew(timestamp_ms, now_ms).unsigned_abs() <= self.window_ms
    }

    /// Check a request; on success its nonce is remembered so it cannot be replayed.
    pub fn verify(&self, method: &str, path: &str, body: &[u8], h: &SignedHeaders, now_ms: u64) -> Result<(), AuthError> {
        let skew = skew(h.timestamp_ms, now_ms);
        if skew.unsigned_abs() > self.window_ms {
            return Err(AuthError::Stale { skew_ms: skew, window_ms: self.window_ms });
        }
        if h.nonce.len() < 16 || h.nonce.len() > 64 {
            return Err(AuthError::Malformed(HEADER_NONCE));
        }
        let sig = hex::decode(&h.signature).map_err(|_| AuthError::Malformed(HEADER_SIGNATURE))?;
        let ok = self
            .keys
            .iter()
            .any(|k| request_mac(k, method, path, &h.node, h.timestamp_ms, &h.nonce, body).verify_slice(&sig).is_ok());
        if !ok {
            return Err(AuthError::BadSignature);
        }
        // Only authentic requests enter the cache, so forgeries cannot evict real nonces.
        let mut seen = self.seen.lock().expect("replay cache lock");
        let horizon = now_ms.saturating_sub(2 * self.window_ms);
        while let Some((at, nonce)) = seen.order.front().cloned() {
            if at >= horizon && seen.order.len() < REPLAY_CAPACITY {
                break;
            }
            seen.order.pop_front();
            seen.by_nonce.remove(&nonce);
        }
        if let Some((oldest, _)) = seen.order.front() {
            if seen.order.len() >= REPLAY_CAPACITY - 1 && h.timestamp_ms <= *oldest {
                return Err(AuthError::Stale { skew_ms: skew, window_ms: self.window_ms });
            }
        }
        if seen.by_nonce.contains_key(&h.nonce) {
            return Err(AuthError::Replay);
        }
        seen.by_nonce.insert(h.nonce.clone(), h.timestamp_ms);
        seen.order.push_back((h.timestamp_ms.max(now_ms), h.nonce.clone()));
        Ok(())
    }
}

/// Compare a presented bearer token with the configured one in constant time.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (a, b) = (Sha256::digest(presented.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &[u8] = b"0123456789abcdef0123456789abcdef";
    const K2: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn signed(key: &[u8], body: &[u8], at: u64) -> SignedHeaders {
        sign_request(key, "POST", "/peer/command", "a", body, at, new_nonce())
    }

    #[test]
    fn good_request_passes_once() {
        let v = Verifier::new(vec![K1.to_vec()], 30_000);
        let h = signed(K1, b"{}", 1_000_000);
        assert_eq!(v.verify("POST", "/peer/command", b"{}", &h, 1_000_100), Ok(()));
        assert_eq!(v.verify("POST", "/peer/command", b"{}", &h, 1_000_200), Err(AuthError::Replay));
    }

    #[test]
    fn tampering_is_refused() {
        let v = Verifier::new(vec![K1.to_vec()], 30_000);
        let h = signed(K1, b"{\"command\":\"go-standby\"}", 1_000_000);
        assert_eq!(v.verify("POST", "/peer/command", b"{\"command\":\"go-active\"}", &h, 1_000_000), Err(AuthError::BadSignature));
        assert_eq!(v.verify("POST", "/peer/other", b"{\"command\":\"go-standby\"}", &h, 1_000_000), Err(AuthError::BadSignature));
        let mut other_node = h.clone();
        other_node.node = "evil".into();
        assert_eq!(v.verify("POST", "/peer/command", b"{\"command\":\"go-standby\"}", &other_node, 1_000_000), Err(AuthError::BadSignature));
        let wrong_key = signed(K2, b"{}", 1_000_000);
        assert_eq!(v.verify("POST", "/peer/command", b"{}", &wrong_key, 1_000_000), Err(AuthError::BadSignature));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let v = Verifier::new(vec![K1.to_vec()], 30_000);
        let old = signed(K1, b"", 1_000_000);
        assert!(matches!(v.verify("POST", "/peer/command", b"", &old, 1_040_000), Err(AuthError::Stale { .. })));
        let future = signed(K1, b"", 1_100_000);
        assert!(matches!(v.verify("POST", "/peer/command", b"", &future, 1_000_000), Err(AuthError::Stale { .. })));
    }

    #[test]
    fn an_absurd_timestamp_is_stale_not_a_panic() {
        let v = Verifier::new(vec![K1.to_vec()], 30_000);
        let mut h = signed(K1, b"", 1_000_000);
        h.timestamp_ms = u64::MAX;
        assert!(matches!(v.verify("POST", "/peer/command", b"", &h, 1_000_000), Err(AuthError::Stale { .. })));
    }

    #[test]
    fn two_keys_during_rotation() {
        let v = Verifier::new(vec![K1.to_vec(), K2.to_vec()], 30_000);
        assert_eq!(v.verify("POST", "/peer/command", b"", &signed(K1, b"", 5), 5), Ok(()));
        assert_eq!(v.verify("POST", "/peer/command", b"", &signed(K2, b"", 5), 5), Ok(()));
        assert_eq!(v.signing_key(), Some(K1));
    }

    #[test]
    fn responses_are_bound_to_the_request_nonce() {
        let sig = sign_response(K1, 200, "nonce-1", b"body");
        let keys = vec![K1.to_vec()];
        assert_eq!(verify_response(&keys, 200, "nonce-1", b"body", &sig), Ok(()));
        assert_eq!(verify_response(&keys, 200, "nonce-2", b"body", &sig), Err(AuthError::BadSignature));
        assert_eq!(verify_response(&keys, 503, "nonce-1", b"body", &sig), Err(AuthError::BadSignature));
        assert_eq!(verify_response(&keys, 200, "nonce-1", b"other", &sig), Err(AuthError::BadSignature));
    }

    #[test]
    fn tokens_compare() {
        assert!(token_matches("secret-token-123", "secret-token-123"));
        assert!(!token_matches("secret-token-124", "secret-token-123"));
        assert!(!token_matches("", "secret-token-123"));
    }
}
