//! A route's `authorization`, as written in `proxy.yaml`, and its checks.
//!
//! ```yaml
//! routes:
//!   - name: workspace
//!     pathPrefix: /
//!     jwt: {mode: required, providers: [corp]}
//!     authorization:
//!       workspace:                     # the default workspace profile (below)
//!         ownerClaim: preferred_username
//!         adminGroups: [platform-admins]
//!       rules:                         # more rules, evaluated with the profile's
//!         - name: no-terminals         # metrics and logs; default: rules[i]
//!           action: deny               # allow (default) | deny | audit
//!           when:                      # every condition must hold
//!             - {path: {prefix: /terminals}}
//!             - {claim: groups, contains: contractors}
//! ```
//!
//! A condition tests one thing:
//!
//! | condition | holds when |
//! |---|---|
//! | `{claim: P, equals: V}` | the claim at `P` is `V` |
//! | `{claim: P, in: [V…]}` | the claim is one of them |
//! | `{claim: P, contains: V}` | the claim is an array holding `V`, or a space-separated string (`scope`) with the word `V` |
//! | `{claim: P, prefix: V}` | the claim is a string starting with `V` |
//! | `{claim: P, present: true}` | the claim exists and is not `null` |
//! | `{peer: [pattern…]}` | the peer's SPIFFE ID matches a pattern (as `allowedIdentities`) |
//! | `{method: [GET, …]}` | the request method is one of them |
//! | `{path: {prefix: /p}}` or `{path: {exact: /p}}` | the normalised path (segment-wise prefix, as `pathPrefix`) |
//!
//! `P` is a dotted path into the claims (`realm_access.roles`) or, for
//! names with dots (`https://example.com/groups`), a list of keys. `V` is a
//! scalar, `{env: NAME}` (the proxy's environment) or `{podField: F}` (the
//! downward-API fields the injector passes: `metadata.name`,
//! `metadata.namespace`, `spec.serviceAccountName`). A referenced variable
//! that is unset or empty stops the proxy at start, naming the rule's path:
//! a rule never silently compares with nothing.
//!
//! ## The workspace profile
//!
//! `workspace: {}` stands for these rules, fed by the injector's
//! environment (docs/sidecar.md):
//!
//! - `owner`: allow when `ownerClaim` (default `preferred_username`;
//!   `email` and `sub` are the usual others) equals
//!   `$TOLLGATE_WORKSPACE_OWNER`;
//! - `admin`: allow when `groupsClaim` (default `groups`) contains one of
//!   `adminGroups`;
//! - `team`: only when `$TOLLGATE_WORKSPACE_SHARING` is `team`: allow when
//!   `groupsClaim` contains `$TOLLGATE_TEAM`.
//!
//! Being allow rules, they let nobody else in.

use serde::Deserialize;
use serde_json::Value;
use tollgate_certs::spiffe::IdPattern;

/// The environment the injector sets for the workspace profile.
pub const OWNER_ENV: &str = "TOLLGATE_WORKSPACE_OWNER";
pub const TEAM_ENV: &str = "TOLLGATE_TEAM";
pub const SHARING_ENV: &str = "TOLLGATE_WORKSPACE_SHARING";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationConfig {
    /// The default workspace profile; absent: not used.
    #[serde(default)]
    pub workspace: Option<WorkspaceProfile>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkspaceProfile {
    /// The claim that must equal the workspace's owner.
    #[serde(default = "default_owner_claim")]
    pub owner_claim: ClaimPath,
    /// The claim listing a user's groups (admin groups, the team).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: ClaimPath,
    /// Members of any of these groups may open every workspace.
    #[serde(default)]
    pub admin_groups: Vec<String>,
}

fn default_owner_claim() -> ClaimPath {
    ClaimPath::Dotted("preferred_username".into())
}
fn default_groups_claim() -> ClaimPath {
    ClaimPath::Dotted("groups".into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleConfig {
    /// Names the rule in metrics and logs; default `rules[i]`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub action: Action,
    /// Conditions that must all hold; at least one.
    #[serde(default)]
    pub when: Vec<ConditionConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A route with allow rules lets in only requests one of them matches.
    #[default]
    Allow,
    /// A match is refused (DENY rules are evaluated first).
    Deny,
    /// A match is logged and counted as what a deny rule would refuse,
    /// and passes.
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Audit => "audit",
        }
    }
}

/// One condition: a subject (`claim`, `peer`, `method` or `path`) and, for
/// a claim, one operator. Checked in [`ConditionConfig::check`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionConfig {
    #[serde(default)]
    pub claim: Option<ClaimPath>,
    #[serde(default)]
    pub equals: Option<Operand>,
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<Operand>>,
    #[serde(default)]
    pub contains: Option<Operand>,
    #[serde(default)]
    pub prefix: Option<Operand>,
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub peer: Option<Vec<String>>,
    #[serde(default)]
    pub method: Option<Vec<String>>,
    #[serde(default)]
    pub path: Option<PathCondition>,
}

