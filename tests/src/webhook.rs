//! The real `tollgate` binary, serving on a free loopback port with a fresh
//! CA and serving certificate.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use tollgate_certs::issue::Ca;

use crate::control_plane::curl;
use crate::process::Process;
use crate::wait::{self, Poll};

/// How long `tollgate serve` may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Namespaces the webhook is told to leave alone.
pub const EXEMPT_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "tollgate-system",
];

/// A running `tollgate serve`. Dropping it kills the process and removes
/// its directory.
pub struct Webhook {
    process: Process,
    port: u16,
    ca_pem: String,
    config: PathBuf,
    startup: Duration,
    // Declared last so that it is removed after the process is gone.
    dir: tempfile::TempDir,
}

/// The bundled policy library: `<workspace>/policies`.
pub fn policies_dir() -> PathBuf {
    crate::binaries::workspace_root().join("policies")
}

impl Webhook {
    /// Generates a CA and a serving cert for 127.0.0.1 and localhost, writes
    /// them and a config file, starts `tollgate serve --config <file>` and
    /// waits until `/readyz` answers 200.
    ///
    /// The config is `listen`, `tls` and `policies` (the bundled library,
    /// the system namespaces exempt), deep-merged with `extra_config_yaml`:
    /// its mappings merge into the defaults, anything else replaces them.
    pub fn start(extra_config_yaml: &str) -> anyhow::Result<Webhook> {
        let dir = webhook_dir()?;
        let ca = Ca::generate("tollgate-e2e CA").context("generating the CA")?;
        let leaf = ca
            .issue_server(
                &["localhost".to_owned()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            )
            .context("issuing the serving certificate")?;
        let cert_file = dir.path().join("tls.crt");
        let key_file = dir.path().join("tls.key");
        std::fs::write(&cert_file, &leaf.cert_pem)?;
        std::fs::write(&key_file, &leaf.key_pem)?;
        let tls = json!({"tls": {"certFile": cert_file, "keyFile": key_file}});
        Webhook::launch(dir, tls, extra_config_yaml, |_| {
            Ok(Some(ca.cert_pem().to_owned()))
        })
    }

    /// Starts `tollgate serve` against `cp` with `certificates.manage` on:
    /// no certificate files; the webhook bootstraps its CA and serving
    /// certificate (for 127.0.0.1) into the Secret `tollgate-webhook-tls` in
    /// `tollgate-system` (created here if need be). Readiness is checked
    /// with the CA read back from that Secret.
    pub fn start_managed(
        cp: &crate::ControlPlane,
        extra_config_yaml: &str,
    ) -> anyhow::Result<Webhook> {
        let namespace = "tollgate-system";
        let _ = cp.kubectl(&["create", "namespace", namespace], None);
        let dir = webhook_dir()?;
        let managed = json!({
            "cluster": {"kubeconfig": cp.kubeconfig()},
            "ownNamespace": namespace,
            "certificates": {"manage": true, "ipAddresses": ["127.0.0.1"]},
        });
        Webhook::launch(dir, managed, extra_config_yaml, |_| {
            managed_ca(cp, namespace, "tollgate-webhook-tls")
        })
    }

    /// Writes the config (`base` deep-merged with the defaults and then
    /// `extra_config_yaml`), starts the process and waits until `/readyz`
    /// answers 200 over TLS verified with the CA `ca` returns (`None`: not
    /// known yet, asked again).
    fn launch(
        dir: tempfile::TempDir,
        base: Value,
        extra_config_yaml: &str,
        mut ca: impl FnMut(&Path) -> anyhow::Result<Option<String>>,
    ) -> anyhow::Result<Webhook> {
        let binary = crate::binaries::tollgate_binary()?;
        let mut config = json!({
            "listen": format!("127.0.0.1:{}", crate::ports::free_port()?),
            "policies": {
                "dirs": [policies_dir()],
                "exemptNamespaces": EXEMPT_NAMESPACES,
            },
        });
        merge(&mut config, base);
        if !extra_config_yaml.trim().is_empty() {
            let extra: Value = yaml_serde::from_str(extra_config_yaml)
                .context("parsing the extra webhook config")?;
            merge(&mut config, extra);
        }
        let port = config["listen"]
            .as_str()
            .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
            .context("listen is not an address")?
            .port();
        let config_file = dir.path().join("tollgate.yaml");
        std::fs::write(&config_file, yaml_serde::to_string(&config)?)?;

        let mut cmd = Command::new(&binary);
        cmd.current_dir(dir.path())
            .arg("serve")
            .arg("--config")
            .arg(&config_file);
        let started = Instant::now();
        let mut process = Process::spawn("tollgate", cmd, &dir.path().join("tollgate.log"))?;

        let url = format!("https://127.0.0.1:{port}/readyz");
        let ca_file = dir.path().join("ca.crt");
        let ca_arg = ca_file.display().to_string();
        let mut ca_pem = None;
        let ready = wait::until(
            "tollgate /readyz to answer 200",
            READY_TIMEOUT,
            Duration::from_millis(250),
            || {
                process.ensure_running()?;
                if ca_pem.is_none() {
                    ca_pem = ca(dir.path())?;
                    match &ca_pem {
                        Some(pem) => std::fs::write(&ca_file, pem)?,
                        None => return Ok(Poll::Pending("no CA yet".into())),
                    }
                }
                let code = curl(&[
                    "-sS",
                    "--cacert",
                    &ca_arg,
                    "--max-time",
                    "2",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &url,
                ])?;
                Ok(if code.trim() == "200" {
                    Poll::Ready(())
                } else {
                    Poll::Pending(code)
                })
            },
        );
        if let Err(err) = ready {
            let config_text = std::fs::read_to_string(&config_file).unwrap_or_default();
            return Err(anyhow::anyhow!(
                "starting {} failed: {err:#}\n--- config ---\n{config_text}\n{}",
                binary.display(),
                process.log_tail(40)
            ));
        }
        let startup = started.elapsed();
        eprintln!(
            "tollgate-e2e: tollgate serving on 127.0.0.1:{port}, ready in {:.1}s",
            startup.as_secs_f64()
        );
        Ok(Webhook {
            process,
            port,
            ca_pem: ca_pem.unwrap_or_default(),
            config: config_file,
            startup,
            dir,
        })
    }

    /// Like [`Webhook::start`], talking to `cp`: `cluster.kubeconfig` is
    /// set to the control plane's, under `extra_config_yaml`.
    pub fn start_for(cp: &crate::ControlPlane, extra_config_yaml: &str) -> anyhow::Result<Webhook> {
        let mut config = json!({"cluster": {"kubeconfig": cp.kubeconfig()}});
        if !extra_config_yaml.trim().is_empty() {
            let extra: Value = yaml_serde::from_str(extra_config_yaml)
                .context("parsing the extra webhook config")?;
            merge(&mut config, extra);
        }
        Webhook::start(&yaml_serde::to_string(&config)?)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the serving cert, PEM (the `caBundle`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The config file `tollgate serve` was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// From spawning the process to `/readyz` answering 200.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Fails if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process.ensure_running()
    }

    /// The process id of `tollgate serve`.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// `GET /metrics`: the Prometheus text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let ca = self.dir.path().join("metrics-ca.crt");
        if !ca.exists() {
            std::fs::write(&ca, &self.ca_pem)?;
        }
        let ca = ca.display().to_string();
        let url = format!("{}/metrics", self.base_url());
        let text = curl(&["-sS", "--max-time", "5", "--cacert", &ca, &url])?;
        anyhow::ensure!(
            text.contains("# TYPE"),
            "GET /metrics answered no metrics: {text}"
        );
        Ok(text)
    }

    /// The admission requests the webhook has answered so far, both
    /// endpoints, every decision (`tollgate_admission_requests_total`).
    pub fn admission_requests(&self) -> anyhow::Result<u64> {
        Ok(self
            .metrics()?
            .lines()
            .filter(|l| l.starts_with("tollgate_admission_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// The end of the webhook's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

fn webhook_dir() -> anyhow::Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix("tollgate-e2e-webhook-")
        .tempdir()
        .context("creating the webhook's directory")?;
    if std::env::var_os("TOLLGATE_E2E_KEEP").is_some() {
        dir.disable_cleanup(true);
    }
    Ok(dir)
}

/// The `ca.crt` of a TLS Secret, once it exists.
pub fn managed_ca(
    cp: &crate::ControlPlane,
    namespace: &str,
    secret: &str,
) -> anyhow::Result<Option<String>> {
    use base64::Engine as _;
    let out = cp.kubectl(
        &[
            "get",
            "secret",
            "-n",
            namespace,
            secret,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
        None,
    );
    if !out.success || out.stdout.trim().is_empty() {
        return Ok(None);
    }
    let pem = base64::engine::general_purpose::STANDARD
        .decode(out.stdout.trim())
        .context("decoding ca.crt")?;
    Ok(Some(String::from_utf8(pem).context("ca.crt is not text")?))
}

/// Merges `extra` into `base`: objects key by key, recursively; any other
/// value replaces.
fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_deep_for_objects_and_replaces_the_rest() {
        let mut base =
            json!({"policies": {"dirs": ["/a"], "exemptNamespaces": ["x"]}, "listen": "l"});
        let extra: Value = yaml_serde::from_str(
            "policies:\n  dirs: [/b]\n  overrides:\n    image_tag: { enforcement: warn }\n",
        )
        .unwrap();
        merge(&mut base, extra);
        assert_eq!(
            base,
            json!({
                "listen": "l",
                "policies": {
                    "dirs": ["/b"],
                    "exemptNamespaces": ["x"],
                    "overrides": {"image_tag": {"enforcement": "warn"}}
                }
            })
        );
    }
}
