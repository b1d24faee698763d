//! An Edge (`edge` plugin) on a real `vigil run` process in front of two small backends started by the
//! test: clients connect to the Edge's built-in relay; killing main moves new connections to standby
//! within the configured checks; main back moves them back (`return_to_main`). The Edge watches the
//! backends with TCP probes of their ports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::model::{Mode, Role};
use vigil_tests::{plugin, plugins_dir, vigil_bin};

const INTERVAL: u64 = 100;
const TIMEOUT: u64 = 100;
const FAILURES: u32 = 3;
const SUCCESSES: u32 = 3;
/// Scheduling noise on a loaded 2-core machine plus the test's own 20 ms polling.
const MARGIN: Duration = Duration::from_millis(400);

/// A backend that answers each line with its name. Dropping (or [`Backend::kill`]) closes the listener
/// and every connection, like a killed process.
struct Backend {
    addr: SocketAddr,
    name: &'static str,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    async fn start(name: &'static str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {name} on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Connections live in the accept task's set: aborting the task closes them all.
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
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
        Backend { addr, name, task: Some(task) }
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

/// Ask through `stream`: the answering backend's name, or `None` if the connection is closed.
async fn ask(stream: &mut TcpStream) -> Option<String> {
    stream.write_all(b"hello\n").await.ok()?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// A new connection through the Edge: who answers, if anyone.
async fn who(edge: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(edge).await.ok()?;
    ask(&mut s).await
}

/// Open new connections every 20 ms until `name` answers; the time it took.
async fn until_served_by(edge: SocketAddr, name: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if who(edge).await.as_deref() == Some(name) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "new connections not served by {name} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_relays_to_main_fails_over_to_standby_and_returns() {
    let _ = plugin("edge");
    let mut main = Backend::start("main", "127.0.0.1:0".parse().unwrap()).await;
    let standby = Backend::start("standby", "127.0.0.1:0".parse().unwrap()).await;
    let edge_addr = free_addr();

    let dir = tempfile::tempdir().unwrap();
    let timing = Timing { interval_ms: INTERVAL, timeout_ms: TIMEOUT, failures: FAILURES, successes: SUCCESSES };
    let mut cluster = Cluster::new(vigil_bin(), dir.path(), timing, vec![plugins_dir()]).unwrap();
    let policy = format!(
        "plugin = \"edge\"\n\n[params]\nfailures = {FAILURES}\nsuccesses = {SUCCESSES}\nreturn_to_main = true\n\n\
         [relay]\nlisten = \"{edge_addr}\"\ntargets = {{ main = \"{}\", standby = \"{}\" }}\ninitial = \"main\"\n",
        main.addr, standby.addr
    );
    let mut node = NodeSpec::new("edge", Role::Primary, &policy);
    node.extra_config = format!(
        "\n[[watch]]\nid = \"main\"\nkind = \"tcp\"\naddress = \"{}\"\n\n[[watch]]\nid = \"standby\"\nkind = \"tcp\"\naddress = \"{}\"\n",
        main.addr, standby.addr
    );
    cluster.add(node).unwrap();
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(20), |m| (m[0] == Some(Mode::Active)).then_some(())).await.unwrap();

    // A client through the Edge reaches main.
    until_served_by(edge_addr, "main", Duration::from_secs(5)).await;
    let mut before = TcpStream::connect(edge_addr).await.unwrap();
    assert_eq!(ask(&mut before).await.as_deref(), Some("main"));

    // Kill main: new connections reach standby within the configured checks.
    main.kill().await;
    let took = until_served_by(edge_addr, "standby", Duration::from_secs(5)).await;
    let bound = Duration::from_millis(u64::from(FAILURES) * INTERVAL + TIMEOUT + INTERVAL);
    println!("new connections reach standby {} ms after main died (bound {} ms + margin)", took.as_millis(), bound.as_millis());
    assert!(took <= bound + MARGIN, "failover took {took:?}, bound {bound:?}");
    assert_eq!(ask(&mut before).await, None, "a connection to the killed main is closed, not moved");

    // Main back: with return_to_main, traffic returns after `successes` good checks. A connection
    // opened to standby stays there (open connections keep their target).
    let mut on_standby = TcpStream::connect(edge_addr).await.unwrap();
    assert_eq!(ask(&mut on_standby).await.as_deref(), Some("standby"));
    let main_again = Backend::start("main", main.addr).await;
    let took = until_served_by(edge_addr, "main", Duration::from_secs(5)).await;
    let bound = Duration::from_millis(u64::from(SUCCESSES) * INTERVAL + TIMEOUT + INTERVAL);
    println!("new connections reach main again {} ms after it returned (bound {} ms + margin)", took.as_millis(), bound.as_millis());
    assert!(took <= bound + MARGIN, "failback took {took:?}, bound {bound:?}");
    assert_eq!(ask(&mut on_standby).await.as_deref(), Some("standby"), "the open connection stayed on standby");

    let (_, events) = cluster.admin(0, hyper::Method::GET, "/events").await.unwrap();
    assert!(events.contains("route:standby ok"), "the route action is in the event log: {events}");
    drop((main_again, standby.name));
}
