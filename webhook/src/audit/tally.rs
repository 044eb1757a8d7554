//! What an audit pass found, counted as it streams.
//!
//! Counts are exact however many objects there are; the violations kept
//! for listing are capped (per policy for the CLI and the log, per
//! namespace for the reports), so a noisy policy on a large cluster costs
//! a bounded amount of memory and report space. The totals say how many
//! were left out.

use std::collections::BTreeMap;

use super::Subject;
use super::judge::Verdict;
use crate::config::Enforcement;

/// One violation (or failure to evaluate) of one policy by one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub policy: String,
    pub enforcement: Enforcement,
    pub subject: Subject,
    pub team: Option<String>,
    pub message: String,
    /// The policy failed to evaluate on this object; `message` says why.
    pub error: bool,
}

/// One policy's findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTally {
    pub enforcement: Enforcement,
    /// Objects that violate it.
    pub violations: u64,
    /// Objects it failed to evaluate on.
    pub errors: u64,
    /// Violations per (team, namespace); the team is empty when none owns
    /// the namespace, the namespace empty for cluster-scoped objects.
    pub by_owner: BTreeMap<(String, String), u64>,
    /// The first violations, up to the cap.
    pub listed: Vec<Entry>,
}

/// One namespace's findings (`""`: cluster-scoped objects), for its report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NamespaceTally {
    /// Objects judged that violated nothing.
    pub pass: u64,
    /// Violations of `deny` policies.
    pub fail: u64,
    /// Violations of `warn` and `dryrun` policies.
    pub warn: u64,
    /// Failures to evaluate.
    pub error: u64,
    /// The first results, up to the cap.
    pub results: Vec<Entry>,
}

/// A pass's findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub policies: BTreeMap<String, PolicyTally>,
    pub namespaces: BTreeMap<String, NamespaceTally>,
    /// Objects judged (not exempt).
    pub judged: u64,
    /// Objects skipped as exempt.
    pub exempt: u64,
    /// Objects that could not be judged at all, with why (capped).
    pub unreadable: Vec<(Subject, String)>,
    pub unreadable_total: u64,
    /// Kinds not listed, with why (no permission, not served).
    pub skipped_kinds: Vec<String>,
    per_policy_cap: usize,
    per_namespace_cap: usize,
}

impl Tally {
    /// Keeping up to `per_policy_cap` violations per policy and
    /// `per_namespace_cap` results per namespace.
    pub fn new(per_policy_cap: usize, per_namespace_cap: usize) -> Tally {
        Tally {
            policies: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            judged: 0,
            exempt: 0,
            unreadable: Vec::new(),
            unreadable_total: 0,
            skipped_kinds: Vec::new(),
            per_policy_cap,
            per_namespace_cap,
        }
    }

    pub fn record(&mut self, subject: Subject, verdict: Verdict) {
        let audited = match verdict {
            Ok(Some(audited)) => audited,
            Ok(None) => {
                self.exempt += 1;
                return;
            }
            Err(cause) => {
                self.unreadable_total += 1;
                if self.unreadable.len() < self.per_policy_cap {
                    self.unreadable.push((subject, cause));
                }
                return;
            }
        };
        self.judged += 1;
        let namespace = self
            .namespaces
            .entry(subject.namespace.clone())
            .or_default();
        if audited.outcome.findings.is_empty() {
            namespace.pass += 1;
            return;
        }
        // One entry per (policy, object): a policy with several messages
        // for one object is one violation, its messages joined.
        let mut by_policy: BTreeMap<&str, (Enforcement, bool, Vec<&str>)> = BTreeMap::new();
        for finding in &audited.outcome.findings {
            let slot = by_policy.entry(finding.policy.as_str()).or_insert((
                finding.enforcement,
                false,
                Vec::new(),
            ));
            slot.1 |= finding.error;
            slot.2.push(finding.message.as_str());
        }
        let team = audited.team;
        for (policy, (enforcement, error, messages)) in by_policy {
            let entry = Entry {
                policy: policy.to_owned(),
                enforcement,
                subject: subject.clone(),
                team: team.clone(),
                message: messages.join("; "),
                error,
            };
            let tally = self
                .policies
                .entry(policy.to_owned())
                .or_insert_with(|| PolicyTally {
                    enforcement,
                    violations: 0,
                    errors: 0,
                    by_owner: BTreeMap::new(),
                    listed: Vec::new(),
                });
            if error {
                tally.errors += 1;
                namespace.error += 1;
            } else {
                tally.violations += 1;
                *tally
                    .by_owner
                    .entry((team.clone().unwrap_or_default(), subject.namespace.clone()))
                    .or_default() += 1;
                match enforcement {
                    Enforcement::Deny => namespace.fail += 1,
                    Enforcement::Warn | Enforcement::Dryrun => namespace.warn += 1,
                }
            }
            if namespace.results.len() < self.per_namespace_cap {
                namespace.results.push(entry.clone());
            }
            if tally.listed.len() < self.per_policy_cap {
                tally.listed.push(entry);
            }
        }
    }

