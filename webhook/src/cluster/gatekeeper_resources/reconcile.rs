//! The controller: watches ConstraintTemplates, keeps each template's
//! constraint CRD applied, watches the constraints of every kind in force,
//! recompiles the policies on every change and writes the statuses. One
//! task owns all of its state; the watchers only send it what they see.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::mpsc;

use super::check::{self, Checker, StatusError};
use super::{WAITING, crd, status};
use crate::cluster::policy_reload::PolicyReloader;
use crate::cluster::watched_set::follow;
use crate::policy::gatekeeper::{CONSTRAINTS_GROUP, TEMPLATES_GROUP};

/// The field manager of the constraint CRDs (shared by the replicas: they
/// apply the same object).
const CRD_MANAGER: &str = "tollgate";
/// How often failed writes are tried again.
const RETRY: Duration = Duration::from_secs(10);
/// Readiness waits this long at most for the first listing of every
/// constraint kind (a CRD that never becomes established must not keep a
/// replica out of service forever).
const READY_GRACE: Duration = Duration::from_secs(60);

enum Change {
    Templates(Vec<Value>),
    Constraints { kind: String, objects: Vec<Value> },
}

/// A task aborted when its handle is dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn template_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(TEMPLATES_GROUP, "v1", "ConstraintTemplate"),
        "constrainttemplates",
    )
}

pub fn constraint_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(CONSTRAINTS_GROUP, "v1beta1", kind),
        &crd::plural(kind),
    )
}

/// The object as JSON with its `apiVersion` and `kind` (list items come
/// without them).
fn to_json(object: &DynamicObject, resource: &ApiResource) -> Option<Value> {
    let mut value = serde_json::to_value(object).ok()?;
    value["apiVersion"] = resource.api_version.clone().into();
    value["kind"] = resource.kind.clone().into();
    Some(value)
}

async fn watch_templates(
    reloader: Arc<PolicyReloader>,
    client: Client,
    tx: mpsc::UnboundedSender<Change>,
) {
    let resource = template_resource();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    follow(stream, "ConstraintTemplates", reloader.state(), |set| {
        let objects = set
            .objects()
            .filter_map(|o| to_json(o, &resource))
            .collect();
        let _ = tx.send(Change::Templates(objects));
    })
    .await;
}

