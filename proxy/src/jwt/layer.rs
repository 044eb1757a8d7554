//! The JWT layer of the inbound pipeline: per the request's route match
//! (`route.rs`), find the token,
//! verify it, strip spoofable claim headers and set them from the verified
//! claims, and hand the claims to the layers below as a request extension.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use super::config::{BrowserLogin, JwtConfig, Mode, TokenSource};
use super::token;
use super::verify::{JwtError, Verified, Verifier};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `valid`, `bypassed`, `absent` (optional route, no token), or the
    /// reason a token was refused.
    pub result: &'static str,
}

/// `tollgate_jwt_validations_total{result}`.
#[derive(Clone, Default)]
pub struct JwtMetrics {
    validations: Family<ResultLabels, Counter>,
    /// `tollgate_jwt_cache_hits_total`: tokens accepted from the
    /// verified-token cache (the verifier counts them).
    pub cache_hits: Counter,
}

impl JwtMetrics {
    /// Registers into a registry prefixed `tollgate`.
    pub fn register(registry: &mut Registry) -> JwtMetrics {
        let m = JwtMetrics::default();
        registry.register(
            "jwt_validations",
            "JWT checks on inbound requests, by result",
            m.validations.clone(),
        );
        registry.register(
            "jwt_cache_hits",
            "Tokens accepted from the verified-token cache (their key still current and fresh)",
            m.cache_hits.clone(),
        );
        m
    }

