//! Connections to one upstream, kept open between requests: hyper's
//! `client::conn` handshakes over our own TCP (and TLS) connections, one
//! pool per upstream shared by every worker and client connection.
//!
//! - HTTP/1.1: idle connections wait on a stack, the most recently used
//!   on top (so the rest age out). A connection goes back when its
//!   response body has ended ([`PooledBody`]), never while a body streams,
//!   and never after an upgrade (the connection became the tunnel).
//! - h2 (h2c to the app, or ALPN `h2` from an upstream): one connection,
//!   every request a stream on it; a new one once it closes.
//! - A request that never left because its idle connection had closed
//!   (the app's keep-alive timeout racing our reuse) is sent on the next
//!   idle connection, or on a new one; a request that may have reached
//!   the app is never sent twice.
//! - Idle connections older than the idle timeout are closed when the pool
//!   is next used; at most `max_idle` wait.
//!
//! What it saves against hyper-util's pooled `Client` (`benches/README.md`,
//! issue 23): no connector service, pool key or checkout race per request,
//! no task per request waiting for its connection to become idle again,
//! and the URI is written once in the form the connection sends.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::ProxyBody;

/// The protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// h2 (prior knowledge over plaintext: h2c).
    H2,
    /// Whatever the upstream picks by ALPN, h2 or HTTP/1.1 (TLS only).
    Auto,
}

/// How to open a connection.
pub struct Connector {
    /// `host:port`, resolved on each connect.
    pub address: String,
    pub connect_timeout: Duration,
    /// TLS, with the name the certificate must carry; `None`: plaintext.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub protocol: Protocol,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting to {address}: timed out after {after:?}")]
    ConnectTimeout { address: String, after: Duration },
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {address}: {source}")]
    Tls {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {address}: {source}")]
    Handshake {
        address: String,
        #[source]
        source: hyper::Error,
    },
    /// A new connection closed before the request could leave on it.
    #[error("{address} closed a new connection before the request was sent")]
    ClosedUnsent { address: String },
    /// On an established connection: sending the request or reading the
    /// response head.
    #[error(transparent)]
    Send(hyper::Error),
}

impl PoolError {
    /// Whether the upstream was never reached: no connection, no TLS, no
    /// HTTP handshake.
    pub fn is_connect(&self) -> bool {
        !matches!(self, PoolError::Send(_) | PoolError::ClosedUnsent { .. })
    }
}

/// Connections to one upstream; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    scheme: Scheme,
    authority: Authority,
    idle: Mutex<Vec<Idle>>,
    /// The h2 connection, once there is one. Held while connecting, so
    /// that concurrent first requests share the one connection.
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ProxyBody>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

/// A new connection's sender, by the protocol it ended up speaking.
type Opened = Sender;

impl Pool {
    pub fn new(
        connector: Connector,
        scheme: Scheme,
        authority: Authority,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                connector,
                scheme,
                authority,
                idle: Mutex::new(Vec::new()),
                h2: tokio::sync::Mutex::new(None),
                max_idle,
                idle_timeout,
            }),
        }
    }

    /// The full URL of a request to this upstream: its scheme and
    /// authority, `origin`'s path and query (`/` when it has none).
    pub fn url(&self, origin: &Uri) -> Uri {
        self.shared.url(origin)
    }

    /// Sends `request` (its URI's path and query; scheme and authority are
    /// the upstream's) and waits for the response head. The response body
    /// hands an HTTP/1.1 connection back when it ends.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let shared = &self.shared;
        let mut request = request;
        if shared.connector.protocol != Protocol::Http1
            && let Some(h2) = shared
                .h2_sender(shared.connector.protocol == Protocol::H2)
                .await?
        {
            return shared.send_h2(h2, request).await;
        }
        // Idle HTTP/1.1 connections first; a request that could not leave
        // on one tries the next.
        while let Some(sender) = shared.checkout() {
            match shared.send_h1(sender, request).await {
                Ok(response) => return Ok(response),
                Err(Unsent::Again(back)) => request = back,
                Err(Unsent::Failed(e)) => return Err(e),
            }
        }
        // Boxed: connecting (TLS included) is a large future, and the
        // common path, a pooled connection, should not carry its size.
        match Box::pin(shared.open()).await? {
            Sender::H2(h2) => {
                shared.keep_h2(&h2).await;
                shared.send_h2(h2, request).await
            }
            Sender::H1(sender) => match shared.send_h1(sender, request).await {
                Ok(response) => Ok(response),
                Err(Unsent::Again(_)) => Err(PoolError::ClosedUnsent {
                    address: shared.connector.address.clone(),
                }),
                Err(Unsent::Failed(e)) => Err(e),
            },
        }
    }
}

