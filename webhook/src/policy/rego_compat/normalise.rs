//! Source rewrites that make regorus read a module as OPA does, found on
//! regorus's own tokens (so strings and comments are never touched) and
//! made without adding or removing a line:
//!
//! - **Several bodies** (v0): `p[x] { a } { b }` is OPA's "or", one rule
//!   per body; regorus refuses it for set rules (`else cannot be used with
//!   set rules`). Each further body gets the head written in front of it,
//!   on its own line: `p[x] { a } p[x] { b }`.
//! - **Statement ends**: in OPA a newline ends an expression, so a line
//!   that starts with `(` after one that ended with a reference is a new
//!   expression; regorus reads it as a call of that reference (`could not
//!   find function input.parameters.x`). A `;` is put after the reference.
//! - **Negations**: OPA's compiler binds a negated call's arguments (its
//!   references and nested calls) and the operands of an operator before
//!   the negation, so `not f(params.ranges)` *fails* when `params.ranges`
//!   is undefined; regorus makes the call undefined and the `not` true. (A
//!   PSP-style template's `not accept(rule, v, params.ranges)` under
//!   `rule: RunAsAny` with no `ranges` fired in Tollgate and not in
//!   Gatekeeper.) They are bound first, as OPA does:
//!   `__tollgate_not0 = params.ranges; not f(__tollgate_not0)`.
//!   [`negated_calls`] says which.

use regorus::unstable::{Lexer, Source, TokenKind};

use super::RegoVersion;

/// What was rewritten, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// A further body of the rule whose head is on `head_line`.
    SeveralBodies { line: u32, head_line: u32 },
    /// A `;` after the reference that ends `line`.
    StatementEnd { line: u32 },
    /// Arguments or operands of a negated expression on `line`, bound
    /// before it.
    NegatedCall { line: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    pub text: String,
    pub rewrites: Vec<Rewrite>,
}

/// A construct that could not be rewritten, with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:{col}: {message}")]
pub struct NormaliseError {
    pub path: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
}

#[derive(Debug)]
struct Token {
    kind: TokenKind,
    /// The token's text, quotes included for strings.
    start: usize,
    end: usize,
    line: u32,
    col: u32,
}

/// Words that end no reference (keywords and literals).
const NOT_A_REFERENCE: &[&str] = &[
    "as", "contains", "default", "else", "every", "false", "if", "import", "in", "not", "null",
    "package", "some", "true", "with",
];

fn tokens(path: &str, text: &str) -> Option<Vec<Token>> {
    let source = Source::from_contents(path.to_owned(), text.to_owned()).ok()?;
    let mut lexer = Lexer::new(&source);
    let mut out = Vec::new();
    loop {
        // A file that does not lex is left unchanged, for the parser to
        // report with its own message.
        let token = lexer.next_token().ok()?;
        let span = &token.1;
        let (mut start, mut end) = (span.start as usize, span.end as usize);
        match token.0 {
            TokenKind::Eof => break,
            // String spans leave out the quotes.
            TokenKind::String | TokenKind::RawString => {
                start = start.saturating_sub(1);
                end = (end + 1).min(text.len());
            }
            _ => {}
        }
        out.push(Token {
            kind: token.0,
            start,
            end,
            line: span.line,
            col: span.col,
        });
    }
    Some(out)
}

