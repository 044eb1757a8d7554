//! A real control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager, each on free 127.0.0.1 ports, with all state in
//! one temporary directory.
//!
//! There is no scheduler and no kubelet: Pods are created (and admitted) but
//! stay Pending, which is all admission tests need.
//!
//! kube-apiserver can be killed and started again on the same port, etcd
//! and certificates ([`ControlPlane::stop_apiserver`],
//! [`ControlPlane::start_apiserver`]), for the fault tests.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::kubectl::{Kubectl, Output};
use crate::process::Process;
use crate::wait::{self, Poll};

/// How long kube-apiserver may take to report ready.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long etcd may take to listen.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long kube-controller-manager may take to create the default
/// ServiceAccount (a sign its controllers run).
const CONTROLLERS_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The controllers the tests rely on: workloads create their Pods,
/// namespaces get their ServiceAccount and token, deletion cascades, and
/// ResourceQuotas get the status without which quota admission refuses
/// every Pod in their namespace.
const CONTROLLERS: &str = "deployment,replicaset,statefulset,daemonset,job,cronjob,\
namespace,serviceaccount,serviceaccount-token,garbagecollector,resourcequota";

/// The index of kube-apiserver in [`ControlPlane`]'s processes.
const APISERVER: usize = 1;

/// A running control plane. Dropping it kills kube-controller-manager,
/// kube-apiserver and etcd (in that order), then removes the directory.
pub struct ControlPlane {
    /// Started in order; killed in reverse order on drop. The apiserver is
    /// [`APISERVER`]: it alone can be stopped and started again.
    processes: Vec<Process>,
    /// How to start kube-apiserver again, on the same port and etcd.
    apiserver: ApiserverSpec,
    /// How many times kube-apiserver was started again.
    restarts: u32,
    server: String,
    kubeconfig: PathBuf,
    kubectl: Kubectl,
    startup: Duration,
    // Declared last so that it is removed after the processes are gone.
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits
    /// until the apiserver is ready and the controllers run.
    ///
    /// The binaries come from [`crate::binaries::control_plane_bin_dir`] and
    /// are built first when missing. When start-up fails, the error quotes
    /// the end of every process's log. Set `TOLLGATE_E2E_KEEP=1` to keep the
    /// directory with the logs after the test.
    pub fn start() -> anyhow::Result<ControlPlane> {
        ControlPlane::start_with_apiserver_args(Vec::new())
    }

    /// Like [`ControlPlane::start`], with more kube-apiserver flags (e.g.
    /// `--tracing-config-file=…`), kept for its restarts.
    pub fn start_with_apiserver_args(extra: Vec<String>) -> anyhow::Result<ControlPlane> {
        let bin = crate::binaries::control_plane_bin_dir()?;
        let mut dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-cp-")
            .tempdir()
            .context("creating the control plane's directory")?;
        if std::env::var_os("TOLLGATE_E2E_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("tollgate-e2e: keeping {}", dir.path().display());
        }
        let mut processes = Vec::new();
        let started = Instant::now();
        match start_in(&bin, dir.path(), &mut processes, extra) {
            Ok((apiserver, kubeconfig)) => {
                let server = apiserver.url();
                let kubectl = Kubectl::new(&kubeconfig, &dir.path().join("kube-cache"));
                let startup = started.elapsed();
                eprintln!(
                    "tollgate-e2e: control plane at {server} ready in {:.1}s ({})",
                    startup.as_secs_f64(),
                    dir.path().display()
                );
                Ok(ControlPlane {
                    processes,
                    apiserver,
                    restarts: 0,
                    server,
                    kubeconfig,
                    kubectl,
                    startup,
                    dir,
                })
            }
            Err(err) => {
                let logs: Vec<String> = processes.iter().map(|p| p.log_tail(25)).collect();
                // Dropping `processes` kills what was started.
                Err(anyhow::anyhow!(
                    "starting the control plane in {} failed: {err:#}\n\
                     (set TOLLGATE_E2E_KEEP=1 to keep the logs)\n\n{}",
                    dir.path().display(),
                    logs.join("\n\n")
                ))
            }
        }
    }

