//! What `proxy_get_property` answers: the attributes Envoy documents for
//! Wasm extensions (its "Attributes" page), each one that has a meaning in
//! this proxy, serialised as Envoy serialises them for proxy-wasm:
//!
//! - strings and bytes as they are;
//! - `int` / `uint` as 8 little-endian bytes;
//! - `bool` as one byte (0 or 1);
//! - `timestamp` as int64 nanoseconds since the Unix epoch, `duration` as
//!   int64 nanoseconds (8 little-endian bytes);
//! - maps (`request.headers`, …) as the ABI's pair list (count, lengths,
//!   NUL-terminated keys and values); a header's values joined by `,`.
//!
//! Paths are segments (SDKs join them with NUL bytes). `docs/filters.md`
//! has the full table: every path Envoy documents, answered or not.
//! `proxy_set_property` is refused (`NOT_FOUND`): these are read-only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde_json::Value;

use super::abi::serialize_map;

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
    /// The connection the request came on (`destination.*`, `connection.*`).
    pub conn: Conn,
    /// When the request head reached the filters (`request.time`).
    pub time: Option<SystemTime>,
    /// The same instant, for `request.duration`.
    pub started: Option<Instant>,
}

/// Connection facts for `destination.*` and `connection.*`.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    /// The local address the connection was accepted on.
    pub local: Option<SocketAddr>,
    /// A process-unique connection number.
    pub id: Option<u64>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The server name the client asked for (TLS SNI).
    pub server_name: Option<Arc<str>>,
    /// `TLSv1.2`, `TLSv1.3` (as Envoy names them).
    pub tls_version: Option<&'static str>,
}

/// What identifies the filter (plugin) and the proxy (node).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Plugin {
    /// `plugin_name`: the filter's configured `name`.
    pub name: String,
    /// `plugin_root_id`: the filter's `rootId` (Envoy's `root_id`).
    pub root_id: String,
    /// `plugin_vm_id`: the filter's `vmId` (Envoy's `vm_config.vm_id`).
    pub vm_id: String,
    /// `node.*`: the pod this proxy runs in.
    pub node: Node,
}

/// The pod, from the downward API's `POD_NAME` and `POD_NAMESPACE`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Node {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

impl Node {
    /// From the environment (`POD_NAME`, `POD_NAMESPACE`; empty is unset).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Node {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        Node {
            name: get("POD_NAME"),
            namespace: get("POD_NAMESPACE"),
        }
    }

    /// `node.id`: `<pod>.<namespace>` (Istio's node ids carry the same
    /// pair); the pod alone when the namespace is unknown.
    fn id(&self) -> Option<String> {
        match (&self.name, &self.namespace) {
            (Some(n), Some(ns)) => Some(format!("{n}.{ns}")),
            (Some(n), None) => Some(n.clone()),
            _ => None,
        }
    }

    /// `node.metadata`: Istio's `NAME` and `NAMESPACE` keys.
    fn metadata(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Some(n) = &self.name {
            out.push(("NAME", n.as_str()));
        }
        if let Some(ns) = &self.namespace {
            out.push(("NAMESPACE", ns.as_str()));
        }
        out
    }
}

/// The header maps of the phase in progress (absent outside it).
#[derive(Clone, Copy, Default)]
pub struct Maps<'a> {
    pub request_headers: Option<&'a HeaderMap>,
    pub response_headers: Option<&'a HeaderMap>,
    pub response_status: Option<u16>,
    pub response_trailers: Option<&'a HeaderMap>,
}

fn joined(map: &HeaderMap, name: &http::HeaderName) -> Option<Vec<u8>> {
    let mut values = map.get_all(name).iter();
    let first = values.next()?;
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.push(b',');
        out.extend_from_slice(v.as_bytes());
    }
    Some(out)
}

fn header_value(map: &HeaderMap, name: &[u8]) -> Option<Vec<u8>> {
    let name = http::HeaderName::from_bytes(name).ok()?;
    joined(map, &name)
}

/// A header map as Envoy's `map<string, string>`: one pair per name, the
/// values joined by `,`; `pseudo` first.
fn header_pairs(pseudo: &[(&str, &str)], map: &HeaderMap) -> Vec<u8> {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = pseudo
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    for name in map.keys() {
        if let Some(v) = joined(map, name) {
            pairs.push((name.as_str().as_bytes().to_vec(), v));
        }
    }
    serialize_map(&pairs)
}

