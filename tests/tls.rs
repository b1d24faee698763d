//! TLS through the real binary (issue 17): `vigil run` processes on loopback with certificates made
//! by a test CA (`rcgen`), and the CLI over HTTPS.
//!
//! - a pair with mutual TLS and peer names fails over and replicates; its plain public listener
//!   answers load balancers and refuses admin and peer requests;
//! - a peer whose certificate comes from another CA, or names another node, is refused, and shows as
//!   unreachable with the reason in `/status`;
//! - an expired certificate is refused, and a rotated certificate file is used without a restart;
//! - without `[tls]`, the admin API refuses plain HTTP from a non-loopback address (a network
//!   namespace made by the test), unless `security.admin_insecure_remote` allows it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vigil::cluster::{exactly_one_active, Cluster, NodeSpec, PairSpec, Timing};
use vigil::http_client::HttpClient;
use vigil::model::{Mode, Role};
use vigil_tests::tls::{client, tls_table, Ca, Validity};
use vigil_tests::{describe, plugins_dir, vigil, vigil_bin};

const TIMING: Timing = Timing { interval_ms: 100, timeout_ms: 100, failures: 3, successes: 3 };
const STANDBY: &str = "plugin = \"testkit\"\n[params]\nmode = \"standby\"\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(|a| a.into()).collect()
}

fn run_cli(args: &[&str]) -> std::process::Output {
    let args = os(args);
    vigil(&args.iter().map(|a| a.as_os_str()).collect::<Vec<&OsStr>>())
}

/// Node `i`'s `/status` through the cluster's client.
async fn status(http: &HttpClient, cluster: &Cluster, i: usize) -> Option<serde_json::Value> {
    let a = http.get(&format!("{}/status", cluster.nodes[i].url), Duration::from_secs(2)).await.ok()?;
    serde_json::from_slice(&a.body).ok()
}

/// The line of peer `id` in node `i`'s `/status`.
async fn peer_line(http: &HttpClient, cluster: &Cluster, i: usize, id: &str) -> Option<serde_json::Value> {
    let s = status(http, cluster, i).await?;
    s["peers"].as_array()?.iter().find(|p| p["id"] == id).cloned()
}

