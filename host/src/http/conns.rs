//! The connection table: how many clients the server holds, and which one gives way when it is full.
//!
//! The server never stops accepting. A load balancer that opens a connection per check, a peer's
//! heartbeat and an operator's `vigil status` must get through however many other clients sit on
//! their connections, so instead of leaving new clients in the kernel's accept queue (where a few
//! hundred idle ones lock everybody out), a new connection makes room:
//!
//! - an address holding [`MAX_PER_ADDRESS`] connections gives up its own least recently active one;
//! - a full table ([`MAX_CONNECTIONS`]) gives up its least recently active one.
//!
//! "Active" is measured by bytes moved, so a peer that heartbeats every interval keeps its
//! connection, and idle or stalled clients are the ones to go. A periodic sweep also closes
//! connections idle for [`IDLE_TIMEOUT`] and those whose answer could not be written for
//! [`WRITE_TIMEOUT`] (a client that pipelines requests and never reads). A slow request head is
//! bounded by hyper's header timeout, a slow body by the server's body timeout.
//!
//! Never: reads or writes a byte itself; it only decides which connection to close.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Most connections held at once; leaves file descriptors for the node's own heartbeats, services
/// and stores however many clients connect.
pub const MAX_CONNECTIONS: usize = 512;
/// Most connections held for one client address.
pub const MAX_PER_ADDRESS: usize = 64;
/// A connection that moved no byte for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection whose answer has waited this long for the client to read is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the table knows of one connection; shared with the connection's [`Tracked`] stream.
#[derive(Debug)]
pub struct Activity {
    /// Milliseconds since the table's epoch when a byte last moved.
    last_ms: AtomicU64,
    /// A write is waiting for the client to read.
    write_blocked: AtomicBool,
    epoch: Instant,
    /// Told when the connection must close.
    close: Notify,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves when the table closes this connection.
    pub async fn closed(&self) {
        self.close.notified().await
    }
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    activity: Arc<Activity>,
}

/// The open connections.
#[derive(Debug)]
pub struct Table {
    epoch: Instant,
    max: usize,
    per_address: usize,
    inner: Mutex<Inner>,
    /// Connections closed to make room or for idleness.
    pub evicted: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    open: HashMap<u64, Entry>,
}

/// A connection's place in the table; leaving it (drop) frees the place.
#[derive(Debug)]
pub struct Slot {
    table: Arc<Table>,
    id: u64,
    pub activity: Arc<Activity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.inner.lock().expect("connection table lock").open.remove(&self.id);
    }
}

