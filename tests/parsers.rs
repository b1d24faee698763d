//! Every parser of outside input, fed thousands of mutants of real inputs: node configurations (the
//! operator guide's full example), every policy in `policies/`, every scenario file, signed peer
//! headers, UDP heartbeats, the HTTP fast lane's request heads, change batches (parsed, checked and applied to a real SQLite store), CIDRs, `HH:MM` times
//! and `ip addr` output.
//!
//! Properties: no parser panics; a refusal names the file it is about, says what was wrong and points
//! at a line inside the text; a refused change batch changes nothing, and an accepted one leaves an
//! intact store. The mutants are seeded (`VIGIL_FUZZ_SEED`, default fixed) and their number scales
//! with `VIGIL_FUZZ_ROUNDS` (default 1), so a failure is reproduced by its seed. The parsers are pure
//! functions of their text, ready for coverage-guided fuzzing (cargo-fuzz) as well.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use vigil::config::NodeConfig;
use vigil::peer::signing::{SignedHeaders, HEADER_BOOT, HEADER_CONTENT_SHA256, HEADER_NODE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_TO};
use vigil::policy::file::{parse_cidr, parse_hhmm, PolicyFile};
use vigil::replication::store::{Patterns, Scopes, Store};
use vigil::replication::Batch;
use vigil::scenario::Scenario;
use vigil::toml_file::TomlError;
use vigil_tests::Rng;

fn seed() -> u64 {
    std::env::var("VIGIL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_f00d)
}

fn rounds() -> usize {
    std::env::var("VIGIL_FUZZ_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

/// Pieces that matter to TOML, JSON and the values behind them: brackets, quotes, escapes, numbers at
/// and past every integer width, non-ASCII and control characters.
const TOKENS: &[&str] = &[
    "\"", "'", "[", "]", "[[", "]]", "{", "}", "=", ",", ".", "\n", "#", "\\", "\\u0000", "\\uD800", "-1", "0", "-0",
    "4294967296", "18446744073709551616", "-9223372036854775809", "1e309", "nan", "inf", "true", "null", "\"\"", "\"x\"",
    "[]", "{}", "é", "\u{202e}", "\u{0}", "\t", "\r\n", "'''", "\"\"\"", "[node]", "[[peer]]", "[relay]", "[[step]]", "1979-05-27",
    "0x10", "1_000", "99999999999999999999999", "..", "/", "../../etc/passwd", " = ", "a.b.c",
];

/// One mutant of `text`: one to four edits at char boundaries (the result stays UTF-8, as every
/// parser here receives it).
fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(7) {
            0 => {
                let end = (at + 1 + rng.below(16)).min(chars.len());
                chars.drain(at.min(end)..end);
            }
            1 => {
                let end = (at + 1 + rng.below(32)).min(chars.len());
                let piece: Vec<char> = chars[at.min(end)..end].to_vec();
                let to = rng.below(chars.len() + 1);
                chars.splice(to..to, piece);
            }
            2 | 3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                chars.splice(at..at, token.chars());
            }
            4 => {
                // Swap two lines.
                let mut lines: Vec<String> = chars.iter().collect::<String>().lines().map(str::to_string).collect();
                if lines.len() > 1 {
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                }
                chars = lines.join("\n").chars().collect();
            }
            5 => chars.truncate(at),
            _ => {
                if at < chars.len() {
                    chars[at] = (0x20 + rng.below(0x5f) as u8) as char;
                }
            }
        }
    }
    chars.into_iter().collect()
}

/// Run `parse` on `input`; a panic fails the test with what reproduces it.
fn no_panic<T>(what: &str, seed: u64, input: &str, parse: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(parse)) {
        Ok(value) => value,
        Err(panic) => {
            let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            let shown: String = input.chars().take(2000).collect();
            panic!("{what} panicked ({message}) on a mutant of seed {seed}; input:\n{shown}");
        }
    }
}

/// What every refusal of a TOML file must be: about that file, with a message, at a line of the text.
fn check_refusal(error: &TomlError, path: &Path, text: &str) {
    assert_eq!(error.path, path, "{error}");
    assert!(!error.message.trim().is_empty(), "an empty message for {}", path.display());
    assert!(error.to_string().starts_with(&path.display().to_string()), "{error}");
    if let Some(line) = error.line {
        let lines = text.lines().count().max(1);
        assert!((1..=lines + 1).contains(&line), "line {line} outside the text's {lines} lines: {error}");
    }
}

