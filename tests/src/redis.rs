//! A real `redis-server` (Debian's package) on a free loopback port, for
//! the shared rate-limit tests: started without persistence, killed on
//! drop. It can be killed and restarted on the same port, and paused
//! (SIGSTOP) to hang every client.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::ports::free_port;
use crate::process::Process;

pub struct RedisServer {
    /// The plaintext port (also with TLS on: `redis-cli` uses it).
    pub port: u16,
    process: Option<Process>,
    dir: tempfile::TempDir,
    starts: u32,
    extra: Vec<String>,
    password: Option<String>,
}

impl RedisServer {
    /// Starts `redis-server` and waits until it answers `PING`.
    pub fn start() -> anyhow::Result<RedisServer> {
        RedisServer::start_with(Vec::new(), None)
    }

    /// Starts it with more arguments (`--tls-port …`) and, with
    /// `password`, `--requirepass`.
    pub fn start_with(extra: Vec<String>, password: Option<&str>) -> anyhow::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-redis-e2e-")
            .tempdir()?;
        let mut server = RedisServer {
            port: free_port()?,
            process: None,
            dir,
            starts: 0,
            extra,
            password: password.map(str::to_owned),
        };
        server.restart()?;
        Ok(server)
    }

    /// A directory that lives as long as the server (certificates…).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }

    /// Starts the server again on the same port (empty: no persistence).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.starts += 1;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .args(&self.extra);
        if let Some(password) = &self.password {
            cmd.args(["--requirepass", password]);
        }
        let process = Process::spawn("redis-server", cmd, &self.log()).context(
            "redis-server is needed for the shared rate-limit tests (./test installs it)",
        )?;
        self.process = Some(process);
        let started = Instant::now();
        loop {
            if self.cli(&["PING"]).is_ok_and(|out| out.trim() == "PONG") {
                return Ok(());
            }
            if let Some(p) = self.process.as_mut() {
                p.ensure_running()?;
            }
            if started.elapsed() > Duration::from_secs(10) {
                anyhow::bail!(
                    "redis-server did not answer PING within 10 s ({})",
                    self.log().display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL), as a crash or an evicted pod would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .process
            .as_ref()
            .context("redis-server is not running")?
            .pid();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// SIGSTOP: the server keeps its connections but answers nothing.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    /// Runs `redis-cli` against the server; its output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            cmd.args(["--no-auth-warning", "-a", password]);
        }
        let out = cmd.args(args).output().context("running redis-cli")?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A count from `INFO commandstats` (`evalsha`, `eval`, `ping`…).
    pub fn calls(&self, command: &str) -> anyhow::Result<u64> {
        let info = self.cli(&["INFO", "commandstats"])?;
        let prefix = format!("cmdstat_{command}:calls=");
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Never leave it stopped: SIGKILL works on a stopped process, but
        // resume first so its log is complete.
        let _ = self.resume();
        self.kill();
    }
}
