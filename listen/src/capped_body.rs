//! A request body capped at a limit that, once past it, reads on and throws
//! away what the client is still sending (up to as much again) before it
//! reports [`TooLarge`], so the 413 the server then answers reaches the
//! client.
//!
//! Answering at once and dropping the unread body made HTTP/1.1 clients
//! that were still writing fail with a broken pipe, and made h2 send
//! RST_STREAM while the client was uploading: curl reported "Stream error in
//! the HTTP/2 framing layer" and never saw the 413. nginx's lingering close
//! is the same idea. A body that goes on past twice the limit is cut off
//! there: its client gets the reset, not the answer.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::body::{Body, Buf, Frame, SizeHint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body went past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct TooLarge {
    pub limit: usize,
}

/// `inner`, yielding at most `limit` bytes of data; see the module.
pub struct CappedBody<B> {
    inner: B,
    limit: usize,
    seen: usize,
    over: bool,
    done: bool,
}

impl<B> CappedBody<B> {
    pub fn new(inner: B, limit: usize) -> CappedBody<B> {
        CappedBody {
            inner,
            limit,
            seen: 0,
            over: false,
            done: false,
        }
    }

    /// How far past the limit the body is read and thrown away.
    fn drain(&self) -> usize {
        self.limit
    }

    /// Whether a body that declares `length` bytes is worth reading at all:
    /// past the limit and what is drained, it is refused before any read.
    pub fn drainable(length: u64, limit: usize) -> bool {
        length <= (limit as u64).saturating_mul(2)
    }
}

impl<B> Body for CappedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    if this.over {
                        this.done = true;
                        return Poll::Ready(Some(Err(TooLarge { limit: this.limit }.into())));
                    }
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Some(Ok(frame)) => {
                    this.seen = this
                        .seen
                        .saturating_add(frame.data_ref().map_or(0, |d| d.remaining()));
                    if !this.over && this.seen <= this.limit {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    // Past the limit: thrown away, and on to the next frame.
                    this.over = true;
                    if this.seen > this.limit.saturating_add(this.drain()) {
                        this.done = true;
                        return Poll::Ready(Some(Err(TooLarge { limit: this.limit }.into())));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (!self.over && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = SizeHint::new();
        if let Some(upper) = self.inner.size_hint().upper() {
            hint.set_upper(upper.min(self.limit as u64));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// A body of `chunks`, each a data frame.
    struct Chunks(Vec<Vec<u8>>);

    impl Body for Chunks {
        type Data = std::io::Cursor<Vec<u8>>;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Infallible>>> {
            let this = self.get_mut();
            if this.0.is_empty() {
                return Poll::Ready(None);
            }
            let chunk = this.0.remove(0);
            Poll::Ready(Some(Ok(Frame::data(std::io::Cursor::new(chunk)))))
        }
    }

    /// Every frame: Ok(bytes) or Err(message); and how many chunks the
    /// inner body still had.
    fn read_all(limit: usize, chunks: &[usize]) -> (Vec<Result<usize, String>>, usize) {
        let mut body = CappedBody::new(
            Chunks(chunks.iter().map(|n| vec![b'a'; *n]).collect()),
            limit,
        );
        let mut out = Vec::new();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            let polled = Pin::new(&mut body).poll_frame(&mut cx);
            match polled {
                Poll::Ready(None) => break,
                Poll::Ready(Some(Ok(f))) => out.push(Ok(f.into_data().unwrap().remaining())),
                Poll::Ready(Some(Err(e))) => out.push(Err(e.to_string())),
                Poll::Pending => unreachable!(),
            }
        }
        (out, body.inner.0.len())
    }

    #[test]
    fn under_the_limit_everything_passes() {
        let (frames, left) = read_all(10, &[4, 6]);
        assert_eq!(frames, [Ok(4), Ok(6)]);
        assert_eq!(left, 0);
    }

    #[test]
    fn past_the_limit_the_rest_is_read_then_refused() {
        let (frames, left) = read_all(10, &[4, 4, 4, 4]);
        assert_eq!(
            frames,
            [
                Ok(4),
                Ok(4),
                Err("request body exceeds the limit of 10 bytes".to_owned())
            ]
        );
        // Read to the end: the client finished sending and gets the answer.
        assert_eq!(left, 0);
    }

    #[test]
    fn past_twice_the_limit_it_is_cut_off() {
        let (frames, left) = read_all(10, &[8, 8, 8, 8, 8]);
        assert_eq!(
            frames,
            [
                Ok(8),
                Err("request body exceeds the limit of 10 bytes".to_owned())
            ]
        );
        assert_eq!(left, 2, "what lies past twice the limit is not read");
        assert!(CappedBody::<Chunks>::drainable(20, 10));
        assert!(!CappedBody::<Chunks>::drainable(21, 10));
    }
}
