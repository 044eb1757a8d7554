//! Request paths as the route table sees them, and as the app receives them.
//!
//! Every inbound request's path is normalised once, at the top of the
//! stack, before any layer looks at it, and the normalised path is what is
//! forwarded: the app sees exactly the path that was checked. This is what
//! Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action` do, in this order:
//!
//! 1. percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded, every other escape is kept with upper-case hex (RFC 3986
//!    §6.2.2.1–2), and a malformed escape (`%zz`, `%4`) is refused;
//! 2. an encoded `/` (`%2F`), `\` (`%5C`) or NUL (`%00`), and a raw `\`,
//!    get the configured [`EscapedSlashes`] action: refused (the
//!    default), kept as they are, or decoded to `/` (a NUL is refused even
//!    then: it has no decoded form in a path);
//! 3. dot segments are removed (RFC 3986 §5.2.4), `..` never climbing
//!    above the root;
//! 4. repeated slashes are merged (`paths.mergeSlashes`, on by default);
//! 5. a segment that is a dot segment with a path parameter (`..;x`,
//!    `.;`), which servlet containers resolve as `..`, is refused.
//!
//! The result is a fixed point: normalising it again changes nothing, and
//! it holds no dot segment, so an app that decodes once and resolves dot
//! segments arrives at the same path. Route prefixes match it on segment
//! boundaries ([`prefix_matches`]).

use std::borrow::Cow;

use serde::Deserialize;

/// The `paths` section of `proxy.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathConfig {
    /// Merge repeated slashes (`//admin` → `/admin`).
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// What an encoded `/`, `\` or NUL, or a raw `\`, gets.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
        }
    }
}

fn yes() -> bool {
    true
}

/// The action for `%2F`, `%5C`, `%00` and a raw `\` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// 400 `bad-path`.
    #[default]
    Reject,
    /// Left as they are: not a segment separator to the route table. Only
    /// safe when the app does not decode them either.
    Keep,
    /// Decoded to `/` before dot segments are removed (`%00` is refused).
    Decode,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    #[error("{0} in the path is refused (paths.escapedSlashes: reject)")]
    EscapedSeparator(&'static str),
    #[error("an encoded NUL in the path is refused")]
    Nul,
    #[error("a dot segment with a path parameter ({0:?}) is refused")]
    DotParameter(String),
    #[error("the path does not start with /")]
    NotAbsolute,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` may already be in normal form: nothing to decode, no
/// backslash, no empty or dot segment. (A path with `//` is normal when
/// slashes are not merged; the slow path finds that out.)
fn plainly_normal(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains(['%', '\\'])
        && !path.contains("//")
        && !path.contains("/.")
}

/// Normalises `path` (without its query) as the module describes.
/// `Cow::Borrowed` when it was already normal.
pub fn normalize<'a>(path: &'a str, config: &PathConfig) -> Result<Cow<'a, str>, PathError> {
    if plainly_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(path, config.escaped_slashes)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        let at_end = i == last;
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            "" if config.merge_slashes && !at_end => continue,
            s => {
                if let Some((dots, _)) = s.split_once(';')
                    && (dots == "." || dots == "..")
                {
                    return Err(PathError::DotParameter(s.to_owned()));
                }
                out.push(s);
                continue;
            }
        }
        // A dot segment at the end leaves the directory: a trailing slash.
        if at_end {
            out.push("");
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    if normal == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(normal))
    }
}

