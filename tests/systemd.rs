//! The systemd notify protocol through the real binary (issue 13 item 2): a unix datagram socket in
//! a temporary directory stands in for systemd's `NOTIFY_SOCKET`. `vigil run` sends `READY=1`,
//! `STATUS=` and `WATCHDOG=1`; frozen (SIGSTOP, a hung loop) it stops sending `WATCHDOG=1`; thawed
//! and sent SIGTERM it says `STOPPING=1`. Waits are generous; nothing is timed.

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::model::Role;
use vigil_tests::{plugins_dir, vigil_bin};

/// Every datagram received so far, and a way to wait for more.
struct Listener {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Listener {
    fn bind(path: &std::path::Path) -> Listener {
        let socket = UnixDatagram::bind(path).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                    break;
                }
            }
        });
        Listener { rx, seen: Vec::new() }
    }

    /// Take what arrived until now (or within `wait`).
    fn drain(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Ok(message) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(message);
        }
    }

    /// Wait (up to `wait`) until a datagram has a line starting with `line`; whether one did.
    fn wait_for(&mut self, line: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.count(line) > 0 {
                return true;
            }
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(message) => self.seen.push(message),
                Err(_) => return false,
            }
        }
    }

    fn count(&self, line: &str) -> usize {
        self.seen.iter().flat_map(|m| m.lines()).filter(|l| l.starts_with(line)).count()
    }
}

#[test]
fn ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let mut listener = Listener::bind(&socket);
    let mut cluster = Cluster::new(vigil_bin(), dir.path(), Timing::default(), vec![plugins_dir()]).unwrap();
    let mut spec = NodeSpec::new("a", Role::Primary, "plugin = \"testkit\"\n\n[params]\nmode = \"standby\"\n");
    spec.env.push(("NOTIFY_SOCKET".into(), socket.display().to_string()));
    // 400 ms: a WATCHDOG=1 every 200 ms at most, i.e. after every tick of the default interval.
    spec.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    let i = cluster.add(spec).unwrap();
    cluster.start(i).unwrap();

    let wait = Duration::from_secs(20);
    assert!(listener.wait_for("READY=1", wait), "no READY=1; got {:?}\n{}", listener.seen, cluster.logs(30));
    assert!(listener.wait_for("STATUS=", wait), "no STATUS=; got {:?}", listener.seen);
    assert!(listener.seen.iter().any(|m| m.contains("STATUS=STANDBY, no peers configured")), "{:?}", listener.seen);
    // Nothing is ready before the first tick: READY=1 comes with (or after) the first decision.
    assert_eq!(listener.count("READY=1"), 1);
    assert!(listener.wait_for("WATCHDOG=1", wait), "no WATCHDOG=1; got {:?}", listener.seen);
    let before = listener.count("WATCHDOG=1");
    listener.drain(Duration::from_secs(2));
    assert!(listener.count("WATCHDOG=1") > before, "WATCHDOG=1 keeps coming while the loop runs");

    // Frozen: whatever was in flight arrives, then nothing.
    cluster.freeze(i);
    listener.drain(Duration::from_secs(1));
    let frozen = listener.count("WATCHDOG=1");
    listener.drain(Duration::from_secs(3));
    assert_eq!(listener.count("WATCHDOG=1"), frozen, "WATCHDOG=1 from a frozen process");

    // Thawed, the loop sends it again; SIGTERM says STOPPING=1.
    cluster.thaw(i);
    let deadline = Instant::now() + wait;
    while listener.count("WATCHDOG=1") == frozen && Instant::now() < deadline {
        listener.drain(Duration::from_millis(200));
    }
    assert!(listener.count("WATCHDOG=1") > frozen, "WATCHDOG=1 again after SIGCONT");
    cluster.stop(i);
    assert!(listener.wait_for("STOPPING=1", wait), "no STOPPING=1; got {:?}", listener.seen);
    assert_eq!(listener.count("READY=1"), 1, "READY=1 once");
}
