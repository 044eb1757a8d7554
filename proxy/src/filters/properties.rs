//! What `proxy_get_property` answers. Paths are segments (SDKs join them
//! with NUL bytes):
//!
//! | path | value |
//! |---|---|
//! | `request.path` | path and query, as `:path` |
//! | `request.url_path` | path without the query |
//! | `request.method`, `request.host`, `request.scheme` | as received |
//! | `request.protocol` | `HTTP/1.1`, `HTTP/2` |
//! | `request.headers.<name>` | a request header (values joined by `,`) |
//! | `source.address` | the peer, `ip:port` |
//! | `source.port` | the peer's port, 8-byte little-endian integer (as Envoy) |
//! | `source.principal`, `connection.uri_san_peer_certificate` | the peer's SPIFFE ID (verified client certificate) |
//! | `jwt.claims` | the verified JWT's claims, a JSON object |
//! | `jwt.claims.<name>[.<name>…]` | one claim: strings as they are, anything else as JSON |
//! | `response.code` | the response status, 8-byte little-endian integer (response callbacks) |
//! | `response.headers.<name>` | a response header (response callbacks) |
//! | `plugin_name` | the filter's `name` |
//!
//! `proxy_set_property` is refused (`NOT_FOUND`): these are read-only.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value;

/// Verified JWT claims, however the JWT layer stores them.
pub trait Claims: Send + Sync {
    /// The claim at `name` (top level).
    fn claim(&self, name: &str) -> Option<&Value>;
    /// All claims as a JSON object.
    fn to_json(&self) -> Value;
}

impl Claims for serde_json::Map<String, Value> {
    fn claim(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
    fn to_json(&self) -> Value {
        Value::Object(self.clone())
    }
}

/// A request extension the filter layer reads claims from, unless it is
/// given another way ([`super::layer::FiltersLayer::with_claims`]).
#[derive(Clone)]
pub struct FilterClaims(pub Arc<dyn Claims>);

/// The per-request facts properties are read from (request-level; the
/// header maps live in the host state while callbacks run).
#[derive(Clone, Default)]
pub struct RequestProps {
    pub method: String,
    pub path: String,
    pub host: String,
    pub scheme: String,
    pub protocol: &'static str,
    pub source: Option<SocketAddr>,
    pub principal: Option<Arc<str>>,
    pub claims: Option<Arc<dyn Claims>>,
}

fn header_value(map: &HeaderMap, name: &[u8]) -> Option<Vec<u8>> {
    let name = http::HeaderName::from_bytes(name).ok()?;
    let mut values = map.get_all(&name).iter();
    let first = values.next()?;
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.push(b',');
        out.extend_from_slice(v.as_bytes());
    }
    Some(out)
}

fn claim_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

/// Looks up `path`. `request_headers` / `response_headers`/`status` are the
/// maps as they are now (absent outside their phase).
pub fn lookup(
    props: &RequestProps,
    plugin_name: &str,
    path: &[&[u8]],
    request_headers: Option<&HeaderMap>,
    response: Option<(&HeaderMap, u16)>,
) -> Option<Vec<u8>> {
    let text = |s: &str| Some(s.as_bytes().to_vec());
    match path {
        [b"plugin_name"] => text(plugin_name),
        [b"request", b"path"] => text(&props.path),
        [b"request", b"url_path"] => text(props.path.split('?').next().unwrap_or("")),
        [b"request", b"method"] => text(&props.method),
        [b"request", b"host"] => text(&props.host),
        [b"request", b"scheme"] => text(&props.scheme),
        [b"request", b"protocol"] => text(props.protocol),
        [b"request", b"headers", name] => header_value(request_headers?, name),
        [b"source", b"address"] => text(&props.source?.to_string()),
        [b"source", b"port"] => Some(i64::from(props.source?.port()).to_le_bytes().to_vec()),
        [b"source", b"principal"] | [b"connection", b"uri_san_peer_certificate"] => {
            text(props.principal.as_deref()?)
        }
        [b"jwt", b"claims"] => Some(props.claims.as_ref()?.to_json().to_string().into_bytes()),
        [b"jwt", b"claims", first, rest @ ..] => {
            let claims = props.claims.as_ref()?;
            let mut value = claims.claim(std::str::from_utf8(first).ok()?)?;
            for segment in rest {
                value = value.get(std::str::from_utf8(segment).ok()?)?;
            }
            Some(claim_bytes(value))
        }
        [b"response", b"code"] => Some(i64::from(response?.1).to_le_bytes().to_vec()),
        [b"response", b"headers", name] => header_value(response?.0, name),
        _ => None,
    }
}
