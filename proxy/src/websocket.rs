//! The WebSocket frame cap on upgraded connections.
//!
//! An upgraded connection is spliced as bytes; the proxy never buffers or
//! reassembles frames. [`FrameCap`] reads the client's side of a WebSocket
//! splice through a running parse of frame headers (tungstenite's
//! `FrameHeader::parse`) and skips over payloads. The first frame whose
//! declared payload is larger than `limits.maxWebSocketFrameBytes` (or whose
//! header does not parse) is refused: none of it is passed on (apart from
//! header bytes that arrived in an earlier read than the length field), the
//! read side fails with [`Refused`], and the splice answers the client with
//! a close frame — 1009 "message too big" or 1002 "protocol error" — and
//! closes both connections. The app never receives the payload.

use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// Largest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Why a client's frame was refused; the error inside the `io::Error`
/// that the capped read side returns.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("websocket frame of {len} bytes exceeds limits.maxWebSocketFrameBytes ({cap})")]
    TooLarge { len: u64, cap: u64 },
    #[error("malformed websocket frame header: {0}")]
    Malformed(String),
}

impl Refused {
    /// The close frame the client is sent, serialized (unmasked, as a
    /// server sends it).
    pub fn close_frame(&self) -> Vec<u8> {
        let (code, reason) = match self {
            Refused::TooLarge { .. } => (CloseCode::Size, "frame too large"),
            Refused::Malformed(_) => (CloseCode::Protocol, "malformed frame"),
        };
        let mut out = Vec::with_capacity(2 + 2 + reason.len());
        let frame = Frame::close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        // Writing to a Vec cannot fail.
        let _ = frame.format(&mut out);
        out
    }

    /// The refusal carried by an error from a capped splice, if it is one.
    pub fn from_io(error: &io::Error) -> Option<&Refused> {
        error.get_ref().and_then(|e| e.downcast_ref::<Refused>())
    }
}

enum State {
    /// Collecting a frame header: its first `len` bytes so far.
    Header { buf: [u8; MAX_HEADER], len: usize },
    /// Inside a payload of this many more bytes.
    Payload { remaining: u64 },
    /// A frame was refused; every later read fails.
    Refused(Refused),
}

impl State {
    /// Before the first byte of a frame's header.
    const NEXT_FRAME: State = State::Header {
        buf: [0; MAX_HEADER],
        len: 0,
    };
}

/// The client's side of a splice, read through the frame cap when it is a
/// WebSocket and a cap is set (`cap: None` passes everything). Writes pass
/// straight through.
pub struct FrameCap<T> {
    inner: T,
    cap: Option<u64>,
    state: State,
}

