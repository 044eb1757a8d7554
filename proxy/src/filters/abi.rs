//! The proxy-wasm ABI 0.2.1 types and the map serialization, as the spec
//! (`proxy-wasm/spec`, `abi-versions/v0.2.1`) defines them.

/// `proxy_status_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// `proxy_action_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    /// Anything but `PAUSE` (1) continues, as Envoy reads it.
    pub fn from_raw(raw: i32) -> Action {
        if raw == 1 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// `proxy_log_level_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_raw(raw: i32) -> Option<LogLevel> {
        Some(match raw {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// `proxy_buffer_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferType {
    HttpRequestBody,
    HttpResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcCallMessage,
    VmConfiguration,
    PluginConfiguration,
    ForeignFunctionArguments,
}

impl BufferType {
    pub fn from_raw(raw: i32) -> Option<BufferType> {
        Some(match raw {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcCallMessage,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::ForeignFunctionArguments,
            _ => return None,
        })
    }
}

/// `proxy_map_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub fn from_raw(raw: i32) -> Option<MapType> {
        Some(match raw {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// `proxy_stream_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamType {
    HttpRequest,
    HttpResponse,
    Downstream,
    Upstream,
}

impl StreamType {
    pub fn from_raw(raw: i32) -> Option<StreamType> {
        Some(match raw {
            0 => StreamType::HttpRequest,
            1 => StreamType::HttpResponse,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

/// `proxy_metric_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub fn from_raw(raw: i32) -> Option<MetricType> {
        Some(match raw {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return None,
        })
    }
}

/// WASI `errno` values the host returns.
pub mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOSYS: i32 = 52;
    pub const NOTSUP: i32 = 58;
}

/// The ABI versions a module may declare (by exporting a marker function
/// of that name). 0.2.0 modules are accepted as Envoy does: 0.2.1 only
/// added `proxy_get_log_level`.
pub const ABI_MARKERS: [&str; 2] = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];

/// Serializes pairs as the spec's map format: a little-endian u32 count,
/// then each pair's u32 key and value lengths, then each key and value
/// followed by a NUL byte.
pub fn serialize_map<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let data: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + 8 * pairs.len() + data);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses the spec's map format. An empty input and a single `0x00` byte
/// are the empty map. `None` when the bytes do not follow the format
/// (lengths past the end, missing NUL terminators).
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() || bytes == [0] {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    let sizes_end = count.checked_mul(8)?.checked_add(4)?;
    if sizes_end > bytes.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut at = sizes_end;
    for i in 0..count {
        let key_len = word(4 + i * 8)?;
        let value_len = word(8 + i * 8)?;
        let key_end = at.checked_add(key_len)?;
        let key = bytes.get(at..key_end)?;
        if bytes.get(key_end) != Some(&0) {
            return None;
        }
        let value_start = key_end + 1;
        let value_end = value_start.checked_add(value_len)?;
        let value = bytes.get(value_start..value_end)?;
        if bytes.get(value_end) != Some(&0) {
            return None;
        }
        at = value_end + 1;
        pairs.push((key, value));
    }
    Some(pairs)
}

/// Splits a property path as SDKs serialize it: segments joined by NUL
/// (a trailing NUL is tolerated).
pub fn split_property_path(path: &[u8]) -> Vec<&[u8]> {
    let path = path.strip_suffix(&[0]).unwrap_or(path);
    path.split(|b| *b == 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's example, `{{"a": "1"}, {"b": "22"}}`. (The spec lists
    /// the bytes of "1" and "22" as `0x49`, `0x50`: those are the decimal
    /// values 49 and 50, i.e. `0x31` and `0x32`; the count and lengths are
    /// 32-bit little-endian words.)
    const SPEC_EXAMPLE: &[u8] = &[
        0x02, 0, 0, 0, // count
        0x01, 0, 0, 0, 0x01, 0, 0, 0, // "a" → "1"
        0x01, 0, 0, 0, 0x02, 0, 0, 0, // "b" → "22"
        0x61, 0x00, 0x31, 0x00, 0x62, 0x00, 0x32, 0x32, 0x00,
    ];

    #[test]
    fn map_serialization_matches_the_spec_example() {
        let pairs: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b"b", b"22")];
        assert_eq!(serialize_map(&pairs), SPEC_EXAMPLE);
        let parsed = deserialize_map(SPEC_EXAMPLE).unwrap();
        assert_eq!(parsed, pairs.to_vec());
    }

    #[test]
    fn empty_maps_and_malformed_input() {
        assert_eq!(deserialize_map(&[]), Some(vec![]));
        assert_eq!(deserialize_map(&[0]), Some(vec![]));
        let empty: [(&str, &str); 0] = [];
        assert_eq!(serialize_map(&empty), vec![0, 0, 0, 0]);
        assert_eq!(deserialize_map(&[0, 0, 0, 0]), Some(vec![]));
        // Truncated, lengths past the end, missing NULs, huge counts.
        assert_eq!(
            deserialize_map(&SPEC_EXAMPLE[..SPEC_EXAMPLE.len() - 1]),
            None
        );
        let mut bad = SPEC_EXAMPLE.to_vec();
        bad[4] = 9; // the first key's length runs past the end
        assert_eq!(deserialize_map(&bad), None);
        let mut bad = SPEC_EXAMPLE.to_vec();
        bad[21] = b'x'; // the NUL after the first key
        assert_eq!(deserialize_map(&bad), None);
        assert_eq!(deserialize_map(&[0xff, 0xff, 0xff, 0xff, 1]), None);
    }

    #[test]
    fn property_paths() {
        assert_eq!(
            split_property_path(b"jwt\0claims\0team"),
            vec![&b"jwt"[..], b"claims", b"team"]
        );
        assert_eq!(
            split_property_path(b"request\0path\0"),
            vec![&b"request"[..], b"path"]
        );
    }

    #[test]
    fn status_codes_follow_the_spec() {
        assert_eq!(Status::InvalidMemoryAccess.code(), 6);
        assert_eq!(Status::Unimplemented.code(), 12);
        assert_eq!(Action::from_raw(1), Action::Pause);
        assert_eq!(Action::from_raw(0), Action::Continue);
    }
}
