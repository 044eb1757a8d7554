//! The real `tollgate-proxy`'s lifecycle: certificate rotation under load,
//! the drain on SIGTERM, `POST /shutdown`, readiness, and bad
//! configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate_e2e::binaries::proxy_binary;
use tollgate_e2e::proxy::client::{self, reqwest as https};
use tollgate_e2e::proxy::upstream;
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig, admin_request, write_certs};

const PROXY_ID: &str = "spiffe://cluster.local/ns/team-a/sa/workspace";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/team-b/sa/notebook";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_nothing_and_new_handshakes_see_the_new_cert() {
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let first = pki.workload(PROXY_ID).unwrap();
    let proxy = Proxy::start(&ProxyConfig::new(app.port()), &first)
        .await
        .unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let addr = proxy.inbound_addr();
    let before = client::server_cert(&me, addr).await.unwrap();

    // Load: keep-alive HTTP/1.1 and h2 clients, and one that handshakes
    // anew for every request.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for (h2, fresh) in [(false, false), (true, false), (false, true), (true, true)] {
        let c = https(Some(&me), &ca, proxy.inbound, h2, fresh).unwrap();
        let url = format!("https://localhost:{}/echo", proxy.inbound);
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failed.lock().unwrap().push(format!("body: {e:?}"));
                            0
                        }
                    },
                    Ok(r) => {
                        failed
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status()));
                        0
                    }
                    Err(e) => {
                        failed.lock().unwrap().push(format!("{e:?}"));
                        0
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = ok.load(Ordering::Relaxed);
    assert!(during > 0, "no request completed before the rotation");

    // Rotate twice: a new leaf from the same CA, files swapped in place.
    let mut latest = before.clone();
    for round in 0..2 {
        let next = pki.workload(PROXY_ID).unwrap();
        write_certs(&proxy.certs_dir, &next).unwrap();
        let start = Instant::now();
        loop {
            let now = client::server_cert(&me, addr).await.unwrap();
            if now != latest {
                let expected =
                    rustls::pki_types::CertificateDer::from_pem_slice(next.cert_pem.as_bytes())
                        .unwrap();
                assert_eq!(
                    now, expected,
                    "round {round}: a cert that is not the new one"
                );
                latest = now;
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "round {round}: new handshakes never saw the new certificate"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failed = std::mem::take(&mut *failed.lock().unwrap());
    let total = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        total,
        &failed[..failed.len().min(5)]
    );
    assert!(total > during, "{total} requests");
    assert!(proxy.metric("tollgate_cert_rotations_total").await.unwrap() >= 2.0);
    eprintln!("{total} requests, none failed, across two rotations");
}

use rustls::pki_types::pem::PemObject as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let mut proxy = Proxy::start(
        &ProxyConfig::new(app.port()),
        &pki.workload(PROXY_ID).unwrap(),
    )
    .await
    .unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let slow = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let url = format!("https://localhost:{}/slow?ms=3000", proxy.inbound);
    let started = Instant::now();
    let in_flight = tokio::spawn(async move {
        let r = slow.get(url).send().await?;
        let status = r.status();
        let body = r.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    // Let it reach the app, then SIGTERM.
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.sigterm().unwrap();

    // New connections are refused once the listener is closed.
    let start = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(proxy.inbound_addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(2),
                    "still accepting 2 s after SIGTERM: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Readiness reports the drain while the admin port is still up.
    if let Ok((status, body)) = admin_request(proxy.admin, "GET", "/ready").await {
        assert_eq!(status, 503, "{body}");
    }

    let (status, body) = in_flight
        .await
        .unwrap()
        .expect("the request in flight failed");
    assert_eq!(status, 200);
    assert_eq!(body, "slept 3000 ms");
    assert!(started.elapsed() >= Duration::from_secs(3));
    let exit = proxy.wait_exit(Duration::from_secs(5)).await.unwrap();
    assert!(exit.success(), "{exit}");
    let log = proxy.log_text();
    assert!(log.contains("drained; exiting"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_certificates_and_shutdown_is_localhost_only() {
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let mut proxy = Proxy::spawn(&ProxyConfig::new(app.port()), None).unwrap();
    // Not ready while the certificate directory is empty.
    let start = Instant::now();
    let body = loop {
        match proxy.admin_get("/ready").await {
            Ok((503, body)) => break body,
            other => {
                assert!(start.elapsed() < Duration::from_secs(20), "{other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(body.contains("waiting for certificates"), "{body}");
    assert_eq!(proxy.admin_get("/live").await.unwrap().0, 200);
    // The certificate arrives (a slow Secret mount): ready.
    write_certs(&proxy.certs_dir, &pki.workload(PROXY_ID).unwrap()).unwrap();
    proxy.wait_ready().await.unwrap();

    let (status, _) = admin_request(proxy.admin, "GET", "/shutdown")
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, body) = admin_request(proxy.admin, "POST", "/shutdown")
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let exit = proxy.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(exit.success(), "{exit}");
}

#[test]
fn bad_configuration_exits_with_the_path_and_no_panic() {
    let bin = proxy_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, "listeners:\n  inbound:\n    clientAuth: requird\n").unwrap();
    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listeners.inbound.clientAuth: unknown variant `requird`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .env("TOLLGATE_APP_PORT", "eighty")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    std::fs::write(&config, "").unwrap();
    let out = std::process::Command::new(&bin)
        .args(["--check", "--config"])
        .arg(&config)
        .env("TOLLGATE_APP_PORT", "eighty")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("TOLLGATE_APP_PORT: \"eighty\" is not a port"),
        "{stderr}"
    );

    let example = tollgate_e2e::binaries::workspace_root().join("proxy/config/example.yaml");
    let out = std::process::Command::new(&bin)
        .arg("--check")
        .arg("--config")
        .arg(example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
