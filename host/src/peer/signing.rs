//! Signing and verifying peer requests and responses (HMAC-SHA256 with a shared key).
//!
//! A request carries seven headers: `x-vigil-node` (the sender's id), `x-vigil-to` (the receiver's
//! id), `x-vigil-boot` (the receiver's run, as its heartbeat answers say it), `x-vigil-timestamp` (ms
//! since the Unix epoch), `x-vigil-nonce` (16 random bytes, hex), `x-vigil-content-sha256` (hex SHA-256
//! of the body) and `x-vigil-signature`, the hex HMAC of
//!
//! ```text
//! "vigil-req-v2" \n METHOD \n PATH \n NODE \n TO \n BOOT \n TIMESTAMP \n NONCE \n hex(sha256(BODY))
//! ```
//!
//! The body's hash travels in a header so that the receiver checks the signature *before* it reads
//! the body: only authentic peers may send the large bodies of replication, and an unauthenticated
//! client never gets more than the small body limit buffered. The body is then checked against the
//! hash.
//!
//! The receiver refuses a request addressed to another node (a message reflected through a moved VIP,
//! or sent to the wrong address), a timestamp outside its window, a request other than a heartbeat
//! signed for an earlier run of the receiver (its replay cache is empty after a restart, so nothing
//! captured before it may be played back; a run id rather than a time, so that a peer whose clock is a
//! few seconds behind is not refused after every restart), a nonce it has already seen inside the
//! window (replay), and a signature that matches none of its keys
//! (two are accepted during a key rotation; the first one signs). The checks run signature first, so a
//! refusal of an authentic request (see [`AuthError::authentic`]) can be answered, signed: a peer whose
//! clock is off learns the receiver's time and stays "reachable, skewed" instead of "dead".
//!
//! The answer is signed too, bound to the request's nonce, so a stale or forged answer cannot make a
//! node believe its peer is alive or in some mode:
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
pub const HEADER_TO: &str = "x-vigil-to";
pub const HEADER_BOOT: &str = "x-vigil-boot";
pub const HEADER_CONTENT_SHA256: &str = "x-vigil-content-sha256";
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
    #[error("request addressed to {to:?}, but this node is {me:?} (a misdirected or reflected message)")]
    Misdirected { to: String, me: String },
    #[error("signed for run {boot:?} of this node, which restarted since (no replay of requests from before a restart)")]
    EarlierRun { boot: String },
    #[error("the body does not match header {HEADER_CONTENT_SHA256}")]
    BodyMismatch,
}

impl AuthError {
    /// Whether the request carried a good signature and was refused for when or where it was sent:
    /// such a refusal is answered signed, so the sender learns why from an authentic source.
    pub fn authentic(&self) -> bool {
        matches!(self, AuthError::Stale { .. } | AuthError::EarlierRun { .. } | AuthError::Misdirected { .. } | AuthError::Replay)
    }

    /// Whether the sender's clock is the reason (it is reachable, its clock is not).
    pub fn is_clock(&self) -> bool {
        matches!(self, AuthError::Stale { .. })
    }
}

