//! HTTP/1.x request heads through the proxy's header handling. The bytes
//! are parsed as hyper's server parses them (httparse, then `http` types),
//! and the request goes through the inbound layers that read headers —
//! identity (route allow-lists) and JWT (`token::find`, verification,
//! claim headers), with the fixture of `src/jwt.rs` — and then through what
//! `forward.rs` does to a request before it is sent upstream
//! (`is_upgrade`, `remove_hop_by_hop`) and the rate limiter's client IP
//! (`client_ip` behind a trusted hop). A refused request becomes its error
//! response (`errors::error_response`).
//!
//! Invariants: nothing panics; no hop-by-hop header (the fixed set and
//! every header the `Connection` field names) survives, except what an
//! upgrade keeps; every other header survives with its values in order;
//! a client never chooses its own claim headers; a required-JWT route never
//! forwards without verified claims; an identity route refuses a peer not
//! on its list; a found token is a non-empty piece of what was sent; the
//! client IP is the peer or an untrusted `X-Forwarded-For` entry.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tollgate_fuzz::jwt::{Fixture, check_accepted};
use tollgate_proxy::errors::{ProxyError, error_response, is_grpc};
use tollgate_proxy::forward::{is_upgrade, remove_hop_by_hop};
use tollgate_proxy::identity::IdentityLayer;
use tollgate_proxy::jwt::token;
use tollgate_proxy::jwt::{JwtLayer, JwtMetrics, Verified};
use tollgate_proxy::listener::ConnInfo;
use tollgate_proxy::ratelimit::client_ip;
use tollgate_proxy::route::{RouteConfig, RouteLayer, RouteTable};
use tower::{Layer, ServiceExt};

/// The peer: a trusted hop (its `X-Forwarded-For` counts).
const PEER: &str = "10.0.0.7:40000";
const TRUSTED: [(IpAddr, u8); 2] = [
    (IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 0)), 8),
    (IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128),
];
const PEER_ID: &str = "spiffe://cluster.local/ns/web/sa/frontend";
const CLAIM_HEADERS: [(&str, &str); 2] = [("sub", "x-tollgate-sub"), ("team", "x-tollgate-team")];
/// Hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

struct Harness {
    rt: tokio::runtime::Runtime,
    fixture: Fixture,
    jwt: JwtLayer,
    routes: RouteLayer,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let rt = tollgate_fuzz::runtime();
        let fixture = Fixture::new(
            &rt,
            json!({
                "tokenSources": [
                    {"header": "authorization", "prefix": "Bearer "},
                    {"header": "flyte-authorization", "prefix": "Bearer "},
                    {"cookie": "tg"},
                    {"query": "access_token"},
                ],
                "claimsToHeaders": {"sub": "x-tollgate-sub", "team": "x-tollgate-team"},
            }),
        );
        let jwt = JwtLayer::new(
            &fixture.config,
            fixture.verifier.clone(),
            JwtMetrics::default(),
        )
        .expect("building the JWT layer");
        // The one route table: identity and JWT per route, matched once.
        let routes: Vec<RouteConfig> = serde_json::from_value(json!([
            {"pathPrefix": "/admin", "allowedIdentities": ["spiffe://cluster.local/ns/ops/**"],
             "jwt": {"mode": "optional"}},
            {"pathPrefix": "/healthz", "allowedIdentities": ["spiffe://cluster.local/ns/web/**"]},
            {"pathPrefix": "/api", "allowedIdentities": ["spiffe://cluster.local/ns/web/**"],
             "jwt": {"mode": "required"}},
            {"pathPrefix": "/shared", "allowedIdentities": ["spiffe://cluster.local/ns/web/**"],
             "jwt": {"mode": "required", "providers": ["shared"]}},
            {"pathPrefix": "/", "allowedIdentities": ["spiffe://cluster.local/ns/web/**"],
             "jwt": {"mode": "optional"}},
        ]))
        .expect("the fixture's route table");
        let routes = RouteLayer::new(RouteTable::new(&routes));
        Harness {
            rt,
            fixture,
            jwt,
            routes,
        }
    })
}

