//! `tollgate certs`: look at a certificate, or issue one for local testing.
//!
//! - `tollgate certs inspect <file | secret/<namespace>/<name>> [--ca FILE]`
//!   prints every certificate's subject, issuer, validity, names and key
//!   type, and exits 1 when the first one is expired, not yet valid, or
//!   does not chain to the CA (`--ca`, else a Secret's own `ca.crt`).
//! - `tollgate certs issue --out DIR [--spiffe ID] [--dns NAME] [--ip IP]`
//!   writes `ca.crt`, `ca.key`, `tls.crt` and `tls.key` — the layout the
//!   proxy mounts — signing with `--ca-cert/--ca-key` when given.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use tollgate_certs::inspect::{self, CertInfo};
use tollgate_certs::issue::{Ca, LeafSpec};

use crate::cli::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a certificate (a PEM file, or secret/<namespace>/<name> read
    /// from the cluster); exit 1 if it is expired, not yet valid, or does
    /// not chain to the CA.
    Inspect {
        /// A PEM file, or `secret/<namespace>/<name>`.
        target: String,
        /// The CA (PEM) the certificate must chain to. For a Secret, its
        /// own `ca.crt` is used when this is not given.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// For a Secret: the kubeconfig (default: in-cluster or $KUBECONFIG).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Write a CA, a leaf certificate and its key for local testing.
    Issue {
        /// Directory to write ca.crt, ca.key, tls.crt and tls.key into.
        #[arg(long)]
        out: PathBuf,
        /// A SPIFFE ID for the leaf (a workload certificate, for mTLS both
        /// ways), e.g. spiffe://cluster.local/ns/flyte/sa/flyteadmin.
        #[arg(long)]
        spiffe: Option<String>,
        /// DNS names (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Sign with this CA (PEM) instead of a new one; needs --ca-key.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Leaf lifetime in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

pub fn run(args: Args) -> u8 {
    let result = match args.command {
        Command::Inspect {
            target,
            ca,
            kubeconfig,
        } => inspect_command(&target, ca.as_deref(), kubeconfig),
        Command::Issue {
            out,
            spiffe,
            dns,
            ip,
            ca_cert,
            ca_key,
            days,
        } => issue_command(&out, spiffe, dns, ip, ca_cert.zip(ca_key), days),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate certs: {e:#}");
            exit::BROKEN
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn inspect_command(
    target: &str,
    ca: Option<&Path>,
    kubeconfig: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let (pem, secret_ca) = match target.strip_prefix("secret/") {
        Some(rest) if !Path::new(target).exists() => read_secret(rest, kubeconfig)?,
        _ => (read(Path::new(target))?, None),
    };
    let ca_pem = match ca {
        Some(path) => Some(read(path)?),
        None => secret_ca,
    };
    let chain = inspect::parse_pem_chain(&pem)?;
    for (i, der) in chain.iter().enumerate() {
        let info = inspect::inspect_der(der)?;
        if chain.len() > 1 {
            println!("certificate {} of {}:", i + 1, chain.len());
        }
        print!("{}", describe(&info, OffsetDateTime::now_utc()));
    }
    let problems = inspect::problems(&pem, ca_pem.as_deref(), OffsetDateTime::now_utc())?;
    if ca_pem.is_some() && problems.is_empty() {
        println!("chains to the given CA: yes");
    }
    for problem in &problems {
        println!("PROBLEM: {problem}");
    }
    Ok(if problems.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// `tls.crt` (and `ca.crt`, if any) of `<namespace>/<name>`.
fn read_secret(
    namespace_name: &str,
    kubeconfig: Option<PathBuf>,
) -> anyhow::Result<(String, Option<String>)> {
    use anyhow::Context as _;
    let (namespace, name) = namespace_name
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
        .context("a Secret is named secret/<namespace>/<name>")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let cluster = crate::config::ClusterConfig {
            enabled: Some(true),
            kubeconfig,
        };
        let client = crate::cluster::client(&cluster).await?;
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client, namespace);
        let secret = api
            .get(name)
            .await
            .with_context(|| format!("reading Secret {namespace}/{name}"))?;
        let field = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let cert = field("tls.crt")
            .with_context(|| format!("Secret {namespace}/{name} has no tls.crt"))?;
        Ok((cert, field("ca.crt")))
    })
}

/// The human-readable account of one certificate.
pub fn describe(info: &CertInfo, now: OffsetDateTime) -> String {
    let remaining = info.not_after - now;
    let status = match info.validity_problem(now) {
        Some(problem) => problem.to_string(),
        None => format!("valid, {} days left", remaining.whole_days()),
    };
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    format!(
        "  subject:    {}\n  issuer:     {}\n  serial:     {}\n  not before: {}\n  not after:  {}\n  status:     {status}\n  key:        {}\n  CA:         {}\n  DNS names:  {}\n  IPs:        {}\n  URIs:       {}\n",
        info.subject,
        info.issuer,
        info.serial,
        info.not_before,
        info.not_after,
        info.key_type,
        if info.is_ca { "yes" } else { "no" },
        list(&info.dns_names),
        list(&info.ip_addresses),
        list(&info.uris),
    )
}

fn issue_command(
    out: &Path,
    spiffe: Option<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    ca_files: Option<(PathBuf, PathBuf)>,
    days: i64,
) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    anyhow::ensure!(days > 0, "--days must be positive");
    if let Some(id) = &spiffe {
        tollgate_certs::spiffe::IdPattern::parse(id)?;
        anyhow::ensure!(!id.contains('*'), "--spiffe: an ID, not a pattern: {id}");
    }
    anyhow::ensure!(
        spiffe.is_some() || !dns.is_empty() || !ips.is_empty(),
        "name the certificate: --spiffe, --dns or --ip"
    );
    let ca = match &ca_files {
        Some((cert, key)) => Ca::from_pem(&read(cert)?, &read(key)?)
            .with_context(|| format!("loading the CA {}", cert.display()))?,
        None => Ca::generate("tollgate local CA")?,
    };
    let spec = match &spiffe {
        Some(id) => LeafSpec::workload(id, &dns),
        None => LeafSpec::server(&dns, &ips),
    };
    let spec = LeafSpec { ips, ..spec }.with_lifetime(time::Duration::days(days));
    let leaf = ca.issue(&spec)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, text: &str, private: bool| -> anyhow::Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if private {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    };
    write("ca.crt", ca.cert_pem(), false)?;
    if ca_files.is_none() {
        write("ca.key", ca.key_pem(), true)?;
    }
    write("tls.crt", &leaf.cert_pem, false)?;
    write("tls.key", &leaf.key_pem, true)?;
    let info = inspect::inspect_pem(&leaf.cert_pem)?;
    println!("wrote {}/{{ca.crt,tls.crt,tls.key}}", out.display());
    print!("{}", describe(&info, OffsetDateTime::now_utc()));
    Ok(exit::OK)
}
