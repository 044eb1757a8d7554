//! The Gatekeeper constraints the admission benchmarks share (audit-scale,
//! webhook-apiserver, benches/peers-admission.sh): five of the fixture
//! templates in tests/fixtures/gatekeeper and `count` constraints made from
//! their fixture constraints, renamed and spread over the templates, every
//! one matching Pods and Deployments in the namespaces `namespaces` names.
//! Tollgate loads the directory as files; Gatekeeper gets the same files
//! applied as custom resources.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};

/// The fixture templates used, in the order the constraints cycle through.
pub const TEMPLATES: [&str; 5] = [
    "requiredlabels",
    "allowedrepos",
    "containerlimits",
    "privileged",
    "hostnamespaces",
];

/// Writes `<t>-template.yaml` for each of [`TEMPLATES`] and
/// `constraint-<i>.yaml` for `i` in `0..count` into `dir/gatekeeper`;
/// returns that directory. `namespaces` is the constraints'
/// `match.namespaces` (globs, as Gatekeeper reads them).
pub fn write_dir(dir: &Path, count: usize, namespaces: &[&str]) -> anyhow::Result<PathBuf> {
    let fixtures = tollgate_e2e::fixtures_dir().join("gatekeeper");
    let out = dir.join("gatekeeper");
    std::fs::create_dir_all(&out)?;
    for t in TEMPLATES {
        std::fs::copy(
            fixtures.join(t).join("template.yaml"),
            out.join(format!("{t}-template.yaml")),
        )?;
    }
    for i in 0..count {
        let t = TEMPLATES[i % TEMPLATES.len()];
        let text = std::fs::read_to_string(fixtures.join(t).join("constraint.yaml"))?;
        let mut constraint: Value =
            yaml_serde::from_str(&text).with_context(|| format!("{t}/constraint.yaml"))?;
        let name = format!(
            "{}-{i}",
            constraint["metadata"]["name"].as_str().unwrap_or(t)
        );
        constraint["metadata"]["name"] = name.into();
        constraint["spec"]["match"] = json!({"kinds": [
            {"apiGroups": [""], "kinds": ["Pod"]},
            {"apiGroups": ["apps"], "kinds": ["Deployment"]}],
            "namespaces": namespaces});
        std::fs::write(
            out.join(format!("constraint-{i}.yaml")),
            yaml_serde::to_string(&constraint)?,
        )?;
    }
    Ok(out)
}

/// A Pod every one of the constraints admits: `team` and `owner` labels,
/// an image from the repository `allowedrepos` allows, limits, nothing
/// privileged or on the host's namespaces.
pub fn compliant_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "team": "ml", "owner": "bench"}},
        "spec": {
            "containers": [{
                "name": "main",
                "image": "registry.example.com/pause:3.9",
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"cpu": "200m", "memory": "128Mi"}
                },
                "securityContext": {"privileged": false}
            }]
        }
    })
}

/// [`compliant_pod`] made privileged: the `privileged` constraints deny it.
pub fn violating_pod(name: &str) -> Value {
    let mut pod = compliant_pod(name);
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true);
    pod
}
