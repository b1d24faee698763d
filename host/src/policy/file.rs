//! The policy file: which plugin decides, its parameters, and what it may drive.
//!
//! ```toml
//! plugin = "hot-standby"          # a name in the plugin directories, or a path to a .wasm file
//! local_only = ["ha.*"]           # configuration keys this deployment never replicates
//!
//! [params]                        # given to the plugin's validate() and decide() as JSON
//! failures = 3
//!
//! [services.app]
//! start = "systemctl start app"   # a string runs through /bin/sh -c; an array runs directly
//! stop = "systemctl stop app"
//! status = "systemctl is-active --quiet app"
//! timeout_ms = 10000
//! watchdog = true
//! app_check = true
//! daily_restart = "04:30"         # local time, HH:MM
//!
//! [hooks.register]
//! command = ["/usr/local/bin/register", "{0}"]   # never through a shell; {N} is argument N
//! timeout_ms = 5000
//!
//! [monitors.smtp]                 # local checks the plugin sees in `tick.monitors`
//! kind = "tcp"                    # tcp (address) | disk (path, min_free_mib) | command (command)
//! address = "127.0.0.1:25"
//!
//! [[vip]]                         # virtual IPs, claimed and released by `claim-vip` / `release-vip`
//! interface = "eth0"
//! address = "10.0.0.100/24"
//! action = "add"                  # add (an extra address) | set (replaces the interface's) | ignore
//! garp_count = 5                  # gratuitous ARPs at once when claimed (IPv4); 0: none
//! garp_interval_ms = 0            # between the ARPs of a burst
//! garp_repeat_ms = 5000           # a second burst after this long; 0: none
//! garp_refresh_s = 0              # one more every this many seconds while held; 0: off
//!
//! [relay]                         # the traffic relay moved by `route` actions
//! listen = "0.0.0.0:8443"         # built-in TCP relay; omit to use only the hook
//! targets = { main = "10.0.0.1:443", standby = "10.0.0.2:443" }
//! initial = "main"
//! hook = "upstream"               # optional: a [hooks.NAME] run with (target id, address) on each route
//! busy_poll_us = 50               # built-in relay: poll without sleeping this long after traffic (0: never)
//!
//! [limits]
//! time_ms = 50                    # wall time per plugin call
//! memory_mib = 32                 # linear memory per plugin instance
//! state_kib = 64                  # state bytes a decision may return
//!
//! [fallback]
//! mode = "hold"                   # when the plugin faults: hold, or go standby/off/failed …
//! after = 3                       # … after this many consecutive faults
//! ```
//!
//! This module only reads and checks the file; `policy::load` resolves the plugin and runs it.

use crate::model::Mode;
use crate::toml_file::{self, TomlError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A parsed and checked policy file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// A plugin name resolved in the plugin directories, or a path to a `.wasm` file (relative to the
    /// policy file).
    pub plugin: String,
    /// Parameters for the plugin.
    #[serde(default)]
    pub params: toml::Table,
    /// Services the plugin may start, stop and restart.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// Hooks the plugin may run.
    #[serde(default)]
    pub hooks: BTreeMap<String, HookSpec>,
    /// Resource limits of each plugin call.
    #[serde(default)]
    pub limits: Limits,
    /// What the host does when the plugin faults.
    #[serde(default)]
    pub fallback: Fallback,
    /// Configuration key patterns this deployment never replicates (`*` matches any run of characters).
    #[serde(default)]
    pub local_only: Vec<String>,
    /// Local checks, probed every tick.
    #[serde(default)]
    pub monitors: BTreeMap<String, MonitorSpec>,
    /// Virtual IP addresses.
    #[serde(default)]
    pub vip: Vec<VipSpec>,
    /// The traffic relay.
    #[serde(default)]
    pub relay: Option<RelaySpec>,
    /// Whether one node at a time may be active (the default). `false` for groups in which every
    /// node serves (a config-only group): the host's start-up grace, which keeps a node from taking
    /// the role from a peer it has not heard from yet, does not hold them.
    #[serde(default = "exclusive_by_default")]
    pub exclusive: bool,
}

