//! The compiled rules of one route and their evaluation: DENY rules first
//! (a match refuses), then, for a request that passes, AUDIT rules (each
//! match is reported), then ALLOW rules (a route with any lets in only a
//! request one of them matches). Everything a rule compares with is
//! resolved when the table is built: evaluating touches no environment,
//! allocates nothing and takes no lock.

use std::sync::Arc;

use http::Method;
use serde_json::Value;
use tollgate_certs::spiffe::IdPattern;

use super::config::{
    Action, AuthorizationConfig, ClaimPath, ConditionConfig, OWNER_ENV, Operand, SHARING_ENV,
    TEAM_ENV,
};

/// What a rule looks at in a request.
pub struct Input<'a> {
    pub method: &'a Method,
    /// Normalised.
    pub path: &'a str,
    /// The peer's SPIFFE ID, if it presented a certificate.
    pub peer: Option<&'a str>,
    /// Verified claims, if the request carried a valid token.
    pub claims: Option<&'a serde_json::Map<String, Value>>,
}

#[derive(Debug)]
enum Test {
    Equals(Value),
    In(Vec<Value>),
    Contains(Value),
    Prefix(String),
    Present,
}

#[derive(Debug)]
enum Condition {
    Claim { keys: Vec<String>, test: Test },
    Peer(Vec<IdPattern>),
    Method(Vec<Method>),
    PathPrefix(String),
    PathExact(String),
}

#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    conditions: Vec<Condition>,
}

/// One route's rules, by action, in their written order.
#[derive(Debug, Default)]
pub struct Authorization {
    pub deny: Vec<Rule>,
    pub audit: Vec<Rule>,
    pub allow: Vec<Rule>,
}

/// What the rules decided; indexes are into [`Authorization`]'s lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by this allow rule.
    Allowed(usize),
    /// No allow rules, no deny rule matched.
    NoAllowRules,
    /// Refused by this deny rule.
    Denied(usize),
    /// The route has allow rules and none matched.
    NotAllowed,
}

fn claim<'a>(claims: &'a serde_json::Map<String, Value>, keys: &[String]) -> Option<&'a Value> {
    let (first, rest) = keys.split_first()?;
    let mut value = claims.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

impl Condition {
    fn holds(&self, input: &Input<'_>) -> bool {
        match self {
            Condition::Claim { keys, test } => {
                let Some(value) = input.claims.and_then(|c| claim(c, keys)) else {
                    return false;
                };
                match test {
                    Test::Equals(want) => value == want,
                    Test::In(list) => list.iter().any(|w| w == value),
                    Test::Contains(want) => match value {
                        Value::Array(items) => items.iter().any(|i| i == want),
                        // OAuth's `scope`: space-separated words.
                        Value::String(s) => want
                            .as_str()
                            .is_some_and(|w| s.split_ascii_whitespace().any(|word| word == w)),
                        _ => false,
                    },
                    Test::Prefix(p) => value.as_str().is_some_and(|s| s.starts_with(p.as_str())),
                    Test::Present => !value.is_null(),
                }
            }
            Condition::Peer(patterns) => input
                .peer
                .is_some_and(|id| patterns.iter().any(|p| p.matches(id))),
            Condition::Method(methods) => methods.iter().any(|m| m == input.method),
            Condition::PathPrefix(p) => crate::path::prefix_matches(p, input.path),
            Condition::PathExact(p) => input.path == p,
        }
    }
}

impl Rule {
    pub fn matches(&self, input: &Input<'_>) -> bool {
        self.conditions.iter().all(|c| c.holds(input))
    }
}

impl Authorization {
    /// Refuses every request: what a route gets whose rules could not be
    /// resolved (see `RouteTable::new`).
    pub fn refuse_all() -> Authorization {
        Authorization {
            deny: vec![Rule {
                name: "unresolved".into(),
                conditions: Vec::new(),
            }],
            ..Authorization::default()
        }
    }

    /// DENY first, then ALLOW.
    pub fn decide(&self, input: &Input<'_>) -> Decision {
        if let Some(i) = self.deny.iter().position(|r| r.matches(input)) {
            return Decision::Denied(i);
        }
        if self.allow.is_empty() {
            return Decision::NoAllowRules;
        }
        match self.allow.iter().position(|r| r.matches(input)) {
            Some(i) => Decision::Allowed(i),
            None => Decision::NotAllowed,
        }
    }

