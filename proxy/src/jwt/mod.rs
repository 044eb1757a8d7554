//! JWT validation: the second layer of the inbound pipeline, after the
//! peer's identity and before rate limiting.
//!
//! - [`config`]: the `jwt` section of `proxy.yaml`.
//! - [`token`]: where a token is found (headers, cookie, query), in order.
//! - [`jwks`]: key sets that survive rotation (refresh, refetch on unknown
//!   `kid`, stale-while-revalidate within a bound).
//! - [`verify`]: checking a token against the providers (jsonwebtoken on
//!   ring), with a cache of verified tokens keyed by their SHA-256.
//! - [`layer`]: the tower layer; verified claims become a request extension
//!   ([`Verified`]) and configured headers.

pub mod config;
pub mod jwks;
pub mod layer;
pub mod token;
pub mod verify;

pub use config::JwtConfig;
pub use layer::{JwtLayer, JwtMetrics};
pub use verify::{JwtError, Verified, Verifier};
