//! An audit pass over the cluster: the wanted kinds resolved through
//! discovery, every object listed page by page (`limit`/`continue`) and
//! judged while the next page is fetched, so memory holds two pages and
//! the tally however large the cluster is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::{ApiResource, Discovery, Scope, verbs};
use kube::{Client, ResourceExt as _};

use crate::admission::Admission;
use crate::audit::judge::Judges;
use crate::audit::kinds::Wanted;
use crate::audit::tally::Tally;

/// How a pass lists and keeps.
#[derive(Debug, Clone)]
pub struct PassOptions {
    /// Objects per list call.
    pub page_size: u32,
    /// Threads judging objects.
    pub workers: usize,
    /// Violations kept for listing, per policy.
    pub per_policy_cap: usize,
    /// Results kept per namespace (per report).
    pub per_namespace_cap: usize,
    /// Only this namespace (and no cluster-scoped objects).
    pub namespace: Option<String>,
}

/// Where a pass is, for a progress line.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub kind: &'a str,
    pub listed: u64,
    pub kinds_done: usize,
    pub kinds: usize,
}

/// Why a pass could not finish: its partial tally must not replace a
/// complete one.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("discovering the cluster's resources: {0}")]
    Discovery(kube::Error),
    #[error("listing namespaces: {0}")]
    Namespaces(kube::Error),
    #[error("listing {kind}: {source}")]
    List {
        kind: String,
        #[source]
        source: kube::Error,
    },
}

/// A resource to list.
#[derive(Debug, Clone)]
pub struct Target {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// The served resources whose kinds are wanted, each at its group's
/// preferred version; kinds wanted but not served are named in the second
/// list (a policy for a CRD not installed, say).
pub async fn targets(
    client: &Client,
    wanted: &Wanted,
) -> Result<(Vec<Target>, Vec<String>), kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut found = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            if !wanted.wants(&resource.group, &resource.kind)
                || !caps.supports_operation(verbs::LIST)
            {
                continue;
            }
            seen.insert(resource.kind.clone());
            found.push(Target {
                namespaced: caps.scope == Scope::Namespaced,
                resource,
            });
        }
    }
    found.sort_by(|a, b| {
        (&a.resource.group, &a.resource.kind).cmp(&(&b.resource.group, &b.resource.kind))
    });
    let missing = wanted
        .0
        .keys()
        .filter(|k| !seen.contains(*k))
        .map(|k| format!("{k}: not served by the cluster"))
        .collect();
    Ok((found, missing))
}

/// Every namespace's labels.
pub async fn namespace_labels(
    client: &Client,
) -> Result<HashMap<String, crate::teams::Labels>, kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut out = HashMap::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        for ns in &page.items {
            out.insert(ns.name_any(), ns.labels().clone());
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// One page of `target`, as JSON objects with their apiVersion and kind
/// (list items come without them), and the continue token.
async fn page(
    api: &Api<DynamicObject>,
    target: &Target,
    params: &ListParams,
) -> Result<(Vec<serde_json::Value>, Option<String>), kube::Error> {
    let list = api.list(params).await?;
    let next = list.metadata.continue_.filter(|c| !c.is_empty());
    let objects = list
        .items
        .into_iter()
        .filter_map(|item| {
            let mut value = serde_json::to_value(item).ok()?;
            // The field managers' bookkeeping: often the largest part of an
            // object, read by no policy, and costly to convert and walk.
            if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.remove("managedFields");
            }
            let map = value.as_object_mut()?;
            map.insert(
                "apiVersion".into(),
                target.resource.api_version.clone().into(),
            );
            map.insert("kind".into(), target.resource.kind.clone().into());
            Some(value)
        })
        .collect();
    Ok((objects, next))
}

/// Lists what [`audit_cluster`] would judge, judging nothing: the
/// baseline the audit benchmark sets its time beside. Returns the objects
/// listed.
pub async fn list_only(client: &Client, wanted: &Wanted, page_size: u32) -> Result<u64, PassError> {
    let (targets, _) = targets(client, wanted)
        .await
        .map_err(PassError::Discovery)?;
    let mut listed = 0;
    for target in &targets {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &target.resource);
        let mut params = ListParams::default().limit(page_size.max(1));
        loop {
            let (objects, next) =
                page(&api, target, &params)
                    .await
                    .map_err(|source| PassError::List {
                        kind: target.resource.kind.clone(),
                        source,
                    })?;
            listed += objects.len() as u64;
            match next {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    Ok(listed)
}

/// Audits the cluster: every object of the kinds `wanted`, judged by
/// `admission`. A kind the client may not list is named in the tally's
/// `skipped_kinds` and skipped; any other API error fails the pass.
pub async fn audit_cluster<A>(
    client: &Client,
    admission: Arc<A>,
    wanted: &Wanted,
    options: &PassOptions,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<Tally, PassError>
where
    A: AsRef<Admission> + Send + Sync + 'static,
{
    let (targets, missing) = targets(client, wanted)
        .await
        .map_err(PassError::Discovery)?;
    let namespaces = Arc::new(
        namespace_labels(client)
            .await
            .map_err(PassError::Namespaces)?,
    );
    let judges = Arc::new(Judges::start(admission, namespaces, options.workers));
    let mut tally = Tally::new(options.per_policy_cap, options.per_namespace_cap);
    tally.skipped_kinds.extend(missing);
    let kinds = targets.len();
    for (done, target) in targets.iter().enumerate() {
        let kind = &target.resource.kind;
        let api: Api<DynamicObject> = match (&options.namespace, target.namespaced) {
            (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &target.resource),
            (Some(_), false) => continue,
            (None, _) => Api::all_with(client.clone(), &target.resource),
        };
        let mut params = ListParams::default().limit(options.page_size.max(1));
        let mut listed = 0u64;
        let mut judging: Option<tokio::task::JoinHandle<_>> = None;
        let mut last_progress = Instant::now() - Duration::from_secs(1);
        loop {
            let fetched = page(&api, target, &params).await;
            // The previous page, judged while this one was fetched.
            if let Some(handle) = judging.take() {
                record(&mut tally, handle.await);
            }
            let (objects, next) = match fetched {
                Ok(found) => found,
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    tally.skipped_kinds.push(format!(
                        "{kind}: no permission to list ({})",
                        status.message
                    ));
                    break;
                }
                Err(source) => {
                    return Err(PassError::List {
                        kind: format!("{kind}.{}", target.resource.group),
                        source,
                    });
                }
            };
            listed += objects.len() as u64;
            let judges = judges.clone();
            judging = Some(tokio::task::spawn_blocking(move || {
                judges.judge_page(objects)
            }));
            if last_progress.elapsed() >= Duration::from_millis(200) {
                progress(Progress {
                    kind,
                    listed,
                    kinds_done: done,
                    kinds,
                });
                last_progress = Instant::now();
            }
            match next {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        if let Some(handle) = judging.take() {
            record(&mut tally, handle.await);
        }
        progress(Progress {
            kind,
            listed,
            kinds_done: done + 1,
            kinds,
        });
    }
    Ok(tally)
}

fn record(
    tally: &mut Tally,
    judged: Result<
        Vec<(crate::audit::Subject, crate::audit::judge::Verdict)>,
        tokio::task::JoinError,
    >,
) {
    match judged {
        Ok(verdicts) => {
            for (subject, verdict) in verdicts {
                tally.record(subject, verdict);
            }
        }
        Err(e) => tally.unreadable.push((
            crate::audit::Subject::of(&serde_json::Value::Null),
            format!("judging a page failed: {e}"),
        )),
    }
}
