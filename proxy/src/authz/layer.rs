//! The authorization layer: the route's rules against the request, a 403
//! for a refusal, a count for every decision.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use super::rules::{Authorization, Decision, Input};
use crate::errors::ProxyError;
use crate::jwt::Verified;
use crate::listener::ConnInfo;
use crate::route::{Route, RouteTable};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub route: String,
    /// `allow`, `deny` or `audit` (an audit rule matched; the request
    /// went on).
    pub decision: &'static str,
    /// The rule that decided; `default` when a route without allow rules
    /// let a request through, `no-allow-match` when it had some and none
    /// matched.
    pub rule: String,
}

/// `tollgate_authz_decisions_total{route,decision,rule}`.
#[derive(Clone, Default)]
pub struct AuthzMetrics {
    decisions: Family<DecisionLabels, Counter>,
}

impl AuthzMetrics {
    /// Registers into a registry prefixed `tollgate`.
    pub fn register(registry: &mut Registry) -> AuthzMetrics {
        let m = AuthzMetrics::default();
        registry.register(
            "authz_decisions",
            "Authorization decisions on inbound requests, by route, decision and rule",
            m.decisions.clone(),
        );
        m
    }

    fn counter(&self, route: &str, decision: &'static str, rule: &str) -> Counter {
        self.decisions
            .get_or_create(&DecisionLabels {
                route: route.to_owned(),
                decision,
                rule: rule.to_owned(),
            })
            .clone()
    }
}

/// One route's series, resolved when the layer is built, so a request
/// only touches an atomic.
struct RouteCounters {
    deny: Vec<Counter>,
    audit: Vec<Counter>,
    allow: Vec<Counter>,
    default: Counter,
    not_allowed: Counter,
}

struct Shared {
    /// By route index; `None`: the route has no authorization.
    counters: Vec<Option<RouteCounters>>,
}

#[derive(Clone, Default)]
pub struct AuthzLayer {
    /// `None`: no route has authorization; requests pass untouched.
    shared: Option<Arc<Shared>>,
}

impl AuthzLayer {
    pub fn disabled() -> AuthzLayer {
        AuthzLayer { shared: None }
    }

    pub fn new(routes: &RouteTable, metrics: &AuthzMetrics) -> AuthzLayer {
        if routes.routes().iter().all(|r| r.authorization.is_none()) {
            return AuthzLayer::disabled();
        }
        let counters = routes
            .routes()
            .iter()
            .map(|route| {
                let authz = route.authorization.as_ref()?;
                let each = |decision, rules: &[super::rules::Rule]| {
                    rules
                        .iter()
                        .map(|r| metrics.counter(&route.name, decision, &r.name))
                        .collect()
                };
                Some(RouteCounters {
                    deny: each("deny", &authz.deny),
                    audit: each("audit", &authz.audit),
                    allow: each("allow", &authz.allow),
                    default: metrics.counter(&route.name, "allow", "default"),
                    not_allowed: metrics.counter(&route.name, "deny", "no-allow-match"),
                })
            })
            .collect();
        AuthzLayer {
            shared: Some(Arc::new(Shared { counters })),
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

/// The decision for one request on `route`, counted and logged; `Err` is
/// the refusal.
fn authorize<B>(
    route: &Route,
    authz: &Authorization,
    counters: Option<&RouteCounters>,
    request: &Request<B>,
) -> Result<(), ProxyError> {
    let conn = request.extensions().get::<Arc<ConnInfo>>();
    let verified = request.extensions().get::<Arc<Verified>>();
    let input = Input {
        method: request.method(),
        path: request.uri().path(),
        peer: conn.and_then(|c| c.identity.as_deref()),
        claims: verified.map(|v| &v.claims),
    };
    let decision = authz.decide(&input);
    let refused = |rule: &str, error: ProxyError| {
        tracing::info!(
            target: "authz",
            route = %route.name,
            rule,
            method = %request.method(),
            path = request.uri().path(),
            peer = input.peer,
            subject = verified.and_then(|v| v.subject()),
            "refused"
        );
        Err(error)
    };
    match decision {
        Decision::Denied(i) => {
            if let Some(c) = counters {
                c.deny[i].inc();
            }
            return refused(
                &authz.deny[i].name,
                ProxyError::AuthzDenied {
                    route: route.name.clone(),
                },
            );
        }
        Decision::NotAllowed => {
            if let Some(c) = counters {
                c.not_allowed.inc();
            }
            return refused(
                "no-allow-match",
                ProxyError::AuthzNotAllowed {
                    route: route.name.clone(),
                },
            );
        }
        Decision::Allowed(i) => {
            if let Some(c) = counters {
                c.allow[i].inc();
            }
            crate::trace::note(request, "tollgate.authz.decision", "allow");
            crate::trace::note(request, "tollgate.authz.rule", authz.allow[i].name.clone());
        }
        Decision::NoAllowRules => {
            if let Some(c) = counters {
                c.default.inc();
            }
            crate::trace::note(request, "tollgate.authz.decision", "allow");
        }
    }
    for i in authz.audits(&input) {
        if let Some(c) = counters {
            c.audit[i].inc();
        }
        tracing::warn!(
            target: "authz",
            route = %route.name,
            rule = %authz.audit[i].name,
            method = %request.method(),
            path = request.uri().path(),
            peer = input.peer,
            subject = verified.and_then(|v| v.subject()),
            "audit rule matched: a deny rule would refuse this request"
        );
    }
    Ok(())
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Either<Ready<Result<S::Response, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(shared) = &self.shared
            && let Some(route) = crate::route::matched(request.extensions())
            && let Some(authz) = &route.authorization
        {
            let counters = shared.counters.get(route.index).and_then(Option::as_ref);
            if let Err(e) = authorize(route, authz, counters, &request) {
                return Either::Left(ready(Err(e)));
            }
        }
        Either::Right(self.inner.call(request))
    }
}
