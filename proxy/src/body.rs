//! Bodies as they pass through: streamed frame by frame (data and
//! trailers alike), counted, and optionally capped. Nothing is buffered.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tower::BoxError;

/// The body type every layer of the proxy answers with.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// Counts the data bytes of `inner` into `counter`. A request body's cap
/// (`limits.maxBodyBytes`) is `tollgate_listen::capped_body::CappedBody`
/// inside it, which reads on past the cap before it fails, so the client
/// that is still sending gets the 413.
pub struct Metered<B> {
    inner: B,
    counter: Counter,
}

impl<B> Metered<B> {
    pub fn new(inner: B, counter: Counter) -> Metered<B> {
        Metered { inner, counter }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.inc_by(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_listen::capped_body::{CappedBody, TooLarge};

    #[tokio::test]
    async fn counts_and_caps() {
        let counter = Counter::default();
        let body = Metered::new(Full::new(Bytes::from_static(b"hello")), counter.clone());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(counter.get(), 5);

        let body = Metered::new(
            CappedBody::new(Full::new(Bytes::from_static(b"hello")), 4),
            counter.clone(),
        );
        let err = body.collect().await.unwrap_err();
        assert!(err.is::<TooLarge>(), "{err}");
    }
}
