//! Verifying a token against the configured providers, with a cache of
//! verified tokens.
//!
//! Order of checks: size cap → header parses → `alg` is not `none` and is
//! one the provider allows (HS* only with a shared secret, so an RSA public
//! key can never be used as an HMAC secret) → provider chosen by the
//! unverified `iss` → key by `kid` → signature, `exp`, `nbf`, `iss`, `aud`
//! and required claims (jsonwebtoken, ring). Each failure has its own
//! description, returned to the client in `WWW-Authenticate`.
//!
//! The cache of verified tokens (by SHA-256, never past `exp`) remembers
//! the provider and the key that verified each token: its `kid`,
//! fingerprint and JWKS generation. A hit is accepted only while that key
//! is still in the provider's current key set and the set is within
//! `maxStalenessSeconds`; otherwise the entry is dropped and the token is
//! verified afresh, which refuses it as `unknown signing key` or `signing
//! keys unavailable` as an uncached token would be. Before this, a cached
//! token outlived a key removed from the JWKS (revoked after a leak), and
//! keys past their staleness bound, until its own `exp`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::config::{JwtConfig, ProviderConfig, algorithm, is_hmac};
use super::jwks::{Jwks, KeyError};

/// The claims of a verified token: the request extension later layers
/// (rate limiting, filters) and the claim headers read.
#[derive(Debug, Clone)]
pub struct Verified {
    pub provider: String,
    pub claims: Map<String, Value>,
    /// `exp`, Unix seconds.
    pub expires: u64,
}

impl Verified {
    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }

    /// A claim as header text: strings as they are, arrays of strings
    /// joined by commas, anything else as JSON; a `null` claim is none.
    pub fn claim_text(&self, claim: &str) -> Option<String> {
        Some(match self.claims.get(claim)? {
            Value::Null => return None,
            Value::String(s) => s.clone(),
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        })
    }
}

/// Why a token was refused; `description()` is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no token")]
    Missing,
    #[error("token exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("alg none is not accepted")]
    AlgNone,
    #[error("algorithm {alg} is not allowed")]
    AlgorithmNotAllowed { alg: String },
    #[error("unknown issuer {0:?}")]
    UnknownIssuer(String),
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("missing claim {0}")]
    MissingClaim(String),
    #[error("issuer not accepted on this route")]
    ProviderNotAccepted,
}

impl JwtError {
    /// The `result` label of `tollgate_jwt_validations_total`.
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::Missing => "missing",
            JwtError::TooLarge { .. } => "too_large",
            JwtError::Malformed(_) => "malformed",
            JwtError::AlgNone | JwtError::AlgorithmNotAllowed { .. } => "bad_algorithm",
            JwtError::UnknownIssuer(_) | JwtError::WrongIssuer => "wrong_issuer",
            JwtError::UnknownKey(_) => "unknown_key",
            JwtError::KeysUnavailable(_) => "keys_unavailable",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::MissingClaim(_) => "missing_claim",
            JwtError::ProviderNotAccepted => "provider_not_accepted",
        }
    }
}

/// The JWKS key a cached token was verified with.
#[derive(Debug, Clone)]
struct KeyStamp {
    /// Index into `Verifier::providers`.
    provider: usize,
    /// Named in the log when the entry is dropped; the fingerprint is
    /// what is compared.
    kid: Option<String>,
    fingerprint: [u8; 32],
    generation: u64,
}

/// A cache entry: the claims, and the key that verified them (`None`
/// for a shared secret, which cannot change while the process runs).
#[derive(Clone)]
struct Cached {
    verified: Arc<Verified>,
    key: Option<KeyStamp>,
}

struct Provider {
    name: String,
    config: ProviderConfig,
    algorithms: Vec<Algorithm>,
    secret: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
}

/// All providers and the verified-token cache.
pub struct Verifier {
    providers: Vec<Provider>,
    max_token_bytes: usize,
    cache: Option<quick_cache::sync::Cache<[u8; 32], Cached>>,
    /// Tokens accepted from the cache (`tollgate_jwt_cache_hits_total`).
    cache_hits: prometheus_client::metrics::counter::Counter,
}