enum Unsent {
    /// Never left: the connection had closed. The request, to send again.
    Again(Request<ProxyBody>),
    Failed(PoolError),
}

impl Shared {
    /// The top idle HTTP/1.1 connection that is still open and fresh;
    /// drops those that are not.
    fn checkout(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(Idle { sender, since }) = idle.pop() {
            if since.elapsed() >= self.idle_timeout {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if !sender.is_closed() && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Puts an HTTP/1.1 connection back once it can take a request.
    fn give_back(self: &Arc<Self>, mut sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        if sender.is_ready() {
            self.push_idle(sender);
            return;
        }
        // Still writing the request body (the app answered before reading
        // all of it): back once that is done, in a task of its own.
        let shared = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                shared.push_idle(sender);
            }
        });
    }

    fn push_idle(&self, sender: http1::SendRequest<ProxyBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let timeout = self.idle_timeout;
        idle.retain(|i| i.since.elapsed() < timeout && !i.sender.is_closed());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// The live h2 connection; with `connect`, one is opened when there is
    /// none (the lock held, so concurrent requests share it).
    async fn h2_sender(
        &self,
        connect: bool,
    ) -> Result<Option<http2::SendRequest<ProxyBody>>, PoolError> {
        let mut slot = self.h2.lock().await;
        if let Some(h2) = slot.as_ref()
            && !h2.is_closed()
        {
            return Ok(Some(h2.clone()));
        }
        *slot = None;
        if !connect {
            return Ok(None);
        }
        match Box::pin(self.open()).await? {
            Sender::H2(h2) => {
                *slot = Some(h2.clone());
                Ok(Some(h2))
            }
            // Prior knowledge: a new connection is always h2.
            Sender::H1(_) => Ok(None),
        }
    }

    async fn keep_h2(&self, h2: &http2::SendRequest<ProxyBody>) {
        let mut slot = self.h2.lock().await;
        if slot.as_ref().is_none_or(|s| s.is_closed()) {
            *slot = Some(h2.clone());
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut sender: http1::SendRequest<ProxyBody>,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, Unsent> {
        *request.version_mut() = Version::HTTP_11;
        if let Some(pq) = request.uri().path_and_query()
            && request.uri().scheme().is_some()
        {
            *request.uri_mut() = Uri::from(pq.clone());
        }
        if !request.headers().contains_key(http::header::HOST)
            && let Ok(host) = http::HeaderValue::from_str(self.authority.as_str())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                let upgraded = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                let back = (!upgraded).then(|| (self.clone(), sender));
                Ok(response.map(|body| PooledBody { body, back }))
            }
            Err(mut e) => match e.take_message() {
                Some(request) => Err(Unsent::Again(request)),
                None => Err(Unsent::Failed(PoolError::Send(e.into_error()))),
            },
        }
    }

    fn url(&self, origin: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            origin
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        // A scheme, an authority and a path always form a URI.
        Uri::from_parts(parts).unwrap_or_else(|_| origin.clone())
    }

    async fn send_h2(
        &self,
        mut sender: http2::SendRequest<ProxyBody>,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        *request.version_mut() = Version::HTTP_2;
        *request.uri_mut() = self.url(request.uri());
        let response = sender
            .send_request(request)
            .await
            .map_err(PoolError::Send)?;
        Ok(response.map(|body| PooledBody { body, back: None }))
    }

    /// A new connection: TCP, then TLS when configured, then the HTTP
    /// handshake of the protocol configured or negotiated; its connection
    /// task runs until the upstream or the pool closes it.
    async fn open(&self) -> Result<Opened, PoolError> {
        let c = &self.connector;
        let tcp = c
            .step(TcpStream::connect(&c.address), |address, source| {
                PoolError::Connect { address, source }
            })
            .await?;
        let _ = tcp.set_nodelay(true);
        let Some((tls, name)) = &c.tls else {
            return c
                .handshake(TokioIo::new(tcp), c.protocol == Protocol::H2)
                .await;
        };
        let stream = c
            .step(tls.connect(name.clone(), tcp), |address, source| {
                PoolError::Tls { address, source }
            })
            .await?;
        let h2 = match c.protocol {
            Protocol::H2 => true,
            Protocol::Http1 => false,
            Protocol::Auto => stream.get_ref().1.alpn_protocol() == Some(b"h2"),
        };
        c.handshake(TokioIo::new(stream), h2).await
    }
}

impl Connector {
    /// One step of connecting (TCP, TLS), bounded by the connect timeout;
    /// `failed` names its error.
    async fn step<T>(
        &self,
        future: impl std::future::Future<Output = std::io::Result<T>>,
        failed: impl FnOnce(String, std::io::Error) -> PoolError,
    ) -> Result<T, PoolError> {
        match tokio::time::timeout(self.connect_timeout, future).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(source)) => Err(failed(self.address.clone(), source)),
            Err(_) => Err(PoolError::ConnectTimeout {
                address: self.address.clone(),
                after: self.connect_timeout,
            }),
        }
    }

    /// The HTTP handshake on a connected `io`; its connection task runs
    /// until the upstream or the pool closes it.
    async fn handshake<T>(&self, io: T, h2: bool) -> Result<Opened, PoolError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        handshake(io, h2)
            .await
            .map_err(|source| PoolError::Handshake {
                address: self.address.clone(),
                source,
            })
    }
}

