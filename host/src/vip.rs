//! Virtual IP addresses: what `claim-vip` and `release-vip` do to this node's interfaces.
//!
//! Each `[[vip]]` entry of the policy names an interface, an address and an action (FortiMail's
//! "Virtual IP action" per port):
//!
//! - `add`: the VIP is added beside the interface's own addresses; release deletes it.
//! - `set`: the interface's global addresses of the VIP's family are remembered and removed, then the
//!   VIP is added (the interface *becomes* the failed peer's address); release deletes the VIP and puts
//!   the remembered addresses back. The remembered addresses are also written to a small JSON file in
//!   the data directory, so a daemon killed while active still restores them after its restart.
//! - `ignore`: the interface is left alone.
//!
//! Addresses go through `ip` (iproute2), each command bounded by a timeout, never through a shell.
//! Both operations are idempotent: the interface's addresses are read first (`ip -o addr show dev IF`)
//! and only what is missing is added, only what is present is deleted. Once an IPv4 VIP is up,
//! gratuitous ARPs ([`crate::garp`], in-process: no tool to start or wait for) tell the LAN's switches
//! and neighbours where the address now lives: `garp_count` at once, the same again `garp_repeat_ms`
//! later, and one every `garp_refresh_s` while held (the repeats run in the background and stop at
//! release). The claim returns as soon as the addresses are up and the first burst is out, so the
//! services start right after; an ARP that cannot be sent never fails the claim, the result says so.
//!
//! This module only acts when asked: the plugin decides when (`claim-vip` on takeover, `release-vip`
//! when leaving active), the executor runs the action, and the result reaches the plugin on a later tick.

use crate::policy::file::{parse_cidr, VipAction, VipSpec};
use crate::services::{run_command_keeping, CommandOutcome};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Sends `count` gratuitous ARPs for an address on an interface at once: [`crate::garp::announce`],
/// or a recorder in tests.
pub type Announce = Arc<dyn Fn(&str, Ipv4Addr, u32) -> Result<(), String> + Send + Sync>;

/// Time allowed for one `ip` command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one command; the real one is [`run_command`], tests record the commands instead.
pub trait Shell: Send + Sync {
    fn run<'a>(&'a self, argv: Vec<String>) -> Pin<Box<dyn Future<Output = CommandOutcome> + Send + 'a>>;
}

/// The real shell: [`run_command`] with [`COMMAND_TIMEOUT`].
pub struct RealShell;

impl Shell for RealShell {
    fn run<'a>(&'a self, argv: Vec<String>) -> Pin<Box<dyn Future<Output = CommandOutcome> + Send + 'a>> {
        // Whole output (bounded): `ip -o addr show` of an interface with many addresses is parsed,
        // and its first lines (the interface's own addresses) must not be cut.
        Box::pin(async move { run_command_keeping(&argv, COMMAND_TIMEOUT, 1 << 20).await })
    }
}

/// One address of an interface as `ip -o addr` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// `ADDRESS/PREFIX`.
    pub cidr: String,
    pub ipv6: bool,
    /// `scope global` (link-local and host addresses are never touched by `set`).
    pub global: bool,
}

/// Parse the output of `ip -o addr show dev IF` (one line per address).
pub fn parse_addrs(output: &str) -> Vec<IfAddr> {
    let mut addrs = Vec::new();
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = words.iter().position(|w| *w == "inet" || *w == "inet6") else { continue };
        let Some(cidr) = words.get(i + 1) else { continue };
        let global = words.windows(2).any(|w| w == ["scope", "global"]);
        addrs.push(IfAddr { cidr: (*cidr).to_string(), ipv6: words[i] == "inet6", global });
    }
    addrs
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_string()).collect()
}

/// `ip -o addr show dev IF`
pub fn show_cmd(interface: &str) -> Vec<String> {
    argv(&["ip", "-o", "addr", "show", "dev", interface])
}