    /// The audit rules `input` matches.
    pub fn audits<'a>(&'a self, input: &'a Input<'a>) -> impl Iterator<Item = usize> + 'a {
        self.audit
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.matches(input))
            .map(|(i, _)| i)
    }

    /// Compiles a checked config. `env` reads the proxy's environment;
    /// errors are `(path under authorization, message)`.
    pub fn compile(
        config: &AuthorizationConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Authorization, (String, String)> {
        let read = |name: &str, at: &str| -> Result<String, (String, String)> {
            match env(name).map(|v| v.trim().to_owned()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err((
                    at.to_owned(),
                    format!(
                        "reads ${name}, which is unset or empty; the injector sets it for \
                         workspace pods (docs/sidecar.md)"
                    ),
                )),
            }
        };
        let mut out = Authorization::default();
        if let Some(w) = &config.workspace {
            let keys = |p: &ClaimPath| p.keys().unwrap_or_default();
            let owner = read(OWNER_ENV, "workspace")?;
            out.allow.push(Rule {
                name: "owner".into(),
                conditions: vec![Condition::Claim {
                    keys: keys(&w.owner_claim),
                    test: Test::Equals(Value::String(owner)),
                }],
            });
            for group in &w.admin_groups {
                out.allow.push(Rule {
                    name: "admin".into(),
                    conditions: vec![Condition::Claim {
                        keys: keys(&w.groups_claim),
                        test: Test::Contains(Value::String(group.clone())),
                    }],
                });
            }
            match env(SHARING_ENV).as_deref().map(str::trim) {
                None | Some("") | Some("none") => {}
                Some("team") => {
                    let team = read(TEAM_ENV, "workspace")?;
                    out.allow.push(Rule {
                        name: "team".into(),
                        conditions: vec![Condition::Claim {
                            keys: keys(&w.groups_claim),
                            test: Test::Contains(Value::String(team)),
                        }],
                    });
                }
                Some(other) => {
                    return Err((
                        "workspace".into(),
                        format!(
                            "${SHARING_ENV} is {other:?}; the sharing modes are `team` and `none`"
                        ),
                    ));
                }
            }
        }
        for (i, rule) in config.rules.iter().enumerate() {
            let name: Arc<str> = rule
                .name
                .clone()
                .unwrap_or_else(|| format!("rules[{i}]"))
                .into();
            let conditions = rule
                .when
                .iter()
                .enumerate()
                .map(|(j, c)| compile_condition(c, &format!("rules[{i}].when[{j}]"), &read))
                .collect::<Result<_, _>>()?;
            let list = match rule.action {
                Action::Allow => &mut out.allow,
                Action::Deny => &mut out.deny,
                Action::Audit => &mut out.audit,
            };
            list.push(Rule { name, conditions });
        }
        Ok(out)
    }
}

type Read<'a> = dyn Fn(&str, &str) -> Result<String, (String, String)> + 'a;

fn resolve(operand: &Operand, at: &str, read: &Read<'_>) -> Result<Value, (String, String)> {
    match operand.env_name().map_err(|m| (at.to_owned(), m))? {
        Some(name) => read(name, at).map(Value::String),
        None => match operand {
            Operand::Literal(v) => Ok(v.clone()),
            _ => Err((at.to_owned(), "unresolvable operand".into())),
        },
    }
}

fn compile_condition(
    c: &ConditionConfig,
    at: &str,
    read: &Read<'_>,
) -> Result<Condition, (String, String)> {
    c.check().map_err(|(path, m)| {
        (
            if path.is_empty() {
                at.to_owned()
            } else {
                format!("{at}.{path}")
            },
            m,
        )
    })?;
    if let Some(path) = &c.claim {
        let keys = path.keys().map_err(|m| (format!("{at}.claim"), m))?;
        let test = if let Some(o) = &c.equals {
            Test::Equals(resolve(o, &format!("{at}.equals"), read)?)
        } else if let Some(list) = &c.in_ {
            Test::In(
                list.iter()
                    .enumerate()
                    .map(|(k, o)| resolve(o, &format!("{at}.in[{k}]"), read))
                    .collect::<Result<_, _>>()?,
            )
        } else if let Some(o) = &c.contains {
            Test::Contains(resolve(o, &format!("{at}.contains"), read)?)
        } else if let Some(o) = &c.prefix {
            match resolve(o, &format!("{at}.prefix"), read)? {
                Value::String(s) => Test::Prefix(s),
                _ => return Err((format!("{at}.prefix"), "must be a string".into())),
            }
        } else {
            Test::Present
        };
        return Ok(Condition::Claim { keys, test });
    }
    if let Some(peer) = &c.peer {
        return Ok(Condition::Peer(
            peer.iter()
                .filter_map(|p| IdPattern::parse(p).ok())
                .collect(),
        ));
    }
    if let Some(methods) = &c.method {
        return Ok(Condition::Method(
            methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
        ));
    }
    match c.path.as_ref().map(|p| (&p.prefix, &p.exact)) {
        Some((Some(p), _)) => Ok(Condition::PathPrefix(p.clone())),
        Some((_, Some(p))) => Ok(Condition::PathExact(p.clone())),
        _ => Err((at.to_owned(), "an empty condition".into())),
    }
}
