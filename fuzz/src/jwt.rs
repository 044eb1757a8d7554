//! A fixed JWT setup: two providers as `proxy.yaml` would configure them,
//! with keys the harness holds, so it can sign fuzz-chosen headers and
//! claims and check any accepted token against the keys independently.
//!
//! - `main`: issuer `https://issuer.example`, audience `flyteadmin`, a
//!   JWKS file with an ES256 key (`kid: e1`) and an Ed25519 key
//!   (`kid: d1`), `requiredClaims: [sub]`;
//! - `shared`: issuer `https://shared.example`, HS256 with [`SECRET`].

use std::sync::Arc;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde_json::{Map, Value, json};
use tollgate_proxy::jwt::config::JwtConfig;
use tollgate_proxy::jwt::{Verified, Verifier};

pub const MAIN_ISSUER: &str = "https://issuer.example";
pub const SHARED_ISSUER: &str = "https://shared.example";
pub const AUDIENCE: &str = "flyteadmin";
/// The `shared` provider's HS256 secret (the committed seeds hold tokens
/// signed with it).
pub const SECRET: &[u8] = b"tollgate-fuzz-shared-secret-0123456789";
/// The Ed25519 key's seed (fixed, so seeds signed with it stay valid).
const ED_SEED: [u8; 32] = *b"tollgate fuzz ed25519 seed 32 by";
/// `clockSkewSeconds` of both providers (the default).
pub const SKEW: u64 = 60;

pub struct Fixture {
    pub config: JwtConfig,
    pub verifier: Arc<Verifier>,
    ed: signature::Ed25519KeyPair,
    ec: signature::EcdsaKeyPair,
    rng: SystemRandom,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Fixture {
    /// The providers, verifier and keys; `extra` is merged into the `jwt`
    /// section (token sources, claim headers, routes).
    pub fn new(rt: &tokio::runtime::Runtime, extra: Value) -> Fixture {
        let rng = SystemRandom::new();
        let ed = signature::Ed25519KeyPair::from_seed_unchecked(&ED_SEED).expect("Ed25519 seed");
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("generating a P-256 key");
        let ec = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("reading the P-256 key");
        let point = ec.public_key().as_ref();
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "e1", "alg": "ES256",
             "x": b64(&point[1..33]), "y": b64(&point[33..65])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "d1", "x": b64(ed.public_key().as_ref())},
        ]});

        // The verifier reads the secret at construction and the JWKS at the
        // first refresh; the files go once both are done.
        let dir = std::env::temp_dir().join(format!("tollgate-fuzz-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the JWT fixture directory");
        let jwks_path = dir.join("jwks.json");
        let secret_path = dir.join("secret");
        std::fs::write(&jwks_path, jwks.to_string()).expect("writing jwks.json");
        std::fs::write(&secret_path, SECRET).expect("writing the secret");
        let mut section = json!({
            "providers": {
                "main": {
                    "issuer": MAIN_ISSUER,
                    "audiences": [AUDIENCE],
                    // No refetch for an unknown kid during a run: the keys
                    // are fixed, and the file is gone.
                    "jwks": {"file": jwks_path, "minRefetchIntervalSeconds": 1_000_000},
                    "algorithms": ["ES256", "EdDSA"],
                    "requiredClaims": ["sub"],
                },
                "shared": {
                    "issuer": SHARED_ISSUER,
                    "sharedSecretFile": secret_path,
                    "algorithms": ["HS256"],
                },
            },
        });
        if let (Some(section), Value::Object(extra)) = (section.as_object_mut(), extra) {
            section.extend(extra);
        }
        let config: JwtConfig = serde_json::from_value(section).expect("the fixture's jwt section");
        config.check().expect("the fixture's jwt section checks");
        let verifier = Arc::new(Verifier::new(&config).expect("building the verifier"));
        for jwks in verifier.jwks() {
            rt.block_on(jwks.refresh())
                .expect("loading the fixture's JWKS");
        }
        let _ = std::fs::remove_dir_all(&dir);
        Fixture {
            config,
            verifier,
            ed,
            ec,
            rng,
        }
    }

    /// `header.payload.signature` over the exact bytes given, signed with
    /// the key for the header's `alg` (HS256 with the secret for anything
    /// else, so algorithm confusion is tried too).
    pub fn sign(&self, header: &[u8], payload: &[u8]) -> String {
        let signing_input = format!("{}.{}", b64(header), b64(payload));
        let alg = serde_json::from_slice::<Map<String, Value>>(header)
            .ok()
            .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_owned));
        let signature = match alg.as_deref() {
            Some("EdDSA") => self.ed.sign(signing_input.as_bytes()).as_ref().to_vec(),
            Some("ES256") => match self.ec.sign(&self.rng, signing_input.as_bytes()) {
                Ok(s) => s.as_ref().to_vec(),
                Err(_) => Vec::new(),
            },
            _ => hmac(signing_input.as_bytes()),
        };
        format!("{signing_input}.{}", b64(&signature))
    }

    /// Whether `token`'s signature is valid under the key the fixture holds
    /// for `alg` (and, for JWKS keys, for `kid` when the token names one).
    pub fn signature_valid(&self, token: &str, alg: &str, kid: Option<&str>) -> bool {
        let Some((signing_input, sig)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        let public = |alg: &'static dyn signature::VerificationAlgorithm, key: &[u8]| {
            signature::UnparsedPublicKey::new(alg, key)
                .verify(signing_input.as_bytes(), &sig)
                .is_ok()
        };
        match (alg, kid) {
            ("HS256", _) => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
                ring::hmac::verify(&key, signing_input.as_bytes(), &sig).is_ok()
            }
            ("EdDSA", None | Some("d1")) => {
                public(&signature::ED25519, self.ed.public_key().as_ref())
            }
            ("ES256", None | Some("e1")) => public(
                &signature::ECDSA_P256_SHA256_FIXED,
                self.ec.public_key().as_ref(),
            ),
            _ => false,
        }
    }
}

