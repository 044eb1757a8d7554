//! The tower layer: runs the chain the request's route match names
//! (`route.rs`) on the request head, the
//! response head, and — only when a filter exports body or trailer
//! callbacks — on the bodies, which otherwise stream through untouched.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tower::{BoxError, Layer, Service};

use super::chain::{Chain, ChainSet, Dir, Run, Verdict, failure_response, is_grpc};
use super::instance::Failure;
use super::properties::{Claims, RequestProps};
use super::reload::FilterHost;
use crate::body::ProxyBody;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Where the verified JWT claims of a request are.
pub type ClaimsFn = fn(&http::Extensions) -> Option<Arc<dyn Claims>>;

/// Where the peer address, its SPIFFE ID and the connection's facts are.
pub type PeerFn = fn(&http::Extensions) -> Peer;

/// What [`PeerFn`] finds about a request's connection.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub source: Option<std::net::SocketAddr>,
    pub principal: Option<Arc<str>>,
    pub conn: super::properties::Conn,
}

fn claims_from_extension(ext: &http::Extensions) -> Option<Arc<dyn Claims>> {
    ext.get::<super::properties::FilterClaims>()
        .map(|c| c.0.clone())
}

fn no_peer(_: &http::Extensions) -> Peer {
    Peer::default()
}

#[derive(Clone)]
pub struct FiltersLayer {
    host: Option<Arc<FilterHost>>,
    claims: ClaimsFn,
    peer: PeerFn,
}

impl FiltersLayer {
    /// No filters: requests pass untouched.
    pub fn disabled() -> FiltersLayer {
        FiltersLayer {
            host: None,
            claims: claims_from_extension,
            peer: no_peer,
        }
    }

    pub fn new(host: Arc<FilterHost>) -> FiltersLayer {
        FiltersLayer {
            host: Some(host),
            ..FiltersLayer::disabled()
        }
    }

    pub fn with_claims(mut self, claims: ClaimsFn) -> FiltersLayer {
        self.claims = claims;
        self
    }

    pub fn with_peer(mut self, peer: PeerFn) -> FiltersLayer {
        self.peer = peer;
        self
    }

    pub fn host(&self) -> Option<&Arc<FilterHost>> {
        self.host.as_ref()
    }
}

impl<S> Layer<S> for FiltersLayer {
    type Service = Filters<S>;
    fn layer(&self, inner: S) -> Filters<S> {
        Filters {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Filters<S> {
    inner: S,
    layer: FiltersLayer,
}

fn props_of<B>(request: &Request<B>, layer: &FiltersLayer) -> RequestProps {
    let peer = (layer.peer)(request.extensions());
    RequestProps {
        method: request.method().as_str().to_owned(),
        path: request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned(),
        host: request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_owned(),
        scheme: request.uri().scheme_str().unwrap_or("http").to_owned(),
        protocol: match request.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        },
        source: peer.source,
        principal: peer.principal,
        claims: (layer.claims)(request.extensions()),
        conn: peer.conn,
        time: Some(std::time::SystemTime::now()),
        started: Some(std::time::Instant::now()),
    }
}

/// A request to forward, and its run through the chain (`None`: no chain).
pub type Forward = (Request<ProxyBody>, Option<Arc<Mutex<Run>>>);

/// The chain the request's route names: `Ok(None)` when it names none (or
/// no route matched); `Err` when the current load has no such chain,
/// which fails closed.
fn chain_for<B>(
    set: &ChainSet,
    request: &Request<B>,
) -> Result<Option<Arc<Chain>>, Box<Response<ProxyBody>>> {
    let Some(name) = crate::route::matched(request.extensions()).and_then(|r| r.filters.as_deref())
    else {
        return Ok(None);
    };
    match set.chain(name) {
        Some(chain) => Ok(Some(chain.clone())),
        None => Err(Box::new(failure_response(
            &format!("chain {name}"),
            &Failure::Instantiate("no such chain is loaded".into()),
            is_grpc(request.headers()),
        ))),
    }
}

/// Runs the request side of the chain. `Err(response)`: answer with it.
/// For callers that cannot wait: a filter waiting on `proxy_http_call`
/// calls fails the request (503); the service uses [`begin_request`].
pub fn filter_request(
    set: &ChainSet,
    request: Request<ProxyBody>,
    layer: &FiltersLayer,
) -> Result<Forward, Box<Response<ProxyBody>>> {
    match begin_request(set, request, layer)? {
        Filtered::Ready(forward) => Ok(forward),
        Filtered::Waiting(waiting) => Err(Box::new(failure_response(
            &waiting.filter_name(),
            &Failure::Abi("waits on calls where nothing can wait".into()),
            waiting.grpc,
        ))),
    }
}

/// The request side of the chain, as far as it goes without waiting.
// `Ready` is every request's path, returned once: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Filtered {
    Ready(Forward),
    /// A filter paused the request on `proxy_http_call`: [`Waiting::resume`].
    Waiting(Box<Waiting>),
}

/// A request whose chain waits on calls.
pub struct Waiting {
    run: Run,
    parts: http::request::Parts,
    body: ProxyBody,
    chain: Arc<Chain>,
    calls: Vec<super::callout::Callout>,
    grpc: bool,
}

impl Waiting {
    fn filter_name(&self) -> String {
        self.run.first_closed().unwrap_or("filters").to_owned()
    }