    /// Whether a `deny` policy has violations (the CLI's exit 1).
    pub fn has_deny_violations(&self) -> bool {
        self.policies
            .values()
            .any(|p| p.enforcement == Enforcement::Deny && (p.violations > 0 || p.errors > 0))
    }

    /// Violations per (policy, enforcement, team), for the metrics.
    pub fn per_team(&self) -> BTreeMap<(String, &'static str, String), u64> {
        let mut out = BTreeMap::new();
        for (policy, tally) in &self.policies {
            for ((team, _), count) in &tally.by_owner {
                *out.entry((policy.clone(), tally.enforcement.as_str(), team.clone()))
                    .or_default() += count;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Audited;
    use crate::policy::{Finding, Outcome};

    fn subject(namespace: &str, name: &str) -> Subject {
        Subject {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        }
    }

    fn found(policy: &str, enforcement: Enforcement, error: bool) -> Finding {
        Finding {
            policy: policy.into(),
            enforcement,
            message: format!("{policy} says no"),
            error,
        }
    }

    fn audited(team: &str, findings: Vec<Finding>) -> Verdict {
        Ok(Some(Audited {
            team: Some(team.into()),
            outcome: Outcome {
                findings,
                evaluated: 3,
                failed: false,
            },
        }))
    }

    #[test]
    fn counts_stay_exact_when_the_listing_is_capped() {
        let mut tally = Tally::new(2, 3);
        for i in 0..5 {
            tally.record(
                subject("app-ml-team", &format!("p{i}")),
                audited("ml", vec![found("image-tag", Enforcement::Deny, false)]),
            );
        }
        tally.record(subject("app-ml-team", "ok"), audited("ml", vec![]));
        tally.record(subject("kube-system", "x"), Ok(None));
        let policy = &tally.policies["image-tag"];
        assert_eq!(policy.violations, 5);
        assert_eq!(policy.listed.len(), 2);
        assert_eq!(policy.by_owner[&("ml".into(), "app-ml-team".into())], 5);
        let ns = &tally.namespaces["app-ml-team"];
        assert_eq!((ns.pass, ns.fail, ns.warn, ns.error), (1, 5, 0, 0));
        assert_eq!(ns.results.len(), 3);
        assert_eq!((tally.judged, tally.exempt), (6, 1));
        assert!(tally.has_deny_violations());
    }

    #[test]
    fn an_erroring_policy_is_an_error_result_and_the_pass_goes_on() {
        let mut tally = Tally::new(10, 10);
        tally.record(
            subject("app-data-team", "a"),
            audited(
                "data",
                vec![
                    found("broken", Enforcement::Warn, true),
                    found("image-tag", Enforcement::Warn, false),
                    found("image-tag", Enforcement::Warn, false),
                ],
            ),
        );
        assert_eq!(tally.policies["broken"].errors, 1);
        assert_eq!(tally.policies["image-tag"].violations, 1, "one per object");
        let ns = &tally.namespaces["app-data-team"];
        assert_eq!((ns.fail, ns.warn, ns.error), (0, 1, 1));
        assert!(!tally.has_deny_violations());
        assert_eq!(
            tally.per_team()[&("image-tag".into(), "warn", "data".into())],
            1
        );
    }
}
