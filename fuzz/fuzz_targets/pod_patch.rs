//! JSON Patch generation on arbitrary objects: `mutate::Mutator` (team
//! labels, security context, default resources, GPU placement, sidecar
//! injection) on a fuzz-chosen object and request context.
//!
//! Input: one control byte, then the object as JSON. The control byte
//! picks the operation (bit 0: UPDATE), the sidecar mode (bit 1: native),
//! the namespace's labels (bit 2: a team label; bit 3: the workspace
//! label), the requester (bit 4: a platform admin) and the namespace
//! (bits 5-6: a team namespace, a Flyte one, an unknown one, or the
//! object's own `metadata.namespace`).
//!
//! Invariants: mutation never panics; a patch applied to the input yields
//! exactly the mutated object the mutator reports; mutating that object
//! again (same context) yields no patch; and the patch survives a JSON
//! round trip (what the apiserver receives).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_webhook::config::{MutateConfig, SidecarMode, TeamsConfig};
use tollgate_webhook::mutate::{Context, Mutator, Outcome};
use tollgate_webhook::teams::Labels;

fn mutators() -> &'static [Mutator; 2] {
    static MUTATORS: OnceLock<[Mutator; 2]> = OnceLock::new();
    MUTATORS.get_or_init(|| {
        let mut teams = TeamsConfig::default();
        teams
            .flyte
            .projects
            .insert("flytesnacks".into(), "ml".into());
        teams.admin_groups.push("platform-admins".into());
        let plain = MutateConfig::default();
        let mut native = MutateConfig::default();
        native.sidecar.mode = SidecarMode::Native;
        [
            Mutator::new(&teams, &plain).expect("plain-sidecar mutator"),
            Mutator::new(&teams, &native).expect("native-sidecar mutator"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, json)) = data.split_first() else {
        return;
    };
    let Ok(object) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let mutator = &mutators()[usize::from(control & 2 != 0)];
    let operation = if control & 1 == 0 { "CREATE" } else { "UPDATE" };
    let mut labels = Labels::new();
    if control & 4 != 0 {
        labels.insert("team".into(), "data".into());
    }
    if control & 8 != 0 {
        labels.insert("tollgate.io/workspace".into(), "ml-user-1".into());
    }
    let labels = (control & 12 != 0).then_some(labels);
    let groups = if control & 16 != 0 {
        vec!["platform-admins".to_owned()]
    } else {
        vec!["developers".to_owned()]
    };
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("Pod")
        .to_owned();
    let namespace = match (control >> 5) & 3 {
        0 => "app-ml-team".to_owned(),
        1 => "flytesnacks-development".to_owned(),
        2 => "default".to_owned(),
        _ => object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    };
    let ctx = Context {
        kind: &kind,
        operation,
        subresource: "",
        namespace: &namespace,
        namespace_labels: labels.as_ref(),
        groups: &groups,
    };

    let Outcome::Patch { patch, mutated } = mutator.mutate(&object, &ctx) else {
        return;
    };
    assert!(!patch.0.is_empty(), "an empty patch reported as a patch");

    // What the apiserver gets is the serialized patch.
    let wire = serde_json::to_vec(&patch).expect("serializing a patch");
    let patch: json_patch::Patch = serde_json::from_slice(&wire)
        .unwrap_or_else(|e| panic!("the serialized patch does not parse back: {e}"));

    let mut applied = object.clone();
    json_patch::patch(&mut applied, &patch)
        .unwrap_or_else(|e| panic!("the patch does not apply to its own input: {e}"));
    assert_eq!(
        applied, mutated,
        "applying the patch to the input does not give the mutated object"
    );

    match mutator.mutate(&mutated, &ctx) {
        Outcome::Unchanged => {}
        Outcome::Patch { patch, .. } => panic!(
            "mutating the mutated object again made another patch: {}",
            serde_json::to_string(&patch).unwrap_or_default()
        ),
        Outcome::Denied { by, message } => {
            panic!("mutating the mutated object again was refused by {by}: {message}")
        }
    }
});