impl Table {
    pub fn new(max: usize, per_address: usize) -> Arc<Table> {
        Arc::new(Table { epoch: Instant::now(), max, per_address, inner: Mutex::default(), evicted: AtomicU64::new(0) })
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("connection table lock").open.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admit a connection from `ip`, closing the least recently active one of the same address, or of
    /// the whole table, when either is full.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Slot {
        let activity = Arc::new(Activity {
            last_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            write_blocked: AtomicBool::new(false),
            epoch: self.epoch,
            close: Notify::new(),
        });
        let mut inner = self.inner.lock().expect("connection table lock");
        let same = inner.open.values().filter(|e| e.ip == ip).count();
        let victim = if same >= self.per_address {
            least_active(inner.open.iter().filter(|(_, e)| e.ip == ip))
        } else if inner.open.len() >= self.max {
            least_active(inner.open.iter())
        } else {
            None
        };
        if let Some(id) = victim {
            if let Some(entry) = inner.open.remove(&id) {
                entry.activity.close.notify_one();
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.next += 1;
        let id = inner.next;
        inner.open.insert(id, Entry { ip, activity: activity.clone() });
        Slot { table: self.clone(), id, activity }
    }

    /// Close the connections idle for [`IDLE_TIMEOUT`] or blocked writing for [`WRITE_TIMEOUT`].
    pub fn sweep(&self) -> usize {
        self.sweep_at(self.epoch.elapsed())
    }

    /// [`Table::sweep`] as if `now` had passed since the table was made.
    fn sweep_at(&self, now: Duration) -> usize {
        let now = now.as_millis() as u64;
        let mut inner = self.inner.lock().expect("connection table lock");
        let stale: Vec<u64> = inner
            .open
            .iter()
            .filter(|(_, e)| {
                let quiet = now.saturating_sub(e.activity.last_ms.load(Ordering::Relaxed));
                quiet >= IDLE_TIMEOUT.as_millis() as u64
                    || (e.activity.write_blocked.load(Ordering::Relaxed) && quiet >= WRITE_TIMEOUT.as_millis() as u64)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            if let Some(entry) = inner.open.remove(id) {
                entry.activity.close.notify_one();
            }
        }
        self.evicted.fetch_add(stale.len() as u64, Ordering::Relaxed);
        stale.len()
    }
}

fn least_active<'a>(entries: impl Iterator<Item = (&'a u64, &'a Entry)>) -> Option<u64> {
    entries.min_by_key(|(id, e)| (e.activity.last_ms.load(Ordering::Relaxed), **id)).map(|(id, _)| *id)
}

/// A stream that tells its [`Activity`] when bytes move and when a write waits for the client.
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.note_write(&polled);
        polled
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
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

impl<S> Tracked<S> {
    fn note_write(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Pending => self.activity.write_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Ok(n)) => {
                self.activity.write_blocked.store(false, Ordering::Relaxed);
                if *n > 0 {
                    self.activity.touch();
                }
            }
            Poll::Ready(Err(_)) => self.activity.write_blocked.store(false, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test]
    async fn a_full_address_gives_up_its_own_least_active_connection() {
        let table = Table::new(100, 3);
        let flood: Vec<Slot> = (0..3).map(|_| table.admit(ip(9))).collect();
        let peer = table.admit(ip(2));
        // The second flood connection moved a byte since: the first is the least active.
        std::thread::sleep(Duration::from_millis(5));
        flood[1].activity.touch();
        flood[2].activity.touch();
        let _new = table.admit(ip(9));
        assert_eq!(table.len(), 4, "one of the address's own made room");
        assert_eq!(table.evicted.load(Ordering::Relaxed), 1);
        // The evicted connection's task is told to close (a permit waits for it).
        tokio::time::timeout(Duration::from_millis(100), flood[0].activity.closed()).await.expect("the least active one closes");
        assert!(tokio::time::timeout(Duration::from_millis(20), peer.activity.closed()).await.is_err(), "the other address keeps its connection");
    }

    #[tokio::test]
    async fn a_full_table_gives_up_the_least_active_connection() {
        let table = Table::new(3, 10);
        let quiet = table.admit(ip(3));
        std::thread::sleep(Duration::from_millis(5));
        let busy: Vec<Slot> = (4..6).map(|i| table.admit(ip(i))).collect();
        let _new = table.admit(ip(7));
        assert_eq!(table.len(), 3);
        tokio::time::timeout(Duration::from_millis(100), quiet.activity.closed()).await.expect("the quiet one makes room");
        drop(busy);
        assert_eq!(table.len(), 1, "dropping a slot frees its place");
    }

    #[test]
    fn the_sweep_closes_blocked_writers_and_idle_connections_only() {
        let table = Table::new(10, 10);
        let blocked = table.admit(ip(2));
        let reading = table.admit(ip(3));
        blocked.activity.write_blocked.store(true, Ordering::Relaxed);
        assert_eq!(table.sweep_at(Duration::from_secs(1)), 0, "nothing is quiet yet");
        assert_eq!(table.sweep_at(WRITE_TIMEOUT + Duration::from_secs(1)), 1, "the blocked writer goes");
        assert_eq!(table.len(), 1);
        assert_eq!(table.sweep_at(IDLE_TIMEOUT - Duration::from_secs(1)), 0, "a quiet reader may wait a while");
        assert_eq!(table.sweep_at(IDLE_TIMEOUT + Duration::from_secs(1)), 1, "but not forever");
        assert!(table.is_empty());
        drop((blocked, reading));
        assert_eq!(table.evicted.load(Ordering::Relaxed), 2);
    }
}
