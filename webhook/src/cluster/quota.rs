//! The team quota controller: every namespace that belongs to a team gets
//! a ResourceQuota and a LimitRange named [`NAME`], sized by the team's
//! settings (`teams.defaults`, `teams.overrides`); a namespace that no
//! longer belongs to a team loses the ones Tollgate made.
//!
//! A kube-runtime [`Controller`] over Namespaces. Both objects carry the
//! [`MANAGED_BY`] label and an ownerReference to their Namespace (so they
//! go with it, and say who made them), and the controller watches the
//! labelled ones (metadata only), so deleting or editing one reconciles its
//! namespace at once. Objects are written by server-side apply with
//! `force`, which also undoes edits to the fields Tollgate sets
//! (`spec.hard`, the LimitRange's defaults).
//!
//! The watches map an object to its Namespace themselves ([`namespace_of`])
//! rather than through `Controller::owns`: `owns` keys the owner by the
//! *child's* namespace (`Namespace/plain` in `plain`), so a cluster-scoped
//! owner gets two scheduler keys, one per kind of trigger, and the same
//! namespace could be reconciled twice at once. With one key, triggers for
//! a namespace are deduplicated and its reconciles never overlap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{NamespaceResourceScope, Resource as _};
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::TeamsConfig;
use crate::teams::TeamResolver;

/// The name of both objects in every team namespace.
pub const NAME: &str = "tollgate-team";
/// The label that marks the objects Tollgate manages (and may delete).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tollgate");
/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "tollgate";
/// The safety-net reconcile of every namespace, beside the watches.
pub const RESYNC: Duration = Duration::from_secs(300);
/// The retry after a failed reconcile.
pub const RETRY: Duration = Duration::from_secs(5);
/// How long a namespace's triggers settle before it is reconciled: long
/// enough to fold the watch events of our own two applies into one
/// reconcile, short enough not to matter to a user.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// At most this many namespaces are reconciled at once.
pub const CONCURRENCY: u16 = 4;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {kind} {namespace}/{NAME}: {source}")]
    Kube {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// What a team namespace should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamObjects {
    pub quota: ResourceQuota,
    pub limits: LimitRange,
}

/// The ResourceQuota and LimitRange for namespace `namespace` (whose uid is
/// `uid`, for the ownerReference) of team `team`.
pub fn team_objects(namespace: &str, uid: &str, team: &str, teams: &TeamsConfig) -> TeamObjects {
    let metadata = ObjectMeta {
        name: Some(NAME.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (teams.label_key.clone(), team.to_owned()),
        ])),
        owner_references: Some(vec![OwnerReference {
            api_version: Namespace::API_VERSION.to_owned(),
            kind: Namespace::KIND.to_owned(),
            name: namespace.to_owned(),
            uid: uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: None,
        }]),
        ..ObjectMeta::default()
    };
    let quota = teams.quota(team);
    let hard = [
        ("requests.cpu", &quota.cpu),
        ("requests.memory", &quota.memory),
        ("requests.nvidia.com/gpu", &quota.gpu),
        ("pods", &quota.pods),
    ]
    .into_iter()
    .map(|(resource, amount)| (resource.to_owned(), Quantity(amount.clone())))
    .collect();
    let resources = teams.resources(team);
    let quantities = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(resource, amount)| (resource.clone(), Quantity(amount.clone())))
                .collect()
        })
    };
    TeamObjects {
        quota: ResourceQuota {
            metadata: metadata.clone(),
            spec: Some(ResourceQuotaSpec {
                hard: Some(hard),
                ..ResourceQuotaSpec::default()
            }),
            status: None,
        },
        limits: LimitRange {
            metadata,
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    type_: "Container".to_owned(),
                    default: quantities(&resources.limits),
                    default_request: quantities(&resources.requests),
                    ..LimitRangeItem::default()
                }],
            }),
        },
    }
}

struct Context {
    client: Client,
    teams: TeamsConfig,
    resolver: TeamResolver,
}

