//! Network namespaces for the multi-host suites (`tests/netns.rs`, `tests/netns_faults.rs`): creating
//! and always deleting them, `ip` inside them, and asking a node inside one for its status.
//!
//! Everything here needs root and iproute2; [`runs_as_root`] lets a suite pass with a note
//! elsewhere (CI runs as root).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::model::Role;

/// The port every node of a namespace suite listens on (each namespace has its own ports).
pub const PORT: u16 = 7400;

/// True when the suite may run; otherwise prints why it is skipped.
pub fn runs_as_root(suite: &str) -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        println!("SKIPPED: {suite} needs root (CI runs it as root)");
        return false;
    }
    assert!(on_path("ip"), "`ip` (iproute2) is required for {suite}");
    true
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Run a command that must succeed.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A test's namespaces; deleted on drop (also on panic), which destroys their links too.
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// `PREFIX-a`, `PREFIX-b`, … one per suffix, each with its loopback up.
    pub fn create(prefix: &str, suffixes: &[&str]) -> Namespaces {
        let ns = Namespaces { names: suffixes.iter().map(|s| format!("{prefix}-{s}")).collect() };
        for name in &ns.names {
            run(&["ip", "netns", "add", name]);
            run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        }
        ns
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// `ip -n NS …`, which must succeed.
pub fn ip(ns: &str, args: &str) {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend(args.split_whitespace());
    run(&argv);
}

/// `vigil status --json` run inside `ns` against `url`: (node id, mode), or `None` if no answer.
pub fn status_in(ns: &str, url: &str) -> Option<(String, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "2"])
        .arg(crate::vigil_bin())
        .args(["status", "--json", "--url", url])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["node"]["id"].as_str()?.to_string(), v["node"]["mode"].as_str()?.to_string()))
}

/// Poll `done` every 100 ms until it holds, or fail after `limit` with `what` and `context()`.
pub fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not reached within {} s; {}", limit.as_secs(), context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A primary `a` in namespace `ns_a` and a secondary `b` in `ns_b`, both running `policy` and
/// listening on [`PORT`] on every address of their namespace; `paths(other)` lists the heartbeat
/// paths `(name, base URL)` to the node whose host number is `other` (1 for a, 2 for b). Not started.
pub fn pair_in(dir: &Path, ns_a: &str, ns_b: &str, policy: &str, paths: impl Fn(u8) -> Vec<(String, String)>) -> Cluster {
    let timing = Timing { interval_ms: 200, timeout_ms: 150, failures: 3, successes: 3 };
    let mut cluster = Cluster::new(crate::vigil_bin(), dir, timing, vec![crate::plugins_dir()]).unwrap();
    for (id, role, netns, peer, other) in [("a", Role::Primary, ns_a, "b", 2), ("b", Role::Secondary, ns_b, "a", 1)] {
        let mut spec = NodeSpec::new(id, role, policy);
        spec.listen = Some(([0, 0, 0, 0], PORT).into());
        spec.prefix = vec!["ip".into(), "netns".into(), "exec".into(), netns.to_string()];
        spec.peer_paths = vec![(peer.into(), paths(other))];
        cluster.add(spec).unwrap();
    }
    cluster
}

/// Counts the ARP announcements of one IPv4 address that reach namespace `ns`: a thread that enters
/// the namespace (`setns` applies to the calling thread only) and reads a raw `AF_PACKET` socket
/// until [`ArpCounter::stop`].
pub struct ArpCounter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Instant>>,
}

impl ArpCounter {
    pub fn start(ns: &str, addr: std::net::Ipv4Addr) -> ArpCounter {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let path = format!("/var/run/netns/{ns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let netns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: FFI with a descriptor that stays open for the call; affects this thread only.
            assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let proto = 0x0806u16.to_be() as i32;
            // SAFETY: plain FFI call; the result is checked and owned below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            // SAFETY: `fd` is new and owned from here on.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
            // SAFETY: `timeout` lives across the call and its size is passed with it.
            unsafe {
                libc::setsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&timeout as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as u32)
            };
            ready_tx.send(()).unwrap();
            let mut seen = Vec::new();
            let mut frame = [0u8; 1600];
            while !flag.load(std::sync::atomic::Ordering::Acquire) {
                // SAFETY: `frame` lives across the call and its length is passed with it.
                let n = unsafe { libc::recv(socket.as_raw_fd(), frame.as_mut_ptr().cast(), frame.len(), 0) };
                // An ARP announcement of `addr`: sender and target protocol addresses both `addr`.
                if n >= 42 && frame[12..14] == [0x08, 0x06] && frame[28..32] == addr.octets() && frame[38..42] == addr.octets() {
                    seen.push(Instant::now());
                }
            }
            seen
        });
        ready_rx.recv().expect("the ARP counter starts");
        ArpCounter { stop, thread }
    }

    /// Stop counting; when each announcement arrived.
    pub fn stop(self) -> Vec<Instant> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.join().expect("the ARP counter")
    }
}
