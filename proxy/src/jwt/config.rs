//! The `jwt` section of `proxy.yaml`.
//!
//! ```yaml
//! jwt:
//!   providers:
//!     flyte:
//!       issuer: https://flyte.example.com
//!       audiences: [flyteadmin]
//!       jwks: {url: https://flyte.example.com/.well-known/jwks.json}   # or {file: /etc/jwks.json}
//!       algorithms: [RS256, ES256]
//!   tokenSources:                     # tried in order
//!     - {header: authorization, prefix: "Bearer "}
//!     - {header: flyte-authorization, prefix: "Bearer "}
//!     - {cookie: tollgate_token}
//!   claimsToHeaders: {sub: x-tollgate-sub, team: x-tollgate-team}
//! routes:                             # the one route table (route.rs)
//!   - {pathPrefix: /healthz}          # no `jwt`: bypass
//!   - {pathPrefix: /, jwt: {mode: required, providers: [flyte]}}
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtConfig {
    /// Token issuers, by a name routes refer to.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Where a token is looked for, in order; the first found is used.
    #[serde(default = "default_sources")]
    pub token_sources: Vec<TokenSource>,
    /// Verified claims forwarded to the app as request headers, claim →
    /// header. Incoming headers of these names are always removed first.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// The per-section table of earlier versions: refused at load, with
    /// the equivalent top-level `routes` in the message (`route::legacy`).
    #[serde(default)]
    pub routes: Vec<JwtRoute>,
    /// Tokens longer than this are refused unparsed.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens remembered (by hash, never past `exp`).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Where a browser without a token is sent to log in; absent: it
    /// gets the 401 an API client gets.
    #[serde(default)]
    pub browser_login: Option<BrowserLogin>,
}

/// A request with no token on a `required` route (or an expired one),
/// from a browser (`Accept` naming `text/html`, not an upgrade), gets a
/// 302 to `url` with the original URL in the query parameter
/// `redirectParam`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BrowserLogin {
    /// An absolute `https://` URL, or a path on the same host (`/oauth2/start`).
    pub url: String,
    #[serde(default = "default_redirect_param")]
    pub redirect_param: String,
}

fn default_redirect_param() -> String {
    "rd".into()
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            providers: BTreeMap::new(),
            token_sources: default_sources(),
            claims_to_headers: BTreeMap::new(),
            routes: Vec::new(),
            max_token_bytes: default_max_token_bytes(),
            cache_entries: default_cache_entries(),
            browser_login: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderConfig {
    /// The `iss` a token must carry.
    pub issuer: String,
    /// The token's `aud` must name one of these (empty: not checked).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Public keys, for the asymmetric algorithms.
    #[serde(default)]
    pub jwks: Option<JwksConfig>,
    /// A file holding the shared secret: only then are HS256/384/512 allowed.
    #[serde(default)]
    pub shared_secret_file: Option<PathBuf>,
    /// Accepted `alg`s. `none` never is.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// Claims that must be present (besides `exp`, always required).
    #[serde(default)]
    pub required_claims: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwksConfig {
    /// An HTTPS URL serving a JWK Set.
    #[serde(default)]
    pub url: Option<String>,
    /// Or a local file (re-read on refresh).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// PEM CAs to verify `url` with; default: the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_refresh")]
    pub refresh_interval_seconds: u64,
    /// A token with an unknown `kid` triggers a refetch, at most this often.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval_seconds: u64,
    /// After failed refreshes, the last good keys are used until they are
    /// this old; then tokens are refused until a fetch succeeds.
    #[serde(default = "default_max_staleness")]
    pub max_staleness_seconds: u64,
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout_seconds: u64,
}

/// Where a token may come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", untagged)]
pub enum TokenSource {
    Header {
        header: String,
        #[serde(default)]
        prefix: Option<String>,
    },
    Cookie {
        cookie: String,
    },
    Query {
        query: String,
    },
}

/// A `jwt.routes` entry of earlier versions (refused; see `route::legacy`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRoute {
    pub path_prefix: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub providers: Vec<String>,
}

/// A route's `jwt`: what it wants of a token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteJwt {
    #[serde(default)]
    pub mode: Mode,
    /// Providers whose tokens this route accepts; empty: all.
    #[serde(default)]
    pub providers: Vec<String>,
}

/// What a route does without a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No valid token → 401.
    #[default]
    Required,
    /// No token → forwarded without claims; a bad token → 401.
    Optional,
    /// Not looked at (health probes).
    Bypass,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Required => "required",
            Mode::Optional => "optional",
            Mode::Bypass => "bypass",
        }
    }
}

fn default_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header {
        header: "authorization".into(),
        prefix: Some("Bearer ".into()),
    }]
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256"].map(String::from).to_vec()
}
fn default_skew() -> u64 {
    60
}
fn default_refresh() -> u64 {
    300
}
fn default_min_refetch() -> u64 {
    10
}
fn default_max_staleness() -> u64 {
    24 * 3600
}
fn default_fetch_timeout() -> u64 {
    5
}