    fn count(&self, result: &'static str) {
        self.validations
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

struct Shared {
    verifier: Arc<Verifier>,
    sources: Vec<TokenSource>,
    browser_login: Option<BrowserLogin>,
    claim_headers: Vec<(String, HeaderName)>,
    metrics: JwtMetrics,
}

#[derive(Clone)]
pub struct JwtLayer {
    /// `None`: no JWT configured; requests pass untouched.
    shared: Option<Arc<Shared>>,
}

impl JwtLayer {
    pub fn disabled() -> JwtLayer {
        JwtLayer { shared: None }
    }

    pub fn new(
        config: &JwtConfig,
        verifier: Arc<Verifier>,
        metrics: JwtMetrics,
    ) -> Result<JwtLayer, String> {
        let claim_headers = config
            .claims_to_headers
            .iter()
            .map(|(claim, header)| {
                HeaderName::from_bytes(header.as_bytes())
                    .map(|h| (claim.clone(), h))
                    .map_err(|_| {
                        format!("jwt.claimsToHeaders.{claim}: {header:?} is not a header name")
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(JwtLayer {
            shared: Some(Arc::new(Shared {
                verifier,
                sources: config.token_sources.clone(),
                browser_login: config.browser_login.clone(),
                claim_headers,
                metrics,
            })),
        })
    }
}

impl<S> Layer<S> for JwtLayer {
    type Service = CheckJwt<S>;
    fn layer(&self, inner: S) -> CheckJwt<S> {
        CheckJwt {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CheckJwt<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for CheckJwt<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: From<JwtError> + From<LoginRequired>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(shared) = self.shared.clone() else {
            return Box::pin(self.inner.call(request));
        };
        // The ready service handles this request; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // Whatever happens, a client never chooses its own claim headers.
            for (_, header) in &shared.claim_headers {
                request.headers_mut().remove(header);
            }
            // The request's one route match (route.rs); no route, or a
            // route without `jwt`: bypass.
            let route = crate::route::matched(request.extensions()).and_then(|r| r.jwt.clone());
            let Some(route) = route.filter(|r| r.mode != Mode::Bypass) else {
                shared.metrics.count("bypassed");
                crate::trace::note(&request, "tollgate.jwt.result", "bypassed");
                return inner.call(request).await;
            };
            let found = token::find(&shared.sources, request.headers(), request.uri().query());
            let Some(token) = found else {
                if route.mode == Mode::Optional {
                    shared.metrics.count("absent");
                    crate::trace::note(&request, "tollgate.jwt.result", "absent");
                    return inner.call(request).await;
                }
                shared.metrics.count(JwtError::Missing.label());
                if let Some(location) = shared
                    .browser_login
                    .as_ref()
                    .and_then(|login| login_redirect(login, &request))
                {
                    return Err(S::Error::from(LoginRequired(location)));
                }
                return Err(JwtError::Missing.into());
            };
            match shared.verifier.verify(&token, &route.providers).await {
                Ok(verified) => {
                    shared.metrics.count("valid");
                    crate::trace::note(&request, "tollgate.jwt.result", "valid");
                    set_claim_headers(&shared.claim_headers, &verified, request.headers_mut());
                    request.extensions_mut().insert(verified);
                    inner.call(request).await
                }
                Err(e) => {
                    shared.metrics.count(e.label());
                    // A browser whose session ran out logs in again, as one
                    // that never had a token does.
                    if matches!(e, JwtError::Expired)
                        && let Some(location) = shared
                            .browser_login
                            .as_ref()
                            .and_then(|login| login_redirect(login, &request))
                    {
                        return Err(S::Error::from(LoginRequired(location)));
                    }
                    Err(e.into())
                }
            }
        })
    }
}

/// A browser without a token is sent here (`ProxyError::LoginRequired`).
pub struct LoginRequired(pub String);

/// Whether `request` comes from a browser navigating: it accepts HTML and
/// is no upgrade (a WebSocket is opened by a page's script, which gets the
/// 401 it can act on).
fn is_browser<B>(request: &Request<B>) -> bool {
    let upgrade = request.headers().contains_key(http::header::UPGRADE)
        || request.method() == http::Method::CONNECT;
    !upgrade
        && request
            .headers()
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// The login URL with the request's own URL as `redirectParam`, for a
/// browser's request; `None` for any other client.
pub fn login_redirect<B>(login: &BrowserLogin, request: &Request<B>) -> Option<String> {
    if !is_browser(request) {
        return None;
    }
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))?;
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    // The inbound listener is TLS: the page was opened over https.
    let original = format!("https://{host}{path}");
    let encoded = percent_encoding::utf8_percent_encode(&original, QUERY_VALUE);
    let separator = if login.url.contains('?') { '&' } else { '?' };
    Some(format!(
        "{}{separator}{}={encoded}",
        login.url, login.redirect_param
    ))
}

/// Everything but the unreserved characters, as in a query value.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn set_claim_headers(
    claim_headers: &[(String, HeaderName)],
    verified: &Verified,
    headers: &mut http::HeaderMap,
) {
    for (claim, header) in claim_headers {
        if let Some(value) = verified
            .claim_text(claim)
            .and_then(|text| HeaderValue::from_str(&text).ok())
        {
            headers.insert(header.clone(), value);
        }
    }
}

/// The claims of a verified token on this request, if any.
pub fn claims<B>(request: &Request<B>) -> Option<&Arc<Verified>> {
    request.extensions().get::<Arc<Verified>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> BrowserLogin {
        BrowserLogin {
            url: "https://login.corp.io/start?app=ws".into(),
            redirect_param: "rd".into(),
        }
    }

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().uri("/lab/tree?path=a%20b&x=1");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn browsers_are_sent_to_log_in_with_their_url_and_api_clients_are_not() {
        let html = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        let host = ("host", "ws-ml-user-1.team-a.svc:8443");
        assert_eq!(
            login_redirect(&login(), &request(&[html, host])).as_deref(),
            Some(
                "https://login.corp.io/start?app=ws&rd=https%3A%2F%2Fws-ml-user-1.team-a.svc%3A8443%2Flab%2Ftree%3Fpath%3Da%2520b%26x%3D1"
            )
        );
        // An API client, a script's fetch, a WebSocket upgrade: the 401.
        assert_eq!(login_redirect(&login(), &request(&[host])), None);
        assert_eq!(
            login_redirect(&login(), &request(&[("accept", "application/json"), host])),
            None
        );
        assert_eq!(
            login_redirect(
                &login(),
                &request(&[
                    html,
                    host,
                    ("upgrade", "websocket"),
                    ("connection", "upgrade")
                ])
            ),
            None
        );
    }
}
