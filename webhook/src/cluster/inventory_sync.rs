//! Objects synced from the cluster into Gatekeeper templates'
//! `data.inventory` (like Gatekeeper's `Config` sync): each configured kind
//! is watched, and every change recompiles the policies with the new
//! inventory.

use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use super::policy_reload::PolicyReloader;
use super::watched_set::follow;
use crate::config::SyncKind;

/// What readiness waits for until every kind has been listed once.
pub const WAITING: &str = "synced objects";

/// Watches `kind` until the process ends. `kinds` is how many kinds are
/// synced in all, so readiness waits for the last one's first listing.
pub async fn watch(client: Client, kind: SyncKind, kinds: usize, reloader: Arc<PolicyReloader>) {
    let gvk = GroupVersionKind::gvk(&kind.group, &kind.version, &kind.kind);
    let resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let label = format!("{}/{}/{}", kind.group, kind.version, kind.kind);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let state = reloader.state();
    follow(stream, &label, state, |set| {
        let objects = set
            .objects()
            .filter_map(|o| {
                let mut value = serde_json::to_value(o).ok()?;
                // The list leaves these out of each item; templates read them.
                value["apiVersion"] = resource.api_version.clone().into();
                value["kind"] = resource.kind.clone().into();
                Some(value)
            })
            .collect();
        if reloader.set_synced(&label, objects) >= kinds {
            let _ = reloader.reload();
            state.done_waiting(WAITING);
        }
    })
    .await;
}