    /// `https://127.0.0.1:<port>` of kube-apiserver.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin kubeconfig (token auth, system:masters).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory holding the control plane's state and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long [`ControlPlane::start`] took, the binaries being present.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The admin bearer token (system:masters), for clients other than
    /// kubectl.
    pub fn token(&self) -> &str {
        &self.apiserver.token
    }

    /// The CA that signed the apiserver's serving certificate (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.apiserver.cert_dir().join("apiserver.crt")
    }

    /// Kills kube-apiserver (SIGKILL, as a crash or an OOM kill would) and
    /// reaps it. etcd keeps the cluster's data and kube-controller-manager
    /// keeps running (retrying), so [`ControlPlane::start_apiserver`] brings
    /// the same cluster back.
    pub fn stop_apiserver(&mut self) {
        self.processes[APISERVER].kill();
    }

    /// Starts kube-apiserver again on the same port, etcd and certificates
    /// (its log is `kube-apiserver.<n>.log`), and waits until `/readyz`
    /// answers `ok`; returns how long that took. Without a stop first, the
    /// running apiserver is killed.
    pub fn start_apiserver(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.spawn_apiserver()?;
        self.wait_apiserver_ready()?;
        Ok(started.elapsed())
    }

    /// Like [`ControlPlane::start_apiserver`] without the wait: it serves
    /// requests a moment later, before `/readyz` says `ok`.
    pub fn spawn_apiserver(&mut self) -> anyhow::Result<()> {
        self.stop_apiserver();
        self.restarts += 1;
        let log = self
            .dir
            .path()
            .join(format!("kube-apiserver.{}.log", self.restarts));
        self.processes[APISERVER] =
            Process::spawn("kube-apiserver", self.apiserver.command(), &log)?;
        Ok(())
    }

    /// Waits until kube-apiserver's `/readyz` answers `ok`.
    pub fn wait_apiserver_ready(&mut self) -> anyhow::Result<()> {
        self.apiserver
            .wait_ready(&mut self.processes)
            .map_err(|e| anyhow::anyhow!("{e:#}\n\n{}", self.processes[APISERVER].log_tail(25)))
    }

    /// Runs `kubectl --kubeconfig <admin> <args>`.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl.run(args, stdin)
    }

    /// Lets `subjects` (`kubectl create rolebinding` flags: `--user=…`,
    /// `--group=…`, `--serviceaccount=ns:name`) create and get Pods in
    /// `namespace`, with a Role of its own: no clusterrole-aggregation
    /// controller runs here to fill `edit`.
    pub fn grant_pod_creation(&self, namespace: &str, subjects: &[&str]) -> anyhow::Result<()> {
        let role = [
            "create",
            "role",
            "pod-creator",
            "--verb=create,get",
            "--resource=pods",
        ];
        let mut binding = vec![
            "create",
            "rolebinding",
            "pod-creators",
            "--role=pod-creator",
        ];
        binding.extend_from_slice(subjects);
        for args in [role.as_slice(), binding.as_slice()] {
            let mut all = vec!["-n", namespace];
            all.extend_from_slice(args);
            self.kubectl(&all, None).ok()?;
        }
        Ok(())
    }

    /// Waits until the apiserver's authorizer lets the requester that
    /// `impersonate` names (`--as=…` and `--as-group=…` flags) `verb`
    /// `resource` in `namespace`: RBAC objects take effect a moment after
    /// they are created.
    pub fn wait_allowed(
        &self,
        impersonate: &[&str],
        verb: &str,
        resource: &str,
        namespace: &str,
    ) -> anyhow::Result<()> {
        let mut args = vec!["auth", "can-i", verb, resource, "-n", namespace];
        args.extend_from_slice(impersonate);
        wait::until(
            &format!("{impersonate:?} to be allowed to {verb} {resource} in {namespace}"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let out = self.kubectl(&args, None);
                Ok(if out.stdout.trim() == "yes" {
                    Poll::Ready(())
                } else {
                    Poll::Pending(out.to_string())
                })
            },
        )
    }

    /// Fails if any control-plane process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.processes
            .iter_mut()
            .try_for_each(Process::ensure_running)
    }

    /// The end of every process's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let tails: Vec<String> = self.processes.iter().map(|p| p.log_tail(lines)).collect();
        tails.join("\n\n")
    }

    /// Waits until at least one Pod matching `selector` exists in
    /// `namespace`, and returns their names.
    pub fn wait_for_pods(
        &self,
        namespace: &str,
        selector: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        wait::until(
            &format!("a pod with {selector} in {namespace}"),
            timeout,
            Duration::from_millis(500),
            || {
                let out = self
                    .kubectl(
                        &["get", "pods", "-n", namespace, "-l", selector, "-o", "json"],
                        None,
                    )
                    .ok()?;
                let list: serde_json::Value = serde_json::from_str(&out.stdout)
                    .with_context(|| format!("parsing the pod list: {}", out.stdout))?;
                let names: Vec<String> = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                    .collect();
                Ok(if names.is_empty() {
                    Poll::Pending("no pods".to_owned())
                } else {
                    Poll::Ready(names)
                })
            },
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(process) = self.processes.pop() {
            drop(process);
        }
    }
}

