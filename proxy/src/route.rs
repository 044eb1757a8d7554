//! The one route table of the inbound listener. Each route declares every
//! policy of its paths together: the identity allow-list, the JWT mode,
//! the rate limit, the filter chain and the authorization rules. A request is matched once, here, right
//! after its path is normalised, and the match rides down the stack as a
//! request extension (`Arc<Route>`), as linkerd2-proxy attaches the policy
//! of one HTTPRoute match to the request. The layers below read it
//! ([`matched`]); none of them matches paths on its own.
//!
//! ```yaml
//! routes:                              # first pathPrefix match wins
//!   - name: admin                      # metrics, RateLimit-Policy; default: the pathPrefix
//!     pathPrefix: /admin               # whole segments: /admin, /admin/…, never /adminX
//!     allowedIdentities: ["spiffe://cluster.local/ns/flyte/sa/*"]   # absent: any peer
//!     jwt: {mode: required, providers: [flyte]}                     # absent: bypass
//!     rateLimit: {requestsPerSecond: 50, burst: 100, key: {claim: sub}}   # absent: none
//!     filters: admin                   # a chain in filters.chains; absent: none
//!     authorization:                   # absent: anyone the concerns above let in
//!       rules: [{action: allow, when: [{claim: groups, contains: flyte-admins}]}]
//! ```
//!
//! A request no route matches, and a route that leaves a concern out, get
//! that concern's "no match" default: any peer the listener admitted, no
//! JWT check (`bypassed`), no rate limit, no filters, no authorization.
//!
//! The per-section tables this replaces (`jwt.routes`, `rateLimit.routes`,
//! `filters.routes`) are refused at load, with the equivalent table in the
//! message ([`legacy`]). The top-level `routes` kept its name: an entry
//! written before (`pathPrefix` and `allowedIdentities`) means what it did.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use serde::Deserialize;
use tollgate_certs::spiffe::IdPattern;
use tower::{Layer, Service};

use crate::jwt::config::RouteJwt;
use crate::ratelimit::RouteLimit;

/// A route as written in `proxy.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    /// Names the route in metrics, logs and `RateLimit-Policy`; default:
    /// its `pathPrefix`. Unique.
    #[serde(default)]
    pub name: Option<String>,
    /// The paths this route covers, on segment boundaries.
    #[serde(default = "root")]
    pub path_prefix: String,
    /// SPIFFE ID patterns (`spiffe://cluster.local/ns/flyte/sa/*`); a peer
    /// matching none gets 403. Absent: any peer.
    #[serde(default)]
    pub allowed_identities: Option<Vec<String>>,
    /// The token this route wants. Absent: not looked at (`bypass`).
    #[serde(default)]
    pub jwt: Option<RouteJwt>,
    /// This route's GCRA bucket. Absent: not limited.
    #[serde(default)]
    pub rate_limit: Option<RouteLimit>,
    /// The name of a chain in `filters.chains`. Absent: no filters.
    #[serde(default)]
    pub filters: Option<String>,
    /// Who may use the route (`authz/config.rs`). Absent: anyone the
    /// concerns above let in.
    #[serde(default)]
    pub authorization: Option<crate::authz::AuthorizationConfig>,
}

fn root() -> String {
    "/".into()
}

impl RouteConfig {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.path_prefix)
    }
}

/// A route with its patterns parsed: what a request's match carries.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its place in the table (rate-limit buckets are kept by it).
    pub index: usize,
    pub name: String,
    pub path_prefix: String,
    /// `None`: any peer.
    pub allowed: Option<Vec<IdPattern>>,
    /// `None`: bypass.
    pub jwt: Option<RouteJwt>,
    /// `None`: not limited.
    pub rate_limit: Option<RouteLimit>,
    /// `None`: no filters.
    pub filters: Option<String>,
    /// `None`: no authorization.
    pub authorization: Option<Arc<crate::authz::Authorization>>,
}

/// Every route, in order; checked at load ([`crate::config::Config`]).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Arc<[Arc<Route>]>,
}

impl RouteTable {
    /// The table for routes whose rules read no environment. A rule that
    /// cannot be resolved without one refuses every request of its route
    /// (fail closed); [`RouteTable::with_env`] says why instead.
    pub fn new(configs: &[RouteConfig]) -> RouteTable {
        let mut table = RouteTable::build(configs, &|_| None, &mut |_, _| {});
        for (route, c) in table.routes_mut().zip(configs) {
            if c.authorization.is_some() && route.authorization.is_none() {
                route.authorization = Some(Arc::new(crate::authz::Authorization::refuse_all()));
            }
        }
        table
    }

