//! The operator console (`/`) driven in a real headless Chromium, as an operator would: a real pair
//! on loopback, the active node's console open in one tab and its peer's in another. A wrong token
//! is refused by the node (and the page says so); the right one, typed into the token field, and a
//! mouse click on "Switch to standby" (its confirmation accepted) make the node hand over: both tabs
//! change, the clicked one to STANDBY and its peer's to ACTIVE. Then a screenshot of the console.
//!
//! Chromium is driven over its DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
//! ended by a NUL byte on file descriptors 3 and 4), so the test needs no WebSocket client. The
//! screenshot goes to `$VIGIL_CONSOLE_SCREENSHOT` if set (`docs/console.png` is made that way), else
//! into the test's temporary directory. `.ci/run` installs Debian's chromium; without it the test
//! says it skipped.

use base64::Engine as _;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vigil::cluster::{exactly_one_active, Cluster, PairSpec, Timing, ADMIN_TOKEN};
use vigil::model::Mode;
use vigil_tests::{plugins_dir, vigil_bin};

/// How long one DevTools command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);
/// The console's size in the screenshot.
const VIEWPORT: (u32, u32) = (1100, 1500);

/// A headless Chromium and its DevTools pipe.
struct Chromium {
    child: Child,
    commands: File,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    /// The messages of the dialogs (`confirm`) the pages opened, each accepted.
    dialogs: Vec<String>,
}

/// A pipe whose ends close on exec.
fn pipe() -> std::io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

impl Chromium {
    fn launch(profile: &Path) -> std::io::Result<Chromium> {
        let (to_chromium, commands) = pipe()?;
        let (replies, from_chromium) = pipe()?;
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Chromium reads commands from fd 3 and writes its answers to fd 4. Both ends are first moved
        // above 4 (so that neither dup2 overwrites the other), and those copies close on exec.
        unsafe {
            command.pre_exec(move || {
                let read = libc::fcntl(to_chromium, libc::F_DUPFD_CLOEXEC, 5);
                let write = libc::fcntl(from_chromium, libc::F_DUPFD_CLOEXEC, 5);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = command.spawn();
        unsafe {
            libc::close(to_chromium);
            libc::close(from_chromium);
        }
        let child = spawned?;
        let (commands, replies) = unsafe { (File::from_raw_fd(commands), File::from_raw_fd(replies)) };
        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies);
            let mut message = Vec::new();
            while matches!(reader.read_until(0, &mut message), Ok(n) if n > 0) {
                if message.last() == Some(&0) {
                    message.pop();
                }
                let Ok(value) = serde_json::from_slice::<Value>(&message) else { return };
                if sender.send(value).is_err() {
                    return;
                }
                message.clear();
            }
        });
        Ok(Chromium { child, commands, messages, next_id: 0, dialogs: Vec::new() })
    }