/// Where in the claims: `a.b.c`, or `[a, "b.with.dots"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ClaimPath {
    Dotted(String),
    Keys(Vec<String>),
}

impl ClaimPath {
    /// The keys, or why this is not a claim path.
    pub fn keys(&self) -> Result<Vec<String>, String> {
        let keys: Vec<String> = match self {
            ClaimPath::Dotted(s) => s.split('.').map(str::to_owned).collect(),
            ClaimPath::Keys(k) => k.clone(),
        };
        let bad = keys.is_empty() || keys.iter().any(|k| k.is_empty() || k.trim() != k);
        if bad {
            return Err(match self {
                ClaimPath::Dotted(s) => format!(
                    "{s:?} is not a claim path: write keys separated by single dots \
                     (realm_access.roles), or a list of keys for names with dots"
                ),
                ClaimPath::Keys(k) => format!(
                    "{k:?} is not a claim path: each key must be non-empty, without \
                     surrounding spaces"
                ),
            });
        }
        Ok(keys)
    }
}

/// A value to compare a claim with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Operand {
    Env {
        env: String,
    },
    #[serde(rename_all = "camelCase")]
    PodField {
        pod_field: String,
    },
    Literal(Value),
}

impl Operand {
    /// The environment variable this names, if any; errors name the cause.
    pub fn env_name(&self) -> Result<Option<&str>, String> {
        match self {
            Operand::Env { env } if env.trim().is_empty() => {
                Err("env: name an environment variable".into())
            }
            Operand::Env { env } => Ok(Some(env)),
            Operand::PodField { pod_field } => {
                pod_field_env(pod_field).map(Some).ok_or_else(|| {
                    format!(
                        "podField: {pod_field:?} is not a field the injector passes; \
                     use metadata.name, metadata.namespace or spec.serviceAccountName"
                    )
                })
            }
            Operand::Literal(Value::Object(_) | Value::Array(_) | Value::Null) => {
                Err("must be a string, number or boolean, {env: NAME} or {podField: FIELD}".into())
            }
            Operand::Literal(_) => Ok(None),
        }
    }
}