impl Verifier {
    /// Builds the providers (reading shared secrets; JWKS fetching is
    /// started separately with [`Verifier::jwks`]).
    pub fn new(config: &JwtConfig) -> Result<Verifier, String> {
        let mut providers = Vec::new();
        for (name, p) in &config.providers {
            let algorithms = p
                .algorithms
                .iter()
                .map(|a| algorithm(a))
                .collect::<Result<Vec<_>, _>>()?;
            let secret = match &p.shared_secret_file {
                Some(path) => {
                    let bytes = std::fs::read(path).map_err(|e| {
                        format!(
                            "jwt.providers.{name}.sharedSecretFile {}: {e}",
                            path.display()
                        )
                    })?;
                    let trimmed = bytes.trim_ascii_end();
                    if trimmed.len() < 32 {
                        return Err(format!(
                            "jwt.providers.{name}.sharedSecretFile: a shared secret needs at least 32 bytes"
                        ));
                    }
                    Some(DecodingKey::from_secret(trimmed))
                }
                None => None,
            };
            let jwks = p
                .jwks
                .as_ref()
                .map(|j| Jwks::new(name, j).map_err(|e| format!("jwt.providers.{name}.{e}")))
                .transpose()?;
            providers.push(Provider {
                name: name.clone(),
                config: p.clone(),
                algorithms,
                secret,
                jwks,
            });
        }
        let cache =
            (config.cache_entries > 0).then(|| quick_cache::sync::Cache::new(config.cache_entries));
        Ok(Verifier {
            providers,
            max_token_bytes: config.max_token_bytes,
            cache,
            cache_hits: Default::default(),
        })
    }

    /// The key sets to keep fresh and to wait for before `/ready`.
    pub fn jwks(&self) -> Vec<Arc<Jwks>> {
        self.providers
            .iter()
            .filter_map(|p| p.jwks.clone())
            .collect()
    }

    /// Counts tokens accepted from the cache in `counter` (registered as
    /// `tollgate_jwt_cache_hits_total`).
    pub fn with_cache_hits(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.cache_hits = counter;
        self
    }

    /// Tokens accepted from the cache so far.
    pub fn cache_hits(&self) -> &prometheus_client::metrics::counter::Counter {
        &self.cache_hits
    }

    /// Verifies `token` for a route that accepts `accepted` providers
    /// (empty: any).
    pub async fn verify(
        &self,
        token: &str,
        accepted: &[String],
    ) -> Result<Arc<Verified>, JwtError> {
        if token.len() > self.max_token_bytes {
            return Err(JwtError::TooLarge {
                limit: self.max_token_bytes,
            });
        }
        let hash = self.cache.as_ref().map(|_| token_hash(token));
        if let (Some(cache), Some(hash)) = (&self.cache, &hash)
            && let Some(hit) = cache.get(hash)
        {
            if hit.verified.expires > now_seconds() && self.key_still_good(&hit) {
                self.cache_hits.inc();
                return accept(hit.verified, accepted);
            }
            cache.remove(hash);
        }
        let (verified, key) = self.verify_uncached(token).await?;
        let verified = Arc::new(verified);
        if let (Some(cache), Some(hash)) = (&self.cache, hash) {
            cache.insert(
                hash,
                Cached {
                    verified: verified.clone(),
                    key,
                },
            );
        }
        accept(verified, accepted)
    }

    /// Whether the key that verified a cached token may still vouch for
    /// it: in the provider's current set, which is fresh enough. When not,
    /// the token is verified afresh, which refetches as any token would
    /// and refuses it with the cause.
    fn key_still_good(&self, hit: &Cached) -> bool {
        let Some(stamp) = &hit.key else {
            return true;
        };
        let jwks = self
            .providers
            .get(stamp.provider)
            .and_then(|p| p.jwks.as_ref());
        let good = match jwks.map(|j| j.usable()) {
            Some(Ok(set)) => set.generation == stamp.generation || set.holds(&stamp.fingerprint),
            _ => false,
        };
        if !good {
            tracing::debug!(kid = ?stamp.kid, "cached token's key is gone or stale; verifying afresh");
        }
        good
    }

