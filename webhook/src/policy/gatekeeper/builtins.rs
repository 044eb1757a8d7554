//! OPA builtins that are deprecated but still called by Gatekeeper library
//! templates, and that regorus does not provide even in Rego v0 mode:
//! `re_match`, `any`, `all`, `set_diff`, `cast_array`, `cast_set`.
//! Each behaves as OPA's did. OPA's `sprintf`
//! ([`crate::policy::rego_compat::sprintf`]) is registered with them.

use std::sync::OnceLock;

use anyhow::{Context, bail};
use regorus::{Engine, Value};

/// Registers every deprecated builtin, and OPA's `sprintf`, on `engine`.
pub fn register(engine: &mut Engine) -> anyhow::Result<()> {
    crate::policy::rego_compat::sprintf::register(engine)?;
    engine.add_extension("re_match".into(), 2, Box::new(re_match))?;
    engine.add_extension("any".into(), 1, Box::new(any))?;
    engine.add_extension("all".into(), 1, Box::new(all))?;
    engine.add_extension("set_diff".into(), 2, Box::new(set_diff))?;
    engine.add_extension("cast_array".into(), 1, Box::new(cast_array))?;
    engine.add_extension("cast_set".into(), 1, Box::new(cast_set))?;
    Ok(())
}

/// Compiled `re_match` patterns, shared by every engine and thread: a
/// template calls it per container and per request with the same few
/// patterns, and compiling was most of its cost. Bounded, so that patterns
/// built from request data cannot grow it; a pattern that does not compile
/// keeps its error.
fn compiled(pattern: &str) -> Result<regex::Regex, String> {
    static PATTERNS: OnceLock<quick_cache::sync::Cache<String, Result<regex::Regex, String>>> =
        OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| quick_cache::sync::Cache::new(1024));
    if let Some(found) = patterns.get(pattern) {
        return found;
    }
    let result = regex::Regex::new(pattern).map_err(|e| e.to_string());
    patterns.insert(pattern.to_owned(), result.clone());
    result
}

fn re_match(args: Vec<Value>) -> anyhow::Result<Value> {
    let pattern = args[0]
        .as_string()
        .context("re_match: pattern must be a string")?;
    let value = args[1]
        .as_string()
        .context("re_match: value must be a string")?;
    let re = compiled(pattern)
        .map_err(|e| anyhow::anyhow!("re_match: invalid pattern {pattern:?}: {e}"))?;
    Ok(Value::from(re.is_match(value)))
}

fn elements(v: &Value, builtin: &str) -> anyhow::Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a.iter().cloned().collect()),
        Value::Set(s) => Ok(s.iter().cloned().collect()),
        _ => bail!("{builtin}: operand must be an array or a set"),
    }
}

fn any(args: Vec<Value>) -> anyhow::Result<Value> {
    Ok(Value::from(
        elements(&args[0], "any")?.contains(&Value::Bool(true)),
    ))
}

fn all(args: Vec<Value>) -> anyhow::Result<Value> {
    Ok(Value::from(
        elements(&args[0], "all")?
            .iter()
            .all(|v| *v == Value::Bool(true)),
    ))
}

fn set_diff(args: Vec<Value>) -> anyhow::Result<Value> {
    let (Value::Set(a), Value::Set(b)) = (&args[0], &args[1]) else {
        bail!("set_diff: operands must be sets");
    };
    Ok(a.difference(b).into_value())
}

fn cast_array(args: Vec<Value>) -> anyhow::Result<Value> {
    Ok(Value::from(elements(&args[0], "cast_array")?))
}

fn cast_set(args: Vec<Value>) -> anyhow::Result<Value> {
    let mut set = Value::new_set();
    let inner = set.as_set_mut()?;
    for v in elements(&args[0], "cast_set")? {
        inner.insert(v);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(query: &str) -> Value {
        let mut engine = Engine::new();
        engine.set_rego_v0(true);
        register(&mut engine).unwrap();
        engine
            .add_policy(
                "t.rego".into(),
                format!("package t\nx = v {{ v := {query} }}\n"),
            )
            .unwrap();
        engine.eval_rule("data.t.x".into()).unwrap()
    }

    #[test]
    fn deprecated_builtins_behave_as_opa_did() {
        assert_eq!(eval(r#"re_match("^ab+$", "abbb")"#), Value::from(true));
        assert_eq!(eval(r#"re_match("^ab+$", "ac")"#), Value::from(false));
        assert_eq!(eval("any([false, true])"), Value::from(true));
        assert_eq!(eval("any(set())"), Value::from(false));
        assert_eq!(eval("all([true, true])"), Value::from(true));
        assert_eq!(eval("all({true, false})"), Value::from(false));
        assert_eq!(eval("set_diff({1, 2, 3}, {2})"), eval("{1, 3}"));
        assert_eq!(eval("cast_array({1})"), eval("[1]"));
        assert_eq!(eval("cast_set([1, 1, 2])"), eval("{1, 2}"));
    }

    #[test]
    fn re_match_answers_alike_from_its_pattern_cache() {
        let call = |pattern: &str, value: &str| {
            re_match(vec![Value::from(pattern), Value::from(value)]).map_err(|e| e.to_string())
        };
        for _ in 0..3 {
            assert_eq!(call("^ab+$", "abbb"), Ok(Value::from(true)));
            assert_eq!(call("^ab+$", "ac"), Ok(Value::from(false)));
            let err = call("(unclosed", "x").unwrap_err();
            assert!(
                err.starts_with("re_match: invalid pattern \"(unclosed\": "),
                "{err}"
            );
        }
    }
}
