//! The mutating webhook: each concern is a module with a pure function on
//! a typed pod spec (k8s-openapi); the JSON Patch is the diff of the object
//! before and after, so mutating an already-mutated object yields an empty
//! patch and `reinvocationPolicy: IfNeeded` is safe.
//!
//! Order: team labels, security context, default resources, GPU placement.
//! A Pod UPDATE only gets its team label: a Pod's spec is immutable.

pub mod gpu;
pub mod resources;
pub mod security;
pub mod sidecar;
pub mod team;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use crate::config::{MutateConfig, TeamsConfig};
use crate::pod_security::NamespacePolicy;
use crate::teams::{Labels, TeamResolver};

/// What the request is about, beyond the object itself.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub kind: &'a str,
    pub operation: &'a str,
    /// `request.subResource`: subresources (status, scale…) are not ours.
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub namespace_labels: Option<&'a Labels>,
    /// The requester's groups (`userInfo.groups`).
    pub groups: &'a [String],
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Unchanged,
    Patch {
        patch: json_patch::Patch,
        mutated: Value,
    },
    /// `by` names the mutation that refused (`team_label`, `sidecar`).
    Denied {
        by: &'static str,
        message: String,
    },
}

pub struct Mutator {
    teams: TeamsConfig,
    resolver: TeamResolver,
    config: MutateConfig,
    /// Inject the proxy as a native sidecar (`mode` resolved).
    native_sidecar: bool,
}

/// Where a kind keeps its pod template; `""` is the object itself (a Pod).
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn labels_of(object: &Value) -> Option<BTreeMap<String, String>> {
    object
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
}

/// Writes `template` (metadata and spec) at `pointer` in `object`.
fn put_template(object: &mut Value, pointer: &str, template: &PodTemplateSpec) -> Option<()> {
    let slot = if pointer.is_empty() {
        object
    } else {
        object.pointer_mut(pointer)?
    };
    let map = slot.as_object_mut()?;
    for (key, value) in [
        ("metadata", serde_json::to_value(&template.metadata).ok()?),
        ("spec", serde_json::to_value(&template.spec).ok()?),
    ] {
        // An absent part stays absent rather than becoming `null`.
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.into(), value);
        }
    }
    Some(())
}

fn after_meta(
    template: &mut PodTemplateSpec,
) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    template.metadata.get_or_insert_with(Default::default)
}

impl Mutator {
    pub fn new(teams: &TeamsConfig, config: &MutateConfig) -> Result<Mutator, regex::Error> {
        Ok(Mutator {
            teams: teams.clone(),
            resolver: TeamResolver::new(teams)?,
            config: config.clone(),
            native_sidecar: config.sidecar.mode == crate::config::SidecarMode::Native,
        })
    }

    /// The Pod Security levels of `namespace` (PSA's labels among `labels`
    /// over its team's default), which the `pod_security` policies judge by.
    pub fn pod_security(&self, namespace: &str, labels: Option<&Labels>) -> NamespacePolicy {
        let team = self.resolver.team_of(namespace, labels);
        NamespacePolicy::resolve(labels, self.teams.pod_security(team.as_deref()))
    }

    /// The team that owns `namespace`, as the team label mutation decides.
    pub fn team_of(&self, namespace: &str, labels: Option<&Labels>) -> Option<String> {
        self.resolver.team_of(namespace, labels)
    }

    /// Mutates `object` (the request's `object`).
    pub fn mutate(&self, object: &Value, ctx: &Context) -> Outcome {
        self.mutate_reporting(object, ctx).0
    }

    /// Like [`Mutator::mutate`], also saying what sidecar injection decided
    /// (for Pod CREATEs).
    pub fn mutate_reporting(
        &self,
        object: &Value,
        ctx: &Context,
    ) -> (Outcome, Option<sidecar::Decision>) {
        let mut decision = None;
        let outcome = self.mutate_inner(object, ctx, &mut decision);
        (outcome, decision)
    }

