//! Each mutation on real manifests, and idempotency of all of them
//! together: the mutated object mutates to an empty patch.

use super::*;
use crate::config::{GpuConfig, MutateConfig, SecurityDefaults, TeamsConfig};
use serde_json::json;

fn manifest(name: &str) -> Value {
    let path = format!("{}/testdata/mutate/{name}", env!("CARGO_MANIFEST_DIR"));
    yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mutator() -> Mutator {
    let mut teams = TeamsConfig::default();
    teams
        .flyte
        .projects
        .insert("flytesnacks".into(), "ml".into());
    teams.admin_groups.push("platform-admins".into());
    Mutator::new(&teams, &MutateConfig::default()).unwrap()
}

fn ctx<'a>(object: &'a Value, operation: &'a str, groups: &'a [String]) -> Context<'a> {
    Context {
        kind: object["kind"].as_str().unwrap(),
        operation,
        subresource: "",
        namespace: object["metadata"]["namespace"].as_str().unwrap(),
        namespace_labels: None,
        groups,
    }
}

fn mutated(m: &Mutator, object: &Value) -> (json_patch::Patch, Value) {
    match m.mutate(object, &ctx(object, "CREATE", &[])) {
        Outcome::Patch { patch, mutated } => (patch, mutated),
        other => panic!("expected a patch, got {other:?}"),
    }
}

#[test]
fn a_deployment_gets_team_labels_security_and_default_resources() {
    let (_, out) = mutated(&mutator(), &manifest("deployment-trainer.yaml"));
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "trainer", "team": "ml"})
    );
    let template = &out["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"],
        json!({"app": "trainer", "team": "ml"})
    );
    assert_eq!(
        template["spec"]["securityContext"],
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let c = &template["spec"]["containers"][0];
    assert_eq!(
        c["securityContext"],
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "2", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}})
    );
    assert!(template["spec"].get("tolerations").is_none());
    // Untouched fields survive as they were.
    assert_eq!(template["metadata"]["creationTimestamp"], Value::Null);
    assert_eq!(c["args"], json!(["--epochs", "10"]));
}