/// Starts the three processes into `processes`; returns how the apiserver
/// was started and the kubeconfig path.
fn start_in(
    bin: &Path,
    dir: &Path,
    processes: &mut Vec<Process>,
    extra: Vec<String>,
) -> anyhow::Result<(ApiserverSpec, PathBuf)> {
    let [etcd_client, etcd_peer, apiserver_port] = crate::ports::free_ports::<3>()?;

    // etcd. Its data lives as long as the test: no fsync.
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let mut etcd = Command::new(bin.join("etcd"));
    etcd.current_dir(dir)
        .arg("--name=e2e")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=e2e={peer_url}"))
        .arg("--initial-cluster-state=new")
        .arg("--listen-metrics-urls=")
        .arg("--unsafe-no-fsync");
    processes.push(Process::spawn("etcd", etcd, &dir.join("etcd.log"))?);
    wait::until(
        "etcd to listen",
        ETCD_READY_TIMEOUT,
        Duration::from_millis(100),
        || {
            processes[0].ensure_running()?;
            Ok(
                match TcpStream::connect((Ipv4Addr::LOCALHOST, etcd_client)) {
                    Ok(_) => Poll::Ready(()),
                    Err(e) => Poll::Pending(e.to_string()),
                },
            )
        },
    )?;

    // Credentials: an admin token in system:masters, and the service
    // account signing key.
    let token = random_hex(16)?;
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, format!("{token},admin,admin,\"system:masters\"\n"))?;
    let sa_key = dir.join("sa.key");
    let status = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&sa_key)
        .arg("2048")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .context("running openssl genrsa")?;
    anyhow::ensure!(status.success(), "openssl genrsa failed ({status})");

    // kube-apiserver.
    let apiserver = ApiserverSpec {
        bin: bin.join("kube-apiserver"),
        dir: dir.to_owned(),
        port: apiserver_port,
        etcd_url,
        tokens,
        sa_key: sa_key.clone(),
        token: token.clone(),
        extra,
    };
    processes.push(Process::spawn(
        "kube-apiserver",
        apiserver.command(),
        &dir.join("kube-apiserver.log"),
    )?);
    apiserver.wait_ready(processes)?;
    let server = apiserver.url();
    let cert_dir = apiserver.cert_dir();

    // The apiserver generated a self-signed serving cert (with its CA) for
    // 127.0.0.1 in cert-dir: trust exactly that.
    let ca = cert_dir.join("apiserver.crt");
    anyhow::ensure!(ca.exists(), "{} was not generated", ca.display());
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_yaml(&server, &ca, &token))?;

    // kube-controller-manager, serving nothing (both ports 0).
    let mut kcm = Command::new(bin.join("kube-controller-manager"));
    kcm.current_dir(dir)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--controllers={CONTROLLERS}"))
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg("--secure-port=0")
        .arg("--use-service-account-credentials=false")
        .arg(format!(
            "--service-account-private-key-file={}",
            sa_key.display()
        ))
        .arg(format!("--root-ca-file={}", ca.display()))
        .arg("--v=1");
    processes.push(Process::spawn(
        "kube-controller-manager",
        kcm,
        &dir.join("kube-controller-manager.log"),
    )?);

    // The serviceaccount controller creating `default` in `default` shows
    // that the controllers have synced and run.
    let kubectl = Kubectl::new(&kubeconfig, &dir.join("kube-cache"));
    wait::until(
        "kube-controller-manager to create the default ServiceAccount",
        CONTROLLERS_READY_TIMEOUT,
        Duration::from_millis(500),
        || {
            for p in processes.iter_mut() {
                p.ensure_running()?;
            }
            let out = kubectl.run(&["get", "serviceaccount", "default", "-n", "default"], None);
            Ok(if out.success {
                Poll::Ready(())
            } else {
                Poll::Pending(out.stderr)
            })
        },
    )?;
    Ok((apiserver, kubeconfig))
}

