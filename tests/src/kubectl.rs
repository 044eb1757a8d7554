//! Running `kubectl` against one control plane.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What one `kubectl` run printed, and whether it succeeded.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

impl Output {
    /// The output if kubectl succeeded, else an error quoting it.
    pub fn ok(self) -> anyhow::Result<Output> {
        anyhow::ensure!(self.success, "kubectl failed: {self}");
        Ok(self)
    }

    /// The lines of stderr that kubectl printed as `Warning: ...`: the
    /// warnings admission returned.
    pub fn warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("Warning:"))
            .collect()
    }

    /// Whether the error was a NotFound.
    pub fn is_not_found(&self) -> bool {
        !self.success && (self.stderr.contains("NotFound") || self.stderr.contains("not found"))
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            if self.success { "succeeded" } else { "failed" },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// `kubectl` bound to a kubeconfig, with its own discovery cache.
#[derive(Debug, Clone)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

impl Kubectl {
    /// `$KUBECTL` when set, else the one built with the control plane (the
    /// same release as the apiserver, whatever the machine has on `PATH`).
    pub fn new(kubeconfig: &Path, cache_dir: &Path) -> Kubectl {
        let binary = std::env::var_os("KUBECTL").unwrap_or_else(|| {
            match crate::binaries::control_plane_bin_dir() {
                Ok(dir) => dir.join("kubectl").into_os_string(),
                Err(_) => "kubectl".into(),
            }
        });
        Kubectl {
            binary: binary.into(),
            kubeconfig: kubeconfig.to_owned(),
            cache_dir: cache_dir.to_owned(),
        }
    }

    /// Runs `kubectl <args>`, writing `stdin` to its standard input when
    /// given. Panics only when kubectl cannot be run at all.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::process::without_proxy(&mut cmd);
        let command = format!("kubectl {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.binary));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // kubectl reads all of stdin before it answers, so writing first
            // cannot deadlock on small manifests.
            pipe.write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("writing {command}'s stdin: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {command}: {e}"));
        Output {
            command,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
        }
    }
}
