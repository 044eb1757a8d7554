//! Evaluating a request against a [`PolicySet`].

use std::cell::RefCell;

use regorus::rvm::RegoVM;
use regorus::{Engine, Value};

use super::bytecode;
use super::gatekeeper::matching::{NamespaceLabels, NoNamespaces};
use super::load::compile_message;
use super::{Policy, PolicySet};
use crate::config::Enforcement;

/// One policy's verdict on a request: a violation, or a failure to
/// evaluate (which counts as a violation: never a silent allow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub policy: String,
    pub enforcement: Enforcement,
    pub message: String,
    /// The policy failed to evaluate; `message` says why.
    pub error: bool,
}

/// Everything the policies said about one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub findings: Vec<Finding>,
    /// How many policies were evaluated (matched the kind).
    pub evaluated: usize,
    /// Whether a policy failed to evaluate (its finding says so). Such an
    /// outcome may be transient (the time limit under load), so it is
    /// never cached.
    pub failed: bool,
}

/// A thread's clones of one policy set's prepared engines: the native
/// engine first, then one per Gatekeeper template; and a VM per group
/// compiled to bytecode.
struct Engines {
    generation: u64,
    engines: Vec<Engine>,
    vms: Vec<Option<RegoVM>>,
}

thread_local! {
    /// This worker thread's clones of the newest policy set it has used.
    static LOCAL_ENGINES: RefCell<Option<Engines>> = const { RefCell::new(None) };
}

impl PolicySet {
    fn clone_engines(&self) -> Engines {
        Engines {
            generation: self.generation,
            engines: std::iter::once(self.engine.clone())
                .chain(self.templates.iter().map(|t| t.engine()))
                .collect(),
            vms: self
                .programs
                .iter()
                .map(|p| p.as_ref().and_then(|p| p.vm().ok()))
                .collect(),
        }
    }

    /// Evaluates the AdmissionRequest `review` (a `request` object) against
    /// every policy that matches `kind` and every constraint whose match
    /// applies, on this thread's engines.
    pub fn evaluate(&self, review: &Value, kind: &str) -> Outcome {
        self.evaluate_in(review, kind, &NoNamespaces)
    }

    /// Like [`PolicySet::evaluate`], with the namespace labels that
    /// constraints' `namespaceSelector`s read.
    pub fn evaluate_in(
        &self,
        review: &Value,
        kind: &str,
        namespaces: &dyn NamespaceLabels,
    ) -> Outcome {
        self.evaluate_in_namespace(review, kind, namespaces, &Value::Undefined)
    }

    /// Like [`PolicySet::evaluate_in`], with what the native policies know
    /// of the request's namespace as `input.namespace` (its labels and Pod
    /// Security levels; undefined when `Value::Undefined`).
    pub fn evaluate_in_namespace(
        &self,
        review: &Value,
        kind: &str,
        namespaces: &dyn NamespaceLabels,
        namespace: &Value,
    ) -> Outcome {
        LOCAL_ENGINES.with_borrow_mut(|slot| {
            if slot
                .as_ref()
                .is_none_or(|e| e.generation != self.generation)
            {
                *slot = Some(self.clone_engines());
            }
            let mut fresh;
            let engines = match slot {
                Some(engines) => engines,
                None => {
                    fresh = self.clone_engines();
                    &mut fresh
                }
            };
            self.evaluate_on(engines, review, kind, namespaces, namespace)
        })
    }

    /// Like [`PolicySet::evaluate`], on fresh clones of the prepared
    /// engines: the alternative the benchmark compares against.
    #[doc(hidden)]
    pub fn evaluate_on_clone(&self, review: &Value, kind: &str) -> Outcome {
        self.evaluate_on(
            &mut self.clone_engines(),
            review,
            kind,
            &NoNamespaces,
            &Value::Undefined,
        )
    }

    fn evaluate_on(
        &self,
        engines: &mut Engines,
        review: &Value,
        kind: &str,
        namespaces: &dyn NamespaceLabels,
        namespace: &Value,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let vms = &mut engines.vms;
        let Some((engine, template_engines)) = engines.engines.split_first_mut() else {
            return outcome;
        };
        let matching: Vec<usize> = (0..self.policies.len())
            .filter(|&i| self.policies[i].applies_to(kind))
            .collect();
        outcome.evaluated += matching.len();
        // Each matching policy's verdict, in the policies' order.
        let mut verdicts: Vec<Option<Verdict>> = vec![None; self.policies.len()];
        if self.grouped {
            for (g, group) in self.groups.iter().enumerate() {
                let members: Vec<&Policy> = group
                    .members
                    .iter()
                    .filter(|i| matching.contains(i))
                    .map(|&i| &self.policies[i])
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let input = group_input(review, &group.parameters, namespace, &members);
                // An error anywhere in the group (a policy failing, the
                // time limit, the VM) is attributed by evaluating its
                // members one by one below, on the interpreter; a
                // well-formed answer decides for all.
                let answer = match vms.get_mut(g).and_then(Option::as_mut) {
                    Some(vm) => bytecode::run(vm, input).ok(),
                    None => {
                        engine.set_input(input);
                        engine.eval_rule(group.rule.clone()).ok()
                    }
                };
                let results = match answer {
                    Some(Value::Object(results)) => results,
                    // No member defined its entry: no violations at all.
                    Some(Value::Undefined) => Default::default(),
                    _ => continue,
                };
                for &i in &group.members {
                    if !matching.contains(&i) {
                        continue;
                    }
                    let name = Value::from(self.policies[i].name.as_str());
                    let value = results.get(&name).unwrap_or(&Value::Undefined);
                    verdicts[i] = Some(violations(value));
                }
            }
        }
        for &i in &matching {
            let policy = &self.policies[i];
            let verdict = match verdicts[i].take() {
                Some(verdict) => verdict,
                None => evaluate_one(engine, policy, review, namespace),
            };
            match verdict {
                Ok(violations) => outcome.findings.extend(
                    violations
                        .into_iter()
                        .map(|(m, enforcement)| finding(policy, m, enforcement, false)),
                ),
                Err(message) => {
                    outcome.failed = true;
                    outcome.findings.push(finding(policy, message, None, true));
                }
            }
        }
        for (constraint, index) in &self.constraints {
            if !constraint.matcher.applies(review, namespaces) {
                continue;
            }
            outcome.evaluated += 1;
            let (Some(template), Some(engine)) =
                (self.templates.get(*index), template_engines.get_mut(*index))
            else {
                continue;
            };
            let found = |message: String, error: bool| Finding {
                policy: constraint.name.clone(),
                enforcement: constraint.enforcement,
                message,
                error,
            };
            match template.evaluate(engine, review, &constraint.parameters) {
                Ok(violations) => outcome
                    .findings
                    .extend(violations.into_iter().map(|v| found(v.msg, false))),
                Err(e) => {
                    outcome.failed = true;
                    outcome
                        .findings
                        .push(found(format!("policy failed to evaluate: {e}"), true));
                }
            }
        }
        outcome
    }
}