/// Step 1 and 2: escapes decoded or canonicalised, separators per `action`.
fn decode(path: &str, action: EscapedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            separator(&mut out, "\\", "a backslash", action)?;
            i += 1;
            continue;
        }
        if b != b'%' {
            // Copy the run up to the next escape or backslash as it is
            // (it may hold UTF-8, which `http` does not allow but a future
            // parser might).
            let end = bytes[i..]
                .iter()
                .position(|&c| c == b'%' || c == b'\\')
                .map_or(bytes.len(), |n| i + n);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let value = hi << 4 | lo;
        match value {
            v if unreserved(v) => out.push(char::from(v)),
            b'/' => separator(&mut out, "%2F", "an encoded /", action)?,
            b'\\' => separator(&mut out, "%5C", "an encoded \\", action)?,
            0 if action == EscapedSlashes::Decode => return Err(PathError::Nul),
            0 => separator(&mut out, "%00", "an encoded NUL", action)?,
            v => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(v & 15)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

fn separator(
    out: &mut String,
    kept: &str,
    what: &'static str,
    action: EscapedSlashes,
) -> Result<(), PathError> {
    match action {
        EscapedSlashes::Reject => return Err(PathError::EscapedSeparator(what)),
        EscapedSlashes::Keep => out.push_str(kept),
        EscapedSlashes::Decode => out.push('/'),
    }
    Ok(())
}

/// Whether a route `prefix` covers the normalised `path`, on segment
/// boundaries: `/healthz` (or `/healthz/`) covers `/healthz` and
/// `/healthz/…`, never `/healthzX`; `/` covers everything.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Checks a configured route prefix: absolute and already normal (with
/// the default settings), so that it can match a normalised path.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?} must start with /"));
    }
    match normalize(prefix, &PathConfig::default()) {
        Ok(normal) if normal == prefix => Ok(()),
        Ok(normal) => Err(format!(
            "{prefix:?} is not a normalised path; write {normal:?}"
        )),
        Err(e) => Err(format!("{prefix:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, &PathConfig::default()).map(Cow::into_owned)
    }

    fn with(path: &str, merge_slashes: bool, escaped_slashes: EscapedSlashes) -> String {
        let config = PathConfig {
            merge_slashes,
            escaped_slashes,
        };
        normalize(path, &config).unwrap().into_owned()
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_5_2_4_does() {
        // RFC 3986 §5.4 examples, as paths against the root.
        for (input, expected) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/./admin/x", "/admin/x"),
            ("/x/../admin/x", "/admin/x"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/", "/"),
            ("/ADMIN/x/../../admin/x", "/admin/x"),
            ("/healthz/../data", "/data"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/.c", "/a/..b/.c"),
        ] {
            assert_eq!(norm(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_canonicalised() {
        for (input, expected) in [
            ("/%61dmin/x", "/admin/x"),
            ("/%41%5a%30%2D%2e%5F%7E", "/AZ0-._~"),
            ("/healthz/%2e%2e/data", "/data"),
            ("/healthz/%2E%2e/data", "/data"),
            ("/healthz/.%2e/data", "/data"),
            ("/a%20b/%3a/%c3%a9", "/a%20b/%3A/%C3%A9"),
            ("/%252e%252e/x", "/%252e%252e/x"),
        ] {
            assert_eq!(norm(input).unwrap(), expected, "{input}");
        }
        for bad in ["/%", "/%4", "/%zz", "/a%2", "/%%41"] {
            assert_eq!(norm(bad), Err(PathError::BadEscape), "{bad}");
        }
    }

    #[test]
    fn slashes_are_merged_unless_configured_not_to() {
        assert_eq!(norm("//admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/a///b//").unwrap(), "/a/b/");
        assert_eq!(norm("/a//../b").unwrap(), "/b");
        assert_eq!(
            with("//admin/x", false, EscapedSlashes::Reject),
            "//admin/x"
        );
        assert_eq!(with("/a//../b", false, EscapedSlashes::Reject), "/a/b");
    }

    #[test]
    fn encoded_separators_get_their_action() {
        for input in [
            "/admin%2fx",
            "/healthz%2f..%2fdata",
            "/healthz/..%2Fdata",
            "/a%5cb",
            "/a\\b",
            "/a%00b",
        ] {
            assert!(
                matches!(norm(input), Err(PathError::EscapedSeparator(_))),
                "{input}: {:?}",
                norm(input)
            );
        }
        let keep = |p| with(p, true, EscapedSlashes::Keep);
        assert_eq!(keep("/admin%2fx"), "/admin%2Fx");
        assert_eq!(keep("/healthz/..%2fdata"), "/healthz/..%2Fdata");
        assert_eq!(keep("/a\\b%00"), "/a\\b%00");
        let decode = |p| with(p, true, EscapedSlashes::Decode);
        assert_eq!(decode("/admin%2fx"), "/admin/x");
        assert_eq!(decode("/healthz%2f..%2fdata"), "/data");
        assert_eq!(decode("/healthz/..%5Cdata"), "/data");
        assert_eq!(decode("/x\\..\\admin"), "/admin");
        let config = PathConfig {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Decode,
        };
        assert_eq!(normalize("/a%00", &config), Err(PathError::Nul));
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for input in ["/healthz/..;/data", "/a/.;x/b", "/a/..;"] {
            assert!(
                matches!(norm(input), Err(PathError::DotParameter(_))),
                "{input}"
            );
        }
        assert_eq!(norm("/a;b/c").unwrap(), "/a;b/c");
    }

    #[test]
    fn normal_paths_are_borrowed_and_everything_is_a_fixed_point() {
        assert!(matches!(
            normalize("/api/v1/x", &PathConfig::default()),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(norm("relative"), Err(PathError::NotAbsolute));
        for action in [
            EscapedSlashes::Reject,
            EscapedSlashes::Keep,
            EscapedSlashes::Decode,
        ] {
            for merge in [true, false] {
                let config = PathConfig {
                    merge_slashes: merge,
                    escaped_slashes: action,
                };
                for input in [
                    "/a/./b/../../c//d/.",
                    "/%2e%2E/%2fx/..%5c/%41",
                    "//..//.//x",
                    "/a/%252F/..",
                ] {
                    let Ok(once) = normalize(input, &config) else {
                        continue;
                    };
                    let twice = normalize(&once, &config).unwrap();
                    assert_eq!(once, twice, "{input} {config:?}");
                    assert!(!once.split('/').any(|s| s == "." || s == ".."), "{once}");
                }
            }
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/healthz", "/healthz"));
        assert!(prefix_matches("/healthz", "/healthz/x"));
        assert!(!prefix_matches("/healthz", "/healthzX"));
        assert!(!prefix_matches("/healthz", "/health"));
        assert!(prefix_matches("/admin/", "/admin"));
        assert!(prefix_matches("/admin/", "/admin/x"));
        assert!(!prefix_matches("/admin/", "/administrator"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/", "/"));
        assert!(prefix_matches(
            "/flyteidl.service.AdminService",
            "/flyteidl.service.AdminService/GetExecution"
        ));
    }

    #[test]
    fn configured_prefixes_must_be_normal() {
        check_prefix("/admin/").unwrap();
        check_prefix("/").unwrap();
        assert!(
            check_prefix("admin")
                .unwrap_err()
                .contains("must start with /")
        );
        assert!(
            check_prefix("/a/../b")
                .unwrap_err()
                .contains("write \"/b\"")
        );
        assert!(check_prefix("/%61dmin").unwrap_err().contains("/admin"));
        assert!(check_prefix("/a%2Fb").is_err());
    }
}
