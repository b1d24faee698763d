//! The fast lane: the load balancers' endpoints (`/health`, `/active`, `/standby`, `/role`) answered
//! in front of hyper, without allocating per request.
//!
//! Every accepted connection starts here. Its bytes are read into one buffer and request heads are
//! parsed with `httparse` (hyper's own parser, with hyper's defaults). While each complete request is
//! a `GET` or `HEAD` of one of those four exact paths, with no body, no `Expect`, no `Upgrade`, and at
//! most [`MAX_HEADERS`] header lines, the answer is written from constants: the status and body come
//! from [`super::public::probe`] (the published mode and the loop's liveness, as through hyper), the
//! headers are the node's prebuilt block (`content-type`, `x-vigil-node`, `cache-control: no-store`),
//! then `connection`, `content-length` and `date` exactly as hyper writes them. Pipelined requests are
//! answered in order, and the answers to one read's requests go out in one write.
//!
//! Anything else (another path, a query, a body, an upgrade, a head httparse refuses or cannot finish
//! within [`MAX_HEAD`] bytes) ends the lane: the connection goes to hyper for the rest of its life,
//! with the bytes already read replayed first ([`Rewind`]), so every other endpoint, refusal, limit and
//! error answer is hyper's, as before. Kept from hyper: `HTTP/1.0` answers in 1.0 and closes unless
//! asked `Connection: keep-alive` (then says so), `Connection: close` closes after the answer (and
//! says so), and a head must arrive within [`HEAD_TIMEOUT`] of the server waiting for it (hyper's
//! header timer also runs while a kept-alive connection waits for its next request). Bytes moved are
//! seen by the connection table through the same [`super::conns::Tracked`] stream.

use super::HEAD_TIMEOUT;
use crate::state::NodeState;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// Largest request head: hyper's buffer (`max_buf_size`); a longer unfinished head goes to hyper,
/// which refuses it (431).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines of a request answered here (more go to hyper, which takes up to 100).
pub const MAX_HEADERS: usize = 32;
/// What one read asks for.
const READ_CHUNK: usize = 4096;
/// Answers buffered before they are written, when a client pipelines many requests.
const FLUSH_AT: usize = 16 * 1024;

/// The endpoints answered here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Health,
    Active,
    Standby,
    Role,
}

impl Probe {
    pub fn path(self) -> &'static str {
        match self {
            Probe::Health => "/health",
            Probe::Active => "/active",
            Probe::Standby => "/standby",
            Probe::Role => "/role",
        }
    }

    fn from_path(path: &str) -> Option<Probe> {
        match path {
            "/health" => Some(Probe::Health),
            "/active" => Some(Probe::Active),
            "/standby" => Some(Probe::Standby),
            "/role" => Some(Probe::Role),
            _ => None,
        }
    }
}

/// A request the lane answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub probe: Probe,
    /// `HEAD`: the status line and headers alone.
    pub head: bool,
    /// `HTTP/1.0` (else 1.1).
    pub http10: bool,
    /// The connection stays open after the answer (hyper's rule: 1.1 unless `close`, 1.0 only with
    /// `keep-alive`; a `close` token in any `Connection` line wins).
    pub keep_alive: bool,
    /// Bytes of the head, from the start of the buffer.
    pub len: usize,
}

/// What the start of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet (nothing wrong so far).
    Partial,
    /// A request answered here.
    Probe(Request),
    /// Anything else: hyper's, from this request on.
    Other,
}

/// Decide what the request at the start of `buf` is. Pure: the same bytes give the same answer,
/// whichever reads brought them.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Parsed::Other,
    };
    let Some(probe) = req.path.and_then(Probe::from_path) else { return Parsed::Other };
    let http10 = req.version != Some(1);
    let mut keep_alive = !http10;
    let mut close = false;
    for header in req.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Other;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            if close || has_token(header.value, "close") {
                close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has_token(header.value, "keep-alive");
            }
        }
    }
    Parsed::Probe(Request { probe, head, http10, keep_alive, len })
}

/// hyper's reading of a `Connection` value: comma-separated tokens, case-insensitive, trimmed; a value
/// that is not visible ASCII has none.
fn has_token(value: &[u8], token: &str) -> bool {
    let Ok(text) = std::str::from_utf8(value) else { return false };
    if !text.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        return false;
    }
    text.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `date` value hyper sends, rendered once a second.
struct Date {
    text: [u8; 29],
    next: SystemTime,
}

