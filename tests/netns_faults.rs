//! Faults below TCP, in real network namespaces: a hot-standby pair whose one heartbeat link silently
//! drops packets, crawls, flaps at seeded random periods, and loses its active node to kill -9.
//!
//! ```text
//!   ns a (primary) ──hb 10.80.1.0/24── ns b (secondary)     each node listens on :7400
//! ```
//!
//! Unlike the loopback suites (`tests/faults.rs`, whose link proxy closes connections), these faults
//! leave sockets open and lose or delay packets in the kernel, so heartbeats end by their timeout:
//! - **silent loss**: a blackhole route for the peer's address (no error, no reset: SYNs vanish);
//! - **slow link**: a token-bucket qdisc at 8 kbit/s on one side, so answers arrive after the timeout;
//! - **flapping**: the blackhole added and removed at seeded periods of 50–900 ms for 8 s.
//!
//! After each fault heals, the property is the pair's: within a few seconds exactly one node is
//! active, only it runs the service, and it stays so. During a loss both nodes may be active — each
//! sees the other dead, as in any partition — and the test checks that the standby did take over.
//!
//! Needs root (CI runs as root) and iproute2's `ip` and `tc`; without root it prints why and passes.

use std::time::{Duration, Instant};
use vigil::cluster::Cluster;
use vigil_tests::netns::{ip, on_path, pair_in, run, runs_as_root, status_in, wait, Namespaces, PORT};
use vigil_tests::Rng;


const POLICY: &str = r#"plugin = "hot-standby"

[services.cti]
start = "echo running > '{dir}/cti.running'"
stop = "rm -f '{dir}/cti.running'"
status = "test -f '{dir}/cti.running'"
timeout_ms = 2000
"#;

/// Dropped in field order: the processes first, then their namespaces, then their files.
struct Pair {
    cluster: Cluster,
    ns: Namespaces,
    _dir: tempfile::TempDir,
}