/// A policy's violations (message, enforcement named by the violation), or
/// why it failed to evaluate.
type Verdict = Result<Vec<(String, Option<Enforcement>)>, String>;

/// One policy, on its own: one `eval_rule` of its `violation`.
fn evaluate_one(
    engine: &mut Engine,
    policy: &Policy,
    review: &Value,
    namespace: &Value,
) -> Verdict {
    engine.set_input(input_in(review, &policy.parameters, namespace));
    engine
        .eval_rule(policy.rule.clone())
        .map_err(|e| {
            format!(
                "policy failed to evaluate: {}",
                compile_message(&e.to_string())
            )
        })
        .and_then(|v| violations(&v))
}

/// A group's input: the policies' input, plus `tollgate_policies`, the
/// names of the members to evaluate.
pub(super) fn group_input(
    review: &Value,
    parameters: &Value,
    namespace: &Value,
    members: &[&Policy],
) -> Value {
    let mut input = input_in(review, parameters, namespace);
    let mut selected = Value::new_object();
    if let Ok(map) = selected.as_object_mut() {
        for policy in members {
            map.insert(Value::from(policy.name.as_str()), Value::from(true));
        }
    }
    if let Ok(map) = input.as_object_mut() {
        map.insert(Value::from("tollgate_policies"), selected);
    }
    input
}

/// A violation that names its own enforcement (the `pod_security` set's,
/// from the namespace's mode) gets the weaker of that and the policy's.
fn finding(
    policy: &Policy,
    message: String,
    enforcement: Option<Enforcement>,
    error: bool,
) -> Finding {
    Finding {
        policy: policy.name.clone(),
        enforcement: enforcement.map_or(policy.enforcement, |e| weaker(e, policy.enforcement)),
        message,
        error,
    }
}

fn weaker(a: Enforcement, b: Enforcement) -> Enforcement {
    let rank = |e| match e {
        Enforcement::Deny => 2,
        Enforcement::Warn => 1,
        Enforcement::Dryrun => 0,
    };
    if rank(a) <= rank(b) { a } else { b }
}

/// `{"review": <AdmissionRequest>, "parameters": <parameters>}`: values are
/// reference-counted, so this copies no document.
pub(crate) fn input(review: &Value, parameters: &Value) -> Value {
    let mut input = Value::new_object();
    if let Ok(map) = input.as_object_mut() {
        map.insert(Value::from("review"), review.clone());
        map.insert(Value::from("parameters"), parameters.clone());
    }
    input
}

/// `input` with `input.namespace` too, when defined.
fn input_in(review: &Value, parameters: &Value, namespace: &Value) -> Value {
    let mut input = input(review, parameters);
    if *namespace != Value::Undefined
        && let Ok(map) = input.as_object_mut()
    {
        map.insert(Value::from("namespace"), namespace.clone());
    }
    input
}

/// The messages of a `violation` set: each element's `msg`. An undefined
/// result is no violation; anything not of the contract's shape is an error.
pub(super) fn messages(result: &Value) -> Result<Vec<String>, String> {
    Ok(violations(result)?.into_iter().map(|(m, _)| m).collect())
}

/// Each element's `msg`, and its `enforcement` (`deny`, `warn` or
/// `dryrun`) when it names one.
fn violations(result: &Value) -> Verdict {
    let set = match result {
        Value::Undefined => return Ok(Vec::new()),
        Value::Set(set) => set,
        other => {
            return Err(format!(
                "violation must be a set of {{\"msg\": ...}} objects, got {}",
                type_name(other)
            ));
        }
    };
    set.iter()
        .map(|v| {
            let shape = |what: &str| {
                format!(
                    "violation element has {what}: {}",
                    v.to_json_str().unwrap_or_default()
                )
            };
            let Value::String(msg) = &v["msg"] else {
                return Err(shape("no string \"msg\""));
            };
            let enforcement = match &v["enforcement"] {
                Value::Undefined => None,
                Value::String(e) => Some(match e.as_ref() {
                    "deny" => Enforcement::Deny,
                    "warn" => Enforcement::Warn,
                    "dryrun" => Enforcement::Dryrun,
                    _ => return Err(shape("an \"enforcement\" other than deny, warn or dryrun")),
                }),
                _ => return Err(shape("an \"enforcement\" other than deny, warn or dryrun")),
            };
            Ok((msg.to_string(), enforcement))
        })
        .collect()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    }
}
