//! The relay's data path: one thread that copies the bytes of every open connection of a [`Relay`]
//! (`super::Relay`) both ways, over non-blocking sockets and one epoll set (mio).
//!
//! One thread for all connections, not two per connection: a relay with a thousand idle clients keeps
//! one thread, and a round trip through it pays one hand-off per direction.
//!
//! **Busy polling.** After it moved bytes, the thread polls without sleeping for `busy_poll` before it
//! blocks again (HAProxy's `busy-polling`, bounded). In a virtual machine a thread that blocks lets its
//! vCPU halt, and waking a halted vCPU costs tens of microseconds, more than everything else a relayed
//! round trip does on loopback; request/response traffic keeps the relay awake between a request and
//! its answer instead. The price is CPU: at most `busy_poll` of one core after each burst of traffic,
//! one core while round trips come faster than that. `busy_poll = 0` always blocks.
//!
//! Per connection and direction: bytes read from one side are written to the other at once; what the
//! other side cannot take yet waits in a buffer (at most one read), and that side is not read again
//! until the buffer is empty — backpressure instead of unbounded memory. A side that ends its sending
//! half has it passed on (half-close); an error on either side closes both. Each connection moves at
//! most [`BUDGET`] bytes per direction before the others get their turn.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::mpsc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

/// Bytes one connection may move in one direction before the other connections get a turn.
pub const BUDGET: usize = 256 * 1024;
/// One read: also the most a direction keeps waiting for a slow receiver.
const READ_SIZE: usize = 64 * 1024;
const WAKER: Token = Token(usize::MAX);

enum Command {
    Add(std::net::TcpStream, std::net::TcpStream),
    Stop,
}

/// The handle of the data-path thread. Dropping it closes every connection and ends the thread.
#[derive(Debug)]
pub struct Pump {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    busy_poll_us: Arc<AtomicU64>,
}

impl Pump {
    /// Start the thread. `on_closed` runs once for every connection it closes, whichever way.
    pub fn start(busy_poll: Duration, on_closed: impl Fn() + Send + 'static) -> io::Result<Pump> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands, inbox) = mpsc::channel();
        let busy_poll_us = Arc::new(AtomicU64::new(micros(busy_poll)));
        let mut worker = Worker {
            poll,
            _waker: waker.clone(),
            inbox,
            busy_poll_us: busy_poll_us.clone(),
            on_closed: Box::new(on_closed),
            conns: Vec::new(),
            free: Vec::new(),
        };
        std::thread::Builder::new().name("vigil-relay".into()).spawn(move || worker.run())?;
        Ok(Pump { commands, waker, busy_poll_us })
    }

    /// Change how long the thread polls without sleeping after traffic; open connections stay.
    pub fn set_busy_poll(&self, busy_poll: Duration) {
        self.busy_poll_us.store(micros(busy_poll), Ordering::Relaxed);
    }

    /// Hand over a connected pair (any blocking mode; NODELAY is the caller's choice). On error the
    /// thread is gone and the sockets are dropped (closed).
    pub fn add(&self, client: std::net::TcpStream, upstream: std::net::TcpStream) -> io::Result<()> {
        self.commands.send(Command::Add(client, upstream)).map_err(|_| io::Error::new(ErrorKind::BrokenPipe, "the relay's data path has stopped"))?;
        if let Err(error) = self.waker.wake() {
            // The pair is queued; the next wake-up (any traffic) takes it.
            tracing::warn!(%error, "relay: cannot wake the data path");
        }
        Ok(())
    }

