//! The identity layer: the first rule of the inbound pipeline. The TLS
//! listener has already verified the client certificate (per its
//! `clientAuth`) and put the peer's SPIFFE ID on the connection
//! ([`ConnInfo`]); here the request's route match (`route.rs`) decides
//! whether that peer may pass. A route without an allow-list lets any
//! peer through; so does a path no route matches.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use tower::{Layer, Service};

use crate::errors::ProxyError;
use crate::listener::ConnInfo;
use crate::route::Route;

#[derive(Clone, Default)]
pub struct IdentityLayer;

impl<S> Layer<S> for IdentityLayer {
    type Service = CheckIdentity<S>;
    fn layer(&self, inner: S) -> CheckIdentity<S> {
        CheckIdentity { inner }
    }
}

#[derive(Clone)]
pub struct CheckIdentity<S> {
    inner: S,
}

/// Whether the peer on `conn` may use `route` (`None`: no route matched).
pub fn check(route: Option<&Route>, conn: Option<&ConnInfo>) -> Result<(), ProxyError> {
    let Some(route) = route else {
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
        let conn = request.extensions().get::<Arc<ConnInfo>>();
        let route = crate::route::matched(request.extensions());
        if let Err(e) = check(route, conn.map(|c| &**c)) {
            return Either::Left(ready(Err(e)));
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{RouteConfig, RouteTable};

    fn routes() -> RouteTable {
        let configs: Vec<RouteConfig> = yaml_serde::from_str(
            "- {pathPrefix: /admin/, allowedIdentities: ['spiffe://cluster.local/ns/flyte/sa/*']}\n- {pathPrefix: /}\n",
        )
        .unwrap();
        RouteTable::new(&configs)
    }

    fn conn(id: Option<&str>) -> ConnInfo {
        ConnInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            identity: id.map(Arc::from),
            facts: Default::default(),
        }
    }

    #[test]
    fn the_matched_route_decides() {
        let r = routes();
        let at = |path: &str| r.find(path).map(|r| &**r);
        let flyte = conn(Some("spiffe://cluster.local/ns/flyte/sa/propeller"));
        let other = conn(Some("spiffe://cluster.local/ns/team-a/sa/default"));
        assert!(check(at("/admin/x"), Some(&flyte)).is_ok());
        let e = check(at("/admin/x"), Some(&other)).unwrap_err();
        assert_eq!(e.reason(), "identity-not-allowed");
        let e = check(at("/admin/x"), Some(&conn(None))).unwrap_err();
        assert_eq!(e.reason(), "identity-required");
        assert!(check(at("/public"), Some(&conn(None))).is_ok());
        assert!(check(None, None).is_ok());
    }
}
