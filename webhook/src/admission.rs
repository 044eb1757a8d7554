//! Deciding one AdmissionRequest: exemptions, policies, and the answer.
//! Free of HTTP; the server decodes, calls this, and encodes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::{Config, Enforcement};
use crate::metrics::{CacheLabels, DecisionLabels, Metrics, SidecarLabels, ViolationLabels};
use crate::mutate::sidecar::Decision as SidecarDecision;
use crate::mutate::{
    Context as MutateContext, Mutator, Outcome as MutateOutcome, template_pointer,
};
use crate::pod_security::{ENFORCE_LABEL, POLICIES};
use crate::policy::decision_cache::DecisionCache;
use crate::policy::gatekeeper::matching::NamespaceLabels;
use crate::policy::{Finding, Outcome, PolicySet};
use crate::review::{Request, Response};
use crate::teams::Labels;

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
    exempt_users: HashSet<String>,
    exempt_groups: HashSet<String>,
    mutator: Mutator,
    metrics: Arc<Metrics>,
    /// Outcomes of reviews already evaluated with the current set.
    decisions: DecisionCache,
}

/// What the policies said of an existing object, and whose it is.
#[derive(Debug)]
pub struct Audited {
    /// The team that owns the object's namespace, when one does.
    pub team: Option<String>,
    pub outcome: Outcome,
}

/// The labels of the one namespace a request is in, for constraints'
/// `namespaceSelector`s.
struct RequestNamespace<'a> {
    name: &'a str,
    labels: Option<&'a Labels>,
}

impl NamespaceLabels for RequestNamespace<'_> {
    fn labels(&self, namespace: &str) -> Option<Labels> {
        (namespace == self.name)
            .then(|| self.labels.cloned())
            .flatten()
    }
}