fn exclusive_by_default() -> bool {
    true
}

/// A local check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum MonitorSpec {
    /// A TCP connect to `address` succeeds.
    Tcp { address: String },
    /// The filesystem holding `path` has at least `min_free_mib` free.
    Disk { path: std::path::PathBuf, min_free_mib: u64 },
    /// The command exits 0 within `timeout_ms`.
    Command {
        command: CommandSpec,
        #[serde(default = "default_monitor_timeout_ms")]
        timeout_ms: u64,
    },
}

fn default_monitor_timeout_ms() -> u64 {
    2_000
}

/// What claiming a virtual IP does to its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VipAction {
    /// Add the address beside the interface's own.
    Add,
    /// Replace the interface's addresses with it (restored on release).
    Set,
    /// Leave the interface alone.
    Ignore,
}

/// One virtual IP address on one interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSpec {
    pub interface: String,
    /// Address with prefix length, e.g. `10.0.0.100/24`.
    pub address: String,
    pub action: VipAction,
    /// Gratuitous ARPs (IPv4) sent when the address is claimed, like keepalived's
    /// `garp_master_repeat`: a lost one would leave neighbours sending to the old node for seconds.
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    /// Time between the ARPs of one burst (keepalived's `garp_interval`); 0: back to back.
    #[serde(default)]
    pub garp_interval_ms: u64,
    /// A second burst this long after the claim (keepalived's `garp_master_delay`), for neighbours
    /// that were busy or links that were still coming up; 0: none.
    #[serde(default = "default_garp_repeat_ms")]
    pub garp_repeat_ms: u64,
    /// While the address is held, one gratuitous ARP every this many seconds (keepalived's
    /// `garp_master_refresh`); 0: off.
    #[serde(default)]
    pub garp_refresh_s: u64,
}

fn default_garp_count() -> u32 {
    5
}

fn default_garp_repeat_ms() -> u64 {
    5_000
}

/// Bounds of the gratuitous ARP settings: beyond them a policy floods the LAN or waits for nothing.
pub const MAX_GARP_COUNT: u32 = 100;
pub const MAX_GARP_INTERVAL_MS: u64 = 10_000;
pub const MAX_GARP_REPEAT_MS: u64 = 600_000;
pub const MAX_GARP_REFRESH_S: u64 = 86_400;

/// The traffic relay that `route` actions move.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySpec {
    /// Where the built-in TCP relay listens; without it only the hook moves traffic.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// Target ids and their addresses (`host:port`).
    pub targets: BTreeMap<String, String>,
    /// The target before the first `route` action.
    pub initial: String,
    /// A declared hook run as `hook(target id, address)` on every route change.
    #[serde(default)]
    pub hook: Option<String>,
    /// How long the built-in relay's data path keeps polling without sleeping after it moved bytes, in
    /// microseconds (0: it always sleeps until the next event). See `relay::pump`.
    #[serde(default = "default_busy_poll_us")]
    pub busy_poll_us: u64,
}

/// Long enough to cover a request's answer on a LAN-local backend, short enough to cost little CPU.
pub const DEFAULT_BUSY_POLL_US: u64 = 50;
/// The most `busy_poll_us` may ask for: beyond that a relay would mostly spin for nothing.
pub const MAX_BUSY_POLL_US: u64 = 10_000;

fn default_busy_poll_us() -> u64 {
    DEFAULT_BUSY_POLL_US
}

/// A command: a string runs through `/bin/sh -c`, an array runs directly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CommandSpec {
    Shell(String),
    Argv(Vec<String>),
}

impl CommandSpec {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandSpec::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            CommandSpec::Argv(argv) => argv.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            CommandSpec::Shell(line) => line.trim().is_empty(),
            CommandSpec::Argv(argv) => argv.first().is_none_or(|p| p.is_empty()),
        }
    }
}

