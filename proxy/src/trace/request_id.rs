//! `x-request-id`: kept when the client sent one, added (a random UUID)
//! when not, so the app, the access log and the trace share one ID.

use http::{HeaderMap, HeaderValue};

pub const HEADER: &str = "x-request-id";

/// The request's ID, added to `headers` first when absent (or not text).
pub fn ensure(headers: &mut HeaderMap) -> String {
    if let Some(id) = headers.get(HEADER).and_then(|v| v.to_str().ok())
        && !id.is_empty()
    {
        return id.to_owned();
    }
    let id = new_id();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(HEADER, value);
    }
    id
}

/// A version 4 UUID (RFC 9562) from the system's random source.
fn new_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    // The system random source does not fail on Linux once booted; a
    // failure leaves zeros, still a usable (if not unique) ID.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
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
        assert_eq!(headers[HEADER], id.as_str());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert_ne!(ensure(&mut HeaderMap::new()), id);
    }
}
