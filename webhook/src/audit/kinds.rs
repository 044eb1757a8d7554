//! Which kinds an audit lists: those the loaded policies name, and those
//! the constraints match. A policy that names no kinds, and a constraint
//! that matches every kind, stand for the configured default kinds
//! (`audit.kinds`): listing every resource of a cluster (Events, Leases,
//! EndpointSlices…) would cost much and find little.

use std::collections::{BTreeMap, BTreeSet};

use crate::policy::PolicySet;

/// The default kinds: what teams create and the policies judge.
pub const DEFAULT_KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "Service",
    "Ingress",
    "Namespace",
    "ConfigMap",
];

/// Kind name → the API groups it may come from (`None`: any group).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted(pub BTreeMap<String, Option<BTreeSet<String>>>);

impl Wanted {
    fn add(&mut self, kind: &str, groups: Option<&[String]>) {
        let groups = groups
            .filter(|g| !g.is_empty() && !g.iter().any(|g| g == "*"))
            .map(|g| g.iter().cloned().collect::<BTreeSet<_>>());
        match (self.0.get_mut(kind), groups) {
            (Some(slot), Some(groups)) => {
                if let Some(existing) = slot {
                    existing.extend(groups);
                }
            }
            (Some(slot), None) => *slot = None,
            (None, groups) => {
                self.0.insert(kind.to_owned(), groups);
            }
        }
    }

    /// Whether a kind from `group` is wanted.
    pub fn wants(&self, group: &str, kind: &str) -> bool {
        self.0
            .get(kind)
            .is_some_and(|groups| groups.as_ref().is_none_or(|g| g.contains(group)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The kinds `policies` judge (only those named in `only`, when given);
/// `defaults` stand for "any kind".
pub fn wanted(
    policies: &PolicySet,
    defaults: &[String],
    only: Option<&BTreeSet<String>>,
) -> Wanted {
    let chosen = |name: &str| only.is_none_or(|only| only.contains(name));
    let mut wanted = Wanted::default();
    let all_defaults = |wanted: &mut Wanted, groups: Option<&[String]>| {
        for kind in defaults {
            wanted.add(kind, groups);
        }
    };
    for policy in policies.policies().iter().filter(|p| chosen(&p.name)) {
        match &policy.kinds {
            Some(kinds) => kinds.iter().for_each(|k| wanted.add(k, None)),
            None => all_defaults(&mut wanted, None),
        }
    }
    for constraint in policies.constraints().filter(|c| chosen(&c.name)) {
        let specs = &constraint.matcher.kinds;
        if specs.is_empty() {
            all_defaults(&mut wanted, None);
        }
        for spec in specs {
            if spec.kinds.is_empty() || spec.kinds.iter().any(|k| k == "*") {
                all_defaults(&mut wanted, Some(&spec.api_groups));
            } else {
                for kind in &spec.kinds {
                    wanted.add(kind, Some(&spec.api_groups));
                }
            }
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_widen_and_any_group_wins() {
        let mut w = Wanted::default();
        w.add("Deployment", Some(&["apps".to_owned()]));
        assert!(w.wants("apps", "Deployment"));
        assert!(!w.wants("extensions", "Deployment"));
        w.add("Deployment", Some(&["extensions".to_owned()]));
        assert!(w.wants("extensions", "Deployment"));
        w.add("Deployment", Some(&["*".to_owned()]));
        assert!(w.wants("anything", "Deployment"));
        w.add("Deployment", Some(&["apps".to_owned()]));
        assert!(w.wants("anything", "Deployment"), "any group stays any");
        assert!(!w.wants("", "Pod"));
    }

    #[test]
    fn the_bundled_policies_want_pods_and_workloads() {
        let set = crate::policy::PolicySet::compile(
            &crate::policy::bundled_sources(),
            &crate::config::PoliciesConfig::default(),
            "bundled",
        )
        .expect("the bundled policies compile");
        let defaults: Vec<String> = DEFAULT_KINDS.iter().map(|k| k.to_string()).collect();
        let w = wanted(&set, &defaults, None);
        let only: BTreeSet<String> = ["service_type".to_owned()].into();
        let services = wanted(&set, &defaults, Some(&only));
        assert!(services.wants("", "Service"));
        assert!(!services.wants("", "Pod"), "{services:?}");
        assert!(w.wants("", "Pod"));
        assert!(w.wants("apps", "Deployment"));
    }
}