/// The operator guide's complete node configuration: the documented example must parse, and it is the
/// richest configuration there is to mutate.
fn guide_config() -> String {
    let guide = std::fs::read_to_string(vigil_tests::root().join("docs/operator-guide.md")).unwrap();
    let start = guide.find("```toml\n[node]").expect("the operator guide shows a full node configuration") + "```toml\n".len();
    let end = start + guide[start..].find("```").unwrap();
    guide[start..end].to_string()
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(toml_files(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Each of `files` must parse as it is; then `per_file` seeded mutants of each go through `parse`
/// (named `what` if it panics), and every refusal is checked. Returns (accepted, refused).
fn mutate_files<T>(what: &str, files: &[(PathBuf, String)], per_file: usize, parse: impl Fn(&Path, &str) -> Result<T, TomlError>) -> (usize, usize) {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (mut accepted, mut refused) = (0, 0);
    for (path, text) in files {
        if let Err(e) = parse(path, text) {
            panic!("{what} refuses a real input: {e}");
        }
        for _ in 0..per_file * rounds() {
            let mutant = mutate(text, &mut rng);
            match no_panic(what, seed, &mutant, || parse(path, &mutant)) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    check_refusal(&e, path, &mutant);
                    refused += 1;
                }
            }
        }
    }
    (accepted, refused)
}

/// The files below `dir` with their text.
fn corpus(dir: &str) -> Vec<(PathBuf, String)> {
    let read = |path: PathBuf| {
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    };
    toml_files(&vigil_tests::root().join(dir)).into_iter().map(read).collect()
}

#[test]
fn node_configurations() {
    let guide = [(PathBuf::from("/etc/vigil/node.toml"), guide_config())];
    let (accepted, refused) = mutate_files("NodeConfig::parse", &guide, 3000, NodeConfig::parse);
    // Both outcomes must occur, or the mutants are not exercising the checks behind the syntax.
    assert!(accepted > 50 && refused > 500, "accepted {accepted}, refused {refused}");
}

#[test]
fn policy_files() {
    let policies = corpus("policies");
    assert!(policies.len() >= 20, "{} policies", policies.len());
    let (_, refused) = mutate_files("PolicyFile::parse", &policies, 150, PolicyFile::parse);
    assert!(refused > policies.len() * 50, "only {refused} refusals");
}

#[test]
fn scenario_files() {
    let scenarios = corpus("tests/scenarios");
    assert!(scenarios.len() >= 100, "{} scenarios", scenarios.len());
    let (_, refused) = mutate_files("Scenario::parse", &scenarios, 20, Scenario::parse);
    assert!(refused > scenarios.len() * 5, "only {refused} refusals");
}

/// Header values as a hostile peer could send them: mutants of good ones, and arbitrary bytes.
#[test]
fn signed_peer_headers() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let good = [
        (HEADER_NODE, "b"),
        (HEADER_TO, "a"),
        (HEADER_BOOT, "0123456789abcdef"),
        (HEADER_TIMESTAMP, "1763780000000"),
        (HEADER_NONCE, "0123456789abcdef0123456789abcdef"),
        (HEADER_CONTENT_SHA256, "cd".repeat(32).leak()),
        (HEADER_SIGNATURE, "ab".repeat(32).leak()),
    ];
    let mut headers = hyper::HeaderMap::new();
    for (name, value) in good {
        headers.insert(name, value.parse().unwrap());
    }
    assert_eq!(SignedHeaders::from_headers(&headers).unwrap().timestamp_ms, 1_763_780_000_000);
    for _ in 0..5000 * rounds() {
        let mut headers = hyper::HeaderMap::new();
        for (name, value) in good {
            match rng.below(6) {
                0 => {}
                1 => {
                    let bytes: Vec<u8> = (0..rng.below(40)).map(|_| rng.next_u64() as u8).collect();
                    if let Ok(v) = hyper::header::HeaderValue::from_bytes(&bytes) {
                        headers.insert(name, v);
                    }
                }
                _ => {
                    if let Ok(v) = hyper::header::HeaderValue::from_str(&mutate(value, &mut rng)) {
                        headers.insert(name, v);
                    }
                }
            }
        }
        let shown = format!("{headers:?}");
        if let Err(e) = no_panic("SignedHeaders::from_headers", seed, &shown, || SignedHeaders::from_headers(&headers)) {
            let text = e.to_string();
            assert!(text.contains("x-vigil-"), "the refusal names no header: {text}");
        }
    }
}