    /// Sends the calls, hands each answer to the waiting filter as it
    /// comes, and finishes the request side when the chain is through.
    /// Dropping the future (the client went away) cancels the calls.
    pub async fn resume(self) -> Result<Forward, Box<Response<ProxyBody>>> {
        use futures_util::StreamExt;
        let Waiting {
            mut run,
            mut parts,
            body,
            chain,
            calls,
            ..
        } = self;
        let mut pending: futures_util::stream::FuturesUnordered<_> =
            calls.into_iter().map(|c| c.send()).collect();
        loop {
            let verdict = match pending.next().await {
                Some(answer) => run.answer(answer, &mut parts),
                None => run.stalled(&mut parts),
            };
            match verdict {
                Verdict::Continue => break,
                Verdict::Respond(response) => return Err(Box::new(response)),
                Verdict::Wait(more) => pending.extend(more.into_iter().map(|c| c.send())),
            }
        }
        Ok(finish_request(run, parts, body, &chain))
    }
}

/// The request side of the chain up to the first filter that waits.
pub fn begin_request(
    set: &ChainSet,
    request: Request<ProxyBody>,
    layer: &FiltersLayer,
) -> Result<Filtered, Box<Response<ProxyBody>>> {
    let Some(chain) = chain_for(set, &request)? else {
        return Ok(Filtered::Ready((request, None)));
    };
    let grpc = is_grpc(request.headers());
    let props = Arc::new(props_of(&request, layer));
    let mut run = Run::start(&chain, set, props, grpc)?;
    run.trace = request
        .extensions()
        .get::<crate::trace::RequestSpan>()
        .cloned();
    let (mut parts, body) = request.into_parts();
    let eos = body.is_end_stream();
    match run.request_headers(&mut parts, eos) {
        Verdict::Continue => Ok(Filtered::Ready(finish_request(run, parts, body, &chain))),
        Verdict::Respond(response) => Err(Box::new(response)),
        Verdict::Wait(calls) => Ok(Filtered::Waiting(Box::new(Waiting {
            run,
            parts,
            body,
            chain,
            calls,
            grpc,
        }))),
    }
}

/// The request once its head went through the chain: its body wrapped
/// when filters want it.
fn finish_request(
    mut run: Run,
    mut parts: http::request::Parts,
    body: ProxyBody,
    chain: &Chain,
) -> Forward {
    let eos = body.is_end_stream();
    let wrap = !eos && (chain.caps.request_body || chain.caps.request_trailers);
    if chain.caps.response_headers || chain.caps.response_body || chain.caps.response_trailers {
        run.remember_request_headers(&parts.headers);
    }
    let run = Arc::new(Mutex::new(run));
    let body = if wrap {
        if chain.caps.request_body {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        FilteredBody::new(body, run.clone(), Dir::Request).boxed_unsync()
    } else {
        body
    };
    (Request::from_parts(parts, body), Some(run))
}

/// Runs the response side of the chain.
pub fn filter_response(run: Arc<Mutex<Run>>, response: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let eos = body.is_end_stream();
    let (verdict, body_callbacks) = match run.lock() {
        Ok(mut guard) => (
            guard.response_headers(&mut parts, eos),
            guard.wants(Dir::Response),
        ),
        // A panic poisoned the run: its filters cannot be trusted to have
        // run. Closed filters fail closed; open ones are skipped.
        Err(poisoned) => match poisoned.get_ref().lost() {
            Some(response) => return response,
            None => (Verdict::Continue, false),
        },
    };
    if let Verdict::Respond(local) = verdict {
        return local;
    }
    let body = if !eos && body_callbacks {
        parts.headers.remove(header::CONTENT_LENGTH);
        FilteredBody::new(body, run, Dir::Response).boxed_unsync()
    } else {
        body
    };
    Response::from_parts(parts, body)
}

impl<S> Service<Request<ProxyBody>> for Filters<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future =
        futures_util::future::Either<S::Future, BoxFuture<Result<Response<ProxyBody>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        use futures_util::future::Either;
        let Some(host) = &self.layer.host else {
            return Either::Left(self.inner.call(request));
        };
        let set = host.current();
        if crate::route::matched(request.extensions()).is_none_or(|r| r.filters.is_none()) {
            return Either::Left(self.inner.call(request));
        }
        let (request, run) = match begin_request(&set, request, &self.layer) {
            Ok(Filtered::Ready(pair)) => pair,
            Ok(Filtered::Waiting(waiting)) => {
                // A filter waits on its calls: the rest of the request side,
                // then the app, in one future.
                use futures_util::FutureExt;
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let future = waiting.resume().then(move |resumed| match resumed {
                    Ok((request, run)) => {
                        futures_util::future::Either::Left(inner.call(request).map(move |result| {
                            result.map(|response| match run {
                                Some(run) => filter_response(run, response),
                                None => response,
                            })
                        }))
                    }
                    Err(response) => {
                        futures_util::future::Either::Right(std::future::ready(Ok(*response)))
                    }
                });
                return Either::Right(Box::pin(future));
            }
            Err(response) => return Either::Right(Box::pin(std::future::ready(Ok(*response)))),
        };
        // A combinator, not an async block: the future stays `Send`
        // without higher-ranked trouble over the body's error type.
        use futures_util::FutureExt;
        let future = self.inner.call(request).map(move |result| {
            result.map(|response| match run {
                Some(run) => filter_response(run, response),
                None => response,
            })
        });
        Either::Right(Box::pin(future))
    }
}