/// What kube-apiserver is started with, kept to start it again.
struct ApiserverSpec {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    etcd_url: String,
    tokens: PathBuf,
    sa_key: PathBuf,
    /// The admin token (in `tokens`).
    token: String,
    /// More flags, after the harness's own.
    extra: Vec<String>,
}

impl ApiserverSpec {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Where the apiserver writes its self-signed serving certificate (and
    /// finds it again on a restart, so the kubeconfig's CA stays valid).
    fn cert_dir(&self) -> PathBuf {
        self.dir.join("apiserver-certs")
    }

    fn command(&self) -> Command {
        let mut apiserver = Command::new(&self.bin);
        apiserver
            .current_dir(&self.dir)
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.port))
            .arg(format!("--cert-dir={}", self.cert_dir().display()))
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--token-auth-file={}", self.tokens.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-account-key-file={}",
                self.sa_key.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                self.sa_key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.96.0.0/24")
            // Privileged pods must reach admission: denying them is the
            // webhook's job, not the apiserver's.
            .arg("--allow-privileged=true")
            // ServiceAccount admission would make every Pod wait for its
            // namespace's token Secret; the tests do not need mounted tokens.
            .arg("--disable-admission-plugins=ServiceAccount")
            // The `kubernetes` Service cannot point at a loopback address; do
            // not try (it only logs errors).
            .arg("--endpoint-reconciler-type=none")
            .arg("--v=1")
            .args(&self.extra);
        apiserver
    }

    /// Waits until `/readyz` answers `ok`, failing early when any of
    /// `processes` exits.
    fn wait_ready(&self, processes: &mut [Process]) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.url());
        let auth = format!("Authorization: Bearer {}", self.token);
        wait::until(
            "kube-apiserver /readyz",
            APISERVER_READY_TIMEOUT,
            Duration::from_millis(250),
            || {
                for p in processes.iter_mut() {
                    p.ensure_running()?;
                }
                let out = curl(&["-sSk", "--max-time", "5", "-H", &auth, &url])?;
                Ok(if out.trim() == "ok" {
                    Poll::Ready(())
                } else {
                    Poll::Pending(out)
                })
            },
        )
    }
}

fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
current-context: e2e
",
        ca = ca.display()
    )
}

/// Runs curl (loopback only) and returns its stdout; a failed connection is
/// not an error, just an empty answer with curl's message.
pub fn curl(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("curl");
    cmd.args(args).stdin(Stdio::null());
    crate::process::without_proxy(&mut cmd);
    let out = cmd.output().context("running curl")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Ok(format!(
            "curl {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout
        ))
    }
}

/// The serial of the certificate that a new handshake with the server at
/// `base` (`https://host:port`) gets, read with curl from `/healthz`.
/// `ca_file`: verify the server against it; `None`: do not verify (only
/// which certificate is served matters).
pub fn served_serial(base: &str, ca_file: Option<&Path>) -> anyhow::Result<String> {
    let ca = ca_file.map(|p| p.display().to_string());
    let mut args = vec![
        "-sS",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{certs}",
    ];
    match &ca {
        Some(ca) => args.extend(["--cacert", ca.as_str()]),
        None => args.push("-k"),
    }
    let url = format!("{base}/healthz");
    args.push(&url);
    let pem = curl(&args)?;
    Ok(tollgate_certs::inspect::inspect_pem(&pem)
        .with_context(|| format!("reading the served certificate: {pem}"))?
        .serial)
}

/// `n` random bytes from the kernel, hex-encoded.
fn random_hex(n: usize) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
