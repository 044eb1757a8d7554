//! JWT fixtures for benchmarks that compare the proxy with peers: the
//! same keys as a JWKS (what `tollgate-proxy` reads) and as PEM public keys
//! (what HAProxy's `jwt_verify` reads), and long-lived tokens signed with
//! them (`proxy-load jwt DIR`).

use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use tollgate_e2e::jwt::{SigningKey, jwk_set, now};

/// The claims every benchmark token carries; the proxies check `iss`,
/// `aud` and `exp`, and forward `sub`.
pub const ISSUER: &str = "https://issuer.bench";
pub const AUDIENCE: &str = "bench";
pub const SUBJECT: &str = "alice";

/// Writes, for RS256 (RSA 2048) and ES256 (P-256): `jwks.json` with both
/// keys, `rs256.pub.pem` and `es256.pub.pem`, and `rs256.token` and
/// `es256.token` (valid for `lifetime_s` seconds from now).
pub fn write_fixtures(dir: &Path, lifetime_s: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let keys = [
        ("rs256", SigningKey::rsa("bench-rs256")?),
        ("es256", SigningKey::ec("bench-es256")?),
    ];
    std::fs::write(
        dir.join("jwks.json"),
        jwk_set(&keys.iter().map(|(_, k)| k).collect::<Vec<_>>()),
    )?;
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT, "team": "ml",
                        "iat": now(), "exp": now() + lifetime_s});
    for (name, key) in &keys {
        std::fs::write(dir.join(format!("{name}.pub.pem")), public_pem(&key.jwk)?)?;
        std::fs::write(dir.join(format!("{name}.token")), key.sign(&claims))?;
    }
    Ok(())
}

/// The PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of an RSA or EC P-256 JWK.
pub fn public_pem(jwk: &Value) -> anyhow::Result<String> {
    let field = |name: &str| -> anyhow::Result<Vec<u8>> {
        let v = jwk[name]
            .as_str()
            .with_context(|| format!("the JWK has no {name}"))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v)?)
    };
    let spki = match jwk["kty"].as_str() {
        Some("RSA") => {
            // rsaEncryption, NULL parameters; RSAPublicKey ::= SEQUENCE { n, e }.
            let algorithm = der(0x30, &[der(0x06, &RSA_ENCRYPTION), der(0x05, &[])].concat());
            let key = der(
                0x30,
                &[integer(&field("n")?), integer(&field("e")?)].concat(),
            );
            der(0x30, &[algorithm, bit_string(&key)].concat())
        }
        Some("EC") if jwk["crv"] == "P-256" => {
            let algorithm = der(
                0x30,
                &[der(0x06, &EC_PUBLIC_KEY), der(0x06, &PRIME256V1)].concat(),
            );
            let point = [&[0x04][..], &field("x")?, &field("y")?].concat();
            der(0x30, &[algorithm, bit_string(&point)].concat())
        }
        other => bail!("no PEM for a JWK of kty {other:?}"),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line)?);
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    Ok(pem)
}

/// 1.2.840.113549.1.1.1
const RSA_ENCRYPTION: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.10045.2.1
const EC_PUBLIC_KEY: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.10045.3.1.7
const PRIME256V1: [u8; 8] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A non-negative DER INTEGER from big-endian bytes.
fn integer(be: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = be.iter().copied().skip_while(|&b| b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|&b| b >= 0x80) {
        content.push(0);
    }
    content.extend(trimmed);
    der(0x02, &content)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], bytes].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openssl reads the keys back, and they are the JWKs' keys.
    #[test]
    fn public_keys_are_what_openssl_reads() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        write_fixtures(dir.path(), 60)?;
        let jwks: Value = serde_json::from_slice(&std::fs::read(dir.path().join("jwks.json"))?)?;
        for (name, jwk) in ["rs256", "es256"]
            .iter()
            .zip(jwks["keys"].as_array().unwrap())
        {
            let path = dir.path().join(format!("{name}.pub.pem"));
            let out = std::process::Command::new("openssl")
                .args(["pkey", "-pubin", "-noout", "-text", "-in"])
                .arg(&path)
                .output()?;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).replace([' ', '\n', ':'], "");
            let first = if jwk["kty"] == "RSA" { "n" } else { "x" };
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk[first].as_str().unwrap())?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert!(text.contains(&hex), "{name}: {text}");
        }
        Ok(())
    }
}