/// A local service the plugin controls.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub start: CommandSpec,
    pub stop: CommandSpec,
    /// Exit 0 means running. Without it, the host tracks the state from start/stop results.
    #[serde(default)]
    pub status: Option<CommandSpec>,
    #[serde(default = "default_command_timeout_ms")]
    pub timeout_ms: u64,
    /// Restart the service if it stops while the node is active.
    #[serde(default)]
    pub watchdog: bool,
    /// Counts for `/app`.
    #[serde(default)]
    pub app_check: bool,
    /// A daily restart time, `HH:MM` local time.
    #[serde(default)]
    pub daily_restart: Option<String>,
}

/// A command template the plugin may run with arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    /// Program and arguments; `{0}`, `{1}`, … are replaced by the plugin's arguments.
    pub command: Vec<String>,
    #[serde(default = "default_command_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_command_timeout_ms() -> u64 {
    10_000
}

/// Resource limits of each plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub time_ms: u64,
    pub memory_mib: u64,
    pub state_kib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { time_ms: 50, memory_mib: 32, state_kib: 64 }
    }
}

impl Limits {
    pub fn time(&self) -> Duration {
        Duration::from_millis(self.time_ms)
    }

    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize) << 20
    }

    pub fn state_bytes(&self) -> usize {
        (self.state_kib as usize) << 10
    }
}

/// What the host does when the plugin faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fallback {
    /// `hold` keeps the current mode; a mode name switches to it after `after` consecutive faults.
    pub mode: FallbackMode,
    pub after: u32,
}

impl Default for Fallback {
    fn default() -> Self {
        Fallback { mode: FallbackMode::Hold, after: 3 }
    }
}

/// The fallback's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackMode {
    Hold,
    To(Mode),
}

impl<'de> Deserialize<'de> for FallbackMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "hold" {
            return Ok(FallbackMode::Hold);
        }
        text.parse::<Mode>()
            .map(FallbackMode::To)
            .map_err(|_| serde::de::Error::custom(format!("expected hold, standby, off, failed or hold-off, got {text:?}")))
    }
}

impl PolicyFile {
    /// Read and check a policy file.
    pub fn read(path: &Path) -> Result<PolicyFile, TomlError> {
        Self::parse(path, &toml_file::read_text(path)?)
    }

    /// Parse and check the text of the policy file at `path` (named in errors). Touches no file: the
    /// plugin is resolved and loaded later.
    pub fn parse(path: &Path, text: &str) -> Result<PolicyFile, TomlError> {
        let file: PolicyFile = toml_file::parse(path, text)?;
        file.check(path)?;
        Ok(file)
    }