impl Date {
    fn new() -> Date {
        Date { text: [b' '; 29], next: SystemTime::UNIX_EPOCH }
    }

    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        if now >= self.next {
            use std::io::Write;
            let _ = write!(&mut self.text[..], "{}", httpdate::HttpDate::from(now));
            let nanos = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
            self.next = now + Duration::from_secs(1) - Duration::from_nanos(u64::from(nanos));
        }
        &self.text
    }
}

/// The node's constant headers of every answer here, made once per listener from
/// [`NodeState::node_header`].
pub fn fixed_headers(state: &NodeState) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
    if let Some(id) = &state.node_header {
        out.extend_from_slice(b"x-vigil-node: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"cache-control: no-store\r\n");
    out
}

/// Append the answer to `req` to `out`, as hyper would write it.
fn answer(state: &NodeState, fixed: &[u8], date: &mut Date, req: &Request, out: &mut Vec<u8>) {
    state.metrics.http_requests.inc();
    let (status, body) = super::public::probe(state, req.probe.path()).expect("a probe endpoint");
    out.extend_from_slice(if req.http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(fixed);
    if req.http10 && req.keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    } else if !req.http10 && !req.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !req.head {
        out.extend_from_slice(b"content-length: ");
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = body.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date.now());
    out.extend_from_slice(b"\r\n\r\n");
    if !req.head {
        out.extend_from_slice(body.as_bytes());
    }
}

/// How the lane left a connection.
pub enum Lane {
    /// Finished: closed by the client, by `Connection: close` / HTTP/1.0, by the head timeout or by an
    /// error. Drop the stream.
    Done,
    /// hyper's from here: these bytes were read and not answered.
    Handover(Vec<u8>),
}

/// Answer the fast requests of one connection until it ends or a request needs hyper.
pub async fn serve<I>(state: &NodeState, fixed: &[u8], io: &mut I) -> Lane
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut date = Date::new();
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::new();
    // The head timer, as hyper runs it: from when the server waits for a head until it has one. The
    // deadline moves with every answer; the sleep is only re-armed when it fires early.
    let mut deadline = Instant::now() + HEAD_TIMEOUT;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    loop {
        let mut at = 0;
        let mut answered = false;
        loop {
            match parse(&input[at..]) {
                Parsed::Partial => break,
                Parsed::Probe(req) => {
                    answer(state, fixed, &mut date, &req, &mut out);
                    at += req.len;
                    answered = true;
                    if !req.keep_alive {
                        // The rest of what the client sent is not read, as with hyper.
                        if io.write_all(&out).await.is_ok() && io.flush().await.is_ok() {
                            let _ = io.shutdown().await;
                        }
                        return Lane::Done;
                    }
                    if out.len() >= FLUSH_AT && flush(io, &mut out).await.is_err() {
                        return Lane::Done;
                    }
                }
                Parsed::Other => {
                    if flush(io, &mut out).await.is_err() {
                        return Lane::Done;
                    }
                    input.drain(..at);
                    return Lane::Handover(input);
                }
            }
        }
        if flush(io, &mut out).await.is_err() {
            return Lane::Done;
        }
        input.drain(..at);
        if input.len() >= MAX_HEAD {
            // hyper refuses it (431) as it would have.
            return Lane::Handover(input);
        }
        if answered {
            deadline = Instant::now() + HEAD_TIMEOUT;
        }
        if input.capacity() - input.len() < READ_CHUNK / 4 {
            input.reserve(READ_CHUNK.min(MAX_HEAD + READ_CHUNK - input.len()));
        }
        let read = loop {
            tokio::select! {
                read = io.read_buf(&mut input) => break read,
                _ = &mut timer => {
                    if Instant::now() >= deadline {
                        tracing::debug!("request head not received in time");
                        return Lane::Done;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return Lane::Done,
            Ok(_) => {}
        }
    }
}

async fn flush<I: AsyncWrite + Unpin>(io: &mut I, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    io.write_all(out).await?;
    out.clear();
    io.flush().await
}

/// A stream that first replays bytes already read from it.
pub struct Rewind<I> {
    replay: Vec<u8>,
    at: usize,
    inner: I,
}

impl<I> Rewind<I> {
    pub fn new(replay: Vec<u8>, inner: I) -> Rewind<I> {
        Rewind { replay, at: 0, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.at < self.replay.len() {
            let n = (self.replay.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.replay[at..at + n]);
            self.at += n;
            if self.at == self.replay.len() {
                self.replay = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
