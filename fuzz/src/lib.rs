//! What the fuzz targets share: a reader that turns fuzz bytes into
//! structured choices, and the fixed JWT setup (keys, providers, token
//! signing) of `jwt_token` and `request_head`, and the request-head
//! parser of `request_head` and `request_path`.

pub mod jwt;

/// Reads structured values off the front of a fuzz input. Every read
/// succeeds: past the end it yields zeros, so any input decodes.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        b[..].copy_from_slice(&pad::<2>(self.bytes(2)));
        u16::from_le_bytes(b)
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(pad::<4>(self.bytes(4)))
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(pad::<8>(self.bytes(8)))
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

fn pad<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

/// A current-thread tokio runtime for the async entry points (JWT
/// verification, the tower layers).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread tokio runtime")
}

/// The request hyper's HTTP/1 server would hand the service, if it would:
/// the head parsed by httparse, then into `http` types.
pub fn parse_head(data: &[u8]) -> Option<http::Request<()>> {
    use http::header::{HeaderName, HeaderValue};
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut headers);
    if !matches!(head.parse(data), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let mut request = http::Request::builder()
        .method(http::Method::from_bytes(head.method?.as_bytes()).ok()?)
        .uri(head.path?.parse::<http::Uri>().ok()?)
        .version(match head.version? {
            0 => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        })
        .body(())
        .ok()?;
    for h in head.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        request.headers_mut().append(name, value);
    }
    Some(request)
}
