//! The traffic relay that `route` actions move (`[relay]` in the policy file).
//!
//! Two back ends, usable together:
//! - the **built-in TCP relay** (`listen`): every accepted connection is connected to the target that
//!   is current *at accept time* and spliced both ways until either side closes. A `route` changes the
//!   target of **new** connections only; open connections stay on the target they were opened to and
//!   end when that target or the client closes them (a killed target closes them at once). Clients
//!   keep one address across a failover and reconnect as they would after any dropped connection;
//! - a **route hook** (`hook`): a declared `[hooks.NAME]` run as `NAME(target id, address)` on every
//!   route, e.g. to rewrite an nginx upstream and reload it (`docs/relay.md`).
//!
//! Accepting and connecting are asynchronous (tokio); the bytes of established connections are copied
//! by one data-path thread per relay ([`pump`]): non-blocking sockets on one epoll set, with bounded busy
//! polling after traffic so that a request and its answer cross the relay without a sleeping thread to
//! wake (`bench/README.md` has the figures).
//!
//! This module owns sockets and the current target. It never decides where traffic goes: only a
//! plugin's `route` action moves it. [`RelayHost`] is what the daemon keeps: the relay of the current
//! policy, re-created when a hot reload changes `[relay]`.

mod pump;

use crate::policy::file::{PolicyFile, RelaySpec};
use pump::Pump;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the relay waits for a target to accept a connection before it closes the client's. A
/// target that does not answer within this is down for this client; the plugin's health checks decide
/// whether to move everyone.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Counters of the built-in relay since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayCounters {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections currently spliced (or connecting).
    pub open: u64,
    /// Connections closed because their target refused them or did not answer in time.
    pub failed: u64,
    /// Route changes.
    pub routes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    failed: AtomicU64,
    routes: AtomicU64,
}

/// What the accept loop and the route action share.
#[derive(Debug)]
struct Shared {
    /// Target id → `host:port`.
    targets: RwLock<BTreeMap<String, String>>,
    /// The id of the target of new connections.
    current: RwLock<String>,
    counters: Counters,
    connect_timeout: Duration,
}

impl Shared {
    /// The current target id and its address, read once per accepted connection.
    fn target(&self) -> (String, String) {
        let id = self.current.read().expect("relay lock").clone();
        let address = self.targets.read().expect("relay lock").get(&id).cloned().unwrap_or_default();
        (id, address)
    }
}

/// A running relay. Dropping it closes the listener and every connection it relays.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    /// The data path of the built-in relay (none for a hook-only relay); stopped, closing every
    /// connection, when the relay is dropped.
    pump: Option<Arc<Pump>>,
    local_addr: Option<SocketAddr>,
    accept: Option<JoinHandle<()>>,
    /// Dropped with the relay: every connection task watches it and ends.
    _stop: watch::Sender<()>,
}

impl Relay {
    /// Start the relay of `spec`: bind `spec.listen` when set (the built-in relay), and begin with
    /// `spec.initial` as the target. Without `listen` it only keeps the current target for the hook.
    /// Must be called inside a tokio runtime.
    pub fn start(spec: &RelaySpec) -> io::Result<Relay> {
        Self::start_with(spec, CONNECT_TIMEOUT)
    }