/// UDP heartbeats: random flips, cuts and growth of a real datagram, unsigned (refused at the MAC)
/// and re-signed (so the parser behind the signature sees them). Nothing panics; a refusal says what
/// was wrong; what parses is re-encoded to the same bytes.
#[test]
fn udp_datagrams() {
    use vigil::udp::{decode, encode, seal, Datagram};
    let seed = seed();
    let mut rng = Rng::new(seed);
    let key = b"fuzz-key-0123456789abcdef".to_vec();
    let good = Datagram {
        from: "b".into(),
        to: "a".into(),
        boot: "0123456789abcdef".into(),
        seq: 42,
        wall_ms: 1_763_780_000_000,
        report: vigil::model::Report { mode: vigil::model::Mode::Active, configured_role: Some(vigil::model::Role::Secondary), app_healthy: Some(true), mode_since_ms: Some(5) },
    };
    let bytes = encode(&good, &key).unwrap();
    assert_eq!(decode(&bytes, std::slice::from_ref(&key)).unwrap(), good);
    let body = &bytes[..bytes.len() - 32];
    let (mut parsed, mut refused) = (0, 0);
    for _ in 0..20_000 * rounds() {
        let mut m = body.to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m[i] = rng.next_u64() as u8;
                }
                1 if !m.is_empty() => m.truncate(rng.below(m.len())),
                2 => m.extend((0..rng.below(300)).map(|_| rng.next_u64() as u8)),
                _ => {
                    let i = rng.below(m.len() + 1);
                    m.insert(i, [0u8, 1, 2, 255, b'a'][rng.below(5)]);
                }
            }
        }
        let shown = format!("{m:?}");
        let unsigned = no_panic("udp::decode", seed, &shown, || decode(&[m.as_slice(), &[0u8; 32]].concat(), std::slice::from_ref(&key)));
        assert!(unsigned.is_err(), "a datagram without its MAC was taken: {shown}");
        match no_panic("udp::decode", seed, &shown, || decode(&seal(&m, &key), std::slice::from_ref(&key))) {
            Ok(d) => {
                parsed += 1;
                assert_eq!(decode(&encode(&d, &key).unwrap(), std::slice::from_ref(&key)).unwrap(), d, "{shown}");
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(parsed > 0 && refused > 0, "the mutants reach both outcomes ({parsed} parsed, {refused} refused)");
}

/// Pieces that matter to an HTTP/1 request head.
const HTTP_TOKENS: &[&[u8]] = &[
    b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b",", b"?", b"#", b"\0", b"\xff", b"\xc3\xa9", b"GET", b"HEAD", b"POST", b"OPTIONS",
    b"/active", b"/role", b"/status", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"Connection: close\r\n", b"Connection: keep-alive\r\n",
    b"connection: Keep-Alive, close\r\n", b"Content-Length: 0\r\n", b"Content-Length: 5\r\n\r\nhello", b"Transfer-Encoding: chunked\r\n",
    b"Upgrade: h2c\r\n", b"Expect: 100-continue\r\n", b"\r\n\r\n",
];

/// The fast lane's decision, from the head's text alone and without httparse: the request line is
/// `GET` or `HEAD`, one of the four paths, HTTP/1.0 or 1.1; no body, upgrade or expectation header;
/// keep-alive by hyper's rule.
fn fast_lane_oracle(head: &[u8]) -> Option<(&'static str, bool, bool, bool)> {
    let text = String::from_utf8_lossy(head);
    let text = text.trim_start_matches(['\r', '\n']);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut first = lines.next()?.split(' ');
    let (method, path, version) = (first.next()?, first.next()?, first.next()?);
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    let path = ["/health", "/active", "/standby", "/role"].into_iter().find(|p| *p == path)?;
    let http10 = match version {
        "HTTP/1.0" => true,
        "HTTP/1.1" => false,
        _ => return None,
    };
    let (mut keep_alive, mut close) = (!http10, false);
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let name = name.to_ascii_lowercase();
        if ["content-length", "transfer-encoding", "upgrade", "expect"].contains(&name.as_str()) {
            return None;
        }
        if name == "connection" {
            // A value that is not visible ASCII has no tokens (hyper reads it as a string or not at all).
            let visible = value.chars().all(|c| c == '\t' || (' '..='~').contains(&c));
            let has = |t: &str| visible && value.split(',').any(|v| v.trim().eq_ignore_ascii_case(t));
            if close || has("close") {
                (close, keep_alive) = (true, false);
            } else if !keep_alive {
                keep_alive = has("keep-alive");
            }
        }
    }
    Some((path, head_only, http10, keep_alive))
}