#[test]
fn a_flyte_gpu_task_pod_gets_its_team_and_gpu_placement() {
    let (_, out) = mutated(&mutator(), &manifest("flyte-task-gpu.yaml"));
    assert_eq!(out["metadata"]["labels"]["team"], "ml");
    assert_eq!(
        out["spec"]["tolerations"],
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(
        out["spec"]["nodeSelector"],
        json!({"nvidia.com/gpu.present": "true"})
    );
    assert_eq!(
        out["spec"]["containers"][0]["resources"]["limits"],
        json!({"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"})
    );
    assert_eq!(
        out["metadata"]["ownerReferences"][0]["kind"],
        "flyteworkflow"
    );
}

#[test]
fn a_jupyter_workspace_pod_keeps_what_its_owner_set() {
    let (patch, out) = mutated(&mutator(), &manifest("workspace-jupyter.yaml"));
    assert_eq!(out["metadata"]["labels"]["team"], "data");
    assert_eq!(
        out["spec"]["securityContext"],
        json!({"fsGroup": 100, "runAsUser": 1000, "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"]["runAsNonRoot"],
        true
    );
    assert!(out["spec"].get("nodeSelector").is_none());
    // Minimal: only additions, no replacement of anything the owner wrote.
    for op in &patch.0 {
        assert!(matches!(op, json_patch::PatchOperation::Add(_)), "{op:?}");
    }
}

#[test]
fn a_cronjob_template_is_found_under_its_job_template() {
    let (_, out) = mutated(&mutator(), &manifest("cronjob-report.yaml"));
    let t = &out["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(t["metadata"]["labels"]["team"], "data");
    assert_eq!(
        t["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "1Gi"
    );
}

#[test]
fn every_fixture_mutates_to_an_empty_patch_the_second_time() {
    let m = mutator();
    for name in [
        "deployment-trainer.yaml",
        "flyte-task-gpu.yaml",
        "workspace-jupyter.yaml",
        "cronjob-report.yaml",
    ] {
        let (_, once) = mutated(&m, &manifest(name));
        assert_eq!(
            m.mutate(&once, &ctx(&once, "CREATE", &[])),
            Outcome::Unchanged,
            "{name}"
        );
        assert_eq!(
            m.mutate(&once, &ctx(&once, "UPDATE", &[])),
            Outcome::Unchanged,
            "{name}"
        );
    }
}

#[test]
fn each_mutation_alone_is_idempotent() {
    let object = manifest("flyte-task-gpu.yaml");
    let mut spec: k8s_openapi::api::core::v1::PodSpec =
        serde_json::from_value(object["spec"].clone()).unwrap();
    let team_defaults = TeamsConfig::default().defaults.resources;
    for step in 0..3 {
        let apply = |s: &mut k8s_openapi::api::core::v1::PodSpec| match step {
            0 => security::apply(
                s,
                &SecurityDefaults::default(),
                crate::pod_security::LevelVersion::RESTRICTED_LATEST,
            ),
            1 => resources::apply(s, &team_defaults),
            _ => gpu::apply(s, &GpuConfig::default()),
        };
        apply(&mut spec);
        let once = spec.clone();
        apply(&mut spec);
        assert_eq!(spec, once, "step {step}");
    }
}

#[test]
fn another_teams_label_is_denied_unless_the_requester_is_an_admin() {
    let mut object = manifest("deployment-trainer.yaml");
    object["metadata"]["labels"]["team"] = json!("data");
    let m = mutator();
    match m.mutate(&object, &ctx(&object, "CREATE", &[])) {
        Outcome::Denied { by: "team_label", message } => assert!(message.starts_with("Deployment \"trainer\" carries the label team=data, but its namespace belongs to team \"ml\""), "{message}"),
        other => panic!("expected a denial, got {other:?}"),
    }
    let admins = ["platform-admins".to_owned()];
    assert!(matches!(
        m.mutate(&object, &ctx(&object, "CREATE", &admins)),
        Outcome::Patch { .. }
    ));
}

#[test]
fn label_keys_with_slashes_are_escaped_in_patch_paths() {
    let teams = TeamsConfig {
        label_key: "tollgate.io/team".into(),
        ..Default::default()
    };
    let m = Mutator::new(&teams, &MutateConfig::default()).unwrap();
    let object = manifest("deployment-trainer.yaml");
    let (patch, out) = mutated(&m, &object);
    let text = serde_json::to_string(&patch).unwrap();
    assert!(
        text.contains(r#""path":"/metadata/labels/tollgate.io~1team""#),
        "{text}"
    );
    assert_eq!(out["metadata"]["labels"]["tollgate.io/team"], "ml");
}

#[test]
fn a_pod_update_only_gets_its_label_and_subresources_are_left_alone() {
    let object = manifest("workspace-jupyter.yaml");
    match mutator().mutate(&object, &ctx(&object, "UPDATE", &[])) {
        Outcome::Patch { patch, .. } => {
            assert_eq!(
                serde_json::to_value(&patch).unwrap(),
                json!([{"op": "add", "path": "/metadata/labels/team", "value": "data"}])
            );
        }
        other => panic!("{other:?}"),
    }
    let mut status = ctx(&object, "UPDATE", &[]);
    status.subresource = "status";
    assert_eq!(mutator().mutate(&object, &status), Outcome::Unchanged);
}

#[test]
fn namespaces_without_a_team_get_defaults_but_no_label() {
    let mut object = manifest("cronjob-report.yaml");
    object["metadata"]["namespace"] = json!("default");
    let (_, out) = mutated(&mutator(), &object);
    assert!(out["metadata"].get("labels").is_none());
    assert_eq!(
        out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
            ["cpu"],
        "100m"
    );
}

#[test]
fn disabled_mutation_changes_nothing() {
    let config = MutateConfig {
        enabled: false,
        ..Default::default()
    };
    let m = Mutator::new(&TeamsConfig::default(), &config).unwrap();
    let object = manifest("deployment-trainer.yaml");
    assert_eq!(
        m.mutate(&object, &ctx(&object, "CREATE", &[])),
        Outcome::Unchanged
    );
}

#[test]
fn a_workspace_deployment_without_an_owner_is_denied_where_it_is_written() {
    let m = mutator();
    let mut deployment = manifest("deployment-trainer.yaml");
    deployment["spec"]["template"]["metadata"]["labels"]["tollgate.io/workspace"] = json!("true");
    match m.mutate(&deployment, &ctx(&deployment, "CREATE", &[])) {
        Outcome::Denied { by, message } => {
            assert_eq!(by, "sidecar");
            assert!(
                message.starts_with("the pod template of Deployment \"trainer\" is a workspace (label tollgate.io/workspace) but names no owner"),
                "{message}"
            );
            assert!(
                message.contains("tollgate.io/workspace: ml-user-1"),
                "{message}"
            );
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // Named for its owner, it is admitted, and its pods get the proxy.
    deployment["spec"]["template"]["metadata"]["labels"]["tollgate.io/workspace"] =
        json!("ml-user-1");
    mutated(&m, &deployment);
}
