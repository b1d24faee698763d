//! The fast lane ([`super::fast`]) on a real listener and a real node state: pipelined and split
//! requests, HEAD, HTTP/1.0, `Connection: close`, the hand-over to hyper, the head limit and timer,
//! and byte-for-byte agreement with hyper's answers to the same requests.

use super::fast::{self, Lane, Parsed, Probe};
use super::tests::{loop_ran, node, TOKEN};
use super::{serve, Endpoint};
use crate::model::Mode;
use crate::state::NodeState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

async fn server(state: &Arc<NodeState>) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(serve(listener, state.clone(), stop_rx, Endpoint::Plain));
    (addr, stop)
}

/// A client reading answers one at a time.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One answer: the status line and headers (the date's value replaced by `*`), and the body.
type Answer = (String, String);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await.expect("an answer in time").unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next answer (`head`: to a HEAD request, so without a body).
    async fn answer(&mut self, head: bool) -> Answer {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(self.fill().await > 0, "closed before an answer; got {:?}", String::from_utf8_lossy(&self.buf));
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        let length: usize = text.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |n| n.parse().unwrap());
        let length = if head { 0 } else { length };
        while self.buf.len() < end + length {
            assert!(self.fill().await > 0, "closed inside a body");
        }
        let body = String::from_utf8(self.buf[end..end + length].to_vec()).unwrap();
        self.buf.drain(..end + length);
        let head = text
            .lines()
            .map(|l| match l.strip_prefix("date: ") {
                Some(date) => {
                    assert_eq!(date.len(), 29, "an HTTP date: {date}");
                    "date: *".to_string()
                }
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        (head, body)
    }

    /// Whether the server closed the connection (nothing more arrives).
    async fn closed(&mut self) -> bool {
        self.fill().await == 0 && self.buf.is_empty()
    }
}

