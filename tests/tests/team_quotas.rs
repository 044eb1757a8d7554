//! The team quota controller (`teams.manageQuotas`) against a real
//! kube-apiserver and kube-controller-manager: a team namespace gets a
//! ResourceQuota and a LimitRange named `tollgate-team` that work together
//! (a Pod without resources is defaulted and counted); a deleted quota is
//! recreated and an edited one corrected; a namespace without a team gets
//! neither, and loses Tollgate's (never anybody else's) when it leaves its
//! team.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tollgate_e2e::{ControlPlane, Webhook, wait};

const NAME: &str = "tollgate-team";
const ML: &str = "app-ml-team";
const TIMEOUT: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(200);

/// `kubectl get <kind> tollgate-team -n <namespace> -o json`: the object,
/// or `None` when there is none.
fn get(cp: &ControlPlane, kind: &str, namespace: &str) -> anyhow::Result<Option<Value>> {
    let out = cp.kubectl(&["get", kind, NAME, "-n", namespace, "-o", "json"], None);
    if out.is_not_found() {
        return Ok(None);
    }
    let out = out.ok()?;
    Ok(Some(serde_json::from_str(&out.stdout).with_context(
        || format!("parsing {kind}: {}", out.stdout),
    )?))
}

/// Waits until `check` holds for the `kind` named `tollgate-team` in
/// `namespace` (`None`: there is none); returns how long that took.
fn wait_for(
    cp: &ControlPlane,
    what: &str,
    kind: &str,
    namespace: &str,
    check: impl Fn(Option<&Value>) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    wait::until(what, TIMEOUT, INTERVAL, || {
        let object = get(cp, kind, namespace)?;
        Ok(if check(object.as_ref()) {
            wait::Poll::Ready(started.elapsed())
        } else {
            wait::Poll::Pending(format!("{object:#?}"))
        })
    })
}

fn hard(quota: Option<&Value>) -> Option<&Value> {
    quota.map(|q| &q["spec"]["hard"])
}

/// The LimitRange Tollgate makes from the default resources.
fn default_limits() -> Value {
    json!([{
        "type": "Container",
        "default": {"cpu": "1", "memory": "1Gi"},
        "defaultRequest": {"cpu": "100m", "memory": "128Mi"}
    }])
}

fn managed_for(object: &Value, team: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    labels["app.kubernetes.io/managed-by"] == "tollgate" && labels["team"] == team
}

/// Creates namespace `name`, then waits until the controller has caught
/// up with it: a way to know that earlier changes were reconciled too.
fn sentinel(cp: &ControlPlane, name: &str) -> anyhow::Result<()> {
    cp.kubectl(&["create", "namespace", name], None).ok()?;
    wait_for(
        cp,
        &format!("the sentinel namespace {name} to get its quota"),
        "resourcequota",
        name,
        |q| q.is_some(),
    )?;
    Ok(())
}

