//! Gatekeeper ConstraintTemplates and constraints, loaded by `tollgate
//! serve` from a policy directory, enforced through a real kube-apiserver:
//! the same objects `tollgate verify` judges in tests/fixtures/gatekeeper.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use tollgate_e2e::{ControlPlane, Output, Webhook, fixture, fixtures_dir};

struct Harness {
    cp: ControlPlane,
    webhook: Webhook,
}

impl Harness {
    fn apply_text(&self, namespace: &str, manifest: &str) -> Output {
        self.cp
            .kubectl(&["apply", "-n", namespace, "-f", "-"], Some(manifest))
    }

    fn apply(&self, namespace: &str, name: &str) -> Output {
        self.apply_text(namespace, &fixture(&format!("gatekeeper/{name}")))
    }

    fn step(&self, name: &str, case: impl FnOnce(&Harness) -> anyhow::Result<()>) {
        let started = Instant::now();
        if let Err(err) = case(self) {
            panic!(
                "step {name} failed: {err:#}\n\n{}\n\n{}",
                self.webhook.log_tail(40),
                self.cp.log_tails(15)
            );
        }
        eprintln!("step {name}: ok in {:.1}s", started.elapsed().as_secs_f64());
    }
}

fn denied_with(out: &Output, expected: &[&str]) -> anyhow::Result<()> {
    ensure!(!out.success, "expected a denial: {out}");
    let message = out
        .stderr
        .split_once("admission webhook \"validate.tollgate.io\" denied the request: ")
        .map(|(_, m)| m.trim())
        .with_context(|| format!("not denied by validate.tollgate.io: {out}"))?;
    for line in expected {
        ensure!(
            message.lines().any(|l| l == *line),
            "the denial lacks the line {line:?}:\n{message}"
        );
    }
    ensure!(
        message.lines().count() == expected.len(),
        "the denial has other lines too:\n{message}"
    );
    Ok(())
}

#[test]
fn gatekeeper_templates_through_real_apiserver() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let dir = fixtures_dir().join("gatekeeper");
    // Validation only: the templates judge the objects as written, not as
    // the mutating webhook would complete them.
    // Ingresses are synced into data.inventory for the uniqueness template.
    let config = format!(
        "mutate:\n  enabled: false\npolicies:\n  dirs: [{:?}]\n  sync:\n  - {{group: networking.k8s.io, version: v1, kind: Ingress}}\n",
        dir.display().to_string()
    );
    let webhook =
        Webhook::start_for(&cp, &config).unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let h = Harness { cp, webhook };

    h.step("register the webhook", |h| {
        h.cp.register_webhook(&h.webhook.base_url(), h.webhook.ca_pem())
    });
    h.step("create the team namespaces", |h| {
        for ns in ["app-ml-team", "app-data-team"] {
            h.cp.kubectl(&["create", "namespace", ns], None).ok()?;
        }
        Ok(())
    });

    h.step("K8sPSPPrivilegedContainer denies a privileged Pod", |h| {
        denied_with(
            &h.apply("app-ml-team", "privileged/disallowed.yaml"),
            &[r#"[psp-privileged-container] Privileged container is not allowed: shell, securityContext: {"privileged": true}"#],
        )?;
        h.apply("app-ml-team", "privileged/allowed.yaml").ok()?;
        Ok(())
    });

    h.step("K8sAllowedRepos denies images from elsewhere, with every violation", |h| {
        denied_with(
            &h.apply("app-data-team", "allowedrepos/disallowed.yaml"),
            &[
                r#"[repo-is-internal] container <jupyter> has an invalid image repo <evil.example.org/jupyter:1.0>, allowed repos are ["registry.example.com/"]"#,
                r#"[repo-is-internal] initContainer <fetch> has an invalid image repo <docker.io/curlimages/curl:8.8.0>, allowed repos are ["registry.example.com/"]"#,
            ],
        )
    });

    h.step("K8sPSPHostNamespace honours its labelSelector", |h| {
        denied_with(
            &h.apply("app-ml-team", "hostnamespaces/disallowed.yaml"),
            &["[psp-host-namespace] Sharing the host namespace is not allowed: nosy"],
        )?;
        h.apply("app-ml-team", "hostnamespaces/allowed.yaml").ok()?;
        Ok(())
    });

    h.step(
        "K8sContainerLimits in warn mode admits with a Warning",
        |h| {
            let out = h
                .apply("app-data-team", "containerlimits/disallowed.yaml")
                .ok()?;
            ensure!(
                out.warnings().iter().any(|w| w.contains(
                    "[containers-must-have-limits] container <shell> has no memory limit"
                )),
                "no warning: {out}"
            );
            Ok(())
        },
    );

    h.step("K8sRequiredLabels denies a Deployment missing labels", |h| {
        denied_with(
            &h.apply("app-ml-team", "requiredlabels/disallowed.yaml"),
            &[
                r#"[deployments-need-team-and-owner] you must provide labels: {"owner"}"#,
                "[deployments-need-team-and-owner] Label <team: ML_Team> does not satisfy allowed regex: ^[a-z][a-z0-9-]*$",
            ],
        )
    });

    h.step(
        "K8sImmutableLabel (Rego v1) denies changing the team on UPDATE",
        |h| {
            let manifest = fixture("gatekeeper/requiredlabels/allowed.yaml");
            h.apply_text("app-ml-team", &manifest).ok()?;
            let stolen = manifest.replace("team: ml", "team: data");
            ensure!(stolen != manifest, "the fixture changed shape");
            denied_with(
                &h.apply_text("app-ml-team", &stolen),
                &[r#"[team-label-is-immutable] label team cannot change from "ml" to "data""#],
            )
        },
    );
}