/// Poll `f` every 50 ms until it returns `Some`, or panic after `limit` with `what`.
async fn until<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = f().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {} s", limit.as_secs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_of(cluster: &Cluster, i: usize) -> String {
    std::fs::read_to_string(&cluster.nodes[i].log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mutual_tls_pair_fails_over_and_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let spec = PairSpec { timing: TIMING, params: String::new(), plugin_dirs: vec![plugins_dir()] };
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), d, &spec).unwrap();
    let plain = free_port();
    for (i, id) in ["a", "b"].into_iter().enumerate() {
        let (cert, key) = ca.write(d, id, &[id, "127.0.0.1"], Validity::Now);
        let mut rest = "peer_names = true\nmin_version = \"1.3\"\n".to_string();
        if i == 0 {
            rest.push_str(&format!("plain_listen = \"127.0.0.1:{plain}\"\n"));
        }
        cluster.spec_mut(i).extra_config = tls_table(&cert, &key, &ca.cert, &rest);
    }
    let (op_cert, op_key) = ca.write(d, "operator", &["operator"], Validity::Now);
    let http = client(&ca.cert, Some((&op_cert, &op_key)));
    cluster.use_https(http.clone());
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    assert_eq!(cluster.wait_for(Duration::from_secs(20), exactly_one_active).await.unwrap(), 0, "logs:\n{}", cluster.logs(20));
    assert!(cluster.nodes[0].url.starts_with("https://"));
    let b_sees_a = until("b hears a over mutual TLS", Duration::from_secs(10), async || {
        peer_line(&http, &cluster, 1, "a").await.filter(|p| p["reachable"] == true && p["reported_mode"] == "active")
    })
    .await;
    assert_eq!(b_sees_a["last_error"], serde_json::Value::Null, "{b_sees_a}");

    // The plain listener answers load balancers, and nothing else.
    let plain_http = HttpClient::new();
    let role = plain_http.get(&format!("http://127.0.0.1:{plain}/role"), Duration::from_secs(2)).await.unwrap();
    assert_eq!((role.status, String::from_utf8_lossy(&role.body).trim()), (200, "ACTIVE"));
    for path in ["/events", "/admin/switch/standby", "/config/", "/peer/heartbeat"] {
        let a = plain_http.get(&format!("http://127.0.0.1:{plain}{path}"), Duration::from_secs(2)).await.unwrap();
        let body = String::from_utf8_lossy(&a.body);
        assert_eq!(a.status, 403, "{path} on the plain listener: {body}");
        assert!(body.contains("plain_listen") && body.contains("https://"), "{path}: {body}");
    }
    // The TLS address speaks no plain HTTP, and wants a client certificate.
    let a_addr = cluster.nodes[0].url.trim_start_matches("https://").to_string();
    let clear = plain_http.get(&format!("http://{a_addr}/role"), Duration::from_secs(2)).await;
    assert!(clear.is_err() || clear.as_ref().unwrap().status >= 400, "plain HTTP to the TLS address: {clear:?}");
    let anonymous = client(&ca.cert, None).get(&format!("https://{a_addr}/role"), Duration::from_secs(2)).await;
    assert!(anonymous.is_err(), "no client certificate, mutual TLS: {anonymous:?}");

    // Replication over TLS, set and read with the CLI (flags on a, the node configuration on b).
    let token = d.join("admin.token");
    let (ca_s, cert_s, key_s, token_s) = (ca.cert.display().to_string(), op_cert.display().to_string(), op_key.display().to_string(), token.display().to_string());
    let a_url = cluster.nodes[0].url.clone();
    let set = run_cli(&["config", "--url", &a_url, "--ca", &ca_s, "--cert", &cert_s, "--key", &key_s, "--token-file", &token_s, "set", "app.password", "s3cret"]);
    assert!(set.status.success(), "{}", describe(&set));
    let b_config = cluster.nodes[1].config.display().to_string();
    until("the value reaches b", Duration::from_secs(20), async || {
        let got = run_cli(&["config", "--config", &b_config, "get", "app.password"]);
        (got.status.success() && String::from_utf8_lossy(&got.stdout).trim() == "s3cret").then_some(())
    })
    .await;
    let status_b = run_cli(&["status", "--config", &b_config]);
    assert!(status_b.status.success(), "{}", describe(&status_b));
    assert!(!String::from_utf8_lossy(&status_b.stderr).contains("warning"), "{}", describe(&status_b));

    // Failover.
    cluster.kill(0);
    cluster.wait_for(Duration::from_secs(10), |m| (m[1] == Some(Mode::Active)).then_some(())).await.unwrap();
    assert!(vigil::cluster::eventually(Duration::from_secs(5), || cluster.nodes[1].service_marker().exists()).await);
}

