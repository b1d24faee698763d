//! Configuration replication between real `vigil run` processes: partitions that heal, kill -9 in the
//! middle of a large sync, and refused batches.
//!
//! Partitions use `LinkProxy`: each node reaches its peer through a loopback forwarder the test cuts
//! and heals, so both nodes keep running (and writing) while they cannot see each other.

use hyper::Method;
use std::path::Path;
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, LinkProxy, PairSpec, Timing, PEER_KEY};
use vigil::replication::store::{Patterns, Scopes, Store, CONFIG};
use vigil_tests::{plugins_dir, vigil_bin};

const INTERVAL: u64 = 100;

/// A hot-standby pair whose peer links go through proxies, with a replicated directory `shared`.
async fn pair_with_links(dir: &Path) -> (Cluster, LinkProxy, LinkProxy) {
    let spec = PairSpec {
        timing: Timing { interval_ms: INTERVAL, timeout_ms: INTERVAL, failures: 3, successes: 3 },
        params: String::new(),
        plugin_dirs: vec![plugins_dir()],
    };
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir, &spec).unwrap();
    let a_to_b = LinkProxy::start(cluster.listen_addr(1)).await.unwrap();
    let b_to_a = LinkProxy::start(cluster.listen_addr(0)).await.unwrap();
    for (i, peer, proxy) in [(0, "b", &a_to_b), (1, "a", &b_to_a)] {
        let shared = cluster.nodes[i].dir.join("shared");
        let spec = cluster.spec_mut(i);
        spec.peer_paths = vec![(peer.to_string(), vec![("link".to_string(), proxy.url())])];
        spec.extra_config = format!(
            "\n[sync]\ninterval_ms = 1000\nlocal_only = [\"ha.*\"]\n\n[[sync.directory]]\nname = \"shared\"\npath = {:?}\ninterval_ms = 200\nmax_file_mib = 1\n",
            shared.display().to_string()
        );
    }
    (cluster, a_to_b, b_to_a)
}