/// Rewrites `text` (the module at `path`, of `version`) as described above.
pub fn normalise(
    path: &str,
    text: &str,
    version: RegoVersion,
) -> Result<Normalised, NormaliseError> {
    let unchanged = || Normalised {
        text: text.to_owned(),
        rewrites: Vec::new(),
    };
    let Some(tokens) = tokens(path, text) else {
        return Ok(unchanged());
    };
    let word = |t: &Token| &text[t.start..t.end];
    let is_symbol = |t: &Token, s: &str| t.kind == TokenKind::Symbol && word(t) == s;

    // Open brackets: the bracket and, for `{` at the top level, whether it
    // opens a rule body (rather than an object or set value).
    let mut open: Vec<(char, bool)> = Vec::new();
    let mut inserts: Vec<(usize, String)> = Vec::new();
    let mut rewrites = Vec::new();
    // The top-level statement being read: its first token, the index of
    // its first body's `{`, and whether it has an `else`.
    let mut statement = 0usize;
    let mut first_body: Option<usize> = None;
    let mut has_else = false;
    // Whether the previous token closed a top-level rule body.
    let mut closed_body = false;
    for (i, t) in tokens.iter().enumerate() {
        let previous = i.checked_sub(1).map(|j| &tokens[j]);
        let first_on_line = previous.is_none_or(|p| p.line < t.line);
        // A top-level line that starts neither an `else` nor a further
        // body starts a new statement.
        if open.is_empty()
            && first_on_line
            && !(t.kind == TokenKind::Ident && word(t) == "else")
            && !(is_symbol(t, "{") && closed_body)
        {
            statement = i;
            first_body = None;
            has_else = false;
        }
        if open.is_empty() && t.kind == TokenKind::Ident && word(t) == "else" {
            has_else = true;
        }
        let was_closed_body = std::mem::take(&mut closed_body);
        if t.kind != TokenKind::Symbol {
            continue;
        }
        match word(t) {
            "(" => {
                if let Some(p) = previous
                    && p.line < t.line
                    && open.last().is_some_and(|(c, _)| *c == '{')
                    && ends_reference(p, word(p))
                {
                    inserts.push((p.end, ";".to_owned()));
                    rewrites.push(Rewrite::StatementEnd { line: p.line });
                }
                open.push(('(', false));
            }
            "[" => open.push(('[', false)),
            "{" => {
                let body = open.is_empty() && previous.is_some_and(|p| opens_body(p, word(p)));
                if body {
                    match first_body {
                        Some(first)
                            if version == RegoVersion::V0 && was_closed_body && !has_else =>
                        {
                            let head = head(&tokens[statement..first], text).ok_or_else(|| {
                                NormaliseError {
                                    path: path.to_owned(),
                                    line: t.line,
                                    col: t.col,
                                    message: "a further body of a rule (v0 `p { … } { … }`) whose \
                                              head could not be found; write each body as a rule \
                                              of its own"
                                        .to_owned(),
                                }
                            })?;
                            inserts.push((t.start, format!("{head} ")));
                            rewrites.push(Rewrite::SeveralBodies {
                                line: t.line,
                                head_line: tokens[statement].line,
                            });
                        }
                        None => first_body = Some(i),
                        Some(_) => {}
                    }
                }
                open.push(('{', body));
            }
            ")" | "]" => {
                open.pop();
            }
            "}" => {
                if let Some((_, body)) = open.pop() {
                    closed_body = body && open.is_empty();
                }
            }
            _ => {}
        }
    }
    let mut edits: Vec<(usize, usize, String)> =
        inserts.into_iter().map(|(at, s)| (at, at, s)).collect();
    negated_calls(&tokens, text, &mut edits, &mut rewrites);
    if edits.is_empty() {
        return Ok(unchanged());
    }
    edits.sort_by_key(|(at, end, _)| (*at, *end));
    let mut out = String::with_capacity(text.len() + edits.len() * 32);
    let mut from = 0;
    for (at, end, replacement) in edits {
        if at < from {
            // Overlapping edits cannot come from well-formed Rego; leave
            // the rest for the parser to judge.
            continue;
        }
        out.push_str(&text[from..at]);
        out.push_str(&replacement);
        from = end;
    }
    out.push_str(&text[from..]);
    Ok(Normalised {
        text: out,
        rewrites,
    })
}

/// Whether a top-level `{` after `t` opens a rule body: after a rule's
/// name, its closing bracket, a value, `if` or `else` — not after an
/// operator or a keyword that takes a term (`p = {…}`, `contains {…}`).
fn opens_body(t: &Token, word: &str) -> bool {
    match t.kind {
        TokenKind::Ident => !matches!(word, "contains" | "in" | "not" | "as" | "with" | "some"),
        TokenKind::Symbol => matches!(word, "]" | ")" | "}"),
        _ => true,
    }
}