/// Runs the controller until the process ends. Reconcile failures are
/// logged and retried after [`RETRY`]; watch failures are logged and
/// retried with kube-runtime's default backoff.
pub async fn run(client: Client, teams: TeamsConfig) {
    let resolver = match TeamResolver::new(&teams) {
        Ok(resolver) => resolver,
        Err(e) => {
            // Config::parse checked the pattern, so this is a bug.
            tracing::error!(error = %e, "teams.namespacePattern; the quota controller is not running");
            return;
        }
    };
    let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let context = Arc::new(Context {
        client: client.clone(),
        teams,
        resolver,
    });
    tracing::info!("team quota controller starting");
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<PartialObjectMeta<ResourceQuota>>::all(client.clone()),
        managed.clone(),
        namespace_of,
    )
    .watches(
        Api::<PartialObjectMeta<LimitRange>>::all(client),
        managed,
        namespace_of,
    )
    // A burst (our own two applies, a quota's status updates) reconciles
    // once; at most a few namespaces at a time, so that start-up does not
    // flood the API server.
    .with_config(
        controller::Config::default()
            .debounce(DEBOUNCE)
            .concurrency(CONCURRENCY),
    )
    .run(reconcile, error_policy, context)
    .for_each(|result| async move {
        match result {
            Ok((namespace, _)) => {
                tracing::trace!(namespace = %namespace.name, "team quota reconciled");
            }
            // Already logged by `error_policy`.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            // A trigger for a namespace deleted meanwhile.
            Err(e @ controller::Error::ObjectNotFound(_)) => {
                tracing::debug!(error = %e, "team quota controller");
            }
            Err(e) => tracing::warn!(error = %e, "team quota controller; retrying"),
        }
    })
    .await;
}

/// The Namespace to reconcile when `object` (a labelled ResourceQuota or
/// LimitRange) changes: its own, when it is named [`NAME`]; keyed as the
/// Namespace watch keys it.
pub fn namespace_of<K>(object: PartialObjectMeta<K>) -> Option<ObjectRef<Namespace>> {
    let meta = object.metadata;
    if meta.name.as_deref() != Some(NAME) {
        return None;
    }
    meta.namespace.map(|namespace| ObjectRef::new(&namespace))
}

fn error_policy(namespace: Arc<Namespace>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = namespace.metadata.name.as_deref().unwrap_or(""),
        error = %error,
        retry_in = ?RETRY,
        "team quota reconcile failed"
    );
    Action::requeue(RETRY)
}