impl Admission {
    /// The exemptions and mutations of `config`, judging by `policies`.
    pub fn new(
        policies: PolicySet,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Admission, regex::Error> {
        metrics.policies_loaded.set(policies.len() as i64);
        Ok(Admission {
            policies: ArcSwap::from_pointee(policies),
            exempt: config.exempt_namespaces().into_iter().collect(),
            exempt_users: config.policies.exempt_users.iter().cloned().collect(),
            exempt_groups: config.policies.exempt_groups.iter().cloned().collect(),
            mutator: Mutator::new(&config.teams, &config.mutate)?,
            metrics,
            decisions: DecisionCache::new(config.policies.decision_cache_entries),
        })
    }

    /// Replaces the policy set atomically; requests in flight finish on the
    /// set they started with.
    pub fn replace_policies(&self, policies: PolicySet) {
        self.metrics.policies_loaded.set(policies.len() as i64);
        self.policies.store(Arc::new(policies));
        // The keys carry the generation, so old entries could never be hit;
        // emptying frees them at once.
        self.decisions.clear();
    }

    /// Whether the request is admitted unevaluated and unmutated: its
    /// namespace, its requester or one of the requester's groups is exempt.
    fn is_exempt(&self, request: &Request) -> bool {
        if self.exempt.contains(&request.namespace) {
            return true;
        }
        let user = &request.document["userInfo"];
        if let regorus::Value::String(name) = &user["username"]
            && self.exempt_users.contains(name.as_ref())
        {
            return true;
        }
        match &user["groups"] {
            regorus::Value::Array(groups) => groups.iter().any(|g| {
                g.as_string()
                    .is_ok_and(|g| self.exempt_groups.contains(g.as_ref()))
            }),
            _ => false,
        }
    }

    /// Answers one request and logs and counts the decision.
    /// `namespace_labels` are the labels of the request's namespace, when
    /// known.
    pub fn decide(
        &self,
        endpoint: Endpoint,
        request: &Request,
        namespace_labels: Option<&Labels>,
    ) -> Response {
        let started = Instant::now();
        let mut response = Response {
            uid: request.uid.clone(),
            allowed: true,
            ..Response::default()
        };
        let exempt = self.is_exempt(request);
        let mut denied_by: Vec<String> = Vec::new();
        let mut evaluated = 0;
        if endpoint == Endpoint::Mutate && !exempt {
            let mut judged = None;
            let mutate_started = std::time::SystemTime::now();
            let mutated = self.mutate(request, namespace_labels);
            crate::trace::record_current(
                "patch".into(),
                mutate_started,
                std::time::SystemTime::now(),
                vec![opentelemetry::KeyValue::new(
                    "tollgate.patch",
                    match &mutated {
                        MutateOutcome::Unchanged => "unchanged",
                        MutateOutcome::Patch { .. } => "patch",
                        MutateOutcome::Denied { .. } => "denied",
                    },
                )],
            );
            match mutated {
                MutateOutcome::Unchanged => judged = Some(request.document.clone()),
                MutateOutcome::Patch { patch, mutated } => {
                    response.patch = serde_json::to_vec(&patch).ok();
                    let mut document = request.document.clone();
                    if let Ok(map) = document.as_object_mut() {
                        map.insert("object".into(), regorus::Value::from(mutated));
                    }
                    judged = Some(document);
                }
                MutateOutcome::Denied { by, message } => {
                    response.allowed = false;
                    response.code = Some(403);
                    response.message = Some(format!("[{by}] {message}"));
                    denied_by.push(by.to_owned());
                }
            }
            // Where PSA itself enforces (the namespace has its enforce
            // label), it would refuse the pod before the validating webhook
            // is asked, in its own words: the mutated pod is judged here,
            // and refused with the check's message first.
            let psa_enforces = namespace_labels.is_some_and(|l| l.contains_key(ENFORCE_LABEL));
            if let Some(document) =
                judged.filter(|_| psa_enforces && template_pointer(&request.kind).is_some())
            {
                let outcome = self.evaluate(&document, request, namespace_labels);
                let denials: Vec<String> = outcome
                    .findings
                    .iter()
                    .filter(|f| {
                        f.enforcement == Enforcement::Deny && POLICIES.contains(&f.policy.as_str())
                    })
                    .map(|f| {
                        denied_by.push(f.policy.clone());
                        line(f)
                    })
                    .collect();
                if !denials.is_empty() {
                    response.allowed = false;
                    response.patch = None;
                    response.code = Some(403);
                    response.message = Some(denials.join("\n"));
                }
            }
        }
        if endpoint == Endpoint::Validate && !exempt {
            let outcome = self.evaluate(&request.document, request, namespace_labels);
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
        self.record(
            endpoint, request, &response, decision, &denied_by, evaluated, started,
        );
        response
    }

    /// Evaluates the policies on `document` (the request's, or one with the
    /// mutated object), with the namespace's labels and Pod Security levels.
    fn evaluate(
        &self,
        document: &regorus::Value,
        request: &Request,
        namespace_labels: Option<&Labels>,
    ) -> Arc<Outcome> {
        let namespaces = RequestNamespace {
            name: &request.namespace,
            labels: namespace_labels,
        };
        let namespace = self
            .mutator
            .pod_security(&request.namespace, namespace_labels)
            .input(&request.namespace, namespace_labels);
        let policies = self.policies.load();
        let started = std::time::SystemTime::now();
        let key = (self.decisions.is_enabled() && policies.cacheable())
            .then(|| {
                DecisionCache::key(
                    policies.generation(),
                    &request.kind,
                    document,
                    &namespace,
                    namespace_labels,
                )
            })
            .flatten();
        if let Some(key) = &key {
            let cached = self.decisions.get(key);
            let result = if cached.is_some() { "hit" } else { "miss" };
            self.metrics
                .decision_cache
                .get_or_create(&CacheLabels { result })
                .inc();
            if let Some(outcome) = cached {
                trace_policies(&policies, &request.kind, &outcome, started, true);
                return outcome;
            }
        }
        let outcome = Arc::new(policies.evaluate_in_namespace(
            document,
            &request.kind,
            &namespaces,
            &namespace,
        ));
        if let Some(key) = key.filter(|_| !outcome.failed) {
            self.decisions.insert(key, outcome.clone());
        }
        trace_policies(&policies, &request.kind, &outcome, started, false);
        outcome
    }

    /// Judges an object that already exists (the audit): the request is a
    /// CREATE review of it, decided by the same policies, exemptions,
    /// namespace labels and Pod Security levels as admission, without
    /// mutating it (it was mutated when it was admitted) and without the
    /// decision cache (every object is new to it, and filling it would
    /// evict what admission hits). `None` when the object is exempt.
    pub fn audit(&self, request: &Request, namespace_labels: Option<&Labels>) -> Option<Audited> {
        if self.is_exempt(request) {
            return None;
        }
        let namespaces = RequestNamespace {
            name: &request.namespace,
            labels: namespace_labels,
        };
        let namespace = self
            .mutator
            .pod_security(&request.namespace, namespace_labels)
            .input(&request.namespace, namespace_labels);
        let outcome = self.policies.load().evaluate_in_namespace(
            &request.document,
            &request.kind,
            &namespaces,
            &namespace,
        );
        Some(Audited {
            team: self.mutator.team_of(&request.namespace, namespace_labels),
            outcome,
        })
    }

    /// The policy set in force.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// Answers a request whose namespace labels could not be had (the
    /// namespace cache is not current and the API server did not answer;
    /// `cause` says why). Exempt namespaces are decided as usual, since
    /// they need no labels. Any other request is refused with the cause,
    /// code 503 (try again): its team label and the policies' namespace
    /// selectors depend on those labels, and a guess could label a Pod for
    /// the wrong team or skip a policy. A refusal, not an HTTP error, so
    /// that it holds under `failurePolicy: Ignore` too.
    pub fn refuse_unresolved(
        &self,
        endpoint: Endpoint,
        request: &Request,
        cause: &str,
    ) -> Response {
        if self.is_exempt(request) {
            return self.decide(endpoint, request, None);
        }
        let started = Instant::now();
        let response = Response {
            uid: request.uid.clone(),
            allowed: false,
            code: Some(503),
            message: Some(format!(
                "[namespace] cannot read the labels of namespace {:?}, which decide its team and \
                 the policies that apply: {cause}. Refused rather than decided on a guess; retry \
                 in a moment",
                request.namespace
            )),
            ..Response::default()
        };
        self.record(
            endpoint,
            request,
            &response,
            "deny",
            &["namespace".to_owned()],
            0,
            started,
        );
        response
    }

    /// Counts and logs one decision.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        endpoint: Endpoint,
        request: &Request,
        response: &Response,
        decision: &'static str,
        denied_by: &[String],
        evaluated: usize,
        started: Instant,
    ) {
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
            trace_id = crate::trace::current_trace_id(),
            "admission decision"
        );
    }
}

