//! Waiting on an admission peer (Gatekeeper, Kyverno) started as a process
//! beside a test control plane: until it is ready, and until it takes an
//! object its own admission checks (a constraint of a CRD it has yet to
//! make, a policy its webhook validates).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use tollgate_e2e::ControlPlane;
use tollgate_e2e::process::Process;

/// Waits until `url` answers 200 (TLS, if any, not verified: a readiness
/// probe) while `process` runs, up to `deadline`.
pub fn wait_ready(process: &mut Process, url: &str, deadline: Instant) -> anyhow::Result<()> {
    loop {
        process.ensure_running()?;
        let code = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if code == "200" {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} not ready at {url}: {}",
            process.name(),
            process.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `kubectl apply -f file` against `cp`, again every 500 ms while
/// `process` runs and until `deadline`: the peer must first make or serve
/// what the apply needs. The error says the peer's log.
pub fn apply_until_taken(
    cp: &ControlPlane,
    process: &mut Process,
    file: &Path,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        process.ensure_running()?;
        let out = cp.kubectl(&["apply", "-f", &file.to_string_lossy()], None);
        if out.success {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not take {}: {}\n{}",
            process.name(),
            file.display(),
            out.stderr,
            process.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
