//! JWK Sets that survive key rotation.
//!
//! A [`Jwks`] holds the last good key set of one provider. It is refreshed
//! every `refreshIntervalSeconds`; a token whose `kid` is unknown triggers
//! an immediate refetch, at most once per `minRefetchIntervalSeconds`
//! (concurrent requests wait for the same fetch). A failed refresh keeps the
//! last good set (stale-while-revalidate) until it is `maxStalenessSeconds`
//! old; past that, tokens are refused until a fetch succeeds.
//!
//! Each set has a *generation*, bumped by a fetch that changes the keys
//! (not by one that returns the same keys), and each key a fingerprint
//! (SHA-256 of its JWK). The verified-token cache remembers both for the
//! key that verified a token, so a cached token is accepted only while its
//! key is still in the current, fresh-enough set (`verify.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::config::JwksConfig;

/// Largest JWK Set body accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// One usable key.
pub struct Key {
    pub kid: Option<String>,
    /// The algorithm family the key can verify (RSA, EC, OKP).
    pub family: Family,
    /// `alg` the JWK pins, if it does.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
    /// SHA-256 of the JWK as served: the same key under the same `kid`
    /// in a later set has the same fingerprint.
    pub fingerprint: [u8; 32],
    /// The generation of the set this key was loaded in.
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Rsa,
    Ec,
    Okp,
}

impl Family {
    pub fn of(alg: Algorithm) -> Option<Family> {
        use Algorithm::*;
        match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
            ES256 | ES384 => Some(Family::Ec),
            EdDSA => Some(Family::Okp),
            HS256 | HS384 | HS512 => None,
        }
    }
}

/// A parsed key set and when it was fetched.
pub struct KeySet {
    pub keys: Vec<Key>,
    pub fetched: Instant,
    /// Bumped when a fetch changes the keys (see the module docs).
    pub generation: u64,
}

impl KeySet {
    /// Parses a JWK Set document; keys that cannot verify anything (an
    /// unsupported type, `use: enc`) are skipped.
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWK Set: {e}"))?;
        let keys: Vec<Key> = set.keys.iter().filter_map(key_of).collect();
        if keys.is_empty() && !set.keys.is_empty() {
            return Err("no usable signing key in the JWK Set".into());
        }
        Ok(KeySet {
            keys,
            fetched: Instant::now(),
            generation: 0,
        })
    }

    /// Whether a key with this fingerprint is in the set.
    pub fn holds(&self, fingerprint: &[u8; 32]) -> bool {
        self.keys.iter().any(|k| &k.fingerprint == fingerprint)
    }

    /// Numbers this set after `previous`: the same generation when the
    /// keys are the same, the next one otherwise.
    fn follow(&mut self, previous: Option<&KeySet>) {
        let same = previous.is_some_and(|p| {
            p.keys.len() == self.keys.len() && self.keys.iter().all(|k| p.holds(&k.fingerprint))
        });
        self.generation = match previous {
            Some(p) if same => p.generation,
            Some(p) => p.generation + 1,
            None => 1,
        };
        for key in &mut self.keys {
            key.generation = self.generation;
        }
    }

    /// The key for `kid` (or, for a token without `kid`, the only key of
    /// the algorithm's family) that may verify `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        let family = Family::of(alg)?;
        let fits = |k: &&Key| k.family == family && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(fits)
                .find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut candidates = self.keys.iter().filter(fits);
                let first = candidates.next();
                if candidates.next().is_some() {
                    None
                } else {
                    first
                }
            }
        }
    }
}

fn key_of(jwk: &Jwk) -> Option<Key> {
    use jsonwebtoken::jwk::PublicKeyUse;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok());
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let served = serde_json::to_vec(jwk).ok()?;
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &served).as_ref());
    Some(Key {
        kid: jwk.common.key_id.clone(),
        family,
        alg,
        key,
        fingerprint,
        generation: 0,
    })
}

/// Where keys come from.
type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<bytes::Bytes>>;

enum Source {
    File(PathBuf),
    Url {
        url: http::Uri,
        client: Box<HttpsClient>,
    },
}

/// One provider's keys, refreshed.
pub struct Jwks {
    name: String,
    source: Source,
    config: JwksConfig,
    current: ArcSwapOption<KeySet>,
    /// Serializes fetches; holds when the last one started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    last_error: std::sync::Mutex<Option<String>>,
}

/// Why no key could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// No fetch has succeeded yet.
    NotLoaded(String),
    /// The last good set is older than the allowed staleness.
    Stale(String),
    /// The set has no key for this `kid`/alg.
    UnknownKey,
}