impl Admission {
    /// The mutations of a request's object.
    pub fn mutate(&self, request: &Request, namespace_labels: Option<&Labels>) -> MutateOutcome {
        let document = &request.document;
        let Ok(object) = serde_json::to_value(&document["object"]) else {
            return MutateOutcome::Unchanged;
        };
        let groups: Vec<String> = match &document["userInfo"]["groups"] {
            regorus::Value::Array(groups) => groups
                .iter()
                .filter_map(|g| g.as_string().ok().map(|g| g.to_string()))
                .collect(),
            _ => Vec::new(),
        };
        let subresource = match &document["subResource"] {
            regorus::Value::String(s) => s.to_string(),
            _ => String::new(),
        };
        let (outcome, sidecar) = self.mutator.mutate_reporting(
            &object,
            &MutateContext {
                kind: &request.kind,
                operation: &request.operation,
                subresource: &subresource,
                namespace: &request.namespace,
                namespace_labels,
                groups: &groups,
            },
        );
        let labels = match (&outcome, sidecar) {
            (MutateOutcome::Denied { by: "sidecar", .. }, _) => Some(("denied", "bad annotation")),
            (_, Some(SidecarDecision::Injected)) => Some(("injected", "")),
            (_, Some(SidecarDecision::Current)) => Some(("skipped", "already injected")),
            (_, Some(SidecarDecision::Skipped(why))) => Some(("skipped", why)),
            (_, None) => None,
        };
        if let Some((result, reason)) = labels {
            self.metrics
                .sidecar_injections
                .get_or_create(&SidecarLabels { result, reason })
                .inc();
        }
        outcome
    }
}