/// A node `id` in `cluster` with the testkit policy (standby), peers `peers` and this `[tls]`.
fn add(cluster: &mut Cluster, id: &str, peers: &[&str], tls: String) {
    let mut spec = NodeSpec::new(id, Role::Secondary, STANDBY);
    spec.peers = peers.iter().map(|p| p.to_string()).collect();
    spec.extra_config = tls;
    cluster.add(spec).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_with_a_foreign_ca_or_the_wrong_node_id_is_refused_and_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let other = Ca::new(d, "other-ca");
    let mut cluster = Cluster::new(vigil_bin(), d, TIMING, vec![plugins_dir()]).unwrap();
    let (a_cert, a_key) = ca.write(d, "a", &["a", "127.0.0.1"], Validity::Now);
    add(&mut cluster, "a", &["b", "c", "d"], tls_table(&a_cert, &a_key, &ca.cert, "peer_names = true\n"));
    // b: a valid certificate for "b", from another CA.
    let (b_cert, b_key) = other.write(d, "b", &["b", "127.0.0.1"], Validity::Now);
    add(&mut cluster, "b", &["a"], tls_table(&b_cert, &b_key, &ca.cert, ""));
    // c: the right CA, but the certificate names node "x".
    let (c_cert, c_key) = ca.write(d, "c", &["x", "127.0.0.1"], Validity::Now);
    add(&mut cluster, "c", &["a"], tls_table(&c_cert, &c_key, &ca.cert, ""));
    // d: all in order.
    let (d_cert, d_key) = ca.write(d, "d", &["d", "127.0.0.1"], Validity::Now);
    add(&mut cluster, "d", &["a"], tls_table(&d_cert, &d_key, &ca.cert, ""));
    let (op_cert, op_key) = ca.write(d, "operator", &["operator"], Validity::Now);
    let http = client(&ca.cert, Some((&op_cert, &op_key)));
    cluster.use_https(http.clone());
    for i in 0..4 {
        cluster.start(i).unwrap();
    }

    until("a hears d", Duration::from_secs(15), async || peer_line(&http, &cluster, 0, "d").await.filter(|p| p["reachable"] == true)).await;
    for (peer, why) in [("b", "UnknownIssuer"), ("c", "not valid for name")] {
        let line = until(&format!("a's status says why {peer} is refused"), Duration::from_secs(10), async || {
            peer_line(&http, &cluster, 0, peer).await.filter(|p| p["last_error"].as_str().is_some_and(|e| e.contains("certificate")))
        })
        .await;
        let error = line["last_error"].as_str().unwrap();
        println!("a → {peer}: {error}");
        assert_eq!(line["reachable"], false, "{line}");
        assert!(error.contains("certificate") && error.contains(why), "a → {peer}: {error}");
    }
    // `vigil status` says it too.
    let (ca_s, cert_s, key_s) = (ca.cert.display().to_string(), op_cert.display().to_string(), op_key.display().to_string());
    let shown = run_cli(&["status", "--url", &cluster.nodes[0].url.clone(), "--ca", &ca_s, "--cert", &cert_s, "--key", &key_s]);
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.status.success() && text.contains("UNREACHABLE") && text.contains("last error") && text.contains("UnknownIssuer"), "{}", describe(&shown));
    // A few rounds later, still refused.
    tokio::time::sleep(Duration::from_millis(10 * TIMING.interval_ms)).await;
    for peer in ["b", "c"] {
        assert_eq!(peer_line(&http, &cluster, 0, peer).await.unwrap()["reachable"], false, "{peer}");
    }
    // The other way round: a refuses b's client certificate, and c's, which does not name "c".
    // (b's own certificate is from the other CA: its status is read trusting that one.)
    let b_client = client(&other.cert, Some((&op_cert, &op_key)));
    for (i, via) in [(1, &b_client), (2, &http)] {
        let line = until("the refused side sees a unreachable", Duration::from_secs(10), async || {
            peer_line(via, &cluster, i, "a").await.filter(|p| p["last_error"].is_string() && p["consecutive_failures"].as_u64() > Some(3))
        })
        .await;
        println!("{} → a: {}", cluster.nodes[i].id, line["last_error"]);
        assert_eq!(line["reachable"], false, "{line}");
    }
    let c_to_a = peer_line(&http, &cluster, 2, "a").await.unwrap();
    assert!(c_to_a["last_error"].as_str().unwrap().contains("does not name"), "{c_to_a}");
    let metrics = http.get(&format!("{}/metrics", cluster.nodes[0].url), Duration::from_secs(2)).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let refused = metrics.lines().find(|l| l.starts_with("vigil_tls_refused_total ")).unwrap_or_default().to_string();
    assert!(refused.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > 0), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_refused_and_a_rotated_one_is_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let mut cluster = Cluster::new(vigil_bin(), d, TIMING, vec![plugins_dir()]).unwrap();
    let (a_cert, a_key) = ca.write(d, "a", &["a", "127.0.0.1"], Validity::Now);
    add(&mut cluster, "a", &["b"], tls_table(&a_cert, &a_key, &ca.cert, "peer_names = true\n"));
    let (b_cert, b_key) = ca.write(d, "b", &["b", "127.0.0.1"], Validity::Expired);
    add(&mut cluster, "b", &["a"], tls_table(&b_cert, &b_key, &ca.cert, "peer_names = true\n"));
    let (op_cert, op_key) = ca.write(d, "operator", &["operator"], Validity::Now);
    let http = client(&ca.cert, Some((&op_cert, &op_key)));
    cluster.use_https(http.clone());
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();

    let line = until("a refuses b's expired certificate", Duration::from_secs(15), async || {
        peer_line(&http, &cluster, 0, "b").await.filter(|p| p["last_error"].as_str().is_some_and(|e| e.contains("certificate")))
    })
    .await;
    let error = line["last_error"].as_str().unwrap().to_lowercase();
    println!("a → b (expired): {error}");
    assert_eq!(line["reachable"], false);
    assert!(error.contains("expired"), "{error}");
    // The CLI refuses it too.
    let (ca_s, cert_s, key_s) = (ca.cert.display().to_string(), op_cert.display().to_string(), op_key.display().to_string());
    let b_url = cluster.nodes[1].url.clone();
    let cli = ["status", "--url", &b_url, "--ca", &ca_s, "--cert", &cert_s, "--key", &key_s];
    let refused = run_cli(&cli);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).to_lowercase().contains("expired"), "{}", describe(&refused));

    // Rotate: a new key and certificate written over the old files (key first, then certificate).
    let (cert, key) = ca.issue(&["b", "127.0.0.1"], Validity::Now);
    std::fs::write(&b_key, key).unwrap();
    std::fs::write(&b_cert, cert).unwrap();
    until("a hears b with its new certificate", Duration::from_secs(15), async || {
        peer_line(&http, &cluster, 0, "b").await.filter(|p| p["reachable"] == true)
    })
    .await;
    until("b hears a with its new client certificate", Duration::from_secs(15), async || {
        peer_line(&http, &cluster, 1, "a").await.filter(|p| p["reachable"] == true)
    })
    .await;
    let ok = run_cli(&cli);
    assert!(ok.status.success(), "{}", describe(&ok));
    assert!(cluster.nodes[1].is_running(), "the same process");
    assert!(log_of(&cluster, 1).contains("TLS certificate reloaded"), "{}", log_of(&cluster, 1));
    let metrics = http.get(&format!("{b_url}/metrics"), Duration::from_secs(2)).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(metrics.lines().any(|l| l == "vigil_tls_certificate_reloads_total 1"), "{metrics}");
}