/// `ip addr add ADDR dev IF`
pub fn add_cmd(cidr: &str, interface: &str) -> Vec<String> {
    argv(&["ip", "addr", "add", cidr, "dev", interface])
}

/// `ip addr del ADDR dev IF`
pub fn del_cmd(cidr: &str, interface: &str) -> Vec<String> {
    argv(&["ip", "addr", "del", cidr, "dev", interface])
}

/// `count` announcements through `send`, spaced by `interval_ms` (all in one go when it is 0).
async fn burst(send: &impl Fn(u32), count: u32, interval_ms: u64) {
    if interval_ms == 0 {
        send(count);
        return;
    }
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        }
        send(1);
    }
}

/// Whether two `ADDRESS/PREFIX` texts name the same address and prefix (`::1/128` vs `0::1/128`).
fn same(a: &str, b: &str) -> bool {
    match (parse_cidr(a), parse_cidr(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The VIPs of one node: what was claimed, and the addresses `set` replaced.
pub struct Vips {
    shell: Box<dyn Shell>,
    /// Where the replaced addresses survive a restart (`None` in tests).
    saved_file: Option<PathBuf>,
    announce: Announce,
    inner: Mutex<Held>,
    /// The background repeats of each claimed address's announcements, stopped at release.
    repeats: Mutex<HashMap<(String, String), tokio::task::AbortHandle>>,
}

/// What the node holds now.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Held {
    /// Entries claimed and not yet released (so a release after a policy reload still removes them).
    claimed: Vec<(String, String, String)>,
    /// Per interface: the addresses a `set` VIP replaced, to put back on release.
    replaced: BTreeMap<String, Vec<String>>,
}

impl Vips {
    /// The node's VIPs, using `ip` and raw-socket ARPs for real, remembering replaced addresses in
    /// `saved_file`.
    pub fn new(saved_file: Option<PathBuf>) -> Vips {
        let held = saved_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Vips { saved_file, inner: Mutex::new(held), ..Vips::with_shell(Box::new(RealShell), Arc::new(crate::garp::announce)) }
    }

    /// The same with another shell and announcer (tests).
    pub fn with_shell(shell: Box<dyn Shell>, announce: Announce) -> Vips {
        Vips { shell, saved_file: None, announce, inner: Mutex::new(Held::default()), repeats: Mutex::new(HashMap::new()) }
    }

    fn held(&self) -> Held {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn store(&self, held: Held) {
        if let Some(file) = &self.saved_file {
            // Temporary file + rename: a crash mid-write must not lose the addresses to restore.
            let tmp = file.with_extension("json.tmp");
            let written = std::fs::write(&tmp, serde_json::to_vec(&held).expect("held VIPs serialize")).and_then(|()| std::fs::rename(&tmp, file));
            if let Err(e) = written {
                tracing::warn!(file = %file.display(), error = %e, "cannot remember the addresses a VIP replaced");
            }
        }
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = held;
    }

    async fn addrs(&self, interface: &str) -> Result<Vec<IfAddr>, String> {
        let out = self.shell.run(show_cmd(interface)).await;
        if out.success {
            Ok(parse_addrs(&out.output))
        } else {
            Err(format!("{interface}: cannot read its addresses: {}", out.summary()))
        }
    }

    async fn ip(&self, cmd: Vec<String>) -> Result<(), String> {
        let text = cmd.join(" ");
        let out = self.shell.run(cmd).await;
        if out.success {
            Ok(())
        } else {
            Err(format!("{text}: {}", out.summary()))
        }
    }

    /// Bring every entry of `specs` up on this node. Stops at the first entry that fails (the result
    /// says which); entries done before it stay claimed, and a retry finishes the rest.
    pub async fn claim(&self, specs: &[VipSpec]) -> Result<String, String> {
        if specs.is_empty() {
            return Err("this policy declares no virtual IP addresses ([[vip]])".into());
        }
        let mut notes = Vec::new();
        for spec in specs {
            let note = self.claim_one(spec).await?;
            let garp = if spec.action == VipAction::Ignore { String::new() } else { self.announce(spec) };
            notes.push(format!("{note}{garp}"));
        }
        Ok(notes.join("; "))
    }

    /// Bring one entry up (without the announcement); the note says what changed.
    async fn claim_one(&self, spec: &VipSpec) -> Result<String, String> {
        let (ifname, vip) = (spec.interface.as_str(), spec.address.as_str());
        if spec.action == VipAction::Ignore {
            return Ok(format!("{ifname}: ignored"));
        }
        let addrs = self.addrs(ifname).await?;
        let vip_v6 = vip.contains(':');
        let mut held = self.held();
        let mut note = String::new();
        if spec.action == VipAction::Set {
            // The addresses this VIP replaces: the interface's global ones of the same family. Link-local
            // addresses stay, or IPv6 neighbour discovery on the link would break.
            let replaced: Vec<String> =
                addrs.iter().filter(|a| a.global && a.ipv6 == vip_v6 && !same(&a.cidr, vip)).map(|a| a.cidr.clone()).collect();
            if !replaced.is_empty() {
                let remembered = held.replaced.entry(ifname.to_string()).or_default();
                for cidr in &replaced {
                    if !remembered.iter().any(|r| same(r, cidr)) {
                        remembered.push(cidr.clone());
                    }
                }
                // Remember before deleting: a crash in between must not lose the addresses.
                self.store(held.clone());
                for cidr in &replaced {
                    self.ip(del_cmd(cidr, ifname)).await?;
                }
                note = format!(" (replaced {})", replaced.join(", "));
            }
        }
        let present = addrs.iter().any(|a| same(&a.cidr, vip));
        if !present {
            self.ip(add_cmd(vip, ifname)).await?;
        }
        let key = (ifname.to_string(), vip.to_string(), format!("{:?}", spec.action));
        if !held.claimed.contains(&key) {
            held.claimed.push(key);
        }
        self.store(held);
        let verb = match (spec.action, present) {
            (_, true) => "already has",
            (VipAction::Set, false) => "set",
            _ => "added",
        };
        Ok(format!("{ifname}: {verb} {vip}{note}"))
    }

    /// Gratuitous ARPs after a claim: the first burst now, the repeats in the background (replacing
    /// those of an earlier claim of the same address). Never fails the claim: the address is up, and
    /// neighbours learn it at their next ARP request at the latest.
    fn announce(&self, spec: &VipSpec) -> String {
        let addr = spec.address.split_once('/').map_or(spec.address.as_str(), |(a, _)| a);
        let Ok(addr) = addr.parse::<Ipv4Addr>() else {
            return String::new(); // IPv6: no ARP (neighbour advertisements are not sent yet)
        };
        if spec.garp_count == 0 {
            return ", no gratuitous ARP (garp_count = 0)".into();
        }
        let at_once = if spec.garp_interval_ms == 0 { spec.garp_count } else { 1 };
        let note = match (self.announce)(&spec.interface, addr, at_once) {
            Ok(()) if spec.garp_count == 1 => ", gratuitous ARP sent".to_string(),
            Ok(()) if at_once == spec.garp_count => format!(", {} gratuitous ARPs sent", spec.garp_count),
            Ok(()) => format!(", gratuitous ARP sent ({} in all, {} ms apart)", spec.garp_count, spec.garp_interval_ms),
            Err(e) => return format!(", gratuitous ARP failed ({e})"),
        };
        let (bg, announce) = (spec.clone(), self.announce.clone());
        let repeats = async move {
            let send = |count: u32| {
                if let Err(e) = announce(&bg.interface, addr, count) {
                    tracing::warn!(error = %e, "gratuitous ARP");
                }
            };
            // The rest of a spaced first burst (one ARP went out already), then the second burst,
            // then the refreshes.
            let first_burst = if bg.garp_interval_ms > 0 { bg.garp_count } else { 1 };
            for _ in 1..first_burst {
                tokio::time::sleep(Duration::from_millis(bg.garp_interval_ms)).await;
                send(1);
            }
            if bg.garp_repeat_ms > 0 {
                tokio::time::sleep(Duration::from_millis(bg.garp_repeat_ms)).await;
                burst(&send, bg.garp_count, bg.garp_interval_ms).await;
            }
            if bg.garp_refresh_s > 0 {
                let mut every = tokio::time::interval(Duration::from_secs(bg.garp_refresh_s));
                every.tick().await; // the first tick is immediate
                loop {
                    every.tick().await;
                    send(1);
                }
            }
        };
        let key = (spec.interface.clone(), spec.address.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = runtime.spawn(repeats).abort_handle();
            if let Some(old) = self.repeats.lock().unwrap_or_else(|e| e.into_inner()).insert(key, task) {
                old.abort();
            }
        }
        let mut later = Vec::new();
        if spec.garp_repeat_ms > 0 {
            later.push(format!("again in {} ms", spec.garp_repeat_ms));
        }
        if spec.garp_refresh_s > 0 {
            later.push(format!("every {} s while held", spec.garp_refresh_s));
        }
        if later.is_empty() { note } else { format!("{note} ({})", later.join(", ")) }
    }

    /// Stop the repeated announcements of `address` on `interface`.
    fn stop_announcing(&self, interface: &str, address: &str) {
        let mut repeats = self.repeats.lock().unwrap_or_else(|e| e.into_inner());
        repeats.retain(|(i, a), task| {
            let stop = i == interface && same(a, address);
            if stop {
                task.abort();
            }
            !stop
        });
    }

    /// Take down every VIP this node claimed (or that `specs` declares) and put back what `set`
    /// replaced. Idempotent: absent addresses are not deleted twice.
    pub async fn release(&self, specs: &[VipSpec]) -> Result<String, String> {
        let mut held = self.held();
        let mut entries: Vec<(String, String, bool)> = Vec::new();
        for spec in specs.iter().filter(|s| s.action != VipAction::Ignore) {
            entries.push((spec.interface.clone(), spec.address.clone(), spec.action == VipAction::Set));
        }
        for (ifname, vip, action) in &held.claimed {
            if !entries.iter().any(|(i, v, _)| i == ifname && same(v, vip)) {
                entries.push((ifname.clone(), vip.clone(), action == "Set"));
            }
        }
        if entries.is_empty() && held.replaced.is_empty() {
            return if specs.is_empty() { Err("this policy declares no virtual IP addresses ([[vip]])".into()) } else { Ok("nothing to release".into()) };
        }
        let mut notes = Vec::new();
        for (ifname, vip, _) in &entries {
            self.stop_announcing(ifname, vip);
            let addrs = self.addrs(ifname).await?;
            if addrs.iter().any(|a| same(&a.cidr, vip)) {
                self.ip(del_cmd(vip, ifname)).await?;
                notes.push(format!("{ifname}: removed {vip}"));
            } else {
                notes.push(format!("{ifname}: {vip} already absent"));
            }
            held.claimed.retain(|(i, v, _)| !(i == ifname && same(v, vip)));
            self.store(held.clone());
        }
        let interfaces: Vec<String> = held.replaced.keys().cloned().collect();
        for ifname in interfaces {
            let addrs = self.addrs(&ifname).await?;
            let back = held.replaced.get(&ifname).cloned().unwrap_or_default();
            for cidr in &back {
                if !addrs.iter().any(|a| same(&a.cidr, cidr)) {
                    self.ip(add_cmd(cidr, &ifname)).await?;
                }
            }
            notes.push(format!("{ifname}: restored {}", back.join(", ")));
            held.replaced.remove(&ifname);
            self.store(held.clone());
        }
        Ok(notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::Exit;
    use std::sync::Arc;

    /// A fake interface table driven by the `ip` commands it receives; it records every command.
    #[derive(Default)]
    struct FakeIp {
        addrs: Mutex<BTreeMap<String, Vec<String>>>,
        log: Mutex<Vec<String>>,
    }

    fn outcome(success: bool, output: String) -> CommandOutcome {
        CommandOutcome { success, exit: Exit::Code(if success { 0 } else { 2 }), duration: Duration::ZERO, output }
    }

    impl Shell for Arc<FakeIp> {
        fn run<'a>(&'a self, argv: Vec<String>) -> Pin<Box<dyn Future<Output = CommandOutcome> + Send + 'a>> {
            Box::pin(async move {
                self.log.lock().unwrap().push(argv.join(" "));
                let mut table = self.addrs.lock().unwrap();
                let words: Vec<&str> = argv.iter().map(String::as_str).collect();
                match words.as_slice() {
                    ["ip", "-o", "addr", "show", "dev", ifname] => {
                        let text = table
                            .get(*ifname)
                            .map(|list| {
                                list.iter()
                                    .map(|a| {
                                        let fam = if a.contains(':') { "inet6" } else { "inet" };
                                        format!("2: {ifname}    {fam} {a} scope global {ifname}\\       valid_lft forever preferred_lft forever\n")
                                    })
                                    .collect::<String>()
                            })
                            .unwrap_or_default();
                        outcome(true, text)
                    }
                    ["ip", "addr", "add", cidr, "dev", ifname] => {
                        if parse_cidr(cidr).is_none() {
                            return outcome(false, format!("Error: any valid prefix is expected rather than \"{cidr}\"."));
                        }
                        let list = table.entry((*ifname).to_string()).or_default();
                        if list.iter().any(|a| a == cidr) {
                            return outcome(false, "RTNETLINK answers: File exists".into());
                        }
                        list.push((*cidr).to_string());
                        outcome(true, String::new())
                    }
                    ["ip", "addr", "del", cidr, "dev", ifname] => {
                        let list = table.entry((*ifname).to_string()).or_default();
                        let before = list.len();
                        list.retain(|a| a != cidr);
                        outcome(list.len() < before, String::new())
                    }
                    _ => outcome(false, format!("unexpected command {argv:?}")),
                }
            })
        }
    }

    fn spec(interface: &str, address: &str, action: VipAction) -> VipSpec {
        VipSpec { interface: interface.into(), address: address.into(), action, garp_count: 5, garp_interval_ms: 0, garp_repeat_ms: 5_000, garp_refresh_s: 0 }
    }

    /// An announcer that records `(interface address count, when)` and answers `fails` if set.
    type Sent = Arc<Mutex<Vec<(String, tokio::time::Instant)>>>;

    fn recorder(fails: Option<&'static str>) -> (Sent, Announce) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let announce: Announce = Arc::new(move |ifname: &str, addr: Ipv4Addr, count: u32| {
            log.lock().unwrap().push((format!("{ifname} {addr} x{count}"), tokio::time::Instant::now()));
            fails.map_or(Ok(()), |e| Err(e.to_string()))
        });
        (sent, announce)
    }

    fn setup(table: &[(&str, &[&str])]) -> (Arc<FakeIp>, Vips) {
        let fake = Arc::new(FakeIp::default());
        for (ifname, addrs) in table {
            fake.addrs.lock().unwrap().insert((*ifname).into(), addrs.iter().map(|a| (*a).to_string()).collect());
        }
        let vips = Vips::with_shell(Box::new(fake.clone()), recorder(None).1);
        (fake, vips)
    }

    fn addrs(fake: &FakeIp, ifname: &str) -> Vec<String> {
        fake.addrs.lock().unwrap().get(ifname).cloned().unwrap_or_default()
    }

    #[test]
    fn parses_ip_o_addr() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                    3: eth0    inet 10.77.0.1/24 brd 10.77.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                    3: eth0    inet 10.77.0.100/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever\n\
                    3: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n";
        let got = parse_addrs(text);
        assert_eq!(got.len(), 4);
        assert_eq!(got[1], IfAddr { cidr: "10.77.0.1/24".into(), ipv6: false, global: true });
        assert!(got[2].global, "secondary addresses are global too");
        assert!(!got[0].global && !got[3].global);
        assert!(got[3].ipv6);
    }

    #[test]
    fn commands_never_go_through_a_shell() {
        assert_eq!(add_cmd("10.0.0.100/24", "eth0"), ["ip", "addr", "add", "10.0.0.100/24", "dev", "eth0"]);
        assert_eq!(del_cmd("10.0.0.100/24", "eth0"), ["ip", "addr", "del", "10.0.0.100/24", "dev", "eth0"]);
        assert_eq!(show_cmd("eth0"), ["ip", "-o", "addr", "show", "dev", "eth0"]);
    }

    #[tokio::test]
    async fn add_is_idempotent_and_released() {
        let (fake, vips) = setup(&[("eth0", &["10.0.0.1/24"])]);
        let specs = [spec("eth0", "10.0.0.100/24", VipAction::Add)];
        let note = vips.claim(&specs).await.unwrap();
        assert!(note.contains("eth0: added 10.0.0.100/24, 5 gratuitous ARPs sent (again in 5000 ms)"), "{note}");
        let note = vips.claim(&specs).await.unwrap();
        assert!(note.contains("already has"), "claiming twice is fine: {note}");
        assert_eq!(addrs(&fake, "eth0"), ["10.0.0.1/24", "10.0.0.100/24"]);
        vips.release(&specs).await.unwrap();
        assert_eq!(addrs(&fake, "eth0"), ["10.0.0.1/24"]);
        let note = vips.release(&specs).await.unwrap();
        assert!(note.contains("already absent"), "releasing twice is fine: {note}");
    }

    #[tokio::test]
    async fn set_replaces_and_restores_the_interface_addresses() {
        let (fake, vips) = setup(&[("port3", &["172.16.1.5/24", "172.16.9.5/24"])]);
        let specs = [spec("port3", "172.16.1.2/24", VipAction::Set)];
        let note = vips.claim(&specs).await.unwrap();
        assert!(note.contains("set 172.16.1.2/24 (replaced 172.16.1.5/24, 172.16.9.5/24)"), "{note}");
        assert_eq!(addrs(&fake, "port3"), ["172.16.1.2/24"]);
        vips.claim(&specs).await.unwrap();
        assert_eq!(addrs(&fake, "port3"), ["172.16.1.2/24"], "a second claim changes nothing");
        vips.release(&specs).await.unwrap();
        assert_eq!(addrs(&fake, "port3"), ["172.16.1.5/24", "172.16.9.5/24"]);
    }

    #[tokio::test]
    async fn ignore_touches_nothing() {
        let (fake, vips) = setup(&[("port1", &["192.168.1.5/24"])]);
        let specs = [spec("port1", "192.168.1.99/24", VipAction::Ignore)];
        assert_eq!(vips.claim(&specs).await.unwrap(), "port1: ignored");
        assert_eq!(vips.release(&specs).await.unwrap(), "nothing to release");
        assert!(fake.log.lock().unwrap().is_empty(), "no command ran: {:?}", fake.log.lock().unwrap());
    }

    #[tokio::test]
    async fn release_after_a_reload_still_removes_what_was_claimed() {
        let (fake, vips) = setup(&[("eth0", &["10.0.0.1/24"])]);
        vips.claim(&[spec("eth0", "10.0.0.100/24", VipAction::Add)]).await.unwrap();
        // The reloaded policy no longer declares the VIP: the address must not stay behind.
        vips.release(&[spec("eth0", "10.0.0.200/24", VipAction::Add)]).await.unwrap();
        assert_eq!(addrs(&fake, "eth0"), ["10.0.0.1/24"]);
    }

    #[tokio::test]
    async fn an_arp_that_cannot_be_sent_never_fails_the_claim_and_says_why() {
        let fake = Arc::new(FakeIp::default());
        let (_, announce) = recorder(Some("eth0: cannot open a raw socket for gratuitous ARP: Operation not permitted"));
        let vips = Vips::with_shell(Box::new(fake.clone()), announce);
        let note = vips.claim(&[spec("eth0", "10.0.0.100/24", VipAction::Add)]).await.unwrap();
        assert!(note.ends_with("gratuitous ARP failed (eth0: cannot open a raw socket for gratuitous ARP: Operation not permitted)"), "{note}");
    }

    #[tokio::test(start_paused = true)]
    async fn announcements_go_out_at_once_then_again_and_stop_at_release() {
        let fake = Arc::new(FakeIp::default());
        let (sent, announce) = recorder(None);
        let vips = Vips::with_shell(Box::new(fake.clone()), announce);
        let start = tokio::time::Instant::now();
        let mut s = spec("eth0", "10.0.0.100/24", VipAction::Add);
        s.garp_refresh_s = 60;
        vips.claim(std::slice::from_ref(&s)).await.unwrap();
        let at = |sent: &[(String, tokio::time::Instant)]| sent.iter().map(|(w, t)| (w.clone(), (*t - start).as_millis() as u64)).collect::<Vec<_>>();
        assert_eq!(at(&sent.lock().unwrap()), [("eth0 10.0.0.100 x5".to_string(), 0)], "the first burst before the claim returns");
        tokio::time::sleep(Duration::from_secs(126)).await;
        let expected = [("eth0 10.0.0.100 x5", 0), ("eth0 10.0.0.100 x5", 5_000), ("eth0 10.0.0.100 x1", 65_000), ("eth0 10.0.0.100 x1", 125_000)];
        assert_eq!(at(&sent.lock().unwrap()), expected.map(|(w, t)| (w.to_string(), t)));
        vips.release(std::slice::from_ref(&s)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(sent.lock().unwrap().len(), 4, "no announcement after the release");
        // Spaced: one now, the rest of the burst in the background.
        s.garp_interval_ms = 200;
        s.garp_count = 3;
        s.garp_refresh_s = 0;
        s.garp_repeat_ms = 0;
        sent.lock().unwrap().clear();
        let start = tokio::time::Instant::now();
        vips.claim(std::slice::from_ref(&s)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let got: Vec<u64> = sent.lock().unwrap().iter().map(|(_, t)| (*t - start).as_millis() as u64).collect();
        assert_eq!(got, [0, 200, 400]);
    }

    #[tokio::test]
    async fn a_failing_ip_command_fails_the_action_with_its_message() {
        let (_fake, vips) = setup(&[]);
        // The policy file check refuses such an address; here it stands for any refusal by `ip`.
        let err = vips.claim(&[spec("eth0", "bad", VipAction::Add)]).await.unwrap_err();
        assert!(err.contains("ip addr add bad dev eth0: exit 2"), "{err}");
        assert!(err.contains("any valid prefix is expected"), "the command's own message is kept: {err}");
    }

    #[tokio::test]
    async fn replaced_addresses_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vip.json");
        let fake = Arc::new(FakeIp::default());
        fake.addrs.lock().unwrap().insert("port3".into(), vec!["172.16.1.5/24".into()]);
        let specs = [spec("port3", "172.16.1.2/24", VipAction::Set)];
        let mut first = Vips::with_shell(Box::new(fake.clone()), recorder(None).1);
        first.saved_file = Some(file.clone());
        first.claim(&specs).await.unwrap();
        drop(first);
        // A new daemon reads what the killed one remembered.
        let mut second = Vips::new(Some(file));
        second.shell = Box::new(fake.clone());
        second.release(&specs).await.unwrap();
        assert_eq!(addrs(&fake, "port3"), ["172.16.1.5/24"]);
    }
}
