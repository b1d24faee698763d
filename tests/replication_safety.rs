//! Replicated directories between real `vigil run` processes, under the faults that used to lose
//! data: a directory missing at start, a file replaced by a directory, a full disk, another
//! filesystem mounted over the directory, an edit made while the node was down.
//!
//! The mount tests need root (tmpfs); they say so and return when `mount` is refused.

use hyper::Method;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vigil::cluster::{Cluster, LinkProxy, PairSpec, Timing};
use vigil::model::Mode;
use vigil_tests::{plugins_dir, vigil_bin};

/// `Some(())` once a node answers with a decided mode: its first tick ran and published its status
/// (a STARTING node's `/status` has no sync section yet).
fn decided(mode: Option<Mode>) -> Option<()> {
    mode.filter(|m| *m != Mode::Starting).map(|_| ())
}

/// A started hot-standby pair replicating the directory `shared` of each node (scanned every 200 ms).
async fn pair(dir: &Path, extra: &str) -> (Cluster, [LinkProxy; 2]) {
    pair_linked(dir, [extra, extra]).await
}

/// The same, with extra configuration per node. The peer links go through proxies the test can cut
/// (they live as long as the returned proxies).
async fn pair_linked(dir: &Path, extra: [&str; 2]) -> (Cluster, [LinkProxy; 2]) {
    let spec = PairSpec {
        timing: Timing { interval_ms: 100, timeout_ms: 100, failures: 3, successes: 3 },
        params: String::new(),
        plugin_dirs: vec![plugins_dir()],
    };
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir, &spec).unwrap();
    let links = [LinkProxy::start(cluster.listen_addr(1)).await.unwrap(), LinkProxy::start(cluster.listen_addr(0)).await.unwrap()];
    for (i, peer) in [(0, "b"), (1, "a")] {
        let url = links[i].url();
        cluster.spec_mut(i).peer_paths = vec![(peer.to_string(), vec![("link".to_string(), url)])];
    }
    for (i, extra) in extra.iter().enumerate() {
        let node_dir = cluster.nodes[i].dir.display().to_string();
        cluster.spec_mut(i).extra_config = format!(
            "\n[sync]\ninterval_ms = 500\n\n[[sync.directory]]\nname = \"shared\"\npath = \"{node_dir}/shared\"\ninterval_ms = 200\nmax_file_mib = 1\n{}",
            extra.replace("{dir}", &node_dir)
        );
    }
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    cluster.wait_for(Duration::from_secs(15), |m| (m[0].is_some() && m[1].is_some()).then_some(())).await.unwrap();
    (cluster, links)
}

fn shared(c: &Cluster, i: usize) -> PathBuf {
    c.nodes[i].dir.join("shared")
}

/// `path=content` of every file below `dir`, sorted (temporary files included: none may stay).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.push(format!("{rel}={}", std::fs::read_to_string(&path).unwrap_or_else(|_| "<binary>".into()).len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

