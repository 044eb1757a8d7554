//! The `request_head` variant for paths: a request head parsed as hyper's
//! server parses it (`tollgate_fuzz::parse_head`), its path normalised by
//! `stack::normalize_request` under a configuration chosen by the first
//! byte (merge slashes or not; escaped separators rejected, kept or
//! decoded), as the proxy does before any route sees the request.
//!
//! Invariants: nothing panics; a normalised path starts with `/`, holds no
//! dot segment (`.`, `..`) and no escape of an unreserved character, and
//! normalising it again changes nothing (idempotence); with slashes merged
//! it holds no `//`; with separators rejected or decoded it holds no
//! `%2F`, `%5C` or backslash; the query is untouched; a prefix that
//! matches the normalised path matches it on a segment boundary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_proxy::path::{EscapedSlashes, PathConfig, normalize, prefix_matches};
use tollgate_proxy::stack::normalize_request;

const PREFIXES: [&str; 4] = ["/", "/admin", "/admin/", "/healthz"];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, head)) = data.split_first() else {
        return;
    };
    let config = PathConfig {
        merge_slashes: mode & 1 == 0,
        escaped_slashes: match (mode >> 1) % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Decode,
        },
    };
    let Some(request) = tollgate_fuzz::parse_head(head) else {
        return;
    };
    let query = request.uri().query().map(str::to_owned);
    let original = request.uri().path().to_owned();
    let Ok(normalised) = normalize_request(request, &config) else {
        return;
    };
    let path = normalised.uri().path();
    assert_eq!(
        normalised.uri().query().map(str::to_owned),
        query,
        "the query changed"
    );
    if path == "*" || !original.starts_with('/') {
        return;
    }
    assert!(path.starts_with('/'), "{original:?} became {path:?}");
    assert!(
        !path.split('/').any(|s| s == "." || s == ".."),
        "{original:?} became {path:?}, which holds a dot segment"
    );
    let again = normalize(path, &config).expect("a normalised path normalises");
    assert_eq!(again, path, "normalising {original:?} twice changed it");
    let upper = path.to_ascii_uppercase();
    for b in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~" {
        assert!(
            !upper.contains(&format!("%{b:02X}")),
            "{path:?} holds an escaped unreserved character"
        );
    }
    if config.merge_slashes {
        assert!(!path.contains("//"), "{original:?} became {path:?}");
    }
    if config.escaped_slashes != EscapedSlashes::Keep {
        assert!(
            !upper.contains("%2F") && !upper.contains("%5C") && !path.contains('\\'),
            "{original:?} became {path:?} under {config:?}"
        );
    }
    for prefix in PREFIXES {
        if prefix_matches(prefix, path) {
            let base = prefix.trim_end_matches('/');
            let rest = &path[base.len()..];
            assert!(
                rest.is_empty() || rest.starts_with('/'),
                "{prefix} matched {path} off a segment boundary"
            );
        }
    }
});