impl Jwks {
    pub fn new(name: &str, config: &JwksConfig) -> Result<Arc<Jwks>, String> {
        let source = match (&config.url, &config.file) {
            (Some(url), None) => Source::Url {
                url: url.parse().map_err(|e| format!("jwks.url {url:?}: {e}"))?,
                client: Box::new(https_client(config)?),
            },
            (None, Some(file)) => Source::File(file.clone()),
            _ => return Err("jwks: set exactly one of url and file".into()),
        };
        Ok(Arc::new(Jwks {
            name: name.to_owned(),
            source,
            config: config.clone(),
            current: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(None),
            last_error: std::sync::Mutex::new(None),
        }))
    }

    /// Whether a key set has been loaded (for `/ready`).
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// The last fetch error, if the last fetch failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Fetches now, replacing the set on success.
    pub async fn refresh(&self) -> Result<(), String> {
        let mut started = self.fetching.lock().await;
        *started = Some(Instant::now());
        let result = self.fetch().await;
        let mut last_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(mut set) => {
                set.follow(self.current.load().as_deref());
                tracing::debug!(provider = %self.name, keys = set.keys.len(), generation = set.generation, "JWKS fetched");
                self.current.store(Some(Arc::new(set)));
                *last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(provider = %self.name, error = %e, "JWKS fetch failed; keeping the last good keys");
                *last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let bytes = match &self.source {
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?,
            Source::Url { url, client } => {
                let timeout = Duration::from_secs(self.config.fetch_timeout_seconds);
                let response = tokio::time::timeout(timeout, client.get(url.clone()))
                    .await
                    .map_err(|_| format!("GET {url}: no answer within {timeout:?}"))?
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("GET {url}: HTTP {}", response.status()));
                }
                let body = Limited::new(response.into_body(), MAX_JWKS_BYTES);
                tokio::time::timeout(timeout, body.collect())
                    .await
                    .map_err(|_| format!("GET {url}: body not read within {timeout:?}"))?
                    .map_err(|e| format!("GET {url}: {e}"))?
                    .to_bytes()
                    .to_vec()
            }
        };
        KeySet::parse(&bytes)
    }

    /// Refreshes every `refreshIntervalSeconds`, until dropped. The first
    /// fetch happens at once.
    pub async fn keep_fresh(self: Arc<Self>) {
        let every = Duration::from_secs(self.config.refresh_interval_seconds);
        loop {
            let ok = self.refresh().await.is_ok();
            // Retry a failed first fetch quickly: readiness waits for it.
            let wait = if !ok && !self.is_loaded() {
                Duration::from_secs(1).min(every)
            } else {
                every
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The current set, unless it is missing or too stale.
    pub fn usable(&self) -> Result<Arc<KeySet>, KeyError> {
        let Some(set) = self.current.load_full() else {
            return Err(KeyError::NotLoaded(
                self.last_error()
                    .unwrap_or_else(|| "not fetched yet".into()),
            ));
        };
        let max = Duration::from_secs(self.config.max_staleness_seconds);
        if set.fetched.elapsed() > max {
            return Err(KeyError::Stale(format!(
                "keys last fetched {}s ago (max staleness {}s)",
                set.fetched.elapsed().as_secs(),
                max.as_secs()
            )));
        }
        Ok(set)
    }

    /// Runs `f` on the key for `kid`/`alg`; on an unknown key, refetches
    /// (rate-limited) and tries once more.
    pub async fn with_key<T>(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        f: impl Fn(&Key) -> T,
    ) -> Result<T, KeyError> {
        if let Ok(set) = self.usable()
            && let Some(key) = set.find(kid, alg)
        {
            return Ok(f(key));
        }
        self.refetch_for_unknown_key().await;
        let set = self.usable()?;
        set.find(kid, alg).map(f).ok_or(KeyError::UnknownKey)
    }

    async fn refetch_for_unknown_key(&self) {
        let min = Duration::from_secs(self.config.min_refetch_interval_seconds);
        let before = Instant::now();
        // A fetch in flight when the token arrived is the refetch it waits for.
        let (started, waited) = match self.fetching.try_lock() {
            Ok(started) => (started, false),
            Err(_) => (self.fetching.lock().await, true),
        };
        // Someone fetched while we waited for the lock, or too recently.
        if started.is_some_and(|s| s >= before || s.elapsed() < min) {
            return;
        }
        // The fetch we waited for failed (the endpoint is down or hangs):
        // trying again at once would only add a fetch timeout to this
        // request, and to every request queued behind it.
        if waited && self.last_error().is_some() {
            return;
        }
        drop(started);
        let _ = self.refresh().await;
    }
}

fn https_client(config: &JwksConfig) -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("jwks.caFile {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("jwks.caFile {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("jwks.caFile {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Every provider's key set, by provider name, for readiness.
pub type JwksByProvider = HashMap<String, Arc<Jwks>>;

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;

    #[test]
    fn parses_and_finds_keys_by_kid_and_family() {
        let set = KeySet::parse(RSA_JWKS.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(set.find(Some("r1"), Algorithm::RS256).is_some());
        assert!(
            set.find(None, Algorithm::RS256).is_some(),
            "sole key of the family"
        );
        assert!(set.find(Some("r2"), Algorithm::RS256).is_none());
        assert!(
            set.find(Some("r1"), Algorithm::ES256).is_none(),
            "wrong family"
        );
        assert!(
            set.find(Some("r1"), Algorithm::RS512).is_none(),
            "JWK pins RS256"
        );
        assert!(set.find(Some("r1"), Algorithm::HS256).is_none());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(b"not json").is_err());
        assert!(KeySet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
    }

    #[tokio::test]
    async fn file_source_loads_and_unknown_kids_refetch_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, RSA_JWKS).unwrap();
        let config: JwksConfig = yaml_serde::from_str(&format!(
            "file: {}\nminRefetchIntervalSeconds: 3600\n",
            path.display()
        ))
        .unwrap();
        let jwks = Jwks::new("p", &config).unwrap();
        assert!(!jwks.is_loaded());
        assert_eq!(
            jwks.with_key(Some("r1"), Algorithm::RS256, |_| ()).await,
            Ok(()),
            "first use fetches"
        );
        std::fs::write(&path, RSA_JWKS.replace("\"r1\"", "\"r2\"")).unwrap();
        // Fetched just now: the unknown kid does not refetch yet.
        assert_eq!(
            jwks.with_key(Some("r2"), Algorithm::RS256, |_| ()).await,
            Err(KeyError::UnknownKey)
        );
        jwks.refresh().await.unwrap();
        assert_eq!(
            jwks.with_key(Some("r2"), Algorithm::RS256, |_| ()).await,
            Ok(())
        );
        // The file breaks: the last good keys stay.
        std::fs::write(&path, "garbage").unwrap();
        assert!(jwks.refresh().await.is_err());
        assert_eq!(
            jwks.with_key(Some("r2"), Algorithm::RS256, |_| ()).await,
            Ok(())
        );
        assert!(jwks.last_error().is_some());
    }
}

#[cfg(test)]
mod refetch_tests {
    use super::*;
    use crate::jwt::verify::tests::ec_key;

    #[tokio::test]
    async fn unknown_kids_queued_behind_a_failing_fetch_wait_for_it_only() {
        // An endpoint that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hole = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let config: JwksConfig = yaml_serde::from_str(&format!(
            "url: https://127.0.0.1:{port}/jwks.json\nfetchTimeoutSeconds: 1\n\
             minRefetchIntervalSeconds: 0\n"
        ))
        .unwrap();
        let jwks = Jwks::new("p", &config).unwrap();
        let started = Instant::now();
        let mut waits = Vec::new();
        for delay in [0u64, 200, 400, 600] {
            let jwks = jwks.clone();
            waits.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let arrived = Instant::now();
                let result = jwks.with_key(Some("k"), Algorithm::ES256, |_| ()).await;
                (result, arrived.elapsed())
            }));
        }
        for w in waits {
            let (result, waited) = w.await.unwrap();
            assert!(matches!(result, Err(KeyError::NotLoaded(_))), "{result:?}");
            assert!(waited < Duration::from_millis(1500), "waited {waited:?}");
        }
        assert!(started.elapsed() < Duration::from_millis(2000));
        hole.abort();
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_once_the_interval_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let set = |kid: &str| serde_json::json!({"keys": [ec_key(kid).1]}).to_string();
        std::fs::write(&path, set("a")).unwrap();
        let config: JwksConfig = yaml_serde::from_str(&format!(
            "file: {}\nminRefetchIntervalSeconds: 1\n",
            path.display()
        ))
        .unwrap();
        let jwks = Jwks::new("p", &config).unwrap();
        jwks.refresh().await.unwrap();
        std::fs::write(&path, set("b")).unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            jwks.with_key(Some("b"), Algorithm::ES256, |_| ()).await,
            Ok(())
        );
    }
}