    /// Checks that types alone cannot express.
    fn check(&self, path: &Path) -> Result<(), TomlError> {
        if self.plugin.trim().is_empty() {
            return Err(TomlError::at(path, "plugin", "expected a plugin name or a path to a .wasm file"));
        }
        let l = &self.limits;
        if !(1..=10_000).contains(&l.time_ms) {
            return Err(TomlError::at(path, "limits.time_ms", format!("expected 1 to 10000, got {}", l.time_ms)));
        }
        if !(1..=4096).contains(&l.memory_mib) {
            return Err(TomlError::at(path, "limits.memory_mib", format!("expected 1 to 4096, got {}", l.memory_mib)));
        }
        if !(1..=16_384).contains(&l.state_kib) {
            return Err(TomlError::at(path, "limits.state_kib", format!("expected 1 to 16384, got {}", l.state_kib)));
        }
        if self.fallback.after == 0 {
            return Err(TomlError::at(path, "fallback.after", "expected at least 1"));
        }
        for (name, s) in &self.services {
            let key = |field: &str| format!("services.{name}.{field}");
            check_name(path, &format!("services.{name}"), name)?;
            for (field, cmd) in [("start", Some(&s.start)), ("stop", Some(&s.stop)), ("status", s.status.as_ref())] {
                if cmd.is_some_and(CommandSpec::is_empty) {
                    return Err(TomlError::at(path, key(field), "expected a command (a string or a non-empty array)"));
                }
            }
            if s.timeout_ms == 0 {
                return Err(TomlError::at(path, key("timeout_ms"), "expected a positive number of milliseconds"));
            }
            if let Some(t) = &s.daily_restart {
                parse_hhmm(t).map_err(|e| TomlError::at(path, key("daily_restart"), e))?;
            }
        }
        for (name, h) in &self.hooks {
            check_name(path, &format!("hooks.{name}"), name)?;
            if h.command.first().is_none_or(|p| p.is_empty()) {
                return Err(TomlError::at(path, format!("hooks.{name}.command"), "expected a non-empty array: program, then arguments"));
            }
            if h.timeout_ms == 0 {
                return Err(TomlError::at(path, format!("hooks.{name}.timeout_ms"), "expected a positive number of milliseconds"));
            }
        }
        for (name, m) in &self.monitors {
            check_name(path, &format!("monitors.{name}"), name)?;
            match m {
                MonitorSpec::Tcp { address } if !address.contains(':') => {
                    return Err(TomlError::at(path, format!("monitors.{name}.address"), format!("expected host:port, got {address:?}")));
                }
                MonitorSpec::Command { command, .. } if command.is_empty() => {
                    return Err(TomlError::at(path, format!("monitors.{name}.command"), "expected a command"));
                }
                _ => {}
            }
        }
        for (i, v) in self.vip.iter().enumerate() {
            if v.interface.is_empty() || v.interface.len() > 15 || v.interface.contains(['/', ' ']) {
                return Err(TomlError::at(path, format!("vip[{i}].interface"), format!("expected an interface name, got {:?}", v.interface)));
            }
            if parse_cidr(&v.address).is_none() {
                return Err(TomlError::at(path, format!("vip[{i}].address"), format!("expected ADDRESS/PREFIX, e.g. 10.0.0.100/24, got {:?}", v.address)));
            }
            for (key, value, max) in [
                ("garp_count", u64::from(v.garp_count), u64::from(MAX_GARP_COUNT)),
                ("garp_interval_ms", v.garp_interval_ms, MAX_GARP_INTERVAL_MS),
                ("garp_repeat_ms", v.garp_repeat_ms, MAX_GARP_REPEAT_MS),
                ("garp_refresh_s", v.garp_refresh_s, MAX_GARP_REFRESH_S),
            ] {
                if value > max {
                    return Err(TomlError::at(path, format!("vip[{i}].{key}"), format!("expected at most {max}, got {value}")));
                }
            }
        }
        if let Some(r) = &self.relay {
            if r.targets.is_empty() {
                return Err(TomlError::at(path, "relay.targets", "expected at least one target id = \"host:port\""));
            }
            for (id, address) in &r.targets {
                if !address.contains(':') {
                    return Err(TomlError::at(path, format!("relay.targets.{id}"), format!("expected host:port, got {address:?}")));
                }
            }
            if !r.targets.contains_key(&r.initial) {
                return Err(TomlError::at(path, "relay.initial", format!("expected one of the targets, got {:?}", r.initial)));
            }
            if let Some(hook) = &r.hook {
                if !self.hooks.contains_key(hook) {
                    return Err(TomlError::at(path, "relay.hook", format!("no [hooks.{hook}] declared")));
                }
            }
            if r.busy_poll_us > MAX_BUSY_POLL_US {
                return Err(TomlError::at(path, "relay.busy_poll_us", format!("expected at most {MAX_BUSY_POLL_US} (10 ms), got {}", r.busy_poll_us)));
            }
            if r.listen.is_none() && r.hook.is_none() {
                return Err(TomlError::at(path, "relay", "expected `listen` (the built-in relay), `hook`, or both"));
            }
        }
        for (i, pattern) in self.local_only.iter().enumerate() {
            if pattern.is_empty() {
                return Err(TomlError::at(path, format!("local_only[{i}]"), "expected a non-empty key pattern"));
            }
        }
        Ok(())
    }

