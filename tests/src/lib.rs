//! End-to-end harness for Tollgate: a real control plane (etcd,
//! kube-apiserver, kube-controller-manager) on loopback, the real `tollgate`
//! binary, and `kubectl` to drive them.
//!
//! - [`control_plane`]: starts etcd, kube-apiserver and kube-controller-manager
//!   in a temporary directory and kills them on drop; kube-apiserver can be
//!   killed and started again (the fault tests).
//! - [`browser`]: headless Debian `chromium` over the DevTools protocol
//!   (cookies, navigation, page scripts, text, screenshots).
//! - [`jaeger`]: Jaeger v2 (built from its Go module) on loopback with
//!   in-memory storage and OTLP receivers; its HTTP API for the traces.
//! - [`jwt`]: signed tokens (RSA, EC, Ed25519) and a JWKS served over HTTPS.
//! - [`kubectl`]: runs `kubectl` against that control plane.
//! - [`registration`]: registers the webhook with the apiserver and waits until
//!   it is in effect.
//! - [`webhook`]: starts `tollgate serve` with a fresh CA and serving cert.
//! - [`binaries`]: finds (or builds, under a file lock) the binaries above.
//! - [`process`]: a child process whose output goes to a log file and which is
//!   killed and reaped on drop.
//! - [`wait`]: bounded polling.
//! - [`ports`]: free loopback ports.
//! - [`proxy`]: the real `tollgate-proxy` between real clients and upstream
//!   servers (HTTP/1.1, h2c, gRPC, WebSocket), with minted workload certs.
//! - [`redis`]: a real `redis-server` on loopback that can be killed,
//!   restarted and paused (shared rate limits).

pub mod binaries;
pub mod browser;
pub mod control_plane;
pub mod jaeger;
pub mod jwt;
pub mod kubectl;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod registration;
pub mod wait;
pub mod webhook;

pub use control_plane::ControlPlane;
pub use kubectl::Output;
pub use webhook::Webhook;

/// The directory holding the real manifests the tests apply.
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Reads a fixture manifest by file name, e.g. `pod-privileged.yaml`.
pub fn fixture(name: &str) -> String {
    let path = fixtures_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()))
}

/// `kubectl get <args> -n <namespace> -o json`, parsed.
pub fn get_json(
    cp: &ControlPlane,
    namespace: &str,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-n", namespace, "-o", "json"]);
    let out = cp.kubectl(&full, None).ok()?;
    serde_json::from_str(&out.stdout).context("kubectl printed no JSON")
}