impl Pair {
    fn start() -> Pair {
        let ns = Namespaces::create(&format!("vigil-f-{}", std::process::id()), &["a", "b"]);
        let (a, b) = (ns.name(0).to_string(), ns.name(1).to_string());
        ip(&a, &format!("link add hb type veth peer name hb netns {b}"));
        for (node, host) in [(&a, 1), (&b, 2)] {
            ip(node, &format!("addr add 10.80.1.{host}/24 dev hb"));
            ip(node, "link set hb up");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = pair_in(dir.path(), &a, &b, POLICY, |other| vec![("hb".into(), format!("http://10.80.1.{other}:{PORT}"))]);
        cluster.start(0).unwrap();
        cluster.start(1).unwrap();
        Pair { cluster, ns, _dir: dir }
    }

    /// Each node's mode, asked inside its own namespace (`None`: no answer).
    fn modes(&self) -> [Option<String>; 2] {
        let mode = |i| status_in(self.ns.name(i), &format!("http://127.0.0.1:{PORT}")).map(|(_, m)| m);
        [mode(0), mode(1)]
    }

    fn runs_service(&self, i: usize) -> bool {
        self.cluster.nodes[i].service_marker().exists()
    }

    fn context(&self) -> String {
        let log = |i: usize| {
            let text = std::fs::read_to_string(&self.cluster.nodes[i].log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!("modes {:?}\n--- a's log (end)\n{}\n--- b's log (end)\n{}", self.modes(), log(0), log(1))
    }

    /// The index of the only active node, when exactly one is active and only it runs the service.
    fn settled(&self) -> Option<usize> {
        let modes = self.modes();
        let active: Vec<usize> = (0..2).filter(|&i| modes[i].as_deref() == Some("active")).collect();
        let other_ok = |i: usize| matches!(modes[1 - i].as_deref(), Some("standby"));
        match active[..] {
            [i] if other_ok(i) && self.runs_service(i) && !self.runs_service(1 - i) => Some(i),
            _ => None,
        }
    }

    /// Exactly one active node within `limit`, still the same one after `stable`; returns it.
    fn settles(&self, what: &str, limit: Duration, stable: Duration) -> usize {
        let mut active = None;
        wait(what, limit, || {
            active = self.settled();
            active.is_some()
        }, || self.context());
        std::thread::sleep(stable);
        assert_eq!(self.settled(), active, "{what}: did not stay settled; {}", self.context());
        active.unwrap()
    }

    /// Silently drop everything `a` sends to `b` (and so every TCP exchange between them).
    fn blackhole(&self, on: bool) {
        let verb = if on { "add" } else { "del" };
        ip(self.ns.name(0), &format!("route {verb} blackhole 10.80.1.2/32"));
    }
}

#[test]
fn faults_below_tcp_end_with_exactly_one_active_node() {
    if !runs_as_root("the network-namespace fault suite") {
        return;
    }
    assert!(on_path("tc"), "`tc` (iproute2) is required for the slow-link fault");
    let started = Instant::now();
    let mut pair = Pair::start();
    assert_eq!(pair.settles("a active, b standby", Duration::from_secs(20), Duration::from_millis(600)), 0);

    // 1. Silent loss: b's checks time out and it takes over; a, seeing nothing either, stays active.
    pair.blackhole(true);
    let cut = Instant::now();
    wait("b takes over behind a silent loss", Duration::from_secs(5), || pair.modes()[1].as_deref() == Some("active"), || pair.context());
    println!("silent loss: b active after {} ms", cut.elapsed().as_millis());
    assert_eq!(pair.modes()[0].as_deref(), Some("active"), "a, cut off, keeps serving; {}", pair.context());
    pair.blackhole(false);
    let first = pair.settles("one active after the loss heals", Duration::from_secs(10), Duration::from_secs(1));
    println!("silent loss healed: {} keeps the role", pair.cluster.nodes[first].id);

    // 2. A link slow enough that answers come after the timeout: the standby takes over; when the link
    //    is fast again, one node keeps the role.
    let a = pair.ns.name(0);
    run(&["tc", "-n", a, "qdisc", "add", "dev", "hb", "root", "tbf", "rate", "8kbit", "burst", "1600", "latency", "5s"]);
    wait("both active on a crawling link", Duration::from_secs(8), || pair.modes().iter().all(|m| m.as_deref() == Some("active")), || pair.context());
    run(&["tc", "-n", a, "qdisc", "del", "dev", "hb", "root"]);
    let second = pair.settles("one active after the slow link recovers", Duration::from_secs(10), Duration::from_secs(1));
    println!("slow link healed: {} keeps the role", pair.cluster.nodes[second].id);

    // 3. Flapping: silent loss on and off at seeded periods around the failure threshold.
    let seed = std::env::var("VIGIL_FLAP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut rng = Rng::new(seed);
    let flapping = Instant::now();
    let mut on = false;
    while flapping.elapsed() < Duration::from_secs(8) {
        on = !on;
        pair.blackhole(on);
        std::thread::sleep(Duration::from_millis(50 + rng.below(850) as u64));
    }
    if on {
        pair.blackhole(false);
    }
    let third = pair.settles(&format!("one active after flapping (seed {seed})"), Duration::from_secs(10), Duration::from_secs(1));
    println!("flapping (seed {seed}) over: {} keeps the role", pair.cluster.nodes[third].id);

    // 4. kill -9 of the active node inside its namespace: the other takes over and runs the service.
    pair.cluster.kill(third);
    let killed = Instant::now();
    let survivor = 1 - third;
    wait("the survivor takes over", Duration::from_secs(5), || {
        pair.modes()[survivor].as_deref() == Some("active") && pair.runs_service(survivor)
    }, || pair.context());
    println!("kill -9 in a namespace: {} active after {} ms", pair.cluster.nodes[survivor].id, killed.elapsed().as_millis());
    pair.cluster.start(third).unwrap();
    pair.settles("one active after the killed node returns", Duration::from_secs(15), Duration::from_secs(1));
    println!("network-namespace fault suite done in {} ms", started.elapsed().as_millis());
    pair.cluster.stop(0);
    pair.cluster.stop(1);
}
