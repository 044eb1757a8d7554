//! JWT parsing and verification of arbitrary tokens: the proxy's
//! `jwt::Verifier` with a fixed JWKS (ES256 + Ed25519) provider and an
//! HS256 provider (see `src/jwt.rs`).
//!
//! Input: one mode byte, then
//! - even mode: the token itself (UTF-8, as a header, cookie or query
//!   would give it);
//! - odd mode: `<header JSON>\n<claims JSON>`, which the harness encodes
//!   and signs with the key for the header's `alg` (HS256 otherwise), so
//!   the fuzzer reaches claim validation with validly signed tokens.
//!
//! Invariants: verification never panics; an accepted token is signed by
//! the key the fixture holds for its provider, `alg` and `kid`, carries
//! the provider's issuer and audience, is not expired or not yet valid
//! (within the skew), has the required claims, and its claims are the
//! payload's; verifying again (now from the cache) gives the same answer;
//! a route that names providers accepts only theirs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tollgate_fuzz::jwt::{Fixture, check_accepted};

struct Harness {
    rt: tokio::runtime::Runtime,
    fixture: Fixture,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let rt = tollgate_fuzz::runtime();
        let fixture = Fixture::new(&rt, json!({}));
        Harness { rt, fixture }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    } else {
        let (header, claims) = match rest.iter().position(|b| *b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &b""[..]),
        };
        h.fixture.sign(header, claims)
    };
    let verifier = &h.fixture.verifier;

    let first = h.rt.block_on(verifier.verify(&token, &[]));
    let provider = match &first {
        Ok(verified) => Some(check_accepted(&h.fixture, &token, verified)),
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error without text: {e:?}");
            None
        }
    };

    let second = h.rt.block_on(verifier.verify(&token, &[]));
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(
            (&a.provider, &a.claims),
            (&b.provider, &b.claims),
            "verifying the same token twice gave other claims"
        ),
        // By label: which of several missing required claims is named
        // depends on a HashSet's order inside jsonwebtoken.
        (Err(a), Err(b)) => assert_eq!(
            a.label(),
            b.label(),
            "verifying the same token twice failed differently: {a:?}, then {b:?}"
        ),
        (a, b) => panic!(
            "verifying the same token twice gave {:?} then {:?}",
            a.as_ref().map(|v| &v.provider),
            b.as_ref().map(|v| &v.provider)
        ),
    }

    for route in ["main", "shared"] {
        let accepted = h.rt.block_on(verifier.verify(&token, &[route.to_owned()]));
        match provider {
            Some(p) if p == route => assert!(
                accepted.is_ok(),
                "a route for {route} refused its own provider's token: {accepted:?}"
            ),
            _ => assert!(
                accepted.is_err(),
                "a route for {route} accepted a token of provider {provider:?}"
            ),
        }
    }
});
