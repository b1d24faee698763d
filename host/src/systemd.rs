//! systemd integration: the `sd_notify` protocol, spoken by the daemon itself (no crate needed).
//!
//! Under `Type=notify` systemd names a unix datagram socket in `$NOTIFY_SOCKET` (a path, or an
//! abstract-namespace name when it starts with `@`); the service sends it newline-separated
//! `KEY=value` assignments, one datagram per message. vigil sends:
//!
//! - `READY=1` once the first tick has decided (the node has left `STARTING`: it answers with a real
//!   mode), so units ordered `After=vigil.service` start behind a decided node;
//! - `STATUS=<MODE>, <n>/<m> peers reachable` whenever that text changes (`systemctl status` shows it);
//! - `WATCHDOG=1` from the node loop itself, after a tick, when `$WATCHDOG_USEC` is set (and
//!   `$WATCHDOG_PID`, if set, is this process), at most once per half of that period. A loop that
//!   hangs — a plugin call stuck, a deadlock, a frozen process — stops sending it and systemd restarts
//!   the daemon after `WatchdogSec`. The heartbeat interval must stay below half of `WatchdogSec`.
//! - `STOPPING=1` when a SIGTERM or SIGINT starts the shutdown.
//!
//! Without `$NOTIFY_SOCKET` every call does nothing. Sending never blocks the loop (a full socket
//! queue drops the message) and never fails it: the first error is logged, the rest are not.

use crate::model::Mode;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Where notifications go, if anywhere, and what was last said.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `$WATCHDOG_USEC`: the shortest gap between two `WATCHDOG=1`.
    watchdog_every: Option<Duration>,
    last_watchdog: Option<Instant>,
    ready: bool,
    status: String,
    warned: bool,
}

impl Notifier {
    /// A notifier for this process's environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`);
    /// a disabled one when the daemon does not run under systemd's `Type=notify`.
    pub fn from_env() -> Notifier {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let Some(socket) = var("NOTIFY_SOCKET") else { return Notifier::default() };
        let target = match Self::connect(&socket) {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(%error, "NOTIFY_SOCKET={socket}: systemd notifications are off");
                return Notifier::default();
            }
        };
        let for_us = var("WATCHDOG_PID").is_none_or(|pid| pid.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog_every = match var("WATCHDOG_USEC").map(|v| v.parse::<u64>()) {
            Some(Ok(usec)) if usec > 0 && for_us => Some(Duration::from_micros(usec / 2)),
            Some(Err(_)) => {
                tracing::warn!("WATCHDOG_USEC is not a number of microseconds: no watchdog notifications");
                None
            }
            _ => None,
        };
        Notifier { target: Some(target), watchdog_every, ..Notifier::default() }
    }

    fn connect(name: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)?
        } else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "neither an absolute path nor an @abstract name"));
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok((socket, addr))
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// After a tick of the node loop: `READY=1` after the first, `STATUS=` when it changes,
    /// `WATCHDOG=1` when due.
    pub fn after_tick(&mut self, mode: Mode, peers_reachable: usize, peers: usize) {
        if self.target.is_none() {
            return;
        }
        let mut message = String::new();
        if !self.ready {
            self.ready = true;
            message.push_str("READY=1\n");
        }
        let status = status_text(mode, peers_reachable, peers);
        if status != self.status {
            message.push_str(&format!("STATUS={status}\n"));
            self.status = status;
        }
        if let Some(every) = self.watchdog_every {
            let now = Instant::now();
            if self.last_watchdog.is_none_or(|last| now.duration_since(last) >= every) {
                self.last_watchdog = Some(now);
                message.push_str("WATCHDOG=1\n");
            }
        }
        if !message.is_empty() {
            self.send(&message);
        }
    }

    /// The daemon is shutting down.
    pub fn stopping(&mut self) {
        self.send("STOPPING=1\n");
    }

    fn send(&mut self, message: &str) {
        let Some((socket, addr)) = &self.target else { return };
        match socket.send_to_addr(message.as_bytes(), addr) {
            Ok(_) => tracing::trace!(message, "sd_notify"),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => tracing::debug!("sd_notify: the socket's queue is full, message dropped"),
            Err(error) if !self.warned => {
                self.warned = true;
                tracing::warn!(%error, "cannot notify systemd (further errors are not logged)");
            }
            Err(_) => {}
        }
    }
}

/// The `STATUS=` text: the mode and how many pair peers answer.
pub fn status_text(mode: Mode, peers_reachable: usize, peers: usize) -> String {
    if peers == 0 {
        format!("{}, no peers configured", mode.role_word())
    } else {
        format!("{}, {peers_reachable}/{peers} peers reachable", mode.role_word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let notifier = Notifier { target: Some(Notifier::connect(path.to_str().unwrap()).unwrap()), ..Notifier::default() };
        (dir, socket, notifier)
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        let mut buf = [0u8; 512];
        let mut out = Vec::new();
        while let Ok(n) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn ready_once_then_status_on_change_only() {
        let (_dir, socket, mut n) = listener();
        n.after_tick(Mode::Standby, 0, 1);
        n.after_tick(Mode::Standby, 0, 1);
        n.after_tick(Mode::Active, 0, 1);
        n.stopping();
        assert_eq!(
            received(&socket),
            ["READY=1\nSTATUS=STANDBY, 0/1 peers reachable\n", "STATUS=ACTIVE, 0/1 peers reachable\n", "STOPPING=1\n"]
        );
    }

    #[test]
    fn watchdog_at_most_every_half_period() {
        let (_dir, socket, mut n) = listener();
        n.watchdog_every = Some(Duration::from_secs(3600));
        n.after_tick(Mode::Standby, 0, 0);
        n.after_tick(Mode::Standby, 0, 0);
        assert_eq!(received(&socket), ["READY=1\nSTATUS=STANDBY, no peers configured\nWATCHDOG=1\n"]);
        n.watchdog_every = Some(Duration::ZERO);
        n.after_tick(Mode::Standby, 0, 0);
        assert_eq!(received(&socket), ["WATCHDOG=1\n"]);
    }

    #[test]
    fn abstract_names_and_bad_names() {
        assert!(Notifier::connect("@vigil-test-abstract").is_ok());
        assert!(Notifier::connect("relative/path").is_err());
        let disabled = Notifier::default();
        assert!(!disabled.enabled());
    }
}