#[test]
fn team_namespaces_get_their_quota_and_limit_range() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let config = "ownNamespace: tollgate-system\nteams:\n  manageQuotas: true\n  overrides:\n    ml:\n      quota: {cpu: \"8\", memory: 32Gi, gpu: \"2\", pods: \"50\"}\n";
    let webhook =
        Webhook::start_for(&cp, config).unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let run = || -> anyhow::Result<()> {
        let ml_hard = json!({
            "pods": "50",
            "requests.cpu": "8",
            "requests.memory": "32Gi",
            "requests.nvidia.com/gpu": "2"
        });

        // A new team namespace gets both objects.
        cp.kubectl(&["create", "namespace", ML], None).ok()?;
        let appeared = wait_for(&cp, "the ml quota", "resourcequota", ML, |q| {
            hard(q) == Some(&ml_hard)
        })?;
        let quota = get(&cp, "resourcequota", ML)?.context("the ml quota vanished")?;
        ensure!(managed_for(&quota, "ml"), "the quota's labels: {quota:#}");
        let owner = &quota["metadata"]["ownerReferences"][0];
        ensure!(
            owner["kind"] == "Namespace" && owner["name"] == ML && owner["controller"] == true,
            "the quota's owner: {quota:#}"
        );
        wait_for(&cp, "the ml limit range", "limitrange", ML, |l| {
            l.is_some_and(|l| l["spec"]["limits"] == default_limits() && managed_for(l, "ml"))
        })?;

        // The two work together: kube-controller-manager fills the quota's
        // status, and a Pod that declares no resources is given the
        // LimitRange's defaults (else the quota on requests.cpu would
        // refuse it) and counted.
        wait_for(&cp, "the quota's status.hard", "resourcequota", ML, |q| {
            q.is_some_and(|q| q["status"]["hard"] == ml_hard)
        })?;
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bare", "namespace": ML},
            "spec": {"containers": [{"name": "main", "image": "registry.example.com/ml/trainer:1.4.2"}]}
        });
        let out = cp
            .kubectl(&["create", "-o", "json", "-f", "-"], Some(&pod.to_string()))
            .ok()?;
        let created: Value = serde_json::from_str(&out.stdout)?;
        ensure!(
            created["spec"]["containers"][0]["resources"]
                == json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "128Mi"}}),
            "the Pod was not given the LimitRange's defaults: {created:#}"
        );
        wait_for(
            &cp,
            "the quota to count the Pod",
            "resourcequota",
            ML,
            |q| {
                q.is_some_and(|q| {
                    q["status"]["used"]["pods"] == "1"
                        && q["status"]["used"]["requests.cpu"] == "100m"
                })
            },
        )?;

        // Deleted: recreated.
        let uid = quota["metadata"]["uid"].clone();
        let started = Instant::now();
        cp.kubectl(&["delete", "resourcequota", NAME, "-n", ML], None)
            .ok()?;
        let deleted = started.elapsed();
        let recreated = wait_for(
            &cp,
            "the deleted quota to be recreated",
            "resourcequota",
            ML,
            |q| q.is_some_and(|q| q["metadata"]["uid"] != uid && q["spec"]["hard"] == ml_hard),
        )?;

        // Edited: corrected.
        cp.kubectl(
            &[
                "patch",
                "resourcequota",
                NAME,
                "-n",
                ML,
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"hard":{"pods":"1000"}}}"#,
            ],
            None,
        )
        .ok()?;
        let corrected = wait_for(
            &cp,
            "the edited quota to be corrected",
            "resourcequota",
            ML,
            |q| hard(q) == Some(&ml_hard),
        )?;

        // No team: nothing. Somebody else's `tollgate-team` in a namespace
        // without a team stays, even when its namespace is reconciled.
        cp.kubectl(&["create", "namespace", "plain"], None).ok()?;
        cp.kubectl(&["create", "namespace", "byhand"], None).ok()?;
        cp.kubectl(
            &["create", "quota", NAME, "-n", "byhand", "--hard=pods=3"],
            None,
        )
        .ok()?;
        cp.kubectl(&["label", "namespace", "byhand", "touched=yes"], None)
            .ok()?;
        sentinel(&cp, "app-sentinel-team")?;
        for kind in ["resourcequota", "limitrange"] {
            ensure!(
                get(&cp, kind, "plain")?.is_none(),
                "{kind} {NAME} in a namespace without a team"
            );
        }
        let byhand = get(&cp, "resourcequota", "byhand")?
            .context("somebody else's quota in a namespace without a team was deleted")?;
        ensure!(
            byhand["spec"]["hard"] == json!({"pods": "3"}),
            "somebody else's quota was changed: {byhand:#}"
        );

        // Joining a team by label: the default quota.
        cp.kubectl(&["label", "namespace", "plain", "team=data"], None)
            .ok()?;
        let joined = wait_for(
            &cp,
            "the data quota in plain",
            "resourcequota",
            "plain",
            |q| {
                hard(q)
                    == Some(&json!({
                        "pods": "100",
                        "requests.cpu": "16",
                        "requests.memory": "64Gi",
                        "requests.nvidia.com/gpu": "0"
                    }))
                    && q.is_some_and(|q| managed_for(q, "data"))
            },
        )?;
        wait_for(
            &cp,
            "the data limit range in plain",
            "limitrange",
            "plain",
            |l| l.is_some_and(|l| l["spec"]["limits"] == default_limits()),
        )?;

        // Leaving it: both removed.
        cp.kubectl(&["label", "namespace", "plain", "team-"], None)
            .ok()?;
        let left = wait_for(
            &cp,
            "the quota to leave plain",
            "resourcequota",
            "plain",
            |q| q.is_none(),
        )?;
        wait_for(
            &cp,
            "the limit range to leave plain",
            "limitrange",
            "plain",
            |l| l.is_none(),
        )?;

        eprintln!(
            "team_quotas: quota appeared {:.2}s after the namespace; recreated {:.2}s after the \
             delete returned (kubectl delete took {:.2}s); corrected {:.2}s after the patch; \
             appeared {:.2}s after labelling; removed {:.2}s after unlabelling (polling every {:?})",
            appeared.as_secs_f64(),
            recreated.as_secs_f64(),
            deleted.as_secs_f64(),
            corrected.as_secs_f64(),
            joined.as_secs_f64(),
            left.as_secs_f64(),
            INTERVAL,
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}\n\n{}\n\n{}", webhook.log_tail(40), cp.log_tails(15));
    }
}
