//! Kyverno's admission controller as a process on loopback beside a test
//! control plane (the admission benchmark's `kyverno` mode), built from its
//! Go module by `benches/peers-admission/build.sh kyverno`.
//!
//! Out of a cluster, Kyverno needs:
//! - `--kubeconfig` (it ignores `KUBECONFIG`) and the six environment
//!   variables it checks at start;
//! - its serving certificate and CA as Secrets, which it reads through the
//!   API (no file option), with its certificate manager off;
//! - every CRD it watches (a missing one hangs its start-up, it does not
//!   fail), applied server-side (two are too large for client-side apply);
//! - `--serverIP` with the port, so the configurations it registers call
//!   it by URL.
//!
//! It always manages its own webhook configurations and recreates them
//! when deleted, so the benchmark cannot switch it off by deleting them:
//! its ConfigMap gives its own resource webhooks an object selector that
//! matches nothing, and the benchmark registers its own configuration to
//! the policy's path (`/vpol/<policy>`), applied and deleted like the other
//! modes'. Admission reports and policy events are off, so a create costs
//! no apiserver writes besides the Pod (a default install writes a report
//! per admitted object). The configurations Kyverno made outlive it, so
//! the control plane it ran against is for the benchmark alone.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::json;
use tollgate_e2e::ControlPlane;
use tollgate_e2e::process::Process;

use crate::peer;

/// The namespace Kyverno lives in (`KYVERNO_NAMESPACE`).
pub const NAMESPACE: &str = "kyverno";
/// The Secrets its server and caBundle come from (its chart's names).
const TLS_SECRET: &str = "kyverno-svc.kyverno.svc.kyverno-tls-pair";
const CA_SECRET: &str = "kyverno-svc.kyverno.svc.kyverno-tls-ca";
/// A label no benchmark object carries: Kyverno's own resource webhooks
/// select only objects with it.
const NEVER: &str = "bench.tollgate.io/kyverno-own-webhooks";

/// A running Kyverno admission controller with one ValidatingPolicy.
pub struct Kyverno {
    pub process: Process,
    /// Where the policy is served: `https://127.0.0.1:PORT/vpol/<policy>`.
    pub url: String,
    /// The CA of its serving certificate, PEM.
    pub ca: String,
    /// `Kyverno v1.x.y`.
    pub version: String,
    // Removed after the process is gone.
    _dir: tempfile::TempDir,
}

/// The `metadata.name` of the ValidatingPolicy in `policy` (a YAML file).
fn policy_name(policy: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(policy).with_context(|| format!("reading {}", policy.display()))?;
    let doc: serde_json::Value =
        yaml_serde::from_str(&text).with_context(|| format!("parsing {}", policy.display()))?;
    doc["metadata"]["name"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{} has no metadata.name", policy.display()))
}

/// Starts Kyverno (`bin_dir/kyverno`) against `cp` on loopback with the
/// ValidatingPolicy in `policy`, its CRDs from `crds` (its module's
/// `config/crds`) and a serving certificate from `noop_bin certs`, and
/// waits until it serves and its webhook controller has run. The policy
/// is in effect only once a violating object is denied through it; the
/// caller checks that through its own registration.
pub fn start(
    cp: &ControlPlane,
    bin_dir: &Path,
    crds: &Path,
    policy: &Path,
    noop_bin: &Path,
) -> anyhow::Result<Kyverno> {
    let name = policy_name(policy)?;
    cp.kubectl(
        &[
            "apply",
            "--server-side",
            "-R",
            "-f",
            &crds.to_string_lossy(),
        ],
        None,
    )
    .ok()
    .context("applying Kyverno's CRDs")?;
    cp.kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        None,
    )
    .ok()?;
    let _ = cp.kubectl(&["create", "namespace", NAMESPACE], None);
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-kyverno-")
        .tempdir()?;
    let status = Command::new(noop_bin)
        .args(["certs", "--dir"])
        .arg(dir.path())
        .status()?;
    ensure!(status.success(), "noop-webhook certs failed");
    let file = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    cp.kubectl(
        &[
            "-n",
            NAMESPACE,
            "create",
            "secret",
            "tls",
            TLS_SECRET,
            &format!("--cert={}", file("tls.crt")),
            &format!("--key={}", file("tls.key")),
        ],
        None,
    )
    .ok()?;
    cp.kubectl(
        &[
            "-n",
            NAMESPACE,
            "create",
            "secret",
            "generic",
            CA_SECRET,
            &format!("--from-file=tls.crt={}", file("ca.pem")),
        ],
        None,
    )
    .ok()?;
    let selector = json!({"objectSelector": {"matchLabels": {NEVER: "never"}}});
    cp.apply_json(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kyverno", "namespace": NAMESPACE},
        "data": {"webhooks": selector.to_string()}
    }))?;

    let [port, metrics] = tollgate_e2e::ports::free_ports()?;
    let mut cmd = Command::new(bin_dir.join("kyverno"));
    cmd.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .arg(format!("--serverIP=127.0.0.1:{port}"))
        .arg("--webhookServerHost=127.0.0.1")
        .arg(format!("--webhookServerPort={port}"))
        .arg(format!("--caSecretName={CA_SECRET}"))
        .arg(format!("--tlsSecretName={TLS_SECRET}"))
        .arg("--disableCertManagerController=true")
        .arg("--admissionReports=false")
        .arg("--omitEvents=PolicyViolation,PolicyApplied,PolicyError,PolicySkipped")
        .arg("--metricsHost=127.0.0.1")
        .arg(format!("--metricsPort={metrics}"))
        .arg("--controllerRuntimeMetricsAddress=0")
        .arg("--autoMemLimitEnabled=false")
        .arg("-v=1")
        .env("KYVERNO_NAMESPACE", NAMESPACE)
        .env(
            "KYVERNO_SERVICEACCOUNT_NAME",
            "kyverno-admission-controller",
        )
        .env("KYVERNO_DEPLOYMENT", "kyverno-admission-controller")
        .env("KYVERNO_POD_NAME", "kyverno-bench-0")
        .env("INIT_CONFIG", "kyverno")
        .env("METRICS_CONFIG", "kyverno-metrics");
    let mut process = Process::spawn("kyverno", cmd, &dir.path().join("kyverno.log"))?;
    let deadline = Instant::now() + Duration::from_secs(180);
    peer::wait_ready(
        &mut process,
        &format!("https://127.0.0.1:{port}/health/readiness"),
        deadline,
    )?;
    // Its policy-validating webhook (failurePolicy Fail) exists once the
    // leader's webhook controller has run; the policy is applied after it,
    // until Kyverno's own validation of it lets it through.
    peer::apply_until_taken(cp, &mut process, policy, deadline)?;
    let version = std::fs::read_to_string(bin_dir.join("VERSION"))
        .map(|v| format!("Kyverno {}", v.trim()))
        .unwrap_or_else(|_| "Kyverno (version unknown)".into());
    Ok(Kyverno {
        process,
        url: format!("https://127.0.0.1:{port}/vpol/{name}"),
        ca: std::fs::read_to_string(dir.path().join("ca.pem"))?,
        version,
        _dir: dir,
    })
}
