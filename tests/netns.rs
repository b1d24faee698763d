//! A mail-gateway pair in real network namespaces: two heartbeat links, a LAN with a client, and a
//! virtual IP that moves with the active role (deployments.md §6, issue 6).
//!
//! ```text
//!   ns a ──hb1 10.78.1.0/24── ns b        the two heartbeat paths (primary and secondary link)
//!   ns a ──hb2 10.78.2.0/24── ns b
//!   ns a ─lan─┐          ┌─lan─ ns b      LAN 10.77.0.0/24 on a bridge in the client's namespace;
//!             └─ ns c br0 ┘               VIP 10.77.0.100/24 (`add`), client 10.77.0.50
//!   ns a, ns b: `mgmt` with 10.79.0.{1,2}/24 and a `set` VIP 10.79.0.100/24 that replaces it
//! ```
//!
//! The client asks `vigil status --url http://VIP:7400` from inside its namespace: the answer names
//! the node the VIP reaches. Cutting one heartbeat link changes nothing; cutting both makes the
//! secondary take the VIP (its gratuitous ARP moves the client); restoring the links heals the two
//! actives per the on-failure option (`restore-slave-role`: the primary goes standby, gives the VIPs
//! back to the interfaces, and pushes its mail queue to the secondary, which keeps the role).
//!
//! Needs root (CI runs as root) and `ip`. Without root it prints why and passes.
//! The namespaces are deleted by a guard even when the test fails.

use std::time::{Duration, Instant};
use vigil_tests::netns::{ip, pair_in, run, runs_as_root, status_in, wait, ArpCounter, Namespaces, PORT};

const VIP: &str = "10.77.0.100";

fn wire(ns: &Namespaces) {
    let (a, b, c) = (ns.name(0), ns.name(1), ns.name(2));
    for (link, net) in [("hb1", 1), ("hb2", 2)] {
        ip(a, &format!("link add {link} type veth peer name {link} netns {b}"));
        ip(a, &format!("addr add 10.78.{net}.1/24 dev {link}"));
        ip(b, &format!("addr add 10.78.{net}.2/24 dev {link}"));
        ip(a, &format!("link set {link} up"));
        ip(b, &format!("link set {link} up"));
    }
    ip(c, "link add br0 type bridge");
    ip(c, "addr add 10.77.0.50/24 dev br0");
    ip(c, "link set br0 up");
    for (node, host, port) in [(a, 1, "pa"), (b, 2, "pb")] {
        ip(node, &format!("link add lan type veth peer name {port} netns {c}"));
        ip(node, &format!("addr add 10.77.0.{host}/24 dev lan"));
        ip(node, "link set lan up");
        ip(c, &format!("link set {port} master br0"));
        ip(c, &format!("link set {port} up"));
        // A veth whose other end stays in the namespace: dummy interfaces need a kernel module that
        // containers may lack.
        ip(node, "link add mgmt type veth peer name mgmt-end");
        ip(node, &format!("addr add 10.79.0.{host}/24 dev mgmt"));
        ip(node, "link set mgmt up");
    }
}

/// The IPv4 addresses of `dev` in `ns`.
fn addrs(ns: &str, dev: &str) -> Vec<String> {
    let out = run(&["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", dev]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(str::to_string))
        .collect()
}

fn local_url() -> String {
    format!("http://127.0.0.1:{PORT}")
}

/// Each node's mode, asked inside its own namespace.
fn modes(ns: &Namespaces) -> (Option<String>, Option<String>) {
    let mode = |i| status_in(ns.name(i), &local_url()).map(|(_, m)| m);
    (mode(0), mode(1))
}

/// The node the client reaches on the VIP.
fn vip_node(ns: &Namespaces) -> Option<String> {
    status_in(ns.name(2), &format!("http://{VIP}:{PORT}")).map(|(id, _)| id)
}

/// The mail-gateway policy of both nodes; `{dir}` is each node's directory.
const POLICY: &str = r#"plugin = "mail-gateway"

[params]
on_failure = "restore-slave-role"
push_queue_hook = "push-queue"

[services.mta]
start = "echo running > '{dir}/mta.running'"
stop = "rm -f '{dir}/mta.running'"
status = "test -f '{dir}/mta.running'"
timeout_ms = 2000

[hooks.push-queue]
command = ["sh", "-c", "echo \"$0\" > '{dir}/queue-pushed'", "{0}"]
timeout_ms = 2000

[[vip]]
interface = "lan"
address = "10.77.0.100/24"
action = "add"

[[vip]]
interface = "mgmt"
address = "10.79.0.100/24"
action = "set"

[[vip]]
interface = "lo"
address = "10.99.0.1/32"
action = "ignore"
"#;

