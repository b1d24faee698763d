//! The VIP failover benchmark, side by side with keepalived: how long a client on the LAN cannot
//! reach a virtual IP when the node holding it dies.
//!
//! Three network namespaces (created and deleted here; nothing leaves them): nodes `a` and `b` and a
//! client `c`, whose bridge joins the three on 10.88.0.0/24. A tiny TCP responder on each node
//! answers its name on port 9000 whichever daemon runs (the service the VIP leads to); the client
//! connects to the VIP every 10 ms (50 ms connect timeout) and notes who answered. Once `a` holds
//! the VIP and answers steadily, its daemon is killed with SIGKILL and its link set down at once (a
//! node that dies with its switch port). The *gap* is the time between the client's last answer
//! from `a` and its first from `b`; the client also counts the ARP announcements of the VIP it
//! receives in the second after the kill.
//!
//! The same run with keepalived 2.2 (VRRPv3, `advert_int`, priorities 150/100, installed with apt
//! when missing) and with vigil (release build, the mail-gateway policy with the VIP on `eth0`,
//! heartbeats over the same LAN, 3 failures). Needs root; threads enter the namespaces with `setns`
//! (which applies to the calling thread only).

#![allow(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, NodeSpec, Timing};
use vigil::model::Role;
use vigil_tests::netns::{ip, ArpCounter, Namespaces};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 100);
const SERVICE_PORT: u16 = 9000;
const VIGIL_PORT: u16 = 7400;
const UDP_PORT: u16 = 7402;
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(50);

/// Run `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let netns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: FFI with a descriptor that stays open for the call; it changes this thread only.
        let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// The client's probes: when, and who answered (`None`: no answer).
type ProbeLog = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// The three namespaces, wired: `a` and `b` (eth0: .1 and .2) on the client's bridge (.3).
struct Lan {
    ns: Namespaces,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    probes: ProbeLog,
}