/// Binds, before the `not`, what OPA's compiler binds before a negated
/// expression (`rewriteExprTerms` moves nested calls out, `rewriteEquals`
/// makes `==` a unification, `rewriteDynamics` binds the references among a
/// call's arguments):
///
/// - `not f(a.b, g(x))`: each argument that is a reference of more than
///   one part, a call or an operation;
/// - `not a.b < g(x)` (any operator but `==`/`=`, `in` included): each
///   operand that is such a reference or a call;
/// - `not lhs == rhs`: a side that is a call or an operation, not one that
///   is a reference (a unification binds nothing first).
///
/// Left alone: a `not` over one reference (`not input.x`), over a literal
/// or composite value, any `not … with …` (OPA binds those under the
/// `with`), and an expression mixing `==` with other operators.
fn negated_calls(
    tokens: &[Token],
    text: &str,
    edits: &mut Vec<(usize, usize, String)>,
    rewrites: &mut Vec<Rewrite>,
) {
    let word = |t: &Token| &text[t.start..t.end];
    let symbol = |t: &Token, s: &str| t.kind == TokenKind::Symbol && word(t) == s;
    let opens = |t: &Token| t.kind == TokenKind::Symbol && matches!(word(t), "(" | "[" | "{");
    let closes = |t: &Token| t.kind == TokenKind::Symbol && matches!(word(t), ")" | "]" | "}");
    let operator = |t: &Token| {
        (t.kind == TokenKind::Symbol
            && matches!(
                word(t),
                "==" | "="
                    | "!="
                    | "<"
                    | "<="
                    | ">"
                    | ">="
                    | "+"
                    | "-"
                    | "*"
                    | "/"
                    | "%"
                    | "&"
                    | "|"
            ))
            || (t.kind == TokenKind::Ident && word(t) == "in")
    };
    // The index just past the bracket group opened at `i`.
    let group_end = |i: usize| -> usize {
        let mut depth = 0usize;
        for (j, t) in tokens.iter().enumerate().skip(i) {
            if opens(t) {
                depth += 1;
            } else if closes(t) {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
        }
        tokens.len()
    };
    // Where the reference starting at `k` ends (its `.x` and `[…]` parts).
    let reference_end = |k: usize, end: usize| -> usize {
        let mut m = k + 1;
        loop {
            if m + 1 < end && symbol(&tokens[m], ".") && tokens[m + 1].kind == TokenKind::Ident {
                m += 2;
            } else if m < end && symbol(&tokens[m], "[") {
                m = group_end(m);
            } else {
                return m;
            }
        }
    };
    #[derive(PartialEq)]
    enum Operand {
        /// A reference of more than one part.
        Reference,
        Call,
        /// Anything else: a variable, a literal, a composite value.
        Other,
    }
    // What the tokens `a..b` are, as one operand.
    let operand = |a: usize, b: usize| -> Operand {
        let t = &tokens[a];
        if a >= b
            || t.kind != TokenKind::Ident
            || NOT_A_REFERENCE.contains(&word(t))
            || (a > 0 && symbol(&tokens[a - 1], "."))
        {
            return Operand::Other;
        }
        let m = reference_end(a, b);
        if m == b {
            if m > a + 1 {
                Operand::Reference
            } else {
                Operand::Other
            }
        } else if symbol(&tokens[m], "(") && group_end(m) == b {
            Operand::Call
        } else {
            Operand::Other
        }
    };
    // The top-level pieces of `a..b` split at tokens `split` accepts.
    let pieces =
        |a: usize, b: usize, split: &dyn Fn(&Token) -> bool| -> (Vec<(usize, usize)>, Vec<usize>) {
            let mut out = Vec::new();
            let mut at = Vec::new();
            let mut start = a;
            let mut k = a;
            while k < b {
                if opens(&tokens[k]) {
                    k = group_end(k);
                    continue;
                }
                if split(&tokens[k]) {
                    out.push((start, k));
                    at.push(k);
                    start = k + 1;
                }
                k += 1;
            }
            out.push((start, b));
            (out, at)
        };
    let mut counter = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        let after_dot = i > 0 && symbol(&tokens[i - 1], ".");
        if t.kind != TokenKind::Ident || word(t) != "not" || after_dot {
            continue;
        }
        // The negated expression: up to `;`, a newline, or the bracket
        // that encloses the `not`.
        let mut end = i + 1;
        let mut with = false;
        while end < tokens.len() {
            let u = &tokens[end];
            if end > i + 1 && u.line > tokens[end - 1].line || symbol(u, ";") || closes(u) {
                break;
            }
            if u.kind == TokenKind::Ident && word(u) == "with" {
                with = true;
            }
            end = if opens(u) { group_end(end) } else { end + 1 };
        }
        if with || end <= i + 1 {
            continue;
        }
        let (operands, operators) = pieces(i + 1, end, &operator);
        let equality: Vec<usize> = operators
            .iter()
            .copied()
            .filter(|&k| matches!(word(&tokens[k]), "==" | "="))
            .collect();
        let mut bound: Vec<(usize, usize)> = Vec::new();
        if operators.is_empty() {
            // One operand: a call binds its arguments.
            if operand(i + 1, end) == Operand::Call {
                let open = reference_end(i + 1, end);
                let (arguments, _) = pieces(open + 1, end - 1, &|t: &Token| symbol(t, ","));
                for (a, b) in arguments {
                    let (_, inner) = pieces(a, b, &operator);
                    if a < b && (operand(a, b) != Operand::Other || !inner.is_empty()) {
                        bound.push((a, b));
                    }
                }
            }
        } else if equality.len() == operators.len() && equality.len() == 1 {
            // `lhs == rhs`: sides that are calls or operations.
            for (a, b) in [(i + 1, equality[0]), (equality[0] + 1, end)] {
                if operand(a, b) == Operand::Call {
                    bound.push((a, b));
                }
            }
        } else if equality.is_empty() {
            for (a, b) in operands {
                if operand(a, b) != Operand::Other {
                    bound.push((a, b));
                }
            }
        }
        if bound.is_empty() {
            continue;
        }
        let mut bind = String::new();
        for (from, to) in bound {
            let name = format!("__tollgate_not{counter}");
            counter += 1;
            let value = &text[tokens[from].start..tokens[to - 1].end];
            bind.push_str(&format!("{name} = {value}; "));
            edits.push((tokens[from].start, tokens[to - 1].end, name));
        }
        edits.push((t.start, t.start, bind));
        rewrites.push(Rewrite::NegatedCall { line: t.line });
    }
}

