//! A real etcd cluster for the arbiter tests: three members of Debian's `etcd` (v3.4) on loopback
//! ports, each with its own data directory, fast elections (50 ms heartbeats, 500 ms election timeout),
//! killed and restarted one by one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary (Debian's `etcd-server`).
pub const ETCD: &str = "/usr/bin/etcd";

/// One member.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster; every member is killed when it is dropped.
#[derive(Debug)]
pub struct Etcd {
    pub members: Vec<Member>,
    initial_cluster: String,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], vigil::cluster::free_port().expect("a free port")))
}

impl Etcd {
    /// Start `n` members in `dir` and wait until the cluster answers (a leader elected).
    pub fn start(dir: &Path, n: usize) -> Etcd {
        assert!(Path::new(ETCD).exists(), "{ETCD} is missing: install Debian's etcd-server package (.ci/run does)");
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    client: loopback(),
                    peer: loopback(),
                    data_dir: dir.join(format!("{name}.etcd")),
                    log: dir.join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let mut etcd = Etcd { members, initial_cluster };
        for i in 0..n {
            etcd.spawn(i);
        }
        etcd.wait_healthy(Duration::from_secs(20));
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).expect("etcd log");
        let state = if m.data_dir.exists() { "existing" } else { "new" };
        let child = Command::new(ETCD)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "vigil-arbiter-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        m.child = Some(child);
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://{}", m.client)).collect()
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The index of the member that is etcd's leader now, as a running member reports it
    /// (`/v3/maintenance/status`: the leader's member ID beside the answering member's own).
    pub fn leader(&self) -> Option<usize> {
        let ids: Vec<Option<(String, String)>> = self.members.iter().map(|m| m.child.as_ref().and_then(|_| status(m.client))).collect();
        let leader = ids.iter().flatten().map(|(_, leader)| leader.clone()).next()?;
        ids.iter().position(|id| id.as_ref().is_some_and(|(own, _)| *own == leader))
    }

    /// A running member that is not etcd's leader: killing it keeps the quorum without an election.
    pub fn follower(&self) -> usize {
        let leader = self.leader().expect("etcd has a leader");
        (0..self.members.len()).find(|&i| i != leader && self.members[i].child.is_some()).expect("a running follower")
    }

    /// Start member `i` again (on its data directory) and wait until the cluster answers.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(Duration::from_secs(20));
    }

    /// Wait until every running member says the cluster is healthy (`/health`: it has a leader and
    /// answers a linearizable read).
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                if health(m.client).is_some_and(|body| body.contains("\"health\":\"true\"")) {
                    break;
                }
                assert!(Instant::now() < deadline, "etcd member {} not healthy after {} ms; log {}", m.name, limit.as_millis(), m.log.display());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One HTTP/1.0 request (`head`: its lines, each ending in CRLF; then `body`) to a member's client URL: the whole
/// answer, headers included.
fn request(addr: SocketAddr, head: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "{head}Host: etcd\r\nContent-Length: {}\r\n\r\n{body}", body.len()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// `GET /health` of a member's client URL.
fn health(addr: SocketAddr) -> Option<String> {
    request(addr, "GET /health HTTP/1.0\r\n", "")
}

/// A member's own ID and its leader's, from `POST /v3/maintenance/status` (etcd's gRPC gateway).
fn status(addr: SocketAddr) -> Option<(String, String)> {
    let answer = request(addr, "POST /v3/maintenance/status HTTP/1.0\r\nContent-Type: application/json\r\n", "{}")?;
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n")?.1).ok()?;
    // uint64 IDs come as JSON strings through the gateway.
    let id = |v: &serde_json::Value| v.as_str().map(str::to_string).or_else(|| v.as_u64().map(|n| n.to_string()));
    Some((id(&body["header"]["member_id"])?, id(&body["leader"])?))
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
