//! `/metrics` of real `vigil run` processes, and the shipped Prometheus rules and Grafana dashboard
//! checked against it:
//!
//! - a pair on loopback fails over (the active node is killed); the survivor's scrape is valid
//!   OpenMetrics (every family described, samples of declared families, `# EOF`), carries the
//!   takeover, the heartbeat round trips, the decisions and a replicated change (counted on both
//!   nodes), and its Prometheus-text rendering passes
//!   `promtool check metrics` (names, help, units, counter suffixes);
//! - every metric name that `dist/prometheus/vigil-rules.yml`, its unit tests and
//!   `dist/grafana/vigil.json` use is one the node really exposes, and the dashboard's queries parse
//!   (`promtool check rules` on them);
//! - `promtool check rules` and `promtool test rules` pass on the shipped rules.
//!
//! promtool comes with Debian's `prometheus` package; CI installs it (`.ci/run`). Without it, and
//! outside CI, the promtool steps are skipped with a note.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vigil::cluster::{exactly_one_active, Cluster, PairSpec, Timing};
use vigil::model::Mode;
use vigil_tests::netns::on_path;
use vigil_tests::{plugins_dir, root, vigil_bin};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether promtool can be run; in CI it must be there.
fn promtool() -> bool {
    if on_path("promtool") {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "promtool is missing: .ci/run installs Debian's `prometheus` package for it");
    println!("SKIPPED: promtool is not installed (apt-get install prometheus); the promtool checks did not run");
    false
}

/// Run promtool with `args`; its output, or a panic with it.
fn run_promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut command = Command::new("promtool");
    command.args(args).stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("run promtool");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed ({}):\n{text}", out.status);
    text
}

/// GET `/metrics` with `accept`: the content type and the body.
fn scrape(addr: SocketAddr, accept: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: {accept}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).expect("UTF-8 metrics");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_string()))
        .expect("a content type");
    (content_type, body.to_string())
}

/// The families an exposition declares (`# TYPE name kind`), by name.
fn families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').expect("# TYPE name kind");
            (name.to_string(), kind.to_string())
        })
        .collect()
}

/// The samples (name, labels, value) of an exposition.
fn samples(exposition: &str) -> Vec<(String, String, f64)> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample without a value: {l:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {l:?}"));
            let (name, labels) = series.split_once('{').map(|(n, rest)| (n, rest.trim_end_matches('}'))).unwrap_or((series, ""));
            (name.to_string(), labels.to_string(), value)
        })
        .collect()
}

/// The value of the sample `name{labels}` (exact labels, in the exposition's order).
fn value(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    samples(exposition).into_iter().find(|(n, l, _)| n == name && l == labels).map(|(_, _, v)| v)
}

/// How many of `peer`'s heartbeat answers were timed, over its paths.
fn round_trips(exposition: &str, peer: &str) -> f64 {
    let prefix = format!("peer=\"{peer}\",path=");
    samples(exposition).iter().filter(|(n, l, _)| n == "vigil_heartbeat_round_trip_seconds_count" && l.starts_with(&prefix)).map(|(_, _, v)| v).sum()
}

/// Every sample name a query may use: the samples present, and those a declared family has even
/// before its first observation (`_total`, `_bucket`, `_sum`, `_count`).
fn known_names(openmetrics: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = samples(openmetrics).into_iter().map(|(n, _, _)| n).collect();
    for (family, kind) in families(openmetrics) {
        match kind.as_str() {
            "counter" => {
                names.insert(format!("{family}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{family}{suffix}"));
                }
            }
            _ => {
                names.insert(family);
            }
        }
    }
    names
}