impl Lan {
    fn create(tag: &str) -> Lan {
        let ns = Namespaces::create(&format!("vb{}-{tag}", std::process::id()), &["a", "b", "c"]);
        let (a, b, c) = (ns.name(0), ns.name(1), ns.name(2));
        ip(c, "link add br0 type bridge");
        ip(c, "addr add 10.88.0.3/24 dev br0");
        ip(c, "link set br0 up");
        for (node, host, port) in [(a, 1, "pa"), (b, 2, "pb")] {
            ip(node, &format!("link add eth0 type veth peer name {port} netns {c}"));
            ip(node, &format!("addr add 10.88.0.{host}/24 dev eth0"));
            ip(node, "link set eth0 up");
            ip(c, &format!("link set {port} master br0"));
            ip(c, &format!("link set {port} up"));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for (i, name) in [(0, "a"), (1, "b")] {
            let stop = stop.clone();
            threads.push(in_netns(ns.name(i), move || respond(name, &stop)));
        }
        let (stop_c, log) = (stop.clone(), probes.clone());
        threads.push(in_netns(ns.name(2), move || probe(&stop_c, &log)));
        Lan { ns, stop, threads, probes }
    }

    fn name(&self, i: usize) -> &str {
        self.ns.name(i)
    }

    /// Wait until the client has been answered by `node` for `steady` in a row.
    fn until_served_by(&self, node: &str, steady: Duration, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let now = Instant::now();
            let probes = self.probes.lock().expect("probes");
            let recent: Vec<_> = probes.iter().filter(|(t, _)| now.duration_since(*t) < steady).collect();
            let answered = |(_, who): &&(Instant, Option<String>)| who.as_deref() == Some(node);
            if recent.len() >= (steady.as_millis() / PROBE_EVERY.as_millis() / 2) as usize && recent.iter().all(answered) {
                return Ok(());
            }
            drop(probes);
            anyhow::ensure!(Instant::now() < deadline, "the client was not served by {node} within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client's gap around `killed`: from its last answer by `a` to its first by `b`, and how
    /// many probes in between went unanswered.
    fn gap(&self, killed: Instant) -> Option<(Duration, usize)> {
        let probes = self.probes.lock().expect("probes");
        let last_a = probes.iter().filter(|(t, who)| *t <= killed && who.as_deref() == Some("a")).map(|(t, _)| *t).next_back()?;
        let first_b = probes.iter().find(|(t, who)| *t > killed && who.as_deref() == Some("b")).map(|(t, _)| *t)?;
        let lost = probes.iter().filter(|(t, who)| *t > last_a && *t < first_b && who.is_none()).count();
        Some((first_b - last_a, lost))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Answer `name` to every connection on port 9000 until `stop`.
fn respond(name: &str, stop: &AtomicBool) {
    let listener = TcpListener::bind(("0.0.0.0", SERVICE_PORT)).expect("responder port");
    listener.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.write_all(name.as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Connect to the VIP every 10 ms until `stop`, noting who answered.
fn probe(stop: &AtomicBool, log: &Mutex<Vec<(Instant, Option<String>)>>) {
    let to = SocketAddr::from((VIP, SERVICE_PORT));
    while !stop.load(Ordering::Acquire) {
        let at = Instant::now();
        let who = TcpStream::connect_timeout(&to, PROBE_TIMEOUT).ok().and_then(|mut s| {
            s.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
            let mut name = String::new();
            s.read_to_string(&mut name).ok()?;
            (!name.is_empty()).then_some(name)
        });
        log.lock().expect("probes").push((at, who));
        let next = at + PROBE_EVERY;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// A daemon under test on nodes `a` and `b`.
trait Daemons {
    fn kill_a(&mut self);
}

struct Keepalived {
    children: Vec<Child>,
}

impl Keepalived {
    fn start(lan: &Lan, dir: &Path, advert_ms: u64) -> anyhow::Result<Keepalived> {
        let mut children = Vec::new();
        for (i, (name, priority)) in [("a", 150), ("b", 100)].into_iter().enumerate() {
            let conf = dir.join(format!("keepalived-{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "global_defs {{\n  router_id vb_{name}\n  vrrp_version 3\n}}\n\
                     vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {}\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n",
                    advert_ms as f64 / 1000.0
                ),
            )?;
            let pid = |what: &str| dir.join(format!("{what}-{name}.pid")).display().to_string();
            let log = std::fs::File::create(dir.join(format!("keepalived-{name}.log")))?;
            let child = Command::new("ip")
                .args(["netns", "exec", lan.name(i), "keepalived", "-n", "-l", "-P", "-f"])
                .arg(&conf)
                .args(["-p", &pid("keepalived"), "-r", &pid("vrrp"), "-c", &pid("checkers")])
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .spawn()?;
            children.push(child);
        }
        Ok(Keepalived { children })
    }
}

impl Daemons for Keepalived {
    fn kill_a(&mut self) {
        // keepalived's parent and its VRRP child: the whole process group.
        // SAFETY: a plain signal to a process group this benchmark started.
        unsafe { libc::kill(-(self.children[0].id() as i32), libc::SIGKILL) };
        let _ = self.children[0].wait();
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: as in `kill_a`.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

struct Vigil {
    cluster: Cluster,
}

impl Vigil {
    /// With `udp`, the fast path at `interval_ms` and the HTTP heartbeat every 200 ms.
    fn start(lan: &Lan, dir: &Path, exe: &Path, interval_ms: u64, udp: bool) -> anyhow::Result<Vigil> {
        let timing = Timing { interval_ms, timeout_ms: interval_ms, failures: 3, successes: 3 };
        let mut cluster = Cluster::new(exe, dir, timing, vec![vigil_tests::plugins_dir()])?;
        let policy = format!(
            "plugin = \"mail-gateway\"\n\n[params]\non_failure = \"restore-slave-role\"\n\n\
             [services.mta]\nstart = \"echo running > '{{dir}}/mta.running'\"\nstop = \"rm -f '{{dir}}/mta.running'\"\n\
             status = \"test -f '{{dir}}/mta.running'\"\ntimeout_ms = 2000\n\n\
             [[vip]]\ninterface = \"eth0\"\naddress = \"{VIP}/24\"\naction = \"add\"\n"
        );
        for (i, (id, role, peer, other)) in [("a", Role::Primary, "b", 2), ("b", Role::Secondary, "a", 1)].into_iter().enumerate() {
            let mut spec = NodeSpec::new(id, role, &policy);
            spec.listen = Some(([0, 0, 0, 0], VIGIL_PORT).into());
            spec.prefix = vec!["ip".into(), "netns".into(), "exec".into(), lan.name(i).to_string()];
            spec.peer_paths = vec![(peer.into(), vec![("lan".into(), format!("http://10.88.0.{other}:{VIGIL_PORT}"))])];
            if udp {
                spec.heartbeat_extra = format!("udp_listen = \"0.0.0.0:{UDP_PORT}\"\nhttp_interval_ms = 200");
                spec.udp_paths = vec![(peer.into(), format!("10.88.0.{other}:{UDP_PORT}"))];
            }
            cluster.add(spec)?;
        }
        cluster.start(0)?;
        cluster.start(1)?;
        Ok(Vigil { cluster })
    }
}

impl Daemons for Vigil {
    fn kill_a(&mut self) {
        self.cluster.kill(0);
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        self.cluster.kill(0);
        self.cluster.kill(1);
    }
}

/// Removes a run's directory when dropped, unless VIGIL_BENCH_KEEP is set.
struct RemoveUnlessKept(std::path::PathBuf);

impl Drop for RemoveUnlessKept {
    fn drop(&mut self) {
        if std::env::var_os("VIGIL_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One failover: settle on `a`, kill it with its link, measure the client's gap.
fn once(tag: &str, start: impl FnOnce(&Lan, &Path) -> anyhow::Result<Box<dyn Daemons>>) -> anyhow::Result<(Duration, usize, usize)> {
    // VIGIL_BENCH_KEEP: the daemons' files stay for a look (their paths are printed).
    let dir = tempfile::tempdir()?.keep();
    if std::env::var_os("VIGIL_BENCH_KEEP").is_some() {
        eprintln!("{tag}: files in {}", dir.display());
    }
    let _remove = RemoveUnlessKept(dir.clone());
    let lan = Lan::create(tag);
    let mut daemons = start(&lan, &dir)?;
    lan.until_served_by("a", Duration::from_millis(500), Duration::from_secs(20))?;
    let arps = ArpCounter::start(lan.name(2), VIP);
    let killed = Instant::now();
    if std::env::var_os("VIGIL_BENCH_KEEP").is_some() {
        eprintln!("{tag}: a killed at {:?}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default());
    }
    daemons.kill_a();
    ip(lan.name(0), "link set eth0 down");
    lan.until_served_by("b", Duration::from_millis(100), Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(1_000));
    let seen = arps.stop().into_iter().filter(|t| t.duration_since(killed) < Duration::from_secs(2)).count();
    let (gap, lost) = lan.gap(killed).ok_or_else(|| anyhow::anyhow!("no answer by a before the kill or by b after it"))?;
    drop(daemons);
    Ok((gap, lost, seen))
}

fn summary(what: &str, runs: &[(Duration, usize, usize)]) {
    let mut gaps: Vec<u128> = runs.iter().map(|r| r.0.as_millis()).collect();
    gaps.sort_unstable();
    let mut arps: Vec<usize> = runs.iter().map(|r| r.2).collect();
    arps.sort_unstable();
    let lost: usize = runs.iter().map(|r| r.1).sum();
    crate::row(
        what,
        format!(
            "client gap {} / **{}** / {} ms (min/median/max, {} runs); {} probes unanswered in all; ARPs seen per takeover: median {}",
            gaps[0],
            gaps[gaps.len() / 2],
            gaps[gaps.len() - 1],
            runs.len(),
            lost,
            arps[arps.len() / 2]
        ),
    );
}

pub(crate) fn install(program: &str, package: &str) -> anyhow::Result<()> {
    if vigil_tests::netns::on_path(program) {
        return Ok(());
    }
    eprintln!("installing {package} (apt-get) for the side-by-side benchmark");
    let ok = Command::new("sh").args(["-c", &format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}")]).status()?;
    anyhow::ensure!(ok.success(), "cannot install {package}");
    Ok(())
}

/// keepalived at `advert_int` 0.1 and vigil at interval 100 ms (HTTP heartbeat), then keepalived at
/// 0.02 and vigil's udp fast path at 20 ms: `runs` failovers each, taking turns.
pub fn run(exe: &Path, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(vigil_tests::netns::runs_as_root("the VIP benchmark"), "the VIP benchmark needs root (network namespaces)");
    install("keepalived", "keepalived")?;
    let runs = std::env::var("VIGIL_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(runs);
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for i in 0..runs {
        k.push(once(&format!("k{i}"), |lan, dir| Ok(Box::new(Keepalived::start(lan, dir, 100)?)))?);
        v.push(once(&format!("v{i}"), |lan, dir| Ok(Box::new(Vigil::start(lan, dir, exe, 100, false)?)))?);
    }
    summary("VIP failover, keepalived 2.2 VRRPv3, advert_int 0.1 (kill -9 + link down)", &k);
    summary("VIP failover, vigil, interval 100 ms, 3 failures, HTTP heartbeat (kill -9 + link down)", &v);
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for i in 0..runs {
        k.push(once(&format!("kf{i}"), |lan, dir| Ok(Box::new(Keepalived::start(lan, dir, 20)?)))?);
        v.push(once(&format!("vf{i}"), |lan, dir| Ok(Box::new(Vigil::start(lan, dir, exe, 20, true)?)))?);
    }
    summary("VIP failover, keepalived 2.2 VRRPv3, advert_int 0.02 (kill -9 + link down)", &k);
    summary("VIP failover, vigil, udp fast path 20 ms, 3 failures, HTTP heartbeat 200 ms (kill -9 + link down)", &v);
    Ok(())
}

/// Both cores busy for `seconds` (one spinning thread per core, as long as the run): a vigil pair
/// on the udp fast path at 20 ms and a keepalived pair at `advert_int` 0.02, side by side on two
/// LANs of their own, idle otherwise. A false failover is the backup taking the VIP (or the
/// active role) while the master lives: counted from vigil's event log and keepalived's log.
pub fn idle(exe: &Path, seconds: u64) -> anyhow::Result<()> {
    anyhow::ensure!(vigil_tests::netns::runs_as_root("the idle benchmark"), "the idle benchmark needs root (network namespaces)");
    install("keepalived", "keepalived")?;
    let seconds = std::env::var("VIGIL_BENCH_IDLE_S").ok().and_then(|r| r.parse().ok()).unwrap_or(seconds);
    let root = tempfile::tempdir()?.keep();
    if std::env::var_os("VIGIL_BENCH_KEEP").is_some() {
        eprintln!("idle: files in {}", root.display());
    }
    let _remove = RemoveUnlessKept(root.clone());
    let (kdir, vdir) = (root.join("keepalived"), root.join("vigil"));
    std::fs::create_dir_all(&kdir)?;
    std::fs::create_dir_all(&vdir)?;
    let (klan, vlan) = (Lan::create("ik"), Lan::create("iv"));
    let keepalived = Keepalived::start(&klan, &kdir, 20)?;
    let vigil = Vigil::start(&vlan, &vdir, exe, 20, true)?;
    klan.until_served_by("a", Duration::from_millis(500), Duration::from_secs(20))?;
    vlan.until_served_by("a", Duration::from_millis(500), Duration::from_secs(20))?;
    let burning = Arc::new(AtomicBool::new(true));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let burners: Vec<_> = (0..cores)
        .map(|_| {
            let burning = burning.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while burning.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    burning.store(false, Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    // The client's view: every probe after the start that was not answered by a.
    let misses = |lan: &Lan| lan.probes.lock().expect("probes").iter().filter(|(t, who)| *t > started && who.as_deref() != Some("a")).count();
    let (kmiss, vmiss) = (misses(&klan), misses(&vlan));
    let k_masters = std::fs::read_to_string(kdir.join("keepalived-b.log")).unwrap_or_default().matches("Entering MASTER STATE").count();
    let v_log = std::fs::read_to_string(vigil.cluster.nodes[1].log.clone()).unwrap_or_default();
    let v_actives = v_log.lines().filter(|l| l.contains("mode changed") && l.contains("to=active")).count();
    drop((keepalived, vigil));
    crate::row(
        &format!("idle {seconds} s, both cores busy: keepalived advert_int 0.02"),
        format!("backup became MASTER {k_masters} times; client probes not answered by the master: {kmiss}"),
    );
    crate::row(
        &format!("idle {seconds} s, both cores busy: vigil udp fast path 20 ms, 3 failures"),
        format!("standby became ACTIVE {v_actives} times; client probes not answered by the active: {vmiss}"),
    );
    Ok(())
}