/// The fast lane's request heads (`vigil::http::fast::parse`): mutants of real load balancers'
/// requests, text and bytes. Nothing panics; a head it answers is answered whichever prefix of it
/// arrived first (every shorter prefix waits for more), is decided by its own bytes (what follows does
/// not change it), and is what an independent reading of the head says: a body-less GET or HEAD of a
/// probe path, with hyper's keep-alive rule.
#[test]
fn fast_lane_request_heads() {
    use vigil::http::fast::{parse, Parsed};
    let seed = seed();
    let mut rng = Rng::new(seed);
    let corpus: &[&[u8]] = &[
        b"GET /active HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
        b"HEAD /role HTTP/1.0\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        b"GET /standby HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /standby HTTP/1.0\r\n\r\n",
        b"GET /active HTTP/1.1\r\nConnection: close\r\n\r\nGET /status HTTP/1.1\r\n\r\n",
        b"POST /admin/switch/active HTTP/1.1\r\nAuthorization: Bearer x\r\nContent-Length: 0\r\n\r\n",
    ];
    let (mut answered, mut other) = (0, 0);
    for _ in 0..20_000 * rounds() {
        let mut m = corpus[rng.below(corpus.len())].to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(m.len() + 1);
            match rng.below(5) {
                0 if at < m.len() => m[at] = rng.next_u64() as u8,
                1 => {
                    let end = (at + 1 + rng.below(12)).min(m.len());
                    m.drain(at.min(end)..end);
                }
                2 => m.truncate(at),
                _ => {
                    let token = HTTP_TOKENS[rng.below(HTTP_TOKENS.len())];
                    m.splice(at..at, token.iter().copied());
                }
            }
        }
        let shown = format!("{:?}", String::from_utf8_lossy(&m));
        match no_panic("fast::parse", seed, &shown, || parse(&m)) {
            Parsed::Probe(req) => {
                answered += 1;
                assert!(req.len > 0 && req.len <= m.len(), "{shown}: length {}", req.len);
                let head = &m[..req.len];
                assert_eq!(parse(head), Parsed::Probe(req), "{shown}: decided by the head alone");
                let cut = rng.below(req.len);
                assert_eq!(parse(&head[..cut]), Parsed::Partial, "{shown}: a prefix of {cut} bytes must wait");
                let oracle = fast_lane_oracle(head);
                assert_eq!(oracle, Some((req.probe.path(), req.head, req.http10, req.keep_alive)), "{shown}");
            }
            Parsed::Other => other += 1,
            Parsed::Partial => {}
        }
    }
    assert!(answered > 1000 && other > 1000, "the mutants reach both outcomes ({answered} answered, {other} for hyper)");
}

