//! Server-side apply through the webhook, as ArgoCD does it: a Deployment
//! applied by two field managers (kubectl, then `argocd-controller`) gets
//! the same verdict and the same mutations as with client-side apply, and
//! our patches cause no managed-field conflicts, on the first apply or on
//! any later one.

use anyhow::{Context as _, ensure};
use serde_json::Value;
use tollgate_e2e::{ControlPlane, Output, Webhook, fixture};

const NAMESPACE: &str = "app-ml-team";
const CONFIG: &str = "policies:\n  overrides:\n    allowed_registries:\n      parameters:\n        registries: [\"registry.example.com/\"]\n";

/// `kubectl apply` of a fixture as `name`; `how` selects client-side
/// (empty) or server-side apply and its field manager.
fn apply(cp: &ControlPlane, fixture_name: &str, name: &str, how: &[&str]) -> Output {
    let manifest = fixture(&format!("ssa/{fixture_name}"));
    let (head, rest) = manifest
        .split_once("metadata:\n  name: ")
        .expect("the fixture has metadata.name first");
    let rest = rest.split_once('\n').map_or("", |(_, r)| r);
    let manifest = format!("{head}metadata:\n  name: {name}\n{rest}");
    let mut args = vec!["apply", "-n", NAMESPACE, "-f", "-"];
    args.extend_from_slice(how);
    cp.kubectl(&args, Some(&manifest))
}

fn deployment(cp: &ControlPlane, name: &str) -> anyhow::Result<Value> {
    let out = cp
        .kubectl(
            &[
                "get",
                "deployment",
                name,
                "-n",
                NAMESPACE,
                "-o",
                "json",
                "--show-managed-fields",
            ],
            None,
        )
        .ok()?;
    serde_json::from_str(&out.stdout).context("kubectl printed no JSON")
}

/// What admission decided about a Deployment: its labels and spec.
fn admitted(deployment: &Value) -> Value {
    serde_json::json!({
        "labels": deployment["metadata"]["labels"],
        "spec": deployment["spec"],
    })
}

/// The webhook's lines of a denial, without kubectl's own wording (which
/// differs between client- and server-side apply).
fn denial(out: &Output) -> Vec<&str> {
    out.stderr
        .lines()
        .flat_map(|l| {
            l.split("denied the request: ")
                .nth(1)
                .into_iter()
                .chain(Some(l))
        })
        .filter(|l| l.starts_with('['))
        .collect()
}

const SSA_KUBECTL: &[&str] = &["--server-side", "--field-manager=kubectl"];
const SSA_ARGOCD: &[&str] = &["--server-side", "--field-manager=argocd-controller"];

#[test]
fn server_side_apply_by_two_managers_matches_client_side_apply() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let webhook =
        Webhook::start_for(&cp, CONFIG).unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let run = || -> anyhow::Result<()> {
        cp.register_webhook(&webhook.base_url(), webhook.ca_pem())?;
        cp.kubectl(&["create", "namespace", NAMESPACE], None).ok()?;

        apply(&cp, "trainer.yaml", "trainer-csa", &[]).ok()?;
        apply(&cp, "trainer.yaml", "trainer-ssa", SSA_KUBECTL).ok()?;
        let client_side = admitted(&deployment(&cp, "trainer-csa")?);
        let first = deployment(&cp, "trainer-ssa")?;
        ensure!(
            first["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
                && first["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
                    .is_object(),
            "server-side apply was not mutated: {}",
            first["spec"]
        );
        ensure!(
            admitted(&first) == client_side,
            "server-side apply stored other mutations than client-side apply:\n\
             server-side: {}\nclient-side: {client_side}",
            admitted(&first)
        );

        // The second manager applies the same manifest, as a sync from Git
        // does: no conflict (no --force-conflicts), nothing changes.
        apply(&cp, "trainer.yaml", "trainer-ssa", SSA_ARGOCD)
            .ok()
            .context("argocd-controller's server-side apply after kubectl's conflicted")?;
        // And each again, in either order: our patches never make a field
        // one manager's that the other then conflicts on.
        apply(&cp, "trainer.yaml", "trainer-ssa", SSA_KUBECTL).ok()?;
        apply(&cp, "trainer.yaml", "trainer-ssa", SSA_ARGOCD).ok()?;
        let last = deployment(&cp, "trainer-ssa")?;
        ensure!(
            admitted(&last) == admitted(&first)
                && last["metadata"]["generation"] == first["metadata"]["generation"],
            "re-applying changed the Deployment: generation {} -> {}\n{}",
            first["metadata"]["generation"],
            last["metadata"]["generation"],
            last["spec"]
        );
        let managers: Vec<&str> = last["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["operation"] == "Apply")
            .filter_map(|m| m["manager"].as_str())
            .collect();
        ensure!(
            managers.contains(&"kubectl") && managers.contains(&"argocd-controller"),
            "expected both managers to own fields: {managers:?}"
        );

        // The same denial, either way.
        let client = apply(&cp, "privileged.yaml", "debugger-csa", &[]);
        let server = apply(&cp, "privileged.yaml", "debugger-ssa", SSA_ARGOCD);
        ensure!(!client.success && !server.success, "{client}\n{server}");
        ensure!(
            denial(&client)
                .iter()
                .any(|l| l.starts_with("[privileged]"))
                && denial(&client) == denial(&server),
            "client-side and server-side apply were not denied alike:\n{client}\n{server}"
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}\n\n{}\n\n{}", webhook.log_tail(40), cp.log_tails(15));
    }
}
