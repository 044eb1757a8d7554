//! The identity layer: the first rule of the inbound pipeline. The TLS
//! listener has already verified the client certificate (per its
//! `clientAuth`) and put the peer's SPIFFE ID on the connection
//! ([`ConnInfo`]); here the first route whose `pathPrefix` matches the
//! request decides whether that peer may pass. A route without an
//! allow-list lets any peer through; so does a path no route matches.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use tower::{Layer, Service};

use crate::config::Route;
use crate::errors::ProxyError;
use crate::listener::ConnInfo;

#[derive(Clone)]
pub struct IdentityLayer {
    routes: Arc<[Route]>,
}

impl IdentityLayer {
    pub fn new(routes: Vec<Route>) -> IdentityLayer {
        IdentityLayer {
            routes: routes.into(),
        }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = CheckIdentity<S>;
    fn layer(&self, inner: S) -> CheckIdentity<S> {
        CheckIdentity {
            inner,
            routes: self.routes.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CheckIdentity<S> {
    inner: S,
    routes: Arc<[Route]>,
}

/// Whether the peer on `conn` may send `path`, by the first matching route.
pub fn check(routes: &[Route], path: &str, conn: Option<&ConnInfo>) -> Result<(), ProxyError> {
    let Some(route) = routes
        .iter()
        .find(|r| crate::path::prefix_matches(&r.path_prefix, path))
    else {
        return Ok(());
    };
    let Some(allowed) = &route.allowed else {
        return Ok(());
    };
    match conn.and_then(|c| c.identity.as_deref()) {
        None => Err(ProxyError::IdentityRequired {
            route: route.path_prefix.clone(),
        }),
        Some(id) if allowed.iter().any(|p| p.matches(id)) => Ok(()),
        Some(id) => Err(ProxyError::IdentityNotAllowed {
            peer: id.to_owned(),
            route: route.path_prefix.clone(),
        }),
    }
}

impl<S, B> Service<Request<B>> for CheckIdentity<S>
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
        if !self.routes.is_empty() {
            let conn = request.extensions().get::<Arc<ConnInfo>>();
            if let Err(e) = check(&self.routes, request.uri().path(), conn.map(|c| &**c)) {
                return Either::Left(ready(Err(e)));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use tollgate_certs::spiffe::IdPattern;

    use super::*;

    fn routes() -> Vec<Route> {
        vec![
            Route {
                path_prefix: "/admin/".into(),
                allowed: Some(vec![
                    IdPattern::parse("spiffe://cluster.local/ns/flyte/sa/*").unwrap(),
                ]),
            },
            Route {
                path_prefix: "/".into(),
                allowed: None,
            },
        ]
    }

    fn conn(id: Option<&str>) -> ConnInfo {
        ConnInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            identity: id.map(Arc::from),
        }
    }

    #[test]
    fn first_matching_route_decides() {
        let r = routes();
        let flyte = conn(Some("spiffe://cluster.local/ns/flyte/sa/propeller"));
        let other = conn(Some("spiffe://cluster.local/ns/team-a/sa/default"));
        assert!(check(&r, "/admin/x", Some(&flyte)).is_ok());
        let e = check(&r, "/admin/x", Some(&other)).unwrap_err();
        assert_eq!(e.reason(), "identity-not-allowed");
        let e = check(&r, "/admin/x", Some(&conn(None))).unwrap_err();
        assert_eq!(e.reason(), "identity-required");
        assert!(check(&r, "/public", Some(&conn(None))).is_ok());
        assert!(check(&[], "/admin/x", None).is_ok());
    }
}