    /// Close every connection and end the thread; later [`Pump::add`]s fail. Idempotent.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
        let _ = self.waker.wake();
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One relayed connection: side 0 is the client, side 1 the target.
struct Conn {
    sides: [TcpStream; 2],
    /// Bytes read from the other side that side `i` has not taken yet.
    waiting: [Vec<u8>; 2],
    /// Side `i` has ended its sending half.
    ended: [bool; 2],
    /// Our sending half towards side `i` is shut: the other side's end was passed on to it.
    shut: [bool; 2],
}

/// How one direction's turn ended.
#[derive(PartialEq, Eq)]
enum Turn {
    /// Nothing more to do until the sockets say so.
    Waiting,
    /// The budget ran out with bytes possibly still to read: come back without waiting for an event.
    Again,
}

impl Conn {
    /// Move what can be moved from side `from` to the other, within [`BUDGET`] bytes. Returns how the
    /// turn ended and how many bytes were read, or an error that ends the connection.
    fn pump(&mut self, from: usize, buf: &mut [u8]) -> io::Result<(Turn, usize)> {
        let to = 1 - from;
        let mut moved = 0;
        loop {
            while !self.waiting[to].is_empty() {
                match self.sides[to].write(&self.waiting[to]) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(n) => drop(self.waiting[to].drain(..n)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((Turn::Waiting, moved)),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.ended[from] {
                if !self.shut[to] {
                    self.shut[to] = true;
                    // The receiver may already be gone; its own read reports that.
                    let _ = self.sides[to].shutdown(Shutdown::Write);
                }
                return Ok((Turn::Waiting, moved));
            }
            if moved >= BUDGET {
                return Ok((Turn::Again, moved));
            }
            let n = match self.sides[from].read(buf) {
                Ok(0) => {
                    self.ended[from] = true;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((Turn::Waiting, moved)),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            moved += n;
            let written = match self.sides[to].write(&buf[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            self.waiting[to].extend_from_slice(&buf[written..n]);
        }
    }

    /// One turn of both directions: `Again` if either used up its budget, and the bytes read.
    fn turn(&mut self, buf: &mut [u8]) -> io::Result<(Turn, usize)> {
        let (up, read_up) = self.pump(0, buf)?;
        let (down, read_down) = self.pump(1, buf)?;
        let turn = if up == Turn::Again || down == Turn::Again { Turn::Again } else { Turn::Waiting };
        Ok((turn, read_up + read_down))
    }

    /// Both sides have ended and everything was delivered.
    fn finished(&self) -> bool {
        self.ended == [true, true] && self.shut == [true, true] && self.waiting.iter().all(Vec::is_empty)
    }

    fn close(&mut self, registry: &mio::Registry) {
        for side in &mut self.sides {
            let _ = registry.deregister(side);
            let _ = side.shutdown(Shutdown::Both);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

struct Worker {
    poll: Poll,
    /// Kept as long as the thread runs: the handle may be dropped right after its last wake-up, and
    /// closing the eventfd then would take that wake-up out of the epoll set before it is seen.
    _waker: Arc<Waker>,
    inbox: mpsc::Receiver<Command>,
    busy_poll_us: Arc<AtomicU64>,
    on_closed: Box<dyn Fn() + Send>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; READ_SIZE];
        let mut ready: Vec<usize> = Vec::new();
        let mut again: Vec<usize> = Vec::new();
        let mut last_moved: Option<Instant> = None;
        loop {
            let busy_poll = Duration::from_micros(self.busy_poll_us.load(Ordering::Relaxed));
            let busy = last_moved.is_some_and(|t| t.elapsed() < busy_poll);
            let timeout = if !again.is_empty() || busy { Some(Duration::ZERO) } else { None };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "relay: polling failed; closing every relayed connection");
                self.close_all();
                return;
            }
            ready.clear();
            ready.append(&mut again);
            for event in &events {
                if event.token() == WAKER {
                    if !self.take_commands(&mut ready) {
                        self.close_all();
                        return;
                    }
                } else {
                    ready.push(event.token().0 / 2);
                }
            }
            ready.sort_unstable();
            ready.dedup();
            let mut moved_any = false;
            for &index in &ready {
                let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { continue };
                match conn.turn(&mut buf) {
                    Ok((turn, moved)) if !conn.finished() => {
                        moved_any |= moved > 0;
                        if turn == Turn::Again {
                            again.push(index);
                        }
                    }
                    Ok(_) | Err(_) => self.remove(index),
                }
            }
            if moved_any {
                last_moved = Some(Instant::now());
            }
        }
    }

    /// Take every queued command; false on `Stop` (or when the handle is gone).
    fn take_commands(&mut self, ready: &mut Vec<usize>) -> bool {
        loop {
            match self.inbox.try_recv() {
                Ok(Command::Add(client, upstream)) => match self.insert(client, upstream) {
                    // Bytes may have arrived before registration: look at the pair now.
                    Ok(index) => ready.push(index),
                    Err(error) => {
                        tracing::warn!(%error, "relay: cannot watch a connection; closing it");
                        (self.on_closed)();
                    }
                },
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn insert(&mut self, client: std::net::TcpStream, upstream: std::net::TcpStream) -> io::Result<usize> {
        client.set_nonblocking(true)?;
        upstream.set_nonblocking(true)?;
        let reused = self.free.pop();
        let index = reused.unwrap_or(self.conns.len());
        let mut conn = Conn {
            sides: [TcpStream::from_std(client), TcpStream::from_std(upstream)],
            waiting: [Vec::new(), Vec::new()],
            ended: [false; 2],
            shut: [false; 2],
        };
        for (side, stream) in conn.sides.iter_mut().enumerate() {
            if let Err(error) = self.poll.registry().register(stream, Token(index * 2 + side), Interest::READABLE | Interest::WRITABLE) {
                conn.close(self.poll.registry());
                self.free.extend(reused);
                return Err(error);
            }
        }
        match reused {
            Some(index) => self.conns[index] = Some(conn),
            None => self.conns.push(Some(conn)),
        }
        Ok(index)
    }

    fn remove(&mut self, index: usize) {
        if let Some(mut conn) = self.conns[index].take() {
            conn.close(self.poll.registry());
            self.free.push(index);
            (self.on_closed)();
        }
    }

    fn close_all(&mut self) {
        for index in 0..self.conns.len() {
            self.remove(index);
        }
    }
}
