//! Accepting connections: TLS (inbound) or plaintext on loopback
//! (outbound), then HTTP/1.1 or HTTP/2 (hyper-util's auto builder; ALPN
//! offers h2 and http/1.1, and plaintext clients may speak h2c with prior
//! knowledge). The peer's SPIFFE ID is read from its verified certificate
//! once per connection and travels with every request as a [`ConnInfo`]
//! extension.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tollgate_certs::spiffe::peer_id;

use crate::config::Config;
use crate::drain::Shutdown;
use crate::metrics::DirectionMetrics;
use crate::stack::Stack;

/// Who is on the other end of a connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The SPIFFE ID of the peer's verified client certificate, if any.
    pub identity: Option<Arc<str>>,
}

/// The HTTP server settings both listeners share.
pub fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.limits.header_read_timeout_ms))
        .max_buf_size(config.limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves `listener` until `shutdown`, then stops accepting (the socket is
/// closed, so new connections are refused) and waits for the connections
/// it accepted to finish their requests. `tls`: `None` for plaintext.
/// `first_request_timeout`: a connection that has not delivered a request
/// head by then is closed. hyper's HTTP/1.1 header read timeout only starts
/// once the auto builder has told HTTP/1.1 from an h2 preface, and that
/// detection has no timeout: a client that sent nothing, or dribbled
/// `PRI * HTTP/2.0`, held the connection forever (slowloris).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    first_request_timeout: Duration,
    stack: Stack,
    builder: auto::Builder<TokioExecutor>,
    metrics: DirectionMetrics,
    shutdown: Shutdown,
) {
    let graceful = GracefulShutdown::new();
    let stop = shutdown.triggered();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let stack = stack.clone();
        let builder = builder.clone();
        let metrics = metrics.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            metrics.active_connections.inc();
            let _open = OnDrop(|| {
                metrics.active_connections.dec();
            });
            let Some(acceptor) = tls else {
                let conn = ConnInfo {
                    peer,
                    identity: None,
                };
                let (service, served) = noting_requests(TowerToHyperService::new(
                    stack.for_connection(Arc::new(conn)),
                ));
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                let connection = watcher.watch(connection.into_owned());
                finish_or_cut(connection, served, first_request_timeout, peer).await;
                return;
            };
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(peer_id)
                .map(Arc::<str>::from);
            let conn = ConnInfo { peer, identity };
            let (service, served) = noting_requests(TowerToHyperService::new(
                stack.for_connection(Arc::new(conn)),
            ));
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let connection = watcher.watch(connection.into_owned());
            finish_or_cut(connection, served, first_request_timeout, peer).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// `service`, noting in the flag it returns that a request reached it.
fn noting_requests<S>(service: S) -> (NotingRequests<S>, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(false));
    let service = NotingRequests {
        inner: service,
        flag: flag.clone(),
    };
    (service, flag)
}

#[derive(Clone)]
struct NotingRequests<S> {
    inner: S,
    flag: Arc<AtomicBool>,
}

impl<S: hyper::service::Service<R>, R> hyper::service::Service<R> for NotingRequests<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: R) -> Self::Future {
        self.flag.store(true, Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// Runs `connection` to its end, or drops (closes) it if no request has
/// reached the service within `timeout`.
async fn finish_or_cut<F>(
    connection: F,
    served: Arc<AtomicBool>,
    timeout: Duration,
    peer: SocketAddr,
) where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let deadline = async {
        tokio::time::sleep(timeout).await;
        if served.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = connection => finish(result, peer),
        () = deadline => tracing::debug!(%peer, "no request head in time; connection closed"),
    }
}

fn finish(result: Result<(), Box<dyn std::error::Error + Send + Sync>>, peer: SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Runs a closure when dropped (also when the task is cancelled).
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