/// Parses an `alg` name; `none` and unknown names are errors.
pub fn algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("`none` is never accepted".into());
    }
    name.parse::<Algorithm>()
        .map_err(|_| format!("unknown algorithm {name:?}"))
}

pub fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl RouteJwt {
    /// Checks the route's providers against the `jwt` section; errors are
    /// `(path under the route's jwt, message)`.
    pub fn check(&self, jwt: Option<&JwtConfig>) -> Result<(), (String, String)> {
        let providers = jwt.map(|j| &j.providers);
        for (j, provider) in self.providers.iter().enumerate() {
            if !providers.is_some_and(|p| p.contains_key(provider)) {
                return Err((
                    format!("providers[{j}]"),
                    format!("no provider named {provider:?} in jwt.providers"),
                ));
            }
        }
        if self.mode != Mode::Bypass && providers.is_none_or(|p| p.is_empty()) {
            return Err((
                "mode".into(),
                "needs at least one provider in jwt.providers".into(),
            ));
        }
        Ok(())
    }
}

impl JwtConfig {
    /// Checks what serde cannot; errors are `(path under jwt, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let fail = |path: String, message: &str| Err((path, message.to_owned()));
        for (name, p) in &self.providers {
            let at = |field: &str| format!("providers.{name}.{field}");
            if p.issuer.is_empty() {
                return fail(at("issuer"), "must not be empty");
            }
            if p.algorithms.is_empty() {
                return fail(at("algorithms"), "name at least one algorithm");
            }
            for (i, a) in p.algorithms.iter().enumerate() {
                let alg = algorithm(a).map_err(|m| (at(&format!("algorithms[{i}]")), m))?;
                if is_hmac(alg) && p.shared_secret_file.is_none() {
                    return fail(
                        at(&format!("algorithms[{i}]")),
                        "HS* algorithms need sharedSecretFile",
                    );
                }
                if !is_hmac(alg) && p.jwks.is_none() {
                    return fail(at("jwks"), "asymmetric algorithms need a jwks url or file");
                }
            }
            if let Some(jwks) = &p.jwks {
                match (&jwks.url, &jwks.file) {
                    (Some(url), None) if url.starts_with("https://") => {}
                    (Some(_), None) => return fail(at("jwks.url"), "must be an https:// URL"),
                    (None, Some(_)) => {}
                    _ => return fail(at("jwks"), "set exactly one of url and file"),
                }
                if jwks.refresh_interval_seconds == 0 {
                    return fail(at("jwks.refreshIntervalSeconds"), "must be greater than 0");
                }
            }
        }
        if self.token_sources.is_empty() {
            return fail("tokenSources".into(), "name at least one source");
        }
        if let Some(login) = &self.browser_login {
            let url = login.url.as_str();
            let absolute = url.starts_with("https://") || url.starts_with("http://");
            if !(absolute || url.starts_with('/') && !url.starts_with("//"))
                || url.parse::<http::Uri>().is_err()
            {
                return fail(
                    "browserLogin.url".into(),
                    &format!("{url:?} is not an http(s) URL or an absolute path"),
                );
            }
            let param = login.redirect_param.as_str();
            if param.is_empty()
                || !param
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return fail(
                    "browserLogin.redirectParam".into(),
                    &format!("{param:?} is not a query parameter name (letters, digits, - _ .)"),
                );
            }
        }
        for (claim, header) in &self.claims_to_headers {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return fail(
                    format!("claimsToHeaders.{claim}"),
                    &format!("{header:?} is not a header name"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> JwtConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn refuses_none_hmac_without_secret_and_unknown_providers() {
        let base = "providers:\n  p:\n    issuer: i\n    jwks: {file: /j}\n";
        let err = |yaml: &str| parse(yaml).check().unwrap_err();
        assert_eq!(
            err(&format!("{base}    algorithms: [none]\n")).0,
            "providers.p.algorithms[0]"
        );
        let (path, msg) = err(&format!("{base}    algorithms: [HS256]\n"));
        assert_eq!(path, "providers.p.algorithms[0]");
        assert!(msg.contains("sharedSecretFile"), "{msg}");
        let route = RouteJwt {
            mode: Mode::Required,
            providers: vec!["q".into()],
        };
        assert_eq!(
            route.check(Some(&parse(base))).unwrap_err().0,
            "providers[0]"
        );
        let (path, _) = err("providers:\n  p: {issuer: i, jwks: {url: 'http://x'}}\n");
        assert_eq!(path, "providers.p.jwks.url");
        parse(base).check().unwrap();
    }

    #[test]
    fn token_sources_parse_by_shape() {
        let c = parse(
            "tokenSources:\n  - {header: flyte-authorization, prefix: 'Bearer '}\n  - {cookie: t}\n  - {query: access_token}\n",
        );
        assert_eq!(
            c.token_sources,
            vec![
                TokenSource::Header {
                    header: "flyte-authorization".into(),
                    prefix: Some("Bearer ".into())
                },
                TokenSource::Cookie { cookie: "t".into() },
                TokenSource::Query {
                    query: "access_token".into()
                },
            ]
        );
    }
}