    /// The table, authorization rules resolved against `env` (the proxy's
    /// environment); errors are `(path, message)`.
    pub fn with_env(
        configs: &[RouteConfig],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RouteTable, (String, String)> {
        let mut error = None;
        let table = RouteTable::build(configs, env, &mut |at, e| {
            error.get_or_insert((at, e));
        });
        match error {
            Some(e) => Err(e),
            None => Ok(table),
        }
    }

    fn routes_mut(&mut self) -> impl Iterator<Item = &mut Route> {
        // Only called right after `build`, before the routes are shared.
        Arc::get_mut(&mut self.routes)
            .into_iter()
            .flat_map(|r| r.iter_mut())
            .filter_map(Arc::get_mut)
    }

    fn build(
        configs: &[RouteConfig],
        env: &dyn Fn(&str) -> Option<String>,
        failed: &mut dyn FnMut(String, String),
    ) -> RouteTable {
        let routes = configs
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let authorization = c.authorization.as_ref().and_then(|a| {
                    crate::authz::Authorization::compile(a, env)
                        .map_err(|(path, m)| {
                            let at = if path.is_empty() {
                                format!("routes[{index}].authorization")
                            } else {
                                format!("routes[{index}].authorization.{path}")
                            };
                            failed(at, m)
                        })
                        .ok()
                        .map(Arc::new)
                });
                Arc::new(Route {
                    index,
                    name: c.name().to_owned(),
                    path_prefix: c.path_prefix.clone(),
                    allowed: c.allowed_identities.as_ref().map(|ids| {
                        ids.iter()
                            .filter_map(|p| IdPattern::parse(p).ok())
                            .collect()
                    }),
                    jwt: c.jwt.clone(),
                    rate_limit: c.rate_limit.clone(),
                    filters: c.filters.clone(),
                    authorization,
                })
            })
            .collect();
        RouteTable { routes }
    }

    /// The first route whose prefix covers the normalised `path`.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| crate::path::prefix_matches(&r.path_prefix, path))
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The route a request matched, if any (`None`: each concern's default).
pub fn matched(extensions: &http::Extensions) -> Option<&Route> {
    extensions.get::<Arc<Route>>().map(|r| &**r)
}

/// Matches each request once and attaches the route.
#[derive(Clone)]
pub struct RouteLayer {
    table: RouteTable,
}

impl RouteLayer {
    pub fn new(table: RouteTable) -> RouteLayer {
        RouteLayer { table }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = MatchRoute<S>;
    fn layer(&self, inner: S) -> MatchRoute<S> {
        MatchRoute {
            inner,
            table: self.table.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MatchRoute<S> {
    inner: S,
    table: RouteTable,
}

impl<S, B> Service<Request<B>> for MatchRoute<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        // A client cannot bring its own match: extensions never come off
        // the wire, and this replaces any a layer above might have set.
        request.extensions_mut().remove::<Arc<Route>>();
        if let Some(route) = self.table.find(request.uri().path()) {
            crate::trace::route(&request, &route.path_prefix);
            request.extensions_mut().insert(route.clone());
        }
        self.inner.call(request)
    }
}

/// The per-section route tables of earlier versions, turned into the one
/// table for the refusal message.
pub mod legacy {
    use serde_json::{Map, Value, json};

    use crate::filters::config::RouteFilters;
    use crate::jwt::config::{JwtRoute, Mode};
    use crate::ratelimit::RateRoute;

    /// The old tables, as found in a config.
    #[derive(Default)]
    pub struct Tables<'a> {
        pub identity: &'a [super::RouteConfig],
        pub jwt: &'a [JwtRoute],
        pub rate_limit: &'a [RateRoute],
        pub filters: &'a [RouteFilters],
    }

    fn segments(prefix: &str) -> usize {
        prefix.split('/').filter(|s| !s.is_empty()).count()
    }

    /// The same prefix, as `prefix_matches` sees it (`/a/` is `/a`).
    fn canonical(prefix: &str) -> &str {
        match prefix.strip_suffix('/') {
            Some("") | None => prefix,
            Some(p) => p,
        }
    }

    /// The one table that decides as the old ones did. A path's first
    /// match in each old table is also the first match of the deepest old
    /// prefix covering it (the prefixes covering one path all cover each
    /// other), so one route per distinct prefix, deepest first, each
    /// carrying what every old table decided for that prefix, is exact.
    /// Only rate-limit buckets differ: each new route has its own.
    pub fn convert(tables: &Tables<'_>) -> NewForm {
        let mut prefixes: Vec<&str> = Vec::new();
        let all = tables
            .identity
            .iter()
            .map(|r| r.path_prefix.as_str())
            .chain(tables.jwt.iter().map(|r| r.path_prefix.as_str()))
            .chain(tables.rate_limit.iter().map(|r| r.path_prefix.as_str()))
            .chain(tables.filters.iter().map(|r| r.path_prefix.as_str()));
        for p in all.map(canonical) {
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
        prefixes.sort_by_key(|p| std::cmp::Reverse(segments(p)));
        let covers = |old: &str, prefix: &str| crate::path::prefix_matches(old, prefix);
        let mut chains = Map::new();
        let mut routes = Vec::new();
        let mut named: Vec<String> = Vec::new();
        for prefix in prefixes {
            let mut route = NewRoute {
                path_prefix: prefix.to_owned(),
                ..NewRoute::default()
            };
            if let Some(r) = tables
                .identity
                .iter()
                .find(|r| covers(&r.path_prefix, prefix))
            {
                route.allowed_identities = r.allowed_identities.clone();
            }
            if let Some(r) = tables.jwt.iter().find(|r| covers(&r.path_prefix, prefix))
                && r.mode != Mode::Bypass
            {
                let mut jwt = json!({"mode": r.mode.as_str()});
                if !r.providers.is_empty() {
                    jwt["providers"] = json!(r.providers);
                }
                route.jwt = Some(jwt);
            }
            if let Some(r) = tables
                .rate_limit
                .iter()
                .find(|r| covers(&r.path_prefix, prefix))
            {
                // Names are unique: the old route's name goes to the
                // first (deepest) route that takes its limit.
                if !named.contains(&r.name) {
                    named.push(r.name.clone());
                    route.name = Some(r.name.clone());
                }
                let mut limit = json!({"requestsPerSecond": r.requests_per_second});
                if let Some(burst) = r.burst {
                    limit["burst"] = json!(burst);
                }
                if let Ok(key) = r.key.key() {
                    limit["key"] = key.to_json();
                }
                route.rate_limit = Some(limit);
            }
            if let Some((i, r)) = tables
                .filters
                .iter()
                .enumerate()
                .find(|(_, r)| covers(&r.path_prefix, prefix))
                && !r.chain.is_empty()
            {
                let name = format!("chain{i}");
                chains.insert(name.clone(), json!(r.chain));
                route.filters = Some(name);
            }
            routes.push(route);
        }
        NewForm {
            routes,
            filters: (!chains.is_empty()).then(|| json!({ "chains": chains })),
        }
    }

    /// What the refusal shows, keys in reading order.
    #[derive(serde::Serialize)]
    pub struct NewForm {
        routes: Vec<NewRoute>,
        #[serde(skip_serializing_if = "Option::is_none")]
        filters: Option<Value>,
    }

    /// A route of the new table, in the order a reader wants its keys.
    #[derive(Default, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct NewRoute {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        path_prefix: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        allowed_identities: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        jwt: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rate_limit: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        filters: Option<String>,
    }

    /// The refusal: why, and the table to write instead.
    pub fn message(tables: &Tables<'_>) -> String {
        let yaml = yaml_serde::to_string(&convert(tables))
            .unwrap_or_else(|e| format!("(could not render the new form: {e})"));
        format!(
            "the per-section route tables were replaced by one top-level `routes` table, \
             matched once per request, each route declaring its allowedIdentities, jwt, \
             rateLimit and filters (docs/proxy.md); remove the `routes` of jwt, rateLimit \
             and filters and write (each route now has its own rate-limit bucket):\n{yaml}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> RouteTable {
        let configs: Vec<RouteConfig> = yaml_serde::from_str(yaml).unwrap();
        RouteTable::new(&configs)
    }

    #[test]
    fn the_first_route_whose_prefix_covers_the_path_matches_once() {
        let t = table(
            "- {name: admin, pathPrefix: /admin/, allowedIdentities: ['spiffe://td/ns/a/sa/*'], jwt: {mode: required}}\n\
             - {pathPrefix: /}\n",
        );
        assert_eq!(t.find("/admin").unwrap().name, "admin");
        assert_eq!(t.find("/admin/x").unwrap().name, "admin");
        assert_eq!(t.find("/administrator").unwrap().name, "/");
        assert_eq!(t.find("/admin/x").unwrap().index, 0);
        assert!(table("- {pathPrefix: /a}\n").find("/b").is_none());
    }

    #[test]
    fn the_match_rides_on_the_request_and_replaces_any_other() {
        let t = table(
            "- {name: api, pathPrefix: /api, allowedIdentities: ['spiffe://td/ns/web/**'],\n   \
             jwt: {mode: required, providers: [p]}, rateLimit: {requestsPerSecond: 5}, filters: web}\n",
        );
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let inner = tower::service_fn(move |r: Request<()>| {
            record
                .lock()
                .unwrap()
                .push(matched(r.extensions()).map(|r| r.name.clone()));
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        });
        let mut svc = RouteLayer::new(t.clone()).layer(inner);
        let mut forged = Request::builder().uri("/other").body(()).unwrap();
        forged.extensions_mut().insert(t.routes()[0].clone());
        use futures_util::FutureExt;
        for request in [forged, Request::builder().uri("/api/x").body(()).unwrap()] {
            svc.call(request).now_or_never().unwrap().unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), [None, Some("api".to_owned())]);
        // The one match carries every concern of the route, for the layers
        // below to read.
        let mut request = Request::builder().uri("/api/x").body(()).unwrap();
        request
            .extensions_mut()
            .insert(t.find("/api/x").unwrap().clone());
        let route = matched(request.extensions()).unwrap();
        assert!(route.allowed.as_ref().unwrap()[0].matches("spiffe://td/ns/web/sa/a"));
        assert_eq!(route.jwt.as_ref().unwrap().providers, ["p"]);
        assert_eq!(route.rate_limit.as_ref().unwrap().requests_per_second, 5.0);
        assert_eq!(route.filters.as_deref(), Some("web"));
    }
}