async fn put(c: &Cluster, i: usize, key: &str, value: &str) {
    let headers = [("authorization", format!("Bearer {}", vigil::cluster::ADMIN_TOKEN))];
    let url = format!("{}/config/{key}", c.nodes[i].url);
    let a = vigil::http_client::HttpClient::new()
        .send(Method::PUT, &url, &headers, value.to_string().into(), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
}

async fn delete(c: &Cluster, i: usize, key: &str) {
    let (status, body) = c.admin(i, Method::DELETE, &format!("/config/{key}")).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// `key=value` lines of node `i`'s replicated keys.
async fn keys(c: &Cluster, i: usize) -> Vec<String> {
    let (status, body) = c.admin(i, Method::GET, "/config/").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    list.iter()
        .filter(|e| e["local_only"] != true)
        .map(|e| format!("{}={}", e["key"].as_str().unwrap(), e["value"].as_str().unwrap_or("")))
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| format!("{}={}", e.file_name().to_string_lossy(), std::fs::read_to_string(e.path()).unwrap_or_default())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

async fn eventually<T: PartialEq + std::fmt::Debug>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> (T, T)) {
    let deadline = Instant::now() + limit;
    loop {
        let (a, b) = f().await;
        if a == b {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not converged after {limit:?}:\n  {a:?}\n  {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_heals_into_identical_content_where_the_later_write_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, a_to_b, b_to_a) = pair_with_links(dir.path()).await;
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    cluster.wait_for(Duration::from_secs(10), |m| (m[0].is_some() && m[1].is_some()).then_some(())).await.unwrap();
    let (shared_a, shared_b) = (cluster.nodes[0].dir.join("shared"), cluster.nodes[1].dir.join("shared"));

    // Before the partition: a key and a file that b will delete during it.
    put(&cluster, 0, "doomed", "v0").await;
    put(&cluster, 0, "ha.local", "a's own").await;
    std::fs::create_dir_all(&shared_a).unwrap();
    std::fs::write(shared_a.join("doomed.txt"), "v0").unwrap();
    eventually("before the partition", Duration::from_secs(10), async || (keys(&cluster, 0).await, keys(&cluster, 1).await)).await;
    eventually("files before the partition", Duration::from_secs(10), async || (files(&shared_a), files(&shared_b))).await;
    assert_eq!(keys(&cluster, 1).await, vec!["doomed=v0"], "local-only keys stay home");

    a_to_b.cut();
    b_to_a.cut();
    tokio::time::sleep(Duration::from_millis(INTERVAL * 5)).await;
    put(&cluster, 0, "same", "from-a").await;
    put(&cluster, 0, "only-a", "1").await;
    std::fs::write(shared_a.join("same.txt"), "from-a").unwrap();
    std::fs::write(shared_a.join("only-a.txt"), "1").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    put(&cluster, 1, "same", "from-b").await; // later: wins
    put(&cluster, 1, "only-b", "2").await;
    delete(&cluster, 1, "doomed").await;
    std::fs::write(shared_b.join("same.txt"), "from-b").unwrap();
    std::fs::write(shared_b.join("only-b.txt"), "2").unwrap();
    std::fs::remove_file(shared_b.join("doomed.txt")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // both scan their directories
    assert_ne!(keys(&cluster, 0).await, keys(&cluster, 1).await, "really partitioned");

    a_to_b.heal();
    b_to_a.heal();
    let expected = vec!["only-a=1", "only-b=2", "same=from-b"];
    eventually("keys after healing", Duration::from_secs(10), async || (keys(&cluster, 0).await, keys(&cluster, 1).await)).await;
    assert_eq!(keys(&cluster, 0).await, expected, "later write wins, the delete holds");
    eventually("files after healing", Duration::from_secs(10), async || (files(&shared_a), files(&shared_b))).await;
    assert_eq!(files(&shared_a), vec!["only-a.txt=1", "only-b.txt=2", "same.txt=from-b"]);

    // Nothing deleted comes back, even after a full exchange.
    let (status, body) = cluster.admin(0, Method::POST, "/admin/sync").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&cluster, 0).await, expected);
    assert_eq!(keys(&cluster, 1).await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_a_large_sync_leaves_an_intact_store_that_converges() {
    const KEYS: usize = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, _a_to_b, _b_to_a) = pair_with_links(dir.path()).await;
    // Fill a's store before it starts: the same file the daemon opens.
    let data_a = cluster.nodes[0].dir.join("data");
    std::fs::create_dir_all(&data_a).unwrap();
    {
        let store = Store::open(&data_a.join("store.sqlite"), "a", Patterns::default(), Scopes::default()).unwrap();
        let value = vec![b'x'; 1024];
        for i in 0..KEYS {
            store.put(CONFIG, &format!("key{i:06}"), value.clone(), None, 1_700_000_000_000 + i as u64).unwrap();
        }
    }
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(10), |m| m[0].is_some().then_some(())).await.unwrap();
    cluster.start(1).unwrap();

    // Kill b once it has part of the data.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = sync_items(&cluster, 1).await.unwrap_or(0);
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill(1);
    println!("killed b with {seen} of {KEYS} keys");
    if seen == 0 {
        println!("{}", cluster.logs(30));
    }
    assert!(seen < KEYS as u64, "the kill must land mid-sync (got {seen} of {KEYS})");

    // The store b left behind opens, passes SQLite's integrity check, and holds whole entries.
    {
        let store = Store::open(&cluster.nodes[1].dir.join("data/store.sqlite"), "b", Patterns::default(), Scopes::default())
            .expect("the store survives kill -9");
        for e in store.list(CONFIG, "").unwrap() {
            assert_eq!(e.value.as_ref().map(Vec::len), Some(1024), "{} is whole", e.key);
        }
    }
    cluster.start(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if sync_items(&cluster, 1).await == Some(KEYS as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "b did not converge to {KEYS} keys\n{}", cluster.logs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sync_items(c: &Cluster, i: usize) -> Option<u64> {
    let a = vigil::http_client::HttpClient::new().get(&format!("{}/status", c.nodes[i].url), Duration::from_secs(2)).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
    v["sync"]["items"].as_u64()
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_or_oversized_batches_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, _a, _b) = pair_with_links(dir.path()).await;
    cluster.start(0).unwrap();
    cluster.wait_for(Duration::from_secs(10), |m| m[0].is_some().then_some(())).await.unwrap();
    put(&cluster, 0, "existing", "1").await;
    let before = keys(&cluster, 0).await;

    let clock = vigil::clock::SystemClock::new();
    let now = vigil::clock::Clock::wall_ms(&*clock);
    let peer = vigil::peer::client::PeerClient::new(vigil::http_client::HttpClient::new(), "b".into(), vec![PEER_KEY.as_bytes().to_vec()], clock);
    let url = &cluster.nodes[0].url;
    let change = |key: &str, wall: u64| {
        serde_json::json!({ "scope": "config", "key": key, "value": "dmFsdWU=", "hlc": { "wall_ms": wall, "counter": 0 }, "origin": "b", "seq": 1 })
    };
    let cases = [
        ("malformed JSON", b"{\"changes\": [".to_vec(), "400"),
        ("bad base64", serde_json::to_vec(&serde_json::json!({ "changes": [{ "scope": "config", "key": "k", "value": "%%%", "hlc": { "wall_ms": now, "counter": 0 }, "origin": "b", "seq": 1 }] })).unwrap(), "400"),
    ];
    for (what, body, code) in cases {
        let err = peer.post_signed("a", url, vigil::replication::CHANGES_PATH, body.into(), Duration::from_secs(10)).await.unwrap_err();
        assert!(err.contains(code), "{what}: expected {code}, got {err}");
    }
    // Oversized (over the 48 MiB batch limit): refused from its declared length, before a byte of it
    // is read (a raw request, since a client that streams the body may see the connection closed under
    // it instead of the answer); unsigned, it is refused before the length even matters.
    for signed in [true, false] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(cluster.listen_addr(0)).await.unwrap();
        let mut head = format!("POST {} HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n", vigil::replication::CHANGES_PATH, 49 << 20);
        if signed {
            let run = peer.heartbeat("a", url, Duration::from_secs(2)).await.unwrap().answer.boot;
            let request = vigil::peer::signing::Request { method: "POST", path: vigil::replication::CHANGES_PATH, from: "b", to: "a", boot: &run, body: b"never sent" };
            let h = vigil::peer::signing::sign_request(PEER_KEY.as_bytes(), request, now, vigil::peer::signing::new_nonce());
            for (name, value) in h.pairs() {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        let expected = if signed { "HTTP/1.1 413" } else { "HTTP/1.1 401" };
        assert!(answer.starts_with(expected), "oversized, signed: {signed}: {answer}");
    }
    assert_eq!(keys(&cluster, 0).await, before, "nothing changed");

    // Well-formed changes the checks refuse (a far-future stamp, a traversal in a file key) are
    // skipped and counted; the rest of their batch applies.
    let traversal = serde_json::json!({ "scope": "shared", "key": "../etc/passwd", "value": "eA==", "hlc": { "wall_ms": now, "counter": 0 }, "origin": "b", "seq": 3 });
    let mixed = serde_json::to_vec(&serde_json::json!({ "changes": [change("good", now), change("bad", now + 86_400_000), traversal] })).unwrap();
    peer.post_signed("a", url, vigil::replication::CHANGES_PATH, mixed.into(), Duration::from_secs(10)).await.unwrap();
    assert_eq!(keys(&cluster, 0).await, vec!["existing=1", "good=value"]);
    // Counted in the status (published on the next tick).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, status) = cluster.admin(0, Method::GET, "/status").await.unwrap();
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        if status["sync"]["refused_changes"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", status["sync"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
