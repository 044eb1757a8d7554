//! Which Rego a file is written in. OPA 1.x reads v1 unless told
//! `--v0-compatible`; Gatekeeper repositories hold v0 (their CI pins OPA
//! 0.x). A file is v1 when it imports `rego.v1`, or uses `if` or `contains`
//! as keywords without importing them from `future.keywords` (a v0 file
//! that imports future keywords stays v0); otherwise it is whatever the
//! run's default is.

use regorus::unstable::{Lexer, Source, TokenKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegoVersion {
    V0,
    V1,
}

impl std::fmt::Display for RegoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RegoVersion::V0 => "v0",
            RegoVersion::V1 => "v1",
        })
    }
}

/// A file's version and the reason, for `tollgate test --verbose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub version: RegoVersion,
    pub why: &'static str,
}

/// The version of `text`; `default` when nothing in it says.
pub fn detect(path: &str, text: &str, default: RegoVersion) -> Detected {
    let mut imports_future_keywords = false;
    let mut keyword = None;
    if let Ok(source) = Source::from_contents(path.to_owned(), text.to_owned()) {
        let mut lexer = Lexer::new(&source);
        let mut previous: Vec<String> = Vec::new();
        // A file that does not lex is left to the parser to report.
        while let Ok(token) = lexer.next_token() {
            if token.0 == TokenKind::Eof {
                break;
            }
            let text = token.1.text().to_owned();
            let after_dot = previous.last().is_some_and(|p| p == ".");
            let tail: Vec<&str> = previous.iter().rev().take(3).map(String::as_str).collect();
            if text == "v1" && tail == [".", "rego", "import"] {
                return Detected {
                    version: RegoVersion::V1,
                    why: "imports rego.v1",
                };
            }
            if token.0 == TokenKind::Ident && !after_dot {
                match text.as_str() {
                    "if" => keyword = keyword.or(Some("uses `if`")),
                    "contains" => {
                        // `contains(s, t)` is the builtin; the keyword is
                        // followed by a term. Peek without consuming.
                        let mut ahead = lexer.clone();
                        if ahead.next_token().is_ok_and(|t| t.1.text() != "(") {
                            keyword = keyword.or(Some("uses `contains`"));
                        }
                    }
                    _ => {}
                }
            }
            if text == "future" && previous.last().is_some_and(|p| p == "import") {
                imports_future_keywords = true;
            }
            previous.push(text);
            if previous.len() > 3 {
                previous.remove(0);
            }
        }
    }
    match keyword {
        Some(why) if !imports_future_keywords => Detected {
            version: RegoVersion::V1,
            why,
        },
        _ => Detected {
            version: default,
            why: match default {
                RegoVersion::V0 => "--v0-compatible, and no rego.v1 import, `if` or `contains`",
                RegoVersion::V1 => "the default (run with --v0-compatible for Rego v0)",
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(text: &str) -> (RegoVersion, &'static str) {
        let d = detect("x.rego", text, RegoVersion::V0);
        (d.version, d.why)
    }

    #[test]
    fn v1_markers_win_over_the_v0_default() {
        assert_eq!(
            version("package a\nimport rego.v1\nviolation[x] { x := 1 }\n"),
            (RegoVersion::V1, "imports rego.v1")
        );
        assert_eq!(
            version("package a\nallow if input.x\n"),
            (RegoVersion::V1, "uses `if`")
        );
        assert_eq!(
            version("package a\ndeny contains msg if { msg := \"x\" }\n").0,
            RegoVersion::V1
        );
    }

    #[test]
    fn v0_files_stay_v0() {
        // The builtin `contains(...)`, a field named `if`, the word in a
        // string or a comment, and future keywords imported into v0.
        for text in [
            "package a\nviolation[{\"msg\": m}] { contains(input.x, \"y\"); m := \"if\" }\n",
            "package a\n# if contains\np { input.if }\n",
            "package a\nimport future.keywords.if\nimport future.keywords.in\np[x] if { some x in input.xs }\n",
        ] {
            assert_eq!(version(text).0, RegoVersion::V0, "{text}");
        }
        assert_eq!(
            detect("x.rego", "package a\np { true }\n", RegoVersion::V1).version,
            RegoVersion::V1
        );
    }
}