async fn status(c: &Cluster, i: usize) -> serde_json::Value {
    let (code, body) = c.admin(i, Method::GET, "/status").await.unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn events(c: &Cluster, i: usize) -> String {
    let (_, body) = c.admin(i, Method::GET, "/events?limit=500").await.unwrap();
    body
}

/// Each node's `/status.sync`, for failure messages.
async fn futures_sync(c: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..c.nodes.len() {
        out.push(format!("sync of {}: {}", c.nodes[i].id, status(c, i).await["sync"]));
    }
    out
}

/// Wait until node `i`'s event log mentions `text` (events are recorded on the node loop's next tick).
async fn until_event(c: &Cluster, i: usize, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = events(c, i).await;
        if ev.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "node {i}'s event log never says {text:?}:\n{ev}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `/status.sync.FIELD` of node `i` is `value` (the status is published every tick).
async fn until_sync(c: &Cluster, i: usize, field: &str, value: serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(c, i).await;
        if s["sync"][field] == value {
            return;
        }
        assert!(Instant::now() < deadline, "node {i}: sync.{field} is {}, expected {value}", s["sync"][field]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until<T: PartialEq + std::fmt::Debug>(c: &Cluster, what: &str, limit: Duration, mut f: impl FnMut() -> (T, T)) {
    let deadline = Instant::now() + limit;
    loop {
        let (a, b) = f();
        if a == b {
            return;
        }
        if Instant::now() >= deadline {
            let sync: Vec<String> = futures_sync(c).await;
            panic!("{what}: not reached after {limit:?}:\n  {a:?}\n  {b:?}\n{}\n{}", sync.join("\n"), c.logs(40));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_files(dir: &Path, n: usize) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let name = format!("file{i:02}.txt");
            std::fs::write(dir.join(&name), format!("content {i}")).unwrap();
            format!("{name}={}", format!("content {i}").len())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_directory_is_missing_at_start_wipes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _links) = pair(dir.path(), "").await;
    let expected = write_files(&shared(&c, 0), 20);
    until(&c, "b has the 20 files", Duration::from_secs(15), || (tree(&shared(&c, 1)), expected.clone())).await;

    // b's volume "did not mount": its directory is gone when it starts.
    c.stop(1);
    let away = dir.path().join("b-shared-away");
    std::fs::rename(shared(&c, 1), &away).unwrap();
    c.start(1).unwrap();
    c.wait_for(Duration::from_secs(15), |m| decided(m[1])).await.unwrap();
    // Several scan and sync intervals: nothing may be deleted anywhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tree(&shared(&c, 0)), expected, "a keeps all its files");
    let held = status(&c, 1).await["sync"]["held"].to_string();
    assert!(held.contains("missing"), "b reports its missing directory: {held}");
    assert!(!shared(&c, 1).exists(), "b does not recreate the directory empty");
    until_event(&c, 1, "not scanned").await;
    assert_eq!(c.modes().await.iter().filter(|m| m.is_some()).count(), 2, "both nodes keep serving");

    // The volume comes back: scanning resumes, nothing was lost, changes flow again.
    std::fs::rename(&away, shared(&c, 1)).unwrap();
    std::fs::write(shared(&c, 1).join("after.txt"), "after").unwrap();
    let mut now_expected = expected.clone();
    now_expected.push("after.txt=5".into());
    now_expected.sort();
    until(&c, "a gets b's new file", Duration::from_secs(15), || (tree(&shared(&c, 0)), now_expected.clone())).await;
    assert_eq!(tree(&shared(&c, 1)), now_expected);
    until_sync(&c, 1, "held", serde_json::json!([])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_directory_is_held_until_the_operator_confirms_with_vigil_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _links) = pair(dir.path(), "").await;
    let expected = write_files(&shared(&c, 0), 5);
    until(&c, "b has the files", Duration::from_secs(15), || (tree(&shared(&c, 1)), expected.clone())).await;
    // Emptied at once (a scan between single deletes would rightly record the first few).
    std::fs::rename(shared(&c, 1), dir.path().join("b-old")).unwrap();
    std::fs::create_dir(shared(&c, 1)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tree(&shared(&c, 0)), expected, "an emptied directory deletes nothing");
    assert!(status(&c, 1).await["sync"]["held"].to_string().contains("empty"));

    // The operator meant it.
    let out = Command::new(vigil_bin())
        .args(["sync", "--confirm-deletes", "--url", &c.nodes[1].url, "--token-file"])
        .arg(c.dir.join("admin.token"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until(&c, "the deletes reach a", Duration::from_secs(15), || (tree(&shared(&c, 0)), Vec::new())).await;
    until_event(&c, 1, "confirmed the deletes").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_replaced_by_a_directory_keeps_its_nested_file_on_both_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _links) = pair(dir.path(), "").await;
    let (sa, sb) = (shared(&c, 0), shared(&c, 1));
    let mut base = write_files(&sa, 2);
    std::fs::write(sa.join("x"), "a file").unwrap();
    base.push("x=6".into());
    until(&c, "b has x", Duration::from_secs(15), || (tree(&sb), base.clone())).await;

    std::fs::remove_file(sa.join("x")).unwrap();
    std::fs::create_dir(sa.join("x")).unwrap();
    std::fs::write(sa.join("x/y"), "nested").unwrap();
    let mut nested = base.clone();
    nested.retain(|f| !f.starts_with("x="));
    nested.push("x/y=6".into());
    until(&c, "b has x/y", Duration::from_secs(15), || (tree(&sb), nested.clone())).await;
    // A few scan and sync intervals later, neither node lost it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tree(&sa), nested);
    assert_eq!(tree(&sb), nested);

    // And back, from b: the directory becomes a file again.
    std::fs::remove_dir_all(sb.join("x")).unwrap();
    std::fs::write(sb.join("x"), "a file again").unwrap();
    let mut back = base.clone();
    back.retain(|f| !f.starts_with("x="));
    back.push("x=12".into());
    until(&c, "a has file x again", Duration::from_secs(15), || (tree(&sa), back.clone())).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tree(&sa), back);
    assert_eq!(tree(&sb), back);
    for i in 0..2 {
        until_sync(&c, i, "pending_files", serde_json::json!(0)).await;
    }
}

/// A tmpfs mounted at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output().ok()?;
        if !out.status.success() {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_keeps_changes_pending_never_deleted_and_writes_them_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    // b's directory is a 1 MiB volume, mounted before b starts.
    let Some(volume) = Tmpfs::mount(&dir.path().join("b/shared"), "1m") else { return };
    let (c, _links) = pair(dir.path(), "").await;
    let (sa, sb) = (shared(&c, 0), shared(&c, 1));
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("small.txt"), "small").unwrap();
    until(&c, "b has the small file", Duration::from_secs(15), || (tree(&sb), vec!["small.txt=5".to_string()])).await;
    let big = "z".repeat(700 << 10);
    std::fs::write(sa.join("big1.txt"), &big).unwrap();
    std::fs::write(sa.join("big2.txt"), &big).unwrap();
    // Several scan and sync intervals: b cannot write one of them, and nothing is deleted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = vec![format!("big1.txt={}", big.len()), format!("big2.txt={}", big.len()), "small.txt=5".to_string()];
    assert_eq!(tree(&sa), all, "a loses nothing");
    let s = status(&c, 1).await;
    assert_eq!(s["sync"]["pending_files"], 1, "{}", s["sync"]);
    assert!(s["sync"]["pending"].to_string().contains("No space left"), "{}", s["sync"]);
    until_event(&c, 1, "cannot write replicated file").await;
    let metrics = vigil::http_client::HttpClient::new().get(&format!("{}/metrics", c.nodes[1].url), Duration::from_secs(2)).await.unwrap();
    assert!(String::from_utf8_lossy(&metrics.body).contains("vigil_sync_pending_files 1"), "{}", String::from_utf8_lossy(&metrics.body));

    volume.resize("4m");
    // Exactly these files: no temporary file of the failed attempts is left either.
    until(&c, "b writes the pending file", Duration::from_secs(15), || (tree(&sb), all.clone())).await;
    until_sync(&c, 1, "pending_files", serde_json::json!(0)).await;
    assert_eq!(tree(&sa), all);
}

/// The chaos test's seed 32, made deterministic: b holds a's change to a file committed but not on
/// disk (its volume is full) when it is killed; the file is edited on b while b is down. At the next
/// start b knows the file as it left it (the stamps are kept in its store), so the edit is a local
/// change, later than a's: it wins on both nodes, and a's pending change never lands over it.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_made_while_the_node_was_down_is_not_overwritten_by_the_change_it_had_pending() {
    let dir = tempfile::tempdir().unwrap();
    let Some(volume) = Tmpfs::mount(&dir.path().join("b/shared"), "1m") else { return };
    let (mut c, _links) = pair(dir.path(), "").await;
    let (sa, sb) = (shared(&c, 0), shared(&c, 1));
    std::fs::create_dir_all(&sa).unwrap();
    let big = "z".repeat(700 << 10);
    std::fs::write(sa.join("big.txt"), &big).unwrap();
    std::fs::write(sa.join("notes.txt"), "first").unwrap();
    let both = |notes: usize| vec![format!("big.txt={}", big.len()), format!("notes.txt={notes}")];
    until(&c, "b has both files", Duration::from_secs(15), || (tree(&sb), both(5))).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // b has scanned them where they are
    // a's next version of notes.txt does not fit on b: it stays pending there.
    std::fs::write(sa.join("notes.txt"), "y".repeat(400 << 10)).unwrap();
    until_sync(&c, 1, "pending_files", serde_json::json!(1)).await;

    c.kill(1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::remove_file(sb.join("notes.txt")).unwrap();
    std::fs::write(sb.join("notes.txt"), "edited on b while b was down").unwrap();
    volume.resize("4m");
    c.start(1).unwrap();
    let edited = vec!["notes.txt=edited on b while b was down".to_string()];
    let names = ["notes.txt".to_string()];
    // (Shortened: a's pending version is 400 KiB.)
    let short = |dir: &Path| contents(dir, &names).into_iter().map(|c| c.chars().take(60).collect::<String>()).collect::<Vec<_>>();
    until(&c, "b's edit on both nodes", Duration::from_secs(15), || ((short(&sa), short(&sb)), (edited.clone(), edited.clone()))).await;
    until_sync(&c, 1, "pending_files", serde_json::json!(0)).await;
    // And it stays so: nothing pending comes back over it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((short(&sa), short(&sb)), (edited.clone(), edited));
}

#[tokio::test(flavor = "multi_thread")]
async fn another_filesystem_mounted_over_the_directory_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _links) = pair(dir.path(), "").await;
    let (sa, sb) = (shared(&c, 0), shared(&c, 1));
    let expected = write_files(&sa, 10);
    until(&c, "b has the files", Duration::from_secs(15), || (tree(&sb), expected.clone())).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // b has scanned them where they are
    // Another volume over b's directory, holding 9 of the 10 files: one delete, under every share.
    let Some(_volume) = Tmpfs::mount(&sb, "4m") else { return };
    for i in 0..9 {
        std::fs::write(sb.join(format!("file{i:02}.txt")), format!("content {i}")).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tree(&sa), expected, "a keeps file09");
    let held = status(&c, 1).await["sync"]["held"].to_string();
    assert!(held.contains("another filesystem"), "b reports the other filesystem: {held}");
}

async fn put(c: &Cluster, i: usize, key: &str, value: &str) {
    let headers = [("authorization", format!("Bearer {}", vigil::cluster::ADMIN_TOKEN))];
    let url = format!("{}/config/{key}", c.nodes[i].url);
    let a = vigil::http_client::HttpClient::new().send(Method::PUT, &url, &headers, value.to_string().into(), Duration::from_secs(3)).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
}

async fn get(c: &Cluster, i: usize, key: &str) -> Option<String> {
    let (code, body) = c.admin(i, Method::GET, &format!("/config/{key}")).await.unwrap();
    (code == 200).then_some(body)
}

async fn until_key(c: &Cluster, i: usize, key: &str, value: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = get(c, i, key).await;
        if got.as_deref() == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "node {i}: {key} is {got:?}, expected {value:?} after {limit:?}\n{}", c.logs(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_this_node_refuses_is_skipped_and_replication_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // Only a replicates `extra`: b refuses its changes (no such scope here).
    let only_a = "\n[[sync.directory]]\nname = \"extra\"\npath = \"{dir}/extra\"\ninterval_ms = 200\n";
    let (c, _links) = pair_linked(dir.path(), [only_a, ""]).await;
    put(&c, 0, "before", "1").await;
    until_key(&c, 1, "before", "1", Duration::from_secs(15)).await;
    std::fs::create_dir_all(c.nodes[0].dir.join("extra")).unwrap();
    std::fs::write(c.nodes[0].dir.join("extra/only-a.txt"), "a").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await; // a records it
    put(&c, 0, "after", "2").await;
    until_key(&c, 1, "after", "2", Duration::from_secs(15)).await;
    let s = status(&c, 1).await;
    assert!(s["sync"]["refused_changes"].as_u64() >= Some(1), "{}", s["sync"]);
    assert!(s["sync"]["last_refused"].to_string().contains("no scope \\\"extra\\\""), "{}", s["sync"]);
    until_event(&c, 1, "refused and skipped").await;
    // And the pull does not fail over it again and again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status(&c, 1).await["sync"]["consecutive_failures"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_whose_store_was_reset_is_pulled_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, links) = pair_linked(dir.path(), ["", ""]).await;
    for i in 0..5 {
        put(&c, 0, &format!("k{i}"), "old").await;
    }
    until_key(&c, 1, "k4", "old", Duration::from_secs(15)).await;
    // a's store is lost (a new disk, a reinstall): its sequence numbers start again at 1, and it
    // takes writes before it sees b again.
    links.iter().for_each(LinkProxy::cut);
    c.stop(0);
    for f in ["store.sqlite", "store.sqlite-wal", "store.sqlite-shm"] {
        let _ = std::fs::remove_file(c.nodes[0].dir.join("data").join(f));
    }
    c.start(0).unwrap();
    c.wait_for(Duration::from_secs(15), |m| decided(m[0])).await.unwrap();
    put(&c, 0, "fresh1", "new").await;
    put(&c, 0, "fresh2", "new").await;
    links.iter().for_each(LinkProxy::heal);
    until_key(&c, 1, "fresh1", "new", Duration::from_secs(15)).await;
    until_key(&c, 1, "fresh2", "new", Duration::from_secs(15)).await;
    until_key(&c, 0, "k4", "old", Duration::from_secs(15)).await; // and a gets its keys back from b
    until_event(&c, 1, "was reset or restored").await;
}

#[test]
fn a_replicated_directory_holding_the_policy_or_the_keys_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/peer.key"), "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::write(dir.path().join("etc/policy.toml"), "plugin = \"hot-standby\"\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("etc"), dir.path().join("shared-link")).unwrap();
    for (sync_path, names) in [
        (format!("{base}/etc"), "contains node.policy"),
        (format!("{base}/shared-link"), "contains node.policy"),
        (format!("{base}/data/replicated"), "is inside node.data_dir"),
    ] {
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nid = \"a\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{base}/data\"\npolicy = \"{base}/etc/policy.toml\"\nplugin_dirs = [{:?}]\n\
                 [[peer]]\nid = \"b\"\nurl = \"http://127.0.0.1:1\"\n[security]\npeer_keys = [\"{base}/etc/peer.key\"]\n\
                 [[sync.directory]]\nname = \"shared\"\npath = \"{sync_path}\"\n",
                plugins_dir().display().to_string()
            ),
        )
        .unwrap();
        // A daemon that starts despite it is stopped after a while (and the test fails).
        let mut child = Command::new(vigil_bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sync_path}: {stderr}");
        assert!(stderr.contains("sync.directory[0].path") && stderr.contains(names), "{sync_path}: {stderr}");
    }
}

/// Replace `target` as editors do: a whole file written beside the tree, renamed into place.
fn edit(stage: &Path, target: &Path, content: &str) {
    std::fs::create_dir_all(stage).unwrap();
    let tmp = stage.join(target.file_name().unwrap());
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

/// `name=content` of the files of `dir` named in `names` (`name=-` when absent).
fn contents(dir: &Path, names: &[String]) -> Vec<String> {
    names.iter().map(|n| format!("{n}={}", std::fs::read_to_string(dir.join(n)).unwrap_or_else(|_| "-".into()))).collect()
}

/// The race: a changes (or deletes) a file, b changes the same file 50–400 ms later. The
/// later write must win on both nodes, every time: a's change may reach b before b's write, during
/// it, or after it (b's edit then lands between a scan and the write of a's change).
#[tokio::test(flavor = "multi_thread")]
async fn of_two_edits_50_to_400_ms_apart_on_two_nodes_the_later_wins_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _links) = pair(dir.path(), "").await;
    let (sa, sb) = (shared(&c, 0), shared(&c, 1));
    // 60 trials where a writes first, 40 where a deletes first (20 of them the 100 ms).
    let trials: Vec<(String, bool, u64)> = (0..100)
        .map(|i: u64| {
            let delete = i >= 60;
            let delay = if (60..80).contains(&i) { 100 } else { 50 + (i * 97) % 351 };
            (format!("race{i:03}.txt"), delete, delay)
        })
        .collect();
    let names: Vec<String> = trials.iter().map(|t| t.0.clone()).collect();
    // Every file on both nodes first, so that a has something to change or delete.
    std::fs::create_dir_all(&sa).unwrap();
    for n in &names {
        edit(&dir.path().join("stage-a"), &sa.join(n), "original");
    }
    let originals: Vec<String> = names.iter().map(|n| format!("{n}=original")).collect();
    until(&c, "the originals reach b", Duration::from_secs(20), || (contents(&sb, &names), originals.clone())).await;
    // Ten trials at a time, each on its own file, started a little apart.
    for (wave, chunk) in trials.chunks(10).enumerate() {
        let mut tasks = Vec::new();
        for (j, (name, delete, delay)) in chunk.iter().cloned().enumerate() {
            let (sa, sb, stage_a, stage_b) = (sa.clone(), sb.clone(), dir.path().join(format!("stage-a{wave}-{j}")), dir.path().join(format!("stage-b{wave}-{j}")));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(j as u64 * 37 % 100)).await;
                if delete {
                    std::fs::remove_file(sa.join(&name)).unwrap();
                } else {
                    edit(&stage_a, &sa.join(&name), "a's earlier edit");
                }
                tokio::time::sleep(Duration::from_millis(delay)).await;
                edit(&stage_b, &sb.join(&name), &format!("b's later edit, {delay} ms after a's {}", if delete { "delete" } else { "edit" }));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let expected: Vec<String> = trials
        .iter()
        .map(|(n, delete, delay)| format!("{n}=b's later edit, {delay} ms after a's {}", if *delete { "delete" } else { "edit" }))
        .collect();
    until(&c, "b's later edits on b", Duration::from_secs(20), || (contents(&sb, &names), expected.clone())).await;
    until(&c, "b's later edits on a", Duration::from_secs(20), || (contents(&sa, &names), expected.clone())).await;
    // And they stay: nothing older comes back once every node has settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(contents(&sa, &names), expected);
    assert_eq!(contents(&sb, &names), expected);
}

/// A node whose clock ran 15 minutes fast: while it is, its peer refuses it (and says so, for that
/// peer); once its clock is right and it restarts, it says it holds versions from the future, and
/// its next write replicates at once and wins over the older ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_ran_15_minutes_fast_replicates_its_next_write_once_its_clock_is_right() {
    let Some(fast) = vigil_tests::faketime::skewed_clock("+15m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _links) = pair(dir.path(), "").await;
    // b writes the key first (an older write, in real time).
    put(&c, 1, "setting", "b's older value").await;
    until_key(&c, 0, "setting", "b's older value", Duration::from_secs(15)).await;
    // a runs 15 minutes fast, alone (it cannot measure b's clock), and writes it: a version 15
    // minutes in the future.
    c.stop(0);
    c.stop(1);
    c.spec_mut(0).env = fast;
    c.start(0).unwrap();
    c.wait_for(Duration::from_secs(15), |m| decided(m[0])).await.unwrap();
    put(&c, 0, "setting", "a's value from the fast clock").await;
    c.start(1).unwrap();
    c.wait_for(Duration::from_secs(15), |m| decided(m[1])).await.unwrap();
    // b refuses a's requests (their timestamps are 15 minutes away), and says so for a.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(&c, 1).await;
        let peer = s["sync"]["peers"]["a"].to_string();
        if peer.contains("ms away") || s["peers"][0]["refused"].as_str().is_some_and(|r| r.contains("ms away")) {
            break;
        }
        assert!(Instant::now() < deadline, "b never says a is refused: {}", s);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&c, 1, "setting").await.as_deref(), Some("b's older value"), "b never takes the future version");
    // a's clock is put right; a restarts.
    c.stop(0);
    c.spec_mut(0).env = Vec::new();
    c.start(0).unwrap();
    c.wait_for(Duration::from_secs(15), |m| decided(m[0])).await.unwrap();
    let future = status(&c, 0).await["sync"]["future_entries"].to_string();
    assert!(future.contains("ahead of this node's clock"), "a says it holds future versions: {future}");
    until_event(&c, 0, "ahead of this node's clock").await;
    // b refuses the future version when it pulls it, and says so for a.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(&c, 1).await;
        if s["sync"]["peers"]["a"]["refused_changes"].as_u64() >= Some(1) {
            assert!(s["sync"]["peers"]["a"]["last_refused"].to_string().contains("ahead"), "{}", s["sync"]);
            break;
        }
        assert!(Instant::now() < deadline, "b never refuses a's future version: {}", s["sync"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a's next write: dated by its clock, not after the future version; on b within 2 s.
    put(&c, 0, "setting", "a's value, clock right").await;
    until_key(&c, 1, "setting", "a's value, clock right", Duration::from_secs(2)).await;
    assert_eq!(get(&c, 0, "setting").await.as_deref(), Some("a's value, clock right"));
    // And a later write on b wins on a too: nothing from the future holds it back.
    put(&c, 1, "setting", "b's later value").await;
    until_key(&c, 0, "setting", "b's later value", Duration::from_secs(5)).await;
}

/// A node whose clock is 20 s fast (over the 2 s tolerance, within the signatures' window) dates
/// its writes by its peer's clock: of two writes made apart during a cut link, the later in real
/// time wins, not the one from the fast clock.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_20_s_fast_dates_its_writes_by_its_peers_clock() {
    let Some(fast) = vigil_tests::faketime::skewed_clock("+20s") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut c, links) = pair(dir.path(), "").await;
    c.stop(0);
    c.spec_mut(0).env = fast;
    c.start(0).unwrap();
    c.wait_for(Duration::from_secs(15), |m| decided(m[0])).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let held = status(&c, 0).await["sync"]["clock_held_back_ms"].as_u64().unwrap_or(0);
        if held > 0 {
            assert!((15_000..=19_000).contains(&held), "a holds its versions back by about 18 s: {held}");
            break;
        }
        assert!(Instant::now() < deadline, "a never measures b's clock\n{}", c.logs(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    links.iter().for_each(LinkProxy::cut);
    put(&c, 0, "setting", "a's earlier value").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    put(&c, 1, "setting", "b's later value").await;
    links.iter().for_each(LinkProxy::heal);
    until_key(&c, 0, "setting", "b's later value", Duration::from_secs(15)).await;
    until_key(&c, 1, "setting", "b's later value", Duration::from_secs(15)).await;
}