/// Waits until the kind's CRD is established, then follows its objects.
async fn watch_constraints(
    reloader: Arc<PolicyReloader>,
    client: Client,
    kind: String,
    tx: mpsc::UnboundedSender<Change>,
) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd::crd_name(&kind);
    loop {
        let established = crds.get_opt(&name).await.ok().flatten().is_some_and(|c| {
            c.status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let resource = constraint_resource(&kind);
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let what = format!("{kind} constraints");
    follow(stream, &what, reloader.state(), |set| {
        let objects = set
            .objects()
            .filter_map(|o| to_json(o, &resource))
            .collect();
        let _ = tx.send(Change::Constraints {
            kind: kind.clone(),
            objects,
        });
    })
    .await;
}

struct Reconciler {
    client: Client,
    reloader: Arc<PolicyReloader>,
    replica: String,
    tx: mpsc::UnboundedSender<Change>,
    /// `None` until the first listing.
    templates: Option<Vec<Value>>,
    /// By kind; a kind is present once its first listing arrived.
    constraints: BTreeMap<String, Vec<Value>>,
    watchers: BTreeMap<String, Task>,
    applied_crds: BTreeMap<String, Value>,
    checker: Checker,
    /// The status bodies last written, by object.
    written: HashMap<String, Value>,
    /// What the last reconcile saw: names, UIDs and generations.
    seen: Option<String>,
    /// A write failed: try again on the next tick.
    retry: bool,
}

/// Runs until aborted (the supervisor aborts it when Gatekeeper's webhook
/// appears; dropping it stops every watcher it started).
pub async fn run(client: Client, reloader: Arc<PolicyReloader>, replica: String) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _templates = Task(tokio::spawn(watch_templates(
        reloader.clone(),
        client.clone(),
        tx.clone(),
    )));
    let mut r = Reconciler {
        client,
        reloader,
        replica,
        tx,
        templates: None,
        constraints: BTreeMap::new(),
        watchers: BTreeMap::new(),
        applied_crds: BTreeMap::new(),
        checker: Checker::default(),
        written: HashMap::new(),
        seen: None,
        retry: false,
    };
    let started = Instant::now();
    loop {
        let change = tokio::select! {
            change = rx.recv() => change,
            () = tokio::time::sleep(RETRY) => None,
        };
        let tick = change.is_none();
        if let Some(change) = change {
            r.apply(change);
        }
        while let Ok(change) = rx.try_recv() {
            r.apply(change);
        }
        let force = tick && std::mem::take(&mut r.retry);
        r.reconcile(force).await;
        let listed = r.watchers.keys().all(|k| r.constraints.contains_key(k));
        if r.templates.is_some() && (listed || started.elapsed() > READY_GRACE) {
            r.reloader.state().done_waiting(WAITING);
        }
    }
}

impl Reconciler {
    fn apply(&mut self, change: Change) {
        match change {
            Change::Templates(objects) => self.templates = Some(objects),
            Change::Constraints { kind, objects } => {
                if self.watchers.contains_key(&kind) {
                    self.constraints.insert(kind, objects);
                }
            }
        }
    }

    /// Names, UIDs and generations of everything: what a reconcile depends
    /// on (a status write changes none of them).
    fn fingerprint(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, o: &Value| {
            out.push_str(&format!(
                "{} {} {} {}\n",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or(""),
                o["metadata"]["uid"].as_str().unwrap_or(""),
                o["metadata"]["generation"].as_i64().unwrap_or(0)
            ));
        };
        for o in self.templates.iter().flatten() {
            line(&mut out, o);
        }
        for (kind, objects) in &self.constraints {
            out.push_str(&format!("kind {kind}\n"));
            for o in objects {
                line(&mut out, o);
            }
        }
        out
    }

    async fn reconcile(&mut self, force: bool) {
        let Some(templates) = self.templates.clone() else {
            return;
        };
        let seen = self.fingerprint();
        if !force && self.seen.as_ref() == Some(&seen) {
            return;
        }
        self.seen = Some(seen);
        let data = regorus::Value::from_json_str(&self.reloader.data().to_string()).ok();
        let warmup = crate::policy::warmup_request();
        let mut reports = self.checker.templates(&templates, &warmup, data.as_ref());

        // The CRDs of the templates in force.
        let mut created: BTreeMap<String, bool> = BTreeMap::new();
        for report in &mut reports {
            let (Some(object), Some(kind)) = (&report.in_force, &report.kind) else {
                continue;
            };
            let ok = match crd::constraint_crd(object) {
                Err(message) => {
                    report.errors.push(StatusError {
                        code: "create_error",
                        message,
                        location: None,
                    });
                    false
                }
                Ok(body) if self.applied_crds.get(kind) == Some(&body) => true,
                Ok(body) => match self.apply_crd(&body).await {
                    Ok(()) => {
                        tracing::info!(template = %report.name, %kind, "constraint CRD applied");
                        self.applied_crds.insert(kind.clone(), body);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(template = %report.name, error = %e, "writing the constraint CRD failed");
                        self.retry = true;
                        report.errors.push(StatusError {
                            code: "create_error",
                            message: format!("could not write CRD {}: {e}", crd::crd_name(kind)),
                            location: None,
                        });
                        false
                    }
                },
            };
            created.insert(report.name.clone(), ok);
        }

        // A watcher per kind in force, and no other.
        let kinds: Vec<String> = reports
            .iter()
            .filter(|r| created.get(&r.name) == Some(&true))
            .filter_map(|r| r.kind.clone())
            .collect();
        self.watchers.retain(|kind, _| kinds.contains(kind));
        self.constraints.retain(|kind, _| kinds.contains(kind));
        self.applied_crds.retain(|kind, _| kinds.contains(kind));
        for kind in &kinds {
            if !self.watchers.contains_key(kind) {
                let task = tokio::spawn(watch_constraints(
                    self.reloader.clone(),
                    self.client.clone(),
                    kind.clone(),
                    self.tx.clone(),
                ));
                self.watchers.insert(kind.clone(), Task(task));
            }
        }

        // Constraints one by one, then the whole set.
        let objects: Vec<&Value> = self.constraints.values().flatten().collect();
        let owned: Vec<Value> = objects.iter().map(|o| (*o).clone()).collect();
        let mut constraint_reports = check::constraints(&owned);
        let pairs: Vec<(check::ConstraintReport, &Value)> = constraint_reports
            .iter()
            .cloned()
            .zip(objects.iter().copied())
            .collect();
        self.reloader
            .set_cluster_resources(check::sources(&reports, &pairs));
        let reloaded = self.reloader.reload();
        if let Err(e) = &reloaded {
            let error = StatusError {
                code: "reload_error",
                message: format!(
                    "the policies did not compile; the last good set stays in force: {e}"
                ),
                location: None,
            };
            for report in reports.iter_mut().filter(|r| r.in_force.is_some()) {
                report.errors.push(error.clone());
            }
            for report in &mut constraint_reports {
                report.errors.push(error.clone());
            }
        }

        self.count(&reports, &constraint_reports);
        for report in &reports {
            let body = status::template(
                report,
                &self.replica,
                created.get(&report.name) == Some(&true),
            );
            let key = format!("ConstraintTemplate/{}", report.name);
            self.write_status(key, &template_resource(), &report.name, body)
                .await;
        }
        for report in &constraint_reports {
            let enforced = report.errors.is_empty() && reloaded.is_ok();
            let body = status::constraint(report, &self.replica, enforced);
            let key = format!("{}/{}", report.kind, report.name);
            self.write_status(key, &constraint_resource(&report.kind), &report.name, body)
                .await;
        }
        let live: Vec<String> = reports
            .iter()
            .map(|r| format!("ConstraintTemplate/{}", r.name))
            .chain(
                constraint_reports
                    .iter()
                    .map(|r| format!("{}/{}", r.kind, r.name)),
            )
            .collect();
        self.written.retain(|key, _| live.contains(key));
    }

    /// `tollgate_cluster_gatekeeper_objects`.
    fn count(&self, templates: &[check::TemplateReport], constraints: &[check::ConstraintReport]) {
        use crate::metrics::ClusterObjectLabels;
        let family = &self.reloader.state().metrics.cluster_gatekeeper_objects;
        let errors = [
            (
                "template",
                templates.iter().filter(|r| !r.errors.is_empty()).count(),
                templates.len(),
            ),
            (
                "constraint",
                constraints.iter().filter(|r| !r.errors.is_empty()).count(),
                constraints.len(),
            ),
        ];
        for (object, failed, all) in errors {
            for (state, n) in [("ok", all - failed), ("error", failed)] {
                family
                    .get_or_create(&ClusterObjectLabels { object, state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    async fn apply_crd(&self, body: &Value) -> Result<(), kube::Error> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let name = body["metadata"]["name"].as_str().unwrap_or_default();
        api.patch(
            name,
            &PatchParams::apply(CRD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map(|_| ())
    }

    /// Applies `body` to the status subresource unless this replica last
    /// wrote exactly that.
    async fn write_status(&mut self, key: String, resource: &ApiResource, name: &str, body: Value) {
        if self.written.get(&key) == Some(&body) {
            return;
        }
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), resource);
        let manager = format!("tollgate-{}", self.replica);
        match api
            .patch_status(
                name,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {
                self.written.insert(key, body);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(object = %key, error = %e, "writing the status failed; retrying");
                self.written.remove(&key);
                self.retry = true;
            }
        }
    }
}