/// A list field's elements (split on commas, optional whitespace trimmed),
/// lowercased, read from the raw bytes.
fn list_tokens(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn values(headers: &HeaderMap, name: &HeaderName) -> Vec<HeaderValue> {
    headers.get_all(name).iter().cloned().collect()
}

fn check_forwarded_headers(original: &HeaderMap, version: Version) {
    let upgrade = version == Version::HTTP_11 && is_upgrade(original);
    let connection = list_tokens(original, "connection");
    if upgrade {
        assert!(
            original.contains_key(header::UPGRADE) && connection.iter().any(|t| t == b"upgrade"),
            "is_upgrade says yes without Upgrade and Connection: upgrade"
        );
    }
    let mut headers = original.clone();
    remove_hop_by_hop(&mut headers, upgrade);

    let mut hop: Vec<HeaderName> = HOP_BY_HOP
        .iter()
        .map(|&n| HeaderName::from_static(n))
        .collect();
    hop.extend(
        connection
            .iter()
            .filter_map(|t| HeaderName::from_bytes(t).ok()),
    );
    for name in &hop {
        let left = values(&headers, name);
        let allowed = match name.as_str() {
            "te" => left == [HeaderValue::from_static("trailers")],
            "connection" if upgrade => left == [HeaderValue::from_static("upgrade")],
            "upgrade" if upgrade => left == values(original, name),
            _ => false,
        };
        assert!(
            left.is_empty() || allowed,
            "hop-by-hop header {name} survived remove_hop_by_hop (upgrade: {upgrade}): {left:?}; \
             Connection was {:?}",
            values(original, &header::CONNECTION)
        );
    }
    for name in original.keys() {
        if !hop.contains(name) {
            assert_eq!(
                values(&headers, name),
                values(original, name),
                "end-to-end header {name} was changed by remove_hop_by_hop"
            );
        }
    }
    for name in headers.keys() {
        assert!(
            original.contains_key(name) || (name == "connection" && upgrade),
            "remove_hop_by_hop added header {name}"
        );
    }
}

fn check_client_ip(headers: &HeaderMap) {
    let peer: SocketAddr = PEER.parse().expect("the fixture peer");
    let ip = client_ip(Some(peer.ip()), headers, &TRUSTED)
        .unwrap_or_else(|| panic!("no client IP for a request with a peer"));
    if ip == peer.ip() {
        return;
    }
    let listed = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .filter_map(|t| t.parse::<IpAddr>().ok())
        .any(|listed| listed == ip);
    assert!(
        listed,
        "client IP {ip} is neither the peer nor in X-Forwarded-For"
    );
    let trusted = TRUSTED.iter().any(|(net, len)| match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            u32::from(*n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => *len == 128 && *n == i,
        _ => false,
    });
    assert!(!trusted, "client IP {ip} is a trusted hop, not a client");
}

fn check_token_source(h: &Harness, request: &Request<()>) {
    let found = token::find(
        &h.fixture.config.token_sources,
        request.headers(),
        request.uri().query(),
    );
    let Some(token) = found else {
        return;
    };
    assert!(!token.is_empty(), "token::find found an empty token");
    let sent = request
        .headers()
        .values()
        .any(|v| contains(v.as_bytes(), token.as_bytes()))
        || request
            .uri()
            .query()
            .is_some_and(|q| contains(q.as_bytes(), token.as_bytes()));
    assert!(
        sent,
        "token::find found {token:?}, which the request does not carry"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a route prefix covers `path`: routes match whole segments, so
/// `/admin` covers `/admin` and `/admin/…` but not `/admind`.
fn covers(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn check_passed(h: &Harness, path: &str, forwarded: &Request<()>) {
    let verified = forwarded.extensions().get::<Arc<Verified>>();
    if covers("/admin", path) {
        panic!("the identity layer let {PEER_ID} through to {path}");
    }
    if covers("/api", path) || covers("/shared", path) {
        let v = verified
            .unwrap_or_else(|| panic!("a required-JWT route ({path}) forwarded without claims"));
        if covers("/shared", path) {
            assert_eq!(
                v.provider, "shared",
                "/shared accepted another provider's token"
            );
        }
    }
    if covers("/healthz", path) {
        assert!(verified.is_none(), "a bypass route verified a token");
    }
    if let Some(v) = verified {
        let token = token::find(
            &h.fixture.config.token_sources,
            forwarded.headers(),
            forwarded.uri().query(),
        );
        // The layer verified the token the sources give (claim headers
        // are set after the token is read, and none is a source).
        let token = token.unwrap_or_else(|| panic!("claims were verified without a token"));
        check_accepted(&h.fixture, &token, v);
    }
    for (claim, name) in CLAIM_HEADERS {
        let got = values(forwarded.headers(), &HeaderName::from_static(name));
        let want: Vec<HeaderValue> = verified
            .and_then(|v| v.claim_text(claim))
            .and_then(|text| HeaderValue::from_str(&text).ok())
            .into_iter()
            .collect();
        assert_eq!(
            got, want,
            "claim header {name} is not what the verified claims say (the client's must go)"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mut request) = tollgate_fuzz::parse_head(data) else {
        return;
    };
    let h = harness();
    request.extensions_mut().insert(Arc::new(ConnInfo {
        peer: PEER.parse().expect("the fixture peer"),
        identity: Some(PEER_ID.into()),
        facts: Default::default(),
    }));
    check_client_ip(request.headers());
    check_token_source(h, &request);
    check_forwarded_headers(request.headers(), request.version());

    let path = request.uri().path().to_owned();
    let grpc = is_grpc(&request);
    let inner = tower::service_fn(|r: Request<()>| async move { Ok::<_, ProxyError>(r) });
    let stack = h.routes.layer(IdentityLayer.layer(h.jwt.layer(inner)));
    match h.rt.block_on(stack.oneshot(request)) {
        Ok(forwarded) => {
            check_passed(h, &path, &forwarded);
            check_forwarded_headers(forwarded.headers(), forwarded.version());
        }
        Err(e) => {
            let response = error_response(&e, grpc);
            if !grpc {
                assert_eq!(response.status(), e.status(), "the error response's status");
            }
            assert!(
                matches!(
                    e,
                    ProxyError::Unauthenticated(_)
                        | ProxyError::IdentityRequired { .. }
                        | ProxyError::IdentityNotAllowed { .. }
                ),
                "identity and JWT refused with {e:?}"
            );
            if matches!(e, ProxyError::IdentityNotAllowed { .. }) {
                assert!(
                    covers("/admin", &path),
                    "{PEER_ID} was refused on {path}, which allows it"
                );
            }
        }
    }
});