    fn write(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).expect("write to chromium's DevTools pipe");
        self.next_id
    }

    /// Send a command and wait for its result. A dialog a page opens meanwhile is accepted.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.write(session, method, params.clone());
        let deadline = Instant::now() + COMMAND_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.messages.recv_timeout(left).unwrap_or_else(|e| panic!("{method}: no answer from chromium ({e})"));
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{method} {params}: {message}");
                return message["result"].clone();
            }
            if message["method"] == "Page.javascriptDialogOpening" {
                self.dialogs.push(message["params"]["message"].as_str().unwrap_or_default().to_string());
                let dialog_session = message["sessionId"].as_str().map(str::to_string);
                self.write(dialog_session.as_deref(), "Page.handleJavaScriptDialog", json!({ "accept": true }));
            }
        }
    }

    /// Open `url` in a new tab; returns the tab's session.
    fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({ "url": url, "newWindow": true }))["targetId"].clone();
        let session = self.call(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true }))["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        self.call(Some(&session), "Page.enable", json!({}));
        let (width, height) = VIEWPORT;
        self.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        session
    }

    /// The value of a JavaScript expression in the tab.
    fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self.call(Some(session), "Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// The text of element `id`.
    fn text(&mut self, session: &str, id: &str) -> String {
        self.eval(session, &format!("document.getElementById({id:?})?.textContent ?? ''")).as_str().unwrap_or_default().to_string()
    }

    /// Wait until `check` holds for the text of element `id` (`what` says what for); returns the text.
    fn wait_text(&mut self, session: &str, id: &str, what: &str, limit: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text(session, id);
            if check(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{what}: #{id} still reads {text:?} after {} s", limit.as_secs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A left click with the mouse in the middle of element `id`.
    fn click(&mut self, session: &str, id: &str) {
        let at = self.eval(
            session,
            &format!("(() => {{ const e = document.getElementById({id:?}); e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"),
        );
        let (x, y) = (at[0].as_f64().expect("x"), at[1].as_f64().expect("y"));
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(Some(session), "Input.dispatchMouseEvent", json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }));
        }
    }

    /// Click into field `id` and type `text` (an IME-style insertion: one input event).
    fn type_into(&mut self, session: &str, id: &str, text: &str) {
        self.click(session, id);
        self.call(Some(session), "Input.insertText", json!({ "text": text }));
    }

    /// A PNG of the tab.
    fn screenshot(&mut self, session: &str) -> Vec<u8> {
        self.call(Some(session), "Page.bringToFront", json!({}));
        let data = self.call(Some(session), "Page.captureScreenshot", json!({ "format": "png" }))["data"].as_str().expect("png data").to_string();
        base64::engine::general_purpose::STANDARD.decode(data).expect("base64 png")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Width and height from a PNG's header.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    Some((word(16), word(20)))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_switches_the_active_node_to_standby_and_both_pages_follow() {
    if Command::new("chromium").arg("--version").output().is_err() {
        println!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = PairSpec { timing: Timing { interval_ms: 200, timeout_ms: 150, failures: 3, successes: 3 }, params: String::new(), plugin_dirs: vec![plugins_dir()] };
    let mut cluster = Cluster::hot_standby_pair(vigil_bin(), dir.path(), &spec).unwrap();
    cluster.start(0).unwrap();
    cluster.start(1).unwrap();
    // Settled: one node active, the other standby (neither still starting).
    let settled = |m: &[Option<Mode>]| exactly_one_active(m).filter(|_| m.iter().all(|m| matches!(m, Some(Mode::Active | Mode::Standby))));
    let active = cluster.wait_for(Duration::from_secs(20), settled).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs(40)));
    let other = 1 - active;
    let (active_url, other_url) = (format!("{}/", cluster.nodes[active].url), format!("{}/", cluster.nodes[other].url));
    let profile = dir.path().join("chromium-profile");
    let screenshot_to = std::env::var_os("VIGIL_CONSOLE_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("console.png"));

    let browser = {
        let screenshot_to = screenshot_to.clone();
        tokio::task::spawn_blocking(move || {
            let mut chromium = Chromium::launch(&profile).expect("chromium starts");
            let page = chromium.open(&active_url);
            let peer_page = chromium.open(&other_url);
            let limit = Duration::from_secs(15);
            chromium.wait_text(&page, "mode", "the active node's console", limit, |m| m == "ACTIVE");
            chromium.wait_text(&peer_page, "mode", "its peer's console", limit, |m| m == "STANDBY");
            chromium.wait_text(&page, "paths", "the round trips", limit, |t| t.contains(" ms"));

            // No token: the page asks for one and sends nothing.
            chromium.click(&page, "standby");
            let answer = chromium.text(&page, "answer");
            assert!(answer.contains("Enter the admin token"), "{answer}");
            assert!(chromium.dialogs.is_empty(), "nothing to confirm without a token");

            // A wrong token: the node refuses, and the page shows its answer.
            chromium.type_into(&page, "token", "not-the-admin-token");
            chromium.click(&page, "standby");
            let refused = chromium.wait_text(&page, "answer", "the refusal", limit, |a| !a.ends_with('…'));
            assert!(refused.contains("401") && refused.contains("refused"), "{refused}");

            // Forget it, type the right one, click.
            chromium.click(&page, "forget");
            assert_eq!(chromium.eval(&page, "document.getElementById('token').value + (sessionStorage.getItem('vigil-admin-token') ?? '')"), "");
            chromium.type_into(&page, "token", ADMIN_TOKEN);
            chromium.click(&page, "standby");
            let accepted = chromium.wait_text(&page, "answer", "the acceptance", limit, |a| !a.ends_with('…'));
            assert!(accepted.contains("202") && accepted.contains("\"accepted\": \"standby\""), "{accepted}");
            assert_eq!(chromium.dialogs.len(), 2, "each click asked for confirmation: {:?}", chromium.dialogs);
            assert!(chromium.dialogs[1].contains("standby"), "{:?}", chromium.dialogs);
            assert_eq!(chromium.eval(&page, "sessionStorage.getItem('vigil-admin-token')"), ADMIN_TOKEN, "kept for the tab");

            // Both consoles follow, on their own polling.
            chromium.wait_text(&page, "mode", "the clicked console", limit, |m| m == "STANDBY");
            chromium.wait_text(&peer_page, "mode", "the peer's console", limit, |m| m == "ACTIVE");
            let timeline = chromium.wait_text(&page, "timeline", "the timeline", limit, |t| t.contains("ACTIVE") && t.contains("STANDBY"));
            assert!(timeline.contains("operator"), "the timeline says why: {timeline}");
            let segments = chromium.eval(&page, "document.querySelectorAll('#bar div').length").as_u64().unwrap_or(0);
            assert!(segments >= 3, "starting, active and standby are drawn on the bar: {segments}");
            let sync = chromium.text(&page, "sync-state");
            assert!(sync.contains("items") && sync.contains("lag") && sync.contains("last error"), "{sync}");
            let policy = chromium.text(&page, "policy");
            assert!(policy.contains("plugin hot-standby") && policy.contains("loaded at") && policy.contains("last reload error: none"), "{policy}");

            let png = chromium.screenshot(&page);
            assert_eq!(png_size(&png), Some(VIEWPORT), "a PNG of the console");
            std::fs::write(&screenshot_to, &png).expect("write the screenshot");
        })
    };
    if let Err(failed) = browser.await {
        panic!("{failed}\n{}", cluster.logs(60));
    }
    println!("console screenshot: {}", screenshot_to.display());

    let modes = cluster.modes().await;
    assert_eq!((modes[active], modes[other]), (Some(Mode::Standby), Some(Mode::Active)), "the pair handed over");
    let (status, events) = cluster.admin(active, hyper::Method::GET, "/events").await.unwrap();
    assert_eq!(status, 200);
    assert!(events.contains("operator requested standby"), "the click is in the event log: {events}");
}