    /// The `[params]` table as the JSON text handed to the plugin.
    pub fn params_json(&self) -> String {
        serde_json::to_string(&self.params).expect("a TOML table converts to JSON")
    }
}

/// Parse `ADDRESS/PREFIX` (IPv4 or IPv6).
pub fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

fn check_name(path: &Path, key: &str, name: &str) -> Result<(), TomlError> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(TomlError::at(path, key, "names use letters, digits, '-' and '_' only"))
    }
}

/// Parse `HH:MM` into minutes after midnight.
pub fn parse_hhmm(text: &str) -> Result<u32, String> {
    let bad = || format!("expected a time HH:MM (00:00 to 23:59), got {text:?}");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 || text.len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PolicyFile, TomlError> {
        let path = Path::new("p.toml");
        let file: PolicyFile = toml_file::parse(path, text)?;
        file.check(path)?;
        Ok(file)
    }

    #[test]
    fn minimal_policy_gets_defaults() {
        let p = parse("plugin = \"x\"").unwrap();
        assert_eq!(p.limits, Limits::default());
        assert_eq!(p.fallback.mode, FallbackMode::Hold);
        assert_eq!(p.params_json(), "{}");
    }

    #[test]
    fn services_and_hooks_parse() {
        let p = parse(
            r#"plugin = "x"
[params]
failures = 3
[services.app]
start = "true"
stop = ["/bin/true"]
daily_restart = "04:30"
[hooks.reg]
command = ["echo", "{0}"]
[fallback]
mode = "standby"
after = 2
"#,
        )
        .unwrap();
        assert_eq!(p.services["app"].start.argv(), ["/bin/sh", "-c", "true"]);
        assert_eq!(p.services["app"].stop.argv(), ["/bin/true"]);
        assert_eq!(p.fallback.mode, FallbackMode::To(Mode::Standby));
        assert_eq!(p.params_json(), r#"{"failures":3}"#);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("plugin = \"x\"\n[limits]\ntime_ms = 0", "limits.time_ms"),
            ("plugin = \"x\"\n[services.app]\nstart = \"\"\nstop = \"x\"", "services.app.start"),
            ("plugin = \"x\"\n[services.app]\nstart = \"a\"\nstop = \"b\"\ndaily_restart = \"25:00\"", "services.app.daily_restart"),
            ("plugin = \"x\"\n[hooks.h]\ncommand = []", "hooks.h.command"),
            ("plugin = \"x\"\n[fallback]\nmode = \"sideways\"", "fallback.mode"),
            ("plugin = \"x\"\n[services.\"a b\"]\nstart = \"a\"\nstop = \"b\"", "services.a b"),
            ("plugin = \"x\"\nplugins = \"y\"", "plugins"),
            ("plugin = \"x\"\n[[vip]]\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\naction = \"add\"", "vip[0].address"),
            ("plugin = \"x\"\n[relay]\nlisten = \"127.0.0.1:1\"\ntargets = { a = \"h:1\" }\ninitial = \"b\"", "relay.initial"),
            ("plugin = \"x\"\n[[vip]]\ninterface = \"eth0\"\naddress = \"10.0.0.1/24\"\naction = \"add\"\ngarp_count = 1000", "vip[0].garp_count"),
            ("plugin = \"x\"\n[relay]\nlisten = \"127.0.0.1:1\"\ntargets = { a = \"h:1\" }\ninitial = \"a\"\nbusy_poll_us = 20000", "relay.busy_poll_us"),
            ("plugin = \"x\"\n[monitors.m]\nkind = \"tcp\"\naddress = \"nohost\"", "monitors.m.address"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        }
    }

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("04:30"), Ok(270));
        assert!(parse_hhmm("4:30").is_err());
        assert!(parse_hhmm("24:00").is_err());
    }
}
