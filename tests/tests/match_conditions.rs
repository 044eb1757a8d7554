//! `matchConditions` on both webhook configurations: the requests of the
//! requesters the webhook exempts anyway (kubelets, the scheduler, the
//! controllers that only maintain objects) are never sent, as the
//! webhook's own request counter shows; everyone else's are.

use anyhow::ensure;
use serde_json::json;
use tollgate_e2e::{ControlPlane, Webhook};

const NAMESPACE: &str = "app-ml-team";

/// A privileged Pod: the webhook would deny it from anyone it judges.
fn privileged_pod(name: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{
            "name": "app",
            "image": "registry.k8s.io/pause:3.9",
            "securityContext": {"privileged": true}
        }]}
    })
    .to_string()
}

#[test]
fn exempt_requesters_are_never_sent_to_the_webhook() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let webhook =
        Webhook::start_for(&cp, "").unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let run = || -> anyhow::Result<()> {
        cp.register_webhook(&webhook.base_url(), webhook.ca_pem())?;
        cp.kubectl(&["create", "namespace", NAMESPACE], None).ok()?;
        // The same rights for every requester below.
        cp.grant_pod_creation(
            NAMESPACE,
            &[
                "--group=system:nodes",
                "--user=system:kube-scheduler",
                "--user=alice",
            ],
        )?;

        for (name, who) in [
            (
                "by-kubelet",
                ["--as=system:node:worker-1", "--as-group=system:nodes"].as_slice(),
            ),
            ("by-scheduler", ["--as=system:kube-scheduler"].as_slice()),
        ] {
            cp.wait_allowed(who, "create", "pods", NAMESPACE)?;
            let before = webhook.admission_requests()?;
            let mut args = vec!["-n", NAMESPACE, "create", "-f", "-"];
            args.extend_from_slice(who);
            cp.kubectl(&args, Some(&privileged_pod(name))).ok()?;
            let after = webhook.admission_requests()?;
            ensure!(
                before == after,
                "the apiserver sent {who:?}'s Pod to the webhook ({before} -> {after} requests)"
            );
        }

        // A normal user with the same rights: sent to both webhooks, denied.
        cp.wait_allowed(&["--as=alice"], "create", "pods", NAMESPACE)?;
        let before = webhook.admission_requests()?;
        let out = cp.kubectl(
            &["-n", NAMESPACE, "create", "-f", "-", "--as=alice"],
            Some(&privileged_pod("by-alice")),
        );
        ensure!(
            !out.success && out.stderr.contains("[privileged]"),
            "alice's privileged Pod was not denied: {out}"
        );
        let after = webhook.admission_requests()?;
        ensure!(
            after >= before + 2,
            "alice's Pod should reach /mutate and /validate ({before} -> {after} requests)"
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}\n\n{}\n\n{}", webhook.log_tail(40), cp.log_tails(15));
    }
}