impl<T> FrameCap<T> {
    pub fn new(inner: T, cap: Option<u64>) -> FrameCap<T> {
        FrameCap {
            inner,
            cap,
            state: State::NEXT_FRAME,
        }
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Follows the frames through `bytes`, newly read. Returns the offset
    /// of the first byte of a refused frame's header within `bytes` (0 if
    /// that header began in an earlier read), or `None` if all may pass.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let cap = self.cap?;
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.state {
                State::Refused(_) => return Some(0),
                State::Payload { remaining } => {
                    let skip = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - at);
                    at += skip;
                    *remaining -= skip as u64;
                    if *remaining == 0 {
                        self.state = State::NEXT_FRAME;
                    }
                }
                State::Header { buf, len } => {
                    // A header begun in an earlier read has passed in part.
                    let frame_start = if *len == 0 { at } else { 0 };
                    let had = *len;
                    let take = (MAX_HEADER - had).min(bytes.len() - at);
                    buf[had..had + take].copy_from_slice(&bytes[at..at + take]);
                    let mut cursor = Cursor::new(&buf[..had + take]);
                    match FrameHeader::parse(&mut cursor) {
                        Ok(None) => {
                            *len = had + take;
                            at += take;
                        }
                        Ok(Some((_, payload))) => {
                            // Header bytes of this read that the header used.
                            let used = usize::try_from(cursor.position()).unwrap_or(MAX_HEADER);
                            at += used - had;
                            if payload > cap {
                                self.state =
                                    State::Refused(Refused::TooLarge { len: payload, cap });
                                return Some(frame_start);
                            }
                            self.state = if payload == 0 {
                                State::NEXT_FRAME
                            } else {
                                State::Payload { remaining: payload }
                            };
                        }
                        Err(e) => {
                            self.state = State::Refused(Refused::Malformed(e.to_string()));
                            return Some(frame_start);
                        }
                    }
                }
            }
        }
        None
    }

    fn refusal(&self) -> Option<io::Error> {
        match &self.state {
            State::Refused(r) => Some(io::Error::new(io::ErrorKind::InvalidData, r.clone())),
            _ => None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameCap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.refusal() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let Some(cut) = this.scan(&buf.filled()[before..]) else {
            return Poll::Ready(Ok(()));
        };
        buf.set_filled(before + cut);
        if cut == 0 {
            // Nothing of this read may pass; an empty Ok would read as EOF.
            return Poll::Ready(Err(this.refusal().unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "websocket frame refused")
            })));
        }
        // The bytes before the refused frame pass; the next read fails.
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameCap<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A masked client frame with a payload of `len` bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut header = FrameHeader {
            mask: Some([1, 2, 3, 4]),
            ..FrameHeader::default()
        };
        header.opcode = tungstenite::protocol::frame::coding::OpCode::Data(
            tungstenite::protocol::frame::coding::Data::Binary,
        );
        let mut out = Vec::new();
        header.format(len as u64, &mut out).unwrap();
        out.extend(std::iter::repeat_n(7u8, len));
        out
    }

    /// Reads everything `input` yields through the cap, `chunk` bytes at a
    /// time: what passed, and the error that ended it, if any.
    async fn through(input: Vec<u8>, cap: u64, chunk: usize) -> (Vec<u8>, Option<Refused>) {
        let (mut tx, rx) = tokio::io::duplex(chunk);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(chunk) {
                if tx.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let mut capped = FrameCap::new(rx, Some(cap));
        let mut passed = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            match capped.read(&mut buf).await {
                Ok(0) => return (passed, None),
                Ok(n) => passed.extend_from_slice(&buf[..n]),
                Err(e) => return (passed, Refused::from_io(&e).cloned()),
            }
        }
    }

    #[tokio::test]
    async fn frames_within_the_cap_pass_unchanged_at_any_read_size() {
        let mut input = frame(0);
        input.extend(frame(125));
        input.extend(frame(126));
        input.extend(frame(70_000));
        for chunk in [1, 3, 13, 64, 100_000] {
            let (passed, refused) = through(input.clone(), 70_000, chunk).await;
            assert_eq!(refused, None, "chunk {chunk}");
            assert_eq!(passed, input, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn a_frame_over_the_cap_is_refused_before_its_payload() {
        let ok = frame(100);
        let mut input = ok.clone();
        input.extend(frame(1_000));
        for chunk in [1, 5, 4096] {
            let (passed, refused) = through(input.clone(), 999, chunk).await;
            assert_eq!(
                refused,
                Some(Refused::TooLarge {
                    len: 1_000,
                    cap: 999
                }),
                "chunk {chunk}"
            );
            // The earlier frame passed whole; of the refused one, only
            // header bytes that arrived in reads before the header was whole.
            assert!(passed.starts_with(&ok), "chunk {chunk}");
            assert!(
                passed.len() < ok.len() + 8,
                "chunk {chunk}: {}",
                passed.len()
            );
            if chunk > 8 {
                assert_eq!(passed, ok, "chunk {chunk}");
            }
        }
    }

    #[tokio::test]
    async fn a_reserved_opcode_is_malformed() {
        let mut input = frame(10);
        input.extend([0x83, 0x81, 1, 2, 3, 4, 0]);
        let (passed, refused) = through(input, u64::MAX, 64).await;
        assert_eq!(passed, frame(10));
        assert!(
            matches!(refused, Some(Refused::Malformed(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn close_frames_carry_the_code() {
        let f = Refused::TooLarge { len: 2, cap: 1 }.close_frame();
        assert_eq!(f[0], 0x88, "FIN + close");
        assert_eq!(&f[2..4], &1009u16.to_be_bytes());
        let f = Refused::Malformed("x".into()).close_frame();
        assert_eq!(&f[2..4], &1002u16.to_be_bytes());
    }
}
