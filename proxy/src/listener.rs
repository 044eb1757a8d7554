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
    /// What filters read as `destination.*` and `connection.*`.
    pub facts: ConnFacts,
}

/// Facts about an accepted connection beyond its peer.
#[derive(Clone, Debug, Default)]
pub struct ConnFacts {
    /// The local address it was accepted on.
    pub local: Option<SocketAddr>,
    /// A number unique to the connection within the process.
    pub id: u64,
    /// TLS: the server name the client asked for (SNI).
    pub server_name: Option<Arc<str>>,
    /// TLS: the version, as Envoy names it (`TLSv1.3`); `None` in plaintext.
    pub tls_version: Option<&'static str>,
}

fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn tls_version_name(v: rustls::ProtocolVersion) -> Option<&'static str> {
    match v {
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        _ => None,
    }
}

/// The HTTP server settings both listeners share.
pub fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.limits.header_read_timeout_ms))
        .max_buf_size(config.limits.max_header_bytes);
    // Four times the limit: the h2 crate closes the whole connection
    // (GOAWAY) when a header block outgrows what was announced by much, as
    // a 200 KB header did against 64 KiB; within this, the head is decoded
    // and `stack::BodyLimit` refuses it on its stream with 431.
    let list_size = config.limits.max_header_bytes.saturating_mul(4);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(list_size).unwrap_or(u32::MAX));
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
        let mut facts = ConnFacts {
            local: tcp.local_addr().ok(),
            id: next_connection_id(),
            ..ConnFacts::default()
        };
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
                    facts,
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
            let session = stream.get_ref().1;
            facts.server_name = session.server_name().map(Arc::<str>::from);
            facts.tls_version = session.protocol_version().and_then(tls_version_name);
            let identity = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(peer_id)
                .map(Arc::<str>::from);
            let conn = ConnInfo {
                peer,
                identity,
                facts,
            };
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