/// Envoy's `headers_bytes`: the names' and values' lengths added up.
fn header_bytes(pseudo: &[(&str, &str)], map: &HeaderMap) -> i64 {
    let p: usize = pseudo.iter().map(|(k, v)| k.len() + v.len()).sum();
    let m: usize = map
        .iter()
        .map(|(k, v)| k.as_str().len() + v.as_bytes().len())
        .sum();
    i64::try_from(p + m).unwrap_or(i64::MAX)
}

fn content_length(map: &HeaderMap) -> Option<i64> {
    map.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn claim_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

fn int(v: i64) -> Option<Vec<u8>> {
    Some(v.to_le_bytes().to_vec())
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Looks up `path` (see the module's documentation for the encodings).
pub fn lookup(
    props: &RequestProps,
    plugin: &Plugin,
    path: &[&[u8]],
    maps: Maps<'_>,
) -> Option<Vec<u8>> {
    let text = |s: &str| Some(s.as_bytes().to_vec());
    let pseudo = [
        (":authority", props.host.as_str()),
        (":path", props.path.as_str()),
        (":method", props.method.as_str()),
        (":scheme", props.scheme.as_str()),
    ];
    let request_header = |name: &str| header_value(maps.request_headers?, name.as_bytes());
    match path {
        [b"plugin_name"] => text(&plugin.name),
        [b"plugin_root_id"] => text(&plugin.root_id),
        [b"plugin_vm_id"] => text(&plugin.vm_id),
        [b"node" | b"xds", rest @ ..] => node(&plugin.node, path[0] == b"xds", rest),
        [b"request", b"path"] => text(&props.path),
        [b"request", b"url_path"] => text(props.path.split('?').next().unwrap_or("")),
        [b"request", b"query"] => text(props.path.split_once('?').map_or("", |(_, q)| q)),
        [b"request", b"method"] => text(&props.method),
        [b"request", b"host"] => text(&props.host),
        [b"request", b"scheme"] => text(&props.scheme),
        [b"request", b"protocol"] => text(props.protocol),
        [b"request", b"headers"] => Some(header_pairs(&pseudo, maps.request_headers?)),
        [b"request", b"headers", name] => {
            match pseudo.iter().find(|(k, _)| k.as_bytes() == *name) {
                Some((_, v)) => text(v),
                None => header_value(maps.request_headers?, name),
            }
        }
        [b"request", b"headers_bytes"] => int(header_bytes(&pseudo, maps.request_headers?)),
        [b"request", b"referer"] => request_header("referer"),
        [b"request", b"useragent"] => request_header("user-agent"),
        [b"request", b"id"] => request_header("x-request-id"),
        [b"request", b"time"] => {
            let since = props.time?.duration_since(UNIX_EPOCH).ok()?;
            int(nanos(since))
        }
        [b"request", b"duration"] => int(nanos(props.started?.elapsed())),
        [b"request", b"size"] => int(content_length(maps.request_headers?)?),
        [b"source", b"address"] => text(&props.source?.to_string()),
        [b"source", b"port"] => int(i64::from(props.source?.port())),
        [b"source", b"principal"] | [b"connection", b"uri_san_peer_certificate"] => {
            text(props.principal.as_deref()?)
        }
        [b"destination", b"address"] => text(&props.conn.local?.to_string()),
        [b"destination", b"port"] => int(i64::from(props.conn.local?.port())),
        [b"connection", b"id"] => Some(props.conn.id?.to_le_bytes().to_vec()),
        [b"connection", b"mtls"] => {
            Some(vec![u8::from(props.conn.tls && props.principal.is_some())])
        }
        [b"connection", b"requested_server_name"] => text(props.conn.server_name.as_deref()?),
        [b"connection", b"tls_version"] => text(props.conn.tls_version?),
        [b"jwt", b"claims"] => Some(props.claims.as_ref()?.to_json().to_string().into_bytes()),
        [b"jwt", b"claims", first, rest @ ..] => {
            let claims = props.claims.as_ref()?;
            let mut value = claims.claim(std::str::from_utf8(first).ok()?)?;
            for segment in rest {
                value = value.get(std::str::from_utf8(segment).ok()?)?;
            }
            Some(claim_bytes(value))
        }
        [b"response", b"code"] => int(i64::from(maps.response_status?)),
        [b"response", b"headers"] => {
            let status = maps
                .response_status
                .map(|s| s.to_string())
                .unwrap_or_default();
            Some(header_pairs(
                &[(":status", &status)],
                maps.response_headers?,
            ))
        }
        [b"response", b"headers", b":status"] => text(&maps.response_status?.to_string()),
        [b"response", b"headers", name] => header_value(maps.response_headers?, name),
        [b"response", b"headers_bytes"] => {
            let status = maps
                .response_status
                .map(|s| s.to_string())
                .unwrap_or_default();
            int(header_bytes(
                &[(":status", &status)],
                maps.response_headers?,
            ))
        }
        [b"response", b"trailers"] => Some(header_pairs(&[], maps.response_trailers?)),
        [b"response", b"trailers", name] => header_value(maps.response_trailers?, name),
        [b"response", b"grpc_status"] => {
            let from = |m: Option<&HeaderMap>| -> Option<i64> {
                m?.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
            };
            int(from(maps.response_trailers).or_else(|| from(maps.response_headers))?)
        }
        [b"response", b"size"] => int(content_length(maps.response_headers?)?),
        _ => None,
    }
}

/// `node.id`, `node.metadata[.NAME|.NAMESPACE]` (also under `xds.node`).
fn node(node: &Node, xds: bool, rest: &[&[u8]]) -> Option<Vec<u8>> {
    let rest = if xds {
        match rest {
            [b"node", rest @ ..] => rest,
            _ => return None,
        }
    } else {
        rest
    };
    match rest {
        [b"id"] => Some(node.id()?.into_bytes()),
        [b"metadata"] => {
            let pairs = node.metadata();
            (!pairs.is_empty()).then(|| serialize_map(&pairs))
        }
        [b"metadata", key] => node
            .metadata()
            .into_iter()
            .find(|(k, _)| k.as_bytes() == *key)
            .map(|(_, v)| v.as_bytes().to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::abi::deserialize_map as parse_map;

    fn props() -> RequestProps {
        RequestProps {
            method: "GET".into(),
            path: "/a/b?x=1&y=2".into(),
            host: "app.local".into(),
            scheme: "https".into(),
            protocol: "HTTP/2",
            source: Some("10.1.2.3:4567".parse().unwrap()),
            principal: Some("spiffe://td/ns/a/sa/b".into()),
            conn: Conn {
                local: Some("10.9.9.9:8443".parse().unwrap()),
                id: Some(7),
                tls: true,
                server_name: Some("app.local".into()),
                tls_version: Some("TLSv1.3"),
            },
            time: Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)),
            started: Some(Instant::now()),
            ..RequestProps::default()
        }
    }

    fn plugin() -> Plugin {
        Plugin {
            name: "headers".into(),
            root_id: "add_header".into(),
            vm_id: "vm-1".into(),
            node: Node::from_env(|k| match k {
                "POD_NAME" => Some("ws-0".into()),
                "POD_NAMESPACE" => Some("team-a".into()),
                _ => None,
            }),
        }
    }

    fn get(path: &str, maps: Maps<'_>) -> Option<Vec<u8>> {
        let segments: Vec<&[u8]> = path.split('.').map(str::as_bytes).collect();
        lookup(&props(), &plugin(), &segments, maps)
    }

    fn i64_of(bytes: Option<Vec<u8>>) -> i64 {
        i64::from_le_bytes(bytes.expect("answered").try_into().expect("8 bytes"))
    }

    #[test]
    fn plugin_and_node_identity() {
        let m = Maps::default();
        assert_eq!(get("plugin_name", m).unwrap(), b"headers");
        assert_eq!(get("plugin_root_id", m).unwrap(), b"add_header");
        assert_eq!(get("plugin_vm_id", m).unwrap(), b"vm-1");
        assert_eq!(get("node.id", m).unwrap(), b"ws-0.team-a");
        assert_eq!(get("xds.node.id", m).unwrap(), b"ws-0.team-a");
        assert_eq!(get("node.metadata.NAMESPACE", m).unwrap(), b"team-a");
        let meta = get("node.metadata", m).unwrap();
        assert_eq!(
            parse_map(&meta).unwrap(),
            vec![(&b"NAME"[..], &b"ws-0"[..]), (b"NAMESPACE", b"team-a")]
        );
        // An empty root id is an empty string, as Envoy's default.
        let empty = Plugin::default();
        assert_eq!(
            lookup(&props(), &empty, &[b"plugin_root_id"], m).unwrap(),
            b""
        );
        assert_eq!(lookup(&props(), &empty, &[b"node", b"id"], m), None);
        assert_eq!(
            get("node", m),
            None,
            "the Node message itself is not served"
        );
    }

    #[test]
    fn request_attributes_in_envoy_encodings() {
        let mut headers = HeaderMap::new();
        headers.append("user-agent", "curl/8".parse().unwrap());
        headers.append("x-request-id", "r-1".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        headers.append("content-length", "12".parse().unwrap());
        let m = Maps {
            request_headers: Some(&headers),
            ..Maps::default()
        };
        assert_eq!(get("request.query", m).unwrap(), b"x=1&y=2");
        assert_eq!(get("request.url_path", m).unwrap(), b"/a/b");
        assert_eq!(get("request.useragent", m).unwrap(), b"curl/8");
        assert_eq!(get("request.id", m).unwrap(), b"r-1");
        assert_eq!(get("request.referer", m), None);
        assert_eq!(get("request.headers.x-multi", m).unwrap(), b"a,b");
        assert_eq!(get("request.headers.:method", m).unwrap(), b"GET");
        assert_eq!(i64_of(get("request.size", m)), 12);
        assert_eq!(i64_of(get("request.time", m)), 1_700_000_000_123_456_789);
        assert!(i64_of(get("request.duration", m)) >= 0);
        let all = get("request.headers", m).unwrap();
        let pairs = parse_map(&all).unwrap();
        assert_eq!(pairs[0], (&b":authority"[..], &b"app.local"[..]));
        assert!(pairs.contains(&(&b"x-multi"[..], &b"a,b"[..])), "{pairs:?}");
        assert_eq!(pairs.len(), 4 + 4);
        let bytes = i64_of(get("request.headers_bytes", m));
        assert!(bytes > 40, "{bytes}");
        // Response attributes are absent in request callbacks.
        assert_eq!(get("response.code", m), None);
    }

    #[test]
    fn connection_and_response_attributes() {
        let m = Maps::default();
        assert_eq!(get("source.address", m).unwrap(), b"10.1.2.3:4567");
        assert_eq!(i64_of(get("source.port", m)), 4567);
        assert_eq!(get("destination.address", m).unwrap(), b"10.9.9.9:8443");
        assert_eq!(i64_of(get("destination.port", m)), 8443);
        assert_eq!(i64_of(get("connection.id", m)), 7);
        assert_eq!(get("connection.mtls", m).unwrap(), [1]);
        assert_eq!(get("connection.tls_version", m).unwrap(), b"TLSv1.3");
        assert_eq!(
            get("connection.requested_server_name", m).unwrap(),
            b"app.local"
        );
        assert_eq!(
            get("connection.uri_san_peer_certificate", m).unwrap(),
            b"spiffe://td/ns/a/sa/b"
        );
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "7".parse().unwrap());
        headers.insert("content-length", "0".parse().unwrap());
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", "1".parse().unwrap());
        let m = Maps {
            response_headers: Some(&headers),
            response_status: Some(200),
            response_trailers: Some(&trailers),
            ..Maps::default()
        };
        assert_eq!(i64_of(get("response.code", m)), 200);
        assert_eq!(i64_of(get("response.grpc_status", m)), 7);
        assert_eq!(i64_of(get("response.size", m)), 0);
        assert_eq!(get("response.headers.:status", m).unwrap(), b"200");
        assert_eq!(get("response.trailers.x-t", m).unwrap(), b"1");
        let pairs = get("response.headers", m).unwrap();
        assert_eq!(
            parse_map(&pairs).unwrap()[0],
            (&b":status"[..], &b"200"[..])
        );
        // Unknown and unanswered paths, and bad segments, are NOT_FOUND.
        for path in [
            "upstream.address",
            "metadata",
            "request.total_size",
            "nope",
            "request.headers.\u{0}",
        ] {
            assert_eq!(get(path, m), None, "{path}");
        }
        assert_eq!(lookup(&props(), &plugin(), &[], m), None);
        assert_eq!(lookup(&props(), &plugin(), &[b"\xff\xfe"], m), None);
    }
}
