//! Accepting connections: TLS (inbound) or plaintext on loopback
//! (outbound), then HTTP/1.1 or HTTP/2 (hyper-util's auto builder; ALPN
//! offers h2 and http/1.1, and plaintext clients may speak h2c with prior
//! knowledge). The peer's SPIFFE ID is read from its verified certificate
//! once per connection and travels with every request as a [`ConnInfo`]
//! extension.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tollgate_certs::spiffe::peer_id;
use tollgate_listen::first_request::{finish_or_cut, noting};

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
/// head by then is closed (slowloris; see `tollgate_listen`).
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
                let (service, served) = noting(TowerToHyperService::new(
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
            let (service, served) = noting(TowerToHyperService::new(
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

/// Runs a closure when dropped (also when the task is cancelled).
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