fn ends_reference(t: &Token, word: &str) -> bool {
    match t.kind {
        TokenKind::Ident => !NOT_A_REFERENCE.contains(&word),
        TokenKind::Symbol => word == "]" || word == ")",
        _ => false,
    }
}

/// A rule head's text on one line: the tokens with each run of whitespace
/// and comments between them made one space. `None` when the tokens do not
/// start like a rule head.
fn head(tokens: &[Token], text: &str) -> Option<String> {
    let first = tokens.first()?;
    let name = &text[first.start..first.end];
    if first.kind != TokenKind::Ident || NOT_A_REFERENCE.contains(&name) {
        return None;
    }
    let mut out = String::new();
    let mut last_end = first.start;
    for t in tokens {
        if t.start > last_end {
            out.push(' ');
        }
        out.push_str(&text[t.start..t.end]);
        last_end = t.end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v0(text: &str) -> Normalised {
        normalise("x.rego", text, RegoVersion::V0).unwrap()
    }

    fn regorus_error(text: &str, v0: bool) -> String {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(v0);
        match engine.add_policy("x.rego".into(), text.into()) {
            Err(e) => e.to_string(),
            Ok(_) => engine
                .eval_rule("data.a.p".into())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn regorus_still_refuses_several_bodies_of_a_set_rule() {
        // When this fails, regorus reads v0's several bodies: remove the
        // rewrite.
        let text = "package a\np[x] { x := 1 } { x := 2 }\n";
        assert!(
            regorus_error(text, true).contains("else cannot be used with set rules"),
            "{}",
            regorus_error(text, true)
        );
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(true);
        engine.add_policy("x.rego".into(), v0(text).text).unwrap();
        assert_eq!(
            engine.eval_rule("data.a.p".into()).unwrap(),
            regorus::Value::from_json_str("[1, 2]")
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into()
        );
    }

    #[test]
    fn regorus_still_reads_a_parenthesis_after_a_newline_as_a_call() {
        // When this fails, regorus ends the expression at the newline as
        // OPA does: remove the rewrite.
        let text = "package a\nimport rego.v1\np if {\n  input.x\n  (1 + 1) == 2\n}\n";
        let mut engine = regorus::Engine::new();
        engine.add_policy("x.rego".into(), text.into()).unwrap();
        engine.set_input(regorus::Value::from_json_str("{\"x\": 1}").unwrap());
        let err = engine.eval_rule("data.a.p".into()).unwrap_err().to_string();
        assert!(err.contains("could not find function input.x"), "{err}");
        let mut engine = regorus::Engine::new();
        let fixed = normalise("x.rego", text, RegoVersion::V1).unwrap().text;
        engine.add_policy("x.rego".into(), fixed).unwrap();
        engine.set_input(regorus::Value::from_json_str("{\"x\": 1}").unwrap());
        assert_eq!(
            engine.eval_rule("data.a.p".into()).unwrap(),
            regorus::Value::from(true)
        );
    }

    #[test]
    fn regorus_still_negates_a_call_with_an_undefined_argument() {
        // OPA: `p` is undefined (params.ranges is bound before the call and
        // is undefined). When this fails, regorus does the same: remove
        // the rewrite.
        let text = "package a\nimport rego.v1\nf(_, _) := true\np if {\n  params := {\"rule\": \"A\"}\n  not f(params.rule, params.ranges)\n}\n";
        let eval = |text: String| {
            let mut engine = regorus::Engine::new();
            engine.add_policy("x.rego".into(), text).unwrap();
            engine.eval_rule("data.a.p".into()).unwrap()
        };
        assert_eq!(eval(text.into()), regorus::Value::from(true));
        let n = normalise("x.rego", text, RegoVersion::V1).unwrap();
        assert_eq!(
            n.text.lines().nth(5).unwrap(),
            "  __tollgate_not0 = params.rule; __tollgate_not1 = params.ranges; not f(__tollgate_not0, __tollgate_not1)"
        );
        assert_eq!(eval(n.text), regorus::Value::Undefined);
    }

    #[test]
    fn negations_bind_what_opa_binds_first() {
        // Each checked against `opa eval --v0-compatible` (v1.22.4) with
        // an empty input: left alone where OPA's `not` is true, rewritten
        // where OPA's body fails.
        for text in [
            "package a\np { not input.x.y }\n",
            "package a\np { not data.a.q[input.k] }\n",
            "package a\np { not f(x) }\n",
            "package a\np { not input.a == 1 }\n",
            "package a\np { not input.a = 1 }\n",
            "package a\np { not f(input.x) with input as {} }\n",
            "package a\np { not f([y | y := input.x[_]]) }\n",
        ] {
            assert_eq!(v0(text).text, text, "{text}");
        }
        for (text, rewritten) in [
            (
                "package a\np { xs := input.xs; not xs[_].a < 1 }\n",
                "package a\np { xs := input.xs; __tollgate_not0 = xs[_].a; not __tollgate_not0 < 1 }\n",
            ),
            (
                "package a\np { not f(g(input.x)) }\n",
                "package a\np { __tollgate_not0 = g(input.x); not f(__tollgate_not0) }\n",
            ),
            (
                "package a\np { not count(input.xs) == 0 }\n",
                "package a\np { __tollgate_not0 = count(input.xs); not __tollgate_not0 == 0 }\n",
            ),
            (
                "package a\np { not input.a in {1} }\n",
                "package a\np { __tollgate_not0 = input.a; not __tollgate_not0 in {1} }\n",
            ),
            (
                "package a\np { not input.a + 1 > 2 }\n",
                "package a\np { __tollgate_not0 = input.a; not __tollgate_not0 + 1 > 2 }\n",
            ),
        ] {
            assert_eq!(v0(text).text, rewritten, "{text}");
        }
    }

    #[test]
    fn further_bodies_get_the_head_on_the_same_line() {
        let text = "package a\n\nviolation[{\"msg\": msg}] {\n  input.a\n  msg := \"a\"\n} {\n  input.b\n  msg := \"b\"\n}\n";
        let n = v0(text);
        assert_eq!(
            n.text,
            "package a\n\nviolation[{\"msg\": msg}] {\n  input.a\n  msg := \"a\"\n} violation[{\"msg\": msg}] {\n  input.b\n  msg := \"b\"\n}\n"
        );
        assert_eq!(
            n.rewrites,
            [Rewrite::SeveralBodies {
                line: 6,
                head_line: 3
            }]
        );
        assert_eq!(n.text.lines().count(), text.lines().count());
    }

    #[test]
    fn a_head_over_several_lines_is_written_on_one() {
        let text = "package a\nviolation[{\n  \"msg\": msg, # why\n  \"details\": {}\n}] { msg := \"a\" } { msg := \"b\" }\n";
        let n = v0(text);
        assert_eq!(
            n.text.lines().last().unwrap(),
            "}] { msg := \"a\" } violation[{ \"msg\": msg, \"details\": {} }] { msg := \"b\" }"
        );
    }

    #[test]
    fn a_further_body_without_a_head_to_copy_is_an_error_naming_its_line() {
        let err = normalise(
            "x.rego",
            "package a\np[x]\n{ x := 1 } { x := 2 }\n",
            RegoVersion::V0,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.rego:3:12: a further body of a rule (v0 `p { … } { … }`) whose head could not be found; write each body as a rule of its own"
        );
    }

    #[test]
    fn values_else_chains_and_v1_are_left_alone() {
        for text in [
            "package a\np = {\"a\": 1} { true }\n",
            "package a\np = 1 { input.a } else = 2 { true }\n",
            "package a\nq[x] { x := 1 }\nr[x] { x := 2 }\n",
            "package a\nf(x) = y { y := {\"k\": x} }\n",
        ] {
            assert_eq!(v0(text).text, text);
        }
        let v1 = "package a\np contains 1 if { true }\n";
        assert_eq!(normalise("x", v1, RegoVersion::V1).unwrap().text, v1);
    }

    #[test]
    fn a_newline_before_a_parenthesis_ends_the_statement() {
        let text = "package a\np if {\n  input.parameters.min\n  (input.max - input.min) >= input.parameters.min\n  f(input.x)\n  (1 + 1) == 2\n  x := [1,\n    (2)]\n}\n";
        let n = normalise("x.rego", text, RegoVersion::V1).unwrap();
        assert_eq!(
            n.text,
            "package a\np if {\n  input.parameters.min;\n  (input.max - input.min) >= input.parameters.min\n  f(input.x);\n  (1 + 1) == 2\n  x := [1,\n    (2)]\n}\n"
        );
        assert_eq!(
            n.rewrites,
            [
                Rewrite::StatementEnd { line: 3 },
                Rewrite::StatementEnd { line: 5 }
            ]
        );
    }

    #[test]
    fn strings_and_comments_are_never_rewritten() {
        let text = "package a\np {\n  x := \"} {\" # } {\n}\n";
        assert_eq!(v0(text).text, text);
    }
}