/// A body passed through a chain's body and trailer callbacks, with the
/// host buffering while a filter paused.
pub struct FilteredBody {
    inner: ProxyBody,
    run: Arc<Mutex<Run>>,
    dir: Dir,
    out: VecDeque<Frame<Bytes>>,
    eos_sent: bool,
    done: bool,
}

impl FilteredBody {
    pub fn new(inner: ProxyBody, run: Arc<Mutex<Run>>, dir: Dir) -> FilteredBody {
        FilteredBody {
            inner,
            run,
            dir,
            out: VecDeque::new(),
            eos_sent: false,
            done: false,
        }
    }

    fn chunk(&mut self, data: Bytes, eos: bool) -> Result<(), BoxError> {
        let mut run = self.run.lock().map_err(|_| "filter state poisoned")?;
        if eos {
            self.eos_sent = true;
        }
        if let Some(bytes) = run.body(self.dir, data, eos)?
            && !bytes.is_empty()
        {
            self.out.push_back(Frame::data(bytes));
        }
        Ok(())
    }
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = this.inner.is_end_stream();
                        if let Err(e) = this.chunk(data, eos) {
                            this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Err(frame) => {
                        let Ok(mut trailers) = frame.into_trailers() else {
                            continue;
                        };
                        let paused = this
                            .run
                            .lock()
                            .map(|r| r.has_paused(this.dir))
                            .unwrap_or(false);
                        if paused
                            && !this.eos_sent
                            && let Err(e) = this.chunk(Bytes::new(), true)
                        {
                            this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                        this.eos_sent = true;
                        let result = match this.run.lock() {
                            Ok(mut run) => run.trailers(this.dir, &mut trailers),
                            Err(_) => Err("filter state poisoned".into()),
                        };
                        if let Err(e) = result {
                            this.done = true;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                        this.out.push_back(Frame::trailers(trailers));
                    }
                },
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    if !this.eos_sent
                        && let Err(e) = this.chunk(Bytes::new(), true)
                    {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty()
    }
}
