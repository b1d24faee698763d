//! `vigil demo edge`: an Edge node (a `vigil run` process with the `edge` plugin and the built-in
//! relay) in front of two small TCP services that stand for the main and the standby stacks (they
//! answer each request with their name; they run in this process so the demo can kill them). A client
//! opens a new connection through the relay every 20 ms for the whole demo and counts who answered
//! and how many connections were refused.
//!
//! Main dies: new connections move to standby. Main comes back: traffic stays on standby (the
//! product returns only when standby fails, `return_to_main = false`). Standby dies: back to main.
//! The demo fails if traffic does not move, or if connections fail outside the two outages.

use super::{cluster, Clock, CliError, Demo};
use crate::cluster::{NodeSpec, Timing};
use crate::model::{Mode, Role};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMING: Timing = Timing { interval_ms: 100, timeout_ms: 100, failures: 3, successes: 3 };

/// A TCP service that answers every read with its name. [`Backend::kill`] closes the listener and
/// every connection, like a killed process.
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    async fn start(name: &'static str, addr: SocketAddr) -> Result<Backend, CliError> {
        let listener = TcpListener::bind(addr).await.map_err(|e| super::fail(format!("{name} backend on {addr}: {e}")))?;
        let addr = listener.local_addr().map_err(super::fail)?;
        let task = tokio::spawn(async move {
            // Connections live in the accept task's set: aborting the task closes them all.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                connections.spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(name.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Backend { name, addr, task: Some(task) })
    }

    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One connection of the client: who answered, `None` when it was refused or closed unanswered.
type Outcome = Option<String>;

/// Every connection the client made, with when its outcome was known (connections are made one
/// after the other, so this is also the order in which they were made).
#[derive(Default)]
struct Log(Mutex<Vec<(Instant, Outcome)>>);

impl Log {
    fn since(&self, from: Instant) -> Vec<(Instant, Outcome)> {
        self.0.lock().expect("client log").iter().filter(|(at, _)| *at >= from).cloned().collect()
    }

    /// The first connection since `from` answered by `name`.
    fn first_answer(&self, from: Instant, name: &str) -> Option<Instant> {
        self.since(from).into_iter().find(|(_, o)| o.as_deref() == Some(name)).map(|(at, _)| at)
    }
}

/// One new connection through the Edge: send a line, read the answer.
async fn connect_once(edge: SocketAddr) -> Outcome {
    let mut s = TcpStream::connect(edge).await.ok()?;
    s.write_all(b"hello\n").await.ok()?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// The client: a new connection every 20 ms until dropped; prints a line when what it sees changes.
fn client(edge: SocketAddr, log: Arc<Log>, clock: Clock) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<Outcome> = None;
        loop {
            let outcome = connect_once(edge).await;
            let at = Instant::now();
            if last.as_ref() != Some(&outcome) {
                match &outcome {
                    Some(name) => clock.note(&format!("client: new connections answered by {name}")),
                    None => clock.note("client: connection refused (closed without an answer)"),
                }
                last = Some(outcome.clone());
            }
            log.0.lock().expect("client log").push((at, outcome));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// An outage as the client saw it: refused connections between the kill and the first answer of the
/// other stack.
struct Outage {
    what: String,
    refused: usize,
    gap: Duration,
}

async fn outage(demo: &mut Demo, log: &Log, victim: &mut Backend, to: &str) -> Result<Outage, CliError> {
    let killed = Instant::now();
    demo.note(&format!("kill the {} stack (its listener and every connection close)", victim.name));
    victim.kill().await;
    demo.wait_until(&format!("new connections through the Edge answered by {to}"), Duration::from_secs(10), |_| {
        log.first_answer(killed, to).is_some()
    })
    .await?;
    let moved = log.first_answer(killed, to).expect("waited for it");
    let refused = log.since(killed).iter().filter(|(at, o)| *at < moved && o.is_none()).count();
    Ok(Outage { what: format!("{} died → traffic on {to}", victim.name), refused, gap: moved - killed })
}

pub(super) async fn run(exe: &Path, dir: &Path) -> Result<(), CliError> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut main = Backend::start("main", any).await?;
    let mut standby = Backend::start("standby", any).await?;
    let edge_addr: SocketAddr = ([127, 0, 0, 1], crate::cluster::free_port().map_err(super::fail)?).into();
    let mut c = cluster(exe, dir, TIMING)?;
    let policy = format!(
        "plugin = \"edge\"\n\n[params]\nfailures = {}\nreturn_to_main = false\n\n\
         [relay]\nlisten = \"{edge_addr}\"\ntargets = {{ main = \"{}\", standby = \"{}\" }}\ninitial = \"main\"\n",
        TIMING.failures, main.addr, standby.addr
    );
    let mut node = NodeSpec::new("edge", Role::Primary, &policy);
    node.extra_config = format!(
        "\n[[watch]]\nid = \"main\"\nkind = \"tcp\"\naddress = \"{}\"\n\n[[watch]]\nid = \"standby\"\nkind = \"tcp\"\naddress = \"{}\"\n",
        main.addr, standby.addr
    );
    c.add(node).map_err(super::fail)?;
    let title = format!(
        "an Edge relay (clients connect to {edge_addr}) in front of a main ({}) and a standby ({}) stack; \
         the Edge checks both every {} ms, {} failed checks to move traffic",
        main.addr, standby.addr, TIMING.interval_ms, TIMING.failures
    );
    let mut demo = Demo::new(c, &title);
    demo.relay = Some(0);
    demo.start(0)?;
    demo.wait_modes("the Edge active", Duration::from_secs(20), &[Some(Mode::Active)]).await?;
    let log = Arc::new(Log::default());
    let began = Instant::now();
    let client_task = client(edge_addr, log.clone(), demo.clock);
    demo.wait_until("the client answered by main through the Edge", Duration::from_secs(10), |_| log.first_answer(began, "main").is_some()).await?;
    demo.watch(Duration::from_millis(500)).await?;

    let first = outage(&mut demo, &log, &mut main, "standby").await?;
    demo.note(&format!("{}: {} refused connections in {} ms", first.what, first.refused, first.gap.as_millis()));
    demo.watch(Duration::from_millis(300)).await?;

    main = Backend::start("main", main.addr).await?;
    let main_back = Instant::now();
    demo.note("the main stack is back; traffic stays on standby until standby fails (return_to_main = false)");
    demo.watch(Duration::from_millis(1500)).await?;
    if let Some((_, o)) = log.since(main_back).into_iter().find(|(_, o)| o.as_deref() != Some("standby")) {
        return Err(demo.failed("every connection answered by standby while it works", &format!("one got {o:?}")));
    }

    let second = outage(&mut demo, &log, &mut standby, "main").await?;
    demo.note(&format!("{}: {} refused connections in {} ms", second.what, second.refused, second.gap.as_millis()));
    demo.watch(Duration::from_millis(500)).await?;
    client_task.abort();
    let _ = client_task.await;

    let all = log.since(began);
    let count = |name: Option<&str>| all.iter().filter(|(_, o)| o.as_deref() == name).count();
    let refused = count(None);
    if refused != first.refused + second.refused {
        return Err(demo.failed(
            "refused connections only during the two outages",
            &format!("{refused} were refused in all, {} during the outages", first.refused + second.refused),
        ));
    }
    demo.expect_event(0, "route:standby ok").await?;
    demo.expect_event(0, "route:main ok").await?;
    let summary = vec![
        format!(
            "Client: {} connections through the Edge: {} answered by main, {} by standby, {refused} refused",
            all.len(),
            count(Some("main")),
            count(Some("standby"))
        ),
        format!("  {}: {} refused, traffic moved {} ms after the kill", first.what, first.refused, first.gap.as_millis()),
        format!("  {}: {} refused, traffic moved {} ms after the kill", second.what, second.refused, second.gap.as_millis()),
    ];
    drop((main, standby));
    demo.finish(&summary).await
}