/// Change batches as `POST /peer/changes` receives them: parsed, checked whole, and applied to a real
/// store only when the check passes. A refused batch changes nothing; after all of them the store is
/// intact (SQLite's `quick_check`) and its item count matches its content.
#[test]
fn change_batches() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let scopes = || Scopes { sizes: vec![("config".into(), 1 << 20), ("templates".into(), 1 << 16)] };
    let source = Store::open(&dir.path().join("a.db"), "a", Patterns::new(["ha.*".to_string()]), scopes()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for i in 0..5 {
        source.put("config", &format!("sip.trunk{i}"), format!("host-{i}").into_bytes(), None, now).unwrap();
    }
    source.put("templates", "welcome.txt", b"hello".to_vec(), Some(0o644), now).unwrap();
    source.delete("config", "sip.trunk4", now).unwrap();
    let (changes, _) = source.changes_since(0, 100, 1 << 20).unwrap();
    let batch = serde_json::to_string(&Batch { changes }).unwrap();

    let target = Store::open(&dir.path().join("b.db"), "b", Patterns::new(["ha.*".to_string()]), scopes()).unwrap();
    let (mut parsed, mut applied) = (0, 0);
    for i in 0..3000 * rounds() {
        // Half the mutants are text edits (mostly malformed JSON), half well-formed JSON with hostile
        // field values (what gets past the parser to the checks).
        let mutant = if i % 2 == 0 { mutate(&batch, &mut rng) } else { hostile_values(&batch, &mut rng) };
        let Ok(batch) = no_panic("Batch JSON", seed, &mutant, || serde_json::from_str::<Batch>(&mutant)) else { continue };
        parsed += 1;
        let before = target.items().unwrap();
        match no_panic("Store::check_batch", seed, &mutant, || target.check_batch(&batch.changes, now)) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert_eq!(target.items().unwrap(), before, "a refused batch changed the store");
            }
            Ok(()) => {
                no_panic("Store::apply", seed, &mutant, || target.apply(&batch.changes, now)).unwrap_or_else(|e| panic!("a checked batch failed to apply: {e}\n{mutant}"));
                applied += 1;
            }
        }
    }
    assert!(parsed > 300 && applied > 100, "parsed {parsed}, applied {applied}");
    drop(target);
    let db = rusqlite::Connection::open(dir.path().join("b.db")).unwrap();
    let check: String = db.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

/// `batch` (JSON) with one to three fields of its changes set to values a broken or hostile peer could
/// send: traversal and absolute keys, unknown and local-only scopes and keys, far-future and overflowing
/// clocks, bad base64, oversized values, wrong types.
fn hostile_values(batch: &str, rng: &mut Rng) -> String {
    let mut value: serde_json::Value = serde_json::from_str(batch).unwrap();
    let changes = value["changes"].as_array_mut().unwrap();
    let big = "QUFB".repeat(1 << 15);
    let choices: Vec<serde_json::Value> = vec![
        "".into(), "../x".into(), "a/../../b".into(), "/etc/passwd".into(), "ha.role".into(), "templates".into(), "nope".into(),
        "config".into(), "welcome.txt".into(), "sub/dir/file".into(), "x".repeat(2000).into(), "\u{0}".into(), "!!!".into(), big.into(),
        0.into(), (-1).into(), u64::MAX.into(), 1e20.into(), serde_json::Value::Null, true.into(), serde_json::json!([]), serde_json::json!({}),
        0o4755.into(), 0o777.into(),
    ];
    for _ in 0..1 + rng.below(3) {
        let which = rng.below(changes.len());
        let change = &mut changes[which];
        let fields: Vec<String> = change.as_object().unwrap().keys().cloned().collect();
        let field = &fields[rng.below(fields.len())];
        let new = choices[rng.below(choices.len())].clone();
        if field == "hlc" {
            // Into the clock itself: its wall time or counter.
            if let Some(parts) = change[field].as_object_mut() {
                let parts_keys: Vec<String> = parts.keys().cloned().collect();
                let part = &parts_keys[rng.below(parts_keys.len())];
                parts.insert(part.clone(), new);
                continue;
            }
        }
        change[field] = new;
    }
    serde_json::to_string(&value).unwrap()
}

#[test]
fn small_value_parsers() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    assert_eq!(parse_cidr("10.0.0.100/24").map(|(_, p)| p), Some(24));
    assert_eq!(parse_hhmm("04:30"), Ok(270));
    let addr_output = "2: eth0    inet 10.0.0.1/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                       2: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n";
    assert_eq!(vigil::vip::parse_addrs(addr_output).len(), 2);
    for _ in 0..5000 * rounds() {
        let cidr = mutate("fd00:1:2::10/64 10.0.0.100/24", &mut rng);
        if let Some((ip, prefix)) = no_panic("parse_cidr", seed, &cidr, || parse_cidr(&cidr)) {
            assert!(prefix <= if ip.is_ipv4() { 32 } else { 128 }, "{cidr:?} gave /{prefix}");
        }
        let hhmm = mutate("23:59", &mut rng);
        if let Ok(minutes) = no_panic("parse_hhmm", seed, &hhmm, || parse_hhmm(&hhmm)) {
            assert!(minutes < 24 * 60, "{hhmm:?} gave {minutes} minutes");
        }
        let output = mutate(addr_output, &mut rng);
        for a in no_panic("parse_addrs", seed, &output, || vigil::vip::parse_addrs(&output)) {
            assert!(!a.cidr.is_empty());
        }
    }
}