fn status(answer: &Answer) -> &str {
    answer.0.lines().next().unwrap()
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.0.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

#[test]
fn the_parser_takes_only_bodyless_gets_and_heads_of_the_four_paths() {
    let probe = |text: &str| match fast::parse(text.as_bytes()) {
        Parsed::Probe(r) => Some((r.probe, r.head, r.http10, r.keep_alive, r.len)),
        other => panic!("{text:?}: {other:?}"),
    };
    let get = "GET /active HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(probe(get), Some((Probe::Active, false, false, true, get.len())));
    for cut in 0..get.len() {
        assert_eq!(fast::parse(&get.as_bytes()[..cut]), Parsed::Partial, "a head cut at {cut}");
    }
    let two = format!("{get}HEAD /role HTTP/1.0\r\n\r\n");
    assert_eq!(probe(&two), Some((Probe::Active, false, false, true, get.len())), "the first of pipelined requests");
    assert_eq!(probe("HEAD /role HTTP/1.0\r\n\r\n"), Some((Probe::Role, true, true, false, 23)));
    assert_eq!(probe("GET /health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").map(|p| p.3), Some(true));
    assert_eq!(probe("GET /standby HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n").map(|p| p.3), Some(false));
    assert_eq!(
        probe("GET /standby HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n").map(|p| p.3),
        Some(false),
        "close wins over a later keep-alive"
    );
    for other in [
        "POST /active HTTP/1.1\r\n\r\n",
        "OPTIONS /active HTTP/1.1\r\n\r\n",
        "GET /status HTTP/1.1\r\n\r\n",
        "GET /active?x=1 HTTP/1.1\r\n\r\n",
        "GET http://a/active HTTP/1.1\r\n\r\n",
        "GET /active HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "GET /active HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /active HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "GET /active HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        "GET /active HTTP/2.0\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET /act\0ive HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(fast::parse(other.as_bytes()), Parsed::Other, "{other:?}");
    }
    let many: String = (0..fast::MAX_HEADERS + 1).map(|i| format!("x-{i}: y\r\n")).collect();
    assert_eq!(fast::parse(format!("GET /active HTTP/1.1\r\n{many}\r\n").as_bytes()), Parsed::Other, "more headers than the lane takes");
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_split_head_http10_and_close() {
    let (state, clock, _dir) = node("active").await;
    loop_ran(&state, &clock, Mode::Active);
    let (addr, _stop) = server(&state).await;
    let before = state.metrics.http_requests.get();

    let mut c = Client::connect(addr).await;
    c.send(b"GET /active HTTP/1.1\r\nHost: a\r\n\r\nHEAD /role HTTP/1.1\r\n\r\nGET /standby HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n").await;
    let active = c.answer(false).await;
    assert_eq!((status(&active), active.1.as_str()), ("HTTP/1.1 200 OK", "ACTIVE\n"));
    assert_eq!(
        active.0,
        "HTTP/1.1 200 OK\ncontent-type: text/plain; charset=utf-8\nx-vigil-node: a\ncache-control: no-store\ncontent-length: 7\ndate: *\n"
    );
    let role = c.answer(true).await;
    assert_eq!((status(&role), role.1.as_str(), header(&role, "content-length")), ("HTTP/1.1 200 OK", "", None), "HEAD: no body");
    let standby = c.answer(false).await;
    assert_eq!((status(&standby), standby.1.as_str()), ("HTTP/1.1 503 Service Unavailable", "ACTIVE\n"));
    let health = c.answer(false).await;
    assert_eq!((status(&health), health.1.as_str()), ("HTTP/1.1 200 OK", "OK\n"));

    // A head split across three reads.
    for piece in [&b"GET /ro"[..], b"le HTTP/1.1\r\nUser-Agent: t", b"est\r\n\r\n"] {
        c.send(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.answer(false).await.1, "ACTIVE\n");
    assert_eq!(state.metrics.http_requests.get() - before, 5, "each answer counted");

    // The answer follows the published mode on the same connection.
    loop_ran(&state, &clock, Mode::Standby);
    let now = {
        c.send(b"GET /active HTTP/1.1\r\n\r\n").await;
        c.answer(false).await
    };
    assert_eq!((status(&now), now.1.as_str()), ("HTTP/1.1 503 Service Unavailable", "STANDBY\n"));
    clock.advance(1_000);
    c.send(b"GET /standby HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.answer(false).await.1, "STALLED\n", "a stalled loop stops claiming the role");

    // HTTP/1.0: answered in 1.0 and closed, unless kept alive.
    loop_ran(&state, &clock, Mode::Active);
    let mut c = Client::connect(addr).await;
    c.send(b"GET /active HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    let kept = c.answer(false).await;
    assert_eq!((status(&kept), header(&kept, "connection")), ("HTTP/1.0 200 OK", Some("keep-alive")));
    c.send(b"GET /active HTTP/1.0\r\n\r\n").await;
    let last = c.answer(false).await;
    assert_eq!((status(&last), header(&last, "connection")), ("HTTP/1.0 200 OK", None));
    assert!(c.closed().await, "HTTP/1.0 without keep-alive closes");

    // `Connection: close`: said, and done; what follows it is not answered.
    let mut c = Client::connect(addr).await;
    c.send(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\nGET /health HTTP/1.1\r\n\r\n").await;
    let closing = c.answer(false).await;
    assert_eq!(header(&closing, "connection"), Some("close"));
    assert!(c.closed().await, "closed after the answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_goes_to_hyper_at_its_first_other_request_and_stays() {
    let (state, clock, _dir) = node("standby").await;
    loop_ran(&state, &clock, Mode::Standby);
    let (addr, _stop) = server(&state).await;
    let mut c = Client::connect(addr).await;
    // Fast answers, then /status pipelined behind them: answered in order.
    c.send(b"GET /standby HTTP/1.1\r\n\r\nGET /role HTTP/1.1\r\n\r\nGET /status HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.answer(false).await.1, "STANDBY\n");
    assert_eq!(c.answer(false).await.1, "STANDBY\n");
    let status_page = c.answer(false).await;
    assert_eq!(header(&status_page, "content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&status_page.1).unwrap();
    assert_eq!(json["node"]["id"], "a");
    // An admin request with its token, on the same connection, after the hand-over.
    c.send(format!("POST /admin/switch/active HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
    assert_eq!(status(&c.answer(false).await), "HTTP/1.1 202 Accepted");
    assert_eq!(state.inbox.lock().unwrap().operator, Some(crate::model::OperatorRequest::Active));
    // The load balancers' endpoints still answer (by hyper now), following the mode.
    loop_ran(&state, &clock, Mode::Active);
    c.send(b"GET /active HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.answer(false).await.1, "ACTIVE\n");

    // A head over the limit is refused as hyper refuses it.
    let mut c = Client::connect(addr).await;
    let big = "x".repeat(fast::MAX_HEAD + 100);
    c.send(format!("GET /active HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    assert_eq!(status(&c.answer(false).await), "HTTP/1.1 431 Request Header Fields Too Large");
}

/// The same requests sent to a fresh connection (the fast lane) and to one that hyper took over (an
/// `OPTIONS` first) get the same bytes, but for the date's value.
#[tokio::test(flavor = "multi_thread")]
async fn the_fast_lane_answers_byte_for_byte_as_hyper() {
    let (state, clock, _dir) = node("active").await;
    let (addr, _stop) = server(&state).await;
    let mut compared = 0;
    for (mode, stalled) in [(Mode::Active, false), (Mode::Standby, false), (Mode::Active, true)] {
        loop_ran(&state, &clock, mode);
        if stalled {
            clock.advance(1_000);
        }
        for path in ["/health", "/active", "/standby", "/role"] {
            for method in ["GET", "HEAD"] {
                for (version, connection) in
                    [("1.1", ""), ("1.1", "Connection: close\r\n"), ("1.0", ""), ("1.0", "Connection: keep-alive\r\n"), ("1.1", "Connection: keep-alive\r\n")]
                {
                    let request = format!("{method} {path} HTTP/{version}\r\nHost: a\r\n{connection}\r\n");
                    assert!(matches!(fast::parse(request.as_bytes()), Parsed::Probe(_)), "{request:?}");
                    let mut fast = Client::connect(addr).await;
                    fast.send(request.as_bytes()).await;
                    let from_lane = fast.answer(method == "HEAD").await;
                    let mut hyper = Client::connect(addr).await;
                    hyper.send(b"OPTIONS /role HTTP/1.1\r\n\r\n").await;
                    let options = hyper.answer(true).await;
                    assert_eq!(header(&options, "allow"), Some("GET, HEAD, OPTIONS"), "hyper's answer");
                    hyper.send(request.as_bytes()).await;
                    let from_hyper = hyper.answer(method == "HEAD").await;
                    assert_eq!(from_lane, from_hyper, "{request:?}");
                    let keeps = header(&from_hyper, "connection").is_none_or(|c| c == "keep-alive") && !(version == "1.0" && connection.is_empty());
                    if !keeps {
                        assert!(fast.closed().await && hyper.closed().await, "both close after {request:?}");
                    }
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 3 * 4 * 2 * 5);
}

/// The head timer: a started head that stops, and a kept-alive connection that waits, are closed
/// after [`super::HEAD_TIMEOUT`] as hyper closes them (tokio's clock paused and advanced).
#[tokio::test]
async fn a_head_must_arrive_within_the_head_timeout() {
    let (state, clock, _dir) = node("active").await;
    loop_ran(&state, &clock, Mode::Active);
    let fixed = fast::fixed_headers(&state);
    tokio::time::pause();
    for first in [&b"GET /active HTTP/1.1\r\n\r\nGET /act"[..], b"GET /active HTTP/1.1\r\n\r\n", b""] {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(first).await.unwrap();
        let started = tokio::time::Instant::now();
        let lane = fast::serve(&state, &fixed, &mut server).await;
        assert!(matches!(lane, Lane::Done), "{first:?}");
        let waited = started.elapsed();
        assert!(waited >= super::HEAD_TIMEOUT && waited < super::HEAD_TIMEOUT + Duration::from_millis(10), "{first:?}: closed at the deadline, not {waited:?}");
        let mut answers = String::new();
        drop(server);
        client.read_to_string(&mut answers).await.unwrap();
        assert_eq!(answers.matches("ACTIVE\n").count(), usize::from(!first.is_empty()), "{first:?}: {answers}");
    }
}
