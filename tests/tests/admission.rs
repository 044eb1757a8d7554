//! Admission through a real kube-apiserver: `kubectl` → kube-apiserver →
//! `tollgate serve` (validating and mutating webhooks) → kubectl's output.
//!
//! One control plane and one webhook serve every case. The cases run in
//! order as named steps of one test, so the processes belong to that test's
//! stack and are killed when it ends, passed or failed.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tollgate_e2e::{ControlPlane, Output, Webhook, fixture};

/// The namespace the team's workloads go in.
const NAMESPACE: &str = "app-ml-team";

/// On top of the harness's defaults: the image tag policy only warns, and
/// the registries the fixtures use are the allowed ones.
const EXTRA_CONFIG: &str = r#"
policies:
  overrides:
    image_tag: { enforcement: warn }
    allowed_registries:
      parameters:
        registries: ["registry.example.com/", "docker.io/library/"]
"#;

struct Harness {
    cp: ControlPlane,
    webhook: Webhook,
}

impl Harness {
    fn apply(&self, namespace: &str, manifest: &str, extra: &[&str]) -> Output {
        let mut args = vec!["apply", "-n", namespace];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-f", "-"]);
        self.cp.kubectl(&args, Some(&fixture(manifest)))
    }

    fn get_pod(&self, namespace: &str, name: &str) -> Output {
        self.cp
            .kubectl(&["get", "pod", name, "-n", namespace, "-o", "name"], None)
    }

    /// Runs one case; a failure names the step and quotes the webhook's and
    /// the control plane's logs.
    fn step<T>(&self, name: &str, case: impl FnOnce(&Harness) -> anyhow::Result<T>) -> T {
        let started = Instant::now();
        match case(self) {
            Ok(value) => {
                eprintln!("step {name}: ok in {:.1}s", started.elapsed().as_secs_f64());
                value
            }
            Err(err) => panic!(
                "step {name} failed: {err:#}\n\n{}\n\n{}",
                self.webhook.log_tail(40),
                self.cp.log_tails(15)
            ),
        }
    }
}

/// Everything after `denied the request: ` in kubectl's stderr: the
/// webhook's `status.message`, which spans one line per violation.
fn denial_message(out: &Output) -> anyhow::Result<&str> {
    out.stderr
        .split_once("denied the request: ")
        .map(|(_, message)| message.trim())
        .with_context(|| format!("no admission denial in: {out}"))
}

fn ensure_denied_privileged(out: &Output) -> anyhow::Result<String> {
    ensure!(!out.success, "expected a denial: {out}");
    ensure!(
        out.stderr
            .contains("admission webhook \"validate.tollgate.io\" denied the request"),
        "not denied by validate.tollgate.io: {out}"
    );
    let message = denial_message(out)?;
    ensure!(
        message.contains("[privileged]")
            && message.contains("must not set securityContext.privileged=true"),
        "the denial does not name [privileged] / 'must not set securityContext.privileged=true': {out}"
    );
    Ok(message.to_owned())
}

#[test]
fn admission_through_real_apiserver() {
    let started = Instant::now();
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let webhook =
        Webhook::start(EXTRA_CONFIG).unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let h = Harness { cp, webhook };

    h.step("register the webhook", |h| {
        h.cp.register_webhook(&h.webhook.base_url(), h.webhook.ca_pem())
    });

    h.step("create namespace app-ml-team", |h| {
        h.cp.kubectl(&["create", "namespace", NAMESPACE], None)
            .ok()?;
        Ok(())
    });

    h.step("a. a compliant Deployment is admitted and gets Pods", |h| {
        h.apply(NAMESPACE, "deployment-trainer.yaml", &[]).ok()?;
        let pods =
            h.cp.wait_for_pods(NAMESPACE, "app=trainer", Duration::from_secs(60))
                .context("the ReplicaSet's Pods were not created (admitted)")?;
        eprintln!("  pods: {pods:?}");
        Ok(())
    });

    let denial = h.step("b. a privileged Pod is denied", |h| {
        let out = h.apply(NAMESPACE, "pod-privileged.yaml", &[]);
        let message = ensure_denied_privileged(&out)?;
        let get = h.get_pod(NAMESPACE, "privileged");
        ensure!(get.is_not_found(), "the denied Pod exists: {get}");
        Ok(message)
    });

    h.step(
        "c. an image tagged :latest is admitted with a warning",
        |h| {
            let out = h.apply(NAMESPACE, "pod-latest-tag.yaml", &[]).ok()?;
            ensure!(
                out.warnings().iter().any(|w| w.contains("[image_tag]")),
                "no `Warning: ... [image_tag] ...` line on stderr: {out}"
            );
            let get = h.get_pod(NAMESPACE, "notebook");
            ensure!(get.success, "the warned Pod was not created: {get}");
            Ok(())
        },
    );

    h.step("d. server-side dry runs: denied alike, admitted without effect", |h| {
        let out = h.apply(NAMESPACE, "pod-privileged.yaml", &["--dry-run=server"]);
        let message = ensure_denied_privileged(&out)?;
        ensure!(
            message == denial,
            "the dry-run denial differs from the real one:\n  dry run: {message}\n  real:    {denial}"
        );
        h.apply(NAMESPACE, "pod-compliant.yaml", &["--dry-run=server"])
            .ok()?;
        let get = h.get_pod(NAMESPACE, "compliant");
        ensure!(get.is_not_found(), "a dry run created the Pod: {get}");
        Ok(())
    });

    h.step(
        "e. a privileged Pod in kube-system (exempt) is admitted",
        |h| {
            h.apply("kube-system", "pod-privileged.yaml", &[]).ok()?;
            let get = h.get_pod("kube-system", "privileged");
            ensure!(get.success, "the exempt Pod was not created: {get}");
            Ok(())
        },
    );

    h.step(
        "f. a Pod violating two policies is denied naming both",
        |h| {
            let out = h.apply(NAMESPACE, "pod-privileged-untrusted-registry.yaml", &[]);
            ensure!(!out.success, "expected a denial: {out}");
            let message = denial_message(&out)?;
            ensure!(
                message.contains("[privileged]") && message.contains("[allowed_registries]"),
                "the denial does not name both [privileged] and [allowed_registries]: {out}"
            );
            Ok(())
        },
    );

    eprintln!(
        "admission_through_real_apiserver: control plane up in {:.1}s, webhook in {:.1}s, all in {:.1}s",
        h.cp.startup_time().as_secs_f64(),
        h.webhook.startup_time().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
