//! Dev mode: a throwaway CA and serving certificate, and sample reviews to
//! post, so that `tollgate serve --dev` runs with no cluster and no files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tollgate_certs::issue::Ca;

use crate::config::TlsConfig;

const SAMPLES: [(&str, &str); 3] = [
    (
        "pod-privileged.json",
        include_str!("../testdata/pod-privileged.json"),
    ),
    (
        "pod-compliant.json",
        include_str!("../testdata/pod-compliant.json"),
    ),
    (
        "deployment-compliant.json",
        include_str!("../testdata/deployment-compliant.json"),
    ),
];

/// What dev mode wrote, for the banner.
pub struct DevFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub tls: TlsConfig,
}

/// Writes a new CA, a serving certificate for localhost and the sample
/// reviews into `dir`.
pub fn prepare(dir: &Path) -> anyhow::Result<DevFiles> {
    std::fs::create_dir_all(dir)?;
    let ca = Ca::generate("tollgate dev CA")?;
    let leaf = ca.issue_server(
        &["localhost".to_owned()],
        &[
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    )?;
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let ca_path = write("ca.pem", ca.cert_pem())?;
    let cert_file = write("tls.crt", &leaf.cert_pem)?;
    let key_file = write("tls.key", &leaf.key_pem)?;
    for (name, text) in SAMPLES {
        write(name, text)?;
    }
    Ok(DevFiles {
        dir: dir.to_owned(),
        ca: ca_path,
        tls: TlsConfig {
            cert_file,
            key_file,
        },
    })
}

/// The ready-to-paste commands printed once the server listens.
pub fn banner(files: &DevFiles, addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() || ip.is_loopback() => "localhost".to_owned(),
        ip => ip.to_string(),
    };
    let url = format!("https://{host}:{}", addr.port());
    let post = |sample: &str| {
        format!(
            "  curl -sS --cacert {ca} -H 'Content-Type: application/json' --data-binary @{file} {url}/validate",
            ca = files.ca.display(),
            file = files.dir.join(sample).display(),
        )
    };
    format!(
        "\ntollgate is serving the bundled policies at {url} (dev mode: throwaway CA in {dir})\n\n\
         Post a sample AdmissionReview (a privileged pod from an unapproved registry, denied):\n{deny}\n\n\
         and a compliant one (allowed):\n{allow}\n\n\
         Health, readiness and metrics:\n  curl -sS --cacert {ca} {url}/readyz {url}/metrics\n",
        dir = files.dir.display(),
        ca = files.ca.display(),
        deny = post("pod-privileged.json"),
        allow = post("pod-compliant.json"),
    )
}