/// `[policy] message`: what kubectl shows for one violation.
/// Spans for the policies' evaluation, when the request is traced: one
/// for the whole evaluation and one child per policy (native policies
/// that apply to the kind, and constraints with findings) with its
/// decision. Policies are evaluated in groups (one `eval_rule` per group,
/// docs/architecture.md), so a policy's span has its evaluation's timing,
/// not a time of its own.
fn trace_policies(
    policies: &crate::policy::PolicySet,
    kind: &str,
    outcome: &crate::policy::Outcome,
    started: std::time::SystemTime,
    cached: bool,
) {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::TraceContextExt as _;
    let Some(cx) = crate::trace::open_current(
        "evaluate policies",
        started,
        vec![
            KeyValue::new("tollgate.policies.evaluated", outcome.evaluated as i64),
            KeyValue::new(
                "tollgate.decision_cache",
                if cached { "hit" } else { "miss" },
            ),
        ],
    ) else {
        return;
    };
    let ended = std::time::SystemTime::now();
    let decision = |name: &str| {
        let mut found: Vec<&Finding> = outcome
            .findings
            .iter()
            .filter(|f| f.policy == name)
            .collect();
        found.sort_by_key(|f| match f.enforcement {
            Enforcement::Deny => 0,
            Enforcement::Warn => 1,
            Enforcement::Dryrun => 2,
        });
        (
            found.first().map_or("allow", |f| f.enforcement.as_str()),
            found.len(),
        )
    };
    let mut names: Vec<&str> = policies.matching(kind).map(|p| p.name.as_str()).collect();
    for f in &outcome.findings {
        if !names.contains(&f.policy.as_str()) {
            names.push(&f.policy);
        }
    }
    for name in names {
        let (decision, violations) = decision(name);
        crate::trace::record_under(
            &cx,
            format!("policy {name}"),
            started,
            ended,
            vec![
                KeyValue::new("tollgate.policy.name", name.to_owned()),
                KeyValue::new("tollgate.policy.decision", decision),
                KeyValue::new("tollgate.policy.violations", violations as i64),
            ],
        );
    }
    cx.span().end_with_timestamp(ended);
}