    async fn verify_uncached(&self, token: &str) -> Result<(Verified, Option<KeyStamp>), JwtError> {
        let (header, payload) = peek(token)?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| JwtError::Malformed("no alg in the header".into()))?;
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(JwtError::AlgNone);
        }
        let alg = alg_name
            .parse::<Algorithm>()
            .map_err(|_| JwtError::AlgorithmNotAllowed {
                alg: alg_name.to_owned(),
            })?;
        let issuer = payload.get("iss").and_then(Value::as_str).unwrap_or("");
        let (index, provider) = self
            .providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.config.issuer == issuer)
            .ok_or_else(|| JwtError::UnknownIssuer(issuer.to_owned()))?;
        if !provider.algorithms.contains(&alg) {
            return Err(JwtError::AlgorithmNotAllowed {
                alg: alg_name.to_owned(),
            });
        }
        let validation = validation(provider, alg);
        let (claims, stamp) = if is_hmac(alg) {
            let key = provider
                .secret
                .as_ref()
                .ok_or(JwtError::AlgorithmNotAllowed {
                    alg: alg_name.to_owned(),
                })?;
            (decode(token, key, &validation)?, None)
        } else {
            let jwks = provider
                .jwks
                .as_ref()
                .ok_or(JwtError::AlgorithmNotAllowed {
                    alg: alg_name.to_owned(),
                })?;
            let kid = header.get("kid").and_then(Value::as_str);
            let (claims, fingerprint, generation) = jwks
                .with_key(kid, alg, |key| {
                    decode(token, &key.key, &validation)
                        .map(|claims| (claims, key.fingerprint, key.generation))
                })
                .await
                .map_err(|e| match e {
                    KeyError::UnknownKey => JwtError::UnknownKey(kid.unwrap_or("").to_owned()),
                    KeyError::NotLoaded(why) | KeyError::Stale(why) => {
                        JwtError::KeysUnavailable(why)
                    }
                })??;
            let stamp = KeyStamp {
                provider: index,
                kid: kid.map(str::to_owned),
                fingerprint,
                generation,
            };
            (claims, Some(stamp))
        };
        let expires = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let verified = Verified {
            provider: provider.name.clone(),
            claims,
            expires,
        };
        Ok((verified, stamp))
    }
}

fn accept(verified: Arc<Verified>, accepted: &[String]) -> Result<Arc<Verified>, JwtError> {
    if accepted.is_empty() || accepted.contains(&verified.provider) {
        Ok(verified)
    } else {
        Err(JwtError::ProviderNotAccepted)
    }
}

fn validation(provider: &Provider, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = provider.config.clock_skew_seconds;
    v.validate_nbf = true;
    v.set_issuer(&[&provider.config.issuer]);
    if provider.config.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&provider.config.audiences);
    }
    let mut required: HashSet<String> = provider.config.required_claims.iter().cloned().collect();
    required.insert("exp".into());
    // jsonwebtoken checks `aud` only when the token has one it can read:
    // a provider that names audiences needs the token to name one.
    if !provider.config.audiences.is_empty() {
        required.insert("aud".into());
    }
    v.required_spec_claims = required;
    v
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, JwtError> {
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::InvalidAlgorithm => JwtError::AlgorithmNotAllowed {
                alg: format!("{:?}", validation.algorithms),
            },
            ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
            _ => JwtError::Malformed(e.to_string()),
        })?;
    // jsonwebtoken skips an `nbf` it cannot read as a number: such a token
    // must not be valid before its time.
    if let Some(nbf) = data.claims.get("nbf")
        && !nbf
            .as_f64()
            .is_some_and(|t| t.is_finite() && t >= 0.0 && t < u64::MAX as f64)
    {
        return Err(JwtError::Malformed("nbf is not a NumericDate".into()));
    }
    // Required claims beyond the registered ones jsonwebtoken knows.
    for claim in &validation.required_spec_claims {
        if !data.claims.contains_key(claim) {
            return Err(JwtError::MissingClaim(claim.clone()));
        }
    }
    Ok(data.claims)
}

