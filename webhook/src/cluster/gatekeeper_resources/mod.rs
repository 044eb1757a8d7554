//! Gatekeeper ConstraintTemplates and constraints that live in the cluster
//! as custom resources (`policies.watchConstraintTemplates`), handled as
//! Gatekeeper's controller handles them, so that a Gatekeeper GitOps folder
//! applies unchanged:
//!
//! - [`crd`]: the constraint CRD generated from each template;
//! - [`check`]: each template and constraint checked on its own (a broken
//!   one is reported and keeps its last good version; the others load);
//! - [`status`]: the `status` written back, per replica (`byPod`);
//! - [`reconcile`]: the watches, the CRD writes, the reloads;
//! - [`takeover`]: standing back while Gatekeeper's own webhook is
//!   installed.
//!
//! It must never write a CRD or a status while Gatekeeper's webhook is
//! installed, and never let one broken object take the others' policies
//! out of force.

pub mod audit_status;
pub mod check;
pub mod crd;
pub mod reconcile;
pub mod status;
pub mod takeover;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use super::policy_reload::PolicyReloader;

/// What readiness waits for until the first listing of the templates (and
/// of their constraints) has been compiled.
pub const WAITING: &str = "cluster ConstraintTemplates and constraints";
/// What `/readyz` reports under while it stands back.
pub const NOTE: &str = "ConstraintTemplates";
/// How often the presence of Gatekeeper's webhook is checked.
pub const RECHECK: Duration = Duration::from_secs(10);

/// Runs until the process ends: takes over the templates and constraints
/// while Gatekeeper's webhook is absent, and stands back (no writes, no
/// policies from them) while it is present or cannot be known.
pub async fn run(client: Client, reloader: Arc<PolicyReloader>) {
    let state = reloader.state();
    let replica = status::replica_id();
    loop {
        let mut said = None;
        loop {
            let why = match takeover::check(&client).await {
                Ok(None) => break,
                Ok(Some(why)) => takeover::refusal(&why),
                Err(e) => format!(
                    "not taking over ConstraintTemplates and constraints yet: cannot tell whether \
                     Gatekeeper's webhook is installed (listing ValidatingWebhookConfigurations: \
                     {e})"
                ),
            };
            if said.as_ref() != Some(&why) {
                tracing::error!(reason = %why, "standing back from Gatekeeper resources");
                said = Some(why.clone());
            }
            state.set_note(NOTE, Some(why));
            state.metrics.gatekeeper_standing_back.set(1);
            state.done_waiting(WAITING);
            tokio::time::sleep(RECHECK).await;
        }
        state.set_note(NOTE, None);
        state.metrics.gatekeeper_standing_back.set(0);
        tracing::info!(%replica, "taking over ConstraintTemplates and constraints");
        let task = tokio::spawn(reconcile::run(
            client.clone(),
            reloader.clone(),
            replica.clone(),
        ));
        loop {
            tokio::time::sleep(RECHECK).await;
            if let Ok(Some(_)) = takeover::check(&client).await {
                break;
            }
        }
        task.abort();
        let _ = task.await;
        state.metrics.cluster_gatekeeper_objects.clear();
        reloader.set_cluster_resources(Vec::new());
        let _ = reloader.reload();
    }
}
