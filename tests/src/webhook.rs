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
        let binary = crate::binaries::tollgate_binary()?;
        let mut dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-webhook-")
            .tempdir()
            .context("creating the webhook's directory")?;
        if std::env::var_os("TOLLGATE_E2E_KEEP").is_some() {
            dir.disable_cleanup(true);
        }

        let ca = Ca::generate("tollgate-e2e CA").context("generating the CA")?;
        let leaf = ca
            .issue_server(
                &["localhost".to_owned()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            )
            .context("issuing the serving certificate")?;
        let ca_file = dir.path().join("ca.crt");
        let cert_file = dir.path().join("tls.crt");
        let key_file = dir.path().join("tls.key");
        std::fs::write(&ca_file, ca.cert_pem())?;
        std::fs::write(&cert_file, &leaf.cert_pem)?;
        std::fs::write(&key_file, &leaf.key_pem)?;

        let port = crate::ports::free_port()?;
        let mut config = json!({
            "listen": format!("127.0.0.1:{port}"),
            "tls": {"certFile": cert_file, "keyFile": key_file},
            "policies": {
                "dirs": [policies_dir()],
                "exemptNamespaces": EXEMPT_NAMESPACES,
            },
        });
        if !extra_config_yaml.trim().is_empty() {
            let extra: Value = yaml_serde::from_str(extra_config_yaml)
                .context("parsing the extra webhook config")?;
            merge(&mut config, extra);
        }
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
        let ca_arg = ca_file.display().to_string();
        let ready = wait::until(
            "tollgate /readyz to answer 200",
            READY_TIMEOUT,
            Duration::from_millis(250),
            || {
                process.ensure_running()?;
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
            ca_pem: ca.cert_pem().to_owned(),
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

    /// The end of the webhook's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
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
