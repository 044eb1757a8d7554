//! The server's periodic audit (`audit.intervalSeconds`): one replica at a
//! time, chosen by a Lease, judges every existing object of the audited
//! kinds, then publishes metrics, one log line per violation (capped per
//! policy) and the reports. A pass that fails (the API server went away)
//! is counted and logged; the last good figures and reports stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::audit::kinds::{DEFAULT_KINDS, wanted};
use crate::audit::tally::Tally;
use crate::cluster::audit_list::{PassOptions, audit_cluster};
use crate::config::AuditConfig;
use crate::server::State;

/// Runs passes every `config.interval_seconds` for as long as the server
/// runs. `namespace` holds the Lease.
pub async fn run(client: Client, state: Arc<State>, config: AuditConfig, namespace: String) {
    let interval = Duration::from_secs(config.interval_seconds.max(1));
    let identity = format!(
        "{}-{}",
        std::env::var("POD_NAME").unwrap_or_else(|_| "tollgate".to_owned()),
        std::process::id()
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    // The first pass soon after start (the namespace cache and policies
    // settle first), the next ones every interval.
    tokio::time::sleep(interval.min(Duration::from_secs(10))).await;
    // What the audit last wrote on each cluster constraint's status.
    let mut constraint_statuses = HashMap::new();
    loop {
        match hold_lease(&leases, &config.lease_name, &identity, interval).await {
            Ok(true) => pass(&client, &state, &config, &mut constraint_statuses).await,
            Ok(false) => tracing::debug!(lease = %config.lease_name, "another replica audits"),
            Err(e) => {
                state.metrics.audit.record_failure();
                tracing::warn!(lease = %config.lease_name, error = %e, "audit: the Lease could not be had; no pass");
            }
        }
        tokio::time::sleep(interval).await;
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Takes or renews the Lease: `true` when this replica holds it now. A
/// Lease held by another replica is taken only once it has expired; the
/// write carries the resourceVersion read, so two replicas racing for an
/// expired Lease cannot both win.
async fn hold_lease(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    interval: Duration,
) -> Result<bool, kube::Error> {
    // Held across a pass and the pause after it, with a margin.
    let duration = (interval.as_secs() * 2 + 30).min(i32::MAX as u64) as i32;
    let spec = |transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(duration),
        renew_time: Some(now()),
        acquire_time: Some(now()),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..Default::default()
                },
                spec: Some(spec(0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            let mine = current.holder_identity.as_deref() == Some(identity);
            let expired = match (&current.renew_time, current.lease_duration_seconds) {
                (Some(MicroTime(renewed)), Some(seconds)) => {
                    let until = renewed.as_second() + i64::from(seconds);
                    Timestamp::now().as_second() > until
                }
                _ => true,
            };
            if !mine && !expired {
                return Ok(false);
            }
            let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!mine);
            let mut next = spec(transitions);
            if mine {
                next.acquire_time = current.acquire_time;
            }
            lease.spec = Some(next);
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

async fn pass(
    client: &Client,
    state: &Arc<State>,
    config: &AuditConfig,
    constraint_statuses: &mut HashMap<String, serde_json::Value>,
) {
    let started = Instant::now();
    let policies = state.admission.policies();
    let defaults: Vec<String> = if config.kinds.is_empty() {
        DEFAULT_KINDS.iter().map(|k| k.to_string()).collect()
    } else {
        config.kinds.clone()
    };
    let kinds = wanted(&policies, &defaults, None);
    let options = PassOptions {
        page_size: config.page_size,
        workers: config.workers,
        // Enough for the log lines and for the constraints' statuses.
        per_policy_cap: config
            .log_per_policy
            .max(config.constraint_violations_limit),
        per_namespace_cap: config.max_results_per_report,
        namespace: None,
    };
    let mut quiet = |_: crate::cluster::audit_list::Progress<'_>| {};
    let tally = match audit_cluster(client, state.clone(), &kinds, &options, &mut quiet).await {
        Ok(tally) => tally,
        Err(e) => {
            state.metrics.audit.record_failure();
            tracing::warn!(error = %e, "audit pass failed; the last good results stay");
            return;
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    log(&tally, config.log_per_policy);
    if config.reports {
        match crate::cluster::audit_reports::write(
            client,
            &tally,
            config.max_results_per_report,
            unix as i64,
        )
        .await
        {
            Ok(written) => tracing::info!(
                written = written.created_or_updated,
                unchanged = written.unchanged,
                deleted = written.deleted,
                "audit reports"
            ),
            Err(e) => {
                state.metrics.audit.record_failure();
                tracing::warn!(error = %e, "audit: writing the reports failed; the last ones stay (is the OpenReports CRD installed?)");
                return;
            }
        }
    }
    let bodies = crate::cluster::gatekeeper_resources::audit_status::bodies(
        &policies,
        &tally,
        config.constraint_violations_limit,
        unix as i64,
    );
    match crate::cluster::gatekeeper_resources::audit_status::write(
        client,
        bodies,
        constraint_statuses,
    )
    .await
    {
        Ok(w) if w.updated > 0 => {
            tracing::info!(
                updated = w.updated,
                unchanged = w.unchanged,
                "audit: constraint statuses"
            )
        }
        Ok(_) => {}
        Err(e) => {
            state.metrics.audit.record_failure();
            tracing::warn!(error = %e, "audit: writing the constraints' statuses failed; retried next pass");
            return;
        }
    }
    state.metrics.audit.record_pass(&tally, seconds, unix);
    let violations: u64 = tally.policies.values().map(|p| p.violations).sum();
    tracing::info!(
        objects = tally.judged,
        exempt = tally.exempt,
        violations,
        seconds,
        skipped = %tally.skipped_kinds.join("; "),
        "audit pass"
    );
}

/// One line per violation, up to `cap` per policy (`audit.logPerPolicy`).
fn log(tally: &Tally, cap: usize) {
    for (policy, t) in &tally.policies {
        let logged = t.listed.len().min(cap);
        for e in &t.listed[..logged] {
            tracing::info!(
                policy = %policy,
                enforcement = e.enforcement.as_str(),
                team = e.team.as_deref().unwrap_or(""),
                kind = %e.subject.kind,
                namespace = %e.subject.namespace,
                name = %e.subject.name,
                error = e.error,
                message = %e.message,
                "audit violation"
            );
        }
        let unlisted = (t.violations + t.errors).saturating_sub(logged as u64);
        if unlisted > 0 {
            tracing::info!(policy = %policy, more = unlisted, "audit violations not logged (audit.logPerPolicy)");
        }
    }
}
