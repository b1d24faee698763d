//! nginx as a reference beside vigil: one worker, no master, its files in a temporary directory,
//! killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Nginx {
    pub(crate) child: Child,
    /// Where it listens (on loopback).
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Start nginx with `top` (top-level directives such as `load_module`) and the blocks `serve`
    /// writes for its directory and listen address; wait until it accepts connections.
    pub(crate) fn start(top: &str, serve: impl FnOnce(&str, SocketAddr) -> String) -> anyhow::Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let d = dir.path().display().to_string();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "{top}master_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 1024; }}\n{}\n",
                serve(&d, addr)
            ),
        )?;
        let child =
            Command::new("nginx").args(["-p", &d, "-c", &conf.display().to_string(), "-g", "daemon off;"]).stderr(Stdio::null()).spawn()?;
        let nginx = Nginx { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(nginx.addr).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}