#[test]
fn the_vip_follows_the_active_node_across_heartbeat_link_cuts() {
    if !runs_as_root("the network-namespace test") {
        return;
    }
    let started = Instant::now();
    let ns = Namespaces::create(&format!("vigil-t-{}", std::process::id()), &["a", "b", "c"]);
    wire(&ns);
    let (a, b) = (ns.name(0).to_string(), ns.name(1).to_string());

    let dir = tempfile::tempdir().unwrap();
    let mut cluster = pair_in(dir.path(), &a, &b, POLICY, |other| {
        vec![("hb1".into(), format!("http://10.78.1.{other}:{PORT}")), ("hb2".into(), format!("http://10.78.2.{other}:{PORT}"))]
    });
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let logs = || {
        let log = |i: usize| std::fs::read_to_string(&cluster.nodes[i].log).unwrap_or_default();
        format!("modes {:?}\n--- a's log\n{}\n--- b's log\n{}", modes(&ns), log(0), log(1))
    };
    let want = |ma: &str, mb: &str| {
        let (ma, mb) = (Some(ma.to_string()), Some(mb.to_string()));
        move |m: &(Option<String>, Option<String>)| m.0 == ma && m.1 == mb
    };

    // 1. The primary takes the role; the VIP answers from it; `set` replaced mgmt's own address.
    let is = want("active", "standby");
    wait("a active, b standby", Duration::from_secs(15), || is(&modes(&ns)), logs);
    wait("the client reaches a on the VIP", Duration::from_secs(5), || vip_node(&ns).as_deref() == Some("a"), logs);
    // The claim runs its entries in order, each with its gratuitous ARP: the later ones may still be
    // under way when the first answers.
    wait("set: the VIP replaces mgmt's address", Duration::from_secs(5), || addrs(&a, "mgmt") == ["10.79.0.100/24"], logs);
    assert!(addrs(&a, "lan").contains(&"10.77.0.100/24".to_string()), "add: the VIP beside the LAN address");
    assert!(addrs(&a, "lan").contains(&"10.77.0.1/24".to_string()));
    assert!(!addrs(&b, "lan").contains(&"10.77.0.100/24".to_string()), "the standby holds no VIP");
    assert_eq!(addrs(&a, "lo"), ["127.0.0.1/8"], "ignore: the interface is left alone");

    // 2. One heartbeat link cut: no failover.
    ip(&a, "link set hb1 down");
    std::thread::sleep(Duration::from_millis(2_000));
    assert!(want("active", "standby")(&modes(&ns)), "one link cut must not fail over; {}", logs());
    assert_eq!(vip_node(&ns).as_deref(), Some("a"));

    // 3. Both links cut: the secondary takes over and the client reaches it on the VIP: b's
    //    gratuitous ARPs (five at once, the policy's default) reach the client.
    let arps = ArpCounter::start(ns.name(2), VIP.parse().unwrap());
    ip(&a, "link set hb2 down");
    wait("b active", Duration::from_secs(5), || modes(&ns).1.as_deref() == Some("active"), logs);
    wait("the client reaches b on the VIP", Duration::from_secs(5), || vip_node(&ns).as_deref() == Some("b"), logs);
    assert!(addrs(&b, "lan").contains(&"10.77.0.100/24".to_string()));
    std::thread::sleep(Duration::from_millis(500));
    let seen = arps.stop();
    assert!(seen.len() >= 5, "the client saw {} announcements of the VIP, expected the 5 of b's first burst\n{}", seen.len(), logs());
    let claim = std::fs::read_to_string(&cluster.nodes[1].log).unwrap_or_default();
    let took = claim.lines().filter(|l| l.contains("action=claim-vip")).find_map(|l| l.split("duration_ms=").nth(1)?.split_whitespace().next().map(str::to_string));
    println!("b's claim-vip took {} ms; the client saw {} announcements", took.unwrap_or_default(), seen.len());

    // 4. Links restored: two actives; with restore-slave-role the primary goes standby, gives its
    //    interfaces back, pushes its queue to b; b keeps the role and the VIP.
    ip(&a, "link set hb1 up");
    ip(&a, "link set hb2 up");
    let is = want("standby", "active");
    wait("a standby, b active", Duration::from_secs(10), || is(&modes(&ns)), logs);
    wait("a released its VIPs", Duration::from_secs(5), || addrs(&a, "mgmt") == ["10.79.0.1/24"], logs);
    assert!(!addrs(&a, "lan").contains(&"10.77.0.100/24".to_string()), "{:?}", addrs(&a, "lan"));
    assert_eq!(vip_node(&ns).as_deref(), Some("b"));
    let pushed = cluster.nodes[0].dir.join("queue-pushed");
    wait("a pushed its queue to b", Duration::from_secs(5), || std::fs::read_to_string(&pushed).is_ok_and(|t| t.trim() == "b"), logs);
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(want("standby", "active")(&modes(&ns)), "stable afterwards; {}", logs());
    assert!(!cluster.nodes[0].dir.join("mta.running").exists(), "a stopped its mail service");
    wait("b runs the mail service", Duration::from_secs(5), || cluster.nodes[1].dir.join("mta.running").exists(), logs);
    println!("network-namespace test done in {} ms", started.elapsed().as_millis());
    cluster.stop(0);
    cluster.stop(1);
}
