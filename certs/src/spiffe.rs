//! SPIFFE identities: reading a peer's ID from its certificate and matching
//! it against allow-list patterns such as `spiffe://cluster.local/ns/flyte/sa/*`.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The SPIFFE ID (the first `spiffe://` URI SAN) of a certificate.
pub fn peer_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
        _ => None,
    })
}

/// An allow-list entry: a SPIFFE ID where a `*` path segment matches any
/// one segment, and a trailing `/**` any number of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern(String);

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error)]
#[error("SPIFFE ID pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

impl IdPattern {
    pub fn parse(pattern: &str) -> Result<IdPattern, PatternError> {
        let fail = |reason| PatternError {
            pattern: pattern.to_owned(),
            reason,
        };
        let rest = pattern
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail("must start with spiffe://"))?;
        let (domain, _) = rest.split_once('/').unwrap_or((rest, ""));
        if domain.is_empty() || domain.contains('*') {
            return Err(fail("needs a literal trust domain"));
        }
        let segments: Vec<&str> = rest.split('/').collect();
        if let Some(pos) = segments.iter().position(|s| *s == "**")
            && pos != segments.len() - 1
        {
            return Err(fail("** may only be the last segment"));
        }
        if segments
            .iter()
            .any(|s| s.contains('*') && *s != "*" && *s != "**")
        {
            return Err(fail("* must be a whole path segment"));
        }
        Ok(IdPattern(pattern.to_owned()))
    }

    pub fn matches(&self, id: &str) -> bool {
        let (Some(pattern), Some(id)) = (
            self.0.strip_prefix("spiffe://"),
            id.strip_prefix("spiffe://"),
        ) else {
            return false;
        };
        let mut want = pattern.split('/');
        let mut have = id.split('/');
        loop {
            match (want.next(), have.next()) {
                (Some("**"), Some(s)) => return !s.is_empty(),
                (Some("*"), Some(s)) if !s.is_empty() => {}
                (Some(w), Some(h)) if w == h => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> IdPattern {
        IdPattern::parse(p).unwrap()
    }

    #[test]
    fn star_matches_one_segment() {
        let p = pattern("spiffe://cluster.local/ns/flyte/sa/*");
        assert!(p.matches("spiffe://cluster.local/ns/flyte/sa/flyteadmin"));
        assert!(!p.matches("spiffe://cluster.local/ns/flyte/sa/"));
        assert!(!p.matches("spiffe://cluster.local/ns/flyte/sa/a/b"));
        assert!(!p.matches("spiffe://cluster.local/ns/other/sa/flyteadmin"));
        assert!(!p.matches("spiffe://evil.local/ns/flyte/sa/flyteadmin"));
        assert!(!p.matches("https://cluster.local/ns/flyte/sa/x"));
    }

    #[test]
    fn exact_and_double_star() {
        let exact = pattern("spiffe://cluster.local/ns/a/sa/b");
        assert!(exact.matches("spiffe://cluster.local/ns/a/sa/b"));
        assert!(!exact.matches("spiffe://cluster.local/ns/a/sa/bb"));
        let any = pattern("spiffe://cluster.local/**");
        assert!(any.matches("spiffe://cluster.local/ns/a/sa/b"));
        assert!(!any.matches("spiffe://cluster.localx/ns/a"));
        assert!(!any.matches("spiffe://cluster.local"));
    }

    #[test]
    fn refuses_malformed_patterns() {
        for bad in [
            "cluster.local/ns/a",
            "spiffe://*/ns/a",
            "spiffe:///ns/a",
            "spiffe://d/ns/fly*",
            "spiffe://d/**/sa/x",
        ] {
            assert!(IdPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