fn hmac(message: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    ring::hmac::sign(&key, message).as_ref().to_vec()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Panics unless an accepted `token` is one the fixture's keys signed and
/// whose claims the provider's rules allow; returns the provider's name.
/// This is the independent model of `Verifier::verify`'s acceptance.
pub fn check_accepted(fixture: &Fixture, token: &str, verified: &Verified) -> &'static str {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("accepted a token that is not three dot-separated parts: {token:?}");
    };
    let decode = |part: &str, what: &str| -> Map<String, Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap_or_else(|e| panic!("accepted a token whose {what} is not base64url ({e})"));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("accepted a token whose {what} is not a JSON object ({e})"))
    };
    let header = decode(header, "header");
    let claims = decode(payload, "payload");
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("accepted a token without alg: {header:?}"));
    let kid = header.get("kid").and_then(Value::as_str);
    let (provider, issuer, algs): (&'static str, &str, &[&str]) = match verified.provider.as_str() {
        "main" => ("main", MAIN_ISSUER, &["ES256", "EdDSA"]),
        "shared" => ("shared", SHARED_ISSUER, &["HS256"]),
        other => panic!("accepted by an unknown provider {other:?}"),
    };
    assert!(
        algs.contains(&alg),
        "provider {provider} accepted alg {alg:?} (allowed: {algs:?})"
    );
    assert!(
        fixture.signature_valid(token, alg, kid),
        "accepted a token whose signature the {provider} key ({alg}, kid {kid:?}) does not verify: {token:?}"
    );
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(issuer),
        "provider {provider} accepted a token of another issuer"
    );
    // NumericDates: jsonwebtoken reads them rounded to whole seconds.
    let now = now() as f64;
    let skew = SKEW as f64;
    let time = |claim: &str| -> Option<f64> {
        let t = claims.get(claim)?;
        Some(
            t.as_f64()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .unwrap_or_else(|| panic!("accepted a token whose {claim} is {t}"))
                .round(),
        )
    };
    let exp = time("exp").unwrap_or_else(|| panic!("accepted a token without exp"));
    assert!(
        exp + skew >= now,
        "accepted an expired token (exp {exp}, now {now})"
    );
    if let Some(nbf) = time("nbf") {
        assert!(
            nbf <= now + skew,
            "accepted a token not valid yet (nbf {nbf}, now {now})"
        );
    }
    if provider == "main" {
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == AUDIENCE,
            Some(Value::Array(a)) => a.iter().any(|a| a.as_str() == Some(AUDIENCE)),
            _ => false,
        };
        assert!(
            aud_ok,
            "main accepted a token for audience {:?}",
            claims.get("aud")
        );
        assert!(
            claims.contains_key("sub"),
            "main accepted a token without its required claim sub"
        );
    }
    assert_eq!(
        verified.claims, claims,
        "the verified claims differ from the token's payload"
    );
    assert_eq!(
        verified.expires,
        claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        "Verified.expires is not the token's exp"
    );
    provider
}
