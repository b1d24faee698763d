//! `vigil demo DEPLOYMENT` for every deployment, run as an operator runs it: the real binary, its real
//! processes on loopback. Each must exit 0 after showing what its deployment does (the key lines of
//! its output) and clean up its directory; a demo whose expected thing does not happen must exit
//! non-zero and keep its directory with every node's log.
//!
//! The passing demos run one at a time (a lock): each starts up to four daemons with heartbeats of
//! 100–200 ms, and running six of them at once on a small machine would test the machine.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Mutex;
use vigil_tests::{describe, plugin, vigil_bin};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn demo(deployment: &str, env: &[(&str, &std::ffi::OsStr)]) -> Output {
    std::process::Command::new(vigil_bin())
        .args(["demo", deployment])
        .envs(env.iter().copied())
        .output()
        .expect("run vigil demo")
}

/// The demo's directory, from its "files in DIR" line.
fn files_dir(stdout: &str) -> PathBuf {
    let line = stdout.lines().find_map(|l| l.trim().strip_prefix("files in ")).expect("a 'files in DIR' line");
    PathBuf::from(line.trim())
}

/// Run the demo of `deployment`; it must pass, print each of `lines`, and clean up.
fn passes(deployment: &str, lines: &[&str]) -> String {
    let _ = plugin(deployment);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = demo(deployment, &[]);
    assert_eq!(out.status.code(), Some(0), "vigil demo {deployment}: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in ["Event timeline", "vigil demo: done, cleaned up."].iter().chain(lines) {
        assert!(stdout.contains(line), "vigil demo {deployment} does not show {line:?}:\n{stdout}");
    }
    let dir = files_dir(&stdout);
    assert!(!dir.exists(), "a passing demo removes its directory {}", dir.display());
    stdout
}

#[test]
fn hot_standby() {
    passes("hot-standby", &["kill -9 node a", "failover: node b is active", "after the restart: node a is active"]);
}

#[test]
fn xivo() {
    passes(
        "xivo",
        &[
            "kill -9 node xivo-a",
            "order.log: config-regen, start xivo-confgend, start asterisk, start xivo-agid, start xivo-ctid",
            "main xivo-a lost 3/3 checks (every probe lost)",
            "failback: xivo-b stopped xivo-ctid, xivo-agid, asterisk, xivo-confgend",
            "no manual action",
        ],
    );
}

#[test]
fn xivo_cc() {
    passes(
        "xivo-cc",
        &[
            "kill -9 node xivo-a",
            "the contact center follows the telephony to cc-b",
            "users logged in to the other CC (https://cc-a.example.com) must reconnect to this CC at https://cc-b.example.com",
            "CC back",
        ],
    );
}

#[test]
fn edge() {
    let out = passes(
        "edge",
        &[
            "client: new connections answered by main",
            "client: new connections answered by standby",
            "edge ACTIVE     relay → standby",
            "main died → traffic on standby",
            "standby died → traffic on main",
            "route:standby ok",
            "route:main ok",
        ],
    );
    // "Client: N connections through the Edge: M answered by main, S by standby, R refused"
    let line = out.lines().find(|l| l.starts_with("Client: ")).expect("the client's summary");
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    let [total, main, standby, refused] = numbers[..] else { panic!("unexpected summary {line:?}") };
    assert!(main > 0 && standby > 0, "both stacks served the client: {line}");
    assert_eq!(total, main + standby + refused, "{line}");
}

#[test]
fn mail_gateway() {
    passes(
        "mail-gateway",
        &[
            "failover: b active",
            "heartbeat lost on every path",
            "a: configured primary, mode STANDBY",
            "operator on node a: vigil switch restore",
            "local monitoring: smtp failed",
            "a switched itself off",
        ],
    );
}

#[test]
fn voice() {
    passes(
        "voice",
        &[
            "operator on node a: vigil switch planned-reboot",
            "b HOLD-OFF",
            "the primary returned within the hold-off: b resumed standby, no failover",
            "the hold-off ran out: b active",
            "voice failover: active calls on the failed unit were interrupted",
        ],
    );
}

#[test]
fn unknown_deployment_is_refused_with_the_list() {
    let out = demo("nope", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no demo for \"nope\"") && stderr.contains("xivo-cc, edge, mail-gateway, voice"), "{stderr}");
}

/// A demo that cannot show what it should fails, says what it expected and keeps its files.
fn fails_and_keeps_its_files(deployment: &str, substitute: &str, expected: &str) {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(plugin(substitute), plugins.path().join(format!("{deployment}.wasm"))).unwrap();
    let out = demo(deployment, &[("VIGIL_PLUGIN_DIR", plugins.path().as_os_str())]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(expected), "the failure names what was expected ({expected:?}): {stderr}");
    let dir = files_dir(&String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains(&format!("logs kept in {}", dir.display())), "{stderr}");
    let log = dir.join("a/vigil.log");
    assert!(log.is_file(), "{} kept", log.display());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_node_that_cannot_start_fails_the_demo_at_once() {
    // A component of another world: the node refuses its policy and exits.
    fails_and_keeps_its_files("voice", "wrong-world", "exited by itself");
}

#[test]
fn a_policy_that_never_takes_the_role_fails_the_demo() {
    // The smallest 0.1.0 plugin runs, but only fails over; nobody ever becomes active.
    fails_and_keeps_its_files("voice", "policy-v0-1", "expected the primary active, the secondary standby, but not within");
}