/// The header and payload, decoded but not verified: to pick the provider
/// and key, and to refuse `alg: none` by name.
fn peek(token: &str) -> Result<(Json, Json), JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts".into()));
    };
    let part = |text: &str, what: &str| -> Result<Json, JwtError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| JwtError::Malformed(format!("{what} is not a JSON object")))
    };
    Ok((part(header, "header")?, part(payload, "payload")?))
}

fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A JSON object: a token's header or claims.
type Json = Map<String, Value>;

#[cfg(test)]
pub(crate) mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use ring::rand::SystemRandom;
    use ring::signature::{self, KeyPair as _};
    use serde_json::json;

    use super::*;

    /// An EC P-256 key: the private key for signing and its JWK.
    pub(crate) fn ec_key(kid: &str) -> (EncodingKey, Value) {
        let rng = SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                         "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    /// An Ed25519 key and its JWK.
    pub(crate) fn ed_key(kid: &str) -> (EncodingKey, Value) {
        let rng = SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let b64 =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64});
        (EncodingKey::from_ed_der(pkcs8.as_ref()), jwk)
    }

    pub(crate) fn sign(key: &EncodingKey, alg: Algorithm, kid: &str, claims: Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, &claims, key).unwrap()
    }

    fn now() -> u64 {
        now_seconds()
    }

    struct Setup {
        verifier: Verifier,
        ec: EncodingKey,
        ed: EncodingKey,
        _dir: tempfile::TempDir,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (ec, ec_jwk) = ec_key("e1");
        let (ed, ed_jwk) = ed_key("d1");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({"keys": [ec_jwk, ed_jwk]}).to_string()).unwrap();
        std::fs::write(dir.path().join("secret"), format!("{SHARED_SECRET}\n")).unwrap();
        let yaml = format!(
            "providers:\n  main:\n    issuer: https://issuer.example\n    audiences: [flyteadmin]\n    jwks: {{file: {}}}\n    algorithms: [ES256, EdDSA]\n    requiredClaims: [sub]\n  shared:\n    issuer: https://shared.example\n    sharedSecretFile: {}\n    algorithms: [HS256]\n",
            path.display(),
            dir.path().join("secret").display()
        );
        let config: JwtConfig = yaml_serde::from_str(&yaml).unwrap();
        config.check().unwrap();
        Setup {
            verifier: Verifier::new(&config).unwrap(),
            ec,
            ed,
            _dir: dir,
        }
    }

    /// The HS256 secret of the `shared` provider, which names no audience.
    const SHARED_SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// A valid token of the `shared` provider: issuer and expiry only.
    fn shared_provider_token() -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"iss": "https://shared.example", "exp": now() + 60}),
            &EncodingKey::from_secret(SHARED_SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({"iss": "https://issuer.example", "aud": "flyteadmin", "sub": "alice",
                           "exp": now() + 600, "team": "ml", "groups": ["a", "b"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    async fn check(s: &Setup, token: &str) -> Result<Arc<Verified>, JwtError> {
        s.verifier.verify(token, &[]).await
    }

    #[tokio::test]
    async fn valid_tokens_verify_and_expose_claims() {
        let s = setup();
        let v = check(&s, &sign(&s.ec, Algorithm::ES256, "e1", claims(json!({}))))
            .await
            .unwrap();
        assert_eq!(v.subject(), Some("alice"));
        assert_eq!(v.claim_text("groups").as_deref(), Some("a,b"));
        // Issue 28: a null claim reached the app as the header text "null".
        let v = check(
            &s,
            &sign(&s.ec, Algorithm::ES256, "e1", claims(json!({"team": null}))),
        )
        .await
        .unwrap();
        assert_eq!(v.claim_text("team"), None);
        assert_eq!(v.provider, "main");
        check(&s, &sign(&s.ed, Algorithm::EdDSA, "d1", claims(json!({}))))
            .await
            .unwrap();
        check(&s, &shared_provider_token()).await.unwrap();
    }

    #[tokio::test]
    async fn each_bad_token_gets_its_own_error() {
        let s = setup();
        let t = |extra: Value| sign(&s.ec, Algorithm::ES256, "e1", claims(extra));
        assert_eq!(
            check(&s, &t(json!({"exp": now() - 3600})))
                .await
                .unwrap_err(),
            JwtError::Expired
        );
        assert_eq!(
            check(&s, &t(json!({"nbf": now() + 3600})))
                .await
                .unwrap_err(),
            JwtError::NotYetValid
        );
        assert_eq!(
            check(&s, &t(json!({"aud": "other"}))).await.unwrap_err(),
            JwtError::WrongAudience
        );
        assert!(matches!(
            check(&s, &t(json!({"iss": "https://evil"})))
                .await
                .unwrap_err(),
            JwtError::UnknownIssuer(_)
        ));
        let mut c = claims(json!({}));
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            check(&s, &sign(&s.ec, Algorithm::ES256, "e1", c))
                .await
                .unwrap_err(),
            JwtError::MissingClaim("sub".into())
        );
        // Signed by a key the JWKS does not have, under a known kid.
        let (other, _) = ec_key("e1");
        assert_eq!(
            check(&s, &sign(&other, Algorithm::ES256, "e1", claims(json!({}))))
                .await
                .unwrap_err(),
            JwtError::BadSignature
        );
        // Tampered payload.
        let good = t(json!({}));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(claims(json!({"sub": "root"})).to_string());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(
            check(&s, &tampered).await.unwrap_err(),
            JwtError::BadSignature
        );
        // alg none.
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none"})),
            b64(claims(json!({})))
        );
        assert_eq!(check(&s, &none).await.unwrap_err(), JwtError::AlgNone);
        // HS256 for a provider that only has public keys: algorithm confusion.
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(b"the public key bytes, as a secret"),
        )
        .unwrap();
        assert_eq!(
            check(&s, &confused).await.unwrap_err(),
            JwtError::AlgorithmNotAllowed {
                alg: "HS256".into()
            }
        );
        // Too large, and garbage.
        let huge = format!("{}.{}.x", b64(json!({"alg": "ES256"})), "a".repeat(10_000));
        assert_eq!(
            check(&s, &huge).await.unwrap_err(),
            JwtError::TooLarge { limit: 8192 }
        );
        assert!(matches!(
            check(&s, "not.a-token").await.unwrap_err(),
            JwtError::Malformed(_)
        ));
        // Unknown kid.
        assert!(matches!(
            check(
                &s,
                &sign(&s.ec, Algorithm::ES256, "nope", claims(json!({})))
            )
            .await
            .unwrap_err(),
            JwtError::UnknownKey(_)
        ));
    }

    #[tokio::test]
    async fn a_provider_with_audiences_refuses_tokens_that_name_none() {
        // Found by fuzz/jwt_token: jsonwebtoken checks `aud` only when the
        // token has one it can read, so a token without `aud`, or with a
        // number there, passed a provider that names its audiences.
        let s = setup();
        for aud in [None, Some(json!(5)), Some(json!({"aud": "flyteadmin"}))] {
            let mut c = claims(json!({}));
            match &aud {
                None => {
                    c.as_object_mut().unwrap().remove("aud");
                }
                Some(a) => c["aud"] = a.clone(),
            }
            let token = sign(&s.ec, Algorithm::ES256, "e1", c);
            assert_eq!(
                check(&s, &token).await.unwrap_err(),
                JwtError::MissingClaim("aud".into()),
                "aud {aud:?}"
            );
        }
        // A provider that names no audience needs none.
        check(&s, &shared_provider_token()).await.unwrap();
    }

    #[tokio::test]
    async fn an_nbf_that_is_not_a_numeric_date_is_refused() {
        // Found by fuzz/jwt_token: jsonwebtoken skips an `nbf` it cannot
        // read as a number, so `"nbf": "<a future time>"` made a token
        // valid before its time.
        let s = setup();
        let future = (now() + 3600).to_string();
        for nbf in [json!(future), json!(null), json!(-1)] {
            let token = sign(&s.ec, Algorithm::ES256, "e1", claims(json!({"nbf": nbf})));
            assert_eq!(
                check(&s, &token).await.unwrap_err(),
                JwtError::Malformed("nbf is not a NumericDate".into()),
                "nbf {nbf}"
            );
        }
        // Numbers, whole or not, are read as times.
        for nbf in [json!(now() - 10), json!(1000.5)] {
            let token = sign(&s.ec, Algorithm::ES256, "e1", claims(json!({"nbf": nbf})));
            check(&s, &token).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_cached_token_dies_with_its_key_and_with_stale_keys() {
        // Issue 28: a cache hit returned before any key check, so a token
        // outlived its key's removal from the JWKS, and keys past
        // maxStalenessSeconds, until its own exp.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (ec, ec_jwk) = ec_key("e1");
        let (_, other_jwk) = ec_key("e2");
        std::fs::write(
            &path,
            json!({"keys": [ec_jwk.clone(), other_jwk.clone()]}).to_string(),
        )
        .unwrap();
        let yaml = format!(
            "providers:\n  main:\n    issuer: https://issuer.example\n    algorithms: [ES256]\n    \
             jwks: {{file: {}, minRefetchIntervalSeconds: 0, maxStalenessSeconds: 1}}\n",
            path.display()
        );
        let verifier = Verifier::new(&yaml_serde::from_str(&yaml).unwrap()).unwrap();
        let token = sign(&ec, Algorithm::ES256, "e1", claims(json!({})));
        let jwks = &verifier.jwks()[0];
        jwks.refresh().await.unwrap();
        verifier.verify(&token, &[]).await.unwrap();
        verifier.verify(&token, &[]).await.unwrap();
        assert_eq!(verifier.cache_hits().get(), 1);
        // A refresh that returns the same keys keeps the entry.
        jwks.refresh().await.unwrap();
        verifier.verify(&token, &[]).await.unwrap();
        assert_eq!(verifier.cache_hits().get(), 2);
        // A key added beside it: a new generation, the same key: still good.
        let (_, third_jwk) = ec_key("e3");
        std::fs::write(
            &path,
            json!({"keys": [ec_jwk.clone(), other_jwk.clone(), third_jwk]}).to_string(),
        )
        .unwrap();
        jwks.refresh().await.unwrap();
        verifier.verify(&token, &[]).await.unwrap();
        assert_eq!(verifier.cache_hits().get(), 3);
        // e1 revoked: the cached token is refused at once.
        std::fs::write(&path, json!({"keys": [other_jwk]}).to_string()).unwrap();
        jwks.refresh().await.unwrap();
        assert_eq!(
            verifier.verify(&token, &[]).await.unwrap_err(),
            JwtError::UnknownKey("e1".into())
        );
        assert_eq!(verifier.cache_hits().get(), 3);

        // Staleness: e1 back, cached, then the source breaks past the bound.
        std::fs::write(&path, json!({"keys": [ec_jwk]}).to_string()).unwrap();
        jwks.refresh().await.unwrap();
        verifier.verify(&token, &[]).await.unwrap();
        verifier.verify(&token, &[]).await.unwrap();
        assert_eq!(verifier.cache_hits().get(), 4);
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(matches!(
            verifier.verify(&token, &[]).await.unwrap_err(),
            JwtError::KeysUnavailable(_)
        ));
        assert_eq!(verifier.cache_hits().get(), 4);
    }

    #[tokio::test]
    async fn cached_tokens_still_respect_routes_and_expiry() {
        let s = setup();
        let token = sign(&s.ec, Algorithm::ES256, "e1", claims(json!({})));
        check(&s, &token).await.unwrap();
        check(&s, &token).await.unwrap();
        assert_eq!(
            s.verifier
                .verify(&token, &["shared".into()])
                .await
                .unwrap_err(),
            JwtError::ProviderNotAccepted
        );
        s.verifier.verify(&token, &["main".into()]).await.unwrap();
    }
}
