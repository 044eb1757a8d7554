//! `tollgate serve` with mounted certificate files (cert-manager, a Secret
//! volume): replacing the files under load changes the certificate new
//! handshakes get, with no failed request and no restart.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_certs::issue::Ca;

fn served_serial(port: u16, ca: &std::path::Path) -> Option<String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{certs}",
        ])
        .arg("--cacert")
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}/healthz"))
        .output()
        .ok()?;
    let pem = String::from_utf8(out.stdout).ok()?;
    Some(tollgate_certs::inspect::inspect_pem(&pem).ok()?.serial)
}

fn write_leaf(ca: &Ca, dir: &std::path::Path) {
    let leaf = ca
        .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    // Write-then-rename, as kubelet's atomic writer and cert-manager do.
    for (name, text) in [("tls.key", &leaf.key_pem), ("tls.crt", &leaf.cert_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

#[test]
fn replaced_certificate_files_are_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("files CA").unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    write_leaf(&ca, dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "listen: 127.0.0.1:{port}\ntls:\n  certFile: {d}/tls.crt\n  keyFile: {d}/tls.key\ncertificates:\n  checkIntervalSeconds: 1\n",
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(dir.path().join("config.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ca_file = dir.path().join("ca.crt");
    let mut check = || -> Result<(), String> {
        let started = Instant::now();
        let first = loop {
            if let Some(serial) = served_serial(port, &ca_file) {
                break serial;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err("never served".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut seen = vec![first];
        let mut failures = 0;
        for _ in 0..2 {
            write_leaf(&ca, dir.path());
            let swapped = Instant::now();
            loop {
                match served_serial(port, &ca_file) {
                    Some(s) if Some(&s) != seen.last() => {
                        seen.push(s);
                        break;
                    }
                    Some(_) => {}
                    None => failures += 1,
                }
                if swapped.elapsed() > Duration::from_secs(10) {
                    return Err(format!("still serving the old certificate: {seen:?}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if failures > 0 {
            return Err(format!("{failures} handshakes failed during the swaps"));
        }
        match child.try_wait() {
            Ok(None) => Ok(()),
            other => Err(format!("the server exited: {other:?}")),
        }
    };
    let result = check();
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap();
}