/// The signed headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub node: String,
    /// The receiver's id.
    pub to: String,
    /// The receiver's run (empty when the sender does not know it yet; heartbeats need none).
    pub boot: String,
    pub timestamp_ms: u64,
    pub nonce: String,
    /// Hex SHA-256 of the body.
    pub content_sha256: String,
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
            to: get(HEADER_TO)?.to_string(),
            boot: headers.get(HEADER_BOOT).map(|v| v.to_str().map_err(|_| AuthError::Malformed(HEADER_BOOT))).transpose()?.unwrap_or("").to_string(),
            timestamp_ms: get(HEADER_TIMESTAMP)?.parse().map_err(|_| AuthError::Malformed(HEADER_TIMESTAMP))?,
            nonce: get(HEADER_NONCE)?.to_string(),
            content_sha256: get(HEADER_CONTENT_SHA256)?.to_string(),
            signature: get(HEADER_SIGNATURE)?.to_string(),
        })
    }

    /// The headers to send, in order.
    pub fn pairs(&self) -> [(&'static str, String); 7] {
        [
            (HEADER_NODE, self.node.clone()),
            (HEADER_TO, self.to.clone()),
            (HEADER_BOOT, self.boot.clone()),
            (HEADER_TIMESTAMP, self.timestamp_ms.to_string()),
            (HEADER_NONCE, self.nonce.clone()),
            (HEADER_CONTENT_SHA256, self.content_sha256.clone()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }

    /// Whether `body` is the body these headers were signed for.
    pub fn check_body(&self, body: &[u8]) -> Result<(), AuthError> {
        if body_hash(body) == self.content_sha256 {
            Ok(())
        } else {
            Err(AuthError::BodyMismatch)
        }
    }
}

/// Hex SHA-256 of a body, as signed.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// `timestamp_ms − now_ms`, computed in i128 and clamped: a hostile timestamp must not overflow
/// before the signature is even checked.
fn skew(timestamp_ms: u64, now_ms: u64) -> i64 {
    (i128::from(timestamp_ms) - i128::from(now_ms)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn request_mac(key: &[u8], method: &str, path: &str, h: &SignedHeaders) -> HmacSha256 {
    let mut m = mac(key);
    let text = format!(
        "vigil-req-v2\n{method}\n{path}\n{}\n{}\n{}\n{}\n{}\n{}",
        h.node, h.to, h.boot, h.timestamp_ms, h.nonce, h.content_sha256
    );
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

/// What a request is, for signing: who sends it to whom, and what.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path with its query.
    pub path: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// The receiver's run, as its last heartbeat answer said ("" when not known yet).
    pub boot: &'a str,
    pub body: &'a [u8],
}

/// Sign a request with `key`.
pub fn sign_request(key: &[u8], r: Request<'_>, timestamp_ms: u64, nonce: String) -> SignedHeaders {
    let mut h = SignedHeaders {
        node: r.from.to_string(),
        to: r.to.to_string(),
        boot: r.boot.to_string(),
        timestamp_ms,
        nonce,
        content_sha256: body_hash(r.body),
        signature: String::new(),
    };
    h.signature = hex::encode(request_mac(key, r.method, r.path, &h).finalize().into_bytes());
    h
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
    /// This node's id: requests must be addressed to it.
    me: String,
    /// This run of the node: requests other than heartbeats must name it.
    boot: String,
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
    /// `window_ms`: how far a request's timestamp may be from this node's clock, either way; `me`:
    /// this node's id. Each verifier is a new run of the node, with a random run id.
    pub fn new(keys: Vec<Vec<u8>>, window_ms: u64, me: &str) -> Verifier {
        Verifier { keys, window_ms, me: me.to_string(), boot: new_nonce()[..16].to_string(), seen: Mutex::new(ReplayCache::default()) }
    }

    /// This run's id, which heartbeat answers carry.
    pub fn boot(&self) -> &str {
        &self.boot
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

    /// Check a request's headers (the body is checked against them with
    /// [`SignedHeaders::check_body`] once read); on success its nonce is remembered so it cannot be
    /// replayed. The signature is checked first: every later refusal is of an authentic request.
    pub fn verify(&self, method: &str, path: &str, h: &SignedHeaders, now_ms: u64) -> Result<(), AuthError> {
        if h.nonce.len() < 16 || h.nonce.len() > 64 {
            return Err(AuthError::Malformed(HEADER_NONCE));
        }
        let sig = hex::decode(&h.signature).map_err(|_| AuthError::Malformed(HEADER_SIGNATURE))?;
        let ok = self.keys.iter().any(|k| request_mac(k, method, path, h).verify_slice(&sig).is_ok());
        if !ok {
            return Err(AuthError::BadSignature);
        }
        if h.to != self.me {
            return Err(AuthError::Misdirected { to: h.to.chars().take(64).collect(), me: self.me.clone() });
        }
        let skew = skew(h.timestamp_ms, now_ms);
        if skew.unsigned_abs() > self.window_ms {
            return Err(AuthError::Stale { skew_ms: skew, window_ms: self.window_ms });
        }
        // A heartbeat only reads the mode; everything else must be for this run.
        if path != crate::peer::HEARTBEAT_PATH && h.boot != self.boot {
            return Err(AuthError::EarlierRun { boot: h.boot.chars().take(32).collect() });
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
    const PATH: &str = "/peer/command";

    fn request<'a>(body: &'a [u8], to: &'a str) -> Request<'a> {
        Request { method: "POST", path: PATH, from: "a", to, boot: "run-1", body }
    }

    fn signed(key: &[u8], body: &[u8], at: u64) -> SignedHeaders {
        sign_request(key, request(body, "b"), at, new_nonce())
    }

    fn verifier(keys: &[&[u8]]) -> Verifier {
        let mut v = Verifier::new(keys.iter().map(|k| k.to_vec()).collect(), 30_000, "b");
        v.boot = "run-1".into();
        v
    }

    #[test]
    fn good_request_passes_once() {
        let v = verifier(&[K1]);
        let h = signed(K1, b"{}", 1_000_000);
        assert_eq!(v.verify("POST", PATH, &h, 1_000_100), Ok(()));
        assert_eq!(h.check_body(b"{}"), Ok(()));
        assert_eq!(v.verify("POST", PATH, &h, 1_000_200), Err(AuthError::Replay));
    }

    #[test]
    fn tampering_is_refused() {
        let v = verifier(&[K1]);
        let h = signed(K1, b"{\"command\":\"go-standby\"}", 1_000_000);
        assert_eq!(h.check_body(b"{\"command\":\"go-active\"}"), Err(AuthError::BodyMismatch));
        let mut other_hash = h.clone();
        other_hash.content_sha256 = body_hash(b"{\"command\":\"go-active\"}");
        assert_eq!(v.verify("POST", PATH, &other_hash, 1_000_000), Err(AuthError::BadSignature));
        assert_eq!(v.verify("POST", "/peer/other", &h, 1_000_000), Err(AuthError::BadSignature));
        let mut other_node = h.clone();
        other_node.node = "evil".into();
        assert_eq!(v.verify("POST", PATH, &other_node, 1_000_000), Err(AuthError::BadSignature));
        let wrong_key = signed(K2, b"{}", 1_000_000);
        assert_eq!(v.verify("POST", PATH, &wrong_key, 1_000_000), Err(AuthError::BadSignature));
        assert!(!AuthError::BadSignature.authentic());
    }

    #[test]
    fn a_request_for_another_node_is_refused_even_when_authentic() {
        let v = verifier(&[K1]);
        // Node a's heartbeat to b, arriving at a itself (a VIP moved), or at c.
        let h = sign_request(K1, request(b"", "a"), 1_000_000, new_nonce());
        let e = v.verify("POST", PATH, &h, 1_000_000).unwrap_err();
        assert!(matches!(&e, AuthError::Misdirected { to, me } if to == "a" && me == "b"), "{e}");
        assert!(e.authentic() && !e.is_clock());
        // The receiver's id is signed: rewriting the header breaks the signature.
        let mut rewritten = h.clone();
        rewritten.to = "b".into();
        assert_eq!(v.verify("POST", PATH, &rewritten, 1_000_000), Err(AuthError::BadSignature));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let v = verifier(&[K1]);
        let old = signed(K1, b"", 1_000_000);
        let e = v.verify("POST", PATH, &old, 1_040_000).unwrap_err();
        assert!(matches!(e, AuthError::Stale { .. }) && e.authentic() && e.is_clock());
        let future = signed(K1, b"", 1_100_000);
        assert!(matches!(v.verify("POST", PATH, &future, 1_000_000), Err(AuthError::Stale { .. })));
    }

    #[test]
    fn requests_for_an_earlier_run_are_refused() {
        // Captured before a restart and replayed after it: the cache that knew the nonce is gone, the
        // timestamp is still inside the window, but the run is not the same.
        let restarted = Verifier::new(vec![K1.to_vec()], 30_000, "b");
        assert_ne!(restarted.boot(), Verifier::new(vec![K1.to_vec()], 30_000, "b").boot(), "every run has its own id");
        let captured = signed(K1, b"", 1_000_000);
        let e = restarted.verify("POST", PATH, &captured, 1_000_500).unwrap_err();
        assert!(matches!(e, AuthError::EarlierRun { .. }) && e.authentic() && !e.is_clock(), "{e}");
        // A heartbeat needs no run: it is how a peer learns it.
        let heartbeat = sign_request(K1, Request { method: "GET", path: crate::peer::HEARTBEAT_PATH, boot: "", ..request(b"", "b") }, 1_000_000, new_nonce());
        assert_eq!(restarted.verify("GET", crate::peer::HEARTBEAT_PATH, &heartbeat, 1_000_500), Ok(()));
        let current = sign_request(K1, Request { boot: restarted.boot(), ..request(b"", "b") }, 1_000_000, new_nonce());
        assert_eq!(restarted.verify("POST", PATH, &current, 1_000_500), Ok(()));
    }

    #[test]
    fn an_absurd_timestamp_is_stale_not_a_panic() {
        let v = verifier(&[K1]);
        let h = signed(K1, b"", u64::MAX);
        assert!(matches!(v.verify("POST", PATH, &h, 1_000_000), Err(AuthError::Stale { .. })));
    }

    #[test]
    fn two_keys_during_rotation() {
        let v = verifier(&[K1, K2]);
        assert_eq!(v.verify("POST", PATH, &signed(K1, b"", 5), 5), Ok(()));
        assert_eq!(v.verify("POST", PATH, &signed(K2, b"", 5), 5), Ok(()));
        assert_eq!(v.signing_key(), Some(K1));
    }

    #[test]
    fn headers_round_trip() {
        let h = signed(K1, b"body", 42);
        let mut map = hyper::HeaderMap::new();
        for (name, value) in h.pairs() {
            map.insert(name, value.parse().unwrap());
        }
        assert_eq!(SignedHeaders::from_headers(&map), Ok(h));
        map.remove(HEADER_TO);
        assert_eq!(SignedHeaders::from_headers(&map), Err(AuthError::Missing(HEADER_TO)));
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
