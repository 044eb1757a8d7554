//! Evaluating a request against a [`PolicySet`].

use std::cell::RefCell;

use regorus::{Engine, Value};

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
}

/// Everything the policies said about one request.
#[derive(Debug, Default)]
pub struct Outcome {
    pub findings: Vec<Finding>,
    /// How many policies were evaluated (matched the kind).
    pub evaluated: usize,
}

thread_local! {
    /// This worker thread's clone of the newest prepared engine it has used,
    /// with that set's generation.
    static LOCAL_ENGINE: RefCell<Option<(u64, Engine)>> = const { RefCell::new(None) };
}

impl PolicySet {
    /// Evaluates the AdmissionRequest `review` (a `request` object) against
    /// every policy that matches `kind`, on this thread's engine.
    pub fn evaluate(&self, review: &Value, kind: &str) -> Outcome {
        LOCAL_ENGINE.with_borrow_mut(|slot| {
            if slot.as_ref().is_none_or(|(g, _)| *g != self.generation) {
                *slot = Some((self.generation, self.engine.clone()));
            }
            match slot {
                Some((_, engine)) => self.evaluate_on(engine, review, kind),
                None => self.evaluate_on_clone(review, kind),
            }
        })
    }

    /// Like [`PolicySet::evaluate`], on a fresh clone of the prepared
    /// engine: the alternative the benchmark compares against.
    #[doc(hidden)]
    pub fn evaluate_on_clone(&self, review: &Value, kind: &str) -> Outcome {
        self.evaluate_on(&mut self.engine.clone(), review, kind)
    }

    fn evaluate_on(&self, engine: &mut Engine, review: &Value, kind: &str) -> Outcome {
        let mut outcome = Outcome::default();
        for policy in self.matching(kind) {
            outcome.evaluated += 1;
            engine.set_input(input(review, &policy.parameters));
            let result = engine
                .eval_rule(policy.rule.clone())
                .map_err(|e| {
                    format!(
                        "policy failed to evaluate: {}",
                        compile_message(&e.to_string())
                    )
                })
                .and_then(|v| messages(&v));
            match result {
                Ok(messages) => outcome
                    .findings
                    .extend(messages.into_iter().map(|m| finding(policy, m))),
                Err(message) => outcome.findings.push(finding(policy, message)),
            }
        }
        outcome
    }
}

fn finding(policy: &Policy, message: String) -> Finding {
    Finding {
        policy: policy.name.clone(),
        enforcement: policy.enforcement,
        message,
    }
}

/// `{"review": <AdmissionRequest>, "parameters": <parameters>}`: values are
/// reference-counted, so this copies no document.
pub(super) fn input(review: &Value, parameters: &Value) -> Value {
    let mut input = Value::new_object();
    if let Ok(map) = input.as_object_mut() {
        map.insert(Value::from("review"), review.clone());
        map.insert(Value::from("parameters"), parameters.clone());
    }
    input
}

/// The messages of a `violation` set: each element's `msg`. An undefined
/// result is no violation; anything not of the contract's shape is an error.
pub(super) fn messages(result: &Value) -> Result<Vec<String>, String> {
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
        .map(|v| match &v["msg"] {
            Value::String(s) => Ok(s.to_string()),
            _ => Err(format!(
                "violation element has no string \"msg\": {}",
                v.to_json_str().unwrap_or_default()
            )),
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