    /// [`Relay::start`] with another connect timeout.
    pub fn start_with(spec: &RelaySpec, connect_timeout: Duration) -> io::Result<Relay> {
        if !spec.targets.contains_key(&spec.initial) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("initial target {:?} is not among the targets", spec.initial)));
        }
        let shared = Arc::new(Shared {
            targets: RwLock::new(spec.targets.clone()),
            current: RwLock::new(spec.initial.clone()),
            counters: Counters::default(),
            connect_timeout,
        });
        let (stop, stopped) = watch::channel(());
        let (local_addr, accept, pump) = match spec.listen {
            Some(listen) => {
                // std bind + from_std: binding is synchronous, so an address in use is reported to the
                // caller now instead of by a task later.
                let std_listener = std::net::TcpListener::bind(listen)?;
                std_listener.set_nonblocking(true)?;
                let listener = TcpListener::from_std(std_listener)?;
                let local = listener.local_addr()?;
                let counted = shared.clone();
                let pump = Arc::new(Pump::start(busy_poll(spec), move || {
                    counted.counters.open.fetch_sub(1, Ordering::Relaxed);
                })?);
                let accept = tokio::spawn(accept_loop(listener, shared.clone(), pump.clone(), stopped));
                (Some(local), Some(accept), Some(pump))
            }
            None => (None, None, None),
        };
        Ok(Relay { shared, pump, local_addr, accept, _stop: stop })
    }

    /// Send new connections to `target`. Open connections stay where they are. Returns a note for the
    /// action result, or why the target was refused.
    pub fn route(&self, target: &str) -> Result<String, String> {
        let address = self.address_of(target)?;
        let previous = std::mem::replace(&mut *self.shared.current.write().expect("relay lock"), target.to_string());
        self.shared.counters.routes.fetch_add(1, Ordering::Relaxed);
        let open = self.shared.counters.open.load(Ordering::Relaxed);
        Ok(if previous == target {
            format!("new connections already go to {target} ({address})")
        } else if self.local_addr.is_some() {
            format!("new connections go to {target} ({address}) instead of {previous}; {open} open connection(s) stay where they are")
        } else {
            format!("route moved from {previous} to {target} ({address})")
        })
    }

    /// The address of `target`, or why it is not a target.
    pub fn address_of(&self, target: &str) -> Result<String, String> {
        let targets = self.shared.targets.read().expect("relay lock");
        targets.get(target).cloned().ok_or_else(|| {
            format!("unknown route target {target:?}: expected one of {}", targets.keys().cloned().collect::<Vec<_>>().join(", "))
        })
    }

    /// The id of the target of new connections.
    pub fn current(&self) -> String {
        self.shared.current.read().expect("relay lock").clone()
    }

    /// Where the built-in relay listens (the bound address, so port 0 resolves), if it does.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The counters so far.
    pub fn counters(&self) -> RelayCounters {
        let c = &self.shared.counters;
        RelayCounters {
            accepted: c.accepted.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            routes: c.routes.load(Ordering::Relaxed),
        }
    }

    /// Take a changed spec with the same `listen` without closing anything: new targets, and the
    /// current target kept if it still exists (else the new `initial`).
    fn update(&self, spec: &RelaySpec) {
        if let Some(pump) = &self.pump {
            pump.set_busy_poll(busy_poll(spec));
        }
        *self.shared.targets.write().expect("relay lock") = spec.targets.clone();
        let mut current = self.shared.current.write().expect("relay lock");
        if !spec.targets.contains_key(&*current) {
            *current = spec.initial.clone();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        if let Some(pump) = &self.pump {
            pump.stop();
        }
    }
}