/// A network namespace joined to the root namespace by a veth pair: the root end has `10.213.x.1`,
/// the namespace end `10.213.x.2`; deleting the namespace on drop deletes both ends.
struct Link {
    _ns: vigil_tests::netns::Namespaces,
    ns: String,
    root_addr: String,
}

impl Link {
    fn create() -> Link {
        use vigil_tests::netns::{ip, run, Namespaces};
        let pid = std::process::id();
        let ns = Namespaces::create(&format!("vigil-tls-{pid}"), &["c"]);
        let name = ns.name(0).to_string();
        let subnet = pid % 250 + 1;
        let link = format!("vt{}", pid % 10_000_000);
        run(&["ip", "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &name]);
        run(&["ip", "addr", "add", &format!("10.213.{subnet}.1/24"), "dev", &link]);
        run(&["ip", "link", "set", &link, "up"]);
        ip(&name, &format!("addr add 10.213.{subnet}.2/24 dev eth0"));
        ip(&name, "link set eth0 up");
        Link { _ns: ns, ns: name, root_addr: format!("10.213.{subnet}.1") }
    }

    /// `vigil ARGS…` run inside the namespace.
    fn vigil(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "timeout", "10"])
            .arg(vigil_bin())
            .args(args)
            .env("VIGIL_LOG", "warn")
            .output()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_refuses_plain_http_from_a_non_loopback_address_by_default() {
    if !vigil_tests::netns::runs_as_root("tls admin refusal") {
        return;
    }
    let link = Link::create();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cluster = Cluster::new(vigil_bin(), d, TIMING, vec![plugins_dir()]).unwrap();
    let port = free_port();
    let mut spec = NodeSpec::new("a", Role::Primary, STANDBY);
    spec.listen = Some(format!("0.0.0.0:{port}").parse().unwrap());
    cluster.add(spec).unwrap();
    cluster.start(0).unwrap();
    let token = d.join("admin.token").display().to_string();
    let remote_url = format!("http://{}:{port}", link.root_addr);
    let local_url = format!("http://127.0.0.1:{port}");
    let loopback = HttpClient::new();
    until("the node answers", Duration::from_secs(10), async || loopback.get(&format!("{local_url}/role"), Duration::from_secs(1)).await.ok()).await;

    // From the namespace (source 10.213.x.2): the public endpoints answer, the admin API refuses.
    let st = link.vigil(&["status", "--url", &remote_url]);
    assert!(st.status.success(), "{}", describe(&st));
    let warned = String::from_utf8_lossy(&st.stderr).into_owned();
    assert!(warned.contains("warning") && warned.contains("plain HTTP") && warned.contains(&link.root_addr), "{warned}");
    let events = link.vigil(&["events", "--url", &remote_url, "--token-file", &token]);
    let stderr = String::from_utf8_lossy(&events.stderr).into_owned();
    assert!(!events.status.success(), "{}", describe(&events));
    assert!(stderr.contains("403") && stderr.contains("admin_insecure_remote") && stderr.contains("[tls]"), "{stderr}");
    let switch = link.vigil(&["switch", "standby", "--url", &remote_url, "--token-file", &token]);
    assert!(!switch.status.success() && String::from_utf8_lossy(&switch.stderr).contains("403"), "{}", describe(&switch));
    // From loopback, the same request is served, and no warning is printed.
    let local = run_cli(&["events", "--url", &local_url, "--token-file", &token]);
    assert!(local.status.success(), "{}", describe(&local));
    assert!(!String::from_utf8_lossy(&local.stderr).contains("warning"), "{}", describe(&local));

    // Allowed explicitly: served from the namespace too.
    cluster.stop(0);
    cluster.spec_mut(0).security_extra = "admin_insecure_remote = true".into();
    cluster.start(0).unwrap();
    until("the node answers again", Duration::from_secs(10), async || loopback.get(&format!("{local_url}/role"), Duration::from_secs(1)).await.ok()).await;
    let events = link.vigil(&["events", "--url", &remote_url, "--token-file", &token]);
    assert!(events.status.success(), "{}", describe(&events));
}

/// Bad TLS settings stop `vigil run` with an error naming the key and the file.
#[test]
fn bad_tls_files_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let (cert, key) = ca.write(d, "a", &["a"], Validity::Now);
    let (_, other_key) = ca.write(d, "b", &["b"], Validity::Now);
    std::fs::write(d.join("peer.key"), "a-peer-key-0123456789abcdef").unwrap();
    let policy = vigil_tests::testkit_policy(d, "policy.toml", "mode = \"standby\"", "");
    let config = |tls: &str| -> PathBuf {
        let path = d.join("node.toml");
        std::fs::write(
            &path,
            format!(
                "[node]\nid = \"a\"\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\npolicy = \"{}\"\nplugin_dirs = [\"{}\"]\n{tls}",
                free_port(),
                d.join("data").display(),
                policy.display(),
                plugins_dir().display()
            ),
        )
        .unwrap();
        path
    };
    let run = |path: &Path| {
        let mut child = std::process::Command::new(vigil_bin())
            .args([OsStr::new("run"), OsStr::new("--config"), path.as_os_str()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vigil run did not stop on a bad [tls]");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };
    let missing = d.join("missing.crt");
    for (tls, names) in [
        (format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", missing.display(), key.display()), vec!["tls.cert", "missing.crt", "cannot read"]),
        (format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", key.display(), key.display()), vec!["tls.cert", "a.key", "no certificate"]),
        (format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), other_key.display()), vec!["tls.key", "b.key", "does not match"]),
        (format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n", cert.display(), key.display(), key.display()), vec!["tls.client_ca", "a.key"]),
        (format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\nmin_version = \"1.1\"\n", cert.display(), key.display()), vec!["tls.min_version"]),
    ] {
        let out = run(&config(&tls));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{tls}\n{stderr}");
        for name in names {
            assert!(stderr.contains(name), "{tls}: expected {name:?} in\n{stderr}");
        }
    }
    // An https:// peer without a CA to check it.
    let out = run(&config("[[peer]]\nid = \"b\"\nurl = \"https://127.0.0.1:1\"\n[security]\npeer_keys = [\"peer.key\"]\n"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("peer[0].url") && stderr.contains("tls.ca"), "{stderr}");
}
