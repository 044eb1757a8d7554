//! The webhook's own certificates against the real kube-apiserver: two
//! replicas start with no Secret and webhook configurations without a
//! `caBundle`; they create the Secret, patch the bundle, and the apiserver
//! (verifying TLS with that bundle, no insecure flags) admits through them.
//! The serving certificate is then rotated every few seconds while
//! `kubectl` keeps creating Pods through both replicas: not one request
//! fails, new handshakes see each new certificate, no process restarts,
//! and exactly one replica writes each rotation. A `caBundle` someone
//! removes is put back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tollgate_e2e::control_plane::{curl, served_serial};
use tollgate_e2e::registration::{VALIDATING_WEBHOOK, configurations_at};
use tollgate_e2e::wait::{self, Poll};
use tollgate_e2e::{ControlPlane, Webhook, fixture};

const NAMESPACE: &str = "app-ml-team";
const SYSTEM: &str = "tollgate-system";
const SECRET: &str = "tollgate-webhook-tls";

/// Leaf lifetime 8 s, renewed at 2/3: a rotation every ~4 s.
const CONFIG: &str = "\
certificates:
  leafLifetimeSeconds: 8
  checkIntervalSeconds: 1
policies:
  overrides:
    allowed_registries:
      parameters:
        registries: [\"registry.example.com/\"]
";

/// The serial of the certificate a fresh TLS handshake with `port` gets,
/// verified with the CA in `ca_file`.
fn rotations(cp: &ControlPlane) -> anyhow::Result<u64> {
    let out = cp
        .kubectl(
            &[
                "get",
                "secret",
                "-n",
                SYSTEM,
                SECRET,
                "-o",
                "jsonpath={.metadata.annotations.tollgate\\.io/rotations}",
            ],
            None,
        )
        .ok()?;
    out.stdout.trim().parse().context("rotations annotation")
}

fn ca_bundle(cp: &ControlPlane) -> String {
    cp.kubectl(
        &[
            "get",
            "validatingwebhookconfiguration",
            "tollgate",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ],
        None,
    )
    .stdout
    .trim()
    .to_owned()
}

fn writes(webhook: &Webhook) -> usize {
    webhook
        .log()
        .matches("serving certificate Secret written")
        .count()
}

#[test]
fn bootstrap_rotation_and_ca_bundle_through_the_real_apiserver() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let run = || -> anyhow::Result<()> {
        let [port_a, port_b] = tollgate_e2e::ports::free_ports::<2>()?;
        // Mutating through replica A, validating through replica B; no caBundle.
        cp.apply_json(&configurations_at(
            &format!("https://127.0.0.1:{port_a}/mutate"),
            &format!("https://127.0.0.1:{port_b}/validate"),
            None,
        ))?;
        ensure!(ca_bundle(&cp).is_empty(), "caBundle set before start");
        let secret = cp.kubectl(&["get", "secret", "-n", SYSTEM, SECRET], None);
        ensure!(!secret.success, "a Secret before start: {secret}");

        let started = Instant::now();
        let mut a = Webhook::start_managed(&cp, &format!("listen: 127.0.0.1:{port_a}\n{CONFIG}"))?;
        let mut b = Webhook::start_managed(&cp, &format!("listen: 127.0.0.1:{port_b}\n{CONFIG}"))?;
        cp.wait_webhook_in_effect()?;
        eprintln!(
            "certificates: Secret created and caBundle patched; apiserver admitting through both replicas {:.1}s after start",
            started.elapsed().as_secs_f64()
        );
        ensure!(!ca_bundle(&cp).is_empty(), "caBundle not patched");
        cp.kubectl(&["create", "namespace", NAMESPACE], None).ok()?;

        // Rotations under load: create Pods (server-side dry run, so every
        // one passes both webhooks) for at least 14 s and two rotations.
        let ca_file = a.dir().join("ca.crt");
        let first_rotations = rotations(&cp)?;
        let pod = fixture("pod-compliant.yaml");
        let (mut applied, mut failed) = (0, Vec::new());
        let (mut serials_a, mut serials_b) = (BTreeSet::new(), BTreeSet::new());
        let load_started = Instant::now();
        while load_started.elapsed() < Duration::from_secs(14)
            || rotations(&cp)? < first_rotations + 2
        {
            ensure!(
                load_started.elapsed() < Duration::from_secs(60),
                "fewer than two rotations in 60 s"
            );
            let out = cp.kubectl(
                &[
                    "create",
                    "--dry-run=server",
                    "-n",
                    NAMESPACE,
                    "-o",
                    "name",
                    "-f",
                    "-",
                ],
                Some(&pod),
            );
            applied += 1;
            if !out.success {
                failed.push(out.to_string());
            }
            serials_a.insert(served_serial(
                &format!("https://127.0.0.1:{port_a}"),
                Some(&ca_file),
            )?);
            serials_b.insert(served_serial(
                &format!("https://127.0.0.1:{port_b}"),
                Some(&ca_file),
            )?);
        }
        a.ensure_running()?;
        b.ensure_running()?;
        let rotated = rotations(&cp)? - first_rotations;
        eprintln!(
            "certificates: {applied} creates in {:.1}s across {rotated} rotations, {} failed; \
             served serials seen: A {}, B {}",
            load_started.elapsed().as_secs_f64(),
            failed.len(),
            serials_a.len(),
            serials_b.len()
        );
        ensure!(
            failed.is_empty(),
            "failed creates during rotation: {failed:#?}"
        );
        ensure!(
            serials_a.len() >= 3 && serials_b.len() >= 3,
            "new handshakes did not see new certificates: A {serials_a:?}, B {serials_b:?}"
        );

        // Exactly one replica wrote each rotation.
        let counted = wait::until(
            "a quiet moment to count Secret writes",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let before = rotations(&cp)?;
                let total = writes(&a) + writes(&b);
                let after = rotations(&cp)?;
                Ok(if before == after {
                    Poll::Ready((total, after))
                } else {
                    Poll::Pending(format!("{before} → {after}"))
                })
            },
        )?;
        ensure!(
            counted.0 as u64 == counted.1,
            "{} Secret writes logged by the replicas for {} rotations",
            counted.0,
            counted.1
        );

        let metrics = curl(&[
            "-sS",
            "--cacert",
            &ca_file.display().to_string(),
            &format!("https://127.0.0.1:{port_a}/metrics"),
        ])?;
        for series in [
            "tollgate_cert_expiry_timestamp_seconds{cert=\"serving\"}",
            "tollgate_cert_expiry_timestamp_seconds{cert=\"ca\"}",
            "tollgate_cert_rotations_total",
            "tollgate_cert_rotation_failures_total 0",
        ] {
            ensure!(
                metrics.contains(series),
                "no {series} in /metrics:\n{metrics}"
            );
        }

        // Someone removes the caBundle: it is put back.
        let removed = Instant::now();
        cp.kubectl(
            &[
                "patch",
                "validatingwebhookconfiguration",
                "tollgate",
                "--type=json",
                "-p",
                r#"[{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}]"#,
            ],
            None,
        )
        .ok()?;
        wait::until(
            "the caBundle to be restored",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let bundle = ca_bundle(&cp);
                Ok(if bundle.is_empty() {
                    Poll::Pending("still empty".into())
                } else {
                    Poll::Ready(())
                })
            },
        )?;
        eprintln!(
            "certificates: caBundle restored {:.2}s after removal",
            removed.elapsed().as_secs_f64()
        );
        let denied = cp.kubectl(
            &["create", "--dry-run=server", "-n", NAMESPACE, "-f", "-"],
            Some(&fixture("pod-privileged.yaml")),
        );
        ensure!(
            !denied.success && denied.stderr.contains(VALIDATING_WEBHOOK),
            "the restored webhook does not deny: {denied}"
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}\n{}", cp.log_tails(30));
    }
}
