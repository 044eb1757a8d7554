//! Deciding one AdmissionRequest: exemptions, policies, and the answer.
//! Free of HTTP; the server decodes, calls this, and encodes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::Enforcement;
use crate::metrics::{DecisionLabels, Metrics, ViolationLabels};
use crate::policy::gatekeeper::matching::{NamespaceLabels, NoNamespaces};
use crate::policy::{Finding, PolicySet};
use crate::review::{Request, Response};

/// Which webhook endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Validate,
    Mutate,
}

impl Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Endpoint::Validate => "validate",
            Endpoint::Mutate => "mutate",
        }
    }
}

pub struct Admission {
    policies: ArcSwap<PolicySet>,
    exempt: HashSet<String>,
    metrics: Arc<Metrics>,
    /// Namespace labels for constraints' `namespaceSelector`s.
    namespaces: Arc<dyn NamespaceLabels + Send + Sync>,
}

impl Admission {
    pub fn new(policies: PolicySet, exempt: Vec<String>, metrics: Arc<Metrics>) -> Admission {
        metrics.policies_loaded.set(policies.len() as i64);
        Admission {
            policies: ArcSwap::from_pointee(policies),
            exempt: exempt.into_iter().collect(),
            metrics,
            namespaces: Arc::new(NoNamespaces),
        }
    }

    /// Uses `namespaces` for the labels of the namespaces requests are in.
    pub fn with_namespaces(mut self, namespaces: Arc<dyn NamespaceLabels + Send + Sync>) -> Self {
        self.namespaces = namespaces;
        self
    }

    /// Replaces the policy set atomically; requests in flight finish on the
    /// set they started with.
    pub fn replace_policies(&self, policies: PolicySet) {
        self.metrics.policies_loaded.set(policies.len() as i64);
        self.policies.store(Arc::new(policies));
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// Answers one request and logs and counts the decision.
    pub fn decide(&self, endpoint: Endpoint, request: &Request) -> Response {
        let started = Instant::now();
        let mut response = Response {
            uid: request.uid.clone(),
            allowed: true,
            ..Response::default()
        };
        let exempt = self.exempt.contains(&request.namespace);
        let mut denied_by: Vec<String> = Vec::new();
        let mut evaluated = 0;
        // Mutation arrives with its own issue; until then /mutate admits
        // unchanged, and only /validate evaluates policies.
        if endpoint == Endpoint::Validate && !exempt {
            let outcome = self
                .policies
                .load()
                .evaluate(&request.document, &request.kind);
            evaluated = outcome.evaluated;
            let mut denials = Vec::new();
            for finding in &outcome.findings {
                self.metrics
                    .policy_violations
                    .get_or_create(&ViolationLabels {
                        policy: finding.policy.clone(),
                        enforcement: finding.enforcement.as_str(),
                    })
                    .inc();
                match finding.enforcement {
                    Enforcement::Deny => {
                        denials.push(line(finding));
                        denied_by.push(finding.policy.clone());
                    }
                    Enforcement::Warn => response.warnings.push(line(finding)),
                    Enforcement::Dryrun => tracing::info!(
                        uid = %request.uid,
                        policy = %finding.policy,
                        message = %finding.message,
                        "dryrun violation"
                    ),
                }
            }
            if !denials.is_empty() {
                response.allowed = false;
                response.code = Some(403);
                response.message = Some(denials.join("\n"));
            }
        }
        denied_by.dedup();
        let decision = match (exempt, response.allowed) {
            (true, _) => "exempt",
            (false, true) => "allow",
            (false, false) => "deny",
        };
        let elapsed = started.elapsed();
        self.metrics
            .admission_requests
            .get_or_create(&DecisionLabels {
                endpoint: endpoint.as_str(),
                operation: request.operation.clone(),
                kind: request.kind.clone(),
                decision,
            })
            .inc();
        self.metrics
            .admission_duration
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            uid = %request.uid,
            endpoint = endpoint.as_str(),
            operation = %request.operation,
            kind = %request.kind,
            namespace = %request.namespace,
            name = %request.name,
            dry_run = request.dry_run,
            decision,
            denied_by = %denied_by.join(","),
            warnings = response.warnings.len(),
            policies_evaluated = evaluated,
            patch_bytes = response.patch.as_ref().map_or(0, Vec::len),
            duration_us = elapsed.as_micros() as u64,
            "admission decision"
        );
        response
    }
}

/// `[policy] message`: what kubectl shows for one violation.
fn line(finding: &Finding) -> String {
    format!("[{}] {}", finding.policy, finding.message)
}