    fn mutate_inner(
        &self,
        object: &Value,
        ctx: &Context,
        decision: &mut Option<sidecar::Decision>,
    ) -> Outcome {
        if !self.config.enabled
            || !ctx.subresource.is_empty()
            || !matches!(ctx.operation, "CREATE" | "UPDATE")
        {
            return Outcome::Unchanged;
        }
        let Some(pointer) = template_pointer(ctx.kind) else {
            return Outcome::Unchanged;
        };
        let template_json = if pointer.is_empty() {
            Some(object)
        } else {
            object.pointer(pointer)
        };
        let Some(template_json) = template_json else {
            return Outcome::Unchanged;
        };
        let parts = serde_json::json!({
            "metadata": template_json.get("metadata").cloned().unwrap_or_default(),
            "spec": template_json.get("spec").cloned().unwrap_or_default(),
        });
        let before: PodTemplateSpec = match serde_json::from_value(parts) {
            Ok(t) => t,
            Err(e) => {
                // The apiserver validates the object after us and will say
                // what is wrong with it better than we can.
                tracing::debug!(error = %e, "not a pod template; left unmutated");
                return Outcome::Unchanged;
            }
        };
        let mut after = before.clone();
        let mut object_labels = labels_of(object);
        let name = object
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .or_else(|| {
                object
                    .pointer("/metadata/generateName")
                    .and_then(|n| n.as_str())
            })
            .unwrap_or("");
        let what = format!("{} {name:?}", ctx.kind);

        let team = self.resolver.team_of(ctx.namespace, ctx.namespace_labels);
        if let Some(team) = &team {
            let admin = ctx
                .groups
                .iter()
                .any(|g| self.teams.admin_groups.contains(g));
            let key = self.resolver.label_key();
            let stamped = if pointer.is_empty() {
                team::stamp(&mut after_meta(&mut after).labels, key, team, admin, &what)
            } else {
                team::stamp(&mut object_labels, key, team, admin, &what).and_then(|()| {
                    team::stamp(
                        &mut after_meta(&mut after).labels,
                        key,
                        team,
                        admin,
                        &format!("the pod template of {what}"),
                    )
                })
            };
            if let Err(team::Denial(message)) = stamped {
                return Outcome::Denied {
                    by: "team_label",
                    message,
                };
            }
        }
        // A workspace without an owner is refused where it is written (a
        // Deployment's template as well as a Pod), never injected open. A
        // Pod UPDATE cannot change what was injected.
        let pod_update = ctx.kind == "Pod" && ctx.operation == "UPDATE";
        if self.config.sidecar.enabled && !pod_update && ctx.kind != "Pod" {
            let meta = after.metadata.clone().unwrap_or_default();
            let subject = format!("the pod template of {what}");
            if let Err(sidecar::BadAnnotation(message)) =
                sidecar::ownership(&meta, &self.config.sidecar, team.as_deref(), &subject)
            {
                return Outcome::Denied {
                    by: "sidecar",
                    message,
                };
            }
        }
        if ctx.kind == "Pod" && ctx.operation == "CREATE" && self.config.sidecar.enabled {
            let spec = after.spec.get_or_insert_with(Default::default);
            let meta = after.metadata.get_or_insert_with(Default::default);
            match sidecar::apply(
                meta,
                spec,
                ctx.namespace_labels,
                &self.config.sidecar,
                self.native_sidecar,
                team.as_deref(),
            ) {
                Ok(d) => *decision = Some(d),
                Err(sidecar::BadAnnotation(message)) => {
                    return Outcome::Denied {
                        by: "sidecar",
                        message,
                    };
                }
            }
        }
        if let (Some(spec), false) = (after.spec.as_mut(), pod_update) {
            let defaults = match &team {
                Some(team) => self.teams.resources(team),
                None => &self.teams.defaults.resources,
            };
            let pod_security = self.teams.pod_security(team.as_deref());
            let target = NamespacePolicy::resolve(ctx.namespace_labels, pod_security).strictest();
            security::apply(spec, &self.config.security, target);
            resources::apply(spec, defaults);
            gpu::apply(spec, &self.config.gpu);
        }

        let mut old = object.clone();
        let mut new = object.clone();
        let written = put_template(&mut old, pointer, &before)
            .and_then(|()| put_template(&mut new, pointer, &after));
        if written.is_none() {
            return Outcome::Unchanged;
        }
        if !pointer.is_empty()
            && let (Some(labels), Some(meta)) = (
                object_labels,
                new.get_mut("metadata").and_then(|m| m.as_object_mut()),
            )
        {
            meta.insert(
                "labels".into(),
                serde_json::to_value(labels).unwrap_or_default(),
            );
        }
        let patch = json_patch::diff(&old, &new);
        if patch.0.is_empty() {
            return Outcome::Unchanged;
        }
        // What the apiserver will store: the original with the patch applied.
        let mut mutated = object.clone();
        if let Err(e) = json_patch::patch(&mut mutated, &patch) {
            tracing::error!(error = %e, "a generated patch does not apply to its own object");
            return Outcome::Unchanged;
        }
        Outcome::Patch { patch, mutated }
    }
}

#[cfg(test)]
mod tests;