async fn reconcile(namespace: Arc<Namespace>, context: Arc<Context>) -> Result<Action, Error> {
    let meta = &namespace.metadata;
    let name = meta.name.as_deref().unwrap_or_default();
    if meta.deletion_timestamp.is_some() {
        // The namespace controller is deleting everything in it.
        return Ok(Action::await_change());
    }
    let client = &context.client;
    match context.resolver.team_of(name, meta.labels.as_ref()) {
        Some(team) => {
            let uid = meta.uid.as_deref().unwrap_or_default();
            let objects = team_objects(name, uid, &team, &context.teams);
            // The LimitRange first: with the quota alone, a Pod that
            // declares no requests would be refused.
            apply(client, name, &objects.limits).await?;
            apply(client, name, &objects.quota).await?;
            tracing::debug!(namespace = name, %team, "team quota applied");
        }
        None => {
            // The quota first, for the same reason.
            remove::<ResourceQuota>(client, name).await?;
            remove::<LimitRange>(client, name).await?;
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Server-side applies `object` (named [`NAME`]) in `namespace`.
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Kube {
        action: "applying",
        kind: K::KIND,
        namespace: namespace.to_owned(),
        source,
    })?;
    Ok(())
}

/// Deletes the `K` named [`NAME`] in `namespace` if it exists and carries
/// the [`MANAGED_BY`] label; anybody else's object stays.
async fn remove<K>(client: &Client, namespace: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let error = |action, source| Error::Kube {
        action,
        kind: K::KIND,
        namespace: namespace.to_owned(),
        source,
    };
    let meta: Api<PartialObjectMeta<K>> = Api::namespaced(client.clone(), namespace);
    let Some(found) = meta
        .get_opt(NAME)
        .await
        .map_err(|e| error("looking up", e))?
    else {
        return Ok(());
    };
    let ours = found
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1);
    if !ours {
        return Ok(());
    }
    // Only the object we looked at: not one created since by someone else.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: found.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(NAME, &params).await {
        Ok(_) => {
            tracing::info!(
                namespace,
                kind = K::KIND,
                "removed the team object of a namespace without a team"
            );
            Ok(())
        }
        // Gone already, or replaced (the uid precondition failed).
        Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => Ok(()),
        Err(e) => Err(error("deleting", e)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{Quota, TeamOverride};

    #[test]
    fn a_team_namespace_gets_the_team_quota_and_limit_range() {
        let mut teams = TeamsConfig::default();
        teams.overrides.insert(
            "ml".into(),
            TeamOverride {
                resources: None,
                quota: Some(Quota {
                    cpu: "8".into(),
                    memory: "32Gi".into(),
                    gpu: "2".into(),
                    pods: "50".into(),
                }),
                ..Default::default()
            },
        );
        let objects = team_objects("app-ml-team", "0f1e-uid", "ml", &teams);
        let metadata = json!({
            "name": "tollgate-team",
            "namespace": "app-ml-team",
            "labels": {"app.kubernetes.io/managed-by": "tollgate", "team": "ml"},
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Namespace",
                "name": "app-ml-team",
                "uid": "0f1e-uid",
                "controller": true
            }]
        });
        assert_eq!(
            serde_json::to_value(&objects.quota).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": metadata,
                "spec": {"hard": {
                    "pods": "50",
                    "requests.cpu": "8",
                    "requests.memory": "32Gi",
                    "requests.nvidia.com/gpu": "2"
                }}
            })
        );
        assert_eq!(
            serde_json::to_value(&objects.limits).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "LimitRange",
                "metadata": metadata,
                "spec": {"limits": [{
                    "type": "Container",
                    "default": {"cpu": "1", "memory": "1Gi"},
                    "defaultRequest": {"cpu": "100m", "memory": "128Mi"}
                }]}
            })
        );
    }

    #[test]
    fn other_teams_get_the_defaults_under_the_configured_label() {
        let teams = TeamsConfig {
            label_key: "example.com/team".into(),
            ..TeamsConfig::default()
        };
        let objects = team_objects("plain", "uid", "data", &teams);
        let labels = objects.quota.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels.get("example.com/team").map(String::as_str),
            Some("data")
        );
        assert_eq!(objects.limits.metadata, objects.quota.metadata);
        let hard = objects.quota.spec.unwrap().hard.unwrap();
        let hard: BTreeMap<&str, &str> = hard
            .iter()
            .map(|(k, v)| (k.as_str(), v.0.as_str()))
            .collect();
        assert_eq!(
            hard,
            BTreeMap::from([
                ("pods", "100"),
                ("requests.cpu", "16"),
                ("requests.memory", "64Gi"),
                ("requests.nvidia.com/gpu", "0"),
            ])
        );
    }

    #[test]
    fn a_managed_object_triggers_its_namespace_under_the_namespace_watch_key() {
        use kube::api::PartialObjectMetaExt as _;
        let meta = |name: &str| {
            ObjectMeta {
                name: Some(name.into()),
                namespace: Some("app-ml-team".into()),
                ..ObjectMeta::default()
            }
            .into_request_partial::<ResourceQuota>()
        };
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some("app-ml-team".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let triggered = namespace_of(meta(NAME)).unwrap();
        assert_eq!(triggered, ObjectRef::from_obj(&namespace));
        assert_eq!(triggered.namespace, None);
        assert_eq!(namespace_of(meta("someone-elses")), None);
    }

    #[test]
    fn empty_resource_defaults_leave_the_limit_range_item_bare() {
        let mut teams = TeamsConfig::default();
        teams.defaults.resources = Default::default();
        let objects = team_objects("app-ml-team", "uid", "ml", &teams);
        assert_eq!(
            serde_json::to_value(&objects.limits.spec).unwrap(),
            json!({"limits": [{"type": "Container"}]})
        );
    }
}