/// The downward-API variables the injector sets (webhook/src/mutate/sidecar.rs).
fn pod_field_env(field: &str) -> Option<&'static str> {
    match field {
        "metadata.name" => Some("POD_NAME"),
        "metadata.namespace" => Some("POD_NAMESPACE"),
        "spec.serviceAccountName" => Some("SERVICE_ACCOUNT"),
        _ => None,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathCondition {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub exact: Option<String>,
}

const OPERATORS: &str = "equals, in, contains, prefix or present";

impl ConditionConfig {
    fn operators(&self) -> Vec<&'static str> {
        [
            ("equals", self.equals.is_some()),
            ("in", self.in_.is_some()),
            ("contains", self.contains.is_some()),
            ("prefix", self.prefix.is_some()),
            ("present", self.present.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// Checks the condition; errors are `(path under it, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let whole = |m: String| (String::new(), m);
        let subjects: Vec<&str> = [
            ("claim", self.claim.is_some()),
            ("peer", self.peer.is_some()),
            ("method", self.method.is_some()),
            ("path", self.path.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        let operators = self.operators();
        match subjects.as_slice() {
            [] if operators.is_empty() => {
                return Err(whole(
                    "an empty condition: test a claim, peer, method or path".into(),
                ));
            }
            [] => {
                return Err(whole(format!(
                    "{} needs a claim to compare: add `claim: <path>`",
                    operators[0]
                )));
            }
            [_] => {}
            many => {
                return Err(whole(format!(
                    "one condition tests one thing, this one {}; write one condition each",
                    many.join(" and ")
                )));
            }
        }
        if let Some(claim) = &self.claim {
            claim.keys().map_err(|m| ("claim".into(), m))?;
            match operators.as_slice() {
                [] => {
                    return Err(whole(format!(
                        "claim {claim:?} has no operator: add one of {OPERATORS}"
                    )));
                }
                [_] => {}
                many => {
                    return Err(whole(format!(
                        "one operator per condition, this one has {}",
                        many.join(" and ")
                    )));
                }
            }
            for (field, operand) in [
                ("equals", &self.equals),
                ("contains", &self.contains),
                ("prefix", &self.prefix),
            ] {
                if let Some(o) = operand {
                    o.env_name().map_err(|m| (field.to_owned(), m))?;
                }
            }
            if let Some(prefix) = &self.prefix
                && !matches!(
                    prefix,
                    Operand::Literal(Value::String(_))
                        | Operand::Env { .. }
                        | Operand::PodField { .. }
                )
            {
                return Err(("prefix".into(), "must be a string".into()));
            }
            if let Some(list) = &self.in_ {
                if list.is_empty() {
                    return Err(("in".into(), "name at least one value".into()));
                }
                for (i, o) in list.iter().enumerate() {
                    o.env_name().map_err(|m| (format!("in[{i}]"), m))?;
                }
            }
            if self.present == Some(false) {
                return Err((
                    "present".into(),
                    "only `present: true` is supported (deny on absence with an allow rule instead)"
                        .into(),
                ));
            }
        } else if let Some(op) = operators.first() {
            return Err(whole(format!("{op} applies to a claim only")));
        }
        if let Some(peer) = &self.peer {
            if peer.is_empty() {
                return Err(("peer".into(), "name at least one SPIFFE ID pattern".into()));
            }
            for (i, p) in peer.iter().enumerate() {
                IdPattern::parse(p).map_err(|e| (format!("peer[{i}]"), e.to_string()))?;
            }
        }
        if let Some(methods) = &self.method {
            if methods.is_empty() {
                return Err(("method".into(), "name at least one method".into()));
            }
            for (i, m) in methods.iter().enumerate() {
                let ok = !m.is_empty()
                    && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
                    && http::Method::from_bytes(m.as_bytes()).is_ok();
                if !ok {
                    return Err((
                        format!("method[{i}]"),
                        format!("{m:?} is not an HTTP method (GET, POST, … in capitals)"),
                    ));
                }
            }
        }
        if let Some(path) = &self.path {
            match (&path.prefix, &path.exact) {
                (Some(p), None) => {
                    crate::path::check_prefix(p).map_err(|m| ("path.prefix".into(), m))?
                }
                (None, Some(p)) => {
                    crate::path::check_prefix(p).map_err(|m| ("path.exact".into(), m))?
                }
                _ => {
                    return Err(("path".into(), "set exactly one of prefix and exact".into()));
                }
            }
        }
        Ok(())
    }
}

impl AuthorizationConfig {
    /// Checks the rules; errors are `(path under authorization, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.workspace.is_none() && self.rules.is_empty() {
            return Err((
                String::new(),
                "names no rules: add `rules` or `workspace`, or leave authorization out".into(),
            ));
        }
        if let Some(w) = &self.workspace {
            w.owner_claim
                .keys()
                .map_err(|m| ("workspace.ownerClaim".into(), m))?;
            w.groups_claim
                .keys()
                .map_err(|m| ("workspace.groupsClaim".into(), m))?;
            for (i, g) in w.admin_groups.iter().enumerate() {
                if g.trim().is_empty() {
                    return Err((
                        format!("workspace.adminGroups[{i}]"),
                        "must not be empty".into(),
                    ));
                }
            }
        }
        let mut names: Vec<String> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = |field: &str| {
                if field.is_empty() {
                    format!("rules[{i}]")
                } else {
                    format!("rules[{i}].{field}")
                }
            };
            if rule.when.is_empty() {
                return Err((
                    at("when"),
                    "an empty rule: give it at least one condition (an empty rule would match every request)"
                        .into(),
                ));
            }
            let name = rule.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
            if name.trim().is_empty() {
                return Err((at("name"), "must not be empty".into()));
            }
            if names.contains(&name)
                || ["owner", "admin", "team", "default", "no-allow-match"].contains(&name.as_str())
                    && self.workspace.is_some()
            {
                return Err((
                    at("name"),
                    format!("{name:?} names another rule of this route; give each a distinct name"),
                ));
            }
            names.push(name);
            for (j, c) in rule.when.iter().enumerate() {
                c.check().map_err(|(path, m)| {
                    let base = at(&format!("when[{j}]"));
                    (
                        if path.is_empty() {
                            base
                        } else {
                            format!("{base}.{path}")
                        },
                        m,
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Every environment variable the rules read (the workspace profile's
    /// included), with the path of the first rule reading it.
    pub fn env_references(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut add = |name: &str, path: String| {
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.to_owned(), path));
            }
        };
        if self.workspace.is_some() {
            add(OWNER_ENV, "workspace".into());
        }
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, c) in rule.when.iter().enumerate() {
                let at = format!("rules[{i}].when[{j}]");
                let single = [
                    ("equals", &c.equals),
                    ("contains", &c.contains),
                    ("prefix", &c.prefix),
                ];
                for (field, operand) in single {
                    if let Some(Ok(Some(name))) = operand.as_ref().map(Operand::env_name) {
                        add(name, format!("{at}.{field}"));
                    }
                }
                for (k, o) in c.in_.iter().flatten().enumerate() {
                    if let Ok(Some(name)) = o.env_name() {
                        add(name, format!("{at}.in[{k}]"));
                    }
                }
            }
        }
        out
    }
}