fn line(finding: &Finding) -> String {
    format!("[{}] {}", finding.policy, finding.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Source, bundled_sources};

    const PRIVILEGED: &str = include_str!("../testdata/pod-privileged.json");

    fn admission(sources: &[Source]) -> (Admission, Arc<Metrics>) {
        let config = Config::default();
        let set = PolicySet::compile(sources, &config.policies, "test").unwrap();
        let metrics = Arc::new(Metrics::new());
        let admission = Admission::new(set, &config, metrics.clone()).unwrap();
        (admission, metrics)
    }

    fn request(groups: &[&str]) -> Request {
        let mut review: serde_json::Value = serde_json::from_str(PRIVILEGED).unwrap();
        review["request"]["userInfo"]["groups"] = serde_json::json!(groups);
        Request::decode(&serde_json::to_vec(&review).unwrap()).unwrap()
    }

    fn lookups(metrics: &Metrics, result: &'static str) -> u64 {
        metrics
            .decision_cache
            .get_or_create(&CacheLabels { result })
            .get()
    }

    #[test]
    fn a_repeated_review_is_answered_from_the_cache_and_any_change_misses() {
        let (admission, metrics) = admission(&bundled_sources());
        let ml = Labels::from([("team".to_owned(), "ml".to_owned())]);
        let first = admission.decide(Endpoint::Validate, &request(&["dev"]), Some(&ml));
        assert!(!first.allowed);
        assert_eq!(
            (lookups(&metrics, "hit"), lookups(&metrics, "miss")),
            (0, 1)
        );

        // The same review again, under another uid: the same answer, cached.
        let mut again = request(&["dev"]);
        again.uid = "another".into();
        let second = admission.decide(Endpoint::Validate, &again, Some(&ml));
        assert_eq!(lookups(&metrics, "hit"), 1);
        assert_eq!(second.uid, "another");
        assert_eq!(
            (second.allowed, &second.message, &second.warnings),
            (first.allowed, &first.message, &first.warnings)
        );

        // Another group, other namespace labels, a new policy set: each
        // misses.
        admission.decide(Endpoint::Validate, &request(&["dev", "admins"]), Some(&ml));
        assert_eq!(
            (lookups(&metrics, "hit"), lookups(&metrics, "miss")),
            (1, 2)
        );
        let restricted = Labels::from([
            ("team".to_owned(), "ml".to_owned()),
            (ENFORCE_LABEL.to_owned(), "restricted".to_owned()),
        ]);
        admission.decide(Endpoint::Validate, &request(&["dev"]), Some(&restricted));
        assert_eq!(
            (lookups(&metrics, "hit"), lookups(&metrics, "miss")),
            (1, 3)
        );
        let config = Config::default();
        admission.replace_policies(
            PolicySet::compile(&bundled_sources(), &config.policies, "test").unwrap(),
        );
        admission.decide(Endpoint::Validate, &request(&["dev"]), Some(&ml));
        assert_eq!(
            (lookups(&metrics, "hit"), lookups(&metrics, "miss")),
            (1, 4)
        );
        admission.decide(Endpoint::Validate, &request(&["dev"]), Some(&ml));
        assert_eq!(lookups(&metrics, "hit"), 2);
    }

    #[test]
    fn an_outcome_with_a_failed_evaluation_is_not_kept() {
        let (admission, metrics) = admission(&[Source {
            path: "p/boom.rego".into(),
            text: "package tollgate.boom\nimport rego.v1\n\
                   violation contains {\"msg\": \"big\"} if to_number(input.review.object.metadata.labels.boom) > 1\n"
                .into(),
        }]);
        let mut review: serde_json::Value = serde_json::from_str(PRIVILEGED).unwrap();
        review["request"]["object"]["metadata"]["labels"]["boom"] = "not a number".into();
        let boom = Request::decode(&serde_json::to_vec(&review).unwrap()).unwrap();
        for _ in 0..2 {
            let response = admission.decide(Endpoint::Validate, &boom, None);
            assert!(!response.allowed, "a failed evaluation denies");
        }
        assert_eq!(
            (lookups(&metrics, "hit"), lookups(&metrics, "miss")),
            (0, 2)
        );
    }

    #[test]
    fn a_set_that_reads_the_clock_is_never_cached() {
        let (admission, metrics) = admission(&[Source {
            path: "p/clock.rego".into(),
            text: "package tollgate.clock\nimport rego.v1\n\
                   violation contains {\"msg\": \"odd\"} if time.now_ns() % 2 == 1\n"
                .into(),
        }]);
        assert!(!admission.policies.load().cacheable());
        for _ in 0..2 {
            admission.decide(Endpoint::Validate, &request(&["dev"]), None);
        }
        assert_eq!(
            (lookups(&metrics, "hit"), lookups(&metrics, "miss")),
            (0, 0)
        );
    }
}
