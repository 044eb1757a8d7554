//! What the fuzz targets share: a reader that turns fuzz bytes into
//! structured choices, and the fixed JWT setup (keys, providers, token
//! signing) of `jwt_token` and `request_head`.

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