/// The `vigil_…` names a text uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("vigil_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/' || c == '.') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// OpenMetrics as the text format requires it: every family has its HELP and TYPE, every sample
/// belongs to the family declared before it, the exposition ends with `# EOF`.
fn check_openmetrics(body: &str) {
    assert!(body.ends_with("# EOF\n"), "no # EOF at the end:\n{body}");
    let mut current: Option<(String, String)> = None;
    let mut helped = BTreeSet::new();
    for line in body.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            helped.insert(help.split(' ').next().unwrap().to_string());
        } else if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            assert!(helped.contains(name), "family {name} has no # HELP");
            current = Some((name.to_string(), kind.to_string()));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            let (family, kind) = current.as_ref().unwrap_or_else(|| panic!("sample before any # TYPE: {line}"));
            let name = line.split(['{', ' ']).next().unwrap();
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            assert!(suffixes.iter().any(|s| name == format!("{family}{s}")), "sample {line:?} is not of family {family} ({kind})");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_over_node_exposes_valid_metrics_that_the_rules_and_dashboard_use() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PairSpec {
        timing: Timing { interval_ms: 100, timeout_ms: 100, failures: 3, successes: 3 },
        params: String::new(),
        plugin_dirs: vec![plugins_dir()],
    };
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec).unwrap();
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    let active = cluster.wait_for(Duration::from_secs(20), exactly_one_active).await.expect("the pair settles");
    assert_eq!(active, 0, "the primary takes the role");
    // A configuration value written on a replicates to b: counted on both sides. And b has timed a
    // few of a's heartbeat answers before a dies.
    let headers = [("authorization", format!("Bearer {}", vigil::cluster::ADMIN_TOKEN))];
    let put = vigil::http_client::HttpClient::new()
        .send(hyper::Method::PUT, &format!("{}/config/metrics-test", cluster.nodes[0].url), &headers, "replicated".into(), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    let (a, b) = (cluster.listen_addr(0), cluster.listen_addr(1));
    let sync = |body: &str, peer: &str, what: &str, direction: &str| value(body, what, &format!("peer=\"{peer}\",direction=\"{direction}\"")).unwrap_or(0.0);
    let mut seen = String::new();
    for _ in 0..100 {
        seen = scrape(b, OPENMETRICS).1;
        if round_trips(&seen, "a") >= 3.0 && sync(&seen, "a", "vigil_sync_changes_total", "in") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(round_trips(&seen, "a") >= 3.0, "b times a's heartbeat answers:\n{seen}");
    assert!(sync(&seen, "a", "vigil_sync_changes_total", "in") >= 1.0, "b counts the change it pulled from a:\n{seen}");
    assert!(sync(&seen, "a", "vigil_sync_bytes_total", "in") > 0.0, "and the page's bytes:\n{seen}");
    let on_a = scrape(a, OPENMETRICS).1;
    assert!(sync(&on_a, "b", "vigil_sync_changes_total", "out") >= 1.0, "a counts the change it served to b:\n{on_a}");
    assert!(sync(&on_a, "b", "vigil_sync_bytes_total", "out") > 0.0, "and the page's bytes:\n{on_a}");
    cluster.kill(0);
    cluster
        .wait_for(Duration::from_secs(20), |m| (m[1] == Some(Mode::Active)).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("b takes over: {e}\n{}", cluster.logs(40)));
    // The takeover's actions (the service's start) finish and are counted.
    for _ in 0..50 {
        let body = scrape(b, "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5").1;
        if value(&body, "vigil_pending_actions", "") == Some(0.0) && body.contains("vigil_action_duration_seconds_count{action=\"start\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (content_type, openmetrics) = scrape(b, "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5");
    assert_eq!(content_type, OPENMETRICS);
    check_openmetrics(&openmetrics);
    assert_eq!(value(&openmetrics, "vigil_mode", "mode=\"active\""), Some(1.0), "{openmetrics}");
    assert_eq!(value(&openmetrics, "vigil_mode", "mode=\"standby\""), Some(0.0));
    assert_eq!(value(&openmetrics, "vigil_loop_alive", ""), Some(1.0));
    assert!(value(&openmetrics, "vigil_mode_changes_total", "from=\"standby\",to=\"active\"").is_some_and(|v| v >= 1.0), "the takeover is counted:\n{openmetrics}");
    assert_eq!(value(&openmetrics, "vigil_peer_reachable", "peer=\"a\""), Some(0.0), "a is dead");
    let ticks = value(&openmetrics, "vigil_ticks_total", "").expect("ticks");
    assert_eq!(value(&openmetrics, "vigil_decide_duration_seconds_count", ""), Some(ticks), "every tick's decision is timed:\n{openmetrics}");
    assert!(round_trips(&openmetrics, "a") >= 3.0, "the heartbeats a answered were timed:\n{openmetrics}");
    assert!(
        samples(&openmetrics).iter().any(|(n, l, v)| n == "vigil_action_duration_seconds_count" && l.starts_with("action=\"start\"") && *v >= 1.0),
        "the service start of the takeover is timed:\n{openmetrics}"
    );
    assert!(samples(&openmetrics).iter().any(|(n, l, _)| n == "vigil_peer_path_reachable" && l.starts_with("peer=\"a\",path=")));
    assert!(value(&openmetrics, "vigil_clock_skew_max_seconds", "") == Some(2.0));
    assert!(samples(&openmetrics).iter().any(|(n, l, _)| n == "vigil_sync_bytes_total" && l == "peer=\"a\",direction=\"in\""));
    println!("{} families, {} samples in b's scrape", families(&openmetrics).len(), samples(&openmetrics).len());

    // The same registry in the Prometheus text format, for promtool's linter.
    let (content_type, text) = scrape(b, "text/plain; version=0.0.4");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"));

    // What the rules, their tests and the dashboard query exists.
    let known = known_names(&openmetrics);
    let dashboard_text = std::fs::read_to_string(root().join("dist/grafana/vigil.json")).unwrap();
    for file in ["dist/prometheus/vigil-rules.yml", "dist/prometheus/vigil-rules.test.yml", "dist/grafana/vigil.json"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses no vigil metric");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(unknown.is_empty(), "{file} uses metrics the node does not expose: {unknown:?}\nexposed: {known:?}");
    }
    let exprs = dashboard_queries(&dashboard_text);

    if promtool() {
        let lint = run_promtool(&["check", "metrics"], Some(&text));
        println!("promtool check metrics: ok {lint}");
        // The dashboard's queries parse: as recording rules, with Grafana's variables filled in.
        let rules: String = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let e = e.replace("$__rate_interval", "1m").replace("$job", ".+").replace("$instance", ".+");
                format!("      - record: dashboard:query{i}\n        expr: {}\n", serde_json::to_string(&e).unwrap())
            })
            .collect();
        let file = dir.path().join("dashboard-queries.yml");
        std::fs::write(&file, format!("groups:\n  - name: dashboard\n    rules:\n{rules}")).unwrap();
        run_promtool(&["check", "rules", file.to_str().unwrap()], None);
        println!("the dashboard's {} queries parse", exprs.len());
    }
}

/// The dashboard's queries; also checks what a dashboard needs to import: a Prometheus datasource
/// variable that every panel uses, and the panels this project promises.
fn dashboard_queries(text: &str) -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(text).expect("dist/grafana/vigil.json is JSON");
    let variables = d["templating"]["list"].as_array().expect("templating variables");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let panels = d["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in ["Mode per node", "Heartbeat round trip", "Decide time", "Failovers", "Sync lag", "Clock skew"] {
        assert!(titles.iter().any(|t| t.starts_with(wanted)), "no {wanted:?} panel in {titles:?}");
    }
    let mut exprs = Vec::new();
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {} uses the datasource variable", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("a PromQL expr").to_string());
        }
    }
    exprs
}

#[test]
fn the_shipped_rules_pass_promtool() {
    let rules = root().join("dist/prometheus/vigil-rules.yml");
    let tests = root().join("dist/prometheus/vigil-rules.test.yml");
    assert!(Path::new(&rules).is_file() && Path::new(&tests).is_file());
    if promtool() {
        println!("{}", run_promtool(&["check", "rules", rules.to_str().unwrap()], None));
        println!("{}", run_promtool(&["test", "rules", tests.to_str().unwrap()], None));
    }
}
