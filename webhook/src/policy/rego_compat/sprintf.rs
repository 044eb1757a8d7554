//! OPA's `sprintf`, registered in place of regorus's for Gatekeeper
//! templates and for `tollgate test` runs with Rego v0 files.
//!
//! OPA formats with Go's `fmt`: a verb without an argument prints
//! `%!v(MISSING)` (`%!d(MISSING)`, …), and arguments left over are appended
//! as `%!(EXTRA int64=1, string=a)`; the rule still fires. regorus fails
//! the evaluation instead (`no argument specified for format verb`), so a
//! Gatekeeper violation with a sloppy message vanished. Everything else —
//! every verb, width and value — is regorus's own `sprintf`, called with
//! the arguments that have a verb.

use std::sync::OnceLock;

use anyhow::{Context, bail};
use regorus::unstable::{BUILTINS, Expr, Parser, Ref, Source, Span};
use regorus::{Engine, Value};

/// Registers OPA's `sprintf` on `engine`, shadowing the builtin.
pub fn register(engine: &mut Engine) -> anyhow::Result<()> {
    engine.add_extension("sprintf".into(), 2, Box::new(sprintf))
}

/// A verb of a format string: its byte range and its letter.
struct Verb {
    start: usize,
    end: usize,
    letter: char,
}

/// The verbs of `format`, read as regorus reads them (`%%` is a literal
/// percent; a width or precision of digits and `.` may precede the
/// letter). `None` when a `%` is left without a letter, which regorus
/// reports itself.
fn verbs(format: &str) -> Option<Vec<Verb>> {
    let mut out = Vec::new();
    let mut chars = format.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c != '%' {
            continue;
        }
        if chars.peek().is_some_and(|(_, c)| *c == '%') {
            chars.next();
            continue;
        }
        while chars
            .peek()
            .is_some_and(|(_, c)| c.is_ascii_digit() || *c == '.')
        {
            chars.next();
        }
        let (at, letter) = chars.next()?;
        out.push(Verb {
            start,
            end: at + letter.len_utf8(),
            letter,
        });
    }
    Some(out)
}

/// regorus's `sprintf` builtin, called directly.
fn builtin(format: &str, args: &[Value]) -> anyhow::Result<String> {
    // The builtin wants the call's expressions for its error locations;
    // these are of a call written once, here.
    static CALL: OnceLock<Option<(Span, Vec<Ref<Expr>>)>> = OnceLock::new();
    let call = CALL.get_or_init(|| {
        let source =
            Source::from_contents("<sprintf>".into(), "sprintf(format, args)".into()).ok()?;
        match &Parser::new(&source).ok()?.parse_expr().ok()? {
            Expr::Call { span, params, .. } => Some((span.clone(), params.clone())),
            _ => None,
        }
    });
    let (span, params) = call
        .as_ref()
        .context("sprintf: regorus's builtin could not be called")?;
    let (function, _) = BUILTINS
        .get("sprintf")
        .context("sprintf: regorus no longer has the builtin")?;
    let value = function(
        span,
        params,
        &[Value::from(format), Value::from(args.to_vec())],
        false,
    )
    .map_err(|e| {
        // Keep the message, not the location in the synthetic call.
        let message = e.to_string();
        let message = message
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or(&message)
            .to_owned();
        anyhow::anyhow!("sprintf: {message}")
    })?;
    Ok(value.as_string()?.to_string())
}

/// Go's name for the type OPA hands to fmt for `value`.
fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Number(_) if value.as_i64().is_ok() => "int64",
        Value::Number(_) => "float64",
        _ => "string",
    }
}

fn sprintf(args: Vec<Value>) -> anyhow::Result<Value> {
    let format = args[0]
        .as_string()
        .map_err(|_| anyhow::anyhow!("sprintf: the format must be a string"))?;
    let values: Vec<Value> = match &args[1] {
        Value::Array(a) => a.iter().cloned().collect(),
        _ => bail!("sprintf: the arguments must be an array"),
    };
    let Some(verbs) = verbs(format) else {
        return Ok(Value::from(builtin(format, &values)?));
    };
    let n = values.len();
    if verbs.len() == n {
        return Ok(Value::from(builtin(format, &values)?));
    }
    if verbs.len() > n {
        // Format up to the first verb without an argument; the rest as Go
        // prints it.
        let split = verbs[n].start;
        let mut out = builtin(&format[..split], &values)?;
        let mut at = split;
        for verb in &verbs[n..] {
            out.push_str(&format[at..verb.start].replace("%%", "%"));
            out.push_str(&format!("%!{}(MISSING)", verb.letter));
            at = verb.end;
        }
        out.push_str(&format[at..].replace("%%", "%"));
        return Ok(Value::from(out));
    }
    let mut out = builtin(format, &values[..verbs.len()])?;
    let extra: anyhow::Result<Vec<String>> = values[verbs.len()..]
        .iter()
        .map(|v| {
            Ok(format!(
                "{}={}",
                go_type(v),
                builtin("%v", std::slice::from_ref(v))?
            ))
        })
        .collect();
    out.push_str(&format!("%!(EXTRA {})", extra?.join(", ")));
    Ok(Value::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(engine: &mut Engine, expr: &str) -> anyhow::Result<Value> {
        let results = engine.eval_query(expr.to_owned(), false)?;
        Ok(results.result[0].expressions[0].value.clone())
    }

    fn ours() -> Engine {
        let mut engine = Engine::new();
        register(&mut engine).unwrap();
        engine
    }

    #[test]
    fn regorus_still_fails_a_verb_without_an_argument() {
        // When this fails, regorus formats as Go does: remove this module.
        let err = eval(&mut Engine::new(), r#"sprintf("%v and %v", ["a"])"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("no argument specified for format verb"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_argument_prints_as_go_does() {
        let mut engine = ours();
        assert_eq!(
            eval(&mut engine, r#"sprintf("%v and %v, 100%%: %5d", ["a"])"#).unwrap(),
            Value::from("a and %!v(MISSING), 100%: %!d(MISSING)")
        );
        assert_eq!(
            eval(&mut engine, r#"sprintf("%s=%d", [])"#).unwrap(),
            Value::from("%!s(MISSING)=%!d(MISSING)")
        );
    }

    #[test]
    fn extra_arguments_are_appended_as_go_does() {
        let mut engine = ours();
        assert_eq!(
            eval(&mut engine, r#"sprintf("x %v", ["a", 1, 1.5, "b", [1]])"#).unwrap(),
            Value::from("x a%!(EXTRA int64=1, float64=1.5, string=b, string=[1])")
        );
    }

    #[test]
    fn everything_else_is_regoruss_own() {
        let mut ours = ours();
        let mut theirs = Engine::new();
        for expr in [
            r#"sprintf("%v %s %d %05d %.2f %x %%", ["a", {"k": [1, "b"]}, 42, 7, 3.14159, 255])"#,
            r#"sprintf("no verbs", [])"#,
            r#"sprintf("%v", [{"a", "b"}])"#,
        ] {
            assert_eq!(
                eval(&mut ours, expr).unwrap(),
                eval(&mut theirs, expr).unwrap(),
                "{expr}"
            );
        }
        assert!(eval(&mut ours, r#"sprintf("%", ["a"])"#).is_err());
    }
}
