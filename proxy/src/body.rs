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

/// A request body went past `limits.maxBodyBytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Counts the data bytes of `inner` into `counter`, and fails the stream
/// once more than `limit` bytes have passed.
pub struct Metered<B> {
    inner: B,
    counter: Counter,
    limit: Option<u64>,
    seen: u64,
}

impl<B> Metered<B> {
    pub fn new(inner: B, counter: Counter, limit: Option<u64>) -> Metered<B> {
        Metered {
            inner,
            counter,
            limit,
            seen: 0,
        }
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
                    let n = data.len() as u64;
                    this.seen += n;
                    this.counter.inc_by(n);
                    if let Some(limit) = this.limit
                        && this.seen > limit
                    {
                        return Poll::Ready(Some(Err(BodyTooLarge { limit }.into())));
                    }
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

    #[tokio::test]
    async fn counts_and_caps() {
        let counter = Counter::default();
        let body = Metered::new(
            Full::new(Bytes::from_static(b"hello")),
            counter.clone(),
            None,
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(counter.get(), 5);

        let body = Metered::new(
            Full::new(Bytes::from_static(b"hello")),
            counter.clone(),
            Some(4),
        );
        let err = body.collect().await.unwrap_err();
        assert!(err.is::<BodyTooLarge>(), "{err}");
    }
}
