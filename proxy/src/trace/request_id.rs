//! `x-request-id`: kept when the client sent one, added (a random UUID)
//! when not, so the app, the access log and the trace share one ID.

use http::{HeaderMap, HeaderValue};

pub const HEADER: &str = "x-request-id";

/// The request's ID, added to `headers` first when absent (or not text).
/// A `HeaderValue` shares its bytes, so the response and the access log
/// take it without copying.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(HEADER)
        && !id.is_empty()
        && id.to_str().is_ok()
    {
        return id.clone();
    }
    let id = new_id();
    headers.insert(HEADER, id.clone());
    id
}

/// A random (version 4) UUID, from the thread's CSPRNG: no system call
/// per request (ring's `SystemRandom` made one each time), and one
/// allocation.
fn new_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[usize::from(x >> 4)];
        out[j + 1] = HEX[usize::from(x & 0x0f)];
        j += 2;
    }
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_id_is_kept_and_a_missing_one_added() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("abc-1"));
        assert_eq!(ensure(&mut headers), "abc-1");
        assert_eq!(headers[HEADER], "abc-1");

        let mut headers = HeaderMap::new();
        let id = ensure(&mut headers);
        assert_eq!(headers[HEADER], id);
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert!(
            matches!(&id[19..20], "8" | "9" | "a" | "b"),
            "variant: {id}"
        );
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_ne!(ensure(&mut HeaderMap::new()), id);
    }
}
