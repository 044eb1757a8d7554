//! The control plane alone, without the webhook: the harness itself works.

use std::time::{Duration, Instant};

use tollgate_e2e::{ControlPlane, fixture};

#[test]
fn control_plane_starts() {
    let started = Instant::now();
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("{e:#}"));

    let out = cp.kubectl(&["create", "namespace", "smoke"], None);
    assert!(out.success, "creating namespace smoke: {out}");

    let out = cp.kubectl(
        &["apply", "-n", "smoke", "-f", "-"],
        Some(&fixture("deployment-trainer.yaml")),
    );
    assert!(out.success, "applying the trainer Deployment: {out}");

    let pods = cp
        .wait_for_pods("smoke", "app=trainer", Duration::from_secs(60))
        .unwrap_or_else(|e| {
            panic!(
                "the controller-manager created no Pod for the Deployment: {e:#}\n\n{}",
                cp.log_tails(30)
            )
        });
    eprintln!(
        "control_plane_starts: pods {pods:?}; start-up {:.1}s, whole test {:.1}s",
        cp.startup_time().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