fn busy_poll(spec: &RelaySpec) -> Duration {
    Duration::from_micros(spec.busy_poll_us)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, pump: Arc<Pump>, stopped: watch::Receiver<()>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning; the listener stays.
                tracing::warn!(%error, "relay: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        shared.counters.open.fetch_add(1, Ordering::Relaxed);
        let (shared, pump, mut stopped) = (shared.clone(), pump.clone(), stopped.clone());
        tokio::spawn(async move {
            let pair = tokio::select! {
                pair = connect(client, &shared) => pair,
                _ = stopped.changed() => None,
            };
            let Some((client, upstream)) = pair else {
                shared.counters.open.fetch_sub(1, Ordering::Relaxed);
                return;
            };
            // From here the data path counts the connection closed, whichever way it ends.
            if let Err(error) = pump.add(client, upstream) {
                tracing::debug!(%error, "relay: connection dropped");
                shared.counters.open.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
}

/// Connect to the target current now; both sockets come back as std streams with NODELAY set.
async fn connect(client: TcpStream, shared: &Shared) -> Option<(std::net::TcpStream, std::net::TcpStream)> {
    let (id, address) = shared.target();
    let upstream = match tokio::time::timeout(shared.connect_timeout, TcpStream::connect(&address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target_id = %id, %address, %error, "relay: target refused a connection");
            return None;
        }
        Err(_) => {
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target_id = %id, %address, "relay: target did not answer in time");
            return None;
        }
    };
    let std = |s: TcpStream| -> io::Result<std::net::TcpStream> {
        // Request/response traffic: small writes must not wait for Nagle's algorithm on either leg.
        s.set_nodelay(true)?;
        s.into_std()
    };
    match (std(client), std(upstream)) {
        (Ok(c), Ok(u)) => Some((c, u)),
        _ => {
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The relay of the node's current policy. The daemon calls [`RelayHost::sync`] on every tick with the
/// policy's `[relay]`: the first call starts the relay, a changed section after a hot reload updates or
/// re-creates it, a removed one stops it. The current target survives a reload when it still exists,
/// and, with a route hook, a restart of the daemon: the system the hook moved (an nginx upstream)
/// still sends traffic where the last hook put it, so that is where the relay starts.
#[derive(Debug, Default)]
pub struct RelayHost {
    inner: Mutex<Slot>,
    /// Where the target of the last successful route hook is kept across restarts.
    memory: Option<std::path::PathBuf>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The spec the relay runs (or last failed to start) with.
    spec: Option<RelaySpec>,
    relay: Option<Arc<Relay>>,
}

impl RelayHost {
    /// A relay host that remembers its route hook's target in the file `memory`.
    pub fn with_memory(memory: std::path::PathBuf) -> RelayHost {
        RelayHost { inner: Mutex::default(), memory: Some(memory) }
    }

    /// The target the last successful route hook set, before this daemon started.
    fn remembered(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.memory.as_ref()?).ok()?;
        Some(text.trim().to_string()).filter(|t| !t.is_empty())
    }

    /// Keep `target` as the hook's last target (a temporary file renamed over the old one).
    fn remember(&self, target: &str) -> Result<(), String> {
        let Some(path) = &self.memory else { return Ok(()) };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{target}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Bring the relay in line with `spec`. Returns a note when something changed, an error when the
    /// listener could not be bound (not retried until the spec changes, so a busy port is reported
    /// once, not every tick).
    pub fn sync(&self, spec: Option<&RelaySpec>) -> Result<Option<String>, String> {
        let mut slot = self.inner.lock().expect("relay lock");
        if slot.spec.as_ref() == spec {
            return Ok(None);
        }
        let previous = std::mem::replace(&mut slot.spec, spec.cloned());
        let Some(spec) = spec else {
            slot.relay = None;
            return Ok(Some("traffic relay stopped: the policy no longer has [relay]".into()));
        };
        // Same listen address: keep the listener and every open connection, take the new targets.
        if let Some(relay) = slot.relay.as_ref().filter(|_| previous.as_ref().is_some_and(|p| p.listen == spec.listen)) {
            relay.update(spec);
            return Ok(Some(format!("traffic relay updated: new connections go to {}", relay.current())));
        }
        let carried = slot
            .relay
            .as_ref()
            .map(|r| r.current())
            .or_else(|| spec.hook.as_ref().and_then(|_| self.remembered()))
            .filter(|c| spec.targets.contains_key(c));
        // Release the old listener first: a re-created relay may listen on an address the old one held.
        slot.relay = None;
        match Relay::start(spec) {
            Ok(relay) => {
                if let Some(current) = carried {
                    let _ = relay.route(&current);
                }
                let note = match relay.local_addr() {
                    Some(addr) => format!("traffic relay listening on {addr}, new connections go to {}", relay.current()),
                    None => format!("route hook only (no listen address), current target {}", relay.current()),
                };
                slot.relay = Some(Arc::new(relay));
                Ok(Some(note))
            }
            Err(e) => Err(format!("traffic relay cannot listen on {}: {e}", spec.listen.map(|a| a.to_string()).unwrap_or_default())),
        }
    }

    /// The running relay, if any.
    pub fn get(&self) -> Option<Arc<Relay>> {
        self.inner.lock().expect("relay lock").relay.clone()
    }

    /// The current target, for the tick's `route`.
    pub fn current(&self) -> Option<String> {
        self.get().map(|r| r.current())
    }

    /// Execute a `route` action: run the relay's route hook (if any; its command comes from `policy`'s
    /// `[hooks]`) with `(target, address)`, then move the built-in relay. If the hook fails nothing moves, so the tick's `route` still shows the
    /// old target and the plugin can try again.
    pub async fn route(&self, target: &str, policy: &PolicyFile) -> Result<String, String> {
        let (relay, hook) = {
            let slot = self.inner.lock().expect("relay lock");
            (slot.relay.clone(), slot.spec.as_ref().and_then(|s| s.hook.clone()))
        };
        let relay = relay.ok_or("this policy declares no traffic relay ([relay]) or it could not start")?;
        let address = relay.address_of(target)?;
        let mut note = String::new();
        if let Some(name) = hook.as_deref() {
            let hook = policy.hooks.get(name).ok_or_else(|| format!("route hook {name:?} is not declared under [hooks]"))?;
            let argv = crate::executor::expand_hook(&hook.command, &[target.to_string(), address.clone()])?;
            let outcome = crate::services::run_command(&argv, Duration::from_millis(hook.timeout_ms)).await;
            if !outcome.success {
                return Err(format!("route hook {name} failed, traffic not moved: {}", outcome.summary()));
            }
            note = format!("; route hook {name}: {}", outcome.summary());
            if let Err(e) = self.remember(target) {
                note.push_str(&format!("; cannot remember the target across a restart: {e}"));
            }
        }
        Ok(format!("{}{note}", relay.route(target)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every read with its name and the bytes read.
    async fn echo(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let mut out = format!("{name}:").into_bytes();
                                out.extend_from_slice(&buf[..n]);
                                if s.write_all(&out).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    fn spec(targets: &[(&str, SocketAddr)], initial: &str) -> RelaySpec {
        RelaySpec {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            targets: targets.iter().map(|(id, a)| (id.to_string(), a.to_string())).collect(),
            initial: initial.into(),
            hook: None,
            busy_poll_us: 50,
        }
    }

    async fn ask(stream: &mut TcpStream, text: &str) -> String {
        stream.write_all(text.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await.unwrap().unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached in 2 s");
    }

    #[tokio::test]
    async fn new_connections_follow_the_route_and_open_ones_keep_their_target() {
        let (main, _m) = echo("main").await;
        let (standby, _s) = echo("standby").await;
        let relay = Relay::start(&spec(&[("main", main), ("standby", standby)], "main")).unwrap();
        let addr = relay.local_addr().unwrap();

        let mut first = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut first, "1").await, "main:1");

        let note = relay.route("standby").unwrap();
        assert!(note.contains("1 open connection(s) stay"), "{note}");
        assert_eq!(relay.current(), "standby");
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut second, "2").await, "standby:2");
        assert_eq!(ask(&mut first, "3").await, "main:3", "an open connection stays on its target");

        let c = relay.counters();
        assert_eq!((c.accepted, c.open, c.failed, c.routes), (2, 2, 0, 1));
        drop(first);
        wait_until(|| relay.counters().open == 1).await;
    }

    /// A backend that reads everything until the client's end, then sends it back reversed and closes.
    async fn reverser() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut all = Vec::new();
                    s.read_to_end(&mut all).await.unwrap();
                    all.reverse();
                    s.write_all(&all).await.unwrap();
                });
            }
        });
        addr
    }

    /// 8 MiB up, the client's end passed on (half-close), 8 MiB back, with both busy polling and
    /// always sleeping: every byte arrives in order, and the connection is counted closed at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_transfers_keep_every_byte_and_pass_the_end_on() {
        let backend = reverser().await;
        for busy_poll_us in [0, 50] {
            let relay = Relay::start(&RelaySpec { busy_poll_us, ..spec(&[("main", backend)], "main") }).unwrap();
            let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
            let mut client = TcpStream::connect(relay.local_addr().unwrap()).await.unwrap();
            let (mut rd, mut wr) = client.split();
            let send = async {
                wr.write_all(&data).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let receive = rd.read_to_end(&mut back);
            let (_, received) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(send, receive) }).await.unwrap();
            received.unwrap();
            assert_eq!(back.len(), data.len(), "busy_poll_us = {busy_poll_us}");
            assert!(back.iter().rev().eq(data.iter()), "busy_poll_us = {busy_poll_us}: bytes out of order");
            wait_until(|| relay.counters().open == 0).await;
        }
    }

    /// Many clients at once, each with its own conversation, on the one data-path thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_connections_share_the_data_path() {
        let (main, _m) = echo("main").await;
        let relay = Relay::start(&spec(&[("main", main)], "main")).unwrap();
        let addr = relay.local_addr().unwrap();
        let clients = (0..64).map(|i| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                for round in 0..20 {
                    let text = format!("{i}.{round}");
                    assert_eq!(ask(&mut s, &text).await, format!("main:{text}"));
                }
            })
        });
        for client in clients.collect::<Vec<_>>() {
            client.await.unwrap();
        }
        let c = relay.counters();
        assert_eq!((c.accepted, c.failed), (64, 0));
        wait_until(|| relay.counters().open == 0).await;
    }

    #[tokio::test]
    async fn an_unknown_target_is_refused_and_changes_nothing() {
        let (main, _m) = echo("main").await;
        let relay = Relay::start(&spec(&[("main", main)], "main")).unwrap();
        let error = relay.route("elsewhere").unwrap_err();
        assert!(error.contains("unknown route target \"elsewhere\": expected one of main"), "{error}");
        assert_eq!(relay.current(), "main");
        assert_eq!(relay.counters().routes, 0);
    }

    #[tokio::test]
    async fn a_target_that_is_down_closes_the_client_and_counts_as_failed() {
        let (main, task) = echo("main").await;
        task.abort();
        let _ = task.await;
        let relay = Relay::start(&spec(&[("main", main)], "main")).unwrap();
        let mut client = TcpStream::connect(relay.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "the client's connection is closed");
        wait_until(|| relay.counters().failed == 1).await;
        assert_eq!(relay.counters().open, 0);
    }

    #[tokio::test]
    async fn dropping_the_relay_closes_its_listener_and_connections() {
        let (main, _m) = echo("main").await;
        let relay = Relay::start(&spec(&[("main", main)], "main")).unwrap();
        let addr = relay.local_addr().unwrap();
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut open, "x").await, "main:x");
        drop(relay);
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "the relayed connection is closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "nobody listens any more");
    }

    #[tokio::test]
    async fn the_host_keeps_the_target_across_a_reload_and_runs_the_route_hook() {
        let (main, _m) = echo("main").await;
        let (standby, _s) = echo("standby").await;
        let host = RelayHost::default();
        let mut s = spec(&[("main", main), ("standby", standby)], "main");
        assert!(host.sync(Some(&s)).unwrap().unwrap().contains("listening on 127.0.0.1:"));
        assert_eq!(host.sync(Some(&s)).unwrap(), None, "an unchanged spec changes nothing");

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("routes");
        s.hook = Some("upstream".into());
        let policy: PolicyFile = toml::from_str(&format!(
            "plugin = \"edge\"\n[hooks.upstream]\ncommand = [\"/bin/sh\", \"-c\", \"echo $0 $1 >> '{}'\", \"{{0}}\", \"{{1}}\"]\n",
            log.display()
        ))
        .unwrap();
        host.sync(Some(&s)).unwrap();
        let note = host.route("standby", &policy).await.unwrap();
        assert!(note.contains("route hook upstream: exit 0"), "{note}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), format!("standby {standby}\n"));
        assert_eq!(host.current().as_deref(), Some("standby"));

        // A reload that adds a target keeps the listener and the current target.
        let port = host.get().unwrap().local_addr().unwrap();
        s.targets.insert("spare".into(), main.to_string());
        host.sync(Some(&s)).unwrap();
        assert_eq!(host.get().unwrap().local_addr().unwrap(), port);
        assert_eq!(host.current().as_deref(), Some("standby"));

        // A failing hook moves nothing.
        let failing: PolicyFile = toml::from_str("plugin = \"edge\"\n[hooks.upstream]\ncommand = [\"/bin/false\"]\n").unwrap();
        let error = host.route("main", &failing).await.unwrap_err();
        assert!(error.contains("route hook upstream failed, traffic not moved"), "{error}");
        assert_eq!(host.current().as_deref(), Some("standby"));

        assert!(host.sync(None).unwrap().unwrap().contains("stopped"));
        assert_eq!(host.current(), None);
    }

    #[tokio::test]
    async fn a_restarted_host_starts_where_the_last_route_hook_sent_traffic() {
        let (main, _m) = echo("main").await;
        let (standby, _s) = echo("standby").await;
        let dir = tempfile::tempdir().unwrap();
        let memory = dir.path().join("route-target");
        let mut s = spec(&[("main", main), ("standby", standby)], "main");
        s.listen = None;
        s.hook = Some("upstream".into());
        let policy: PolicyFile = toml::from_str("plugin = \"edge\"\n[hooks.upstream]\ncommand = [\"/bin/true\"]\n").unwrap();
        {
            let host = RelayHost::with_memory(memory.clone());
            host.sync(Some(&s)).unwrap();
            host.route("standby", &policy).await.unwrap();
        }
        // kill -9 and restart: nginx still sends traffic to the standby stack.
        let host = RelayHost::with_memory(memory.clone());
        host.sync(Some(&s)).unwrap();
        assert_eq!(host.current().as_deref(), Some("standby"), "the plugin sees where traffic really goes");

        // Without a hook the built-in relay is the traffic: a restart starts it at `initial`.
        let mut built_in = spec(&[("main", main), ("standby", standby)], "main");
        built_in.hook = None;
        let host = RelayHost::with_memory(memory);
        host.sync(Some(&built_in)).unwrap();
        assert_eq!(host.current().as_deref(), Some("main"));
    }
}
