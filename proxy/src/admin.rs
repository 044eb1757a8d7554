//! The admin server, plain HTTP on its own port (`tollgate-admin`):
//!
//! | route | answer |
//! |---|---|
//! | `GET /live` | 200 while the process runs |
//! | `GET /ready` | 200 once the certificates are loaded and the listeners serve (and, when those issues land, JWKS fetched and filters loaded); 503 naming what it waits for, and while draining. Below the verdict, degradations that do not make it unready: filter reload errors, shared rate limits running on `failureMode` |
//! | `GET /metrics` | Prometheus text |
//! | `POST /shutdown` | from a loopback address only (403 otherwise): drain and exit, for Jobs whose main container is done |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::drain::Shutdown;
use crate::metrics::Metrics;

/// A line for `/ready` below the verdict, if there is something to say.
pub type Detail = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What readiness waits for.
pub struct Health {
    waiting: Mutex<Vec<&'static str>>,
    details: Mutex<Vec<Detail>>,
    shutdown: Shutdown,
}

impl Health {
    /// Waiting for certificates and for the listeners.
    pub fn new(shutdown: Shutdown) -> Health {
        Health {
            waiting: Mutex::new(vec!["certificates", "listeners"]),
            details: Mutex::new(Vec::new()),
            shutdown,
        }
    }

    /// Readiness also waits for `what` until [`Health::done`].
    pub fn wait_for(&self, what: &'static str) {
        if let Ok(mut w) = self.waiting.lock()
            && !w.contains(&what)
        {
            w.push(what);
        }
    }

    pub fn done(&self, what: &'static str) {
        if let Ok(mut w) = self.waiting.lock() {
            w.retain(|x| *x != what);
        }
    }

    /// Adds a line to `/ready` (a degradation that does not make the
    /// proxy unready).
    pub fn add_detail(&self, detail: Detail) {
        if let Ok(mut d) = self.details.lock() {
            d.push(detail);
        }
    }

    /// What `/ready` adds below its verdict: the filter chains' load
    /// state, with the last load error (the previous chains stay in use),
    /// and the lines of [`Health::add_detail`].
    fn details(&self) -> String {
        let mut out = String::new();
        for status in crate::filters::status().into_iter().flatten() {
            out.push_str(&format!(
                "filters: generation {}, {} loaded: {}\n",
                status.generation,
                status.filters.len(),
                status.filters.join(", ")
            ));
            if let Some(error) = &status.last_error {
                out.push_str(&format!("filters: last reload failed: {error}\n"));
            }
        }
        let details = self.details.lock().map(|d| d.clone()).unwrap_or_default();
        for line in details.iter().filter_map(|d| d()) {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Ready, or why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.shutdown.is_triggered() {
            return Err("draining".into());
        }
        match self.waiting.lock() {
            Ok(w) if w.is_empty() => Ok(()),
            Ok(w) => Err(format!("waiting for {}", w.join(", "))),
            Err(_) => Err("health state poisoned".into()),
        }
    }
}

/// What the admin handlers share.
pub struct Admin {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    pub log_probes: bool,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

impl Admin {
    pub fn route(&self, peer: SocketAddr, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let plain = "text/plain; charset=utf-8";
        match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/live") => text(StatusCode::OK, plain, "live\n".into()),
            (&Method::GET | &Method::HEAD, "/ready") => match self.health.readiness() {
                Ok(()) => text(
                    StatusCode::OK,
                    plain,
                    format!("ready\n{}", self.health.details()),
                ),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    plain,
                    format!("not ready: {why}\n{}", self.health.details()),
                ),
            },
            (&Method::GET | &Method::HEAD, "/metrics") => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            (&Method::POST, "/shutdown") => {
                if peer.ip().is_loopback() {
                    tracing::info!(%peer, "shutdown requested");
                    self.shutdown.trigger();
                    text(StatusCode::ACCEPTED, plain, "draining\n".into())
                } else {
                    text(
                        StatusCode::FORBIDDEN,
                        plain,
                        "POST /shutdown is accepted from localhost only\n".into(),
                    )
                }
            }
            (_, "/live" | "/ready" | "/metrics" | "/shutdown") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                plain,
                format!(
                    "{} does not accept {}\n",
                    request.uri().path(),
                    request.method()
                ),
            ),
            (_, other) => text(
                StatusCode::NOT_FOUND,
                plain,
                format!("no route for {other}\n"),
            ),
        }
    }
}

/// Serves the admin routes until the process exits.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let start = Instant::now();
                let response = admin.route(peer, &request);
                if admin.log_probes {
                    tracing::info!(
                        target: "access",
                        direction = "admin",
                        method = %request.method(),
                        path = %request.uri().path(),
                        status = response.status().as_u16(),
                        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
                        peer = %peer.ip(),
                    );
                }
                std::future::ready(Ok::<_, Infallible>(response))
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(tcp), service).await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}
