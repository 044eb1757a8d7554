//! Which team a namespace belongs to: its team label; else the name
//! pattern (`app-<team>-team`); else the Flyte mapping of projects to teams
//! (Flyte namespaces are `<project>-<domain>`).

use std::collections::BTreeMap;

use regex::Regex;

use crate::config::TeamsConfig;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub struct TeamResolver {
    label_key: String,
    pattern: Regex,
    flyte_projects: BTreeMap<String, String>,
    flyte_domains: Vec<String>,
}

impl TeamResolver {
    /// From a checked configuration (`Config::parse` validated the pattern).
    pub fn new(config: &TeamsConfig) -> Result<TeamResolver, regex::Error> {
        Ok(TeamResolver {
            label_key: config.label_key.clone(),
            pattern: Regex::new(&config.namespace_pattern)?,
            flyte_projects: config.flyte.projects.clone(),
            flyte_domains: config.flyte.domains.clone(),
        })
    }

    pub fn label_key(&self) -> &str {
        &self.label_key
    }

    /// The team of `namespace`, whose labels are `labels` (when known).
    pub fn team_of(&self, namespace: &str, labels: Option<&Labels>) -> Option<String> {
        if let Some(team) = labels
            .and_then(|l| l.get(&self.label_key))
            .filter(|t| !t.is_empty())
        {
            return Some(team.clone());
        }
        if let Some(team) = self
            .pattern
            .captures(namespace)
            .and_then(|c| c.name("team"))
            .map(|m| m.as_str())
            .filter(|t| !t.is_empty())
        {
            return Some(team.to_owned());
        }
        self.flyte_domains.iter().find_map(|domain| {
            let project = namespace.strip_suffix(domain)?.strip_suffix('-')?;
            self.flyte_projects.get(project).cloned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> TeamResolver {
        let mut config = TeamsConfig::default();
        config
            .flyte
            .projects
            .insert("flytesnacks".into(), "ml".into());
        TeamResolver::new(&config).unwrap()
    }

    #[test]
    fn the_namespace_label_wins() {
        let labels = Labels::from([("team".into(), "data".into())]);
        assert_eq!(
            resolver().team_of("app-ml-team", Some(&labels)).as_deref(),
            Some("data")
        );
    }

    #[test]
    fn then_the_name_pattern() {
        assert_eq!(
            resolver().team_of("app-ml-team", None).as_deref(),
            Some("ml")
        );
        assert_eq!(
            resolver()
                .team_of("app-ml-team", Some(&Labels::new()))
                .as_deref(),
            Some("ml")
        );
    }

    #[test]
    fn then_the_flyte_project_of_project_domain_namespaces() {
        let r = resolver();
        assert_eq!(
            r.team_of("flytesnacks-development", None).as_deref(),
            Some("ml")
        );
        assert_eq!(
            r.team_of("flytesnacks-production", None).as_deref(),
            Some("ml")
        );
        assert_eq!(r.team_of("flytesnacks-sandbox", None), None);
        assert_eq!(r.team_of("other-development", None), None);
    }

    #[test]
    fn other_namespaces_have_no_team() {
        assert_eq!(resolver().team_of("default", None), None);
        assert_eq!(resolver().team_of("kube-system", None), None);
    }
}