async fn handshake<T>(io: T, h2: bool) -> Result<Opened, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if h2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(Sender::H1(sender))
    }
}

/// A response body from the pool: an HTTP/1.1 connection goes back to the
/// pool when the body has ended (read to its end, or empty), and is closed
/// when the body is dropped before that.
pub struct PooledBody {
    body: Incoming,
    back: Option<(Arc<Shared>, http1::SendRequest<ProxyBody>)>,
}

impl PooledBody {
    fn hand_back(&mut self) {
        if let Some((shared, sender)) = self.back.take() {
            shared.give_back(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.hand_back(),
            Poll::Ready(Some(Err(_))) => drop(this.back.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Unread (HEAD, 204, `content-length: 0`): the exchange is over.
        // Cut short: hyper closes the connection; let it go.
        if self.body.is_end_stream() {
            self.hand_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// An app on loopback that answers every request with `body` and
    /// counts the connections it accepted; with `close_after`, it closes
    /// each connection after that many requests (its keep-alive limit).
    async fn app(
        h2: bool,
        body: &'static [u8],
        close_after: Option<usize>,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let mut response = Response::new(Full::new(Bytes::from_static(body)));
                            if close_after == Some(n) {
                                response
                                    .headers_mut()
                                    .insert("connection", http::HeaderValue::from_static("close"));
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let io = TokioIo::new(tcp);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        (address, accepted)
    }

    fn pool_to(address: &str, protocol: Protocol) -> Pool {
        let connector = Connector {
            address: address.to_owned(),
            connect_timeout: Duration::from_secs(2),
            tls: None,
            protocol,
        };
        let authority = Authority::try_from(address).unwrap();
        Pool::new(
            connector,
            Scheme::HTTP,
            authority,
            4,
            Duration::from_secs(60),
        )
    }

    fn get(path: &'static str) -> Request<ProxyBody> {
        Request::builder()
            .uri(path)
            .header("host", "app.test")
            .body(crate::body::empty())
            .unwrap()
    }

    async fn read(response: Response<PooledBody>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn http1_connections_are_kept_alive_and_reused() {
        let (address, accepted) = app(false, b"hello", None).await;
        let pool = pool_to(&address, Protocol::Http1);
        for _ in 0..5 {
            let response = pool.send(get("/x?y=1")).await.unwrap();
            assert_eq!(read(response).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_streaming_response_keeps_its_connection_and_the_next_request_opens_another() {
        let (address, accepted) = app(false, b"hello", None).await;
        let pool = pool_to(&address, Protocol::Http1);
        let first = pool.send(get("/")).await.unwrap();
        // The first body is not read yet: its connection is not idle.
        let second = pool.send(get("/")).await.unwrap();
        assert_eq!(read(second).await, "hello");
        assert_eq!(read(first).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Both went back; the next uses one of them.
        assert_eq!(read(pool.send(get("/")).await.unwrap()).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let (address, accepted) = app(false, b"hello", None).await;
        let pool = pool_to(&address, Protocol::Http1);
        drop(pool.send(get("/")).await.unwrap());
        assert_eq!(read(pool.send(get("/")).await.unwrap()).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_not_reused() {
        // The app closes every connection after one request: each request
        // needs a new one, and none fails for it.
        let (address, accepted) = app(false, b"hello", Some(1)).await;
        let pool = pool_to(&address, Protocol::Http1);
        for _ in 0..3 {
            assert_eq!(read(pool.send(get("/")).await.unwrap()).await, "hello");
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn h2c_requests_share_one_connection() {
        let (address, accepted) = app(true, b"hello", None).await;
        let pool = pool_to(&address, Protocol::H2);
        let sent: Vec<_> = (0..8).map(|_| pool.send(get("/"))).collect();
        let responses = futures_util::future::join_all(sent).await;
        for response in responses {
            let response = response.unwrap();
            assert_eq!(response.version(), Version::HTTP_2);
            assert_eq!(read(response).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_app_that_is_down_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = pool_to(&address, Protocol::Http1);
        let Err(error) = pool.send(get("/")).await else {
            panic!("a closed port answered");
        };
        assert!(error.is_connect(), "{error}");
        assert!(error.to_string().contains(&address), "{error}");
    }
}
